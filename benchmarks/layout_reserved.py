"""Predicted vs measured reserved memory of the caching allocator on every committed H200 step.

Replays each step record's analytical Workload (validate/measurements/h200/steps-*.json: HF
models, one training step on an H200) through ``simulator.allocator`` the way
validate/measure_steps.py ran it (two 32 MiB cuBLAS workspaces left from earlier cases,
weights, one warm-up and three timed steps) and compares ``max_memory_reserved``; also shows
what an arena planned by ``tierplan layout`` would need for the same step's tensors.
Target (issue 7): within 5% on at least six runs. Exits 1 when fewer than six are.

Run: .venv/bin/python benchmarks/layout_reserved.py [--json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

TOL = 0.05
REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-layout", action="store_true", help="skip planning the arena")
    args = ap.parse_args(argv)

    from hwmodels.units import GiB
    from planners.layout.plan import plan_workload_layout
    from simulator.allocator import CUBLAS_WORKSPACE_BYTES, predict_workload_reserved
    from simulator.model import ModelSpec
    from simulator.templates import training_workload
    from validate.compare import job_for_step_record

    rows = []
    for path in sorted((REPO / "validate" / "measurements" / "h200").glob("steps-h200-*.json")):
        for rec in json.loads(path.read_text())["records"]:
            if rec.get("status") != "ok":
                continue
            wl = training_workload(ModelSpec.from_hf_config(rec["config"]), job_for_step_record(rec))
            rep = predict_workload_reserved(wl, num_steps=4)
            meas = rec["peak_reserved_bytes"]
            row = {"file": path.name, "case": rec["case"], "seq_len": rec["seq_len"],
                   "checkpointing": rec["gradient_checkpointing"],
                   "measured_allocated_bytes": rec["peak_allocated_bytes"],
                   "measured_reserved_bytes": meas,
                   "predicted_reserved_bytes": rep.peak_reserved_bytes,
                   "error": rep.peak_reserved_bytes / meas - 1}
            if not args.no_layout:
                lay = plan_workload_layout(wl, time_limit_s=10)
                row["planned_arena_bytes"] = lay.peak_bytes + 2 * CUBLAS_WORKSPACE_BYTES
            rows.append(row)
            if not args.json:
                arena = (f"  arena {row['planned_arena_bytes'] / GiB:7.2f} GiB"
                         if "planned_arena_bytes" in row else "")
                print(f"{path.stem[-2:]:>3s} {rec['case']:26s} {rec['seq_len']:6d} "
                      f"ckpt={'yes' if rec['gradient_checkpointing'] else 'no ':3s} allocated "
                      f"{rec['peak_allocated_bytes'] / GiB:7.2f}  reserved measured "
                      f"{meas / GiB:7.2f} predicted {rep.peak_reserved_bytes / GiB:7.2f} GiB "
                      f"({row['error']:+.2%}){arena}", flush=True)
    within = sum(abs(r["error"]) <= TOL for r in rows)
    worst = max(abs(r["error"]) for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "num_within_tol": within, "worst_abs_error": worst}))
    else:
        print(f"{within} of {len(rows)} runs within {TOL:.0%}; worst |error| {worst:.2%}")
    return 0 if within >= 6 else 1


if __name__ == "__main__":
    sys.exit(main())
