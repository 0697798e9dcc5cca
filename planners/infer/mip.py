"""The inference offload MIP: per layer, the KV cache's tier and whether its weights stream.

Models: binaries ``kv[l, t]`` (layer l's KV cache in tier t: hbm, host and the node's cxl /
nvme, attended on the GPU; or ``cpu``: on the host, attended by the host CPU; or ``csd``: in the
node's computational storage drive, attended inside it; exactly one per layer), ``stream[l]``
(layer l's weights streamed from the host), and ``any_kv`` / ``any_stream`` (staging / weight
buffers are allocated when any layer needs them). Constraints, labelled as in the code:
  * ``hbm_prefill`` / ``hbm_decode``: `simulator.inference.StaticMemoryTerms` (the replay's
    own terms) within the GPU budget;
  * ``host_capacity``, ``cxl_capacity``, ``nvme_capacity``: the final-length KV (and the
    streamed weights, host) within the host budget and the devices' capacities;
  * ``decode_compute`` / ``link_<name>``: the decode step lasts at least its compute and at
    least the bytes each shared link (the GPU's host link, a CXL card, a drive) carries per step
    over its rate (the rates of `simulator.des.schedule.node_links`, the replay's);
  * ``decode_critical_path``: attention off the GPU is on the step's critical path: the compute
    with each such layer's GPU attention kernel replaced by its CPU / CSD attention and the
    query's and output's copies (`simulator.inference.off_gpu_attention`);
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
    host_memory_bytes_per_s: float = float("inf")  # host DRAM: host KV fetches and CPU attention reads
    off_gpu_s: dict[str, float] = field(default_factory=dict)  # cpu / csd: one layer's
    # attention there with its query and output copies, less the GPU attention kernel it replaces


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
    from simulator.des.schedule import device_route, node_links
    from simulator.inference import (
        _prefill_pass,
        decode_segments,
        kv_layer_bytes,
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
        for label, run, dev in (("cpu", off.cpu, "host"), ("csd", off.csd, "csd0")):
            if label == "csd" and not node.csd:
                continue
            copies_s = sum(device_route(node, 0, dev, d).latency_s for d in ("d2h", "h2d"))
            off_gpu_s[label] = run.time_s + copies_s - gpu_attn_s
    chunk = job.prefill_chunk_len or job.prompt_len
    num_chunks = -(-job.prompt_len // chunk)
    prefill_s = job.batch * sum(
        _prefill_pass(model, job, node, batch=1, prompt_len=min(chunk, job.prompt_len - c * chunk),
                      past_len=c * chunk).total_s for c in range(num_chunks))
    return Coefficients(
        num_layers=model.num_layers, tiers=tiers,
        kv_fetch_bytes=kv_layer_bytes(model, job, num_tokens=ctx, batch=job.batch),
        kv_final_bytes=kv_layer_bytes(model, job, num_tokens=job.prompt_len + job.gen_len, batch=job.batch),
        weight_bytes=layer_weight_bytes(model, job), decode_compute_s=decode_s, prefill_compute_s=prefill_s,
        num_passes=job.batch * num_chunks, gen_len=job.gen_len,
        host_rate_bytes_per_s=route_rate("host"), device_rate_bytes_per_s=dev_rate, capacity_bytes=capacity,
        host_memory_bytes_per_s=cap["host_memory"], off_gpu_s=off_gpu_s,
        gpu_budget_bytes=hbm_cap_bytes(scenario),
        hbm_terms=static_memory_terms(model, job, num_staging_buffers=num_staging_buffers))


def route_rate_bytes_per_s(node, tier: str) -> float:
    """The rate a fetch from ``tier`` into GPU 0 gets alone: the smallest capacity on its route
    (`simulator.des.schedule.node_links`, the replay's links)."""
    from simulator.des.schedule import device_route, node_links, offload_device

    cap = {lk.name: lk.capacity_bytes_per_s for lk in node_links(node)}
    return min(cap[name] for name in device_route(node, 0, offload_device(node, tier, 0), "h2d").links)


def hbm_cap_bytes(scenario) -> int:
    """The HBM a placement may use: the scenario's GPU budget, capped at what one process can
    allocate on the card (simulator.inference.allocatable_hbm_bytes, what the replay checks)."""
    from simulator.inference import allocatable_hbm_bytes

    return min(scenario.gpu_budget_bytes, allocatable_hbm_bytes(scenario.node))


def kv_labels(c: Coefficients) -> list[str]:
    """The off-HBM choices of a layer's KV: its tier (attended on the GPU), ``cpu`` (host KV
    attended by the CPU), ``csd`` (KV in the drive, attended there)."""
    return [t for t in c.tiers if t != "hbm"] + sorted(c.off_gpu_s)


LABEL_PLACEMENT = {"cpu": ("host", "cpu"), "csd": ("csd", "csd")}
"""A KV label that is not a tier: (the KV's tier, where its attention runs)."""


def bound_s(c: Coefficients, counts: dict[str, int], *, objective: str) -> float | None:
    """The MIP's objective for layer counts (``counts[label]`` KV layers per `kv_labels` label,
    ``counts["stream"]`` streamed weight layers); None when the counts break a constraint."""
    L = c.num_layers
    n_off = sum(counts.get(t, 0) for t in kv_labels(c))
    n_s = counts.get("stream", 0)
    if n_off > L or n_s > L:
        return None
    pre, dec = c.hbm_terms.hbm_bytes(num_kv_off=n_off, num_streamed=n_s, num_layers=L)  # type: ignore[attr-defined]
    if max(pre, dec) > c.gpu_budget_bytes:
        return None
    host = (counts.get("host", 0) + counts.get("cpu", 0)) * c.kv_final_bytes + n_s * c.weight_bytes
    if host > c.capacity_bytes["host"]:
        return None
    for t in ("cxl", "nvme", "csd"):
        if counts.get(t, 0) and counts[t] * c.kv_final_bytes > c.capacity_bytes.get(t, 0):
            return None
    fetched = sum(counts.get(t, 0) for t in c.tiers if t != "hbm")
    moved = fetched * c.kv_fetch_bytes + n_s * c.weight_bytes
    dram = (counts.get("host", 0) + counts.get("cpu", 0)) * c.kv_fetch_bytes
    step = max([c.decode_compute_s + sum(counts.get(o, 0) * t for o, t in c.off_gpu_s.items()),
                moved / c.host_rate_bytes_per_s, dram / c.host_memory_bytes_per_s]
               + [counts.get(t, 0) * c.kv_fetch_bytes / r for t, r in c.device_rate_bytes_per_s.items()])
    tie = TIE_BREAK_S_PER_BYTE * moved
    if objective == "throughput":
        return step + tie
    prefill = max(c.prefill_compute_s, c.num_passes * n_s * c.weight_bytes / c.host_rate_bytes_per_s)
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
    labels = ["hbm", *kv_labels(c)]
    off_labels = labels[1:]
    fetch_tiers = [t for t in c.tiers if t != "hbm"]  # attended on the GPU: fetched every step
    terms = c.hbm_terms
    prob = pulp.LpProblem("infer_offload", pulp.LpMinimize)
    kv = {(lyr, t): pulp.LpVariable(f"kv_{lyr}_{t}", cat="Binary") for lyr in range(L) for t in labels}
    stream = [pulp.LpVariable(f"stream_{lyr}", cat="Binary") for lyr in range(L)]
    any_kv = pulp.LpVariable("any_kv", cat="Binary")
    any_stream = pulp.LpVariable("any_stream", cat="Binary")
    step = pulp.LpVariable("decode_step_s", lowBound=0)
    for lyr in range(L):
        prob += pulp.lpSum(kv[lyr, t] for t in labels) == 1, f"one_tier_{lyr}"
        for t in off_labels:
            prob += kv[lyr, t] <= any_kv, f"staging_needed_{lyr}_{t}"
        prob += stream[lyr] <= any_stream, f"weight_buffers_needed_{lyr}"
        if lyr:  # symmetry: homogeneous layers, the counts decide
            prob += stream[lyr] <= stream[lyr - 1], f"order_stream_{lyr}"
            prob += (pulp.lpSum(kv[lyr, t] for t in off_labels)
                     <= pulp.lpSum(kv[lyr - 1, t] for t in off_labels)), f"order_off_{lyr}"
    n_off = pulp.lpSum(kv[lyr, t] for lyr in range(L) for t in off_labels)
    n_s = pulp.lpSum(stream)
    fixed = (terms.kv_layer_bytes * (L - n_off) + terms.weight_layer_bytes * (L - n_s)  # type: ignore[attr-defined]
             + terms.staging_bytes * any_kv + terms.weight_buffer_bytes * any_stream)  # type: ignore[attr-defined]
    g = float(c.gpu_budget_bytes)
    prob += (fixed + terms.fixed_prefill_bytes) / g <= 1, "hbm_prefill"  # type: ignore[attr-defined]
    prob += (fixed + terms.fixed_decode_bytes) / g <= 1, "hbm_decode"  # type: ignore[attr-defined]
    n_t = {t: pulp.lpSum(kv[lyr, t] for lyr in range(L)) for t in off_labels}
    n_host_kv = n_t["host"] + (n_t["cpu"] if "cpu" in n_t else 0)
    prob += (n_host_kv * c.kv_final_bytes + n_s * c.weight_bytes) / float(c.capacity_bytes["host"]) <= 1, \
        "host_capacity"
    for t in off_labels:
        if t in ("cxl", "nvme", "csd"):
            prob += n_t[t] * c.kv_final_bytes / float(c.capacity_bytes[t]) <= 1, f"{t}_capacity"
        if t in c.device_rate_bytes_per_s:
            prob += step >= n_t[t] * (c.kv_fetch_bytes / c.device_rate_bytes_per_s[t]), f"link_{t}"
    moved = pulp.lpSum(n_t[t] for t in fetch_tiers) * c.kv_fetch_bytes + n_s * c.weight_bytes
    prob += step >= c.decode_compute_s + pulp.lpSum(n_t[o] * t for o, t in c.off_gpu_s.items()), \
        "decode_critical_path"
    prob += step >= moved * (1.0 / c.host_rate_bytes_per_s), "link_host"
    prob += step >= n_host_kv * (c.kv_fetch_bytes / c.host_memory_bytes_per_s), "host_memory"
    tie = moved * TIE_BREAK_S_PER_BYTE
    if objective == "throughput":
        prob += OBJECTIVE_SCALE * (step + tie)
    else:
        prefill = pulp.LpVariable("prefill_s", lowBound=0)
        prob += prefill >= c.prefill_compute_s, "prefill_compute"
        prob += prefill >= n_s * (c.num_passes * c.weight_bytes / c.host_rate_bytes_per_s), "prefill_weights"
        prob += OBJECTIVE_SCALE * (prefill + c.gen_len * step + tie)
    res = solve(prob, time_limit_s=time_limit_s, solver=solver, mip_rel_gap=MIP_REL_GAP)
    if not res.has_solution:
        binding = ("time limit before any solution" if res.status == NO_SOLUTION else
                   _binding(c))
        return Solution(None, None, None, res.status, res.solver, res.gap, res.solve_time_s, binding)
    counts = {t: int(round(sum(kv[lyr, t].value() or 0 for lyr in range(L)))) for t in off_labels}
    counts["stream"] = int(round(sum(s.value() or 0 for s in stream)))
    placement = placement_of_counts(counts, num_layers=L, num_staging_buffers=num_staging_buffers,
                                    lookahead=lookahead)
    objective_s = None if res.objective is None else res.objective / OBJECTIVE_SCALE
    return Solution(placement, counts, objective_s, res.status, res.solver, res.gap, res.solve_time_s, "")


def placement_of_counts(counts: dict[str, int], *, num_layers: int, num_staging_buffers: int,
                        lookahead: int) -> Placement:
    """The placement of MIP counts: each label's layers spread evenly (`planners.infer.spread`),
    the streamed weights spread on their own."""
    from planners.infer import spread
    from simulator.inference import LayerPlacement, Placement

    kv_of = spread(num_layers, {t: n for t, n in counts.items() if t != "stream"})
    st = spread(num_layers, {"stream": counts.get("stream", 0)})
    out = []
    for k, w in zip(kv_of, st, strict=True):
        tier, where = LABEL_PLACEMENT.get(k, (k, "gpu"))
        out.append(LayerPlacement(kv_tier=tier, params_tier="host" if w == "stream" else "hbm", attention_on=where))
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
