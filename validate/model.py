"""A reference Llama-family decoder built from a ModelSpec, for running plans for real.

Models: two variants of one decoder. (1) The Hugging Face Llama math (RMSNorm with an fp32
upcast, rotate_half RoPE, GQA through ``F.scaled_dot_product_attention(..., enable_gqa=True)``,
SwiGLU, optional q/k/v and MLP biases, Qwen3's per-head q/k norms, an LM head and a
cross-entropy loss on fp32 logits); (2) the probe stack of ``/work/shared/reference/hwprobe.py``
(no embedding, no head: ``nn.RMSNorm``, fused qkv and gate_up Linears, no rotary, loss
``x.float().pow(2).mean()``), chosen when the spec has neither an embedding nor an LM head.
Each layer names the saved-tensor role (``simulator.workload.Role`` values) of the tensors it
produces through ``self.tag(role, tensor)``: a no-op unless an executor installs a tagger, so
that a plan's per-role decisions find their tensors. Everything but attention is per token: a
layer run on token rows [r, T) (with the rotary rows of those positions) and ``attn_rows`` set to
the saved attention output of those rows reproduces the rows of every tagged tensor, in the same
tag order (MEMO's token-wise recompute).
Assumes: causal self-attention over one sequence per batch row; weights initialised from a seed
(normal, std 0.02; norms at 1) on the target device, so equal seeds give equal models.
Ignores: sliding windows, dropout, rotary scaling (none of them is needed to check that a plan
keeps the gradients), the GPT families (``family`` gpt/gpt2 is refused).
Source: transformers 5.x modeling_llama.py / modeling_qwen3.py; hwprobe.py class Layer.

Shapes: B batch, T tokens, H query heads, K kv heads, D head_dim, h hidden, f intermediate, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwmodels.units import UserInputError
from simulator.model import ModelSpec
from simulator.workload import Role
from validate.chunked_ops import TiledMLP, chunked_cross_entropy

LLAMA_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
INIT_STD = 0.02
ROPE_THETA = 10000.0

Tagger = Callable[[str, torch.Tensor], None]


class _FusedRMSNormOffCUDA(torch.autograd.Function):
    """``aten._fused_rms_norm`` as autograd runs it on CUDA, for the CPU and meta (where torch
    decomposes it into ops that save fp32 copies, and has no fused backward): the same
    forward, saves exactly the input, the weight and the fp32 rstd [..., 1]; backward is the
    kernel's math in fp32."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        y, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.mark_non_differentiable(rstd)
        return y, rstd

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _drstd: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        g = dy.float() * weight.float()
        dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
        dw = (dy.float() * xhat).reshape(-1, x.shape[-1]).sum(0)
        return dx.to(x.dtype), dw.to(weight.dtype), None


class HFRMSNorm(nn.Module):
    """transformers' LlamaRMSNorm: statistics in fp32, the scale applied in the input dtype.

    ``fused = True`` runs torch's fused RMSNorm instead (``aten._fused_rms_norm``, what
    ``F.rms_norm`` runs on CUDA: one kernel that saves the input, the weight and the fp32 rstd
    per row, ``job.rmsnorm: fused``); the same weight, the output equal to rounding."""

    def __init__(self, dim: int, eps: float, *, device: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps
        self.fused = False

    def forward(self, x: torch.Tensor, tag: Tagger) -> torch.Tensor:
        if self.fused:
            if x.device.type == "cuda":  # the fused kernel's own autograd node
                y, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], self.weight, self.eps)
            else:
                y, rstd = _FusedRMSNormOffCUDA.apply(x, self.weight, self.eps)
            tag(Role.NORM_STAT, rstd)
            tag(Role.NORM_OUT, y)
            return y
        x32 = x.float()
        tag(Role.NORM_OUT, x32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        tag(Role.NORM_STAT, rstd)
        normed = (x32 * rstd).to(x.dtype)
        tag(Role.NORM_OUT, normed)
        out = self.weight * normed
        tag(Role.NORM_OUT, out)
        return out


class SwiGLUDown(torch.autograd.Function):
    """``down_proj(silu(gate) * up)`` as one autograd node that saves only its input (the fused
    gate_up output, or gate and up) and the down projection's weight: backward recomputes
    silu(gate) and the product (two elementwise kernels) instead of holding them, 2 x tokens x
    intermediate activation bytes per layer. The gradients are those of the eager ops, bitwise
    (tested on the CPU; on the GPU a run under any plan differs from a plain one by rounding):
    the same kernels on the same operands (the down projection's backward as autograd's
    ``mm`` backward takes it for a row-major weight; silu's with ``aten.silu_backward``), the
    input's gradient written in place of the chunk backward's concatenation.

    ``forward(ctx, weight, bias, *acts)``: ``acts`` is (gate_up,) or (gate, up).
    """

    @staticmethod
    def _halves(acts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(acts) == 1:
            gate, up = acts[0].chunk(2, dim=-1)
            return gate, up
        return acts[0], acts[1]

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, bias: torch.Tensor | None, *acts: torch.Tensor) -> torch.Tensor:
        g, u = SwiGLUDown._halves(acts)
        prod = F.silu(g) * u
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight, *acts)
        return F.linear(prod, weight, bias)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, *acts = ctx.saved_tensors
        g, u = SwiGLUDown._halves(tuple(acts))
        act = F.silu(g)
        prod = act * u
        dy2 = dy.reshape(-1, dy.shape[-1])
        grad_w = dy2.t().mm(prod.reshape(-1, prod.shape[-1]))
        grad_b = dy2.sum(0) if ctx.has_bias else None
        del prod
        grad_prod = dy2.mm(weight).view(act.shape)
        if len(acts) == 1:
            grad_acts = [torch.empty_like(acts[0])]
            grad_g, grad_u = grad_acts[0].chunk(2, dim=-1)
            torch.mul(grad_prod, act, out=grad_u)
        else:
            grad_u = grad_prod * act
            grad_g = torch.empty_like(g)
            grad_acts = [grad_g, grad_u]
        del act
        grad_prod.mul_(u)  # now the gradient of silu(gate)
        torch.ops.aten.silu_backward.grad_input(grad_prod, g, grad_input=grad_g)
        return (grad_w, grad_b, *grad_acts)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """q or k [B,*,T,D] rotated by ``rope``'s (cos, sin) rows [T, D] (rotate_half form). Callers
    rotate q and k in two statements (``q = apply_rope(q, rope)``, then k's), so that q's
    unrotated storage is gone before k's rotation allocates (the H200 runs' order, which
    ``simulator.templates`` models)."""
    cos, sin = rope
    return x * cos + _rotate_half(x) * sin


