"""Plan offsets for an instance or a Workload: greedy, exact MIP, MEMO's bi-level decomposition.

Models: ``plan_layout`` (any instance) runs every greedy heuristic, stops if one meets the
live-bytes lower bound, else hands the best greedy layout to the pairwise MIP as its warm start
and big-M when the instance is small enough, under the time limit; the better valid layout
wins. ``plan_workload_layout`` adds MEMO's bi-level decomposition for a training step: every
run of consecutive ops of one decoder layer in one phase (a layer's forward, its backward,
its recompute) is a block; the tensors born and dead inside a block are laid out once per
distinct block (identical layers share one solution, as in MEMO), and the whole step is then
laid out with each block as one buffer of its planned peak plus every tensor that crosses
block boundaries. The flat and bi-level layouts are both checked; the lower peak is returned.
Every returned layout passes ``check_layout``, an independent overlap checker; the result
reports the lower bound, the planned peak, the gap and the solve time.
Assumes: time limits are wall-clock seconds for the whole call; the greedy heuristics stop
at 70% of it (unplaced buffers stacked on top, so the layout stays valid and its gap says how
far from the bound it is), the overlap check and pair count are O(n log n).
Ignores: alignment beyond sizes (a Plan's buffers are laid out by planners.layout.plan_buffers).
Source: MEMO (Zhao et al., 2024), section 4.3 bi-level MIP; planners.layout.mip / .greedy.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from planners.layout.greedy import greedy_layout, search_order
from planners.layout.instance import (
    Buffer,
    LayoutInstance,
    check_layout,
    instance_from_workload,
    lower_bound_bytes,
    overlapping_pairs,
)
from simulator.allocator import AllocEvent
from simulator.workload import Workload

LAYOUT_SCHEMA_VERSION = 1
MIP_MAX_PAIRS = 4000  # above this many overlapping pairs the MIP is not attempted
SEARCH_EVALS = 20000  # most re-placements the order search tries
SEARCH_WORK = 6_000_000  # fewer evaluations for large instances: evals x buffers <= this

Status = Literal["optimal", "feasible"]


class LayoutResult(BaseModel):
    """A layout of one instance: offsets, peak, bound, gap; what the CLI writes as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(LAYOUT_SCHEMA_VERSION, description="layout JSON format version")
    name: str = Field(description="instance name (model and job, or the input file)")
    status: Status = Field(description="optimal: peak equals a proven bound; feasible: valid, gap > 0 possible")
    method: str = Field(description="what produced the offsets: greedy/<order>/<rule>, mip, bilevel")
    num_buffers: int = Field(ge=0, description="buffers laid out")
    num_overlapping_pairs: int = Field(ge=0, description="pairs of buffers live at the same time")
    lower_bound_bytes: int = Field(ge=0, description="maximum of live bytes over time")
    best_bound_bytes: int = Field(ge=0, description="best proven bound: lower bound or the MIP's")
    peak_bytes: int = Field(ge=0, description="arena size the offsets need")
    gap: float = Field(ge=0, description="peak_bytes / best_bound_bytes - 1")
    greedy_peak_bytes: int = Field(ge=0, description="best greedy heuristic's peak")
    solve_time_s: float = Field(ge=0, description="wall time of the whole planning call")
    time_limit_s: float = Field(gt=0, description="time limit given")
    mip_status: str | None = Field(None, description="MIP solver status, when the MIP ran")
    offsets: dict[str, int] = Field(description="buffer id -> byte offset in the arena")


def _gap(peak: int, bound: int) -> float:
    return 0.0 if bound <= 0 or peak <= bound else peak / bound - 1.0


