"""Inference offload planning: per layer, the KV cache in HBM or on a host-side tier and the
weights resident or streamed, for the static and the Hugging Face decode engines.

Models: strategies that each produce an inference `planners.plan.Plan`, replayed by
`simulator.inference` before they are reported:
  * rules: ``resident`` (every layer's KV and weights in HBM), ``kv_host`` (every layer's KV
    on the host, weights resident; for the static engine, when even that does not fit HBM, the
    fewest layers' weights streamed from the host that make it fit); for the static engine
    every layer's KV in the job's ``kv_quant`` when it is int8 / int4 (the KIVI layout of
    ``kernels.quant``), unquantized otherwise;
  * ``mip`` (static engine; `planners.infer.mip`): per layer binaries for the KV tier (HBM,
    host, CXL, NVMe, CSD where the node has them) and where its attention runs (the GPU; the CPU
    for host KV; the drive for KV in a CSD) and for streaming the weights, under the HBM
    budget (weights, final-length KV buffers, staging and weight buffers, activations of the
    prefill and decode), the host budget and the CXL / NVMe capacities; the decode step time is
    bounded below by the compute and by the bytes each shared link carries per step; objective
    decode tokens/s (the default) or the request latency (prefill + gen_len steps). When the
    job accepts a quantized KV cache (``kv_quant`` int8 / int4) the MIP also chooses, per
    layer, whether its KV is stored in that format (``none``: lossless only).
The reported plan of each strategy is its replay; the MIP's row is the fastest of its own plan,
its plan with attention kept on the GPU (when its own moves attention off it) and the best
feasible rule (status ``fallback:<rule>`` when a rule replays faster).
Assumes: one GPU; layers are homogeneous (equal bytes and times), so a plan is defined by its
counts up to the order of its layers, which spreads each tier's layers evenly (the lookahead
then has a resident layer's compute to hide each fetch behind).
Ignores: splitting one layer's KV between tiers (``resident_frac`` in (0, 1): not executed yet),
fp8 KV (planned lossless), one layer's attention split between the GPU and the CPU, attention
off the GPU over a quantized KV cache.
Source: FlexGen (Sheng et al., ICML 2023): per-layer time as the max of overlapped streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any

from hwmodels.units import UserInputError, format_bytes
from planners.infer.mip import hbm_cap_bytes

OBJECTIVES = ("throughput", "latency")
ENGINES = ("static", "hf")
DEFAULT_LOOKAHEAD = 1
DEFAULT_STAGING_BUFFERS = 2


@dataclass(frozen=True)
class InferResult:
    """One strategy: its plan (with the replay's prediction), or why it has none."""

    name: str
    plan: Any  # planners.plan.Plan | None
    replay: Any  # simulator.inference.InferReplay | None
    feasible: bool
    reason: str  # why it does not fit / note
    solve_time_s: float = 0.0

    def row(self) -> dict:
        r = self.replay
        return {"strategy": self.name, "feasible": self.feasible, "reason": self.reason,
                "prefill_time_s": r.prefill_time_s if r else None,
                "decode_step_time_s": r.decode_step_time_s if r else None,
                "decode_tokens_per_s": r.decode_tokens_per_s if r else None,
                "step_time_s": r.step_time_s if r else None,
                "tier_peak_bytes": dict(r.tier_peak_bytes) if r else None,
                "tiers": tiers_line(self.plan) if self.plan is not None else None}


@dataclass(frozen=True)
class InferReport:
    """Every strategy of one request, and the best feasible one by the objective."""

    strategies: tuple[InferResult, ...]
    best: str | None
    binding: str  # one line: why nothing fits, when nothing does
    objective: str
    timed_out: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def result(self, name: str) -> InferResult:
        return next(r for r in self.strategies if r.name == name)

    def to_dict(self) -> dict:
        return {"best": self.best, "objective": self.objective, "binding": self.binding,
                "strategies": [r.row() for r in self.strategies]}


# ---- plan <-> placement ------------------------------------------------------------------------


def placement_of(plan: Any):
    """The `simulator.inference.Placement` of an inference plan (refusing what it cannot price)."""
    from simulator.inference import LayerPlacement, Placement

    out = []
    for lp in plan.layers:
        kv = lp.kv_cache
        if kv is None:
            raise UserInputError(f"layers.{lp.layer}.kv_cache: an inference plan places every layer's KV cache")
        if kv.resident_frac not in (0.0, 1.0):
            raise UserInputError(f"layers.{lp.layer}.kv_cache.resident_frac: a KV cache split within a layer "
                                 "is not replayed yet")
        out.append(LayerPlacement(kv_tier="hbm" if kv.resident_frac == 1.0 else kv.tier,
                                  params_tier=lp.model_states.params, kv_quant=_kv_quant_of(plan, lp),
                                  attention_on=lp.attention_on))
    return Placement(tuple(out), num_staging_buffers=plan.num_staging_buffers,
                     prefetch_lookahead_layers=plan.prefetch_lookahead_layers)


def _kv_quant_of(plan: Any, lp: Any) -> str:
    """A layer's ``LayerPlacement.kv_quant``: "none" for bf16 / fp16, else its quantized dtype,
    whose group size must be the job's (the replay sizes every quantized layer by the job's)."""
    kv = lp.kv_cache
    if kv.dtype in ("bf16", "fp16"):
        return "none"
    from kernels.quant import kivi_group_size

    job = plan.scenario.job
    want = kivi_group_size(head_dim=plan.scenario.model.head_dim, group_size=job.kv_group_size)
    if kv.group_size not in (None, want):
        raise UserInputError(f"layers.{lp.layer}.kv_cache.group_size: {kv.group_size}, the job's is {want}")
    return str(kv.dtype)


def replay_plan(plan: Any, *, context_len: int | None = None, graphs: bool | None = None,
                sdpa_cudnn: bool = False, decode_only: bool = False, warmed_up: bool | None = None):
    """Replay an inference plan with the scenario it embeds (`simulator.inference`); ``graphs``:
    whether the static engine's decode step runs through CUDA graphs (None: the engine's default);
    ``sdpa_cudnn``: SDPA in torch's default order rather than kept off cuDNN; ``warmed_up``:
    whether a warm-up preceded the timed prefill (None: the engine's default)."""
    from simulator.inference import STATIC_DECODE_GRAPHS, replay_placement

    sc = plan.scenario
    if sc.job.mode != "infer":
        raise UserInputError("job.mode: replay_plan replays inference plans")
    return replay_placement(sc.model, sc.job, sc.node, placement_of(plan), gpu_budget_bytes=sc.gpu_budget_bytes,
                            host_budget_bytes=sc.host_budget_bytes, context_len=context_len,
                            graphs=STATIC_DECODE_GRAPHS if graphs is None else graphs, sdpa_cudnn=sdpa_cudnn,
                            decode_only=decode_only, warmed_up=warmed_up)


def spread(num_layers: int, counts: dict[str, int]) -> list[str]:
    """Labels for ``num_layers`` layers with ``counts[label]`` of each non-default label spread
    evenly (Bresenham), the rest "hbm"; labels in sorted order for deterministic ties."""
    out = ["hbm"] * num_layers
    free = list(range(num_layers))
    for label in sorted(counts):
        n = counts[label]
        if n <= 0:
            continue
        if n > len(free):
            raise ValueError(f"{label}: {n} layers but {len(free)} left")
        picks = [free[(j * len(free)) // n + (len(free) // n) // 2] for j in range(n)]
        for i in picks:
            out[i] = label
        free = [i for i in free if i not in set(picks)]
    return out


def make_plan(scenario, placement, replay, *, planner: str, solver: str | None = None, status: str = "rule",
              gap: float | None = None, time_limit_s: float | None = None):
    """The Plan of ``placement`` with ``replay`` as its prediction."""
    from hwmodels.compute import mfu_frac
    from kernels.quant import kivi_group_size
    from planners.plan import (
        KvPlacement,
        LayerPlan,
        ModelStatePlacement,
        Plan,
        Prediction,
        Provenance,
        tierplan_version,
    )

    job = scenario.job
    group = kivi_group_size(head_dim=scenario.model.head_dim, group_size=job.kv_group_size)
    layers = []
    for i, lp in enumerate(placement.layers):
        fmt = {"dtype": job.kv_dtype} if lp.kv_quant == "none" else {"dtype": lp.kv_quant, "group_size": group}
        kv = (KvPlacement(**fmt, resident_frac=1.0) if lp.kv_tier == "hbm"
              else KvPlacement(**fmt, resident_frac=0.0, tier=lp.kv_tier))
        ms = (ModelStatePlacement() if lp.params_tier == "hbm"
              else ModelStatePlacement(params=lp.params_tier,
                                       params_prefetch_layers=placement.prefetch_lookahead_layers))
        layers.append(LayerPlan(layer=i, kv_cache=kv, model_states=ms, attention_on=lp.attention_on))
    pred = Prediction(
        step_time_s=replay.step_time_s,
        mfu=mfu_frac(model_flops=replay.model_flops, step_time_s=replay.step_time_s, node=scenario.node,
                     dtype=job.param_dtype),
        peak_hbm_bytes=replay.tier_peak_bytes["hbm"],
        peak_host_bytes=replay.tier_peak_bytes.get("host", 0),
        stall_s=replay.decode_stall_s * job.gen_len,
        recompute_s=0.0,
        feasible=replay.feasible,
        replayed_by=replay.replayed_by,
        prefill_time_s=replay.prefill_time_s,
        decode_step_time_s=replay.decode_step_time_s,
        tier_peak_bytes=dict(replay.tier_peak_bytes),
    )
    return Plan.for_scenario(
        scenario, layers=layers, prefetch_lookahead_layers=placement.prefetch_lookahead_layers,
        num_staging_buffers=placement.num_staging_buffers, staging_buffer_bytes=replay.staging_buffer_bytes,
        provenance=Provenance(tierplan_version=tierplan_version(), planner=planner, solver=solver, status=status,
                              gap=gap, time_limit_s=time_limit_s),
        prediction=pred)


def tiers_line(plan: Any) -> str:
    """One line: which tiers the plan uses for what, and why."""
    sc = plan.scenario
    pl = placement_of(plan)
    n = len(pl.layers)
    parts = []
    for tier in ("hbm", "host", "cxl", "nvme", "csd"):
        k = pl.count(kv=tier)
        if k:
            off = {w: pl.count(kv=tier, attention=w) for w in ("cpu", "csd")}
            attn = "".join(f" ({m} attended on the {w})" for w, m in off.items() if m)
            parts.append(f"KV of {k}/{n} layers in {tier}{attn}")
    nq = sum(1 for lp in pl.layers if lp.kv_quant != "none")
    if nq:
        parts.append(f"KV of {nq}/{n} layers stored {sc.job.kv_quant} (KIVI)")
    s = sum(1 for lp in pl.layers if lp.params_tier != "hbm")
    if s:
        parts.append(f"weights of {s}/{n} layers streamed from {pl.layers[[lp.params_tier != 'hbm' for lp in pl.layers].index(True)].params_tier}")
    else:
        parts.append("all weights in HBM")
    from simulator.inference import kv_bytes_total

    kv_total = kv_bytes_total(sc.model, sc.job)
    why = ("everything fits the GPU budget" + (f" with {nq} layers' KV quantized" if nq else "")
           if pl.count(kv="hbm") == n and not s else
           f"the {format_bytes(kv_total)} of KV and the weights do not all fit the "
           f"{format_bytes(sc.gpu_budget_bytes)} GPU budget")
    if sc.job.engine == "hf":
        why += " (HF DynamicCache" + (", offloading=True)" if pl.count(kv="host") else ")")
    return "; ".join(parts) + f": {why}"


# ---- strategies --------------------------------------------------------------------------------


def _result(name: str, scenario, placement, **plan_kw) -> InferResult:
    from simulator.inference import replay_placement

    rep = replay_placement(scenario.model, scenario.job, scenario.node, placement,
                           gpu_budget_bytes=scenario.gpu_budget_bytes, host_budget_bytes=scenario.host_budget_bytes)
    plan = make_plan(scenario, placement, rep, planner=name, **plan_kw)
    return InferResult(name, plan, rep, rep.feasible, rep.binding)


def rule_placement(scenario, name: str, *, lookahead: int = DEFAULT_LOOKAHEAD,
                   num_staging_buffers: int = DEFAULT_STAGING_BUFFERS):
    """The placement of rule ``name`` (``resident`` or ``kv_host``)."""
    from kernels.quant import KIVI_KV_DTYPES
    from simulator.inference import LayerPlacement, Placement, static_memory_terms

    model, job = scenario.model, scenario.job
    L = model.num_layers
    q = job.kv_quant if job.engine == "static" and job.kv_quant in KIVI_KV_DTYPES else "none"
    if name == "resident":
        return Placement(tuple(LayerPlacement(kv_quant=q) for _ in range(L)), num_staging_buffers, lookahead)
    if name != "kv_host":
        raise UserInputError(f"strategy: unknown rule {name!r} (resident, kv_host)")
    streamed = 0
    num_q = L if q != "none" else 0
    if job.engine == "static":  # the fewest streamed layers that make the HBM fit
        terms = static_memory_terms(model, job, num_staging_buffers=num_staging_buffers)
        while streamed < L and max(terms.hbm_bytes(num_kv_off=L, num_streamed=streamed, num_layers=L,
                                                   num_q_off=num_q)) > hbm_cap_bytes(scenario):
            streamed += 1
    labels = spread(L, {"stream": streamed}) if streamed else ["hbm"] * L
    return Placement(tuple(LayerPlacement(kv_tier="host", params_tier="host" if lab == "stream" else "hbm",
                                          kv_quant=q) for lab in labels), num_staging_buffers, lookahead)


def plan_inference(scenario, *, objective: str = "throughput", time_limit_s: float = 10.0,
                   solver: str = "highs") -> InferReport:
    """Every strategy for ``scenario`` (an inference scenario), replayed; the best feasible one."""
    if objective not in OBJECTIVES:
        raise UserInputError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    job = scenario.job
    if job.mode != "infer":
        raise UserInputError("job.mode: plan_inference plans inference requests")
    results = [_result(name, scenario, rule_placement(scenario, name)) for name in ("resident", "kv_host")]
    timed_out = False
    if job.engine == "static":
        from planners.infer.mip import solve_placement

        sol = solve_placement(scenario, objective=objective, time_limit_s=time_limit_s, solver=solver)
        sols = [sol]
        if sol.placement is not None and any(lp.attention_on != "gpu" for lp in sol.placement.layers):
            # the bound takes attention off the GPU as overlapped with the other layers' fetches;
            # the replay decides against the best placement that keeps attention on the GPU
            sols.append(solve_placement(scenario, objective=objective, time_limit_s=time_limit_s, solver=solver,
                                        off_gpu=False))
        timed_out = sol.timed_out
        mip = None
        for s in sols:
            if s.placement is None:
                continue
            for k in lookahead_choices(s.placement):
                cand = _result("mip", scenario, dc_replace(s.placement, prefetch_lookahead_layers=k),
                               solver=s.solver, status=s.status, gap=s.gap, time_limit_s=time_limit_s)
                if mip is None or (cand.feasible, -_score(cand, objective)) > (mip.feasible, -_score(mip, objective)):
                    mip = cand
        feasible_rules = [r for r in results if r.feasible]
        best_rule = min(feasible_rules, key=lambda r: _score(r, objective)) if feasible_rules else None
        if best_rule is not None and (mip is None or not mip.feasible or _score(best_rule, objective) < _score(mip, objective)):
            status = f"{'time_limit:' if timed_out else ''}fallback:{best_rule.name}"
            mip = _result("mip", scenario, placement_of(best_rule.plan), solver=sol.solver, status=status,
                          gap=sol.gap, time_limit_s=time_limit_s)
        solve_s = sum(s.solve_time_s for s in sols)
        if mip is None:
            mip = InferResult("mip", None, None, False, sol.binding, solve_s)
        else:
            mip = InferResult(mip.name, mip.plan, mip.replay, mip.feasible, mip.reason, solve_s)
        results.append(mip)
    feasible = [r for r in results if r.feasible]
    best = min(feasible, key=lambda r: (_score(r, objective), r.name != "mip")).name if feasible else None
    binding = ""
    if best is None:
        # the MIP names the binding constraint over every placement; without one (hf engine) the
        # rule that offloads the most says what cannot fit
        binding = next((r.reason for r in results if r.name == "mip" and r.reason), "") or results[1].reason
    return InferReport(tuple(results), best, binding, objective, timed_out=timed_out and best is None)


def lookahead_choices(placement) -> list[int]:
    """Lookaheads the MIP's placement is replayed with (the fastest is kept): 1, 2, 4 and the
    spacing of its off-HBM layers times the buffers but one (a fetch may then start as soon as
    its buffer is free)."""
    L = len(placement.layers)
    off = sum(1 for lp in placement.layers if lp.kv_tier != "hbm" or lp.params_tier != "hbm")
    spacing = -(-L // off) if off else 1
    out = {1, 2, 4, spacing * max(1, placement.num_staging_buffers - 1)}
    return sorted(k for k in out if 1 <= k < max(2, L))


def _score(r: InferResult, objective: str) -> float:
    assert r.replay is not None  # scored results were replayed
    return r.replay.decode_step_time_s if objective == "throughput" else r.replay.step_time_s


# ---- what the tiers buy (estimate) --------------------------------------------------------------


@dataclass(frozen=True)
class TierOption:
    """The largest batch (at the job's lengths) and the longest context (at the job's batch)
    when the KV cache may live in ``tiers``, and the replayed decode step at those sizes."""

    tiers: tuple[str, ...]
    max_batch: int
    decode_step_time_s_at_max_batch: float | None
    max_context_len: int
    decode_step_time_s_at_max_context: float | None

    def to_dict(self) -> dict:
        return {"tiers": list(self.tiers), "max_batch": self.max_batch,
                "decode_step_time_s_at_max_batch": self.decode_step_time_s_at_max_batch,
                "max_context_len": self.max_context_len,
                "decode_step_time_s_at_max_context": self.decode_step_time_s_at_max_context}


_TERMS_CACHE: dict = {}


def _terms(model, job):
    """`simulator.inference.static_memory_terms` of ``job`` from its batch-1 terms: prefill runs
    one sequence at a time, the KV buffers scale with the batch; the decode activations (one
    token per sequence, a few MiB) are counted at batch 1. Cached: the searches of
    `tier_options` ask for many batches."""
    from dataclasses import replace

    from simulator.inference import static_memory_terms

    one = job.model_copy(update={"batch": 1})
    key = (model, one)
    if key not in _TERMS_CACHE:
        if len(_TERMS_CACHE) > 256:
            _TERMS_CACHE.clear()
        _TERMS_CACHE[key] = static_memory_terms(model, one, num_staging_buffers=DEFAULT_STAGING_BUFFERS)
    t = _TERMS_CACHE[key]
    return replace(t, kv_layer_bytes=t.kv_layer_bytes * job.batch, staging_bytes=t.staging_bytes * job.batch)


def _fill(scenario, job, tiers: tuple[str, ...]):
    """The static-engine placement with the fewest layers' KV off HBM that fits the GPU budget,
    the rest filled into ``tiers`` in order (each up to its capacity; a CSD's layers attended
    inside it), weights resident; None when no such placement fits."""
    from simulator.inference import LayerPlacement, Placement

    model, node = scenario.model, scenario.node
    L = model.num_layers
    terms = _terms(model, job)
    n_off = next((n for n in range(L + 1) if n == 0 or len(tiers) > 1
                  if max(terms.hbm_bytes(num_kv_off=n, num_streamed=0, num_layers=L)) <= hbm_cap_bytes(scenario)),
                 None)
    if n_off is None or (n_off and tiers == ("hbm",)):
        return None
    caps = {"host": scenario.host_budget_bytes, "cxl": sum(d.capacity_bytes for d in node.cxl),
            "nvme": sum(d.capacity_bytes for d in node.nvme), "csd": sum(d.capacity_bytes for d in node.csd)}
    counts: dict[str, int] = {}
    left = n_off
    for t in tiers[1:]:
        take = min(left, caps[t] // terms.kv_layer_bytes if terms.kv_layer_bytes else left)
        if take:
            counts[t] = take
            left -= take
    if left:
        return None
    if counts.get("nvme") and "csd" in tiers:
        # the drive attends its layers while the NVMe fetch runs for others: share the layers the
        # NVMe would take by the two rates (each within its capacity)
        from planners.infer.mip import route_rate_bytes_per_s

        r_nvme, r_csd = route_rate_bytes_per_s(node, "nvme"), node.csd[0].internal_flash_bandwidth_bytes_per_s
        room = caps["csd"] // terms.kv_layer_bytes - counts.get("csd", 0) if terms.kv_layer_bytes else counts["nvme"]
        move = min(room, round(counts["nvme"] * r_csd / (r_nvme + r_csd)))
        if move > 0:
            counts["nvme"] -= move
            counts["csd"] = counts.get("csd", 0) + move
    labels = spread(L, {t: n for t, n in counts.items() if n})
    return Placement(tuple(LayerPlacement(kv_tier=lab, attention_on="csd" if lab == "csd" else "gpu")
                           for lab in labels), DEFAULT_STAGING_BUFFERS, DEFAULT_LOOKAHEAD)


def _largest(ok, *, start: int, limit: int) -> int:
    """Largest n in [1, limit] with ok(n) (monotone decreasing), 0 when ok(1) fails."""
    if not ok(1):
        return 0
    lo, hi = 1, max(2, start)
    while hi < limit and ok(hi):
        lo, hi = hi, min(limit, hi * 2)
    if hi >= limit and ok(limit):
        return limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def tier_options(scenario) -> list[TierOption]:
    """For the KV cache in HBM only, then adding host, CXL, NVMe, a CSD (the node's; a CSD's
    layers attended inside the drive), the largest batch and context that fit (static engine,
    weights resident) and the replay's decode step there: what each tier buys and what it costs
    per token."""
    from hwmodels.limits import MAX_BATCH
    from simulator.inference import replay_placement

    job = scenario.job.model_copy(update={"engine": "static"})
    model, node = scenario.model, scenario.node
    chain = ["hbm", "host"] + [t for t in ("cxl", "nvme", "csd") if getattr(node, t)]
    total = job.prompt_len + job.gen_len
    # rotary models may run past their trained positions: search up to 8x them
    ctx_limit = max(total, model.max_position_embeddings * (8 if model.position != "learned" else 1))

    def job_at(batch: int, length: int):
        prompt = max(1, length * job.prompt_len // total)
        return job.model_copy(update={"batch": batch, "prompt_len": prompt, "gen_len": length - prompt})

    def decode_at(j, tiers: tuple[str, ...]) -> float | None:
        pl = _fill(scenario, j, tiers)
        if pl is None:
            return None
        return replay_placement(model, j, node, pl, gpu_budget_bytes=scenario.gpu_budget_bytes,
                                host_budget_bytes=scenario.host_budget_bytes).decode_step_time_s

    out = []
    for k in range(1, len(chain) + 1):
        tiers = tuple(chain[:k])
        max_b = _largest(lambda b, t=tiers: _fill(scenario, job_at(b, total), t) is not None, start=job.batch,
                         limit=MAX_BATCH)
        max_ctx = _largest(lambda n, t=tiers: _fill(scenario, job_at(job.batch, n), t) is not None, start=total,
                           limit=ctx_limit)
        out.append(TierOption(tiers, max_b, decode_at(job_at(max_b, total), tiers) if max_b else None, max_ctx,
                              decode_at(job_at(job.batch, max_ctx), tiers) if max_ctx else None))
    return out
