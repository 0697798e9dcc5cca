"""`tierplan bench`: the plan benchmark of validate/bench.py (plan, run on a GPU, report).

tierplan bench make-plans --out validate/plans/bench [--lengths 16K,...] [--budgets full,48GiB]
tierplan bench run --plans validate/plans/bench --out DIR [--lengths ..] [--budgets ..] [--modes ..]
                   [--warmup 1] [--repeats 3] [--max-step-s 20] [--no-ideal] [--smoke]
tierplan bench report --measured FILE... [--plans DIR] [--out FILE.md] [--json]
tierplan bench infer --plans validate/plans/infer-bench --out FILE.json [--cells ..] [--modes ..]
                     [--no-reference] [--hf-allocator CONF] [--smoke] [--json]
tierplan bench infer --report FILE... [--plans DIR] [--json]

The arguments are those of ``python3 validate/bench.py`` (one parser, defined there); those of
``infer`` are ``python3 validate/infer_bench.py``'s (the inference bench, one parser there).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="the plan benchmark: make-plans | run | report | infer (see validate/bench.py, validate/infer_bench.py)",
        description="Plan, run and report the benchmark grid (lengths x budgets x modes).",
    )
    p.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="make-plans|run|report|infer ...",
        help="a sub-command and its arguments (`tierplan bench run --help`)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from validate import bench

    argv = list(args.rest)
    if argv[:1] == ["infer"]:
        from validate import infer_bench

        return infer_bench.main(argv[1:], prog="tierplan bench infer", command=["tierplan", "bench", *argv])
    ns = bench.build_parser(prog="tierplan bench").parse_args(argv)
    return bench.dispatch(ns, ["tierplan", "bench", *argv])
