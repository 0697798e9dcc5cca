import pytest

from hwmodels.catalog import get_node
from hwmodels.compute import (
    DEFAULT_BANDWIDTH_EFFICIENCY_FRAC,
    DEFAULT_FLOPS_EFFICIENCY_FRAC,
    compute_time_s,
    kernel_fit,
    mfu_frac,
    peak_flops_per_s,
)
from hwmodels.units import TFLOPS, UserInputError


def test_compute_bound_gemm_by_hand(toy_node):
    # 5 us launch + 1e12 / (100 TFLOP/s * 0.706); memory side 5 us + 1e9 / (1 TB/s * 0.900)
    t = compute_time_s(flops=1e12, hbm_bytes=1e9, op_class="gemm", dtype="bf16", node=toy_node)
    assert t == pytest.approx(5e-6 + 1e12 / (100e12 * 0.706))


def test_memory_bound_kernel_by_hand(toy_node):
    # gemm with tiny FLOPs and many bytes: memory side wins
    t = compute_time_s(flops=1e6, hbm_bytes=1e10, op_class="gemm", dtype="bf16", node=toy_node)
    assert t == pytest.approx(5e-6 + 1e10 / (1e12 * 0.900))
    norm = compute_time_s(flops=1e9, hbm_bytes=1e9, op_class="memory", dtype="bf16", node=toy_node)
    assert norm == pytest.approx(5e-6 + 1e9 / (1e12 * 0.900))


def test_memory_class_flops_bounded_by_fp32_cuda_cores(toy_node):
    t = compute_time_s(flops=1e12, hbm_bytes=1e6, op_class="memory", dtype="bf16", node=toy_node)
    assert t == pytest.approx(5e-6 + 1e12 / 10e12)


def test_dtype_scales_with_datasheet_peak(toy_node):
    bf16 = compute_time_s(flops=1e13, hbm_bytes=0, op_class="gemm", dtype="bf16", node=toy_node)
    fp8 = compute_time_s(flops=1e13, hbm_bytes=0, op_class="gemm", dtype="fp8", node=toy_node)
    assert (fp8 - 5e-6) == pytest.approx((bf16 - 5e-6) / 2)
    with pytest.raises(UserInputError, match="no 'tf32' peak"):
        compute_time_s(flops=1, hbm_bytes=0, op_class="gemm", dtype="tf32", node=toy_node)
    with pytest.raises(UserInputError, match="op_class"):
        compute_time_s(flops=1, hbm_bytes=0, op_class="conv", dtype="bf16", node=toy_node)


def test_profile_fit_is_used_and_scaled_by_dtype():
    node = get_node("1xH200")
    fit = node.profile.fits["gemm"]
    t = compute_time_s(flops=1e13, hbm_bytes=0, op_class="gemm", dtype="bf16", node=node)
    assert t == pytest.approx(fit.latency_s + 1e13 / fit.flops_per_s)
    fp8 = kernel_fit("gemm", dtype="fp8", node=node)
    assert fp8.flops_per_s == pytest.approx(2 * fit.flops_per_s)


def test_default_efficiencies_match_the_committed_h200_profile():
    node = get_node("1xH200")
    peak = peak_flops_per_s(node, "bf16")
    for cls, frac in DEFAULT_FLOPS_EFFICIENCY_FRAC.items():
        assert node.profile.fits[cls].flops_per_s / peak == pytest.approx(frac, rel=0.02), cls
    hbm = node.profile.fits["hbm_copy"].bandwidth_bytes_per_s / node.gpu.hbm_bandwidth_bytes_per_s
    assert hbm == pytest.approx(DEFAULT_BANDWIDTH_EFFICIENCY_FRAC["hbm_copy"], rel=0.02)


def test_mfu_is_against_datasheet_peak():
    node = get_node("8xH200")
    assert peak_flops_per_s(node, "bf16") == 989.5 * TFLOPS
    assert mfu_frac(
        model_flops=989.5e12 * 8 * 0.5, step_time_s=1.0, node=node, dtype="bf16", num_gpus=8
    ) == pytest.approx(0.5)


def test_variants_fall_back_and_tiny_kernels_cost_a_launch():
    node = get_node("1xH200")
    prof = node.profile
    flash = kernel_fit("attention_fwd.flash", dtype="bf16", node=node)
    assert flash.flops_per_s == prof.fits["attention_fwd.flash"].flops_per_s
    assert flash.flops_per_s < 0.7 * prof.fits["attention_fwd"].flops_per_s  # cuDNN is default
    # an unmeasured variant falls back to its class; an unmeasured norm to the HBM copy
    assert (
        kernel_fit("attention_fwd.xformers", dtype="bf16", node=node).flops_per_s
        == prof.fits["attention_fwd"].flops_per_s
    )
    assert (
        kernel_fit("memory.layernorm.fused.fwd", dtype="bf16", node=node) == prof.fits["hbm_copy"]
    )
    rms = compute_time_s(
        flops=0, hbm_bytes=1e9, op_class="memory.rmsnorm.hf_eager.fwd", dtype="bf16", node=node
    )
    fit = prof.fits["memory.rmsnorm.hf_eager.fwd"]
    assert rms == pytest.approx(fit.latency_s + 1e9 / fit.bandwidth_bytes_per_s)
    assert prof.fits["gemm"].latency_s == 0.0
    tiny = compute_time_s(flops=2 * 64**3, hbm_bytes=0, op_class="gemm", dtype="bf16", node=node)
    # the GEMM fit alone would say 1 ns; the floor is the launch (or the memory side's latency)
    assert prof.fits["gemm"].time_s(2 * 64**3) < 1e-8
    assert tiny == max(node.gpu.kernel_launch_overhead_s, prof.fits["hbm_copy"].latency_s)


def test_kernel_classes_are_op_classes_a_profile_can_fit():
    from hwmodels.op_classes import FLOP_CLASSES, KERNEL_CLASSES
    from hwmodels.specs import OP_CLASSES
    from kernels.cost import MATMUL_OP_CLASSES
    from kernels.cost import OP_CLASSES as KERNEL_OP_CLASSES

    assert set(KERNEL_CLASSES) <= set(OP_CLASSES)
    assert MATMUL_OP_CLASSES == set(FLOP_CLASSES)
    assert KERNEL_OP_CLASSES == ("gemm", "attention_fwd", "attention_bwd", "memory", "copy")