def plan_layout(
    instance: LayoutInstance,
    *,
    time_limit_s: float = 60.0,
    solver: str = "highs",
    use_mip: bool = True,
    mip_max_pairs: int = MIP_MAX_PAIRS,
    search_evals: int = SEARCH_EVALS,
    lp_path: str | None = None,
) -> LayoutResult:
    """Best valid layout of ``instance`` found within ``time_limit_s`` (greedy at worst).

    Greedy heuristics, then (unless they meet the lower bound) a local search over placement
    orders, then the exact MIP on small instances, warm-started from the best so far. Results
    are deterministic unless the time limit cuts the search short.
    """
    t0 = time.perf_counter()
    if time_limit_s <= 0:
        raise ValueError(f"time_limit_s: must be positive, got {time_limit_s}")
    lb = lower_bound_bytes(instance.buffers)
    # the checker and the result need a share of the time after the heuristics stop
    greedy = greedy_layout(instance, deadline_s=t0 + 0.7 * time_limit_s)
    num_pairs = instance.num_overlapping_pairs() if instance.buffers else 0
    mip_ok = use_mip and 0 < num_pairs <= mip_max_pairs
    best = greedy
    if best.peak_bytes > lb and search_evals > 0:
        share = 0.5 if mip_ok else 0.95
        best = search_order(instance, greedy, seed=0, deadline_s=t0 + share * time_limit_s,
                            target_bytes=lb,
                            max_evals=min(search_evals, max(50, SEARCH_WORK // instance.num_buffers)))
    offsets, peak, method = best.offsets, best.peak_bytes, f"greedy/{best.strategy}"
    bound, mip_status = lb, None
    left = time_limit_s - (time.perf_counter() - t0)
    if mip_ok and peak > lb and left > 0.05:
        from planners.layout.mip import solve_layout_mip

        mip = solve_layout_mip(instance, warm_offsets=offsets, time_limit_s=left, solver=solver,
                               lp_path=lp_path)
        mip_status = mip.status
        if mip.best_bound_bytes is not None:
            bound = max(bound, mip.best_bound_bytes)
        if mip.offsets is not None and mip.peak_bytes is not None and mip.peak_bytes < peak:
            if check_layout(instance, mip.offsets).valid:
                offsets, peak, method = mip.offsets, mip.peak_bytes, "mip"
    return _result(instance, offsets=offsets, method=method, lb=lb, bound=bound,
                   greedy_peak=greedy.peak_bytes, t0=t0, time_limit_s=time_limit_s,
                   mip_status=mip_status, num_pairs=num_pairs)


def _result(instance: LayoutInstance, *, offsets: dict[str, int], method: str, lb: int,
            bound: int, greedy_peak: int, t0: float, time_limit_s: float,
            mip_status: str | None, num_pairs: int) -> LayoutResult:
    check = check_layout(instance, offsets)
    if not check.valid:  # a bug in a solver path: never hand out an invalid layout
        raise RuntimeError(f"layout of {instance.name} failed the overlap check: {check.message}")
    peak = check.peak_bytes
    bound = min(bound, peak)
    return LayoutResult(
        name=instance.name,
        status="optimal" if peak <= bound else "feasible",
        method=method,
        num_buffers=instance.num_buffers,
        num_overlapping_pairs=num_pairs,
        lower_bound_bytes=lb,
        best_bound_bytes=bound,
        peak_bytes=peak,
        gap=_gap(peak, bound),
        greedy_peak_bytes=greedy_peak,
        solve_time_s=time.perf_counter() - t0,
        time_limit_s=time_limit_s,
        mip_status=mip_status,
        offsets=offsets,
    )


# --- MEMO's bi-level decomposition -------------------------------------------------------------


def layer_blocks(workload: Workload) -> list[tuple[int, int, int, str]]:
    """(first op, op after the last, layer, phase) of every run of one layer's ops in one phase."""
    out = []
    start = None
    key = None
    for k, op in enumerate(workload.ops):
        k_key = (op.layer, op.phase.value) if op.layer is not None else None
        if k_key != key:
            if key is not None and start is not None:
                out.append((start, k, key[0], key[1]))
            start, key = k, k_key
    if key is not None and start is not None:
        out.append((start, len(workload.ops), key[0], key[1]))
    return out


def bilevel_layout(
    workload: Workload,
    instance: LayoutInstance,
    *,
    time_limit_s: float,
    solver: str = "highs",
    use_mip: bool = True,
) -> tuple[dict[str, int], int]:
    """Offsets by MEMO's decomposition and the number of distinct blocks solved."""
    t0 = time.perf_counter()
    blocks = layer_blocks(workload)
    block_of_time: dict[int, int] = {}
    for bi, (a, b, _, _) in enumerate(blocks):
        for k in range(a, b):
            block_of_time[k] = bi
    internal: dict[int, list[Buffer]] = {}
    external: list[Buffer] = []
    for buf in instance.buffers:
        blk = block_of_time.get(buf.lower)
        if blk is not None and buf.upper <= blocks[blk][1] and buf.lower >= blocks[blk][0]:
            internal.setdefault(blk, []).append(buf)
        else:
            external.append(buf)
    # lower level: one solve per distinct block (identical layers share it)
    solved: dict[tuple, tuple[list[int], int]] = {}
    distinct: dict[tuple[tuple[int, int, int], ...], int] = {}
    for bi, bufs in internal.items():
        a = blocks[bi][0]
        distinct.setdefault(tuple((x.lower - a, x.upper - a, x.size_bytes) for x in bufs), bi)
    share = time_limit_s / 3 / max(1, len(distinct))
    for sig in distinct:
        local = LayoutInstance(tuple(Buffer(str(k), lo, hi, s) for k, (lo, hi, s) in enumerate(sig)),
                               name="block", source="workload")
        res = plan_layout(local, time_limit_s=max(share, 0.1), solver=solver, use_mip=use_mip)
        solved[sig] = ([res.offsets[str(k)] for k in range(len(sig))], res.peak_bytes)
    # upper level: blocks as buffers of their planned peak, plus the crossing tensors
    upper = list(external)
    block_sig = {}
    for bi, bufs in internal.items():
        a, b, layer, phase = blocks[bi]
        sig = tuple((x.lower - a, x.upper - a, x.size_bytes) for x in bufs)
        block_sig[bi] = sig
        upper.append(Buffer(f"block:{layer}:{phase}:{a}", a, b, solved[sig][1]))
    upper_inst = LayoutInstance(tuple(upper), name=f"{instance.name} (blocks)", source="workload")
    left = max(0.1, time_limit_s - (time.perf_counter() - t0))
    top = plan_layout(upper_inst, time_limit_s=left, solver=solver, use_mip=use_mip)
    offsets = {x.bid: top.offsets[x.bid] for x in external}
    for bi, bufs in internal.items():
        a, _, layer, phase = blocks[bi]
        base = top.offsets[f"block:{layer}:{phase}:{a}"]
        local_off = solved[block_sig[bi]][0]
        for x, o in zip(bufs, local_off, strict=True):
            offsets[x.bid] = base + o
    return offsets, len(distinct)


METHODS = ("auto", "flat", "bilevel")


def plan_workload_layout(
    workload: Workload,
    *,
    time_limit_s: float = 60.0,
    solver: str = "highs",
    use_mip: bool = True,
    method: str = "auto",
    name: str | None = None,
) -> LayoutResult:
    """Layout of a step's tensors.

    ``method``: "flat" plans the whole step's tensors as one instance; "bilevel" uses MEMO's
    decomposition only; "auto" runs the flat greedy heuristics, then (unless they meet the
    lower bound) the bi-level plan with 60% of the time, then (unless that meets the bound)
    the flat plan's order search and MIP with the rest, and returns the lowest peak (flat on
    ties).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    t0 = time.perf_counter()
    instance = instance_from_workload(workload, name=name)
    lb = lower_bound_bytes(instance.buffers)
    num_pairs = instance.num_overlapping_pairs()

    def done(res: LayoutResult) -> LayoutResult:
        return res.model_copy(update={"solve_time_s": time.perf_counter() - t0,
                                      "time_limit_s": time_limit_s})

    if method == "flat":
        return done(plan_layout(instance, time_limit_s=time_limit_s, solver=solver,
                                use_mip=use_mip))
    quick = plan_layout(instance, time_limit_s=time_limit_s, use_mip=False, search_evals=0)
    if method == "auto" and quick.status == "optimal":
        return done(quick)
    share = time_limit_s if method == "bilevel" else 0.6 * time_limit_s
    offsets, _ = bilevel_layout(workload, instance, time_limit_s=share, solver=solver,
                                use_mip=use_mip)
    bilevel = _result(instance, offsets=offsets, method="bilevel", lb=lb, bound=lb,
                      greedy_peak=quick.greedy_peak_bytes, t0=t0, time_limit_s=time_limit_s,
                      mip_status=None, num_pairs=num_pairs)
    if method == "bilevel" or bilevel.status == "optimal":
        return done(bilevel)
    left = max(0.1, time_limit_s - (time.perf_counter() - t0))
    flat = plan_layout(instance, time_limit_s=left, solver=solver, use_mip=use_mip)
    if bilevel.peak_bytes < flat.peak_bytes:
        bound = max(lb, min(flat.best_bound_bytes, bilevel.peak_bytes))
        return done(bilevel.model_copy(update={
            "best_bound_bytes": bound, "mip_status": flat.mip_status,
            "gap": _gap(bilevel.peak_bytes, bound),
            "status": "optimal" if bilevel.peak_bytes <= bound else "feasible"}))
    return done(flat)


def instance_events(instance: LayoutInstance) -> list[AllocEvent]:
    """The allocation/free sequence that the lifetimes imply (frees before allocs at one time)."""
    import numpy as np

    bufs = instance.buffers
    n = len(bufs)
    # by (time, frees first, buffer index): one sort of 2n keys in numpy
    times = np.fromiter((t for b in bufs for t in (b.lower, b.upper)), dtype=np.int64, count=2 * n)
    is_alloc = np.tile(np.array([1, 0], dtype=np.int64), n)
    which = np.repeat(np.arange(n, dtype=np.int64), 2)
    rows = [(("free", bufs[e >> 1].bid, 0, 0) if e & 1 else ("alloc", bufs[e >> 1].bid, bufs[e >> 1].size_bytes, 0))
            for e in np.lexsort((which, is_alloc, times)).tolist()]
    return list(map(AllocEvent._make, rows))


__all__ = ["LayoutResult", "bilevel_layout", "instance_events", "layer_blocks", "overlapping_pairs",
           "plan_layout", "plan_workload_layout"]
