"""FlashAttention tiling, forward/backward costs, FLOP conventions and flash-decoding, by hand.

Toy case used throughout: Nq = Nkv = 8, d = 2, bf16, SRAM of 32 B = 16 elements, so
Br = Bc = 16 / (4 * 2) = 2: four query tiles and four key tiles.
"""

import pytest

from hwmodels.units import KiB, MiB, UserInputError
from kernels.attention import (
    DEFAULT_SRAM_BYTES,
    attention_bwd_cost,
    attention_bwd_flops,
    attention_fwd_cost,
    attention_fwd_flops,
    decode_attention_cost,
    flash_attention_tiling,
)

TOY = dict(seq_len_q=8, seq_len_kv=8, head_dim=2, sram_bytes=32, dtype="bf16")


def test_toy_tiling_full_attention():
    t = flash_attention_tiling(**TOY)
    assert (t.block_q, t.block_kv, t.num_q_blocks, t.num_kv_blocks) == (2, 2, 4, 4)
    assert t.num_computed_blocks == 16 and t.kv_passes == 4.0
    assert t.q_read_bytes == t.o_write_bytes == 8 * 2 * 2
    assert t.kv_read_bytes == 2 * (4 * 8) * 2 * 2  # K and V, 4 passes of 8 rows of 2 bf16
    assert t.lse_write_bytes == 8 * 4
    assert t.hbm_bytes == 32 + 256 + 32 + 32
    assert t.flops == 4 * 8 * 8 * 2


def test_toy_tiling_causal_skips_tiles_above_the_diagonal():
    t = flash_attention_tiling(**TOY, causal=True)
    assert t.num_computed_blocks == 1 + 2 + 3 + 4
    assert t.kv_read_bytes == 2 * (2 + 4 + 6 + 8) * 2 * 2
    assert t.flops == 4 * 2 * 2 * (2 + 4 + 6 + 8)  # computed tiles in full
    # executed work exceeds the model convention (N^2/2 pairs) by the masked half of the diagonal tiles
    model = attention_fwd_flops(
        batch=1, seq_len_q=8, seq_len_kv=8, num_heads=1, head_dim=2, causal=True
    )
    assert model == 4 * 2 * 32 and t.flops == model + 4 * 2 * 4 * 2


def test_toy_tiling_sliding_window():
    t = flash_attention_tiling(**TOY, causal=True, window=3)
    # query tiles [0,2) [2,4) [4,6) [6,8) need keys [0,2) [0,4) [2,6) [4,8)
    assert t.kv_read_bytes == 2 * (2 + 4 + 4 + 4) * 2 * 2
    with pytest.raises(UserInputError, match="^window:"):
        flash_attention_tiling(**TOY, causal=False, window=3)


def test_traffic_falls_as_sram_grows_and_reaches_the_compulsory_minimum():
    n, d = 4096, 128
    sizes = [16 * KiB * 2**i for i in range(8)]  # 16 KiB .. 2 MiB
    for causal in (False, True):
        traffic = [
            flash_attention_tiling(
                seq_len_q=n, seq_len_kv=n, head_dim=d, sram_bytes=s, causal=causal
            ).hbm_bytes
            for s in sizes
        ]
        assert all(a > b for a, b in zip(traffic, traffic[1:], strict=False)), traffic
    # Theta(N^2 d^2 / M): doubling M halves the K/V traffic (tiles divide N evenly here)
    kv = [
        flash_attention_tiling(seq_len_q=n, seq_len_kv=n, head_dim=d, sram_bytes=s).kv_read_bytes
        for s in sizes[:4]
    ]
    assert [kv[i] / kv[i + 1] for i in range(3)] == [2.0, 2.0, 2.0]
    whole = flash_attention_tiling(seq_len_q=n, seq_len_kv=n, head_dim=d, sram_bytes=4 * n * d * 2)
    assert whole.kv_passes == 1.0 and whole.num_q_blocks == 1
    # read Q, K, V once, write O (and the fp32 LSE) once
    assert whole.hbm_read_bytes == 3 * n * d * 2
    assert whole.hbm_write_bytes == n * d * 2 + 4 * n
    bigger = flash_attention_tiling(seq_len_q=n, seq_len_kv=n, head_dim=d, sram_bytes=64 * MiB)
    assert bigger.hbm_bytes == whole.hbm_bytes


