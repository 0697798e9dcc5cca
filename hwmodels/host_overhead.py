"""Host time of eager PyTorch execution, and the rates of decode's small kernels, on one machine.

Models: a decode step of batch 1 is a few hundred kernels, each shorter on the GPU than the
Python, dispatcher and launch work that issues it, so an eager step is bound by the host. The host
issues a decoder layer's ops in ``per_layer_s`` and the work outside the layers (embedding,
rotary tables, final norm, LM head, argmax) in ``fixed_s``. Figures per engine: transformers'
eager decode (``hf``; its DynamicCache ``offloading=True`` form adds stream switches and two
``.to`` per tensor per layer) and tierplan's static engine issued eagerly (also its prefill
passes) or through CUDA graphs (per layer two graph replays around an eager attention). Each
with SDPA kept off cuDNN attention (flash first: what the engines run) and, ``cudnn``, with
torch's default order, where cuDNN attention builds an execution plan for every new KV length
(every decode step: ~1.1 ms of host time per layer at 32K). On the GPU side, decode's weight GEMVs
and its one-token attention reach less than the HBM copy rate the roofline uses: ``DecodeRates``.
The host CPU's own one-token attention over a KV cache in its DRAM (attention off the GPU):
``CpuAttentionRate``.
Assumes: the host's single-thread speed of the machine measured (the figures are the H200 host's;
other nodes use them too until measured: the host, not the GPU, sets them). Decode rates of other
GPUs are the H200's scaled by their datasheet HBM bandwidth.
Ignores: Python garbage collection pauses, CPU frequency changes within a run.
Source: see each figure's ``source``: validate/scripts/host_overhead.py's file under
validate/measurements/h200/ once measured; until then the Llama-3.1-8B 32K batch-1 smoke runs
(validate/measurements/h200/infer-smoke-*-h200-2026-12-02.json: eager under torch's SDPA order on
main f897228, graphed with SDPA off cuDNN on infer-exec2 ad493d3), the one cell fitting may use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``ys`` against ``xs`` (at least two distinct xs)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError("fit_line: needs two or more (x, y) points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("fit_line: the xs are all equal")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


@dataclass(frozen=True)
class EngineHostCost:
    """Host seconds of one eager decode step: ``fixed_s + per_layer_s * num_layers``."""

    fixed_s: float
    per_layer_s: float


@dataclass(frozen=True)
class EagerHostCosts:
    """Measured host costs of one machine's execution (SDPA off cuDNN unless ``_cudnn``)."""

    hf_resident: EngineHostCost
    hf_offloaded: EngineHostCost
    static_eager: EngineHostCost
    static_graphs: EngineHostCost
    hf_resident_cudnn: EngineHostCost
    hf_offloaded_cudnn: EngineHostCost
    static_eager_cudnn: EngineHostCost
    source: str
    first_forward_s: float = 0.0
    """Host seconds the first forward pass of a fresh process pays beyond its kernels' issue, in
    a timed prefill that no warm-up preceded: each kernel's module loaded on its first launch
    (CUDA's lazy loading), cuBLASLt's handle, workspace and heuristic query for each new GEMM
    shape, the caching allocator's first cudaMalloc of each activation block; the GPU idles
    meanwhile (nothing is queued before the host gets past them)."""
    first_forward_source: str = ""

    def engine(self, engine: str, *, offloaded: bool = False, graphs: bool = False,
               sdpa_cudnn: bool = False) -> EngineHostCost:
        """The cost of ``engine`` ("hf" or "static") issued this way."""
        if engine == "hf":
            name = "hf_offloaded" if offloaded else "hf_resident"
        else:
            name = "static_graphs" if graphs else "static_eager"
        if sdpa_cudnn and name != "static_graphs":
            name += "_cudnn"
        return getattr(self, name)


@dataclass(frozen=True)
class DecodeRates:
    """Bytes per second decode's memory-bound kernels reach (queued, past the L2)."""

    gemm_bytes_per_s: float  # weight GEMV / skinny GEMM (1-64 rows): weight bytes over time
    attention_latency_s: float  # one-token SDPA (flash, GQA): fixed time per call; its K and V
    # bytes stream at the GPU's measured memory-class rate (the profile's "memory" fit)
    source: str


FIRST_FORWARD_S = 0.268
FIRST_FORWARD_SOURCE = (
    "fitted on the Llama-3.1-8B 32K batch-1 cell, the one cell fitting may use: the mean of its four HF "
    "prefills under SDPA off cuDNN (the bench's and the smoke's, resident and offloaded: 0.279, 0.319, 0.216, "
    "0.259 s) less their replay without it; validate/infer_hf.py times generate's first forward with no "
    "warm-up before it, where the static engine's warm-up (0.39-0.45 s at 32K for ~0.1 s of its kernels) "
    "takes the same costs out of its timed prefill, and the HF engine's first decode step took 70-100 ms "
    "more than the next (new decode shapes). The 128K batch-1 cells and the cuDNN-era 32K runs (the "
    "static engine's before it warmed up among them) are the check"
)
"""The host's first-forward cost (``EagerHostCosts.first_forward_s``) and where it comes from."""

