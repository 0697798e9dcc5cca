"""FlashAttention forward / backward and flash-decoding costs, with the SRAM tiling behind them.

Shape legend: B batch, H query heads, KVH key/value heads (H % KVH == 0, g = H / KVH),
Nq query length, Nkv key length, d head dim, Br x Bc a (query x key) tile.

Models:
- Tiling (Dao et al. 2022, Algorithm 1 / Theorem 2): a thread block holds a Q tile, a K tile, a V
  tile and an O tile in the SRAM of one SM, M elements in all, so Br = Bc = floor(M / (4 d)),
  capped at the sequence lengths. The loop order is FlashAttention-2's (Dao 2023): outer loop
  over the ceil(Nq / Br) query tiles, inner loop over K/V tiles, so Q is read and O (plus the
  fp32 log-sum-exp row statistics, LSE) written once, while K and V are read once per query tile:
  HBM traffic Theta(Nq Nkv d^2 / M). With SRAM large enough for whole sequences, the traffic is
  the compulsory minimum: read Q, K, V once, write O and LSE once.
- Masks: causal masks are bottom-right aligned (query i sits at key position i + Nkv - Nq, as in
  FlashAttention >= 2.1); ``window`` W is a causal sliding window (a query sees its W most recent
  keys, itself included). A tile is computed in full when any of its (query, key) pairs is
  unmasked and skipped otherwise, so the executed FLOPs of a causal kernel are about half of the
  full product plus the diagonal tiles.
- FLOPs count only the matmuls: forward Q K^T and P V, 2 * 2 * Br * Bc * d per computed tile
  (softmax exponentials are not counted, as in the FlashAttention papers and FlopCounterMode).
- Backward (FlashAttention-2): a pre-processing kernel computes D = rowsum(dO * O) and clears an
  fp32 dQ accumulator; the main kernel loops over K/V tiles (outer) and query tiles (inner),
  recomputes S = Q K^T and P, and does 4 more matmuls (dV += P^T dO, dP = dO V^T, dQ += dS K,
  dK += dS^T Q): 5 matmuls per tile = 2.5x the forward. It reads K, V once and writes dK, dV once,
  and per computed tile reads Q, dO, LSE, D and read-modify-writes the fp32 dQ accumulator
  (atomic adds). A last kernel converts dQ from fp32 to the model dtype. With GQA, FlashAttention-2
  writes dK and dV for every query head and sums each group afterwards (a separate reduction).
- GQA / MQA: FLOPs scale with H; K/V bytes scale with KVH (see Assumes).
- Flash-decoding (one new query token per sequence over a KV cache of L tokens): the cache is
  split into ``num_splits`` chunks processed in parallel; each writes a partial output in fp32
  and its LSE; a combine kernel rescales and sums them. The KV cache is read exactly once.
Assumes: one thread block per SM using all of its shared memory; the g query heads of a GQA group
share the K/V tiles they read (they run together and hit L2), so K/V re-reads are counted once per
KV head; dtype of Q, K, V, O, dO, dQ, dK, dV is ``dtype``; LSE, D and the dQ accumulator are fp32.
Ignores: L2 hits across query tiles (the IO analysis counts every pass over K and V; on GPUs with
a large L2 the measured traffic is lower), tile sizes chosen by a tuned table in real kernels
(FlashAttention-2 uses e.g. 128 x 64 tiles at d = 128), dropout, padding masks, the softmax
exponentials' cost (on Hopper the exp units can matter: FlashAttention-3 overlaps them).
Source: Dao, Fu, Ermon, Rudra, Re, "FlashAttention: Fast and Memory-Efficient Exact Attention
with IO-Awareness", NeurIPS 2022 (Algorithm 1, Theorem 2, Algorithm 4); Dao, "FlashAttention-2:
Faster Attention with Better Parallelism and Work Partitioning", 2023 (Algorithms 1-2, Sec. 3.1
on the FLOP count: backward 2.5x forward); Dao, Haziza, Massa, Sizov, "Flash-Decoding for
long-context inference", 2023; the flash-attention repository (csrc/flash_attn/flash_api.cpp:
dq_accum in fp32, dk/dv expanded per query head then summed for GQA).

FLOP conventions. ``attention_fwd_cost(...).flops`` is the work the kernel executes (tile
granularity). ``attention_fwd_flops`` is the "model FLOPs" convention used for MFU in tierplan,
in the FlashAttention benchmarks and in our H200 probe (reference/hwprobe.py): 4 B H d times the
number of unmasked (query, key) pairs, pairs on the diagonal counted one half, i.e. 4 B H Nq Nkv d
for full attention and exactly half of it for causal self-attention (Nq = Nkv). Backward model
FLOPs are 2x forward (``attention_bwd_flops``: the gradient matmuls only, as in the Megatron-LM
"3x forward per training step" convention); with ``recompute=True`` they are 2.5x (FlashAttention-2
recomputes Q K^T, the convention of the FlashAttention benchmarks, where fwd+bwd = 3.5x fwd).
A third convention counts the whole forward again as recomputation (3x, "hardware FLOPs" with
full activation recomputation); tierplan counts layer recomputation separately, never inside
attention. ``torch.utils.flop_counter.FlopCounterMode`` in torch 2.13 counts the fused SDPA kernels
as full (non-causal) attention, forward 4 B H Nq Nkv d and backward 2.5x that, and counts GQA by
query heads; the CPU flash kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no FLOP
formula and is counted as zero; the math path is counted through its bmm calls (full attention,
backward 2x). tests/kernels/test_kernels_flop_counter.py checks each of these.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from hwmodels.units import KiB, UserInputError
from kernels.cost import KernelCost, combine, dtype_bits, require_positive, tensor_bytes
from kernels.quant import kv_quantized_bytes

DEFAULT_SRAM_BYTES = 228 * KiB
"""Shared memory per SM of H100 / H200 (NVIDIA Hopper Tuning Guide: 228 KB per SM, 227 KB
usable by one thread block). Callers with a node pass ``node.gpu.sram_per_sm_bytes``."""

FP32_BYTES = 4
"""LSE, D and the dQ accumulator are fp32 in FlashAttention-2."""


def _check_heads(num_heads: int, num_kv_heads: int) -> None:
    require_positive("num_heads", num_heads)
    require_positive("num_kv_heads", num_kv_heads)
    if num_heads % num_kv_heads:
        raise UserInputError(f"num_kv_heads: {num_kv_heads} does not divide num_heads={num_heads}")


def _check_window(window: int | None, causal: bool) -> None:
    if window is None:
        return
    require_positive("window", window)
    if not causal:
        raise UserInputError("window: a sliding window is only modelled with causal=True")


class _BlockWork(NamedTuple):
    """Per query tile: rows, key rows read, and number of key tiles computed."""

    q_rows: np.ndarray
    kv_rows: np.ndarray
    kv_blocks: np.ndarray


def _block_work(
    *,
    seq_len_q: int,
    seq_len_kv: int,
    block_q: int,
    block_kv: int,
    causal: bool,
    window: int | None,
) -> _BlockWork:
    starts = np.arange(0, seq_len_q, block_q, dtype=np.int64)
    q_rows = np.minimum(starts + block_q, seq_len_q) - starts
    num_kv_blocks = math.ceil(seq_len_kv / block_kv)
    if not causal:
        kv_rows = np.full_like(starts, seq_len_kv)
        kv_blocks = np.full_like(starts, num_kv_blocks)
        return _BlockWork(q_rows, kv_rows, kv_blocks)
    offset = seq_len_kv - seq_len_q  # bottom-right aligned causal mask
    first_pos = starts + offset
    last_pos = starts + q_rows - 1 + offset
    hi = np.minimum(seq_len_kv - 1, last_pos)
    lo = np.maximum(0, first_pos - window + 1) if window is not None else np.zeros_like(hi)
    live = hi >= 0
    j_lo = lo // block_kv
    j_hi = np.where(live, hi, 0) // block_kv
    kv_rows = np.where(live, np.minimum(seq_len_kv, (j_hi + 1) * block_kv) - j_lo * block_kv, 0)
    kv_blocks = np.where(live, j_hi - j_lo + 1, 0)
    return _BlockWork(q_rows, kv_rows, kv_blocks)


class FlashTiling(NamedTuple):
    """FlashAttention tiling of one (batch, query head) pair and its HBM traffic."""

    block_q: int
    """Br: query rows per tile."""
    block_kv: int
    """Bc: key/value rows per tile."""
    num_q_blocks: int
    """ceil(Nq / Br): passes over K and V without masking."""
    num_kv_blocks: int
    """ceil(Nkv / Bc)."""
    num_computed_blocks: int
    """(query tile, key tile) pairs computed; masked-out pairs are skipped."""
    kv_passes: float
    """Average number of times K and V are read (key rows read / Nkv)."""
    flops: float
    """Forward matmul FLOPs executed for this head."""
    q_read_bytes: int
    """Q read once."""
    kv_read_bytes: int
    """K and V, read once per query tile (up to the mask)."""
    o_write_bytes: int
    """O written once."""
    lse_write_bytes: int
    """fp32 log-sum-exp per query row, written once (kept for the backward)."""

    @property
    def hbm_read_bytes(self) -> int:
        return self.q_read_bytes + self.kv_read_bytes

    @property
    def hbm_write_bytes(self) -> int:
        return self.o_write_bytes + self.lse_write_bytes

    @property
    def hbm_bytes(self) -> int:
        return self.hbm_read_bytes + self.hbm_write_bytes


def flash_attention_tiling(
    *,
    seq_len_q: int,
    seq_len_kv: int,
    head_dim: int,
    sram_bytes: int = DEFAULT_SRAM_BYTES,
    dtype: str = "bf16",
    causal: bool = False,
    window: int | None = None,
) -> FlashTiling:
    """Tile sizes and forward HBM traffic of one attention head for an SRAM of ``sram_bytes``.

    Br = Bc = floor(M / (4 d)) with M = sram_bytes / element size, capped at the sequence
    lengths (Dao et al. 2022, Algorithm 1, with equal tiles). Traffic in bytes:
    Q and O: Nq d each; LSE: 4 Nq; K and V: d * (key rows read per query tile, summed).
    """
    tiling, _ = _tiling(
        seq_len_q=seq_len_q,
        seq_len_kv=seq_len_kv,
        head_dim=head_dim,
        sram_bytes=sram_bytes,
        dtype=dtype,
        causal=causal,
        window=window,
    )
    return tiling


def _tiling(
    *,
    seq_len_q: int,
    seq_len_kv: int,
    head_dim: int,
    sram_bytes: int,
    dtype: str,
    causal: bool,
    window: int | None,
) -> tuple[FlashTiling, _BlockWork]:
    require_positive("seq_len_q", seq_len_q)
    require_positive("seq_len_kv", seq_len_kv)
    require_positive("head_dim", head_dim)
    require_positive("sram_bytes", sram_bytes)
    _check_window(window, causal)
    sram_elements = sram_bytes * 8 // dtype_bits(dtype)
    tile = sram_elements // (4 * head_dim)
    if tile < 1:
        raise UserInputError(
            f"sram_bytes: {sram_bytes} B cannot hold four {head_dim}-wide rows of {dtype} "
            f"(need at least {tensor_bytes(4 * head_dim, dtype)} B)"
        )
    block_q = min(tile, seq_len_q)
    block_kv = min(tile, seq_len_kv)
    work = _block_work(
        seq_len_q=seq_len_q,
        seq_len_kv=seq_len_kv,
        block_q=block_q,
        block_kv=block_kv,
        causal=causal,
        window=window,
    )
    kv_rows_read = int(work.kv_rows.sum())
    tiling = FlashTiling(
        block_q=block_q,
        block_kv=block_kv,
        num_q_blocks=len(work.q_rows),
        num_kv_blocks=math.ceil(seq_len_kv / block_kv),
        num_computed_blocks=int(work.kv_blocks.sum()),
        kv_passes=kv_rows_read / seq_len_kv,
        flops=4.0 * head_dim * float((work.q_rows * work.kv_rows).sum()),
        q_read_bytes=tensor_bytes(seq_len_q * head_dim, dtype),
        kv_read_bytes=2 * tensor_bytes(kv_rows_read * head_dim, dtype),
        o_write_bytes=tensor_bytes(seq_len_q * head_dim, dtype),
        lse_write_bytes=FP32_BYTES * seq_len_q,
    )
    return tiling, work


def _checked_tiling(
    *, batch: int, seq_len_q: int, seq_len_kv: int, num_heads: int, num_kv_heads: int,
    head_dim: int, sram_bytes: int | None, dtype: str, causal: bool, window: int | None,
) -> tuple[FlashTiling, _BlockWork]:
    """The checks and the per-head tiling that the forward and backward kernels share.

    Checks ``batch`` and the head counts (the rest is `_tiling`'s), then tiles one head for
    ``sram_bytes`` of SRAM (None: `DEFAULT_SRAM_BYTES`); the backward uses the forward's tiles.
    """
    require_positive("batch", batch)
    _check_heads(num_heads, num_kv_heads)
    return _tiling(
        seq_len_q=seq_len_q,
        seq_len_kv=seq_len_kv,
        head_dim=head_dim,
        sram_bytes=DEFAULT_SRAM_BYTES if sram_bytes is None else sram_bytes,
        dtype=dtype,
        causal=causal,
        window=window,
    )


def _unmasked_area(*, seq_len_q: int, seq_len_kv: int, causal: bool, window: int | None) -> float:
    """Unmasked (query, key) pairs, each pair on the diagonal counted one half.

    The query at row i sits at key position p = i + Nkv - Nq and sees min(p + 1, W) keys (none
    when p < 0). For causal Nq = Nkv = N this is N^2 / 2 exactly.
    """
    if not causal:
        return float(seq_len_q) * seq_len_kv
    cap = math.inf if window is None else window

    def visible(n: int) -> float:  # sum over x = 1..n of min(x, W)
        if n <= cap:
            return n * (n + 1) / 2
        return cap * (cap + 1) / 2 + cap * (n - cap)

    first = max(0, seq_len_kv - seq_len_q)  # rows with p < 0 see nothing
    return visible(seq_len_kv) - visible(first) - (seq_len_kv - first) / 2


def attention_fwd_flops(
    *,
    batch: int,
    seq_len_q: int,
    seq_len_kv: int,
    num_heads: int,
    head_dim: int,
    causal: bool,
    window: int | None = None,
) -> float:
    """Model FLOPs of attention forward: 4 B H d x (unmasked pairs, diagonal pairs counted half).

    Full attention: 4 B H Nq Nkv d. Causal self-attention: exactly half of that (the
    FlashAttention benchmark and MFU convention). See the module docstring.
    """
    for field, value in (
        ("batch", batch),
        ("seq_len_q", seq_len_q),
        ("seq_len_kv", seq_len_kv),
        ("num_heads", num_heads),
        ("head_dim", head_dim),
    ):
        require_positive(field, value)
    _check_window(window, causal)
    area = _unmasked_area(seq_len_q=seq_len_q, seq_len_kv=seq_len_kv, causal=causal, window=window)
    return 4.0 * batch * num_heads * head_dim * area


def attention_bwd_flops(
    *,
    batch: int,
    seq_len_q: int,
    seq_len_kv: int,
    num_heads: int,
    head_dim: int,
    causal: bool,
    window: int | None = None,
    recompute: bool = False,
) -> float:
    """Model FLOPs of attention backward: 2x forward, or 2.5x with ``recompute`` (Q K^T again)."""
    fwd = attention_fwd_flops(
        batch=batch,
        seq_len_q=seq_len_q,
        seq_len_kv=seq_len_kv,
        num_heads=num_heads,
        head_dim=head_dim,
        causal=causal,
        window=window,
    )
    return (2.5 if recompute else 2.0) * fwd


def attention_fwd_cost(
    *,
    batch: int,
    seq_len_q: int,
    seq_len_kv: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    causal: bool,
    dtype: str = "bf16",
    sram_bytes: int | None = None,
    window: int | None = None,
) -> KernelCost:
    """FlashAttention-2 forward kernel: executed FLOPs and HBM bytes (module docstring).

    FLOPs = B H x (per-head tile FLOPs); reads = B (H Q + KVH K,V passes); writes = B H (O + LSE).
    """
    tiling, _ = _checked_tiling(
        batch=batch, seq_len_q=seq_len_q, seq_len_kv=seq_len_kv, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, sram_bytes=sram_bytes, dtype=dtype,
        causal=causal, window=window,
    )
    return KernelCost(
        name="attention_fwd",
        op_class="attention_fwd",
        flops=batch * num_heads * tiling.flops,
        hbm_read_bytes=batch
        * (num_heads * tiling.q_read_bytes + num_kv_heads * tiling.kv_read_bytes),
        hbm_write_bytes=batch * num_heads * tiling.hbm_write_bytes,
        dtype=dtype,
    )


class AttentionBwdCosts(NamedTuple):
    """The kernels of a FlashAttention-2 backward, in launch order."""

    preprocess: KernelCost
    """D = rowsum(dO * O) (fp32) and clearing the fp32 dQ accumulator."""
    main: KernelCost
    """Recompute P, the four gradient matmuls, atomic dQ accumulation, dK / dV writes."""
    convert_dq: KernelCost
    """fp32 dQ accumulator -> dQ in the model dtype."""
    reduce_dkv: KernelCost | None
    """GQA only: sum the per-query-head dK, dV over each group; None when H == KVH."""

    @property
    def kernels(self) -> tuple[KernelCost, ...]:
        return tuple(k for k in self if k is not None)

    @property
    def total(self) -> KernelCost:
        return combine(self.kernels, name="attention_bwd")


def attention_bwd_cost(
    *,
    batch: int,
    seq_len_q: int,
    seq_len_kv: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    causal: bool,
    dtype: str = "bf16",
    sram_bytes: int | None = None,
    window: int | None = None,
) -> AttentionBwdCosts:
    """FlashAttention-2 backward: executed FLOPs (2.5x forward tile FLOPs) and HBM bytes.

    Uses the forward's tile sizes (Dao et al. 2022, Algorithm 4 sets Br, Bc as Algorithm 1).
    """
    tiling, work = _checked_tiling(
        batch=batch, seq_len_q=seq_len_q, seq_len_kv=seq_len_kv, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, sram_bytes=sram_bytes, dtype=dtype,
        causal=causal, window=window,
    )
    bh = batch * num_heads
    q_elems = seq_len_q * head_dim  # per head
    kv_elems = seq_len_kv * head_dim  # per head
    row_bytes = tensor_bytes(head_dim, dtype)
    preprocess = KernelCost(
        name="attention_bwd_preprocess",
        op_class="memory",
        flops=2.0 * bh * q_elems,
        hbm_read_bytes=bh * 2 * tensor_bytes(q_elems, dtype),  # O, dO
        hbm_write_bytes=bh * FP32_BYTES * (seq_len_q + q_elems),  # D; dQ accumulator cleared
        dtype=dtype,
    )
    # Query-side rows touched: every computed (query tile, key tile) pair reads its query rows.
    q_rows_streamed = int((work.q_rows * work.kv_blocks).sum())
    per_q_row_read = 2 * row_bytes + 2 * FP32_BYTES + FP32_BYTES * head_dim  # Q, dO, LSE, D, dQacc
    main = KernelCost(
        name="attention_bwd",
        op_class="attention_bwd",
        flops=2.5 * bh * tiling.flops,
        hbm_read_bytes=(
            batch * num_kv_heads * 2 * tensor_bytes(kv_elems, dtype)  # K, V once
            + bh * q_rows_streamed * per_q_row_read
        ),
        hbm_write_bytes=(
            bh * 2 * tensor_bytes(kv_elems, dtype)  # dK, dV (per query head)
            + bh * q_rows_streamed * FP32_BYTES * head_dim  # dQ accumulator updates
        ),
        dtype=dtype,
    )
    convert_dq = KernelCost(
        name="attention_bwd_convert_dq",
        op_class="memory",
        flops=0.0,
        hbm_read_bytes=bh * FP32_BYTES * q_elems,
        hbm_write_bytes=bh * tensor_bytes(q_elems, dtype),
        dtype=dtype,
    )
    reduce_dkv = None
    if num_heads != num_kv_heads:
        reduce_dkv = KernelCost(
            name="attention_bwd_reduce_dkv",
            op_class="memory",
            flops=2.0 * batch * (num_heads - num_kv_heads) * kv_elems,
            hbm_read_bytes=bh * 2 * tensor_bytes(kv_elems, dtype),
            hbm_write_bytes=batch * num_kv_heads * 2 * tensor_bytes(kv_elems, dtype),
            dtype=dtype,
        )
    return AttentionBwdCosts(preprocess, main, convert_dq, reduce_dkv)


class DecodeAttentionCosts(NamedTuple):
    """Flash-decoding kernels: the split-KV pass and, with more than one split, the combine."""

    split: KernelCost
    """Reads Q and the whole KV cache once; writes O (one split) or fp32 partials + LSE."""
    combine: KernelCost | None
    """Rescales and sums the partial outputs; None with one split."""

    @property
    def kernels(self) -> tuple[KernelCost, ...]:
        return tuple(k for k in self if k is not None)

    @property
    def total(self) -> KernelCost:
        return combine(self.kernels, name="decode_attention")


def decode_attention_cost(
    *,
    batch: int,
    context_len: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    num_splits: int | None = None,
    kv_group_size: int | None = None,
) -> DecodeAttentionCosts:
    """One decode step of attention (one query token per sequence) over ``context_len`` tokens.

    FLOPs = 4 B H L d (Q K^T and P V; dequantization arithmetic is not counted). The KV cache,
    2 B KVH L d elements of ``kv_dtype`` (default ``dtype``), is read once; int8 / int4 caches add
    one fp16 scale per token, KV head and ``kv_group_size`` channels (default: all d channels);
    fp8 caches use one scale per tensor. ``num_splits`` (default 1) is the flash-decoding split
    count; each split writes d + 1 fp32 values per (sequence, head) for the combine kernel. The
    split kernel is classed "memory": its arithmetic intensity is about g = H / KVH FLOPs per
    byte, far below any GPU's ridge point.
    """
    require_positive("batch", batch)
    require_positive("context_len", context_len)
    require_positive("head_dim", head_dim)
    _check_heads(num_heads, num_kv_heads)
    kv_dtype = kv_dtype or dtype
    num_splits = 1 if num_splits is None else require_positive("num_splits", num_splits)
    if num_splits > context_len:
        raise UserInputError(
            f"num_splits: {num_splits} splits exceed context_len={context_len} tokens"
        )
    scale_axis = {"int8": "token", "int4": "token", "fp8": "tensor"}.get(kv_dtype)
    if scale_axis is None:
        kv_cache_bytes = 2 * tensor_bytes(
            batch * context_len * num_kv_heads * head_dim, kv_dtype, field="kv_dtype"
        )
    else:
        kv_cache_bytes = 2 * kv_quantized_bytes(
            num_tokens=batch * context_len,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            kv_dtype=kv_dtype,
            scale_axis=scale_axis,
            group_size=kv_group_size,
        )
    bh = batch * num_heads
    q_bytes = bh * tensor_bytes(head_dim, dtype)
    partial_bytes = bh * num_splits * FP32_BYTES * (head_dim + 1)
    split = KernelCost(
        name="decode_attention",
        op_class="memory",
        flops=4.0 * bh * context_len * head_dim,
        hbm_read_bytes=q_bytes + kv_cache_bytes,
        hbm_write_bytes=q_bytes if num_splits == 1 else partial_bytes,
        dtype=dtype,
    )
    if num_splits == 1:
        return DecodeAttentionCosts(split, None)
    merge = KernelCost(
        name="decode_attention_combine",
        op_class="memory",
        flops=3.0 * bh * num_splits * head_dim,  # rescale by exp(lse_i - lse), multiply, add
        hbm_read_bytes=partial_bytes,
        hbm_write_bytes=q_bytes,
        dtype=dtype,
    )
    return DecodeAttentionCosts(split, merge)
