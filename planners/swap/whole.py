"""The whole training step: chunked LM head, tiled MLP and model states on every tier, with the
activation MIP inside.

Models: a decomposition. Outside, an enumeration of the step-level choices: the LM head's token
chunks (``Plan.lm_head_chunks``), every layer's MLP chunks (``LayerPlan.mlp_chunks``) and one
model-state placement for every layer (``LayerPlan.model_states``: resident; the optimizer step
on the CPU with the gradients on the host and the states on the host, on the node's CXL card
or in NVMe files, the parameters resident or streamed from the host). Inside, for each
combination, the activation MIP (`planners.swap.mip.plan_mip`) with the HBM and host that
combination leaves (its profile is
built with it); when the layer inputs alone overflow what the states leave of the host, segment
checkpoints instead (`segment_layers`: every layer checkpointed, one input kept or offloaded per
segment of k layers, k = 1 .. ``MAX_SEGMENT_LAYERS``, the fastest replayed). Each plan is
replayed; the fastest feasible wins. With transformers' eager RMSNorm and nothing fitting, the
search runs once more with the fused norm (`TrainJob.rmsnorm`), which the plan's job then names.
Pruning, by bounds: (1) chunk counts: the head's and the MLP's chunk count is the smallest whose
transient (read off the template's ops for a one-layer model) is at most ``CHUNK_SHARE_FRAC`` of
the GPU budget: more chunks only cost time (smaller GEMMs), fewer leave the transient above that
share; the MLP is also tried whole (one chunk: no extra forward). (2) Tiers: a combination whose
model states alone overflow the host budget or a drive is skipped; so is one whose least-HBM
plan (every layer checkpointed, its input offloaded) does not fit the GPU in the walk of its
allocations. (3) Time: a combination's step time without any recompute bounds every plan of
it (recompute and stalls only add); one whose bound is above the best replayed plan is skipped
(chunk counts are tried in order of their bound, each with its placements most resident first). (4) Dominance (`dominated`): the CPU step
with resident parameters is skipped when streaming them fitted without stalls; states in NVMe
files when the same combination with them on the host fitted with host memory to spare.
Gap (stated): the chunk counts are chosen by the share rule, not jointly with the MIP; one
placement for all layers (no mixed groups); segment heads are offloaded first-come to the host
(no MIP over segments); the search stops at its deadline (this process's CPU time) with the
best plan so far.
Assumes: one GPU, a Llama-family model (`planners.swap.strategies.whole_step_applies`).
Source: ALST (Snowflake, arXiv 2506.13996): tiled MLP, fused loss, CPU-offloaded states and
checkpoints; ZeRO-Offload (arXiv 2101.06840); Chen et al. 2016 (sublinear memory: segments).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from hwmodels.units import format_bytes
from planners.plan import RESIDENT, LayerPlan, ModelStatePlacement
from planners.swap.context import PlanContext
from planners.swap.evaluate import StrategyResult, evaluate

CHUNK_SHARE_FRAC = 1 / 16
"""A chunked op's transient may take up to this share of the GPU budget."""
LM_HEAD_CHUNKS = tuple(2**k for k in range(13))
MLP_CHUNKS = tuple(2**k for k in range(9))
MIN_SOLVE_S = 0.3
"""A combination's MIP is started only with at least this much of the time limit left."""
MIP_MAX_NODES = 100
"""Branch-and-bound nodes each activation solve of the search may take: a work limit, so that
the search's plan does not depend on the machine's load (under a time limit a hard combination's
solve, e.g. 256K with the MLP whole, ran to its limit and ended at another incumbent each time,
and took the time the other combinations needed). 100 nodes take 3-8 s of CPU at 256K; the
whole limit stays as each solve's wall-time guard."""
MAX_SEGMENT_LAYERS = 8
"""Longest segment checkpoint tried (layers recomputed from one kept input)."""
DOMINANCE_STALL_FRAC = 0.01
DOMINANCE_HOST_FRAC = 0.01
"""Thresholds of `dominated`."""
HOST_MARGIN_FRAC = 1e-3
"""Segment heads are offloaded up to the host budget less this share (rounding of the pools)."""


