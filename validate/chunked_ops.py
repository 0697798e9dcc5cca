"""Token-chunked LM head + loss and MLP as autograd Functions, for whole-model plans.

Models: (1) ``ChunkedLinearCrossEntropy``: the LM head and the cross-entropy loss in C token
chunks computed, with their backward, during the forward (a fused linear cross-entropy): per
chunk the bf16 logits ``h_c @ W^T``, their fp32 upcast (as Hugging Face's loss upcasts), the
chunk's loss sum, and at once its gradient: ``dh_c`` written into one (tokens x hidden) buffer
and ``dW`` accumulated in fp32. Only one chunk's logits (model dtype + fp32 + gradient) live at
a time; backward returns the saved gradients scaled by the loss's incoming gradient. The loss is
the mean over the tokens with a label (Hugging Face's shifted labels, ignore index -100 for the
last position), equal to the unchunked mean. (2) ``TiledMLP``: a function of the token rows
(the layer's MLP block) run in M token chunks under no_grad in the forward, saving only its
input; backward recomputes each chunk's forward with grad and backpropagates it at once, one
chunk at a time, the parameters' gradients summed over chunks in fp32 and returned once (so a
gradient hook on a parameter fires once per step, as without chunks).
Assumes: tokens are rows of ``h`` / ``x`` along dim 1 ([B, T, h]); the chunk function is per
token (attention is not inside it).
Ignores: label smoothing, z-loss, softcapping.
Source: Liger-Kernel's FusedLinearCrossEntropy (Hsu et al., arXiv 2410.10989); DeepSpeed's
TiledMLP (ALST, Bekman et al., arXiv 2506.13996); transformers' ForCausalLMLoss.

Shapes: B batch, T tokens, N = B*T rows, h hidden, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face's causal-LM targets: token t predicts label t+1; the last position is ignored."""
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat((labels[:, 1:], pad), dim=1)


def chunk_bounds(num_rows: int, num_chunks: int) -> list[tuple[int, int]]:
    """[start, end) of ``num_chunks`` near-equal row chunks (fewer when there are fewer rows)."""
    n = max(1, min(num_chunks, num_rows))
    step = -(-num_rows // n)
    return [(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``apply(h [B,T,h], weight [V,h], targets [B,T] long, num_chunks) -> loss`` (fp32 scalar):
    the mean cross-entropy of ``h @ weight^T`` over the targets that are not IGNORE_INDEX."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                num_chunks: int) -> torch.Tensor:
        h2 = h.reshape(-1, h.shape[-1])  # N h
        t1 = targets.reshape(-1)
        valid = t1 != IGNORE_INDEX
        num_valid = int(valid.sum())
        denom = max(num_valid, 1)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h2) if h.requires_grad else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight.requires_grad else None
        for s, e in chunk_bounds(h2.shape[0], num_chunks):
            h_c, t_c, v_c = h2[s:e], t1[s:e], valid[s:e]
            logits = F.linear(h_c, weight).float()  # n V: bf16 logits, fp32 as HF's loss upcasts
            safe = torch.where(v_c, t_c, 0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            loss += torch.where(v_c, lse - picked, 0.0).sum()
            # d(mean loss)/d logits = (softmax - onehot) / num_valid on labelled rows, 0 elsewhere
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, safe[:, None], torch.full_like(picked[:, None], -1.0))
            grad.mul_((v_c.float() / denom)[:, None])
            g = grad.to(h.dtype)  # the fp32 upcast's backward casts back to the logits' dtype
            del grad, logits
            if dh is not None:
                torch.mm(g, weight, out=dh[s:e])
            if dw is not None:
                dw += g.t().mm(h_c).float()
        ctx.save_for_backward(*(t for t in (dh, dw) if t is not None))
        ctx.has = (dh is not None, dw is not None)
        ctx.h_shape = h.shape
        ctx.w_dtype = weight.dtype
        return loss / denom

    @staticmethod
    def backward(ctx: Any, dloss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = list(ctx.saved_tensors)
        dh = saved.pop(0) if ctx.has[0] else None
        dw = saved.pop(0) if ctx.has[1] else None
        out_h = None if dh is None else (dh * dloss.to(dh.dtype)).view(ctx.h_shape)
        out_w = None if dw is None else (dw * dloss).to(ctx.w_dtype)
        return out_h, out_w, None, None


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          num_chunks: int) -> torch.Tensor:
    """The causal-LM loss of final-norm output ``h`` under head ``weight`` for token ids
    ``labels`` [B, T] (shifted here), in ``num_chunks`` token chunks."""
    out = ChunkedLinearCrossEntropy.apply(h, weight, shifted_labels(labels), num_chunks)
    assert isinstance(out, torch.Tensor)
    return out


class TiledMLP(torch.autograd.Function):
    """``apply(fn, num_chunks, x [B,T,h], *params) -> fn(x)`` computed in ``num_chunks`` token
    chunks of dim 1; ``params`` are the tensors ``fn`` reads that take a gradient (the MLP's
    weights), passed so that their gradients are returned here."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[[torch.Tensor], torch.Tensor], num_chunks: int,
                x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.fn, ctx.num_chunks = fn, num_chunks
        ctx.save_for_backward(x, *params)
        bounds = chunk_bounds(x.shape[1], num_chunks)
        with torch.no_grad():
            return torch.cat([fn(x[:, s:e]) for s, e in bounds], dim=1)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        want = [p for p in params if p.requires_grad]
        acc = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in want]
        dx = torch.empty_like(x) if ctx.needs_input_grad[2] else None
        for s, e in chunk_bounds(x.shape[1], ctx.num_chunks):
            x_c = x[:, s:e].detach().requires_grad_(dx is not None)
            with torch.enable_grad():
                y_c = ctx.fn(x_c)
            inputs = ([x_c] if dx is not None else []) + want
            got = torch.autograd.grad(y_c, inputs, dy[:, s:e], allow_unused=True)
            del y_c
            if dx is not None:
                dx[:, s:e] = got[0]
                got = got[1:]
            for a, g in zip(acc, got, strict=True):
                if g is not None:
                    a += g
        grads = iter(a.to(p.dtype) for a, p in zip(acc, want, strict=True))
        return (None, None, dx, *(next(grads) if p.requires_grad else None for p in params))
