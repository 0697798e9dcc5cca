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
One layer's KIVI cache (``kivi_layout``, what the inference replay, planner and executor size
their buffers and copies by): per sequence, the first ``floor(T / G) * G`` tokens are quantized,
keys per channel (groups of G tokens: one scale and one zero point per channel, KV head and
group), values per token (groups of min(G, d) channels: one scale and zero point per token,
KV head and group), asymmetric min/max; the newest ``T mod G`` tokens, which do not fill a key
group, stay in the model dtype (KIVI's full-precision residual window), K and V alike. G
defaults to d.
Ignores: outlier side tables (KVQuant's dense-and-sparse split), non-uniform codebooks.
Source: Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024;
Hooper et al., "KVQuant: Towards 10 Million Context Length LLM Inference with KV Cache
Quantization", NeurIPS 2024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def _kv_convert_cost(
    *, quantize: bool, num_tokens: int, num_kv_heads: int, head_dim: int, kv_dtype: str,
    dtype: str, scale_axis: str, group_size: int | None, scale_dtype: str, zero_point: bool,
) -> KernelCost:
    """One memory-bound kernel between T KVH d elements of ``dtype`` and their packed form.

    Quantize reads the model dtype and writes the packed bytes (`kv_quantized_bytes`),
    dequantize the reverse; FLOPs per element are in the module docstring.
    """
    stored_bytes = kv_quantized_bytes(
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
    model_bytes = tensor_bytes(n, dtype)
    if quantize:
        flops_per_element = 5.0 if zero_point else 4.0
    else:
        flops_per_element = 2.0 if zero_point else 1.0
    return KernelCost(
        name="kv_quantize" if quantize else "kv_dequantize",
        op_class="memory",
        flops=flops_per_element * n,
        hbm_read_bytes=model_bytes if quantize else stored_bytes,
        hbm_write_bytes=stored_bytes if quantize else model_bytes,
        dtype=dtype,
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
    return _kv_convert_cost(
        quantize=True, num_tokens=num_tokens, num_kv_heads=num_kv_heads, head_dim=head_dim,
        kv_dtype=kv_dtype, dtype=dtype, scale_axis=scale_axis, group_size=group_size,
        scale_dtype=scale_dtype, zero_point=zero_point,
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
    return _kv_convert_cost(
        quantize=False, num_tokens=num_tokens, num_kv_heads=num_kv_heads, head_dim=head_dim,
        kv_dtype=kv_dtype, dtype=dtype, scale_axis=scale_axis, group_size=group_size,
        scale_dtype=scale_dtype, zero_point=zero_point,
    )


# ---- one layer's KIVI cache ------------------------------------------------------------------

KIVI_KV_DTYPES: tuple[str, ...] = ("int8", "int4")
"""Quantized formats of the KIVI layout (fp8 caches are per-tensor: not this layout)."""
KIVI_SCALE_DTYPE = "bf16"
"""dtype of KIVI's scales and zero points (the model dtype: no extra cast when dequantizing)."""


def kivi_group_size(*, head_dim: int, group_size: int | None) -> int:
    """Tokens per key group (and channels per value group, capped at ``head_dim``): ``group_size``,
    default ``head_dim``."""
    require_positive("head_dim", head_dim)
    if group_size is not None:
        require_positive("group_size", group_size)
    return group_size or head_dim


@dataclass(frozen=True)
class KiviLayout:
    """Tokens and bytes of one layer's KIVI K and V cache holding ``num_tokens`` tokens of each
    of ``batch`` sequences (module docstring)."""

    group_size: int  # tokens per key group
    value_group_size: int  # channels per value group: min(group_size, head_dim)
    num_quantized_tokens: int  # per sequence: whole key groups
    num_residual_tokens: int  # per sequence: the newest tokens, in the model dtype
    quantized_bytes: int  # packed K and V of the quantized tokens + their scales and zero points
    residual_bytes: int  # K and V of the residual tokens in the model dtype
    dequantized_bytes: int  # K and V of all ``num_tokens`` in the model dtype (what attention reads)
    kv_dtype: str = "int8"  # the quantized format (int8, int4)

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.residual_bytes


def kivi_layout(
    *,
    num_tokens: int,
    batch: int,
    num_kv_heads: int,
    head_dim: int,
    kv_dtype: str,
    group_size: int | None = None,
    dtype: str = "bf16",
) -> KiviLayout:
    """`KiviLayout` of one layer: keys ``kv_quantized_bytes(scale_axis="channel")`` and values
    ``kv_quantized_bytes(scale_axis="token")`` of the quantized tokens of each sequence, with
    zero points, scales in ``KIVI_SCALE_DTYPE``."""
    if kv_dtype not in KIVI_KV_DTYPES:
        raise UserInputError(f"kv_dtype: {kv_dtype!r} is not one of {KIVI_KV_DTYPES} (KIVI layout)")
    for field, value in (("batch", batch), ("num_kv_heads", num_kv_heads)):
        require_positive(field, value)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
        raise UserInputError(f"num_tokens: must be a non-negative integer, got {num_tokens!r}")
    g = kivi_group_size(head_dim=head_dim, group_size=group_size)
    gv = min(g, head_dim)
    nq = num_tokens // g * g
    quantized = 0
    if nq:
        kw = dict(num_tokens=nq, num_kv_heads=num_kv_heads, head_dim=head_dim, kv_dtype=kv_dtype,
                  scale_dtype=KIVI_SCALE_DTYPE, zero_point=True)
        quantized = batch * (kv_quantized_bytes(scale_axis="channel", group_size=g, **kw)  # type: ignore[arg-type]
                             + kv_quantized_bytes(scale_axis="token", group_size=gv, **kw))  # type: ignore[arg-type]
    per_token = 2 * batch * num_kv_heads * head_dim  # K and V elements of one token of every sequence
    return KiviLayout(
        group_size=g,
        value_group_size=gv,
        num_quantized_tokens=nq,
        num_residual_tokens=num_tokens - nq,
        quantized_bytes=quantized,
        residual_bytes=tensor_bytes(per_token * (num_tokens - nq), dtype),
        dequantized_bytes=tensor_bytes(per_token * num_tokens, dtype),
        kv_dtype=kv_dtype,
    )


def kivi_dequantize_cost(layout: KiviLayout, *, dtype: str = "bf16") -> KernelCost:
    """One layer's cache into a buffer of the model dtype before attention: read the quantized
    K and V with their scales and the residual window, write all of them in ``dtype``. Timed as
    ``kivi_dequantize_fit_class(layout)``: the executor's measured kernel (unpacking and scaling
    keep it well below the copy rate; `hwmodels.calibrate` fits it from ``kv-quant-check-*``
    files), the memory rate where a profile lacks it."""
    n_q = (layout.dequantized_bytes - layout.residual_bytes) // tensor_bytes(1, dtype)
    return KernelCost(
        name="kv_dequantize",
        op_class="memory",
        flops=2.0 * n_q,  # multiply by the scale, add the zero point
        hbm_read_bytes=layout.quantized_bytes + layout.residual_bytes,
        hbm_write_bytes=layout.dequantized_bytes,
        dtype=dtype,
    )


def kivi_dequantize_fit_class(layout: KiviLayout) -> str:
    """The profile key of the dequantize kernel of ``layout``'s format (``memory.kv_dequantize.int8``)."""
    return f"memory.kv_dequantize.{layout.kv_dtype}"


def kivi_quantize_cost(layout: KiviLayout, *, dtype: str = "bf16") -> KernelCost:
    """Quantize the whole groups of ``layout`` (e.g. a prompt's): read them in ``dtype``, write
    the packed values, scales and zero points."""
    read = layout.dequantized_bytes - layout.residual_bytes
    return KernelCost(
        name="kv_quantize",
        op_class="memory",
        flops=5.0 * read / tensor_bytes(1, dtype),  # min, max, scale, round, clamp
        hbm_read_bytes=read,
        hbm_write_bytes=layout.quantized_bytes,
        dtype=dtype,
    )
