"""KIVI-style quantized KV cache for the static decode engine: the stored tensors, quantize and
dequantize (plain torch everywhere; a Triton dequantization kernel on CUDA when triton imports).

Models: one layer's cache in the layout of ``kernels.quant.kivi_layout``: per sequence the
first ``floor(T / G) * G`` tokens quantized (int8, or int4 packed two per byte along the
channels), keys per channel (one scale and zero point per channel, KV head and group of G
tokens), values per token (one scale and zero point per token, KV head and group of
``min(G, D)`` channels), asymmetric min/max, unsigned codes ``round((x - zero) / scale)`` in
[0, 2^bits - 1], scales and zero points in bf16 (``kernels.quant.KIVI_SCALE_DTYPE``); the newest
``T mod G`` tokens stay in the model dtype (the residual window, kept by the engine on the GPU).
Dequantize computes ``code * scale + zero`` in fp32 and rounds once to the output dtype (the
Triton kernel and the torch path agree to that rounding; the GPU check compares them).
Assumes: D even (int4 packs channel pairs) and divisible by the value group; quantize and
dequantize address whole key groups only.
Ignores: fusing dequantization into attention (attention reads the bf16 buffer as the
unquantized engine does).
Source: Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024
(per-channel keys, per-token values, full-precision residual).

Shapes: B batch, L rows allocated (the final length's whole groups), n rows used, G key group,
K kv heads, D head_dim, Dp packed channels (D or D / 2), NV value groups per token (D / Gv).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hwmodels.units import UserInputError
from kernels.quant import KIVI_KV_DTYPES, kivi_group_size

BITS = {"int8": 8, "int4": 4}
CHUNK_GROUPS = 16
"""Key groups quantized / dequantized per torch step (bounds the fp32 temporaries: 16 x 128
tokens of one sequence at 8 KV heads x 128 channels are 8 MiB)."""


def qmax(kv_dtype: str) -> int:
    return (1 << BITS[kv_dtype]) - 1


@dataclass
class KiviStore:
    """One layer's quantized K and V rows (a pool's, a staging buffer's or resident ones)."""

    kq: torch.Tensor  # B L K Dp uint8
    km: torch.Tensor  # B L/G K D 2 (scale, zero) of the key groups
    vq: torch.Tensor  # B L K Dp uint8
    vm: torch.Tensor  # B L K NV 2 (scale, zero) of the value groups
    group_size: int

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.kq, self.km, self.vq, self.vm

    def rows(self, b0: int, b1: int, t0: int, t1: int) -> list[torch.Tensor]:
        """Views of rows [t0, t1) (whole groups) of sequences [b0, b1), one per tensor and
        sequence: each a contiguous block."""
        g = self.group_size
        out: list[torch.Tensor] = []
        for t, (a, z) in zip(self.tensors(), ((t0, t1), (t0 // g, t1 // g), (t0, t1), (t0, t1)), strict=True):
            out.extend(t[b, a:z] for b in range(b0, b1))
        return out

    def nbytes(self, b0: int, b1: int, t0: int, t1: int) -> int:
        return sum(v.numel() * v.element_size() for v in self.rows(b0, b1, t0, t1))


def check_format(kv_dtype: str, *, head_dim: int, group_size: int | None) -> tuple[int, int]:
    """(key group tokens, value group channels) of a cache this module can hold."""
    if kv_dtype not in KIVI_KV_DTYPES:
        raise UserInputError(f"kv_cache.dtype: {kv_dtype!r} is not executed (quantized: {', '.join(KIVI_KV_DTYPES)})")
    g = kivi_group_size(head_dim=head_dim, group_size=group_size)
    gv = min(g, head_dim)
    if head_dim % gv or head_dim % 2:
        raise UserInputError(f"kv_cache.group_size: {g} channels per value group must divide the head dim "
                             f"{head_dim} (an even number)")
    return g, gv


def alloc_store(alloc: Callable[[tuple[int, ...], torch.dtype], torch.Tensor], *, batch: int, num_rows: int,
                num_kv_heads: int, head_dim: int, kv_dtype: str, group_size: int | None,
                scale_dtype: torch.dtype = torch.bfloat16) -> KiviStore:
    """A store of ``num_rows`` rows (a multiple of the key group) per sequence; ``alloc(shape,
    dtype)`` makes each tensor (a pinned pool's slice or a device tensor)."""
    g, gv = check_format(kv_dtype, head_dim=head_dim, group_size=group_size)
    if num_rows % g:
        raise ValueError(f"num_rows {num_rows} is not a multiple of the key group {g}")
    dp = head_dim * BITS[kv_dtype] // 8
    B, L, K, D = batch, num_rows, num_kv_heads, head_dim
    return KiviStore(kq=alloc((B, L, K, dp), torch.uint8), km=alloc((B, L // g, K, D, 2), scale_dtype),
                     vq=alloc((B, L, K, dp), torch.uint8), vm=alloc((B, L, K, D // gv, 2), scale_dtype),
                     group_size=g)


# ---- torch quantize / dequantize ---------------------------------------------------------------

def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., D] -> [..., D] (8 bits) or [..., D / 2] (4 bits: channel 2c in the low
    nibble, 2c + 1 in the high one)."""
    if bits == 8:
        return codes
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return packed
    lo, hi = packed & 15, packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def _scale_zero(lo: torch.Tensor, hi: torch.Tensor, q: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (rounded to ``dtype``) of groups spanning [lo, hi]; the codes are then
    computed with the rounded ones, so dequantizing undoes exactly what was rounded."""
    zero = lo.to(dtype)
    scale = ((hi - zero.float()) / q).clamp_min(torch.finfo(torch.float32).tiny).to(dtype)
    return scale, zero


def quantize_keys(k: torch.Tensor, *, kv_dtype: str, group_size: int,
                  scale_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys k [b, n, K, D] (n a multiple of G) -> codes [b, n, K, Dp], meta [b, n/G, K, D, 2]."""
    b, n, K, D = k.shape
    g, q = group_size, qmax(kv_dtype)
    kg = k.float().view(b, n // g, g, K, D)
    scale, zero = _scale_zero(kg.amin(2), kg.amax(2), q, scale_dtype)
    codes = ((kg - zero.float()[:, :, None]) / scale.float()[:, :, None]).round_().clamp_(0, q).to(torch.uint8)
    return _pack(codes.view(b, n, K, D), BITS[kv_dtype]), torch.stack((scale, zero), dim=-1)


def quantize_values(v: torch.Tensor, *, kv_dtype: str, group_size: int,
                    scale_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Values v [b, n, K, D] -> codes [b, n, K, Dp], meta [b, n, K, D/Gv, 2]."""
    b, n, K, D = v.shape
    gv, q = min(group_size, D), qmax(kv_dtype)
    vg = v.float().view(b, n, K, D // gv, gv)
    scale, zero = _scale_zero(vg.amin(-1), vg.amax(-1), q, scale_dtype)
    codes = ((vg - zero.float()[..., None]) / scale.float()[..., None]).round_().clamp_(0, q).to(torch.uint8)
    return _pack(codes.view(b, n, K, D), BITS[kv_dtype]), torch.stack((scale, zero), dim=-1)


def dequantize_keys(codes: torch.Tensor, meta: torch.Tensor, *, kv_dtype: str, group_size: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``quantize_keys``: [b, n, K, D] in ``dtype``."""
    c = _unpack(codes, BITS[kv_dtype]).float()
    b, n, K, D = c.shape
    g = group_size
    out = c.view(b, n // g, g, K, D) * meta[..., 0].float()[:, :, None] + meta[..., 1].float()[:, :, None]
    return out.view(b, n, K, D).to(dtype)


def dequantize_values(codes: torch.Tensor, meta: torch.Tensor, *, kv_dtype: str, group_size: int,
                      dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``quantize_values``: [b, n, K, D] in ``dtype``."""
    c = _unpack(codes, BITS[kv_dtype]).float()
    b, n, K, D = c.shape
    gv = min(group_size, D)
    out = c.view(b, n, K, D // gv, gv) * meta[..., 0].float()[..., None] + meta[..., 1].float()[..., None]
    return out.view(b, n, K, D).to(dtype)


def quantize_into(store: KiviStore, k: torch.Tensor, v: torch.Tensor, *, kv_dtype: str, b0: int, t0: int,
                  t1: int) -> None:
    """Quantize rows [t0, t1) (whole groups) of k, v [b, >= t1, K, D] of sequences
    [b0, b0 + b) into ``store``'s rows [t0, t1)."""
    g = store.group_size
    b = k.shape[0]
    step = CHUNK_GROUPS * g
    for a in range(t0, t1, step):
        z = min(a + step, t1)
        kq, km = quantize_keys(k[:, a:z], kv_dtype=kv_dtype, group_size=g, scale_dtype=store.km.dtype)
        vq, vm = quantize_values(v[:, a:z], kv_dtype=kv_dtype, group_size=g, scale_dtype=store.vm.dtype)
        store.kq[b0 : b0 + b, a:z].copy_(kq)
        store.km[b0 : b0 + b, a // g : z // g].copy_(km)
        store.vq[b0 : b0 + b, a:z].copy_(vq)
        store.vm[b0 : b0 + b, a:z].copy_(vm)


def dequantize_into(store: KiviStore, kout: torch.Tensor, vout: torch.Tensor, *, kv_dtype: str, b0: int, b1: int,
                    n: int, use_triton: bool | None = None) -> None:
    """Rows [:n] (whole groups) of sequences [b0, b1) of ``store`` into kout, vout [B, >= n, K, D]
    (same sequences' rows): the Triton kernel on CUDA when it imports (``use_triton`` None),
    else torch in chunks of ``CHUNK_GROUPS`` groups."""
    if n <= 0:
        return
    if use_triton is None:
        use_triton = kout.is_cuda and triton_available()
    if use_triton:
        triton_dequantize(store, kout, vout, kv_dtype=kv_dtype, b0=b0, b1=b1, n=n)
        return
    g = store.group_size
    step = CHUNK_GROUPS * g
    for a in range(0, n, step):
        z = min(a + step, n)
        kout[b0:b1, a:z].copy_(dequantize_keys(store.kq[b0:b1, a:z], store.km[b0:b1, a // g : z // g],
                                               kv_dtype=kv_dtype, group_size=g, dtype=kout.dtype))
        vout[b0:b1, a:z].copy_(dequantize_values(store.vq[b0:b1, a:z], store.vm[b0:b1, a:z],
                                                 kv_dtype=kv_dtype, group_size=g, dtype=vout.dtype))


# ---- Triton (CUDA) -------------------------------------------------------------------------------

_TRITON: dict[str, Any] = {}


def triton_available() -> bool:
    """Whether triton imports (it is installed with CUDA torch; not on the CPU CI machine)."""
    if "ok" not in _TRITON:
        try:
            _TRITON["kernel"] = _build_triton_kernel()
            _TRITON["ok"] = True
        except ImportError:
            _TRITON["ok"] = False
    return bool(_TRITON["ok"])


def _build_triton_kernel() -> Any:
    import triton  # type: ignore[import-not-found]
    import triton.language as tl  # type: ignore[import-not-found]

    @triton.jit
    def dequant_kernel(q_ptr, m_ptr, out_ptr, n_rows, n_tok, num_kv_heads, q_bstride, m_bstride, o_bstride,
                       G: tl.constexpr, GV: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr,
                       PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr):
        # one row = the D channels of one (sequence, token, kv head); BLOCK_R rows per program
        rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        rmask = rows < n_rows
        h = rows % num_kv_heads
        t = (rows // num_kv_heads) % n_tok
        b = rows // (num_kv_heads * n_tok)
        c = tl.arange(0, D)
        tk = (t * num_kv_heads + h)[:, None]
        if BITS == 8:
            code = tl.load(q_ptr + b[:, None] * q_bstride + tk * D + c[None, :], mask=rmask[:, None], other=0)
            qv = code.to(tl.float32)
        else:
            byte = tl.load(q_ptr + b[:, None] * q_bstride + tk * (D // 2) + (c // 2)[None, :],
                           mask=rmask[:, None], other=0).to(tl.int32)
            qv = ((byte >> ((c % 2) * 4)[None, :]) & 15).to(tl.float32)
        # (scale, zero) as one 32-bit word: scale's bf16 bits low, zero's high (little endian)
        if PER_CHANNEL:
            moff = b[:, None] * m_bstride + ((t // G) * num_kv_heads + h)[:, None] * D + c[None, :]
        else:
            moff = b[:, None] * m_bstride + tk * (D // GV) + (c // GV)[None, :]
        w = tl.load(m_ptr + moff, mask=rmask[:, None], other=0)
        s = (w << 16).to(tl.float32, bitcast=True)
        z = ((w >> 16) << 16).to(tl.float32, bitcast=True)
        out = qv * s + z
        tl.store(out_ptr + b[:, None] * o_bstride + tk * D + c[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=rmask[:, None])

    return dequant_kernel


TRITON_BLOCK_ROWS = 32


def triton_dequantize(store: KiviStore, kout: torch.Tensor, vout: torch.Tensor, *, kv_dtype: str, b0: int, b1: int,
                      n: int) -> None:
    """``dequantize_into`` by the Triton kernel: one launch for K, one for V."""
    if not triton_available():
        raise UserInputError("triton: not importable here (the torch path needs no triton)")
    kernel = _TRITON["kernel"]
    _, _, K, D = kout.shape
    if D & (D - 1):
        raise UserInputError(f"model.head_dim: the Triton dequantization needs a power of two, got {D}")
    g = store.group_size
    gv = min(g, D)
    rows = (b1 - b0) * n * K
    grid = (-(-rows // TRITON_BLOCK_ROWS),)
    if store.km.dtype != torch.bfloat16:
        raise ValueError("triton_dequantize: scales and zero points must be bf16")
    for q, m, out, per_channel in ((store.kq, store.km, kout, True), (store.vq, store.vm, vout, False)):
        for t in (q, m, out):
            if not t[0].is_contiguous():
                raise ValueError("triton_dequantize: each sequence's rows must be contiguous")
        m32 = m.view(torch.int32)  # [..., 2] bf16 -> [..., 1] words
        kernel[grid](q[b0], m32[b0], out[b0], rows, n, K, q.stride(0), m32.stride(0), out.stride(0),
                     G=g, GV=gv, D=D, BITS=BITS[kv_dtype], PER_CHANNEL=per_channel, BLOCK_R=TRITON_BLOCK_ROWS)
