"""Time of one GPU kernel from its FLOPs and HBM bytes: a roofline with fitted efficiencies.

Models: ``time_s = max(compute side, memory side, launch overhead)`` where each side is the alpha-beta form of
`hwmodels.specs.OpClassFit`: compute side ``latency_s + flops / achieved_flops_per_s`` for the
op class (``gemm``, ``attention_fwd``, ``attention_bwd``), memory side
``latency_s + hbm_bytes / achieved_bandwidth`` (class ``memory``; ``hbm_copy`` for copies).
The fixed latency is what makes small kernels reach only a fraction of the rate (the size curve:
half of the rate at ``flops = latency_s * rate``).
A GEMM has a third side, ``gemm.burst``: a latency plus the rate short kernels reach at the burst
clock (H200: about 6 us and 790 TFLOP/s, fitted on the GEMM sweep's fit half) against the
``gemm`` fit's sustained rate (699 TFLOP/s, no latency: training shapes, alone and inside steps).
The slower side wins, so GEMMs above about 30 GFLOP are the sustained fit's, and a 1536^3 one
(7 GFLOP, measured 15.0 us) pays the latency where the sustained rate alone said 10.4 us.
With a node profile, achieved rates and latencies are its fits; compute rates measured in one
dtype scale to another by the ratio of datasheet peaks. Without one, the rate is the datasheet
peak times `DEFAULT_FLOPS_EFFICIENCY_FRAC` / `DEFAULT_BANDWIDTH_EFFICIENCY_FRAC` and the latency
is the GPU's ``kernel_launch_overhead_s`` (no ramp beyond launch).
Memory-class kernels (norms, elementwise) run on CUDA cores: their compute side is
``flops / peak_flops_per_s["fp32"]``, no efficiency, a bound that only matters for odd inputs.
Assumes: one kernel at a time owns the GPU; copies on copy engines do not slow it (the H200
probe saw a GEMM stream and two copy streams overlap with no visible slowdown).
Ignores: tile and wave quantization beyond what the fit absorbs (GEMM shapes of equal FLOPs can
differ by about 7%), clocks under power capping, L2 reuse between kernels.
Source: defaults are the committed H200 fit (profile H200-measured: the reference probe,
validate/measurements/h200/microbench-h200-2026-11-28*.json and the in-step kernel times
instep-h200-2026-11-28.json) divided by the H200 datasheet
(989.5 TFLOP/s bf16, 4.8 TB/s); tests/hwmodels checks that they stay within 2% of that profile.
"""

from __future__ import annotations

from hwmodels.op_classes import FLOP_CLASSES, GEMM_BURST_CLASS, KERNEL_CLASSES
from hwmodels.specs import NodeSpec, OpClassFit
from hwmodels.units import UserInputError

# Achieved / datasheet-peak compute rate of large kernels, from the H200 bf16 fit.
DEFAULT_FLOPS_EFFICIENCY_FRAC: dict[str, float] = {
    "gemm": 0.706,  # 699 / 989.5 TFLOP/s: 167 bf16 GEMMs of Llama-7B layers, 4K-128K tokens,
    # and 55 timed inside training steps of 16K-256K tokens
    "attention_fwd": 0.631,  # 624 / 989.5: default SDPA backend (cuDNN), causal, head dim 128
    "attention_bwd": 0.546,  # 540 / 989.5: the same, backward
}
# Achieved / datasheet HBM bandwidth (read + write bytes counted).
DEFAULT_BANDWIDTH_EFFICIENCY_FRAC: dict[str, float] = {
    "memory": 0.900,  # 4.32 / 4.8 TB/s: the H200 HBM copy; fused norms reach 2.3-3.5 TB/s
    "hbm_copy": 0.900,  # 4.32 / 4.8 TB/s (device copies 64 MiB-4 GiB, read + write bytes)
}


def peak_flops_per_s(node: NodeSpec, dtype: str) -> float:
    """Datasheet dense peak of one GPU of ``node`` in ``dtype``: the denominator of MFU."""
    peaks = node.gpu.peak_flops_per_s
    if dtype not in peaks:
        raise UserInputError(
            f"dtype: {node.gpu.name} has no {dtype!r} peak (has {', '.join(sorted(peaks))})"
        )
    return peaks[dtype]


def mfu_frac(
    *, model_flops: float, step_time_s: float, node: NodeSpec, dtype: str, num_gpus: int = 1
) -> float:
    """Model FLOPs utilization: model FLOPs per second over ``num_gpus`` datasheet peaks.

    A step of no time (an empty workload) has an MFU of 0.
    """
    if step_time_s <= 0:
        return 0.0
    return model_flops / step_time_s / (num_gpus * peak_flops_per_s(node, dtype))


