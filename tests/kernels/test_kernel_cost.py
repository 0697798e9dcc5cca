"""KernelCost arithmetic, dtype sizes and argument checks."""

import pytest

from hwmodels.units import UserInputError
from kernels.cost import KernelCost, combine, dtype_bits, require_positive, tensor_bytes


def _k(name, op_class, flops, r, w, dtype="bf16"):
    return KernelCost(
        name=name, op_class=op_class, flops=flops, hbm_read_bytes=r, hbm_write_bytes=w, dtype=dtype
    )


def test_hbm_bytes_and_intensity():
    c = _k("a", "gemm", 100.0, 30, 20)
    assert c.hbm_bytes == 50
    assert c.arithmetic_intensity_flops_per_byte == 2.0


def test_combine_sums_and_takes_class_of_largest_flops():
    a = _k("a", "memory", 10.0, 100, 50)
    b = _k("b", "gemm", 1000.0, 10, 5, dtype="fp8")
    c = combine([a, b], name="fused")
    assert (c.name, c.op_class, c.dtype) == ("fused", "gemm", "fp8")
    assert (c.flops, c.hbm_read_bytes, c.hbm_write_bytes) == (1010.0, 110, 55)
    s = a + b
    assert s.name == "a+b" and s.hbm_bytes == c.hbm_bytes and s.flops == c.flops
    # ties keep the first kernel's class
    assert (
        combine([_k("x", "memory", 0.0, 1, 1), _k("y", "copy", 0.0, 1, 1)], "t").op_class
        == "memory"
    )


def test_combine_empty_and_bad_values_raise():
    with pytest.raises(ValueError):
        combine([], name="nothing")
    with pytest.raises(ValueError, match="op_class"):
        _k("a", "conv", 1.0, 1, 1)
    with pytest.raises(ValueError):
        _k("a", "gemm", -1.0, 1, 1)
    with pytest.raises(UserInputError, match="dtype"):
        _k("a", "gemm", 1.0, 1, 1, dtype="bf17")


def test_dtype_sizes():
    assert dtype_bits("bf16") == 16 and dtype_bits("fp8") == 8
    assert tensor_bytes(10, "fp32") == 40
    assert tensor_bytes(3, "int4") == 2  # two per byte, rounded up
    with pytest.raises(UserInputError, match="kv_dtype: unknown dtype 'int3'"):
        tensor_bytes(4, "int3", field="kv_dtype")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_require_positive_rejects(bad):
    with pytest.raises(UserInputError, match="^head_dim: must be a positive integer"):
        require_positive("head_dim", bad)
