"""`tierplan simulate`: replay one training step on the discrete-event engine.

tierplan simulate [SCENARIO.yaml] [the scenario flags of `tierplan estimate`] [--gpus N]
                  [--offload FRAC [--offload-tier host|cxl|nvme]]
tierplan simulate --plan plan.json
                  [--lookahead N] [--trace out.json] [--plot out.png] [--memory-snapshot out.pickle] [--json]

Builds the scenario exactly as `estimate` does, maps its Workload onto one compute stream per
GPU (`simulator.des.schedule_from_workload`) and replays it with, either, the per-layer keep /
offload / recompute decisions of a plan written by `tierplan plan` (on the scenario the plan
embeds, so no scenario flag goes with ``--plan``; applied and replayed by
`planners.swap.evaluate`, the path of the planner's own prediction), or a uniform offload of a
fraction of every layer's saved activations (all but the top ``lookahead + 1`` layers, which
MEMO keeps too) with prefetch, written as a plan's layers (`offload_layers`) and applied and
replayed as a plan is. Reports step time, exposed transfer stall, per-tier peaks and
OOM events.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hwmodels.outputs import IMAGE_SUFFIXES


def register(subparsers: Any) -> None:
    from tierplan.commands.estimate import add_scenario_args

    p = subparsers.add_parser(
        "simulate",
        help="discrete-event replay of one training step: overlap, contention, stalls, OOM",
        description="Replay one training step with streams, copy engines, shared links and "
                    "memory tiers; write a Chrome trace and a memory/Gantt PNG.",
    )
    add_scenario_args(p)
    p.add_argument("--gpus", help="GPUs of the node to simulate (default: the job's, at most "
                                  "the node's)")
    p.add_argument("--plan", metavar="PLAN.json", help="replay a plan written by `tierplan plan`")
    p.add_argument("--offload", help="fraction (0-1) of each layer's saved activations to offload")
    p.add_argument("--offload-tier", choices=("host", "cxl", "nvme"), default="host",
                   help="where offloaded activations go (default host)")
    p.add_argument("--lookahead", default="1",
                   help="prefetch a layer when the backward of the layer this many above it starts")
    p.add_argument("--trace", metavar="OUT.json", help="write a Chrome trace (open in Perfetto)")
    p.add_argument("--plot", metavar="OUT.png", help="write memory over time and a stream Gantt")
    p.add_argument("--memory-snapshot", metavar="OUT.pickle",
                   help="write the step's allocations under the job's allocator as a PyTorch memory "
                        "snapshot (open it in pytorch.org/memory_viz)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _frac(value: str | None, field: str) -> float | None:
    from hwmodels.units import UserInputError

    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        raise UserInputError(f"{field}: expected a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= x <= 1.0:
        raise UserInputError(f"{field}: must lie between 0 and 1, got {value!r}")
    return x


def run(args: argparse.Namespace) -> int:
    from hwmodels.limits import MAX_LAYERS
    from hwmodels.units import UserInputError
    from simulator.des import schedule_from_workload, simulate
    from simulator.estimator import estimate_training
    from simulator.templates import training_workload
    from tierplan.commands.estimate import build_scenario, int_flag

    if args.plan is not None:
        return _run_plan(args)
    scenario = build_scenario(args)
    model, node = scenario.model, scenario.node
    if scenario.job.mode != "train":
        raise UserInputError("--mode: simulate replays training steps or, with --plan, inference plans "
                             "(tierplan plan --mode infer writes one)")
    offload = _frac(args.offload, "--offload")
    lookahead = int_flag(args.lookahead, "--lookahead", minimum=0, maximum=MAX_LAYERS)
    assert lookahead is not None  # the flag has a default
    job_gpus = scenario.job.parallelism.num_gpus
    gpus = int_flag(args.gpus, "--gpus") if args.gpus is not None else min(job_gpus, node.num_gpus)
    if gpus is None or not 1 <= gpus <= node.num_gpus:
        raise UserInputError(f"--gpus: must be between 1 and {node.num_gpus} ({node.name}), "
                             f"got {args.gpus!r}")
    record = bool(args.plot or args.trace or not args.json)
    workload = training_workload(model, scenario.job, node)
    est = estimate_training(model, scenario.job, node, workload=workload)
    if offload and scenario.job.checkpointing == "selective":
        raise UserInputError("--offload: a plan offloads no token fraction of a selective checkpoint's "
                             "layers; use --checkpointing none or full (or tierplan plan)")
    reserved = est.peak_reserved_bytes
    if offload:
        result, reserved, workload = _replay_offload(offload, scenario, num_gpus=gpus, lookahead=lookahead,
                                                     tier=args.offload_tier, record_timeline=record)
    else:
        result = simulate(schedule_from_workload(workload, node, num_gpus=gpus), record_timeline=record)
    return _report(args, result, est, gpus, scenario, reserved, workload)


def _run_plan(args: argparse.Namespace) -> int:
    """``--plan``: replay the plan on the scenario it embeds, exactly as the planner replays its
    candidates (``planners.swap.evaluate``: the job's GPUs that share the host). The plan holds
    its model, job and node, so no scenario flag may be given beside it."""
    from hwmodels.units import UserInputError
    from planners.plan import load_plan
    from planners.swap import PlanContext, evaluate
    from simulator.estimator import estimate_training
    from tierplan.commands.estimate import scenario_flag_dests

    given = [flag for flag in scenario_flag_dests() if getattr(args, flag, None) is not None]
    if args.offload is not None:
        given.insert(0, "offload")
    if args.gpus is not None:
        given.insert(0, "gpus")
    if given:
        name = "scenario file" if given[0] == "scenario" else f"--{given[0].replace('_', '-')}"
        raise UserInputError(f"{name}: a plan carries its model, job and node; give --plan alone")
    plan = load_plan(args.plan)
    if plan.scenario.job.mode == "infer":
        return _run_infer_plan(args, plan)
    ctx = PlanContext.from_plan(plan, source=args.plan)
    res = evaluate(ctx, plan.provenance.planner, plan.layers)
    replayed = res.replay
    assert replayed is not None  # evaluate always replays
    result: Any = replayed.sim
    gpus = sum(s.kind == "compute" for s in result.schedule.streams)
    est = estimate_training(ctx.model, ctx.job, ctx.node)
    assert res.applied is not None  # evaluate applies the plan
    return _report(args, result, est, gpus, ctx.scenario, res.peak_reserved_bytes, res.applied.workload)


def _run_infer_plan(args: argparse.Namespace, plan) -> int:
    """An inference plan: `planners.infer.replay_plan` (the planner's own replay), printed."""
    from hwmodels.units import UserInputError, format_bytes, format_seconds
    from planners.infer import replay_plan, tiers_line

    for flag in ("trace", "plot", "memory_snapshot"):
        if getattr(args, flag):
            raise UserInputError(f"--{flag.replace('_', '-')}: not written for inference plans yet")
    rep = replay_plan(plan)
    summary = {"prefill_time_s": rep.prefill_time_s, "decode_step_time_s": rep.decode_step_time_s,
               "decode_context_len": rep.context_len, "decode_tokens_per_s": rep.decode_tokens_per_s,
               "step_time_s": rep.step_time_s, "decode_stall_s": rep.decode_stall_s,
               "decode_compute_s": rep.decode_compute_s, "decode_link_bytes": rep.decode_link_bytes,
               "tier_peak_bytes": rep.tier_peak_bytes, "feasible": rep.feasible, "binding": rep.binding,
               "engine": rep.engine, "replayed_by": rep.replayed_by, "tiers": tiers_line(plan)}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    sc = plan.scenario
    print(f"{sc.model.name} - infer prompt {sc.job.prompt_len:,} + gen {sc.job.gen_len:,} x {sc.job.batch} - "
          f"engine {rep.engine} - {sc.node.name}")
    print(f"  {summary['tiers']}")
    print(f"  prefill {format_seconds(rep.prefill_time_s)}; decode step {format_seconds(rep.decode_step_time_s)} "
          f"at context {rep.context_len:,} (compute {format_seconds(rep.decode_compute_s)}, stall "
          f"{format_seconds(rep.decode_stall_s)}, {format_bytes(rep.decode_link_bytes)} over the links); "
          f"{rep.decode_tokens_per_s:,.1f} tokens/s; request {format_seconds(rep.step_time_s)}")
    print("  peaks: " + ", ".join(f"{t} {format_bytes(b)}" for t, b in rep.tier_peak_bytes.items())
          + ("" if rep.feasible else f"; does not fit: {rep.binding}"))
    return 0


def _report(args: argparse.Namespace, result, est, gpus: int, scenario,
            reserved_bytes: int | None, workload) -> int:
    from hwmodels.outputs import OutputSet
    from simulator.des.trace import plot_step, write_chrome_trace
    with OutputSet() as outputs:  # the trace, the picture and the snapshot, or none of them
        if args.memory_snapshot:
            from simulator.memory_snapshot import memory_snapshot, write_memory_snapshot

            snap = memory_snapshot(workload, expandable_segments=scenario.job.allocator == "expandable")
            outputs.write(outputs.reserve(args.memory_snapshot, field="--memory-snapshot",
                                          suffixes=(".pickle",)),
                          lambda p: write_memory_snapshot(snap, p))
        if args.trace:
            outputs.write(outputs.reserve(args.trace, field="--trace"),
                          lambda p: write_chrome_trace(result, p))
        if args.plot:
            outputs.write(outputs.reserve(args.plot, field="--plot", suffixes=IMAGE_SUFFIXES),
                          lambda p: plot_step(result, p))
    summary = _summary(result, est, gpus)
    summary["peak_reserved_bytes"] = reserved_bytes
    summary["allocator"] = scenario.job.allocator
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    _print(summary, scenario.model.name, scenario, scenario.node.name)
    return 0


def offload_layers(num_layers: int, frac: float, *, checkpointing: str, lookahead: int) -> list:
    """The LayerPlans of ``--offload FRAC``: every layer but the top ``lookahead + 1`` (which
    MEMO keeps too) offloads ``frac`` of the tokens of each saved tensor it produces and keeps
    the rest; its input, which a plan offloads whole or keeps, is offloaded when ``frac`` is 1.
    A checkpointed layer (the job's ``checkpointing``: its saved tensors are its input and,
    under selective, what the checkpoint region leaves) offloads its input whole when ``frac``
    is above 0 (the plan format offloads no token fraction of a checkpointed layer)."""
    from planners.plan import ACTIVATION_ROLES, LayerPlan, RoleAction

    inp = "offload" if frac >= 1.0 else "keep"
    act = RoleAction(action="offload", alpha_frac=frac, keep_frac=1.0 - frac)
    roles = dict.fromkeys(ACTIVATION_ROLES, act)
    out = []
    for i in range(num_layers):
        if i >= num_layers - (lookahead + 1):
            out.append(LayerPlan(layer=i, checkpoint=checkpointing))
        elif checkpointing != "none":
            out.append(LayerPlan(layer=i, checkpoint=checkpointing, input="offload" if frac > 0 else "keep"))
        else:
            out.append(LayerPlan(layer=i, input=inp, roles=roles))
    return out


def _replay_offload(frac: float, scenario, *, num_gpus: int, lookahead: int, tier: str,
                    record_timeline: bool):
    """The DES replay of ``offload_layers`` on ``num_gpus`` GPUs, applied and replayed as a
    plan's layers are (`planners.swap.apply_plan`, `planners.swap.replay`), and the reserved
    peak of the applied workload under the job's allocator."""
    from planners.swap import PlanContext, apply_plan, replay
    from simulator.allocator import predict_reserved

    ctx = PlanContext.from_scenario(scenario, lookahead=lookahead)
    node = scenario.node
    layers = offload_layers(scenario.model.num_layers, frac, checkpointing=scenario.job.checkpointing,
                            lookahead=lookahead)
    applied = apply_plan(ctx.profile_for([lp.checkpoint for lp in layers]), layers, lookahead=lookahead,
                         copy_s_per_byte=ctx.copy_s_per_byte)
    sim = replay(applied, node, num_gpus=num_gpus, tier=tier, record_timeline=record_timeline).sim
    reserved, _ = predict_reserved(applied.workload, allocator=scenario.job.allocator,
                                   capacity_bytes=scenario.gpu_budget_bytes)
    return sim, reserved, applied.workload


def _summary(result, est, gpus: int) -> dict:
    peak_pool: dict[str, Any] = {}
    for p in result.pools:
        if p.peak_bytes and (p.tier not in peak_pool or p.peak_bytes > peak_pool[p.tier].peak_bytes):
            peak_pool[p.tier] = p
    return {
        "step_time_s": result.step_time_s,
        "estimate_step_time_s": est.step_time_s,
        "peak_bytes": result.peak_bytes_by_tier(),
        "peak": {tier: {"pool": p.name, "at_s": p.peak_at_s, "task": p.peak_task,
                        "capacity_bytes": p.capacity_bytes} for tier, p in peak_pool.items()},
        "stall_s": result.stall_s,
        "collective_wait_s": max((s.collective_wait_s for s in result.streams), default=0.0),
        "num_events": result.num_events,
        "num_gpus_simulated": gpus,
        "oom": [{"time_s": o.time_s, "pool": o.pool, "tier": o.tier, "tensor": o.tensor,
                 "task": o.task, "live_bytes": o.live_bytes, "capacity_bytes": o.capacity_bytes}
                for o in result.oom],
        "streams": {s.name: {"busy_s": s.busy_s, "idle_s": s.idle_s, "stall_s": s.stall_s}
                    for s in result.streams if s.num_tasks},
        "links": {lk.name: {"busy_s": lk.busy_s, "bytes": lk.bytes_moved,
                            "utilization_frac": lk.utilization_frac}
                  for lk in result.links if lk.bytes_moved > 0},
    }


def _print(summary: dict, model: str, scenario, node: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import format_bytes, format_rate, format_seconds

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=120)
    job = scenario.job
    t = Table(title=f"{model} - train seq {job.seq_len:,} x {job.micro_batch} - checkpointing "
                    f"{job.checkpointing} - {node}, {summary['num_gpus_simulated']} GPU(s) simulated",
              title_justify="left", show_header=False)
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("step time (simulated)", format_seconds(summary["step_time_s"]))
    t.add_row("step time (analytical estimate)", format_seconds(summary["estimate_step_time_s"]))
    t.add_row("exposed transfer stall", format_seconds(summary["stall_s"]))
    if summary["collective_wait_s"]:
        t.add_row("collective wait", format_seconds(summary["collective_wait_s"]))
    for tier, peak in summary["peak"].items():
        t.add_row(f"peak {tier} ({peak['pool']})",
                  f"{format_bytes(summary['peak_bytes'][tier])} of {format_bytes(peak['capacity_bytes'])}"
                  f" at {format_seconds(peak['at_s'])} ({peak['task']})")
    if summary.get("peak_reserved_bytes") is not None:
        t.add_row(f"peak reserved ({summary['allocator']} allocator)",
                  format_bytes(summary["peak_reserved_bytes"]))
    t.add_row("events", f"{summary['num_events']:,}")
    console.print(t)
    if summary["links"]:
        lt = Table(title="busiest links", title_justify="left")
        for col in ("link", "busy", "moved", "mean rate while busy"):
            lt.add_column(col, justify="left" if col == "link" else "right")
        busiest = sorted(summary["links"].items(), key=lambda kv: -kv[1]["bytes"])[:6]
        for name, lk in busiest:
            rate = lk["bytes"] / lk["busy_s"] if lk["busy_s"] > 0 else 0.0
            lt.add_row(name, format_seconds(lk["busy_s"]), format_bytes(lk["bytes"]), format_rate(rate))
        console.print(lt)
    if summary["oom"]:
        first = summary["oom"][0]
        console.print(f"[red]OOM[/red] {len(summary['oom'])} time(s); first: {first['tier']} pool "
                      f"{first['pool']} at {format_seconds(first['time_s'])} allocating "
                      f"{first['tensor']} ({format_bytes(first['live_bytes'])} live > "
                      f"{format_bytes(first['capacity_bytes'])})")