def placements(ctx: PlanContext) -> list[tuple[str, ModelStatePlacement]]:
    """The model-state placements tried (named for the report), most resident first."""
    out = [("resident", RESIDENT)]
    if ctx.job.optimizer == "none":
        return out
    tiers = ["host"] + (["cxl"] if ctx.node.cxl else []) + (["nvme"] if ctx.node.nvme else [])
    for tier in tiers:  # streamed before resident parameters, host before NVMe: see `dominated`
        off = dict(grads="host", optimizer_states=tier, master_weights=tier, optimizer_step="cpu")
        out.append((f"streamed_params_states_{tier}",
                    ModelStatePlacement(params="host", params_prefetch_layers=1, **off)))
        out.append((f"cpu_step_states_{tier}", ModelStatePlacement(**off)))
    return out


def _chunk_transient_bytes(ctx: PlanContext, *, lm_head_chunks: int = 1, mlp_chunks: int = 1) -> int:
    """The largest workspace of the fused loss op or of the tiled MLP op, from the template's
    ops for a one-layer model (one home for their formulas)."""
    from simulator.templates import training_workload

    wl = training_workload(ctx.model.with_layers(1), ctx.job, None, lm_head_chunks=lm_head_chunks,
                           mlp_chunks={0: mlp_chunks})
    index = wl._by_id()
    kinds = ("loss_fused_linear_ce",) if lm_head_chunks > 1 else ("tiled_mlp",)
    return max((sum(index[t].num_bytes for t in op.allocs if index[t].name.endswith("workspace"))
                for op in wl.ops if op.kind in kinds), default=0)


def chunk_choice(ctx: PlanContext, *, kind: str) -> int:
    """The smallest chunk count whose transient is within ``CHUNK_SHARE_FRAC`` of the budget."""
    share = CHUNK_SHARE_FRAC * ctx.gpu_budget_bytes
    candidates = LM_HEAD_CHUNKS if kind == "lm_head" else MLP_CHUNKS
    for c in candidates[1:]:
        kw = {"lm_head_chunks": c} if kind == "lm_head" else {"mlp_chunks": c}
        if _chunk_transient_bytes(ctx, **kw) <= share:
            return c
    return candidates[-1]


@dataclass(frozen=True)
class Combination:
    lm_head_chunks: int
    mlp_chunks: int
    placement: str
    ctx: PlanContext
    time_bound_s: float  # step time without any recompute: no plan of this combination is faster


def combinations(ctx: PlanContext) -> list[Combination]:
    """Every combination the search considers: chunk counts in order of their time bound, each
    with its placements in the order of `placements` (most resident first)."""
    from planners.swap.states import apply_model_states

    head = [chunk_choice(ctx, kind="lm_head")] if ctx.model.has_lm_head else [1]
    mlp = sorted({1, chunk_choice(ctx, kind="mlp")}) if ctx.model.mlp == "swiglu" else [1]
    places = placements(ctx)  # most resident first
    out = []
    for c in head:
        for m in mlp:
            # one template per chunk counts; a placement changes only the GPU optimizer step's time
            wl = replace(ctx, lm_head_chunks=c, mlp_chunks=m).template(("none",) * ctx.num_layers)
            for rank, (name, ms) in enumerate(places):
                if (c, m, name) == (1, 1, "resident"):
                    continue  # the activation strategies' own space
                states = None if ms == RESIDENT else (ms,) * ctx.num_layers
                ops = apply_model_states(wl, states).workload.ops if states else wl.ops
                sub = replace(ctx, lm_head_chunks=c, mlp_chunks=m, states=states, predict_reserved=False,
                              _profiles={}, _states_applied={}, _variant_profiles={}, _state_bytes=None)
                out.append((sum(op.time_s or 0.0 for op in ops), c, m, rank, Combination(c, m, name, sub, 0.0)))
    # chunk counts in order of their best bound; within them the placements most resident first
    # (their bounds differ by the GPU optimizer step only, well under what copies and recompute add)
    group: dict[tuple[int, int], float] = {}
    for bound, c, m, _, _ in out:
        group[(c, m)] = min(group.get((c, m), bound), bound)
    out.sort(key=lambda k: (group[(k[1], k[2])], k[1], k[2], k[3]))
    return [replace(k[4], time_bound_s=k[0]) for k in out]


