"""Hard offset-assignment instances: a valid layout within the time limit every time, and its gap.

Instances (generated, deterministic: ``planners.layout.generate``):
  * perfect packings of 100-500 buffers: guillotine cuts of a 1000-step x 2 GiB rectangle, so
    the optimum is known and equals the live-bytes lower bound (any gap is the planner's);
  * random instances of 100-500 buffers (random lifetimes, log-uniform sizes), optimum unknown:
    the gap is against the lower bound (or the MIP's bound when it proves a better one).
Target (issue 7): the planner returns a layout that passes the independent overlap checker
within its time limit (plus a small allowance for building and checking) on every instance.
The script exits 1 when one misses. One Python thread, HiGHS with one thread.

Run: .venv/bin/python benchmarks/layout_hard.py [--time-limit 10] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

OVERRUN_ALLOWANCE_S = 2.0  # the last placement and the final overlap check run past the limit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,200,300,500")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from planners.layout.generate import perfect_packing_instance, random_instance
    from planners.layout.instance import check_layout
    from planners.layout.plan import plan_layout

    rows, ok = [], True
    for kind in ("perfect", "random"):
        for n in (int(x) for x in args.sizes.split(",")):
            for seed in range(args.seeds):
                inst = (perfect_packing_instance(n, seed=seed) if kind == "perfect"
                        else random_instance(n, seed=seed))
                t0 = time.perf_counter()
                res = plan_layout(inst, time_limit_s=args.time_limit)
                wall = time.perf_counter() - t0
                valid = check_layout(inst, res.offsets).valid
                in_time = wall <= args.time_limit + OVERRUN_ALLOWANCE_S
                ok &= valid and in_time
                row = {"instance": inst.name, "kind": kind, "num_buffers": n,
                       "num_overlapping_pairs": res.num_overlapping_pairs,
                       "lower_bound_bytes": res.lower_bound_bytes,
                       "best_bound_bytes": res.best_bound_bytes, "peak_bytes": res.peak_bytes,
                       "greedy_gap": res.greedy_peak_bytes / res.best_bound_bytes - 1,
                       "gap": res.gap, "method": res.method, "mip_status": res.mip_status,
                       "status": res.status, "solve_time_s": wall, "valid": valid,
                       "in_time": in_time}
                rows.append(row)
                if not args.json:
                    print(f"{inst.name:22s} pairs {res.num_overlapping_pairs:6d}  greedy gap "
                          f"{row['greedy_gap']:6.1%}  planned gap {res.gap:6.1%}  "
                          f"{res.method:32s} mip {str(res.mip_status):9s} {wall:5.1f} s  "
                          f"valid {valid}", flush=True)
    if args.json:
        print(json.dumps({"rows": rows, "all_valid_in_time": ok}))
    else:
        for kind in ("perfect", "random"):
            gaps = [r["gap"] for r in rows if r["kind"] == kind]
            print(f"{kind}: mean gap {sum(gaps) / len(gaps):.1%}, worst {max(gaps):.1%}")
        print(f"valid layout within the time limit on every instance: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