def rope_tables(
    seq_len: int, head_dim: int, *, device: Any, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, D] as transformers builds them (fp32 angles, cast to the model dtype)."""
    inv_freq = 1.0 / (
        ROPE_THETA ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    )
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer; ``forward(x [B,T,h], rope) -> [B,T,h]``."""

    def __init__(self, spec: ModelSpec, *, probe: bool, device: Any, dtype: torch.dtype) -> None:
        super().__init__()
        h, f, q, kv = spec.hidden_size, spec.intermediate_size, spec.q_size, spec.kv_size
        lin = dict(device=device, dtype=dtype)
        self.spec = spec
        self.probe = probe
        self.tagger: Tagger | None = None
        self.attn_hook: Any = None  # called when backward reaches the attention block
        self.checkpoint_mlp = False
        self.recompute_mlp_act = False  # SwiGLUDown: silu(gate) * up recomputed in backward
        self.mlp_chunks = 1  # > 1: validate.chunked_ops.TiledMLP over this many token chunks
        self.attn_rows: torch.Tensor | None = None
        # attention of (q [B,H,T,D], k, v [B,K,T,D]) -> [B,H,T,D] in place of causal SDPA over
        # the layer's own rows: a context-parallel executor's ring (validate.context_parallel)
        self.attn_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        if probe:
            self.input_layernorm: nn.RMSNorm | HFRMSNorm = nn.RMSNorm(h, eps=spec.norm_eps, **lin)
            self.post_attention_layernorm: nn.RMSNorm | HFRMSNorm = nn.RMSNorm(h, eps=spec.norm_eps, **lin)
        else:
            self.input_layernorm = HFRMSNorm(h, spec.norm_eps, **lin)
            self.post_attention_layernorm = HFRMSNorm(h, spec.norm_eps, **lin)
        if spec.qkv_fused:
            self.qkv_proj = nn.Linear(h, q + 2 * kv, bias=spec.qkv_bias, **lin)
        else:
            self.q_proj = nn.Linear(h, q, bias=spec.qkv_bias, **lin)
            self.k_proj = nn.Linear(h, kv, bias=spec.qkv_bias, **lin)
            self.v_proj = nn.Linear(h, kv, bias=spec.qkv_bias, **lin)
        self.o_proj = nn.Linear(q, h, bias=spec.o_bias, **lin)
        if spec.qk_norm:
            self.q_norm = HFRMSNorm(spec.head_dim, spec.norm_eps, **lin)
            self.k_norm = HFRMSNorm(spec.head_dim, spec.norm_eps, **lin)
        if spec.gate_up_fused:
            self.gate_up_proj = nn.Linear(h, 2 * f, bias=spec.mlp_bias, **lin)
        else:
            self.gate_proj = nn.Linear(h, f, bias=spec.mlp_bias, **lin)
            self.up_proj = nn.Linear(h, f, bias=spec.mlp_bias, **lin)
        self.down_proj = nn.Linear(f, h, bias=spec.mlp_bias, **lin)

    def tag(self, role: str, t: torch.Tensor) -> torch.Tensor:
        if self.tagger is not None:
            self.tagger(role, t)
        return t

    def _norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(norm, HFRMSNorm):
            return norm(x, self.tag)
        return self.tag(Role.NORM_OUT, norm(x))

    def qkv(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B,H,T,D], k and v [B,K,T,D] of ``x`` [B,T,h]: the pre-attention norm, the
        projections, Qwen3's q/k norms and the rotary embedding of ``rope``'s rows."""
        s = self.spec
        B, T, _ = x.shape
        n = self._norm(self.input_layernorm, x)
        if s.qkv_fused:
            qkv = self.tag(Role.ATTN_QKV, self.qkv_proj(n))
            q, k, v = qkv.split([s.q_size, s.kv_size, s.kv_size], dim=-1)
        else:
            q, k, v = (p(n) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = q.view(B, T, s.num_heads, s.head_dim)  # B T H D
        k = k.view(B, T, s.num_kv_heads, s.head_dim)
        v = v.view(B, T, s.num_kv_heads, s.head_dim)
        if s.qk_norm:
            q, k = self.q_norm(q, self.tag), self.k_norm(k, self.tag)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # B H T D
        if rope is not None:
            q = apply_rope(q, rope)
            k = apply_rope(k, rope)
        return q, k, v

    def _attention(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        s = self.spec
        B, T, _ = x.shape
        q, k, v = self.qkv(x, rope)
        for t in (
            q,
            k,
            v,
        ):  # tag only what attention saves: a tag holds its tensor to the layer's end
            self.tag(Role.ATTN_QKV, t)
        if self.attn_rows is None and self.attn_fn is not None:
            a = self.attn_fn(q, k, v)
        elif self.attn_rows is None:
            a = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=s.num_kv_heads != s.num_heads
            )
        else:  # token-wise recompute: the saved attention output of these rows
            a = self.attn_rows
        self.tag(Role.ATTN_OUT, a)
        a = self.tag(Role.ATTN_OUT, a.transpose(1, 2).reshape(B, T, s.q_size))
        return self.o_proj(a)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        n = self._norm(self.post_attention_layernorm, x)
        acts: tuple[torch.Tensor, ...]
        if self.spec.gate_up_fused:
            acts = (self.tag(Role.MLP_HIDDEN, self.gate_up_proj(n)),)
            g, u = acts[0].chunk(2, dim=-1)
        else:
            acts = g, u = (
                self.tag(Role.MLP_HIDDEN, self.gate_proj(n)),
                self.tag(Role.MLP_HIDDEN, self.up_proj(n)),
            )
        if self.recompute_mlp_act:
            return SwiGLUDown.apply(self.down_proj.weight, self.down_proj.bias, *acts)
        act = self.tag(Role.MLP_HIDDEN, F.silu(g))
        return self.down_proj(self.tag(Role.MLP_HIDDEN, act * u))

    def _mlp_untagged(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP block with no tags: a tiled MLP's chunks are not saved tensors."""
        tagger, self.tagger = self.tagger, None
        try:
            return self._mlp(x)
        finally:
            self.tagger = tagger

    def mlp_parameters(self) -> list[nn.Parameter]:
        """The parameters the MLP block reads (post-attention norm, projections)."""
        mods = [self.post_attention_layernorm, self.down_proj]
        mods += [self.gate_up_proj] if self.spec.gate_up_fused else [self.gate_proj, self.up_proj]
        return [p for m in mods for p in m.parameters()]

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        self.tag("input", x)
        x = self.tag(Role.LAYER_INPUT, x + self._attention(x, rope))
        if self.attn_hook is not None and x.requires_grad:
            # its gradient is complete once the MLP block's backward is done
            x.register_hook(lambda grad, hook=self.attn_hook: hook())
        if self.mlp_chunks > 1:  # only the MLP input is saved (a checkpoint of the MLP besides)
            return x + TiledMLP.apply(self._mlp_untagged, self.mlp_chunks, x, *self.mlp_parameters())
        if self.checkpoint_mlp:
            from torch.utils.checkpoint import checkpoint

            return x + checkpoint(self._mlp, x, use_reentrant=False)
        return x + self._mlp(x)