@dataclass(frozen=True)
class Miss:
    """Why one combination does not fit: the constraint it breaks, in words, and by how much
    (the need over the limit, a fraction; None where the search did not measure it)."""

    label: str
    why: str
    over_frac: float | None = None

    def line(self) -> str:
        by = "" if self.over_frac is None else f", {self.over_frac:.1%} over"
        return f"{self.label}: {self.why}{by}"


def _over(need: int, limit: int) -> float:
    return need / limit - 1 if limit > 0 else float("inf")


def states_over_tiers(ctx: PlanContext) -> tuple[str, float] | None:
    """Why the model states alone overflow a tier off HBM (None when they fit): the host
    budget, or the capacity of the node's CXL cards / drives; with the need over the limit."""
    if not ctx.whole_step:
        return None
    held = ctx.states_tier_bytes()
    host = ctx.states_host_bytes()
    if host > ctx.host_budget_bytes:
        return (f"model states need {format_bytes(host)} > {format_bytes(ctx.host_budget_bytes)} host budget",
                _over(host, ctx.host_budget_bytes))
    for tier, items in (("cxl", ctx.node.cxl), ("nvme", ctx.node.nvme)):
        capacity = sum(d.capacity_bytes for d in items)
        if held.get(tier, 0) > capacity:
            return (f"model states need {format_bytes(held[tier])} > {format_bytes(capacity)} {tier} capacity",
                    _over(held[tier], capacity))
    return None


def result_over_frac(ctx: PlanContext, res: StrategyResult) -> float | None:
    """How far an infeasible plan's replayed peaks are over their budgets (the largest share;
    None where it was not replayed)."""
    over = [_over(peak, limit) for peak, limit in ((res.peak_hbm_bytes, ctx.gpu_budget_bytes),
                                                   (res.peak_host_bytes, ctx.host_budget_bytes))
            if peak is not None and peak > limit]
    return max(over) if over else None


def nearest_miss(misses: list[Miss]) -> str:
    """One line: the miss least over its limit (the first of equals; those not measured last),
    and how many others there were."""
    if not misses:
        return "none tried"
    best = min(misses, key=lambda m: float("inf") if m.over_frac is None else m.over_frac)
    rest = len(misses) - 1
    return f"nearest miss {best.line()}" + (f" ({rest} other combination{'s' * (rest != 1)} further off)"
                                             if rest else "")


def floor_layers(ctx: PlanContext) -> list[LayerPlan]:
    """The least-HBM plan of the activation space: every layer checkpointed, its input offloaded."""
    return [LayerPlan(layer=i, checkpoint="full", input="offload") for i in range(ctx.num_layers)]


def hbm_floor_bytes(ctx: PlanContext) -> int:
    """Allocated HBM peak of `floor_layers` by the walk of its allocations (no replay): no
    activation plan of ``ctx`` peaks lower (segment checkpoints only add recomputed inputs)."""
    from planners.swap.apply import apply_plan
    from simulator.estimator import RUNTIME_WORKSPACE_BYTES
    from simulator.workload import walk_memory

    layers = floor_layers(ctx)
    applied = apply_plan(ctx.profile_for([lp.checkpoint for lp in layers]), layers, lookahead=ctx.lookahead,
                         prefetch_at=ctx.prefetch_at, copy_s_per_byte=ctx.copy_s_per_byte)
    return walk_memory(applied.workload).peak_bytes + RUNTIME_WORKSPACE_BYTES


