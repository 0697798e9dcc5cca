"""`tierplan plan`: what to keep, offload or recompute per layer, every strategy side by side.

tierplan plan [SCENARIO.yaml] [--model NAME|config.json] [--layers N] [--seq-len 1M] [--batch N]
              [--tp N] [--sp] [--cp N] [--dp N] [--zero N] [--hardware NODE]
              [--gpu-budget 80GiB] [--host-budget 2TB] [--time-limit 10] [--out DIR] [--json]

Prints one table of the strategies (none, full_recompute, selective, offload_all, memo, mip) with
the replayed step time, MFU, HBM and host peaks, and why an infeasible one does not fit; with
--out writes plan.json, trace.json (Perfetto) and memory.png for the fastest feasible strategy.
With neither a scenario nor --model, MEMO's setting is planned: its 7B GPT at 1M tokens on
8xA800 with tp=8 and sequence parallelism. When nothing fits, the binding constraint is printed,
no plan is written, and the exit code is 3; when the MIP's time limit stopped it before it
found any plan and no baseline fits, the exit code is 4 ("time limit", not infeasible). With a
fitting baseline, that baseline's plan is the MIP's row, status ``time_limit:fallback:<name>``.
The baselines and the MIP share --time-limit: the baselines are replayed first (once they have
taken a quarter of it, a copying baseline proven over the host budget is not replayed, and its
row says so), the MIP's own variant then gets at least 60% of the limit and the other variants
what is left; the command returns within the limit plus imports, the baselines' overrun and the
last replay of a plan (benchmarks/time_limits.py). For one GPU and a Llama-family model the
whole-step search (the ``whole_step`` row: chunked head and MLP, model states off HBM, segment
checkpoints) gets the last 60% of the limit, at least that much of CPU time
(benchmarks/whole_step_planning.py); the best is the fastest plan the executor runs
(`Plan.unexecuted`), one it does not run yet only when nothing else fits.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tierplan import flags
from tierplan.commands.estimate import MLP_ACTIVATION_HELP, MLP_ACTIVATIONS
from tierplan.costs import add_prices_arg

EXIT_INFEASIBLE = 3
EXIT_TIME_LIMIT = 4
"""The MIP's time limit stopped it before any plan and no baseline fits: not proven infeasible."""

MEMO_DEFAULTS: dict[str, Any] = {"model": "memo-7b", "seq_len": "1M", "tp": "8", "sp": True,
                                 "hardware": "8xA800"}
