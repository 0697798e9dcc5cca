"""The full fuzz run of the `tierplan` command line: seeded hostile inputs on every subcommand.

python benchmarks/fuzz_cli.py --cases 2000 --seed 1 [--jobs 2] [--show 20] [--json]

Generates ``--cases`` inputs from ``--seed`` (tests/fuzz/generate.py: every subcommand x every
input channel), runs each in a forked child of one warm process (tests/fuzz/runner.py) and
prints the count per failure class, per subcommand and per channel, then the first failures.
Exit 1 when any case failed. The quick subset of the same suite runs in tests/fuzz/test_fuzz_cli.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("--show", type=int, default=20, help="failures to print (default 20)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()

    from fuzz.runner import FAILURE_CLASSES, describe, fuzz, summarize

    start = time.monotonic()
    done = [0]

    def progress(outcome) -> None:
        done[0] += 1
        if done[0] % 100 == 0:
            print(f"  {done[0]}/{args.cases} cases, {time.monotonic() - start:.0f} s", file=sys.stderr)

    outcomes = fuzz(args.seed, args.cases, jobs=args.jobs, progress=progress)
    wall = time.monotonic() - start
    summary = summarize(outcomes)
    summary.update(seed=args.seed, jobs=args.jobs, wall_s=round(wall, 1), date=time.strftime("%Y-%m-%d"),
                   machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    failed = [o for o in outcomes if o.failures]
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"{summary['cases']} cases (seed {args.seed}, {summary['invalid_by_construction']} invalid by "
              f"construction) in {wall:.0f} s on {summary['machine']}, {args.jobs} at a time; "
              f"slowest {summary['slowest_s']} s")
        print("failures per class: " + ", ".join(f"{k} {summary['per_class'][k]}" for k in FAILURE_CLASSES))
        print(f"{'subcommand':<24}{'cases':>7}{'invalid':>9}{'exit 2':>8}{'exit 0':>8}{'failed':>8}")
        for name, c in summary["per_command"].items():
            print(f"{name:<24}{c.get('cases', 0):>7}{c.get('invalid', 0):>9}{c.get('exit2', 0):>8}"
                  f"{c.get('exit0', 0):>8}{c.get('failed', 0):>8}")
        print("cases per channel: " + ", ".join(f"{k} {v}" for k, v in summary["per_channel"].items()))
    for o in failed[: args.show]:
        print(describe(o), file=sys.stderr)
        if o.hang_stack:
            print("   stack: " + " | ".join(o.hang_stack.strip().splitlines()[1:7]), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
