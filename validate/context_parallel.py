"""Context parallelism for validate.model's decoder layer: ring attention over a zigzag split.

Models: the sequence of T tokens cut into 2*cp chunks; rank r holds chunks r and 2cp-1-r (the
zigzag / round-robin split Megatron-LM and torchtitan use, so that every rank does the same
causal work). Everything in a layer but attention is per token and runs on the rank's rows;
attention is a ring (`ring_attention`): each rank keeps its queries, the key/value blocks travel
rank r -> r+1 (``batch_isend_irecv``, the next block posted before the current one is computed),
and each block's (output, log-sum-exp) pair is merged into the running one in fp32:
``lse = logaddexp(lse, lse_b)``, ``out = out e^(lse_old-lse) + out_b e^(lse_b-lse)``. A query
chunk i sees a key chunk m fully when m < i, causally when m == i, not at all when m > i, so a
rank computes two chunk pairs per ring step (three at step 0). Backward runs the ring again: each
block's dq, dk, dv from the block kernel's backward given the merged output and log-sum-exp (the
FlashAttention identity: P = exp(S - lse) is the block's slice of the global softmax), dq kept,
dk and dv travelling with the block and handed back to its owner after the last step.
Block kernels: on CUDA in bf16/fp16, FlashAttention (``aten._scaled_dot_product_flash_attention``
and its backward, which return and take the log-sum-exp); elsewhere (CPU, fp32) the same
arithmetic written out in fp32 (scores, masked log-sum-exp, softmax-weighted values).
Why not ``torch.distributed.tensor.experimental.context_parallel`` (torch 2.11's prototype): it
works by patching SDPA inside a context manager over DTensor buffers sharded on a DeviceMesh,
dispatching only to the CUDA flash / efficient / cuDNN kernels, so it cannot run the CPU/gloo
tests that keep this executor checked in CI; its default exchange all-gathers K and V (the ring
is an option); and the executor must place the rotary rows and the per-token work of its own
layer on the zigzag rows, which the prototype leaves to buffer rewriting.
Assumes: causal self-attention over one sequence per batch row, T divisible by 2*cp, query heads
a multiple of the key/value heads (GQA: K heads travel, expanded per block).
Ignores: sliding windows, attention masks other than causal, dropout, Ulysses (all-to-all).
Source: Liu et al., Ring Attention with Blockwise Transformers (2023); Megatron-LM and
torchtitan's load-balanced (zigzag) causal split; FlashAttention-2's backward.

Shapes: B batch, T tokens (Tl = T / cp on a rank, c = T / 2cp a chunk), H query heads, K kv
heads, D head_dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

aten = torch.ops.aten


# ---- the zigzag split -----------------------------------------------------------------------
def zigzag_positions(seq_len: int, cp: int, rank: int) -> torch.Tensor:
    """Token positions rank ``rank`` of ``cp`` holds: chunks ``rank`` and ``2cp-1-rank``."""
    if cp < 1 or not 0 <= rank < cp:
        raise ValueError(f"cp: rank {rank} of {cp}")
    if seq_len % (2 * cp):
        raise ValueError(f"seq_len: {seq_len} is not divisible by 2 * cp = {2 * cp}")
    c = seq_len // (2 * cp)
    first = torch.arange(rank * c, (rank + 1) * c)
    second = torch.arange((2 * cp - 1 - rank) * c, (2 * cp - rank) * c)
    return torch.cat([first, second])


def zigzag_shard(t: torch.Tensor, *, dim: int, cp: int, rank: int) -> torch.Tensor:
    """The rows of ``t`` along ``dim`` that rank ``rank`` holds (a copy)."""
    idx = zigzag_positions(t.shape[dim], cp, rank).to(t.device)
    return t.index_select(dim, idx)


# ---- block kernels: (out, lse) of q against one key block, and its backward -------------------
def _flash_ok(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


def _causal_mask(tq: int, tk: int, device: Any) -> torch.Tensor:
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)


def block_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool
              ) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, ...] | None]:
    """out [B,H,Tq,D] (q's dtype) and lse [B,H,Tq] (fp32) of q against k, v [B,H,Tk,D], and
    what the flash kernel's backward needs besides them (None for the fp32 arithmetic)."""
    if _flash_ok(q):
        res = aten._scaled_dot_product_flash_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), 0.0, causal, False)
        # (out, lse, cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset, debug)
        return res[0], res[1], tuple(res[2:8])
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale  # B H Tq Tk
    if causal:
        s = s.masked_fill(~_causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v.float())
    return out.to(q.dtype), lse, None