def segment_layers(ctx: PlanContext, segment_layers: int) -> list[LayerPlan]:
    """Every layer checkpointed; the input of every ``segment_layers``-th layer (a segment's
    head) kept, the others recomputed from their head; the first heads' inputs offloaded to
    the host, as many as the host budget the model states leave holds."""
    prof = ctx.profile("full")
    left = ctx.host_budget_bytes * (1 - HOST_MARGIN_FRAC) - (ctx.states_host_bytes() if ctx.whole_step else 0)
    heads = list(range(0, ctx.num_layers, segment_layers))
    out = []
    for i in range(ctx.num_layers):
        if i not in heads:
            out.append(LayerPlan(layer=i, checkpoint="full", input="recompute"))
            continue
        need = prof.layers[i].input_bytes
        offload = need <= left
        left -= need if offload else 0
        out.append(LayerPlan(layer=i, checkpoint="full", input="offload" if offload else "keep"))
    return out


def _combo_plans(combo: Combination, *, solver: str, time_limit_s: float, deadline: float) -> StrategyResult:
    """The best plan of one combination: the activation MIP when every input fits the host,
    else segment checkpoints (`segment_layers`, from one layer up to ``MAX_SEGMENT_LAYERS``, until
    a longer segment replays slower than a shorter one that fits)."""
    from planners.swap.mip import plan_mip

    ctx = combo.ctx
    host_left = ctx.host_budget_bytes - (ctx.states_host_bytes() if ctx.whole_step else 0)
    all_inputs = sum(lp.input_bytes for lp in ctx.profile("full").layers)
    if all_inputs <= host_left and deadline - time.process_time() >= MIN_SOLVE_S:
        # each solve stops at MIP_MAX_NODES nodes (work, not time); the whole limit of wall time
        # is only its guard (on a loaded machine wall time runs far ahead of CPU time)
        res, _ = plan_mip(ctx, time_limit_s=time_limit_s, solver=solver,
                          deadline_s=time.perf_counter() + time_limit_s, max_nodes=MIP_MAX_NODES)
        if res.feasible:
            return res
        return evaluate(ctx, "whole_step", floor_layers(ctx), short_of_time=True)
    best: StrategyResult | None = None
    first: StrategyResult | None = None
    for k in range(1, MAX_SEGMENT_LAYERS + 1):
        if time.process_time() > deadline and first is not None:
            break
        res = evaluate(ctx, "whole_step", segment_layers(ctx, k), short_of_time=True)
        first = first or res
        if res.feasible and best is not None and (res.step_time_s or 0.0) >= (best.step_time_s or 0.0):
            break  # longer segments only recompute more once the inputs fit
        if res.feasible:
            best = replace(res, reason=f"segments of {k} layers")
    assert first is not None
    return best or first


