"""Memory-bound layers: generic elementwise, RMSNorm, LayerNorm, rotary, SiLU*mul, GELU, embedding.

Shape legend: T tokens (batch x sequence), H hidden size, I intermediate size, V vocabulary,
Hq / Hkv query / key-value heads, d head dim.

Models: each layer as one fused kernel forward and one backward, every input read once and every
output written once (the compulsory traffic), plus the small side tensors the fused kernels keep
(per-row fp32 statistics of the norms, the norm weights and their gradients). Two exceptions
follow PyTorch's CUDA kernels, which the executor runs: the norm backward is two kernels
(grad-input, then the grad-weight column reduction), each reading dY and X; the embedding
backward sums each token's rows into an fp32 buffer of [T, H] before adding them to the weight
gradient.
Assumes: fused kernels (Apex / Transformer Engine / Liger style): a norm or activation reads its
input once. Hugging Face's eager RMSNorm, rotate_half and SiLU run several kernels with fp32 or
copied intermediates; their traffic is a multiple of these figures (the microbenchmarks in
validate/measurements measure the eager ops). FLOPs per element are approximate counts of the
arithmetic (an exp or rsqrt counts 1): these kernels are memory-bound and their FLOPs never set
their time, and FlopCounterMode / MFU conventions do not count them at all.
Ignores: the cross-block reduction of the norm weight gradients (per-block partial sums, a few
KiB), index sorting in the embedding backward.
Source: Zhang and Sennrich, "Root Mean Square Layer Normalization", 2019; Ba et al., "Layer
Normalization", 2016; Su et al., "RoFormer", 2021; Shazeer, "GLU Variants Improve Transformer",
2020; PyTorch aten/src/ATen/native/cuda/layer_norm_kernel.cu (LayerNorm and fused RMSNorm
backward: grad-input kernel + GammaBeta backward kernel) and EmbeddingBackwardKernel.cu
(zero-filled full-size gradient, sorted indices, fp32 ``grad_weight_per_segment`` partial sums).
"""

from __future__ import annotations

from hwmodels.units import UserInputError
from kernels.cost import FwdBwd, KernelCost, require_positive, tensor_bytes

FP32_BYTES = 4
"""Per-row statistics (mean, 1/rms) are kept in fp32."""


def elementwise_cost(
    *,
    num_elements: int,
    dtype: str = "bf16",
    num_inputs: int = 1,
    num_outputs: int = 1,
    flops_per_element: float = 1.0,
    out_dtype: str | None = None,
    extra_read_bytes: int = 0,
    extra_write_bytes: int = 0,
    name: str = "elementwise",
) -> KernelCost:
    """Generic elementwise kernel: reads ``num_inputs`` x n elements, writes ``num_outputs`` x n.

    Outputs are in ``out_dtype`` (default ``dtype``); ``extra_*_bytes`` add side tensors.
    """
    require_positive("num_elements", num_elements)
    if num_inputs < 0 or num_outputs < 0 or flops_per_element < 0:
        raise ValueError("elementwise_cost: counts and flops_per_element must be non-negative")
    return KernelCost(
        name=name,
        op_class="memory",
        flops=float(flops_per_element) * num_elements,
        hbm_read_bytes=num_inputs * tensor_bytes(num_elements, dtype) + extra_read_bytes,
        hbm_write_bytes=num_outputs * tensor_bytes(num_elements, out_dtype or dtype)
        + extra_write_bytes,
        dtype=dtype,
    )


