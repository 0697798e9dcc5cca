"""Tensor parallelism with sequence parallelism for validate.model's decoder layer (Megatron-LM).

Models: ``tp`` ranks of one group split one layer. Between blocks the activations are sharded
along the sequence (rank r holds tokens [r T/tp, (r+1) T/tp)): the norms and residual adds run on
those rows. Each block all-gathers its normed input along the sequence (Megatron's g; backward
reduce-scatters the gradient), runs column-parallel projections (q, k, v by heads: H/tp query
and K/tp key/value heads per rank; gate and up by intermediate columns: f/tp) and causal SDPA on
its heads over the whole sequence, then a row-parallel projection (o, down) whose partial sums
are reduce-scattered back to sequence shards (Megatron's g-bar; backward all-gathers). A
row-parallel bias is added once, after the reduce-scatter. Weights are the rank's slices of a
whole layer's (`TensorParallelLayer.from_layer`), so a one-process layer is the reference; norm
weights are replicated and, since each rank only sees its rows, their gradients are partial
sums that `allreduce_replicated_grads` completes (what Megatron does for sequence-parallel norms).
Assumes: H and K divisible by tp, T divisible by tp; the collectives are torch.distributed's
tensor forms on dim 0 (the sequence is moved there for them).
Ignores: vocabulary-parallel embedding and LM head, communication/compute overlap.
Source: Shoeybi et al., Megatron-LM (2019); Korthikanti et al., Reducing Activation
Recomputation in Large Transformer Models (2022), sequence parallelism.

Shapes: B batch, T tokens (Ts = T / tp on a rank), h hidden, H/K heads, D head_dim, f intermediate.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from validate.model import DecoderLayer, apply_rope


def _gather_seq(x: torch.Tensor, group: Any) -> torch.Tensor:
    """[B, Ts, h] on each rank -> [B, T, h] (ranks' rows in rank order)."""
    size = dist.get_world_size(group)
    xt = x.transpose(0, 1).contiguous()
    out = torch.empty((xt.shape[0] * size, *xt.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, xt, group=group)
    return out.transpose(0, 1)


def _scatter_seq(x: torch.Tensor, group: Any) -> torch.Tensor:
    """[B, T, h] partial sums on each rank -> the rank's [B, Ts, h] rows of their sum."""
    size = dist.get_world_size(group)
    xt = x.transpose(0, 1).contiguous()
    out = torch.empty((xt.shape[0] // size, *xt.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, xt, group=group)
    return out.transpose(0, 1)


class GatherSeq(torch.autograd.Function):
    """All-gather along the sequence; backward reduce-scatters the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return _gather_seq(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _scatter_seq(grad, ctx.group), None


class ScatterSeq(torch.autograd.Function):
    """Reduce-scatter along the sequence; backward all-gathers the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return _scatter_seq(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _gather_seq(grad, ctx.group), None


def _rows(w: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    return w.chunk(size, dim=0)[rank].detach().clone()


def _cols(w: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    return w.chunk(size, dim=1)[rank].detach().clone()


def _linear_parts(layer: DecoderLayer, *, grads: bool = False
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of q, k, v, o, gate, up, down, fused projections split into their parts
    (``grads``: their gradients instead)."""
    s = layer.spec

    def get(p: torch.Tensor | None) -> torch.Tensor | None:
        return p.grad if grads and p is not None else p

    def lin(m: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = get(m.weight)
        assert w is not None, "no gradient yet"
        return w, get(m.bias)

    parts: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    if s.qkv_fused:
        w, b = lin(layer.qkv_proj)
        sizes = [s.q_size, s.kv_size, s.kv_size]
        bs = b.split(sizes) if b is not None else (None, None, None)
        parts.update(zip(("q", "k", "v"), zip(w.split(sizes), bs, strict=True), strict=True))
    else:
        for n in ("q", "k", "v"):
            parts[n] = lin(getattr(layer, f"{n}_proj"))
    if s.gate_up_fused:
        w, b = lin(layer.gate_up_proj)
        gb = b.chunk(2) if b is not None else (None, None)
        parts["gate"], parts["up"] = (w.chunk(2)[0], gb[0]), (w.chunk(2)[1], gb[1])
    else:
        parts["gate"], parts["up"] = lin(layer.gate_proj), lin(layer.up_proj)
    parts["o"], parts["down"] = lin(layer.o_proj), lin(layer.down_proj)
    return parts


COLUMN = ("q", "k", "v", "gate", "up")
ROW = ("o", "down")


class TensorParallelLayer(nn.Module):
    """One rank's share of a DecoderLayer under TP + SP; ``forward(x [B,Ts,h], rope [T,D])``."""

    def __init__(self, layer: DecoderLayer, group: Any = None) -> None:
        super().__init__()
        self.group = group if group is not None else dist.group.WORLD
        rank, size = dist.get_rank(self.group), dist.get_world_size(self.group)
        s = self.spec = layer.spec
        if s.num_heads % size or s.num_kv_heads % size:
            raise ValueError(f"tp: {size} does not divide {s.num_heads} query / {s.num_kv_heads} kv heads")
        self.num_heads, self.num_kv_heads = s.num_heads // size, s.num_kv_heads // size
        self.input_layernorm = layer.input_layernorm  # replicated (shared with ``layer``)
        self.post_attention_layernorm = layer.post_attention_layernorm
        self.q_norm = getattr(layer, "q_norm", None)
        self.k_norm = getattr(layer, "k_norm", None)
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for name, (w, b) in _linear_parts(layer).items():
            col = name in COLUMN
            self.weights[name] = nn.Parameter(_rows(w, rank, size) if col else _cols(w, rank, size))
            if b is not None:  # column: the rank's slice; row: whole, added after the reduce-scatter
                self.biases[name] = nn.Parameter(_rows(b, rank, size) if col else b.detach().clone())

    @staticmethod
    def weight_slice(layer: DecoderLayer, name: str, rank: int, size: int, *, grad: bool = False
                     ) -> torch.Tensor:
        """Rank ``rank``'s slice of the whole layer's ``name`` weight (``grad``: of its gradient)."""
        w = _linear_parts(layer, grads=grad)[name][0]
        return w.chunk(size, dim=0 if name in COLUMN else 1)[rank]

    def _col(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weights[name], self.biases[name] if name in self.biases else None)

    def _row(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = ScatterSeq.apply(F.linear(x, self.weights[name]), self.group)
        return y + self.biases[name] if name in self.biases else y

    def _norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return norm(x, lambda _role, _t: None) if not isinstance(norm, nn.RMSNorm) else norm(x)

    def _attention(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        s = self.spec
        n = GatherSeq.apply(self._norm(self.input_layernorm, x), self.group)  # B T h
        B, T, _ = n.shape
        q = self._col("q", n).view(B, T, self.num_heads, s.head_dim)
        k = self._col("k", n).view(B, T, self.num_kv_heads, s.head_dim)
        v = self._col("v", n).view(B, T, self.num_kv_heads, s.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self._norm(self.q_norm, q), self._norm(self.k_norm, k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # B H T D
        if rope is not None:
            q = apply_rope(q, rope)
            k = apply_rope(k, rope)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return self._row("o", a.transpose(1, 2).reshape(B, T, self.num_heads * s.head_dim))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        n = GatherSeq.apply(self._norm(self.post_attention_layernorm, x), self.group)
        return self._row("down", F.silu(self._col("gate", n)) * self._col("up", n))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self._attention(x, rope)
        return x + self._mlp(x)

    def replicated_parameters(self) -> list[nn.Parameter]:
        """Parameters every rank holds whole (norms, row biases): their gradients are partial."""
        mods = [self.input_layernorm, self.post_attention_layernorm, self.q_norm, self.k_norm]
        out = [p for m in mods if m is not None for p in m.parameters()]
        return out + [self.biases[n] for n in ROW if n in self.biases]

    def allreduce_replicated_grads(self) -> None:
        """Sum the replicated parameters' gradients over the group (each rank saw its rows)."""
        for p in self.replicated_parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, group=self.group)


def seq_shard(t: torch.Tensor, *, dim: int, tp: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous sequence rows of ``t`` along ``dim``."""
    if t.shape[dim] % tp:
        raise ValueError(f"seq_len: {t.shape[dim]} is not divisible by tp = {tp}")
    return t.chunk(tp, dim=dim)[rank]
