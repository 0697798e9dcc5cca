"""`tierplan layout`: plan buffer offsets in one arena and compare with PyTorch's caching allocator.

tierplan layout (--snapshot FILE | --trace FILE.csv | --plan PLAN.json [--buffers-only] |
                [SCENARIO] [model/job options as in `tierplan estimate`])
                [--time-limit S] [--method auto|flat|bilevel]
                [--solver highs|cbc] [--expandable-segments] [--out layout.json] [--png FILE]
                [--json]

Prints the lower bound (maximum of live bytes), the planned peak and its gap, the caching
allocator's predicted reserved memory for the same requests and its excess; writes the layout
JSON (buffer id -> byte offset) and a PNG of address over time. A CSV buffer lives in
[lower, upper). A snapshot is read without executing code (see planners.layout.snapshot).
A plan file's step is the plan's scenario (its provenance) with the plan applied; with
--buffers-only only the plan's own restore and recompute buffers are laid out. For a plan the
command also prints the predicted peak when those buffers live in one planned arena (held the
whole step, or allocated per step from the first buffer to the last) next to the ordinary peak,
and the caching allocator's reserved memory with and without the arena
(planners.layout.plan_buffers).
For huge inputs: above 50,000 buffers the picture is drawn only when --png names it (above
20,000 as a pixel grid; ``png_note`` says which), and the caching allocator's replay of a
snapshot or CSV stops by the time limit + 3 s (``allocator_note`` says how far it got).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from hwmodels.outputs import IMAGE_SUFFIXES
from tierplan import flags


def _scenario_parent() -> argparse.ArgumentParser:
    """The scenario flags of `tierplan estimate`, reused so the two commands cannot drift."""
    from tierplan.commands import estimate

    sub = argparse.ArgumentParser(add_help=False).add_subparsers()
    estimate.register(sub, with_prices=False)  # a layout has no cost
    return sub.choices["estimate"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "layout",
        parents=[_scenario_parent()],
        add_help=False,
        help="plan tensor offsets in one arena; compare with the caching allocator",
        description=("Offsets for every buffer of a step (or a snapshot, or a CSV of "
                     "id,lower,upper,size) with peak, lower bound and gap, and the caching "
                     "allocator's predicted reserved memory for the same requests."),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--snapshot", help="PyTorch memory snapshot (torch.cuda.memory._dump_snapshot)")
    src.add_argument("--trace", help="CSV file with a header id,lower,upper,size")
    src.add_argument("--plan", help="plan JSON (tierplan plan): the step with the plan applied")
    p.add_argument("--buffers-only", action="store_true",
                   help="with --plan: lay out only the plan's restore and recompute buffers")
    p.add_argument("--time-limit", type=flags.seconds(), default=60.0,
                   help="seconds for the whole layout search; the best layout found by then is "
                        "returned (default 60)")
    p.add_argument("--method", choices=("auto", "flat", "bilevel"), default="auto",
                   help="workload input: flat instance, MEMO bi-level, or the better (auto)")
    p.add_argument("--solver", choices=("highs", "cbc"), default="highs")
    p.add_argument("--no-mip", action="store_true", help="greedy heuristics only")
    p.add_argument("--expandable-segments", action="store_true",
                   help="predict the caching allocator with expandable_segments:True")
    p.add_argument("--out", default="layout.json", help="layout JSON path (default layout.json)")
    p.add_argument("--png", help="address-over-time picture (default: --out with .png)")
    p.add_argument("--no-png", action="store_true", help="do not draw the picture")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hwmodels.outputs import OutputSet
    from tierplan.progress import Progress

    # the layout JSON and the picture, or neither; a spinner on a terminal while it solves
    with OutputSet() as outputs, Progress("tierplan layout: reading the input") as progress:
        return _run(args, outputs, progress)


def _solving(progress, instance, limit: float) -> None:
    progress.update(f"tierplan layout: laying out {instance.num_buffers:,} buffers "
                    f"(time limit {limit:g} s)")


def _run(args: argparse.Namespace, outputs, progress) -> int:
    import pathlib

    from hwmodels.catalog import load_node
    from hwmodels.units import UserInputError
    from planners.layout.instance import instance_from_workload, load_csv_instance
    from planners.layout.plan import instance_events, plan_layout, plan_workload_layout
    from simulator.allocator import predict_workload_reserved, replay_caching_allocator

    t_start = time.perf_counter()
    limit = args.time_limit
    replay_note = ""
    scenario_flags = [f for f in ("scenario", "model", "layers", "seq_len", "batch", "mode")
                      if getattr(args, f, None) is not None]
    file_flag = "--snapshot" if args.snapshot else "--trace" if args.trace else "--plan" if args.plan else None
    if file_flag and scenario_flags:
        raise UserInputError(f"--{scenario_flags[0].replace('_', '-')}: not with "
                             f"{file_flag} (one input at a time)")
    if args.plan and args.hardware is not None:
        raise UserInputError("--hardware: a plan carries its node; give --plan without it")
    if args.buffers_only and not args.plan:
        raise UserInputError("--buffers-only: only with --plan")
    if args.hardware is not None:
        load_node(args.hardware)  # a bad node name fails here, whatever the input
    out = pathlib.Path(args.out)
    out_tmp = outputs.reserve(out, field="--out")
    png = None if args.no_png else pathlib.Path(args.png) if args.png else out.with_suffix(".png")
    png_note = ""
    png_tmp = None if png is None else outputs.reserve(png, field="--png", suffixes=IMAGE_SUFFIXES)
    use_mip = not args.no_mip
    arena = None
    frag, frag_note = None, ""
    if args.plan:
        from planners.layout import plan_buffers as pb

        step = pb.load_plan_step(args.plan)
        buffers = pb.plan_buffers_instance(step)
        _solving(progress, buffers, limit)
        buffers_result = plan_layout(buffers, time_limit_s=limit, solver=args.solver, use_mip=use_mip)
        if args.buffers_only:
            instance, result, source = buffers, buffers_result, "plan buffers"
            replay = replay_caching_allocator(instance_events(instance),
                                              expandable_segments=args.expandable_segments)
        else:
            instance, source = pb.step_instance(step), "plan"
            _solving(progress, instance, limit)
            result = plan_workload_layout(step.workload, time_limit_s=limit, solver=args.solver,
                                          use_mip=use_mip, method=args.method, name=step.name)
            replay = predict_workload_reserved(step.workload, num_steps=2, preallocated_bytes=(),
                                               expandable_segments=args.expandable_segments)
        arena = pb.compare_arena(step, arena_bytes=buffers_result.peak_bytes,
                                 expandable_segments=args.expandable_segments)
        arena_layout = {"arena_status": buffers_result.status, "arena_gap": buffers_result.gap,
                        "arena_method": buffers_result.method,
                        "arena_solve_time_s": buffers_result.solve_time_s}
    elif args.snapshot or args.trace:
        if args.snapshot:
            from planners.layout.snapshot import load_snapshot

            snap = load_snapshot(args.snapshot)
            instance, events, source = snap.instance, list(snap.events), "snapshot"
            addresses = snap.segment_addresses  # the device's cudaMalloc addresses break ties
        else:
            instance = load_csv_instance(args.trace)
            events, source, addresses = None, "csv", ()
        _solving(progress, instance, limit)
        result = plan_layout(instance, time_limit_s=limit, solver=args.solver, use_mip=use_mip)
        progress.update("tierplan layout: replaying the caching allocator")
        deadline_s = max(t_start + limit + REPLAY_GRACE_S, time.perf_counter() + REPLAY_MIN_S)
        replay, replay_note, peak_event = _bounded_replay(
            instance, events, expandable_segments=args.expandable_segments,
            segment_addresses=addresses, deadline_s=deadline_s)
        if args.snapshot and not replay_note:
            from planners.layout.fragmentation import fragmentation_peak

            if time.perf_counter() < deadline_s:
                progress.update("tierplan layout: the allocator's state at its reserved peak")
                assert events is not None  # a snapshot's requests
                frag = fragmentation_peak(events, peak_event, frames=snap.frames,
                                          expandable_segments=args.expandable_segments,
                                          segment_addresses=addresses)
            else:
                frag_note = "not analysed: the allocator's replay ended past the time limit + 3 s"
    else:
        from tierplan.commands.estimate import build_scenario

        scenario = build_scenario(args)
        model, job = scenario.model, scenario.job
        if job.mode == "train":
            from simulator.templates import training_workload

            wl = training_workload(model, job)
            what = f"train seq {job.seq_len} x {job.micro_batch}, checkpointing {job.checkpointing}"
        else:
            from simulator.templates import prefill_workload

            wl = prefill_workload(model, job)
            what = f"prefill {job.prompt_len} x {job.batch}"
        name = f"{model.name} {what}"
        instance = instance_from_workload(wl, name=name)
        source = "workload"
        _solving(progress, instance, limit)
        result = plan_workload_layout(wl, time_limit_s=limit, solver=args.solver,
                                      use_mip=use_mip, method=args.method, name=name)
        # steady state of the same requests: a second step reuses the first one's cache
        progress.update("tierplan layout: replaying the caching allocator")
        replay = predict_workload_reserved(wl, num_steps=2, preallocated_bytes=(),
                                           expandable_segments=args.expandable_segments)
    progress.update("tierplan layout: writing the layout")
    outputs.write(out_tmp, lambda p: p.write_text(result.model_dump_json(indent=1) + "\n"))
    if png_tmp is not None and not args.png and instance.num_buffers > DEFAULT_PNG_MAX_BUFFERS:
        outputs.release(png_tmp)
        png_tmp, png = None, None
        png_note = (f"not drawn: {instance.num_buffers:,} buffers, more than {DEFAULT_PNG_MAX_BUFFERS:,} "
                    "(--png FILE draws it)")
    if png_tmp is not None:
        from planners.layout.plot import plot_layout

        def draw(p) -> None:
            nonlocal png_note
            png_note = plot_layout(instance, result.offsets, str(p), lower_bound_bytes=result.lower_bound_bytes,
                                   title=f"{result.name}: {result.method}")

        outputs.write(png_tmp, draw)
    reserved = replay.peak_reserved_bytes
    summary = {
        "source": source,
        "reserved_bytes": reserved,
        "reserved_over_lower_bound": reserved / result.lower_bound_bytes - 1 if result.lower_bound_bytes else 0.0,
        "reserved_over_peak": reserved / result.peak_bytes - 1 if result.peak_bytes else 0.0,
        "allocator_peak_allocated_bytes": replay.peak_allocated_bytes,
        "expandable_segments": args.expandable_segments,
        "layout_path": str(out),
        "png_path": str(png) if png else None,
        "png_note": png_note,
        "allocator_note": replay_note,
    }
    if source == "snapshot" and snap.reserved_bytes:
        summary["snapshot_reserved_bytes"] = snap.reserved_bytes
    if source == "snapshot":
        summary["fragmentation"] = frag.to_dict() if frag is not None else None
        summary["fragmentation_note"] = frag_note
    if arena is not None:
        extra = {"plan_path": args.plan, **arena.model_dump(), **arena_layout}
        assert not set(extra) & set(summary), "arena keys must not replace the layout's"
        summary.update(extra)
    progress.stop()
    if args.json:
        print(_json_line({**result.model_dump(mode="json", exclude={"offsets"}), **summary}, result.offsets))
        return 0
    _print(result, summary)
    return 0


REPLAY_GRACE_S = 3.0
REPLAY_MIN_S = 0.25
"""The caching allocator's replay of a snapshot or CSV stops this long after the layout's time
limit, or ``REPLAY_MIN_S`` after it starts if that is later (~1.5-2.5 s for 200k buffers on a
loaded 2-core machine); its figures are then those of the events replayed, and the output
says so."""
DEFAULT_PNG_MAX_BUFFERS = 50_000
"""Above this many buffers the picture is drawn only when --png names it."""
REPLAY_CHUNK = 4096


def _bounded_replay(instance, events, *, expandable_segments: bool, segment_addresses,
                    deadline_s: float):
    """The caching allocator over ``events`` (None: the CSV instance's own alloc/free order,
    fed without building event objects), stopped at ``deadline_s``; the replay, a note
    ("" when every event was replayed) and the index of the event that set the reserved peak
    (-1 for a CSV or a replay cut short)."""
    import numpy as np

    from simulator.allocator import CachingAllocator

    alloc = CachingAllocator(expandable_segments=expandable_segments, segment_addresses=segment_addresses)
    if events is None:  # (no event indices: the third value is -1)  # sizes are positive (the CSV reader checks): malloc/free directly
        bufs = instance.buffers
        n = len(bufs)
        times = np.fromiter((t for b in bufs for t in (b.lower, b.upper)), dtype=np.int64, count=2 * n)
        order = np.lexsort((np.arange(2 * n) >> 1, np.tile(np.array([1, 0]), n), times)).tolist()
        total = len(order)
        for k in range(0, total, REPLAY_CHUNK):
            if time.perf_counter() > deadline_s:
                return alloc.result(), _partial(k, total), -1
            for e in order[k:k + REPLAY_CHUNK]:
                b = bufs[e >> 1]
                if e & 1:
                    alloc.free(b.bid)
                else:
                    alloc.malloc(b.bid, b.size_bytes)
        return alloc.result(), "", -1
    total = len(events)
    rep = alloc.result()
    for k in range(0, total, REPLAY_CHUNK):
        if time.perf_counter() > deadline_s:
            return rep, _partial(k, total), -1
        rep = alloc.replay(events[k:k + REPLAY_CHUNK])
    return rep, "", alloc.peak_reserved_event


_OFFSETS_SLOT = "\x00offsets\x00"  # no path or name holds a NUL, so its escape is unique


def _json_line(doc: dict, offsets: dict[str, int]) -> str:
    """``json.dumps({**doc, "offsets": offsets}, sort_keys=True)``, with the offsets (10^5 keys)
    sorted once and encoded without a second sort: the same text in half the time."""
    head = json.dumps({**doc, "offsets": _OFFSETS_SLOT}, sort_keys=True)
    slot = json.dumps(_OFFSETS_SLOT)
    assert head.count(slot) == 1
    return head.replace(slot, json.dumps(dict(sorted(offsets.items()))))


def _partial(done: int, total: int) -> str:
    return (f"replayed {done:,} of {total:,} events by its deadline (time limit + {REPLAY_GRACE_S:g} s): reserved and "
            "allocated peaks are those of that prefix (at most the whole sequence's)")


def _print(result, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import format_bytes, format_seconds

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=120)
    lb = result.lower_bound_bytes
    t = Table(title=f"layout of {result.name} ({result.num_buffers:,} buffers, "
                    f"{result.num_overlapping_pairs:,} overlapping pairs)", title_justify="left")
    t.add_column("")
    t.add_column("bytes", justify="right")
    t.add_column("over lower bound", justify="right")
    t.add_row("lower bound (max live bytes)", format_bytes(lb), "")
    if result.best_bound_bytes > lb:
        t.add_row("proven bound (MIP)", format_bytes(result.best_bound_bytes),
                  f"{result.best_bound_bytes / lb - 1:+.2%}")
    t.add_row(f"planned peak ({result.method})", format_bytes(result.peak_bytes),
              f"{result.peak_bytes / lb - 1:+.2%}" if lb else "")
    t.add_row("best greedy heuristic", format_bytes(result.greedy_peak_bytes),
              f"{result.greedy_peak_bytes / lb - 1:+.2%}" if lb else "")
    es = " (expandable segments)" if summary["expandable_segments"] else ""
    t.add_row(f"caching allocator reserved{es}", format_bytes(summary["reserved_bytes"]),
              f"{summary['reserved_over_lower_bound']:+.2%}")
    if "snapshot_reserved_bytes" in summary:
        t.add_row("reserved in the snapshot", format_bytes(summary["snapshot_reserved_bytes"]),
                  f"{summary['snapshot_reserved_bytes'] / lb - 1:+.2%}" if lb else "")
    console.print(t)
    console.print(f"status {result.status}, gap {result.gap:.3%}"
                  + (f", MIP {result.mip_status}" if result.mip_status else "")
                  + f", solved in {format_seconds(result.solve_time_s)} "
                  f"(limit {format_seconds(result.time_limit_s)}); the arena saves "
                  f"{format_bytes(max(0, summary['reserved_bytes'] - result.peak_bytes))} "
                  f"({summary['reserved_over_peak']:.1%} of the planned peak) against the caching allocator")
    if "arena_bytes" in summary:
        _print_arena(console, summary)
    if summary.get("fragmentation"):
        _print_fragmentation(console, summary["fragmentation"])
    elif summary.get("fragmentation_note"):
        console.print(f"fragmentation: {summary['fragmentation_note']}")
    if summary["allocator_note"]:
        console.print(f"caching allocator: {summary['allocator_note']}")
    files = summary["layout_path"] + (f", {summary['png_path']}" if summary["png_path"] else "")
    console.print(f"wrote {files}" + (f" ({summary['png_note']})" if summary["png_note"] else ""))


def _print_fragmentation(console, frag: dict) -> None:
    """The largest gaps at the reserved peak and the allocations on either side of each."""
    from rich.table import Table
    from rich.text import Text  # frames are the file's text: no markup, no :emoji: codes

    from hwmodels.units import format_bytes

    def who(pin: dict | None) -> Text:
        if pin is None:
            return Text("-")
        top = pin["frames"][0] if pin["frames"] else "(no frames)"
        return Text(f"{pin['buffer']} {format_bytes(pin['size_bytes'])} {top}")

    req = frag["request"]
    t = Table(title=f"fragmentation at the reserved peak ({format_bytes(frag['peak_reserved_bytes'])}): "
                    f"before request {req['buffer']} ({format_bytes(req['size_bytes'])}, event "
                    f"{frag['event_index']:,}) {format_bytes(frag['free_reserved_bytes'])} of "
                    f"{format_bytes(frag['reserved_bytes'])} reserved was free", title_justify="left")
    t.add_column("gap", justify="right")
    t.add_column("segment", justify="right")
    t.add_column("live in segment", justify="right")
    t.add_column("pinned below by")
    t.add_column("pinned above by")
    for g in frag["gaps"]:
        t.add_row(format_bytes(g["size_bytes"]), f"{format_bytes(g['segment_bytes'])} {g['pool']}",
                  str(g["num_live_blocks"]), who(g["before"]), who(g["after"]))
    console.print(t)
    if req["frames"]:
        console.print(Text(f"request {req['buffer']} from {' <- '.join(req['frames'])}"))


def _print_arena(console, summary: dict) -> None:
    from rich.table import Table

    from hwmodels.units import format_bytes

    ordinary = summary["ordinary_peak_bytes"]
    t = Table(title=f"plan buffers in one arena ({summary['num_plan_buffers']:,} restore/recompute "
                    f"buffers, {format_bytes(summary['plan_buffer_bytes'])} in all)", title_justify="left")
    t.add_column("")
    t.add_column("peak HBM", justify="right")
    t.add_column("vs ordinary", justify="right")
    t.add_column("caching allocator reserved", justify="right")

    def rel(x: int) -> str:
        return f"{x / ordinary - 1:+.2%}" if ordinary else ""

    t.add_row("ordinary (every tensor on its own)", format_bytes(ordinary), "",
              format_bytes(summary["ordinary_reserved_bytes"]))
    t.add_row("arena held all step", format_bytes(summary["arena_peak_bytes"]),
              rel(summary["arena_peak_bytes"]), format_bytes(summary["arena_reserved_bytes"]))
    t.add_row("arena per step (first to last buffer)", format_bytes(summary["window_arena_peak_bytes"]),
              rel(summary["window_arena_peak_bytes"]), format_bytes(summary["window_arena_reserved_bytes"]))
    console.print(t)
    lb = summary["arena_lower_bound_bytes"]
    console.print(f"arena {format_bytes(summary['arena_bytes'])} ({summary['arena_method']}, "
                  f"{summary['arena_status']}, gap {summary['arena_gap']:.3%}) for buffers live at most "
                  f"{format_bytes(lb)} at once; every other tensor peaks at "
                  f"{format_bytes(summary['other_peak_bytes'])}")