def test_tiling_rejects_sram_too_small_for_the_head_dim():
    with pytest.raises(UserInputError, match="^sram_bytes:"):
        flash_attention_tiling(seq_len_q=64, seq_len_kv=64, head_dim=128, sram_bytes=1000)
    assert (
        flash_attention_tiling(seq_len_q=64, seq_len_kv=64, head_dim=128, sram_bytes=1024).block_q
        == 1
    )


def test_default_sram_tiles_for_h200():
    t = flash_attention_tiling(
        seq_len_q=65536, seq_len_kv=65536, head_dim=128, sram_bytes=DEFAULT_SRAM_BYTES
    )
    assert t.block_q == t.block_kv == 228 * 1024 // 2 // (4 * 128) == 228


def test_forward_cost_scales_flops_with_query_heads_and_kv_bytes_with_kv_heads():
    shape = dict(batch=3, seq_len_q=8, seq_len_kv=8, head_dim=2, causal=False, sram_bytes=32)
    mha = attention_fwd_cost(num_heads=4, num_kv_heads=4, **shape)
    gqa = attention_fwd_cost(num_heads=4, num_kv_heads=2, **shape)
    mqa = attention_fwd_cost(num_heads=4, num_kv_heads=1, **shape)
    assert mha.flops == gqa.flops == mqa.flops == 3 * 4 * 4 * 8 * 8 * 2
    q_o = 3 * 4 * 32
    for cost, kvh in ((mha, 4), (gqa, 2), (mqa, 1)):
        assert cost.hbm_read_bytes == q_o + 3 * kvh * 256
        assert cost.hbm_write_bytes == 3 * 4 * (32 + 32)
        assert cost.op_class == "attention_fwd"
    with pytest.raises(UserInputError, match="^num_kv_heads: 3 does not divide num_heads=4"):
        attention_fwd_cost(num_heads=4, num_kv_heads=3, **shape)


def test_causal_executed_flops_near_half_plus_diagonal():
    kw = dict(
        batch=1, seq_len_q=32768, seq_len_kv=32768, num_heads=32, num_kv_heads=8, head_dim=128
    )
    full = attention_fwd_cost(causal=False, **kw).flops
    causal = attention_fwd_cost(causal=True, **kw).flops
    model = attention_fwd_flops(
        batch=1, seq_len_q=32768, seq_len_kv=32768, num_heads=32, head_dim=128, causal=True
    )
    assert model == full / 2
    assert model < causal < model * 1.01  # diagonal tiles: Br / N = 228 / 32768 extra


def test_model_flop_conventions():
    kw = dict(batch=2, seq_len_q=1024, seq_len_kv=1024, num_heads=16, head_dim=64)
    full = attention_fwd_flops(causal=False, **kw)
    assert full == 4 * 2 * 16 * 1024 * 1024 * 64
    # the probe's convention: causal fwd = 4 s^2 d h / 2, fwd+bwd = 3.5x that
    causal = attention_fwd_flops(causal=True, **kw)
    assert causal == full / 2
    assert causal + attention_bwd_flops(causal=True, recompute=True, **kw) == 3.5 * causal
    assert attention_bwd_flops(causal=True, **kw) == 2 * causal
    # a decode-like query block at the end of a long context (bottom-right aligned)
    tail = attention_fwd_flops(
        batch=1, seq_len_q=1, seq_len_kv=100, num_heads=1, head_dim=1, causal=True
    )
    assert tail == 4 * 99.5
    win = attention_fwd_flops(
        batch=1, seq_len_q=8, seq_len_kv=8, num_heads=1, head_dim=1, causal=True, window=3
    )
    assert win == 4 * (1 + 2 + 3 * 6 - 8 / 2)


