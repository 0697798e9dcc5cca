"""Strategy evaluation: replay a plan's layers and wrap the outcome as a Plan and a table row.

Models: the allocated peak of the replay, and the reserved peak of the caching allocator
replaying the transformed Workload (simulator.allocator); with ``allocator="caching"`` a plan
fits only when that allocator, capped anywhere in a band just below the budget, serves every
request (CAP_BAND_FRAC); with ``allocator="expandable"`` (``expandable_segments:True``, the plan
executor's default) when the expandable-segments replay, capped at the budget, does. The reserved
peak reported is for the allocator the job names (``TrainJob.allocator``).
Source: H200 measurements in validate/measurements/h200/probe48-*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hwmodels.units import format_bytes
from planners.plan import LayerPlan, Plan, Prediction, Provenance
from planners.swap.apply import AppliedPlan, apply_plan
from planners.swap.context import PlanContext
from planners.swap.replay import Replay, replay
from simulator.allocator import AllocatorOOM, predict_reserved, predict_workload_reserved
from simulator.workload import Workload

ALLOCATORS = ("planned", "caching", "expandable")
CAP_BAND_FRAC = 0.04
CAP_BAND_POINTS = 5
"""With ``allocator="caching"`` a plan fits when the capped allocator replay serves every
request at each of ``CAP_BAND_POINTS`` caps spread over the band from the budget down to
(1 - ``CAP_BAND_FRAC``) x the budget, not at the budget alone. Under a cap, whether a
fragmented sequence fits flips with small changes of the cap or of the request order (the
replay is not monotone in the cap), and the executor's order differs in details from the
simulated one. On the H200 (2026-11-28, validate/measurements/h200/probe48-*): the 64K MIP
plan the single-cap check passed at 47.04 GiB ran out of memory under a 48 GiB cap, as the
replay of its own recorded trace does; the plans that pass the band ran."""


@dataclass(frozen=True)
class StrategyResult:
    """One row of the strategy table: the same type for every baseline and the MIP."""

    name: str
    feasible: bool
    step_time_s: float | None
    mfu: float | None
    peak_hbm_bytes: int | None
    peak_host_bytes: int | None
    reason: str  # why not feasible (or how it was chosen)
    plan: Plan | None = None
    replay: Replay | None = None
    applied: AppliedPlan | None = None
    solve_time_s: float = 0.0  # wall time of planning this row (a run's figure, not the plan's)
    peak_reserved_bytes: int | None = None  # of the job's allocator, two steps (simulator.allocator.predict_reserved)
    timed_out: bool = False  # the MIP's time limit stopped it before any incumbent

    def row(self) -> dict:
        return {"name": self.name, "feasible": self.feasible, "step_time_s": self.step_time_s,
                "mfu": self.mfu, "peak_hbm_bytes": self.peak_hbm_bytes,
                "peak_reserved_bytes": self.peak_reserved_bytes,
                "peak_host_bytes": self.peak_host_bytes, "reason": self.reason,
                "solve_time_s": self.solve_time_s}


def evaluate(ctx: PlanContext, name: str, layers: Sequence[LayerPlan], *, solver: str | None = None,
             status: str = "rule", gap: float | None = None, solve_time_s: float = 0.0,
             time_limit_s: float | None = None, short_of_time: bool = False) -> StrategyResult:
    """Replay ``layers`` and wrap the outcome as a Plan and a table row. ``short_of_time``
    skips what cannot change the verdict: the replay of a plan whose host peak is proven over
    the host budget without it (`host_peak_lower_bound`; its row says so), and the caching
    allocator's replay of a plan whose allocated peak is already over the GPU budget (its
    reserved peak is left out)."""
    from hwmodels.compute import mfu_frac

    layers = ctx.stamped(layers)
    modes = [lp.checkpoint for lp in layers]
    prof = ctx.profile_for(modes)
    applied = apply_plan(prof, layers, lookahead=ctx.lookahead, prefetch_at=ctx.prefetch_at,
                         copy_s_per_byte=ctx.copy_s_per_byte)
    if short_of_time:
        host = host_peak_lower_bound(applied, num_gpus=ctx.rates.num_gpus_sharing_host)
        if host is not None and host > ctx.host_budget_bytes:
            return StrategyResult(name=name, feasible=False, step_time_s=None, mfu=None, peak_hbm_bytes=None,
                                  peak_host_bytes=None, applied=applied, solve_time_s=solve_time_s,
                                  reason=f"host at least {format_bytes(host)} > {format_bytes(ctx.host_budget_bytes)} "
                                         "host budget (copied before any copy back starts; not replayed, to "
                                         "keep to the time limit)")
    rep = replay(applied, ctx.node, num_gpus=ctx.rates.num_gpus_sharing_host,
                 states=ctx.states_applied(modes) if ctx.whole_step else None)
    host_peak = rep.peak_host_bytes
    mfu = mfu_frac(model_flops=rep.model_flops, step_time_s=rep.step_time_s, node=ctx.node,
                   dtype=ctx.job.param_dtype)
    reasons = []
    if rep.peak_hbm_bytes > ctx.gpu_budget_bytes:
        reasons.append(f"HBM peak {format_bytes(rep.peak_hbm_bytes)} > {format_bytes(ctx.gpu_budget_bytes)}"
                       f" gpu budget (at {rep.peak_op})")
    reserved: int | None = None
    oom = False
    if not (short_of_time and reasons) and (ctx.predict_reserved or ctx.allocator != "planned"):
        reserved, oom = predict_reserved(applied.workload, allocator=ctx.job.allocator,
                                         capacity_bytes=ctx.gpu_budget_bytes)
    if ctx.allocator == "expandable" and not reasons and oom:
        reasons.append(f"expandable segments: the allocator, capped at {format_bytes(ctx.gpu_budget_bytes)} "
                       f"gpu budget, cannot serve every request ({format_bytes(reserved or 0)} reserved "
                       "uncapped, pages of 20 MiB)")
    if ctx.allocator == "caching" and reserved is not None and not reasons and reserved > ctx.gpu_budget_bytes:
        failed = capped_replay_failure(applied.workload, ctx.gpu_budget_bytes)
        if failed is not None:
            reasons.append(f"caching allocator: {format_bytes(reserved)} reserved (fragmentation) > "
                           f"{format_bytes(ctx.gpu_budget_bytes)} gpu budget and the allocator, "
                           f"capped at {format_bytes(failed)}, cannot serve every request")
    if host_peak > ctx.host_budget_bytes:
        reasons.append(f"host {format_bytes(host_peak)} > {format_bytes(ctx.host_budget_bytes)} host budget")
    tier_peaks = rep.tier_peak_bytes if ctx.whole_step or any(
        a.action == "offload" and a.tier != "host" for lp in layers for a in lp.roles.values()) else {}
    for tier_name, items in (("cxl", ctx.node.cxl), ("nvme", ctx.node.nvme)):
        capacity = sum(d.capacity_bytes for d in items)
        if tier_peaks.get(tier_name, 0) > capacity:
            reasons.append(f"{tier_name} {format_bytes(tier_peaks[tier_name])} > {format_bytes(capacity)} "
                           f"{tier_name} capacity")
    feasible = not reasons
    prediction = Prediction(step_time_s=rep.step_time_s, mfu=mfu, peak_hbm_bytes=rep.peak_hbm_bytes,
                            peak_reserved_bytes=reserved, peak_host_bytes=host_peak, stall_s=rep.stall_s, recompute_s=rep.recompute_s,
                            feasible=feasible, replayed_by=rep.replayed_by, tier_peak_bytes=tier_peaks)
    plan = Plan.for_scenario(ctx.scenario, layers=list(layers), prefetch_lookahead_layers=ctx.lookahead,
                             lm_head_chunks=ctx.lm_head_chunks,
                             prefetch_at=ctx.prefetch_at, mlp_activation=ctx.job.mlp_activation,
                             staging_buffer_bytes=applied.staging_bytes, num_staging_buffers=2,
                             provenance=_provenance(ctx, name, solver=solver, status=status, gap=gap,
                                                    time_limit_s=time_limit_s),
                             prediction=prediction)
    return StrategyResult(name=name, feasible=feasible, step_time_s=rep.step_time_s, mfu=mfu,
                          peak_hbm_bytes=rep.peak_hbm_bytes, peak_host_bytes=host_peak,
                          peak_reserved_bytes=reserved,
                          reason="; ".join(reasons), plan=plan, replay=rep, applied=applied,
                          solve_time_s=solve_time_s)


def host_peak_lower_bound(applied: AppliedPlan, *, num_gpus: int) -> int | None:
    """A proven lower bound on the replay's host peak, without replaying (None: no copies).

    Every D2H copy ends before its ``needed_op`` starts; every H2D copy, the only thing that
    frees host memory, starts after op ``ready_op - 1`` ends. So when op ``c`` starts, with
    ``c`` before the first op an H2D waits for, the D2H copies needed by ops up to ``c`` are on
    the host and nothing has left it. With several GPUs (whose copies may run at different
    rates) ``c`` must be a collective, which every GPU starts at the same moment. When every
    D2H is needed by then the bound is the peak itself."""
    d2h = [t for t in applied.transfers if t.direction == "d2h"]
    h2d = [t for t in applied.transfers if t.direction == "h2d"]
    if not d2h or not h2d:
        return None
    c = min(t.ready_op for t in h2d) - 1
    if num_gpus > 1:
        ops = applied.workload.ops
        c = next((k for k in range(c, -1, -1) if ops[k].op_class == "comm"), -1)
    return num_gpus * sum(t.num_bytes for t in d2h if t.needed_op <= c)


def relabel(ctx: PlanContext, res: StrategyResult, name: str, *, solver: str | None, status: str,
            gap: float | None, solve_time_s: float, time_limit_s: float | None) -> StrategyResult:
    """``res``, replayed under ``ctx``'s knobs, as row ``name`` with that provenance: what
    `evaluate` of the same layers would return, without a second replay."""
    from dataclasses import replace

    assert res.plan is not None
    plan = res.plan.model_copy(update={"provenance": _provenance(ctx, name, solver=solver, status=status, gap=gap,
                                                                 time_limit_s=time_limit_s)})
    return replace(res, name=name, plan=plan, solve_time_s=solve_time_s)


def capped_replay_failure(workload: Workload, budget_bytes: int) -> int | None:
    """The first cap of the band (see ``CAP_BAND_FRAC``) under which the caching allocator's
    replay of ``workload`` runs out of memory (over the cap it frees its cache and retries, as
    PyTorch does); None when every cap of the band serves every request."""
    for j in range(CAP_BAND_POINTS):
        cap = int(budget_bytes * (1.0 - CAP_BAND_FRAC * j / max(1, CAP_BAND_POINTS - 1)))
        try:
            predict_workload_reserved(workload, capacity_bytes=cap)
        except AllocatorOOM:
            return cap
    return None


def _provenance(ctx: PlanContext, planner: str, **kw) -> Provenance:
    from planners.plan import tierplan_version

    return Provenance(tierplan_version=tierplan_version(), planner=planner, **kw)
