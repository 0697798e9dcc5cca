"""`tierplan validate`: predicted vs measured, side by side, for the committed GPU measurements.

tierplan validate ops   [--measurements FILE...] [--hardware 1xH200] [--tolerance 0.10] [--json]
tierplan validate steps [--measurements FILE...] [--probe FILE...] [--json]
tierplan validate plan  PLAN... [--out DIR] [--baselines none,checkpoint] [--check-grads T] [--smoke]
                        [--arena] [--memory-trace] [--kernel-profile] [--no-cap] [--expandable-segments] [--json]

Exit code 0 when every row is within --tolerance, 1 otherwise (the rows outside are listed).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from hwmodels.limits import MAX_REPEATS
from tierplan import flags

TOLERANCE = flags.number(minimum=0.0, maximum=1e3, strict_minimum=False)  # a relative error


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
    ops.add_argument("--tolerance", type=TOLERANCE, default=0.10, help="relative error counted as a pass")
    ops.add_argument("--all", action="store_true", help="print every row, not only the summary and misses")
    ops.add_argument("--json", action="store_true", help="print one JSON object")
    ops.set_defaults(run=run_ops)

    steps = sub.add_parser("steps", help="whole training steps: peak allocated and step time")
    steps.add_argument("--measurements", nargs="+", metavar="FILE",
                       help="measure_steps.py JSON files (default: validate/measurements/h200/steps-*)")
    steps.add_argument("--probe", nargs="*", metavar="FILE",
                       help="reference probe files (default: validate/measurements/reference/h200-probe-*)")
    steps.add_argument("--tolerance", type=TOLERANCE, default=0.10, help="relative error counted as a pass")
    steps.add_argument("--json", action="store_true", help="print one JSON object")
    steps.set_defaults(run=run_steps)

    register_plan(sub)


def register_plan(sub: Any) -> None:
    """`tierplan validate plan PLAN...`: run plans on this machine's GPU (validate/run_plan.py)."""
    plan = sub.add_parser("plan", help="run plans on this GPU: step time and peaks vs their prediction")
    plan.add_argument("plans", nargs="+", metavar="PLAN", help="plan.json files (tierplan plan --out)")
    plan.add_argument("--out", default="out/validate-plan", help="directory for measured.json and comparison.json")
    plan.add_argument("--warmup", type=flags.integer(minimum=0, maximum=MAX_REPEATS), default=1,
                      help="untimed steps first")
    plan.add_argument("--repeats", type=flags.integer(minimum=1, maximum=MAX_REPEATS), default=3,
                      help="timed steps (the median is reported)")
    plan.add_argument("--baselines", default="", help="also run the first plan's job as: none, checkpoint")
    plan.add_argument("--check-grads", type=flags.count(), default=None, metavar="TOKENS",
                      help="compare each plan's gradients with no plan at this many tokens")
    plan.add_argument("--smoke", action="store_true", help="a tiny copy of each model on the CPU")
    plan.add_argument("--arena", action="store_true",
                      help="the executor's prefetch and assembly buffers at planned offsets in one "
                           "allocation (the warm-up step records them)")
    from validate.diagnostics import add_diagnostic_args

    add_diagnostic_args(plan)
    plan.add_argument("--state-dir", default=None,
                      help="directory for optimizer states a plan puts on nvme (default: OUT/optimizer-states)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(run=run_plan)


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


def run_plan(args: argparse.Namespace) -> int:
    """Exit 0 when every case ran, 1 when one was refused or ran out of memory."""
    from hwmodels.units import UserInputError, format_bytes, format_seconds
    from validate.diagnostics import diagnostic_kwargs
    from validate.run_plan import BASELINES, run

    names = tuple(b for b in args.baselines.split(",") if b)
    for name in names:
        if name not in BASELINES:
            raise UserInputError(f"--baselines: unknown {name!r} (choose from {', '.join(BASELINES)})")
    from hwmodels.outputs import make_out_dir
    from planners.plan import load_plan

    modes = set()
    for path in args.plans:  # every plan is read and checked before anything runs
        if not pathlib.Path(path).is_file():
            raise UserInputError(f"PLAN: no such file {path}")
        modes.add(load_plan(path).scenario.job.mode)
    if "infer" in modes:
        return _run_infer_plans(args, mixed=len(modes) > 1)
    make_out_dir(args.out, field="--out")
    result = run(args.plans, out_dir=args.out, warmup=args.warmup, repeats=args.repeats,
                 baselines=names, smoke=args.smoke, check_grads_tokens=args.check_grads,
                 arena=args.arena, **diagnostic_kwargs(args), state_dir=args.state_dir,
                 argv=args.argv)
    cases = result["measured"]["cases"]
    code = 0 if all(c["status"] == "ok" for c in cases) else 1
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return code
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False, width=None if Console().is_terminal else 140)
    table = Table(title="plans run: predicted vs measured", title_justify="left")
    for col in ("case", "status", "step time", "pred", "HBM peak", "pred", "host pool", "pred"):
        table.add_column(col, justify="left" if col in ("case", "status") else "right")
    for c in cases:
        pred = c.get("prediction") or {}
        ok = c["status"] == "ok"

        def cell(key: str, fmt, src=c) -> str:
            return fmt(src[key]) if key in src and src[key] is not None else "-"

        table.add_row(c["case"], c["status"] if ok else f"[red]{c['status']}[/red]",
                      cell("step_time_s", format_seconds) if ok else "-", cell("step_time_s", format_seconds, pred),
                      cell("peak_allocated_bytes", format_bytes) if ok else "-",
                      cell("peak_hbm_bytes", format_bytes, pred),
                      cell("host_pool_peak_bytes", format_bytes) if ok else "-",
                      cell("peak_host_bytes", format_bytes, pred))
    console.print(table)
    for c in cases:
        if c["status"] != "ok":
            console.print(f"{c['case']}: {c.get('message')}")
        if "grad_check" in c:
            g = c["grad_check"]
            console.print(f"{c['case']}: gradients at {g['seq_len']} tokens vs no plan: "
                          f"{'bitwise equal' if g['bitwise_equal'] else 'max |diff| ' + format(g['max_abs_diff'], '.3g')}")
    console.print(f"wrote {args.out}/measured.json, {args.out}/comparison.json")
    return code


def _run_infer_plans(args: argparse.Namespace, *, mixed: bool) -> int:
    """Inference plans: one run each on the decode engine their job names
    (validate/infer_bench.py), measured against their prediction; INFER_RUNS_FILE in --out."""
    from hwmodels.outputs import make_out_dir
    from hwmodels.units import UserInputError
    from validate import infer_bench

    if mixed:
        raise UserInputError("PLAN: inference and training plans run separately")
    used = [f"--{k.replace('_', '-')}" for k in ("baselines", "check_grads", "arena", "memory_trace",
                                                  "kernel_profile", "no_cap", "expandable_segments")
            if getattr(args, k, None)]
    if used:
        raise UserInputError(f"{used[0]}: for training plans only")
    out = make_out_dir(args.out, field="--out")
    return infer_bench.validate_plans(args.plans, smoke=args.smoke, out=str(out / INFER_RUNS_FILE),
                                      as_json=args.json, argv=args.argv)


INFER_RUNS_FILE = "infer-bench-runs.json"