def _norm_cost(
    *, name: str, num_tokens: int, hidden_size: int, dtype: str, grad_dtype: str | None,
    num_params: int, num_stats_per_row: int, fwd_flops_per_element: float,
    bwd_flops_per_element: float,
) -> FwdBwd:
    """A norm over [T, H] with ``num_params`` H-vectors (w, or w and b) and
    ``num_stats_per_row`` fp32 statistics per row kept for the backward.

    fwd: read x and the params; write y and the statistics.
    bwd: grad-input and grad-weight kernels each read dy and x, plus w and the statistics (b is
    not read); write dx and one gradient per param in ``grad_dtype`` (default ``dtype``).
    """
    require_positive("num_tokens", num_tokens)
    require_positive("hidden_size", hidden_size)
    n = num_tokens * hidden_size
    w_bytes = tensor_bytes(hidden_size, dtype)
    stats_bytes = num_stats_per_row * FP32_BYTES * num_tokens
    fwd = elementwise_cost(
        num_elements=n,
        dtype=dtype,
        flops_per_element=fwd_flops_per_element,
        extra_read_bytes=num_params * w_bytes,
        extra_write_bytes=stats_bytes,
        name=f"{name}_fwd",
    )
    bwd = elementwise_cost(
        num_elements=n,
        dtype=dtype,
        num_inputs=4,  # dy, x by the grad-input kernel and again by the grad-weight kernel
        flops_per_element=bwd_flops_per_element,
        extra_read_bytes=w_bytes + stats_bytes,
        extra_write_bytes=num_params * tensor_bytes(hidden_size, grad_dtype or dtype),
        name=f"{name}_bwd",
    )
    return FwdBwd(fwd, bwd)


def rmsnorm_cost(
    *, num_tokens: int, hidden_size: int, dtype: str = "bf16", grad_dtype: str | None = None
) -> FwdBwd:
    """RMSNorm y = x / rms(x) * w over [T, H].

    fwd: read x, w; write y and fp32 1/rms per row (4 FLOPs/element: square, sum, scale, weight).
    bwd: grad-input and grad-weight kernels each read dy and x (and w, 1/rms); write dx and dw in
    ``grad_dtype`` (8 FLOPs/element).
    """
    return _norm_cost(
        name="rmsnorm", num_tokens=num_tokens, hidden_size=hidden_size, dtype=dtype,
        grad_dtype=grad_dtype, num_params=1, num_stats_per_row=1, fwd_flops_per_element=4.0,
        bwd_flops_per_element=8.0,
    )


def layernorm_cost(
    *,
    num_tokens: int,
    hidden_size: int,
    dtype: str = "bf16",
    bias: bool = True,
    grad_dtype: str | None = None,
) -> FwdBwd:
    """LayerNorm y = (x - mean) / std * w + b over [T, H].

    fwd: read x, w (, b); write y, fp32 mean and 1/std per row (8 FLOPs/element).
    bwd: grad-input and grad-weight kernels each read dy and x (and w, mean, 1/std); write dx,
    dw (, db) (11 FLOPs/element).
    """
    return _norm_cost(
        name="layernorm", num_tokens=num_tokens, hidden_size=hidden_size, dtype=dtype,
        grad_dtype=grad_dtype, num_params=2 if bias else 1, num_stats_per_row=2,
        fwd_flops_per_element=8.0, bwd_flops_per_element=11.0,
    )


def rotary_cost(
    *,
    num_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: str = "bf16",
    rotary_dim: int | None = None,
) -> FwdBwd:
    """Rotary position embedding applied to q [T, Hq, d] and k [T, Hkv, d] in one kernel.

    Reads q, k and the cos / sin tables ([T, rotary_dim] each, in ``dtype`` as Hugging Face
    builds them); writes rotated q, k. 3 FLOPs per rotated element (x cos + rot(x) sin).
    The backward is the inverse rotation of dq, dk: the same traffic and FLOPs.
    """
    for field, value in (
        ("num_tokens", num_tokens),
        ("num_heads", num_heads),
        ("num_kv_heads", num_kv_heads),
        ("head_dim", head_dim),
    ):
        require_positive(field, value)
    rdim = head_dim if rotary_dim is None else require_positive("rotary_dim", rotary_dim)
    n = num_tokens * (num_heads + num_kv_heads) * head_dim
    rotated = num_tokens * (num_heads + num_kv_heads) * rdim
    tables = 2 * tensor_bytes(num_tokens * rdim, dtype)

    def one(name: str) -> KernelCost:
        return elementwise_cost(
            num_elements=n,
            dtype=dtype,
            flops_per_element=3.0 * rotated / n,
            extra_read_bytes=tables,
            name=name,
        )

    return FwdBwd(one("rotary_fwd"), one("rotary_bwd"))