def plan_whole_step(ctx: PlanContext, *, time_limit_s: float, solver: str = "highs",
                    deadline_s: float | None = None) -> StrategyResult:
    """The fastest feasible whole-step plan found by ``deadline_s`` (see the module docstring),
    as the strategy row ``whole_step``; its reason names the combination or why none fits.
    The time left until ``deadline_s`` (``time.perf_counter()`` time; default ``time_limit_s``
    from now) is counted in this process's CPU time (``time.process_time``), so that the plan
    does not depend on how loaded the machine is (on an idle one the two clocks agree)."""
    t0 = time.perf_counter()
    left = time_limit_s if deadline_s is None else max(0.0, deadline_s - t0)
    deadline = time.process_time() + left  # CPU time
    best: StrategyResult | None = None
    misses: list[Miss] = []
    cut = False
    for norm in norms(ctx):
        solved: dict[tuple[int, int, str], StrategyResult] = {}
        base = ctx if norm == ctx.job.rmsnorm else replace(
            ctx, job=ctx.job.model_copy(update={"rmsnorm": norm}), _profiles={}, _states_applied={},
            _variant_profiles={}, _templates={}, _state_bytes=None)
        combos = combinations(base)
        no_room = _no_room(combos)  # (chunks) whose least-HBM placement cannot fit: none of theirs can
        for combo in combos:
            label = (f"lm_head_chunks {combo.lm_head_chunks}, mlp_chunks {combo.mlp_chunks}, {combo.placement}"
                     + (f", rmsnorm {norm}" if norm != ctx.job.rmsnorm else ""))
            if best is not None and best.step_time_s is not None and combo.time_bound_s >= best.step_time_s:
                continue  # its bound: it cannot be faster
            if time.process_time() > deadline:
                cut = True
                break
            if dominated(combo, solved):
                continue  # a combination already solved fitted: no miss to report
            over = states_over_tiers(combo.ctx)
            if over:
                misses.append(Miss(label, *over))
                continue
            key = (combo.lm_head_chunks, combo.mlp_chunks)
            floor = no_room[key] if key in no_room else hbm_floor_bytes(combo.ctx)
            if floor > combo.ctx.gpu_budget_bytes:
                misses.append(Miss(label, f"HBM at least {format_bytes(floor)} > "
                                          f"{format_bytes(combo.ctx.gpu_budget_bytes)} gpu budget",
                                   _over(floor, combo.ctx.gpu_budget_bytes)))
                continue
            res = _combo_plans(combo, solver=solver, time_limit_s=time_limit_s, deadline=deadline)
            solved[(combo.lm_head_chunks, combo.mlp_chunks, combo.placement)] = res
            if not res.feasible:
                misses.append(Miss(label, res.reason, result_over_frac(combo.ctx, res)))
            elif best is None or (res.step_time_s or 0.0) < (best.step_time_s or 0.0):
                note = res.reason if res.reason.startswith("segments") else ""
                best = replace(res, name="whole_step", reason=label + (f", {note}" if note else ""))
        if best is not None:
            break  # the job's own norm first; the fused one only when nothing fits with it
    elapsed = time.perf_counter() - t0
    if best is None:
        reason = ("time limit: the search stopped before it found a plan (a longer --time-limit may "
                  "find one); " if cut else "") + "no combination fits: " + nearest_miss(misses)
        return StrategyResult(name="whole_step", feasible=False, step_time_s=None, mfu=None, peak_hbm_bytes=None,
                              peak_host_bytes=None, reason=reason, solve_time_s=elapsed)
    assert best.plan is not None
    ctx_best = PlanContext.from_plan(best.plan, source="whole_step")
    ctx_best = replace(ctx_best, allocator=ctx.allocator, lookahead=ctx.lookahead)
    prov = best.plan.provenance
    final = evaluate(ctx_best, "whole_step", best.plan.layers, solver=prov.solver, status=prov.status, gap=prov.gap,
                     time_limit_s=prov.time_limit_s)  # with its reserved peak
    assert final.plan is not None
    plan = final.plan.model_copy(update={"provenance": final.plan.provenance.model_copy(
        update={"planner": "whole_step"})})
    return replace(final, plan=plan, reason=best.reason, solve_time_s=time.perf_counter() - t0)


def _no_room(combos: list[Combination]) -> dict[tuple[int, int], int]:
    """Chunk counts whose least-HBM placement (parameters streamed, the fewest bytes resident)
    does not fit the GPU even in its least-HBM activation plan, with a lower bound of that floor:
    no placement of theirs fits (the others keep more in HBM). Only the most chunks are walked:
    when they do not fit, fewer (larger transients) cannot either and share their floor as a
    bound; when they do, the others are walked where the search reaches them."""
    least: dict[tuple[int, int], Combination] = {}
    for c in combos:
        key = (c.lm_head_chunks, c.mlp_chunks)
        if key not in least or c.placement.startswith("streamed_params"):
            least[key] = c
    if not least:
        return {}
    top = max(least)
    floor = hbm_floor_bytes(least[top].ctx)
    if floor <= least[top].ctx.gpu_budget_bytes:
        return {}
    return {key: floor for key in least if key[0] <= top[0] and key[1] <= top[1]}