def test_backward_toy_bytes_and_flops():
    kw = dict(
        batch=1,
        seq_len_q=8,
        seq_len_kv=8,
        num_heads=1,
        num_kv_heads=1,
        head_dim=2,
        causal=False,
        sram_bytes=32,
    )
    b = attention_bwd_cost(**kw)
    fwd = attention_fwd_cost(**kw)
    assert b.reduce_dkv is None and len(b.kernels) == 3
    # D = rowsum(dO * O): read O, dO; write D and clear the fp32 dQ accumulator
    assert b.preprocess.hbm_read_bytes == 2 * 16 * 2
    assert b.preprocess.hbm_write_bytes == 4 * 8 + 4 * 16
    # main: 5 matmuls per tile = 2.5x forward
    assert b.main.flops == 2.5 * fwd.flops
    # 16 computed tiles x 2 query rows; per row: Q, dO (2 x 4 B), LSE, D (2 x 4 B), dQacc (8 B)
    assert b.main.hbm_read_bytes == 2 * 16 * 2 + 32 * 24
    assert b.main.hbm_write_bytes == 2 * 16 * 2 + 32 * 8
    assert (b.convert_dq.hbm_read_bytes, b.convert_dq.hbm_write_bytes) == (64, 32)
    total = b.total
    assert total.op_class == "attention_bwd" and total.hbm_bytes == sum(
        k.hbm_bytes for k in b.kernels
    )


def test_backward_gqa_reduces_expanded_dk_dv():
    kw = dict(
        batch=1, seq_len_q=8, seq_len_kv=8, num_heads=4, head_dim=2, causal=True, sram_bytes=32
    )
    mha = attention_bwd_cost(num_kv_heads=4, **kw)
    gqa = attention_bwd_cost(num_kv_heads=2, **kw)
    assert mha.main.flops == gqa.main.flops
    assert mha.main.hbm_read_bytes - gqa.main.hbm_read_bytes == 2 * 2 * 16 * 2  # K, V of 2 heads
    r = gqa.reduce_dkv
    assert r is not None and r.hbm_read_bytes == 4 * 2 * 32 and r.hbm_write_bytes == 2 * 2 * 32


def test_decode_reads_the_kv_cache_once():
    kw = dict(batch=2, context_len=10, num_heads=4, num_kv_heads=2, head_dim=8)
    d = decode_attention_cost(**kw)
    assert d.combine is None and d.split.op_class == "memory"
    assert d.split.flops == 4 * 2 * 4 * 10 * 8
    q = 2 * 4 * 8 * 2
    kv = 2 * (2 * 10 * 2 * 8) * 2
    assert d.split.hbm_read_bytes == q + kv and d.split.hbm_write_bytes == q
    s = decode_attention_cost(num_splits=4, **kw)
    partial = 2 * 4 * 4 * 4 * (8 + 1)
    assert s.split.hbm_read_bytes == q + kv and s.split.hbm_write_bytes == partial
    assert s.combine.hbm_read_bytes == partial and s.combine.hbm_write_bytes == q
    assert s.total.hbm_bytes == s.split.hbm_bytes + s.combine.hbm_bytes


def test_decode_quantized_cache_includes_scales():
    kw = dict(batch=2, context_len=10, num_heads=4, num_kv_heads=2, head_dim=8)
    q = 2 * 4 * 8 * 2
    # int8: 320 B of values + one fp16 scale per (token, kv head) = 40 x 2 B, for K and for V
    assert decode_attention_cost(kv_dtype="int8", **kw).split.hbm_read_bytes == q + 2 * (320 + 80)
    assert decode_attention_cost(kv_dtype="int4", **kw).split.hbm_read_bytes == q + 2 * (160 + 80)
    grouped = decode_attention_cost(kv_dtype="int4", kv_group_size=4, **kw)
    assert grouped.split.hbm_read_bytes == q + 2 * (160 + 160)
    assert decode_attention_cost(kv_dtype="fp8", **kw).split.hbm_read_bytes == q + 2 * (320 + 2)
    with pytest.raises(UserInputError, match="^num_splits:"):
        decode_attention_cost(num_splits=11, **kw)
