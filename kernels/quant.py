"""KV-cache quantization: stored bytes and the cost of the quantize / dequantize kernels.

Shape legend: T tokens (all sequences of a batch together), KVH key/value heads, d head dim,
G group size (elements that share one scale).

Models: one K or V tensor of T x KVH x d elements quantized to ``kv_dtype`` (int8, int4 packed two
per byte, or fp8) with one scale (and optionally one zero point) per group:
- "token": groups run along the channels of one token and head (KIVI's value cache; KVQuant's
  per-token scheme): T * KVH * ceil(d / G) scales, G defaults to d;
- "channel": groups run along the tokens of one channel (KIVI's key cache, which groups G
  tokens per channel): KVH * d * ceil(T / G) scales, G defaults to T;
- "tensor": one scale for the whole tensor (fp8 caches in vLLM / TensorRT-LLM).
Quantize reads the tensor once (absmax / min-max and the rounding fused in one kernel) and writes
packed values plus scales; dequantize reads those and writes the model dtype.
Assumes: scales and zero points are stored in ``scale_dtype`` (fp16 by default, as in KIVI);
FLOPs per element: quantize 4 (absmax, scale, round, clamp; +1 for the min of an asymmetric
scheme), dequantize 1 (multiply; +1 for the zero point).
Ignores: outlier side tables (KVQuant's dense-and-sparse split), the full-precision residual
window KIVI keeps for the newest tokens (model it as unquantized tokens), non-uniform codebooks.
Source: Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024;
Hooper et al., "KVQuant: Towards 10 Million Context Length LLM Inference with KV Cache
Quantization", NeurIPS 2024.
"""

from __future__ import annotations

import math

from hwmodels.units import UserInputError
from kernels.cost import KernelCost, require_positive, tensor_bytes

QUANTIZED_KV_DTYPES: tuple[str, ...] = ("int8", "int4", "fp8")
SCALE_AXES: tuple[str, ...] = ("token", "channel", "tensor")


def _check(kv_dtype: str, scale_axis: str) -> None:
    if kv_dtype not in QUANTIZED_KV_DTYPES:
        raise UserInputError(f"kv_dtype: {kv_dtype!r} is not one of {QUANTIZED_KV_DTYPES}")
    if scale_axis not in SCALE_AXES:
        raise UserInputError(f"scale_axis: {scale_axis!r} is not one of {SCALE_AXES}")


def num_scale_groups(
    *, num_tokens: int, num_kv_heads: int, head_dim: int, scale_axis: str, group_size: int | None
) -> int:
    """Number of scale groups of one T x KVH x d tensor (module docstring)."""
    if group_size is not None:
        require_positive("group_size", group_size)
    if scale_axis == "token":
        return num_tokens * num_kv_heads * math.ceil(head_dim / (group_size or head_dim))
    if scale_axis == "channel":
        return num_kv_heads * head_dim * math.ceil(num_tokens / (group_size or num_tokens))
    if scale_axis == "tensor":
        return 1
    raise UserInputError(f"scale_axis: {scale_axis!r} is not one of {SCALE_AXES}")


def kv_quantized_bytes(
    *,
    num_tokens: int,
    num_kv_heads: int,
    head_dim: int,
    kv_dtype: str,
    scale_axis: str = "token",
    group_size: int | None = None,
    scale_dtype: str = "fp16",
    zero_point: bool = False,
) -> int:
    """Stored bytes of one quantized K or V tensor: packed values + scales (+ zero points)."""
    for field, value in (
        ("num_tokens", num_tokens),
        ("num_kv_heads", num_kv_heads),
        ("head_dim", head_dim),
    ):
        require_positive(field, value)
    _check(kv_dtype, scale_axis)
    groups = num_scale_groups(
        num_tokens=num_tokens,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        scale_axis=scale_axis,
        group_size=group_size,
    )
    values = tensor_bytes(num_tokens * num_kv_heads * head_dim, kv_dtype, field="kv_dtype")
    return values + (2 if zero_point else 1) * groups * tensor_bytes(
        1, scale_dtype, field="scale_dtype"
    )


def kv_quantize_cost(
    *,
    num_tokens: int,
    num_kv_heads: int,
    head_dim: int,
    kv_dtype: str,
    dtype: str = "bf16",
    scale_axis: str = "token",
    group_size: int | None = None,
    scale_dtype: str = "fp16",
    zero_point: bool = False,
) -> KernelCost:
    """Quantize one K or V tensor: read T KVH d elements of ``dtype``, write the packed tensor."""
    stored = kv_quantized_bytes(
        num_tokens=num_tokens,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        kv_dtype=kv_dtype,
        scale_axis=scale_axis,
        group_size=group_size,
        scale_dtype=scale_dtype,
        zero_point=zero_point,
    )
    n = num_tokens * num_kv_heads * head_dim
    return KernelCost(
        name="kv_quantize",
        op_class="memory",
        flops=(5.0 if zero_point else 4.0) * n,
        hbm_read_bytes=tensor_bytes(n, dtype),
        hbm_write_bytes=stored,
        dtype=dtype,
    )


def kv_dequantize_cost(
    *,
    num_tokens: int,
    num_kv_heads: int,
    head_dim: int,
    kv_dtype: str,
    dtype: str = "bf16",
    scale_axis: str = "token",
    group_size: int | None = None,
    scale_dtype: str = "fp16",
    zero_point: bool = False,
) -> KernelCost:
    """Dequantize one K or V tensor: read the packed tensor, write T KVH d elements of ``dtype``."""
    stored = kv_quantized_bytes(
        num_tokens=num_tokens,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        kv_dtype=kv_dtype,
        scale_axis=scale_axis,
        group_size=group_size,
        scale_dtype=scale_dtype,
        zero_point=zero_point,
    )
    n = num_tokens * num_kv_heads * head_dim
    return KernelCost(
        name="kv_dequantize",
        op_class="memory",
        flops=(2.0 if zero_point else 1.0) * n,
        hbm_read_bytes=stored,
        hbm_write_bytes=tensor_bytes(n, dtype),
        dtype=dtype,
    )