def kernel_fit(op_class: str, *, dtype: str, node: NodeSpec) -> OpClassFit:
    """Alpha-beta parameters of ``op_class`` on ``node``'s GPU in ``dtype`` (profile or default).

    ``op_class`` is a class (``gemm``, ``attention_fwd``, ``attention_bwd``, ``memory``,
    ``hbm_copy``) or a measured variant ``class.variant`` (``attention_fwd.flash``,
    ``memory.rmsnorm.hf_eager.fwd``); a variant the profile lacks falls back to coarser keys,
    memory classes then to ``hbm_copy``, then to the datasheet default. Compute classes return a
    FLOP-rate fit; memory classes a byte-rate fit.
    """
    base = op_class.split(".")[0]
    if base not in KERNEL_CLASSES:
        raise UserInputError(
            f"op_class: unknown {op_class!r} (use one of {', '.join(KERNEL_CLASSES)}, "
            "optionally with a .variant)"
        )
    gpu, profile = node.gpu, node.profile
    if base in FLOP_CLASSES:
        peak = peak_flops_per_s(node, dtype)
        fit = profile.find_fit(op_class) if profile is not None else None
        if fit is not None:
            assert fit.flops_per_s is not None
            scale = peak / peak_flops_per_s(node, fit.dtype or "bf16")
            return fit.scaled(scale).model_copy(update={"dtype": dtype})
        return OpClassFit(
            flops_per_s=peak * DEFAULT_FLOPS_EFFICIENCY_FRAC[base],
            latency_s=gpu.kernel_launch_overhead_s,
            dtype=dtype,
            num_points=1,
            max_abs_rel_error=0.0,
        )
    if profile is not None:
        # norms and elementwise fall back to the HBM copy fit if unmeasured
        fit = profile.find_fit(op_class) or profile.find_fit("hbm_copy")
        if fit is not None:
            return fit
    return OpClassFit(
        bandwidth_bytes_per_s=gpu.hbm_bandwidth_bytes_per_s
        * DEFAULT_BANDWIDTH_EFFICIENCY_FRAC[base],
        latency_s=gpu.kernel_launch_overhead_s,
        num_points=1,
        max_abs_rel_error=0.0,
    )


def compute_time_s(
    *, flops: float, hbm_bytes: float, op_class: str, dtype: str, node: NodeSpec
) -> float:
    """Predicted time of one kernel: max(compute side, memory side), latency included once.

    ``flops``: arithmetic of the kernel; ``hbm_bytes``: bytes read plus written in HBM.
    No kernel takes less than the GPU's ``kernel_launch_overhead_s`` (fits of large kernels
    can have a zero latency, which must not make tiny kernels free).
    """
    memo = _node_memo(node)
    key = (flops, hbm_bytes, op_class, dtype)
    hit = memo.get(key)
    if hit is not None:
        return hit
    t = _compute_time_s(flops=flops, hbm_bytes=hbm_bytes, op_class=op_class, dtype=dtype, node=node)
    if len(memo) >= _MEMO_MAX_ENTRIES:
        memo.clear()
    memo[key] = t
    return t


_MEMO_MAX_NODES = 8
_MEMO_MAX_ENTRIES = 1 << 18
_MEMO: dict[int, tuple[NodeSpec, dict]] = {}
"""Kernel times already computed, per node object (kept alive here, so its id is not reused):
a node is frozen and the time a pure function of it and the kernel, so a search over many
step shapes on a few nodes prices each distinct kernel once. Bounded: 8 nodes, 2^18 kernels
each."""


def _node_memo(node: NodeSpec) -> dict:
    hit = _MEMO.get(id(node))
    if hit is None or hit[0] is not node:
        if len(_MEMO) >= _MEMO_MAX_NODES:
            _MEMO.pop(next(iter(_MEMO)))
        hit = _MEMO[id(node)] = (node, {})
    return hit[1]


def _compute_time_s(
    *, flops: float, hbm_bytes: float, op_class: str, dtype: str, node: NodeSpec
) -> float:
    if flops < 0 or hbm_bytes < 0:
        raise UserInputError(f"flops/hbm_bytes: must be >= 0, got {flops}, {hbm_bytes}")
    if op_class.split(".")[0] in FLOP_CLASSES:
        compute = kernel_fit(op_class, dtype=dtype, node=node)
        memory = kernel_fit("memory", dtype=dtype, node=node)
        t = max(compute.time_s(flops), memory.time_s(hbm_bytes))
        if op_class == "gemm":  # the short-kernel side (a profile without it: the same as compute)
            t = max(t, kernel_fit(GEMM_BURST_CLASS, dtype=dtype, node=node).time_s(flops))
    else:
        memory = kernel_fit(op_class, dtype=dtype, node=node)
        cuda_core_s = flops / peak_flops_per_s(node, "fp32")
        t = max(memory.time_s(hbm_bytes), memory.latency_s + cuda_core_s)
    return max(t, node.gpu.kernel_launch_overhead_s)
