"""The inference offload MIP: per layer, the KV cache's tier and whether its weights stream.

Models: binaries ``kv[l, t]`` (layer l's KV cache in tier t: hbm, host and the node's cxl /
nvme; exactly one per layer; when the job accepts a quantized KV cache, ``job.kv_quant`` int8 /
int4, also ``kv[l, t, q]``: layer l's KV in tier t stored in that format, its quantized bytes
held and moved, dequantized on the GPU every decode step; and ``att[l, o]``: layer l's
unquantized KV next to where its attention runs, ``cpu`` (on the host, attended by the host
CPU) or ``csd`` (in the node's computational storage drive, attended inside it)), ``stream[l]``
(layer l's weights streamed from the host), and
``any_kv`` / ``any_stream`` (staging / weight buffers are allocated when any layer needs them).
Constraints, labelled as in the code:
  * ``hbm_prefill`` / ``hbm_decode``: `simulator.inference.StaticMemoryTerms` (the replay's
    own terms) within the GPU budget;
  * ``host_capacity``, ``cxl_capacity``, ``nvme_capacity``, ``csd_capacity``: the final-length KV (and the
    streamed weights, host) within the host budget and the devices' capacities;
  * ``decode_compute`` / ``link_<name>``: the decode step lasts at least its compute and at
    least the bytes each shared link (the GPU's host link, a CXL card, a drive) carries per step
    over its rate (the rates of `simulator.des.schedule.node_links`, the replay's); attention
    off the GPU is on the step's critical path: the compute with each such layer's GPU attention
    kernel replaced by its CPU / CSD attention and the query's and output's copies
    (`simulator.inference.off_gpu_attention`);
  * ``host_memory``: host DRAM serves the host KV's H2D fetches and the CPU's attention reads;
  * ``prefill_*`` (latency objective): the prefill lasts at least its compute and the weights
    streamed once per pass.
Objective: the decode step time (throughput) or prefill + gen_len decode steps (latency), plus a
tie-break of 1e-6 s per GB moved per step (fewer copies when the time is equal).
Layers are homogeneous, so the bound depends on the counts only: the solution's counts are
spread evenly over the layers (`planners.infer.spread`) and the plan replayed; the symmetry
constraints ``order_*`` (layer l's KV off HBM, or its weights streamed, only if layer l-1's is) keep the search small, and the
optimum equals the best of enumerating the counts (`enumerate_counts`, tests/planners).
Assumes: one GPU; lookahead and staging buffers hide the link time when the link is not the
bottleneck (the replay prices the rest).
Source: FlexGen (Sheng et al. 2023), the per-layer max of overlapped streams.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hwmodels.units import GB

if TYPE_CHECKING:
    from simulator.inference import Placement

TIE_BREAK_S_PER_BYTE = 1e-6 / GB
MIP_REL_GAP = 1e-9
OBJECTIVE_SCALE = 1e6
"""The objective in microseconds, solved to a relative gap of ``MIP_REL_GAP``: the differences
that decide between counts (the tie-break, attention off the GPU against a fetch: ~1e-10 s)
are below the solvers' default gaps (1e-4 relative, 1e-6 absolute) in seconds."""
LABEL_PLACEMENT = {"cpu": ("host", "cpu"), "csd": ("csd", "csd")}
"""A KV label that is not a tier: (the KV's tier, where its attention runs)."""


@dataclass(frozen=True)
class Coefficients:
    """What the bound needs, per layer (homogeneous) and fixed."""

    num_layers: int
    tiers: tuple[str, ...]  # KV tiers the node has: hbm, host[, cxl][, nvme]
    kv_fetch_bytes: int  # one layer's KV at the mean decode context (moved H2D per step)
    kv_final_bytes: int  # one layer's KV buffers of the final length
    weight_bytes: int
    decode_compute_s: float
    prefill_compute_s: float
    num_passes: int  # prefill passes (sequences x chunks): streamed weights cross once per pass
    gen_len: int
    host_rate_bytes_per_s: float  # the GPU's host link, shared by every tier's copies
    device_rate_bytes_per_s: dict[str, float]  # cxl / nvme: the device's own read rate
    capacity_bytes: dict[str, int]  # host budget, cxl and nvme capacities
    gpu_budget_bytes: int
    hbm_terms: object  # simulator.inference.StaticMemoryTerms
    kv_quant: str = "none"  # the quantized format layers may be stored in ("none": lossless only)
    kv_fetch_q_bytes: int = 0  # a quantized layer's whole groups at the mean decode context
    kv_final_q_bytes: int = 0  # a quantized layer's store of the final length (host / device bytes)
    dequant_s: float = 0.0  # one quantized layer's dequantize per decode step
    prefill_q_s: float = 0.0  # one quantized layer's quantize over the whole prefill
    host_memory_bytes_per_s: float = float("inf")  # host DRAM: host KV fetches and CPU attention reads
    off_gpu_s: dict[str, float] = field(default_factory=dict)  # cpu / csd: one layer's
    # attention there with its query and output copies, less the GPU attention kernel it replaces

    @property
    def formats(self) -> tuple[str, ...]:
        return ("none",) if self.kv_quant == "none" else ("none", self.kv_quant)


