"""LM head + cross-entropy loss, forward and backward, with the tensor sizes that set peak memory.

Shape legend: T tokens (batch x sequence), H hidden size, V vocabulary size.

Models: what a Hugging Face causal LM does with labels: logits = hidden @ W_head^T in the model
dtype ([T, V], returned to the caller), ``logits.float()`` (an fp32 copy, Hugging Face's
ForCausalLMLoss), then ``F.cross_entropy`` = log_softmax (writes fp32 log-probabilities [T, V],
saved for backward) + nll_loss. Backward: nll_loss_backward writes a zero-filled [T, V] gradient
with one non-zero per row; log_softmax_backward reads it and the log-probabilities and writes the
gradient of the fp32 logits [T, V]; the cast back to the model dtype writes [T, V]; then the head's
input-grad and weight-grad GEMMs.
Assumes: rows of V fp32 values do not fit in shared memory, so PyTorch's log_softmax reads its
input three times (row max, sum of exponentials, output) and its backward reads the incoming
gradient twice (row sum, output) and the saved log-probabilities once; labels are int64; the loss
runs in fp32 whenever logits are upcast.
Ignores: the label shift (a [T] copy), ignore_index masking, the final scalar reduction, chunked /
fused linear-cross-entropy kernels (Liger, Cut Cross-Entropy) that never materialize [T, V]: model
those by calling this with ``num_tokens`` = the chunk size.
Source: transformers ``loss_utils.ForCausalLMLoss`` (``logits = logits.float()``); PyTorch
``log_softmax`` / ``nll_loss`` and their backward kernels (aten/src/ATen/native/cuda/SoftMax.cu,
Loss.cu).
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels.cost import KernelCost, require_positive, tensor_bytes
from kernels.elementwise import elementwise_cost
from kernels.gemm import LinearBwdCosts, linear_bwd_costs, linear_fwd_cost


@dataclass(frozen=True)
class LmHeadLossCosts:
    """Kernels of the LM head and loss, and the [T, V] tensors they create."""

    head_fwd: KernelCost
    """logits[T, V] = hidden[T, H] @ W^T."""
    upcast_fwd: KernelCost | None
    """logits.float(); None without the upcast."""
    loss_fwd: KernelCost
    """log_softmax + nll_loss."""
    loss_bwd: KernelCost
    """nll_loss_backward (zero-filled [T, V] grad) + log_softmax_backward."""
    upcast_bwd: KernelCost | None
    """Cast of the fp32 logits gradient back to the model dtype; None without the upcast."""
    head_bwd: LinearBwdCosts
    """Input-grad and weight-grad GEMMs of the head."""
    logits_bytes: int
    """[T, V] logits in the model dtype (Hugging Face returns them, so they stay alive)."""
    upcast_logits_bytes: int
    """[T, V] fp32 copy of the logits (0 without the upcast)."""
    log_probs_bytes: int
    """[T, V] log-probabilities written by log_softmax and saved for backward."""
    grad_loss_logits_bytes: int
    """[T, V] gradient of the loss-dtype logits (and, of the same size, the nll gradient)."""
    grad_logits_bytes: int
    """[T, V] gradient of the model-dtype logits fed to the head's backward GEMMs."""

    @property
    def fwd_kernels(self) -> tuple[KernelCost, ...]:
        return tuple(k for k in (self.head_fwd, self.upcast_fwd, self.loss_fwd) if k is not None)

    @property
    def bwd_kernels(self) -> tuple[KernelCost, ...]:
        kernels = (self.loss_bwd, self.upcast_bwd, *self.head_bwd)
        return tuple(k for k in kernels if k is not None)


def lm_head_loss_cost(
    *,
    num_tokens: int,
    hidden_size: int,
    vocab_size: int,
    dtype: str = "bf16",
    upcast_logits: bool = True,
    grad_dtype: str | None = None,
) -> LmHeadLossCosts:
    """LM head GEMM, fp32 upcast, cross-entropy forward and backward (module docstring).

    Loss kernels run in fp32 with ``upcast_logits`` (Hugging Face) and in ``dtype`` without.
    FLOPs/element: log_softmax + nll 4 forward, 4 backward; the casts 0. Traffic per [T, V]
    element in the loss dtype: forward 3 reads + 1 write; backward 3 reads + 2 writes (the
    zero-filled nll gradient and the log_softmax gradient).
    """
    require_positive("num_tokens", num_tokens)
    require_positive("vocab_size", vocab_size)
    n = num_tokens * vocab_size
    loss_dtype = "fp32" if upcast_logits else dtype
    labels_bytes = tensor_bytes(num_tokens, "int64")
    head_fwd = linear_fwd_cost(
        num_tokens=num_tokens, in_features=hidden_size, out_features=vocab_size, dtype=dtype
    )
    upcast_fwd = upcast_bwd = None
    if upcast_logits:
        upcast_fwd = elementwise_cost(
            num_elements=n,
            dtype=dtype,
            out_dtype="fp32",
            flops_per_element=0.0,
            name="logits_upcast",
        )
        upcast_bwd = elementwise_cost(
            num_elements=n,
            dtype="fp32",
            out_dtype=dtype,
            flops_per_element=0.0,
            name="grad_logits_downcast",
        )
    loss_fwd = elementwise_cost(
        num_elements=n,
        dtype=loss_dtype,
        num_inputs=3,  # row max, sum of exponentials, output pass
        flops_per_element=4.0,
        extra_read_bytes=labels_bytes,
        name="cross_entropy_fwd",
    )
    # nll backward writes the [T, V] grad; log_softmax backward reads it twice and the log-probs.
    loss_bwd = elementwise_cost(
        num_elements=n,
        dtype=loss_dtype,
        num_inputs=3,
        num_outputs=2,
        flops_per_element=4.0,
        extra_read_bytes=labels_bytes,
        name="cross_entropy_bwd",
    )
    head_bwd = linear_bwd_costs(
        num_tokens=num_tokens,
        in_features=hidden_size,
        out_features=vocab_size,
        dtype=dtype,
        grad_dtype=grad_dtype,
    )
    loss_elem_bytes = tensor_bytes(n, loss_dtype)
    return LmHeadLossCosts(
        head_fwd=head_fwd,
        upcast_fwd=upcast_fwd,
        loss_fwd=loss_fwd,
        loss_bwd=loss_bwd,
        upcast_bwd=upcast_bwd,
        head_bwd=head_bwd,
        logits_bytes=tensor_bytes(n, dtype),
        upcast_logits_bytes=loss_elem_bytes if upcast_logits else 0,
        log_probs_bytes=loss_elem_bytes,
        grad_loss_logits_bytes=loss_elem_bytes,
        grad_logits_bytes=tensor_bytes(n, dtype),
    )