def silu_mul_cost(*, num_tokens: int, intermediate_size: int, dtype: str = "bf16") -> FwdBwd:
    """SwiGLU activation silu(gate) * up on [T, I] (the MLP's GEMMs are separate Linear costs).

    fwd: read gate, up; write h (5 FLOPs/element). bwd: read dh, gate, up; write dgate, dup
    (silu recomputed; 10 FLOPs/element).
    """
    require_positive("num_tokens", num_tokens)
    require_positive("intermediate_size", intermediate_size)
    n = num_tokens * intermediate_size
    fwd = elementwise_cost(
        num_elements=n, dtype=dtype, num_inputs=2, flops_per_element=5.0, name="silu_mul_fwd"
    )
    bwd = elementwise_cost(
        num_elements=n,
        dtype=dtype,
        num_inputs=3,
        num_outputs=2,
        flops_per_element=10.0,
        name="silu_mul_bwd",
    )
    return FwdBwd(fwd, bwd)


swiglu_cost = silu_mul_cost
"""SwiGLU's elementwise part; the same function as `silu_mul_cost`."""


def gelu_cost(*, num_elements: int, dtype: str = "bf16", approximate: str = "tanh") -> FwdBwd:
    """GELU on n elements: read x, write y; backward reads dy, x and writes dx.

    FLOPs/element: "tanh" approximation 9 forward / 14 backward; exact "none" (erf) 5 / 9.
    """
    per_element = {"tanh": (9.0, 14.0), "none": (5.0, 9.0)}
    if approximate not in per_element:
        raise UserInputError(f"approximate: {approximate!r} is not 'tanh' or 'none'")
    fwd_flops, bwd_flops = per_element[approximate]
    fwd = elementwise_cost(
        num_elements=num_elements, dtype=dtype, flops_per_element=fwd_flops, name="gelu_fwd"
    )
    bwd = elementwise_cost(
        num_elements=num_elements,
        dtype=dtype,
        num_inputs=2,
        flops_per_element=bwd_flops,
        name="gelu_bwd",
    )
    return FwdBwd(fwd, bwd)


def embedding_cost(
    *,
    num_tokens: int,
    vocab_size: int,
    hidden_size: int,
    dtype: str = "bf16",
    grad_dtype: str | None = None,
    index_dtype: str = "int64",
) -> FwdBwd:
    """Token embedding [V, H] looked up by T token ids.

    fwd (gather): read T ids and T rows, write [T, H].
    bwd (scatter-add into a full-size gradient): write the zero-filled [V, H] gradient, read the
    ids and dY [T, H], sum the rows of each distinct token into fp32 partial sums (write and read
    [T, H] fp32), read-modify-write the T touched gradient rows (1 FLOP/element).
    """
    for field, value in (
        ("num_tokens", num_tokens),
        ("vocab_size", vocab_size),
        ("hidden_size", hidden_size),
    ):
        require_positive(field, value)
    grad_dtype = grad_dtype or dtype
    ids_bytes = tensor_bytes(num_tokens, index_dtype, field="index_dtype")
    rows = num_tokens * hidden_size
    partial_bytes = FP32_BYTES * rows
    fwd = KernelCost(
        name="embedding_fwd",
        op_class="memory",
        flops=0.0,
        hbm_read_bytes=ids_bytes + tensor_bytes(rows, dtype),
        hbm_write_bytes=tensor_bytes(rows, dtype),
        dtype=dtype,
    )
    bwd = KernelCost(
        name="embedding_bwd",
        op_class="memory",
        flops=float(rows),
        hbm_read_bytes=ids_bytes
        + tensor_bytes(rows, dtype)
        + partial_bytes
        + tensor_bytes(rows, grad_dtype),
        hbm_write_bytes=tensor_bytes(vocab_size * hidden_size, grad_dtype)
        + partial_bytes
        + tensor_bytes(rows, grad_dtype),
        dtype=dtype,
    )
    return FwdBwd(fwd, bwd)