def dominated(combo: Combination, solved: dict[tuple[int, int, str], StrategyResult]) -> str:
    """Why ``combo`` cannot beat a combination already solved (""; solve it): the optimizer
    step on the CPU with the parameters resident when streaming them from the host fitted
    with no stall above ``DOMINANCE_STALL_FRAC`` of its step (the same host bytes, more HBM);
    the states in NVMe files when the same combination with them on the host fitted with host
    memory to spare (its host peak under 1 - ``DOMINANCE_HOST_FRAC`` of the budget)."""
    key = (combo.lm_head_chunks, combo.mlp_chunks)
    if combo.placement.startswith("cpu_step_states_"):
        other = solved.get((*key, combo.placement.replace("cpu_step", "streamed_params")))
        if other is not None and other.feasible and other.replay is not None and (
                other.replay.stall_s <= DOMINANCE_STALL_FRAC * (other.step_time_s or 0.0)):
            return "not solved: streaming the parameters fitted with no stall to speak of"
    if combo.placement.endswith("_nvme"):
        other = solved.get((*key, combo.placement.replace("_nvme", "_host")))
        budget = combo.ctx.host_budget_bytes
        if other is not None and other.feasible and (other.peak_host_bytes or 0) < (1 - DOMINANCE_HOST_FRAC) * budget:
            return "not solved: the states on the host left host memory to spare"
    return ""


def norms(ctx: PlanContext) -> list[str]:
    """RMSNorm implementations tried: the job's; for a Hugging Face model with the eager norm,
    then the fused one (`simulator.job.TrainJob.rmsnorm`)."""
    from simulator.templates import code_base

    own = ctx.job.rmsnorm
    if own == "eager" and ctx.model.norm == "rmsnorm" and code_base(ctx.model) == "hf":
        return [own, "fused"]
    return [own]


def where_bytes_live(res: StrategyResult) -> list[tuple[str, int, dict[str, int]]]:
    """Per tier a plan uses: (tier, its peak, what lives there by kind). HBM: the roles live at
    the allocated peak (the walk of the plan's allocations); host, CXL, NVMe: the model states
    by kind (pinned pools, CPU-side states, their staging buffers) and the activations'
    copies, the rest of the tier's peak."""
    from simulator.workload import walk_memory

    assert res.plan is not None and res.plan.prediction is not None and res.applied is not None
    plan, pred = res.plan, res.plan.prediction
    ctx = PlanContext.from_plan(plan, source="plan")
    states = ctx.states_applied([lp.checkpoint for lp in plan.layers]).by_kind if ctx.whole_step else {}
    peaks = pred.tier_peak_bytes or {"hbm": pred.peak_hbm_bytes, "host": pred.peak_host_bytes}
    out = []
    for tier, peak in sorted(peaks.items(), key=lambda kv: ("hbm", "host", "cxl", "nvme").index(kv[0])):
        if tier == "hbm":
            kinds = dict(walk_memory(res.applied.workload).peak_breakdown_bytes)
        else:
            kinds = dict(states.get(tier, {}))
            rest = peak - sum(kinds.values())
            if rest > 0:
                kinds["activations"] = rest
        if peak:
            out.append((tier, peak, kinds))
    return out


def describe(res: StrategyResult) -> str:
    pred = res.plan.prediction if res.plan is not None else None
    if pred is None:
        return res.reason
    peaks = ", ".join(f"{t} {format_bytes(b)}" for t, b in sorted(pred.tier_peak_bytes.items()))
    return f"{res.reason} ({peaks})"