H200_HOST = EagerHostCosts(
    hf_resident=EngineHostCost(fixed_s=0.6e-3, per_layer_s=0.548e-3),
    hf_offloaded=EngineHostCost(fixed_s=0.6e-3, per_layer_s=0.668e-3),
    static_eager=EngineHostCost(fixed_s=0.4e-3, per_layer_s=0.524e-3),
    static_graphs=EngineHostCost(fixed_s=0.1e-3, per_layer_s=0.054e-3),
    hf_resident_cudnn=EngineHostCost(fixed_s=0.6e-3, per_layer_s=1.68e-3),
    hf_offloaded_cudnn=EngineHostCost(fixed_s=0.6e-3, per_layer_s=1.80e-3),
    static_eager_cudnn=EngineHostCost(fixed_s=0.4e-3, per_layer_s=1.54e-3),
    source="fitted on the Llama-3.1-8B 32K batch-1 decode steps of the two smoke files (32 layers): SDPA "
           "off cuDNN: hf resident 18.14 ms, static eager issue 17.17 ms, graphed issue 1.83 ms; torch's "
           "order: hf resident 54.47 ms, static eager 49.67 ms; offloaded: resident + 0.12 ms per layer "
           "(its stream switches and copies' issue, assumed)",
    first_forward_s=FIRST_FORWARD_S,
    first_forward_source=FIRST_FORWARD_SOURCE,
)

H200_DECODE = DecodeRates(
    gemm_bytes_per_s=3.45e12,
    attention_latency_s=39.6e-6,
    source="gemm: gemm-sweep-h200-2026-12-03 (validate/scripts/gemm_sweep.py, decode family, queued, 1-64 "
           "rows against Llama-3-8B's 4096x14336 and 14336x4096 weights: 3.2-3.6 TB/s); attention: K and V "
           "at the profile's memory rate (4.32 TB/s, elementwise microbenchmarks) plus the fixed time per "
           "call that makes the graphed 32K batch-1 static step (8.70 ms, infer-exec2 smoke) equal its "
           "kernels; 128K batch 1 and 4 are held out",
)


def eager_host_costs(node) -> EagerHostCosts:
    """The host costs of ``node``'s execution (the H200 host's figures)."""
    del node  # one measured host so far
    return H200_HOST


H200_HBM_BYTES_PER_S = 4.8e12
"""The H200's datasheet HBM bandwidth (hwmodels/presets/gpus/H200-SXM.json), the scale of its rates."""


def decode_rates(node) -> DecodeRates:
    """Decode kernel rates of ``node``'s GPU: the H200's measured ones, scaled by the HBM
    bandwidth of the datasheet on other GPUs (its efficiencies, until measured there)."""
    if node.gpu.name.startswith("H200"):
        return H200_DECODE
    scale = node.gpu.hbm_bandwidth_bytes_per_s / H200_HBM_BYTES_PER_S
    return DecodeRates(gemm_bytes_per_s=H200_DECODE.gemm_bytes_per_s * scale,
                       attention_latency_s=H200_DECODE.attention_latency_s,
                       source=f"the H200's ({H200_DECODE.source}) times {node.gpu.name}'s HBM bandwidth over the H200's")


# ---- attention on the host CPU ------------------------------------------------------------------


@dataclass(frozen=True)
class CpuAttentionRate:
    """How fast the host CPU runs one-token (decode) attention over a KV cache in its DRAM, all
    its threads on one call: ``latency_s + max(kv_bytes / kv_bytes_per_s, flops / flops_per_s)``
    (memory bound at decode's ~H/KVH FLOPs per byte; the FLOP rate binds only for wide groups)."""

    kv_bytes_per_s: float  # K and V bytes read per second
    flops_per_s: float
    latency_s: float  # per call: the wait for the query's copy, torch's dispatch, the thread pool
    source: str

    def time_s(self, *, kv_bytes: float, flops: float) -> float:
        return self.latency_s + max(kv_bytes / self.kv_bytes_per_s, flops / self.flops_per_s)


H200_HOST_CPU_ATTENTION = CpuAttentionRate(
    kv_bytes_per_s=11.3e9,
    flops_per_s=0.5e12,
    latency_s=0.0,
    source="validate/measurements/h200/cpu-attention-h200-2026-12-03.json (validate/scripts/cpu_attention_bench.py "
           "on the H200 host, 16 threads, 2026-12-03): torch's CPU SDPA of one bf16 query token over a bf16 K,V "
           "in pinned host memory, 8K-128K keys, batch 1 and 4: 5.6-19.1 GB/s of K and V, 11.3 GB/s the "
           "least-squares rate through the origin of its six points (the line with an intercept came out at "
           "11.0 GB/s and -3.8 ms: no fixed cost per call is resolved, so none is charged); a plain fp32 read "
           "moves 75.4 GB/s with the same threads, so the SDPA's bf16 arithmetic, not DRAM, binds. FLOPs: a "
           "quarter of 8 Sapphire Rapids class cores' fp32 AVX-512 peak, assumed (they never bind at "
           "decode's GQA groups). The same file's decode (every fourth layer of the 128K batch-1 cell on the "
           "CPU, 56.6 ms a layer beside the other layers' H2D copies) is held out",
)
"""The H200 host's decode-attention rate (measured)."""


def cpu_attention_rate(node) -> CpuAttentionRate:
    """The host CPU's decode-attention rate on ``node`` (the H200 host's figure: one host
    measured so far, as for the issue costs above)."""
    del node  # one measured host so far
    return H200_HOST_CPU_ATTENTION