def label(tier: str, fmt: str) -> str:
    """The counts' key of KV in ``tier`` stored as ``fmt``: the tier, or ``tier:fmt`` quantized."""
    return tier if fmt == "none" else f"{tier}:{fmt}"


@dataclass(frozen=True)
class Solution:
    placement: Placement | None
    counts: dict[str, int] | None
    objective: float | None
    status: str
    solver: str
    gap: float | None
    solve_time_s: float
    binding: str

    @property
    def timed_out(self) -> bool:
        return self.status == "no_solution"


def coefficients(scenario, *, num_staging_buffers: int) -> Coefficients:
    from kernels.quant import KIVI_KV_DTYPES
    from simulator.des.schedule import device_route, node_links
    from simulator.inference import (
        _prefill_pass,
        decode_segments,
        kv_layer_bytes,
        kv_quant_layout,
        kv_quant_time_s,
        layer_weight_bytes,
        mean_context_len,
        off_gpu_attention,
        static_memory_terms,
    )

    model, job, node = scenario.model, scenario.job, scenario.node
    tiers = ("hbm", "host") + tuple(t for t in ("cxl", "nvme") if getattr(node, t))
    cap = {lk.name: lk.capacity_bytes_per_s for lk in node_links(node)}

    def route_rate(tier: str) -> float:
        return route_rate_bytes_per_s(node, tier)

    dev_rate = {t: route_rate(t) for t in tiers if t in ("cxl", "nvme")}
    capacity = {"host": scenario.host_budget_bytes}
    for t in ("cxl", "nvme", "csd"):
        if getattr(node, t):
            capacity[t] = sum(d.capacity_bytes for d in getattr(node, t))
    ctx = mean_context_len(job)
    decode_s = 0.0
    off_gpu_s: dict[str, float] = {}
    if job.gen_len:
        seg = decode_segments(model, job, node, context_len=ctx, batch=job.batch)
        decode_s = seg.total_s
        gpu_attn_s = seg.post[0].gpu_s - seg.post_after_attention[0].gpu_s
        off = off_gpu_attention(model, job, node, context_len=ctx + 1, batch=job.batch)
        for lab, run, dev in (("cpu", off.cpu, "host"), ("csd", off.csd, "csd0")):
            if lab == "csd" and not node.csd:
                continue
            copies_s = sum(device_route(node, 0, dev, d).latency_s for d in ("d2h", "h2d"))
            off_gpu_s[lab] = run.time_s + copies_s - gpu_attn_s
    chunk = job.prefill_chunk_len or job.prompt_len
    num_chunks = -(-job.prompt_len // chunk)
    prefill_s = job.batch * sum(
        _prefill_pass(model, job, node, batch=1, prompt_len=min(chunk, job.prompt_len - c * chunk),
                      past_len=c * chunk).total_s for c in range(num_chunks))
    quant: dict = {}
    if job.kv_quant in KIVI_KV_DTYPES:
        final = job.prompt_len + job.gen_len
        quant = dict(
            kv_quant=job.kv_quant,
            kv_fetch_q_bytes=kv_quant_layout(model, job, num_tokens=ctx, batch=job.batch).quantized_bytes,
            kv_final_q_bytes=kv_quant_layout(model, job, num_tokens=final, batch=job.batch).quantized_bytes,
            dequant_s=kv_quant_time_s(model, job, node, num_tokens=ctx, batch=job.batch) if job.gen_len else 0.0,
            prefill_q_s=job.batch * kv_quant_time_s(model, job, node, num_tokens=job.prompt_len, batch=1,
                                                    quantize=True))
    return Coefficients(
        num_layers=model.num_layers, tiers=tiers,
        kv_fetch_bytes=kv_layer_bytes(model, job, num_tokens=ctx, batch=job.batch),
        kv_final_bytes=kv_layer_bytes(model, job, num_tokens=job.prompt_len + job.gen_len, batch=job.batch),
        weight_bytes=layer_weight_bytes(model, job), decode_compute_s=decode_s, prefill_compute_s=prefill_s,
        num_passes=job.batch * num_chunks, gen_len=job.gen_len,
        host_rate_bytes_per_s=route_rate("host"), device_rate_bytes_per_s=dev_rate, capacity_bytes=capacity,
        host_memory_bytes_per_s=cap["host_memory"], off_gpu_s=off_gpu_s,
        gpu_budget_bytes=hbm_cap_bytes(scenario),
        hbm_terms=static_memory_terms(model, job, num_staging_buffers=num_staging_buffers), **quant)


def route_rate_bytes_per_s(node, tier: str) -> float:
    """The rate a fetch from ``tier`` into GPU 0 gets alone: the smallest capacity on its route
    (`simulator.des.schedule.node_links`, the replay's links)."""
    from simulator.des.schedule import device_route, node_links, offload_device

    cap = {lk.name: lk.capacity_bytes_per_s for lk in node_links(node)}
    return min(cap[name] for name in device_route(node, 0, offload_device(node, tier, 0), "h2d").links)


def kv_labels(c: Coefficients) -> list[str]:
    """The off-HBM (or quantized) choices of a layer's KV: its tier and format (attended on the
    GPU), ``cpu`` (host KV attended by the CPU), ``csd`` (KV in the drive, attended there)."""
    return [label(t, f) for f in c.formats for t in c.tiers if label(t, f) != "hbm"] + sorted(c.off_gpu_s)


def hbm_cap_bytes(scenario) -> int:
    """The HBM a placement may use: the scenario's GPU budget, capped at what one process can
    allocate on the card (simulator.inference.allocatable_hbm_bytes, what the replay checks)."""
    from simulator.inference import allocatable_hbm_bytes

    return min(scenario.gpu_budget_bytes, allocatable_hbm_bytes(scenario.node))


def bound_s(c: Coefficients, counts: dict[str, int], *, objective: str) -> float | None:
    """The MIP's objective for layer counts (``counts[label]`` KV layers per `kv_labels` label,
    ``counts["stream"]`` streamed weight layers); None when the counts break a constraint."""
    L = c.num_layers
    q = c.kv_quant
    n_att = {o: counts.get(o, 0) for o in c.off_gpu_s}  # unquantized, attended off the GPU
    n_off = sum(counts.get(label(t, f), 0) for t in c.tiers if t != "hbm" for f in c.formats) + sum(n_att.values())
    n_q_off = sum(counts.get(label(t, q), 0) for t in c.tiers if t != "hbm") if q != "none" else 0
    n_q_hbm = counts.get(label("hbm", q), 0) if q != "none" else 0
    n_s = counts.get("stream", 0)
    if n_off + n_q_hbm > L or n_s > L:
        return None
    pre, dec = c.hbm_terms.hbm_bytes(num_kv_off=n_off, num_streamed=n_s, num_layers=L,  # type: ignore[attr-defined]
                                     num_q_hbm=n_q_hbm, num_q_off=n_q_off)
    if max(pre, dec) > c.gpu_budget_bytes:
        return None

    def stored(t: str) -> int:  # bytes tier t holds
        return counts.get(t, 0) * c.kv_final_bytes + (counts.get(label(t, q), 0) * c.kv_final_q_bytes
                                                        if q != "none" else 0)

    def fetched(t: str) -> int:  # bytes tier t sends per decode step
        return counts.get(t, 0) * c.kv_fetch_bytes + (counts.get(label(t, q), 0) * c.kv_fetch_q_bytes
                                                        if q != "none" else 0)

    host = stored("host") + n_att.get("cpu", 0) * c.kv_final_bytes + n_s * c.weight_bytes
    if host > c.capacity_bytes["host"]:
        return None
    for t in ("cxl", "nvme"):
        if stored(t) and stored(t) > c.capacity_bytes.get(t, 0):
            return None
    if n_att.get("csd", 0) * c.kv_final_bytes > c.capacity_bytes.get("csd", 0) and n_att.get("csd", 0):
        return None
    moved = sum(fetched(t) for t in c.tiers if t != "hbm") + n_s * c.weight_bytes
    dram = fetched("host") + n_att.get("cpu", 0) * c.kv_fetch_bytes
    n_q = n_q_off + n_q_hbm
    step = max([c.decode_compute_s + n_q * c.dequant_s + sum(n * c.off_gpu_s[o] for o, n in n_att.items()),
                moved / c.host_rate_bytes_per_s, dram / c.host_memory_bytes_per_s]
               + [fetched(t) / r for t, r in c.device_rate_bytes_per_s.items()])
    tie = TIE_BREAK_S_PER_BYTE * moved
    if objective == "throughput":
        return step + tie
    prefill = max(c.prefill_compute_s + n_q * c.prefill_q_s,
                  c.num_passes * n_s * c.weight_bytes / c.host_rate_bytes_per_s)
    return prefill + c.gen_len * step + tie


def enumerate_counts(c: Coefficients, *, objective: str) -> tuple[float, dict[str, int]] | None:
    """The best counts by exhaustive enumeration (small cases: the MIP's reference)."""
    off = kv_labels(c)
    best = None
    for combo in itertools.product(range(c.num_layers + 1), repeat=len(off) + 1):
        counts = dict(zip(off + ["stream"], combo, strict=True))
        v = bound_s(c, counts, objective=objective)
        if v is not None and (best is None or v < best[0] - 1e-15):
            best = (v, counts)
    return best


def solve_placement(scenario, *, objective: str = "throughput", time_limit_s: float = 10.0, solver: str = "highs",
                    lookahead: int = 1, num_staging_buffers: int = 2, off_gpu: bool = True) -> Solution:
    """Solve the MIP for ``scenario`` (static engine); the placement of its counts. ``off_gpu``:
    attention may run on the CPU (host KV) or in the node's CSD (else on the GPU only)."""
    from dataclasses import replace

    import pulp

    from planners.solvers import NO_SOLUTION, solve

    c = coefficients(scenario, num_staging_buffers=num_staging_buffers)
    if not off_gpu or bound_s(c, {}, objective=objective) is not None:
        # attention off the GPU only adds to a step whose KV all fits in HBM
        c = replace(c, off_gpu_s={k: t for k, t in c.off_gpu_s.items() if off_gpu and t <= 0})
    L = c.num_layers
    atts = sorted(c.off_gpu_s)
    off_tiers = [t for t in c.tiers if t != "hbm"]
    q = c.kv_quant
    fmts = c.formats
    terms = c.hbm_terms
    prob = pulp.LpProblem("infer_offload", pulp.LpMinimize)
    kv = {(lyr, t, f): pulp.LpVariable(f"kv_{lyr}_{label(t, f).replace(':', '_')}", cat="Binary")
          for lyr in range(L) for t in c.tiers for f in fmts}
    att = {(lyr, o): pulp.LpVariable(f"att_{lyr}_{o}", cat="Binary") for lyr in range(L) for o in atts}
    stream = [pulp.LpVariable(f"stream_{lyr}", cat="Binary") for lyr in range(L)]
    any_kv = pulp.LpVariable("any_kv", cat="Binary")
    any_stream = pulp.LpVariable("any_stream", cat="Binary")
    # quantized formats: unquantized layers off HBM need full-size staging buffers, any quantized
    # layer the bf16 dequantize buffer
    any_kv_lossless = pulp.LpVariable("any_kv_lossless", cat="Binary") if q != "none" else any_kv
    any_q = pulp.LpVariable("any_quantized", cat="Binary") if q != "none" else None
    step = pulp.LpVariable("decode_step_s", lowBound=0)
    for lyr in range(L):
        prob += (pulp.lpSum(kv[lyr, t, f] for t in c.tiers for f in fmts)
                 + pulp.lpSum(att[lyr, o] for o in atts)) == 1, f"one_tier_{lyr}"
        for o in atts:  # unquantized, through a full-size staging slot
            prob += att[lyr, o] <= any_kv_lossless, f"staging_needed_{lyr}_{o}"
            if q != "none":
                prob += att[lyr, o] <= any_kv, f"any_staging_needed_{lyr}_{o}"
        for t in off_tiers:
            for f in fmts:
                prob += kv[lyr, t, f] <= any_kv, f"staging_needed_{lyr}_{label(t, f).replace(':', '_')}"
            if q != "none":
                prob += kv[lyr, t, "none"] <= any_kv_lossless, f"full_staging_needed_{lyr}_{t}"
        if any_q is not None:
            for t in c.tiers:
                prob += kv[lyr, t, q] <= any_q, f"dequant_buffer_needed_{lyr}_{t}"
        prob += stream[lyr] <= any_stream, f"weight_buffers_needed_{lyr}"
        if lyr:  # symmetry: homogeneous layers, the counts decide
            prob += stream[lyr] <= stream[lyr - 1], f"order_stream_{lyr}"
            prob += (pulp.lpSum(kv[lyr, t, f] for t in off_tiers for f in fmts) + pulp.lpSum(att[lyr, o] for o in atts)
                     <= pulp.lpSum(kv[lyr - 1, t, f] for t in off_tiers for f in fmts)
                     + pulp.lpSum(att[lyr - 1, o] for o in atts)), f"order_off_{lyr}"
    n_att = {o: pulp.lpSum(att[lyr, o] for lyr in range(L)) for o in atts}
    n_off = pulp.lpSum(kv[lyr, t, f] for lyr in range(L) for t in off_tiers for f in fmts) + pulp.lpSum(n_att.values())
    n_s = pulp.lpSum(stream)
    n_t = {(t, f): pulp.lpSum(kv[lyr, t, f] for lyr in range(L)) for t in c.tiers for f in fmts}
    if q == "none":
        fixed = (terms.kv_layer_bytes * (L - n_off) + terms.weight_layer_bytes * (L - n_s)  # type: ignore[attr-defined]
                 + terms.staging_bytes * any_kv + terms.weight_buffer_bytes * any_stream)  # type: ignore[attr-defined]
    else:  # StaticMemoryTerms.hbm_bytes: staging of the largest format off HBM, one dequantize buffer
        n_q_off = pulp.lpSum(n_t[t, q] for t in off_tiers)
        fixed = (terms.kv_layer_bytes * n_t["hbm", "none"] + terms.kv_q_layer_bytes * n_t["hbm", q]  # type: ignore[attr-defined]
                 + terms.kv_q_off_layer_bytes * n_q_off  # type: ignore[attr-defined]
                 + terms.weight_layer_bytes * (L - n_s)  # type: ignore[attr-defined]
                 + terms.staging_q_bytes * any_kv  # type: ignore[attr-defined]
                 + (terms.staging_bytes - terms.staging_q_bytes) * any_kv_lossless  # type: ignore[attr-defined]
                 + terms.weight_buffer_bytes * any_stream + terms.dequant_bytes * any_q)  # type: ignore[attr-defined]
    g = float(c.gpu_budget_bytes)
    prob += (fixed + terms.fixed_prefill_bytes) / g <= 1, "hbm_prefill"  # type: ignore[attr-defined]
    prob += (fixed + terms.fixed_decode_bytes) / g <= 1, "hbm_decode"  # type: ignore[attr-defined]

    def stored(t: str):  # bytes tier t holds
        return n_t[t, "none"] * c.kv_final_bytes + (n_t[t, q] * c.kv_final_q_bytes if q != "none" else 0)

    def fetched(t: str):  # bytes tier t sends per decode step
        return n_t[t, "none"] * c.kv_fetch_bytes + (n_t[t, q] * c.kv_fetch_q_bytes if q != "none" else 0)

    n_cpu = n_att.get("cpu", 0)
    prob += (stored("host") + n_cpu * c.kv_final_bytes + n_s * c.weight_bytes) / float(c.capacity_bytes["host"]) \
        <= 1, "host_capacity"
    for t in off_tiers:
        if t != "host":
            prob += stored(t) * (1.0 / c.capacity_bytes[t]) <= 1, f"{t}_capacity"
            prob += step >= fetched(t) * (1.0 / c.device_rate_bytes_per_s[t]), f"link_{t}"
    if "csd" in n_att:
        prob += n_att["csd"] * (c.kv_final_bytes / float(c.capacity_bytes["csd"])) <= 1, "csd_capacity"
    moved = pulp.lpSum(fetched(t) for t in off_tiers) + n_s * c.weight_bytes
    n_q = pulp.lpSum(n_t[t, q] for t in c.tiers) if q != "none" else 0
    prob += step >= c.decode_compute_s + n_q * c.dequant_s + pulp.lpSum(n_att[o] * c.off_gpu_s[o] for o in atts), \
        "decode_compute"
    prob += step >= moved * (1.0 / c.host_rate_bytes_per_s), "link_host"
    prob += step >= (fetched("host") + n_cpu * c.kv_fetch_bytes) * (1.0 / c.host_memory_bytes_per_s), "host_memory"
    tie = moved * TIE_BREAK_S_PER_BYTE
    if objective == "throughput":
        prob += OBJECTIVE_SCALE * (step + tie)
    else:
        prefill = pulp.LpVariable("prefill_s", lowBound=0)
        prob += prefill >= c.prefill_compute_s + n_q * c.prefill_q_s, "prefill_compute"
        prob += prefill >= n_s * (c.num_passes * c.weight_bytes / c.host_rate_bytes_per_s), "prefill_weights"
        prob += OBJECTIVE_SCALE * (prefill + c.gen_len * step + tie)
    res = solve(prob, time_limit_s=time_limit_s, solver=solver, mip_rel_gap=MIP_REL_GAP)
    if not res.has_solution:
        binding = ("time limit before any solution" if res.status == NO_SOLUTION else
                   _binding(c))
        return Solution(None, None, None, res.status, res.solver, res.gap, res.solve_time_s, binding)
    counts = {label(t, f): int(round(sum(kv[lyr, t, f].value() or 0 for lyr in range(L))))
              for f in fmts for t in c.tiers if label(t, f) != "hbm"}
    counts.update({o: int(round(sum(att[lyr, o].value() or 0 for lyr in range(L)))) for o in atts})
    counts["stream"] = int(round(sum(s.value() or 0 for s in stream)))
    placement = placement_of_counts(counts, num_layers=L, num_staging_buffers=num_staging_buffers,
                                    lookahead=lookahead)
    objective_s = None if res.objective is None else res.objective / OBJECTIVE_SCALE
    return Solution(placement, counts, objective_s, res.status, res.solver, res.gap, res.solve_time_s, "")


def placement_of_counts(counts: dict[str, int], *, num_layers: int, num_staging_buffers: int,
                        lookahead: int) -> Placement:
    """The placement of MIP counts: each label's layers spread evenly (`planners.infer.spread`),
    the streamed weights spread on their own; ``tier:fmt`` a quantized layer, ``cpu`` / ``csd``
    a layer attended off the GPU (`LABEL_PLACEMENT`)."""
    from planners.infer import spread
    from simulator.inference import LayerPlacement, Placement

    kv_of = spread(num_layers, {k: n for k, n in counts.items() if k != "stream"})
    st = spread(num_layers, {"stream": counts.get("stream", 0)})
    out = []
    for k, w in zip(kv_of, st, strict=True):
        tier, where = LABEL_PLACEMENT.get(k, (k.partition(":")[0], "gpu"))
        out.append(LayerPlacement(kv_tier=tier, kv_quant=k.partition(":")[2] or "none",
                                  params_tier="host" if w == "stream" else "hbm", attention_on=where))
    return Placement(tuple(out), num_staging_buffers=num_staging_buffers, prefetch_lookahead_layers=lookahead)


def _binding(c: Coefficients) -> str:
    """Why no counts fit, one line: the HBM with everything off it, else the host."""
    from hwmodels.units import format_bytes

    L = c.num_layers
    pre, dec = c.hbm_terms.hbm_bytes(num_kv_off=L, num_streamed=L, num_layers=L)  # type: ignore[attr-defined]
    if max(pre, dec) > c.gpu_budget_bytes:
        return (f"hbm: even with every layer's KV and weights off HBM the GPU needs {format_bytes(max(pre, dec))} "
                f"(buffers, activations, embedding and head), over the budget of {format_bytes(c.gpu_budget_bytes)}")
    need = min((n * c.kv_final_bytes + s * c.weight_bytes, n, s) for n in range(L + 1) for s in range(L + 1)
               if max(c.hbm_terms.hbm_bytes(num_kv_off=n, num_streamed=s, num_layers=L)) <= c.gpu_budget_bytes)  # type: ignore[attr-defined]
    room = sum(c.capacity_bytes.values())
    where = "the host budget" + (" and the CXL / NVMe capacities" if len(c.capacity_bytes) > 1 else "")
    return (f"host: at least {format_bytes(need[0])} of KV and weights must leave HBM ({need[1]} layers' KV, "
            f"{need[2]} layers' weights), over {where} of {format_bytes(room)}")