"""MEMO's headline run (Zhao et al. 2025, section 6): GPT 7B, 1M tokens, 8 A800 with tp=8 and
sequence parallelism, 2 TB host memory (the 8xA800 preset); AdamW and bf16 as the built-in
scenario. Used when neither a scenario file nor --model is given; other flags still apply."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="per-layer keep / offload / recompute plan, all strategies compared",
        description="Plan activation memory of one training step: baselines, MEMO's rule and "
                    "tierplan's MIP, each replayed by the discrete-event simulator.",
    )
    p.add_argument("scenario", nargs="?", help="scenario file (YAML or JSON); default: MEMO's setting")
    p.add_argument("--model", help="model preset name, path to a Hugging Face config.json, or hub id "
                                   "(org/name: its config.json, from the local cache offline)")
    p.add_argument("--layers", help="override the model's number of decoder layers")
    p.add_argument("--seq-len", help="sequence length, e.g. 512K")
    p.add_argument("--batch", help="micro-batch")
    p.add_argument("--optimizer", choices=("none", "sgd", "adamw"))
    p.add_argument("--mlp-activation", choices=MLP_ACTIVATIONS,
                   help=MLP_ACTIVATION_HELP + "; the baselines use it, the MIP also tries recomputed")
    p.add_argument("--mode", choices=("train", "infer"),
                   help="plan a training step (default) or an inference request (KV and weight placement)")
    p.add_argument("--prompt-len", help="prompt tokens per sequence (infer), e.g. 128K")
    p.add_argument("--gen-len", help="generated tokens per sequence (infer)")
    p.add_argument("--objective", choices=("throughput", "latency"), default="throughput",
                   help="infer: decode tokens/s (default) or request latency (prefill + decode)")
    p.add_argument("--tp", help="tensor-parallel degree")
    p.add_argument("--sp", action="store_true", default=None, help="sequence parallelism (with --tp)")
    p.add_argument("--cp", help="context-parallel degree")
    p.add_argument("--dp", help="data-parallel degree")
    p.add_argument("--zero", help="ZeRO stage 0-3")
    p.add_argument("--hardware", help="node preset (see `tierplan hw list`) or node JSON file")
    p.add_argument("--gpu-budget", type=flags.size(),
                   help="HBM per GPU, e.g. 80GiB (default: the GPU's capacity)")
    p.add_argument("--host-budget", type=flags.size(),
                   help="host memory of the node, e.g. 2TB (default: installed)")
    p.add_argument("--time-limit", type=flags.seconds(), default=10.0,
                   help="MIP time limit in seconds (default 10)")
    p.add_argument("--allocator", choices=("planned", "caching", "expandable"), default="planned",
                   help="planned: addresses planned ahead, a plan fits when its allocated peak does "
                        "(default); caching: PyTorch's caching allocator must also fit, fragmentation "
                        "included; expandable: the same with expandable_segments:True (what the "
                        "plan executor runs under)")
    p.add_argument("--solver", choices=("highs", "cbc"), default="highs", help="MIP solver")
    add_prices_arg(p)
    p.add_argument("--out", help="directory for plan.json, trace.json and memory.png")
    p.add_argument("--memory-snapshot", metavar="OUT.pickle",
                   help="write the best plan's step under the job's allocator as a PyTorch memory "
                        "snapshot (open it in pytorch.org/memory_viz)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _scenario(args: argparse.Namespace, *, gpu_budget_bytes: int | None,
              host_budget_bytes: int | None):
    from tierplan.commands.estimate import build_scenario

    if not args.scenario and not args.model:
        for key, value in MEMO_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    return build_scenario(args, gpu_budget_bytes=gpu_budget_bytes, host_budget_bytes=host_budget_bytes)


def run(args: argparse.Namespace) -> int:
    from hwmodels.prices import load_price_catalog
    from hwmodels.units import UserInputError
    from planners.swap import plan_training
    from tierplan.progress import Progress

    catalog = load_price_catalog(args.prices)
    scenario = _scenario(args, gpu_budget_bytes=args.gpu_budget, host_budget_bytes=args.host_budget)
    model, node = scenario.model, scenario.node
    if scenario.job.mode == "infer":
        return _run_infer(args, scenario)
    if scenario.job.mode != "train":
        raise UserInputError("job.mode: tierplan plan plans training steps and inference requests")
    time_limit = args.time_limit
    with Progress(f"tierplan plan: replaying the baselines and solving the MIP (time limit "
                  f"{time_limit:g} s)"):
        report = plan_training(model, scenario.job, node, gpu_budget_bytes=scenario.gpu_budget_bytes,
                               host_budget_bytes=scenario.host_budget_bytes, time_limit_s=time_limit,
                               solver=args.solver,
                               allocator=args.allocator)
    costs = strategy_costs(report, scenario, catalog)
    if args.json:
        out = report.to_dict()
        for row in out["strategies"]:
            row["cost"] = costs[row["name"]]
        if report.best is None:
            out["binding"] = report.binding
            out["status"] = "time_limit" if report.timed_out else "infeasible"
        print(json.dumps(out, sort_keys=True))
    else:
        # the allocator the reserved peaks are for: the planner's, else the job's
        _print(report, scenario, model, node, costs,
               allocator=args.allocator if args.allocator != "planned" else scenario.job.allocator)
    if report.best is None:
        return _no_plan(report)
    if args.out or args.memory_snapshot:
        written = write_outputs(report, args.out, memory_snapshot=args.memory_snapshot,
                                expandable_segments=scenario.job.allocator == "expandable")
        if not args.json:
            print(f"best: {report.best}; wrote {', '.join(str(p) for p in written)}")
    return 0


def strategy_costs(report, scenario, catalog) -> dict[str, dict]:
    """Each strategy's cost per step and per million tokens: the job's GPUs for its replayed step
    time, plus the host bytes it holds at its peak (per node)."""
    from tierplan.costs import job_cost

    job, node = scenario.job, scenario.node
    tokens_per_step = job.num_tokens * job.parallelism.dp
    out = {}
    for r in report.strategies:
        step = r.step_time_s if r.feasible else None
        out[r.name] = job_cost(catalog, node, num_gpus=job.parallelism.num_gpus, step_time_s=step,
                               tokens_per_s=tokens_per_step / step if step else None,
                               tier_bytes={"host": r.peak_host_bytes} if r.peak_host_bytes else None)
    return out


def _no_plan(report) -> int:
    """A report (training or inference) without a plan: the binding constraint or the time limit
    on stderr, and its exit code."""
    import sys

    if report.timed_out:
        print(f"tierplan plan: {report.binding}", file=sys.stderr)
        return EXIT_TIME_LIMIT
    print(f"tierplan plan: infeasible: {report.binding}", file=sys.stderr)
    return EXIT_INFEASIBLE


def _run_infer(args: argparse.Namespace, scenario) -> int:
    """``--mode infer``: the rules and the MIP of `planners.infer`, each replayed; plan.json of
    the best with --out; exit 3 with the binding constraint when nothing fits."""
    from hwmodels.outputs import OutputSet, make_out_dir
    from hwmodels.units import UserInputError
    from planners.infer import plan_inference, tiers_line
    from planners.plan import write_plan

    par = scenario.job.parallelism
    if (par.tp, par.cp, par.dp) != (1, 1, 1):
        raise UserInputError("--tp/--cp/--dp: inference plans are for one GPU")
    report = plan_inference(scenario, objective=args.objective, time_limit_s=args.time_limit, solver=args.solver)
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    else:
        _print_infer(report, scenario)
    if report.best is None:
        return _no_plan(report)
    best = report.result(report.best)
    if not args.json:
        print(f"best: {report.best}: {tiers_line(best.plan)}")
    if args.out:
        out = make_out_dir(args.out, field="--out")
        with OutputSet() as outputs:
            outputs.write(outputs.reserve(out / "plan.json", field="--out"), lambda p: write_plan(best.plan, p))
        if not args.json:
            print(f"wrote {out / 'plan.json'}")
    return 0


def _print_infer(report, scenario) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import format_bytes, format_seconds

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=160)
    job, node = scenario.job, scenario.node
    title = (f"{scenario.model.name} - infer prompt {job.prompt_len:,} + gen {job.gen_len:,} x {job.batch} - "
             f"engine {job.engine} - {node.name} - budgets {format_bytes(scenario.gpu_budget_bytes)} HBM, "
             f"{format_bytes(scenario.host_budget_bytes)} host - objective {report.objective}")
    table = Table(title=title, title_justify="left")
    for col in ("strategy", "feasible", "prefill", "decode step", "tokens/s", "request", "HBM peak",
                "host peak", "why not / note"):
        table.add_column(col, justify="left" if col in ("strategy", "feasible", "why not / note") else "right")
    for r in report.strategies:
        rp = r.replay
        name = f"[bold]{r.name}[/bold]" if r.name == report.best else r.name
        note = r.reason or (r.plan.provenance.status if r.plan is not None and r.name == "mip" else "")
        table.add_row(name, "[green]yes[/green]" if r.feasible else "[red]no[/red]",
                      format_seconds(rp.prefill_time_s) if rp else "-",
                      format_seconds(rp.decode_step_time_s) if rp else "-",
                      f"{rp.decode_tokens_per_s:,.1f}" if rp else "-",
                      format_seconds(rp.step_time_s) if rp else "-",
                      format_bytes(rp.tier_peak_bytes["hbm"]) if rp else "-",
                      format_bytes(rp.tier_peak_bytes.get("host", 0)) if rp else "-", note)
    console.print(table)


def write_outputs(report, out_dir, *, memory_snapshot: str | None = None,
                  expandable_segments: bool = False) -> list:
    """plan.json, trace.json and memory.png of the best strategy into ``out_dir`` (when given),
    and its step as a memory snapshot at ``memory_snapshot`` (when given)."""
    import pathlib

    from hwmodels.outputs import OutputSet, make_out_dir
    from planners.plan import write_plan
    from simulator.des.trace import plot_step, write_chrome_trace
    from simulator.memory_snapshot import memory_snapshot as snapshot_of
    from simulator.memory_snapshot import write_memory_snapshot

    best = report.result(report.best)
    written: list[pathlib.Path] = []
    with OutputSet() as outputs:  # every file, or none
        if memory_snapshot is not None:  # checked before --out's folder is made
            target = pathlib.Path(memory_snapshot)
            tmp = outputs.reserve(target, field="--memory-snapshot", suffixes=(".pickle",))
            snap = snapshot_of(best.applied.workload, expandable_segments=expandable_segments)
            outputs.write(tmp, lambda p: write_memory_snapshot(snap, p))
            written.append(target)
        if out_dir is not None:
            out = make_out_dir(out_dir, field="--out")
            writers = {"plan.json": lambda p: write_plan(best.plan, p),
                       "trace.json": lambda p: write_chrome_trace(best.replay.sim, p),
                       "memory.png": lambda p: plot_step(best.replay.sim, p)}
            for name, produce in writers.items():
                outputs.write(outputs.reserve(out / name, field="--out"), produce)
            written[:0] = [out / name for name in writers]
    return written


def _print(report, scenario, model, node, costs, *, allocator: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import format_bytes, format_seconds
    from tierplan.costs import describe_rate, format_usd

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=160)
    job = scenario.job
    par = job.parallelism
    mip = report.result("mip")
    prov = mip.plan.provenance if mip.plan is not None else None
    title = (f"{model.name} - train seq {job.seq_len:,} x {job.micro_batch} - {node.name} "
             f"(tp={par.tp}{' +sp' if par.sequence_parallel else ''} cp={par.cp} dp={par.dp})"
             f" - budgets {format_bytes(scenario.gpu_budget_bytes)} HBM/GPU, "
             f"{format_bytes(scenario.host_budget_bytes)} host")
    table = Table(title=title, title_justify="left")
    reserved_col = f"reserved ({allocator})"
    for col in ("strategy", "feasible", "step time", "MFU", "HBM peak", reserved_col, "host peak",
                "$/step", "$/Mtok", "why not / note"):
        table.add_column(col, justify="left" if col in ("strategy", "feasible", "why not / note")
                         else "right")
    for r in report.strategies:
        mark = "[green]yes[/green]" if r.feasible else "[red]no[/red]"
        name = f"[bold]{r.name}[/bold]" if r.name == report.best else r.name
        table.add_row(name, mark,
                      format_seconds(r.step_time_s) if r.step_time_s is not None else "-",
                      f"{r.mfu:.1%}" if r.mfu is not None else "-",
                      format_bytes(r.peak_hbm_bytes) if r.peak_hbm_bytes is not None else "-",
                      format_bytes(r.peak_reserved_bytes) if r.peak_reserved_bytes is not None else "-",
                      format_bytes(r.peak_host_bytes) if r.peak_host_bytes is not None else "-",
                      format_usd(costs[r.name].get("usd_per_step")),
                      format_usd(costs[r.name].get("usd_per_million_tokens")),
                      r.reason)
    console.print(table)
    if report.best == "whole_step":
        from planners.swap.whole import where_bytes_live

        res = report.result("whole_step")
        rows = where_bytes_live(res)
        console.print(f"whole_step: {res.reason}; tiers used: {', '.join(t for t, _, _ in rows)}")
        for tier, peak, kinds in rows:
            parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
            console.print(f"  {tier:<5} peak {format_bytes(peak):>11}: {parts}")
    best = costs.get(report.best or "")
    console.print(describe_rate(best if best is not None else next(iter(costs.values()))))
    if prov is not None and prov.solver:
        gap = f"{prov.gap:.2%}" if prov.gap is not None else "n/a"
        console.print(f"mip: {prov.solver} {prov.status}, gap {gap}, solved and replayed in "
                      f"{format_seconds(mip.solve_time_s)}; replayed by {mip.replay.replayed_by}; "
                      f"prefetch_at {mip.plan.prefetch_at}, mlp_activation {mip.plan.mlp_activation}")