def minimal_traffic_bytes(
    op: str,
    *,
    num_tokens: int,
    width: int,
    dtype: str = "bf16",
    head_dim: int | None = None,
) -> tuple[int, int]:
    """(forward, forward + backward) minimal HBM bytes of an eager op or op sequence.

    This is the convention in which ``kernels/microbench.py`` records memory-bound ops and in
    which hwmodels fits their achieved rates (``memory.<op>.<impl>.fwd|fwdbwd``): every input read
    once and every output written once, whatever the eager sequence really moves. Time one with
    ``compute_time_s(flops=0, hbm_bytes=..., op_class="memory.<op>.<impl>.<pass>")``.

    op: "rmsnorm" (width = hidden; reads x and w, writes y; backward reads dy and x, writes dx
    and dw); "silu_mul" (width = intermediate; reads gate and up, writes h; backward reads dh,
    gate and up, writes dgate and dup); "rotary" (q and k together: width = (heads + kv_heads)
    * head_dim, plus the cos and sin rows of ``head_dim`` read once); "cross_entropy" (width = vocab: reads the logits and
    int64 labels; backward writes dlogits); "embedding" (width = hidden: reads ids and rows,
    writes y; backward reads dy and ids, writes the whole table's gradient: pass the table rows
    as ``head_dim``).
    """
    require_positive("num_tokens", num_tokens)
    require_positive("width", width)
    x = tensor_bytes(num_tokens * width, dtype)
    ids = tensor_bytes(num_tokens, "int64")
    if op == "rmsnorm":
        w = tensor_bytes(width, dtype)
        return 2 * x + w, 5 * x + 2 * w
    if op == "silu_mul":
        return 3 * x, 8 * x
    if op == "rotary":
        if head_dim is None:
            raise ValueError("rotary: head_dim is required")
        tables = 2 * tensor_bytes(num_tokens * head_dim, dtype)
        return 2 * x + tables, 4 * x + tables
    if op == "cross_entropy":
        return x + ids, 2 * x + ids
    if op == "embedding":
        if head_dim is None:
            raise ValueError("embedding: pass the vocabulary size as head_dim")
        table = tensor_bytes(head_dim * width, dtype)
        return 2 * x + ids, 2 * x + ids + x + ids + table
    raise ValueError(f"minimal_traffic_bytes: unknown op {op!r}")


EMBEDDING_BACKWARD_DIRECT_MAX_INDICES = 3072
"""aten/src/ATen/native/cuda/Embedding.cu: up to this many indices the dense backward runs a
direct kernel; above it, sort-and-segment with fp32 partial sums."""


def embedding_backward_workspace_bytes(*, num_indices: int, hidden_size: int) -> int:
    """Transient bytes of the CUDA embedding backward besides the weight gradient.

    The sort path keeps fp32 per-index partial sums [num_indices, hidden]
    (EmbeddingBackwardKernel.cu ``grad_weight_per_segment``; on the H200, 64 of the 70.6 MiB
    transient at 4096 x 4096); the direct path (<= 3072 indices) none (measured 0 B at 2048).
    """
    require_positive("num_indices", num_indices)
    require_positive("hidden_size", hidden_size)
    if num_indices <= EMBEDDING_BACKWARD_DIRECT_MAX_INDICES:
        return 0
    return num_indices * hidden_size * FP32_BYTES