class Decoder(nn.Module):
    """Stem (embedding + rotary tables), ``layers`` (a ModuleList) and head + loss.

    ``forward(batch, layer_fn=None) -> loss``: ``batch`` is token ids [B, T] (long) with an
    embedding, else hidden states [B, T, h]. ``layer_fn(i, layer, x, rope) -> x`` lets an
    executor wrap each layer; None runs them plainly.
    """

    def __init__(self, spec: ModelSpec, *, device: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.spec = spec
        self.probe = not spec.has_embedding and not spec.has_lm_head
        lin = dict(device=device, dtype=dtype)
        if spec.has_embedding:
            self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size, **lin)
        self.layers = nn.ModuleList(
            DecoderLayer(spec, probe=self.probe, device=device, dtype=dtype)
            for _ in range(spec.num_layers)
        )
        self.lm_head_chunks = 1  # > 1: validate.chunked_ops' fused linear cross-entropy
        if spec.has_lm_head:
            self.norm = HFRMSNorm(spec.hidden_size, spec.norm_eps, **lin)
            if not (spec.tie_word_embeddings and spec.has_embedding):
                self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False, **lin)

    def set_rmsnorm(self, kind: str) -> None:
        """Every Hugging Face RMSNorm of the model (layers, q/k norms, final norm) as ``kind``:
        ``eager`` (transformers' LlamaRMSNorm) or ``fused`` (``job.rmsnorm``)."""
        for m in self.modules():
            if isinstance(m, HFRMSNorm):
                m.fused = kind == "fused"

    def stem(
        self, batch: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        x = self.embed_tokens(batch) if self.spec.has_embedding else batch
        rope = None
        if self.spec.position == "rope":
            rope = rope_tables(x.shape[1], self.spec.head_dim, device=x.device, dtype=x.dtype)
        return x, rope

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] in the model dtype: the final norm and the (possibly tied) head."""
        x = self.norm(x, lambda role, t: None)
        return F.linear(x, self.head_weight())

    def head_weight(self) -> torch.Tensor:
        return self.lm_head.weight if hasattr(self, "lm_head") else self.embed_tokens.weight

    def head_loss(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        if not self.spec.has_lm_head:
            return x.float().pow(2).mean()
        if self.lm_head_chunks > 1:
            h = self.norm(x, lambda role, t: None)
            labels = batch if self.spec.has_embedding else torch.zeros(
                x.shape[:2], dtype=torch.long, device=x.device)
            return chunked_cross_entropy(h, self.head_weight(), labels, self.lm_head_chunks)
        logits = self.head_logits(x).float()  # B T V, fp32 as HF's loss upcasts
        if self.spec.has_embedding:
            labels = batch[:, 1:]
        else:  # a head without an embedding: predict token 0 (a fixed, checkable target)
            labels = torch.zeros(x.shape[0], x.shape[1] - 1, dtype=torch.long, device=x.device)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1))

    def forward(self, batch: torch.Tensor, layer_fn: Callable | None = None) -> torch.Tensor:
        x, rope = self.stem(batch)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope) if layer_fn is None else layer_fn(i, layer, x, rope)
        return self.head_loss(x, batch)


def build_model(
    spec: ModelSpec, *, device: Any = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> Decoder:
    """The reference decoder of ``spec`` on ``device``, weights drawn from ``seed``."""
    check_buildable(spec)
    model = Decoder(spec, device=device, dtype=dtype)
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            init_parameter(name, p, gen)
    return model


def check_buildable(spec: ModelSpec) -> None:
    """Refuse, in one line, a spec the reference decoder cannot build."""
    if spec.family not in LLAMA_FAMILIES:
        raise UserInputError(
            f"model.family: {spec.family!r} is not a Llama-family decoder ({', '.join(LLAMA_FAMILIES)})"
        )
    if spec.sliding_window is not None:
        raise UserInputError(
            "model.sliding_window: the reference decoder has full causal attention only"
        )
    if spec.norm != "rmsnorm" or spec.mlp != "swiglu" or spec.position == "learned":
        raise UserInputError(
            "model: the reference decoder needs rmsnorm, swiglu and rope or no positions"
        )


def init_parameter(name: str, p: torch.Tensor, gen: torch.Generator) -> None:
    """The initial value of parameter ``name`` (a ``Decoder.named_parameters`` name), drawn from
    ``gen`` in place: norms at 1, biases at 0, the rest normal(0, INIT_STD). Drawing every
    parameter in ``named_parameters`` order from one seeded generator gives ``build_model``'s
    weights, wherever each tensor lives."""
    if "norm" in name:
        p.fill_(1.0)
    elif name.endswith(".bias"):
        p.zero_()
    else:
        p.normal_(0.0, INIT_STD, generator=gen)


def make_batch(
    spec: ModelSpec,
    *,
    seq_len: int,
    batch: int = 1,
    device: Any = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 1,
) -> torch.Tensor:
    """A deterministic input: token ids [B, T] with an embedding, else hidden states [B, T, h]
    that require grad (as the probe's ``x0``)."""
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    if spec.has_embedding:
        return torch.randint(0, spec.vocab_size, (batch, seq_len), generator=gen, device=device)
    x = torch.randn(batch, seq_len, spec.hidden_size, generator=gen, device=device, dtype=dtype)
    return x.requires_grad_(True)
