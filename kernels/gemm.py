"""GEMM and Linear-layer costs.

Models: C[m, n] = A[m, k] @ B[k, n] (optionally ``batch`` independent products) as one kernel:
2*m*n*k FLOPs per product; HBM traffic is the compulsory minimum, each operand read once and the
output written once. A Linear layer y = x W^T on T tokens is three GEMMs: forward
[T, in] @ [in, out], input grad [T, out] @ [out, in], weight grad [out, T] @ [T, in].
Assumes: tiles are reused through SRAM and L2 so that each operand crosses HBM once (true for the
tall-skinny Linear shapes of LLMs on current GPUs); the bias add and the bias-grad reduction are
fused into the GEMM epilogue (they add bytes, not counted FLOPs), as cuBLASLt does.
Ignores: split-K partial-sum traffic, operand re-reads when A and B both exceed L2, padding to tile
multiples, and the FLOPs of the bias add (FlopCounterMode does not count them either).
Source: torch.utils.flop_counter (mm/addmm/bmm: 2*m*n*k); Narayanan et al., "Efficient Large-Scale
Language Model Training on GPU Clusters Using Megatron-LM", SC 2021 (backward = 2x forward GEMMs).
"""

from __future__ import annotations

from typing import NamedTuple

from kernels.cost import KernelCost, require_positive, tensor_bytes


def gemm_cost(
    *,
    m: int,
    n: int,
    k: int,
    dtype: str = "bf16",
    batch: int = 1,
    out_dtype: str | None = None,
    name: str = "gemm",
) -> KernelCost:
    """One (batched) GEMM: ``batch`` products of [m, k] @ [k, n] -> [m, n] in ``out_dtype``.

    FLOPs = 2*batch*m*n*k; reads batch*(m*k + k*n) elements of ``dtype``; writes batch*m*n
    elements of ``out_dtype`` (default ``dtype``).
    """
    for field, value in (("m", m), ("n", n), ("k", k), ("batch", batch)):
        require_positive(field, value)
    out_dtype = out_dtype or dtype
    return KernelCost(
        name=name,
        op_class="gemm",
        flops=2.0 * batch * m * n * k,
        hbm_read_bytes=batch * (tensor_bytes(m * k, dtype) + tensor_bytes(k * n, dtype)),
        hbm_write_bytes=batch * tensor_bytes(m * n, out_dtype, field="out_dtype"),
        dtype=dtype,
    )


def linear_fwd_cost(
    *,
    num_tokens: int,
    in_features: int,
    out_features: int,
    dtype: str = "bf16",
    bias: bool = False,
) -> KernelCost:
    """Forward of ``nn.Linear(in_features, out_features)`` on ``num_tokens`` rows.

    One GEMM [T, in] @ [in, out]; a bias adds a read of ``out_features`` elements.
    """
    cost = gemm_cost(m=num_tokens, n=out_features, k=in_features, dtype=dtype, name="linear_fwd")
    if not bias:
        return cost
    return KernelCost(
        name=cost.name,
        op_class=cost.op_class,
        flops=cost.flops,
        hbm_read_bytes=cost.hbm_read_bytes + tensor_bytes(out_features, dtype),
        hbm_write_bytes=cost.hbm_write_bytes,
        dtype=dtype,
    )


class LinearBwdCosts(NamedTuple):
    """The two GEMMs of a Linear layer's backward."""

    input_grad: KernelCost | None
    """dX[T, in] = dY[T, out] @ W[out, in]; None when the input needs no gradient."""
    weight_grad: KernelCost
    """dW[out, in] = dY^T[out, T] @ X[T, in] (+ db = sum_T dY, fused)."""


def linear_bwd_costs(
    *,
    num_tokens: int,
    in_features: int,
    out_features: int,
    dtype: str = "bf16",
    bias: bool = False,
    grad_dtype: str | None = None,
    accumulate_grad: bool = False,
    input_requires_grad: bool = True,
) -> LinearBwdCosts:
    """Backward of ``nn.Linear``: the input-grad and weight-grad GEMMs.

    ``grad_dtype`` is the dtype of the weight gradient (default ``dtype``; fp32 where gradients
    are accumulated in fp32). ``accumulate_grad`` adds a read of the existing gradient
    (gradient accumulation: dW += ...). ``input_requires_grad=False`` (the first layer of a network
    whose input is data) drops the input-grad GEMM: the tuple's ``input_grad`` is then None.
    """
    grad_dtype = grad_dtype or dtype
    weight_grad = gemm_cost(
        m=out_features,
        n=in_features,
        k=num_tokens,
        dtype=dtype,
        out_dtype=grad_dtype,
        name="linear_weight_grad",
    )
    extra_read = 0
    extra_write = 0
    if accumulate_grad:
        extra_read += tensor_bytes(out_features * in_features, grad_dtype)
    if bias:
        # db = sum over tokens of dY: dY is already read by the GEMM; db is written (and read
        # when accumulating).
        extra_write += tensor_bytes(out_features, grad_dtype)
        if accumulate_grad:
            extra_read += tensor_bytes(out_features, grad_dtype)
    if extra_read or extra_write:
        weight_grad = KernelCost(
            name=weight_grad.name,
            op_class="gemm",
            flops=weight_grad.flops,
            hbm_read_bytes=weight_grad.hbm_read_bytes + extra_read,
            hbm_write_bytes=weight_grad.hbm_write_bytes + extra_write,
            dtype=dtype,
        )
    input_grad = (
        gemm_cost(
            m=num_tokens, n=in_features, k=out_features, dtype=dtype, name="linear_input_grad"
        )
        if input_requires_grad
        else None
    )
    return LinearBwdCosts(input_grad=input_grad, weight_grad=weight_grad)
