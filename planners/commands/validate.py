"""`tierplan validate`: predicted vs measured, side by side, for the committed GPU measurements.

tierplan validate ops   [--measurements FILE...] [--hardware 1xH200] [--tolerance 0.10] [--json]
tierplan validate steps [--measurements FILE...] [--probe FILE...] [--json]

Exit code 0 when every row is within --tolerance, 1 otherwise (the rows outside are listed).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "validate",
        help="predicted vs measured for the committed GPU measurements",
        description="Re-predict committed GPU measurements with the current models.",
    )
    sub = p.add_subparsers(dest="validate_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])

    ops = sub.add_parser("ops", help="operator times: GEMM, attention, norms, copies")
    ops.add_argument("--measurements", nargs="+", metavar="FILE",
                     help="microbenchmark JSON files (default: validate/measurements/h200/microbench-*)")
    ops.add_argument("--hardware", default="1xH200", help="node whose profile predicts (default 1xH200)")
    ops.add_argument("--tolerance", type=float, default=0.10, help="relative error counted as a pass")
    ops.add_argument("--all", action="store_true", help="print every row, not only the summary and misses")
    ops.add_argument("--json", action="store_true", help="print one JSON object")
    ops.set_defaults(run=run_ops)

    steps = sub.add_parser("steps", help="whole training steps: peak allocated and step time")
    steps.add_argument("--measurements", nargs="+", metavar="FILE",
                       help="measure_steps.py JSON files (default: validate/measurements/h200/steps-*)")
    steps.add_argument("--probe", nargs="*", metavar="FILE",
                       help="reference probe files (default: validate/measurements/reference/h200-probe-*)")
    steps.add_argument("--tolerance", type=float, default=0.10, help="relative error counted as a pass")
    steps.add_argument("--json", action="store_true", help="print one JSON object")
    steps.set_defaults(run=run_steps)


def _paths(given: list[str] | None, kind: str) -> list[pathlib.Path]:
    from hwmodels.units import UserInputError
    from validate.compare import default_files

    if given is None:
        return default_files(kind)
    paths = [pathlib.Path(g) for g in given]
    for path in paths:
        if not path.is_file():
            raise UserInputError(f"--measurements: no such file {path}")
    return paths


def _report(rows, tolerance: float, as_json: bool, show_all: bool, title: str) -> int:
    misses = [r for r in rows if abs(r.rel_error) > tolerance]
    if as_json:
        print(json.dumps({"tolerance": tolerance, "num_rows": len(rows), "num_within": len(rows) - len(misses),
                          "rows": [r.to_dict() for r in rows]}, sort_keys=True))
        return 0 if not misses else 1
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import format_bytes, format_seconds

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=140)

    def fmt(figure: str, v: float) -> str:
        return format_seconds(v) if figure == "time_s" else format_bytes(v)

    table = Table(title=title, title_justify="left")
    for col in ("case", "figure", "predicted", "measured", "error"):
        table.add_column(col, justify="left" if col in ("case", "figure") else "right")
    for r in rows if show_all else misses:
        err = f"{r.rel_error:+.1%}"
        if abs(r.rel_error) > tolerance:
            err = f"[red]{err}[/red]"
        table.add_row(r.case, r.figure.removesuffix("_s").removesuffix("_bytes"), fmt(r.figure, r.predicted),
                      fmt(r.figure, r.measured), err)
    if show_all or misses:
        console.print(table)
    by_fig: dict[str, list] = {}
    for r in rows:
        by_fig.setdefault(r.figure, []).append(abs(r.rel_error))
    for fig, errs in sorted(by_fig.items()):
        errs.sort()
        within = sum(e <= tolerance for e in errs)
        console.print(f"{fig}: {within}/{len(errs)} within {tolerance:.0%}; median |error| "
                      f"{errs[len(errs) // 2]:.1%}, max {errs[-1]:.1%}")
    return 0 if not misses else 1


def run_ops(args: argparse.Namespace) -> int:
    from validate.compare import compare_ops

    rows = compare_ops(_paths(args.measurements, "microbench"), args.hardware)
    return _report(rows, args.tolerance, args.json, args.all, "operators: predicted vs measured")


def run_steps(args: argparse.Namespace) -> int:
    from validate.compare import compare_steps

    probe = _paths(args.probe, "probe") if args.probe is None or args.probe else []
    rows = compare_steps(_paths(args.measurements, "steps"), probe)
    return _report(rows, args.tolerance, args.json, True, "training steps: predicted vs measured")