def block_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              out: torch.Tensor, lse: torch.Tensor, *, causal: bool, meta: tuple[Any, ...] | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (fp32) of one block given the MERGED out and lse of these query rows
    (``meta``: `block_fwd`'s third result for a block of this shape)."""
    if _flash_ok(q) and meta is not None:
        cum_q, cum_k, max_q, max_k, seed, offset = meta
        dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
            dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(),
            lse.contiguous(), cum_q, cum_k, max_q, max_k, 0.0, causal, seed, offset)
        return dq.float(), dk.float(), dv.float()
    scale = 1.0 / math.sqrt(q.shape[-1])
    q32, k32, v32, do32 = q.float(), k.float(), v.float(), dout.float()
    s = torch.matmul(q32, k32.transpose(-2, -1)) * scale
    if causal:
        s = s.masked_fill(~_causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    p = torch.exp(s - lse.unsqueeze(-1))  # B H Tq Tk, this block's slice of the softmax
    dv = torch.matmul(p.transpose(-2, -1), do32)
    dp = torch.matmul(do32, v32.transpose(-2, -1))
    delta = (do32 * out.float()).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = torch.matmul(ds, k32) * scale
    dk = torch.matmul(ds.transpose(-2, -1), q32) * scale
    return dq, dk, dv


def _merge(acc: tuple[torch.Tensor, torch.Tensor] | None, out: torch.Tensor, lse: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Running (out fp32, lse) merged with one block's."""
    if acc is None:
        return out.float(), lse
    a_out, a_lse = acc
    new = torch.logaddexp(a_lse, lse)
    merged = a_out * torch.exp(a_lse - new).unsqueeze(-1) + out.float() * torch.exp(lse - new).unsqueeze(-1)
    return merged, new


def _pairs(rank: int, src: int) -> list[tuple[int, int, bool]]:
    """(query chunk 0|1, key chunk 0|1, causal) of the rank's chunks against rank src's."""
    if src == rank:
        return [(0, 0, True), (1, 0, False), (1, 1, True)]
    if src < rank:
        return [(0, 0, False), (1, 0, False)]
    return [(1, 0, False), (1, 1, False)]


def _expand(t: torch.Tensor, groups: int) -> torch.Tensor:
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def _fold(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Gradient of `_expand`: sum over each group's query heads."""
    if groups == 1:
        return t
    b, h, n, d = t.shape
    return t.view(b, h // groups, groups, n, d).sum(2)


class _Ring:
    """Sends a flat buffer to rank+1 and receives one from rank-1 of ``group``."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.reqs: list[Any] = []
        self.incoming: torch.Tensor | None = None

    def start(self, buf: torch.Tensor) -> None:
        nxt = dist.get_global_rank(self.group, (self.rank + 1) % self.size)
        prv = dist.get_global_rank(self.group, (self.rank - 1) % self.size)
        self.incoming = torch.empty_like(buf)
        ops = [dist.P2POp(dist.isend, buf, nxt, self.group),
               dist.P2POp(dist.irecv, self.incoming, prv, self.group)]
        self.reqs = dist.batch_isend_irecv(ops)

    def wait(self) -> torch.Tensor:
        for r in self.reqs:
            r.wait()
        assert self.incoming is not None
        return self.incoming


def _split_kv(buf: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    n = math.prod(shape)
    return buf[:n].view(shape), buf[n:2 * n].view(shape)


class RingAttention(torch.autograd.Function):
    """Causal attention of the rank's zigzag rows against the whole sequence (see module doc)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: Any) -> torch.Tensor:
        ring = _Ring(group)
        rank, size = ring.rank, ring.size
        groups = q.shape[1] // k.shape[1]
        qc = q.chunk(2, dim=2)
        acc: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]
        kv = torch.cat([k.reshape(-1), v.reshape(-1)])
        for step in range(size):
            if step < size - 1:
                ring.start(kv)  # the next block travels while this one is computed
            kb, vb = _split_kv(kv, k.shape)
            kc, vc = kb.chunk(2, dim=2), vb.chunk(2, dim=2)
            for i, m, causal in _pairs(rank, (rank - step) % size):
                o, lse, meta = block_fwd(qc[i], _expand(kc[m], groups), _expand(vc[m], groups),
                                         causal=causal)
                acc[i] = _merge(acc[i], o, lse)
                ctx.meta = meta  # every block has the chunk shape: any one's serves backward
            if step < size - 1:
                kv = ring.wait()
        out32 = torch.cat([a[0] for a in acc if a is not None], dim=2)
        lse = torch.cat([a[1] for a in acc if a is not None], dim=2)
        out = out32.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group = group
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        ring, dring = _Ring(ctx.group), _Ring(ctx.group)
        rank, size = ring.rank, ring.size
        groups = q.shape[1] // k.shape[1]
        qc, oc, dc, lc = (t.chunk(2, dim=2) for t in (q, out, dout.contiguous(), lse))
        dq = [torch.zeros_like(c, dtype=torch.float32) for c in qc]
        kv = torch.cat([k.reshape(-1), v.reshape(-1)])
        dkv = torch.zeros(kv.numel(), dtype=torch.float32, device=kv.device)
        for step in range(size):
            if step < size - 1:
                ring.start(kv)
            kb, vb = _split_kv(kv, k.shape)
            kc, vc = kb.chunk(2, dim=2), vb.chunk(2, dim=2)
            dk, dv = _split_kv(dkv, k.shape)
            dkc, dvc = dk.chunk(2, dim=2), dv.chunk(2, dim=2)
            for i, m, causal in _pairs(rank, (rank - step) % size):
                gq, gk, gv = block_bwd(dc[i], qc[i], _expand(kc[m], groups), _expand(vc[m], groups),
                                       oc[i], lc[i].contiguous(), causal=causal, meta=ctx.meta)
                dq[i] += gq
                dkc[m].add_(_fold(gk, groups))
                dvc[m].add_(_fold(gv, groups))
            dring.start(dkv)  # this block's gradient goes on with it (to its owner after the last)
            dkv = dring.wait()
            if step < size - 1:
                kv = ring.wait()
        dk, dv = _split_kv(dkv, k.shape)
        return (torch.cat(dq, dim=2).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None)


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: Any = None) -> torch.Tensor:
    """q [B,H,Tl,D], k and v [B,K,Tl,D] of the rank's zigzag rows -> attention output [B,H,Tl,D]."""
    return RingAttention.apply(q, k, v, group if group is not None else dist.group.WORLD)


def cp_layer_forward(layer: Any, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                     group: Any = None) -> torch.Tensor:
    """``layer`` (validate.model.DecoderLayer) on the rank's zigzag rows ``x`` [B,Tl,h] with
    the rotary rows of those positions: attention through the ring, the rest per token."""
    layer.attn_fn = lambda q, k, v: ring_attention(q, k, v, group)
    try:
        return layer(x, rope)
    finally:
        layer.attn_fn = None
