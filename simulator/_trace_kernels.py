"""CUDA-faithful stand-ins used while tracing on the meta device (see `simulator.trace`).

Models: the allocations of the kernels that PyTorch 2.11 runs on an H200 where the meta device
runs something else: scaled-dot-product attention (cuDNN or FlashAttention-2 instead of the
math path), RMSNorm (the fused CUDA kernel instead of the composite), dropout (the fused
``native_dropout`` with a bool mask instead of a mask in the input dtype), and the fp32
partial-sum buffer of the CUDA embedding backward. Each stand-in is an ``autograd.Function`` that allocates,
on the meta device, exactly the tensors the CUDA kernel allocates (outputs, tensors saved for
backward, and workspaces that live only inside the kernel) inside one traced kernel, so the
tracer records one op per CUDA kernel.
Shapes: B batch, S sequence (Sq queries, Sk keys), H query heads, Hk key/value heads, D head dim.
Assumes: bf16/fp16 activations; dropout 0; one attention backend for the whole step.
Ignores: cuDNN's own internal workspace if any (not visible in our measurements beyond the
fp32 dQ accumulator below), about 9% of the embedding backward's transient (below), and
cuDNN/flash numerics.
Source:
- Measured on one H200, torch 2.11.0+cu130 (per-op ``torch.cuda.memory_allocated`` and in-op
  ``max_memory_allocated`` under a TorchDispatchMode, 2026-11-28): ``F.scaled_dot_product_attention``
  dispatches to ``aten._scaled_dot_product_cudnn_attention`` for MHA, for ``enable_gqa=True`` and
  for a float additive mask, never to the flash kernel. Forward allocates the output as
  [B, Sq, H, D] storage returned as a [B, H, Sq, D] view, logsumexp fp32 [B, H, Sq, 1] and two
  int64 philox scalars (512 B each after allocator rounding). Backward allocates dQ, dK, dV
  (dK, dV with Hk heads: GQA is native) and, inside the kernel, fp32 [B, Sq, H, D] plus fp32
  [B, H, Sq] (at Sq=8192, H=32, D=128 the in-kernel transient was exactly 129 MiB), plus two
  [B, Sk, H, D] buffers for GQA and a contiguous copy of dO when dO is not dense in
  [B, Sq, H, D] (at Sq=1024, H=32, Hk=8: 40.125 MiB = 16 + 0.125 + 8 + 8 + 8). dO is copied
  only when its strides differ from the output's (a stride-0 gradient here; never in the
  probe stack or Hugging Face models).
- FlashAttention forced with ``sdpa_kernel(FLASH_ATTENTION)`` on H200: the probe stack peaks
  at the same bytes as with cuDNN at 8192 tokens, and at 9017525248 / 5281326080 B (none /
  checkpoint) at 8000 tokens, where the 128-row rounding of the dQ accumulator shows.
- FlashAttention-2 in PyTorch, aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp
  ``mha_fwd``/``mha_bwd``: out = empty_like(q) in [B, Sq, H, D], softmax_lse fp32 [B, H, Sq],
  rng_state uint64[2] and an unused uint64 scalar; backward dq_accum fp32
  [B, round128(Sq), H, round32(D)] (round64 above D=128), softmax_d fp32 [B, H, round128(Sq)],
  dk_expanded / dv_expanded [B, Sk, H, D] when Hk != H (summed into dK, dV after the kernel);
  attention_backward.cu calls ``grad_out.contiguous()`` first.
- RMSNorm: torch 2.11 on CUDA runs ``aten._fused_rms_norm`` (measured: saves input, weight and
  rstd fp32 [..., 1]; output in the input dtype) and ``aten._fused_rms_norm_backward``
  (grad input, grad weight, no other transient). On meta the composite path runs instead
  (fp32 copies of the input), so the stand-in replaces ``F.rms_norm``. Hugging Face's
  ``LlamaRMSNorm`` is composite on CUDA too (fp32 upcast, measured) and is traced as is.
- Dropout: aten/src/ATen/native/Dropout.cpp ``dropout`` takes ``native_dropout`` when
  ``is_fused_kernel_acceptable`` (CUDA input, 0 < p < 1); its CUDA kernel returns a bool mask.
  Measured: GPT-2 medium at 4K (49 dropouts of [4096, 1024]) peaked 194 MiB lower on H200 than
  the composite path predicts.
- Embedding backward: aten/src/ATen/native/cuda/EmbeddingBackwardKernel.cu allocates
  ``grad_weight_per_segment`` in the accumulation type (fp32), up to [num_indices, D], on the
  sort path (more than 3072 indices; Embedding.cu). Measured transient above the weight grad on
  H200: 0 at 2048 tokens; 70.6 / 141.2 / 282.4 MiB at 4K / 8K / 16K tokens x 4096, of which
  64 / 128 / 256 MiB is this buffer; the rest (about 1.7 KB per token at D=4096, 0.46 KB at
  D=1024) is not modelled.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from simulator.workload import Role

ATTENTION_BACKENDS = ("cudnn", "flash")


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _active():
    from simulator.trace import active_tracer

    return active_tracer()


def _bshd_empty_like(t: torch.Tensor, *, heads: int, head_dim: int) -> torch.Tensor:
    """A [B, H, S, D] tensor laid out as flash and cuDNN allocate it: ``empty_like`` of the
    [B, S, H, D] view of ``t`` (keeps a dense input's layout, else [B, S, H, D] storage).
    Measured on H200: a [B, S, H, D]-stored or strided q gives [B, S, H, D] storage, a
    contiguous [B, H, S, D] q gives [B, H, S, D]."""
    b, _, s, _ = t.shape
    like = t.transpose(1, 2)
    if like.shape[2] == heads and like.shape[3] == head_dim:
        return torch.empty_like(like).transpose(1, 2)
    out = torch.empty(b, s, heads, head_dim, dtype=t.dtype, device=t.device)
    return out.transpose(1, 2)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, is_causal, scale, backend):
        tracer = _active()
        b, h, s_q, d = q.shape
        s_k, d_v = k.shape[2], v.shape[3]
        flops = sdpa_flop_count((b, h, s_q, d), (b, h, s_k, d), (b, h, s_k, d_v))
        kind = f"_scaled_dot_product_{'cudnn' if backend == 'cudnn' else 'flash'}_attention"
        with tracer.kernel(kind, op_class="attention_fwd", flops=flops, inputs=(q, k, v)) as kern:
            out = _bshd_empty_like(q, heads=h, head_dim=d_v)
            lse_shape = (b, h, s_q, 1) if backend == "cudnn" else (b, h, s_q)
            lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
            rng_dtype = torch.int64 if backend == "cudnn" else torch.uint64
            seed = torch.empty(
                (() if backend == "cudnn" else (2,)), dtype=rng_dtype, device=q.device
            )
            offset = torch.empty((), dtype=rng_dtype, device=q.device)
            kern.role(out, Role.ATTN_OUT)
            for t in (lse, seed, offset):
                kern.role(t, Role.ATTN_STAT)
            kern.reads(q, k, v, bias)
        ctx.tracer, ctx.backend, ctx.is_causal, ctx.scale = tracer, backend, is_causal, scale
        ctx.has_bias = bias is not None
        tensors = (q, k, v, out, lse, seed, offset) + ((bias,) if bias is not None else ())
        ctx.save_for_backward(*tensors)
        tracer.note_saves(tensors)
        return out

    @staticmethod
    def backward(ctx, dout):
        tracer = ctx.tracer
        q, k, v, out, lse, seed, offset, *rest = ctx.saved_tensors
        b, h, s_q, d = q.shape
        hk, s_k, d_v = k.shape[1], k.shape[2], v.shape[3]
        flops = sdpa_backward_flop_count(
            (b, h, s_q, d_v), (b, h, s_q, d), (b, h, s_k, d), (b, h, s_k, d_v)
        )
        kind = f"_scaled_dot_product_{'cudnn' if ctx.backend == 'cudnn' else 'flash'}_attention_backward"
        with tracer.kernel(kind, op_class="attention_bwd", flops=flops) as kern:
            workspaces = []
            if ctx.backend == "cudnn":  # dO is copied into o's layout when the strides differ
                if dout.stride() != out.stride():
                    workspaces.append(torch.empty_like(out))
            else:  # attention_backward.cu: grad_out.contiguous(), out.contiguous() in [B,S,H,D]
                for t in (dout, out):
                    if not t.transpose(1, 2).is_contiguous():
                        workspaces.append(
                            torch.empty(b, s_q, h, d_v, dtype=t.dtype, device=t.device)
                        )
            dq = _bshd_empty_like(q, heads=h, head_dim=d)
            dk = _bshd_empty_like(k, heads=hk, head_dim=d)
            dv = _bshd_empty_like(v, heads=hk, head_dim=d_v)
            s_q_rounded = _round_up(s_q, 128)
            d_rounded = _round_up(d, 32 if d <= 128 else 64)
            if ctx.backend == "cudnn":  # measured: fp32 [B, Sq, H, D] + fp32 [B, H, Sq]
                s_q_rounded, d_rounded = s_q, d
            workspaces.append(
                torch.empty(b, s_q_rounded, h, d_rounded, dtype=torch.float32, device=q.device)
            )
            workspaces.append(torch.empty(b, h, s_q_rounded, dtype=torch.float32, device=q.device))
            if hk != h:
                for _ in range(2):
                    workspaces.append(torch.empty(b, s_k, h, d, dtype=q.dtype, device=q.device))
            for t in (dq, dk, dv):
                kern.role(t, Role.ACTIVATION_GRAD)
            for t in workspaces:
                kern.role(t, Role.WORKSPACE)
            kern.reads(dout, q, k, v, out, lse)
            del workspaces
        return dq, dk, dv, None, None, None, None


def cuda_faithful_sdpa(original):
    """A drop-in for ``F.scaled_dot_product_attention`` that allocates like the CUDA kernels."""

    def sdpa(
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
    ):
        tracer = _active()
        if tracer is None or query.device.type != "meta" or query.dim() != 4:
            return original(
                query,
                key,
                value,
                attn_mask=attn_mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=enable_gqa,
            )
        backend = tracer.attention_backend
        if key.shape[1] != query.shape[1] and not enable_gqa:
            raise ValueError(
                f"scaled_dot_product_attention: {query.shape[1]} query heads but "
                f"{key.shape[1]} key heads and enable_gqa=False"
            )
        bias = None
        if attn_mask is not None:
            if backend == "flash":
                raise ValueError(
                    "attention_backend='flash' takes no attention mask (PyTorch picks another "
                    "kernel when a mask is given); use attention_backend='cudnn'"
                )
            if attn_mask.dtype == torch.bool:  # sdpa's convert_boolean_attn_mask
                bias = torch.where(
                    attn_mask,
                    torch.zeros((), dtype=query.dtype, device=query.device),
                    torch.full((), -math.inf, dtype=query.dtype, device=query.device),
                )
            else:
                bias = attn_mask
        return _Attention.apply(query, key, value, bias, is_causal, scale, backend)

    sdpa.__dict__["__wrapped__"] = original  # as functools.wraps sets it (mypy types no function attributes)
    return sdpa


class _FusedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, normalized_shape, weight, eps):
        tracer = _active()
        ndim = len(normalized_shape)
        with tracer.kernel("_fused_rms_norm", op_class="memory", flops=0.0, inputs=(x,)) as kern:
            y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            rstd = torch.empty(
                tuple(x.shape[: x.dim() - ndim]) + (1,) * ndim, dtype=torch.float32, device=x.device
            )
            kern.role(y, Role.NORM_OUT)
            kern.role(rstd, Role.NORM_STAT)
            kern.reads(x, weight)
        ctx.tracer, ctx.has_weight = tracer, weight is not None
        tensors = (x, rstd) + ((weight,) if weight is not None else ())
        ctx.save_for_backward(*tensors)
        tracer.note_saves(tensors)
        return y

    @staticmethod
    def backward(ctx, dy):
        tracer = ctx.tracer
        x, rstd, *w = ctx.saved_tensors
        weight = w[0] if w else None
        with tracer.kernel("_fused_rms_norm_backward", op_class="memory", flops=0.0) as kern:
            dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            kern.role(dx, Role.ACTIVATION_GRAD)
            dw = None
            if weight is not None and ctx.needs_input_grad[2]:
                dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
                kern.role(dw, Role.ACTIVATION_GRAD)  # becomes GRAD if it ends in .grad
            kern.reads(dy, x, rstd, weight)
        return dx, None, dw, None


def fused_rms_norm(original):
    """A drop-in for ``F.rms_norm`` that allocates like torch 2.11's fused CUDA kernel."""

    def rms_norm(input, normalized_shape, weight=None, eps=None):
        tracer = _active()
        if tracer is None or input.device.type != "meta":
            return original(input, normalized_shape, weight, eps)
        return _FusedRMSNorm.apply(input, tuple(normalized_shape), weight, eps)

    rms_norm.__dict__["__wrapped__"] = original  # as functools.wraps sets it (mypy types no function attributes)
    return rms_norm


def fused_dropout(original):
    """A drop-in for ``F.dropout`` that runs ``aten.native_dropout`` as CUDA does.

    On meta (as on CPU) dropout is composite: a mask in the input dtype from ``bernoulli_``.
    On CUDA ``dropout`` takes the fused ``native_dropout`` kernel, which saves a bool mask
    (1 byte per element instead of 2 in bf16).
    """

    def dropout(input, p=0.5, training=True, inplace=False):
        tracer = _active()
        if tracer is None or input.device.type != "meta" or inplace or not training:
            return original(input, p, training, inplace)
        if p <= 0.0 or p >= 1.0 or input.numel() == 0:
            return original(input, p, training, inplace)
        return torch.ops.aten.native_dropout(input, p, True)[0]

    dropout.__dict__["__wrapped__"] = original  # as functools.wraps sets it (mypy types no function attributes)
    return dropout


EMBEDDING_BACKWARD_DIRECT_MAX_INDICES = 3072  # Embedding.cu: at most this many, no sort path


def embedding_backward_workspace_bytes(args) -> int:
    """fp32 partial sums of the CUDA embedding backward: [num_indices, D] (see Source).

    ``embedding_dense_backward_cuda`` takes a direct kernel without workspace for at most 3072
    indices (measured: 0 B at 2048 tokens) and the sort-and-segment path above that.
    """
    grad, indices = args[0], args[1]
    if indices.numel() <= EMBEDDING_BACKWARD_DIRECT_MAX_INDICES:
        return 0
    return indices.numel() * grad.shape[-1] * 4
