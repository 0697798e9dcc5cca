"""Norms, rotary, activations, embedding, LM head + loss and KV quantization, by hand."""

import pytest

from hwmodels.units import UserInputError
from kernels.elementwise import (
    elementwise_cost,
    embedding_cost,
    gelu_cost,
    layernorm_cost,
    rmsnorm_cost,
    rotary_cost,
    silu_mul_cost,
    swiglu_cost,
)
from kernels.lm_head import lm_head_loss_cost
from kernels.quant import kv_dequantize_cost, kv_quantize_cost, kv_quantized_bytes


def test_elementwise_generic():
    c = elementwise_cost(
        num_elements=10,
        num_inputs=2,
        num_outputs=1,
        out_dtype="fp32",
        flops_per_element=3.0,
        extra_read_bytes=5,
        extra_write_bytes=7,
    )
    assert (c.op_class, c.flops) == ("memory", 30.0)
    assert c.hbm_read_bytes == 2 * 10 * 2 + 5 and c.hbm_write_bytes == 10 * 4 + 7


def test_rmsnorm_and_layernorm():
    f, b = rmsnorm_cost(num_tokens=4, hidden_size=8)
    assert f.hbm_read_bytes == 32 * 2 + 8 * 2  # x, w
    assert f.hbm_write_bytes == 32 * 2 + 4 * 4  # y, fp32 1/rms per row
    assert b.hbm_read_bytes == 4 * 32 * 2 + 8 * 2 + 4 * 4  # dy, x twice (two kernels), w, 1/rms
    assert b.hbm_write_bytes == 32 * 2 + 8 * 2  # dx, dw
    assert (
        rmsnorm_cost(num_tokens=4, hidden_size=8, grad_dtype="fp32").bwd.hbm_write_bytes == 64 + 32
    )
    lf, lb = layernorm_cost(num_tokens=4, hidden_size=8)
    assert lf.hbm_read_bytes == 64 + 2 * 16 and lf.hbm_write_bytes == 64 + 2 * 16
    assert lb.hbm_read_bytes == 4 * 64 + 16 + 2 * 16 and lb.hbm_write_bytes == 64 + 2 * 16
    assert layernorm_cost(num_tokens=4, hidden_size=8, bias=False).fwd.hbm_read_bytes == 64 + 16


def test_rotary_reads_q_k_and_tables():
    f, b = rotary_cost(num_tokens=5, num_heads=4, num_kv_heads=2, head_dim=8)
    qk = 5 * (4 + 2) * 8 * 2
    assert f.hbm_read_bytes == qk + 2 * 5 * 8 * 2 and f.hbm_write_bytes == qk
    assert f.flops == 3 * 5 * 6 * 8
    # the backward is the inverse rotation: same traffic and FLOPs
    assert b.name == "rotary_bwd"
    assert (b.flops, b.hbm_read_bytes, b.hbm_write_bytes) == (
        f.flops,
        f.hbm_read_bytes,
        f.hbm_write_bytes,
    )
    partial = rotary_cost(num_tokens=5, num_heads=4, num_kv_heads=2, head_dim=8, rotary_dim=4)
    assert partial.fwd.flops == 3 * 5 * 6 * 4 and partial.fwd.hbm_write_bytes == qk


def test_silu_mul_and_gelu():
    f, b = silu_mul_cost(num_tokens=3, intermediate_size=10)
    assert (f.hbm_read_bytes, f.hbm_write_bytes) == (2 * 30 * 2, 30 * 2)
    assert (b.hbm_read_bytes, b.hbm_write_bytes) == (3 * 30 * 2, 2 * 30 * 2)
    assert swiglu_cost is silu_mul_cost
    g = gelu_cost(num_elements=10)
    assert g.fwd.hbm_bytes == 40 and g.bwd.hbm_bytes == 60
    assert gelu_cost(num_elements=10, approximate="none").fwd.flops < g.fwd.flops
    with pytest.raises(UserInputError, match="^approximate:"):
        gelu_cost(num_elements=10, approximate="fast")


def test_embedding_backward_writes_a_full_size_gradient():
    f, b = embedding_cost(num_tokens=6, vocab_size=100, hidden_size=4)
    assert f.hbm_read_bytes == 6 * 8 + 6 * 4 * 2 and f.hbm_write_bytes == 6 * 4 * 2
    partial = 6 * 4 * 4  # fp32 per-token partial sums, written then read
    assert (
        b.hbm_write_bytes == 100 * 4 * 2 + partial + 6 * 4 * 2
    )  # zero-fill [V, H], partials, rows
    assert b.hbm_read_bytes == 6 * 8 + 2 * 6 * 4 * 2 + partial  # ids, dY, touched rows, partials
    fp32 = embedding_cost(num_tokens=6, vocab_size=100, hidden_size=4, grad_dtype="fp32").bwd
    assert fp32.hbm_write_bytes == 100 * 4 * 4 + partial + 6 * 4 * 4


def test_lm_head_loss_sizes_and_kernels():
    t, h, v = 16, 8, 100
    c = lm_head_loss_cost(num_tokens=t, hidden_size=h, vocab_size=v)
    assert c.logits_bytes == t * v * 2 and c.grad_logits_bytes == t * v * 2
    assert c.upcast_logits_bytes == c.log_probs_bytes == c.grad_loss_logits_bytes == t * v * 4
    assert c.head_fwd.flops == 2 * t * h * v
    assert c.upcast_fwd.hbm_read_bytes == t * v * 2 and c.upcast_fwd.hbm_write_bytes == t * v * 4
    assert c.loss_fwd.hbm_read_bytes == 3 * t * v * 4 + t * 8  # max, sum-exp, output passes
    assert c.loss_fwd.hbm_write_bytes == t * v * 4
    assert c.loss_bwd.hbm_read_bytes == 3 * t * v * 4 + t * 8
    assert c.loss_bwd.hbm_write_bytes == 2 * t * v * 4
    assert [k.name for k in c.fwd_kernels] == ["linear_fwd", "logits_upcast", "cross_entropy_fwd"]
    assert [k.name for k in c.bwd_kernels] == [
        "cross_entropy_bwd",
        "grad_logits_downcast",
        "linear_input_grad",
        "linear_weight_grad",
    ]
    no = lm_head_loss_cost(num_tokens=t, hidden_size=h, vocab_size=v, upcast_logits=False)
    assert no.upcast_fwd is None and no.upcast_logits_bytes == 0
    assert no.log_probs_bytes == t * v * 2 and len(no.fwd_kernels) == 2


def test_kv_quantization_bytes_and_kernels():
    kw = dict(num_tokens=20, num_kv_heads=2, head_dim=8)
    n = 20 * 2 * 8
    assert kv_quantized_bytes(kv_dtype="int8", **kw) == n + 20 * 2 * 2
    assert kv_quantized_bytes(kv_dtype="int4", group_size=4, **kw) == n // 2 + 20 * 2 * 2 * 2
    # KIVI keys: per-channel scales over groups of 4 tokens, with zero points
    assert (
        kv_quantized_bytes(
            kv_dtype="int4", scale_axis="channel", group_size=4, zero_point=True, **kw
        )
        == n // 2 + 2 * (2 * 8 * 5) * 2
    )
    assert (
        kv_quantized_bytes(kv_dtype="fp8", scale_axis="tensor", scale_dtype="fp32", **kw) == n + 4
    )
    q = kv_quantize_cost(kv_dtype="int8", **kw)
    d = kv_dequantize_cost(kv_dtype="int8", **kw)
    assert q.hbm_read_bytes == d.hbm_write_bytes == n * 2
    assert q.hbm_write_bytes == d.hbm_read_bytes == kv_quantized_bytes(kv_dtype="int8", **kw)
    with pytest.raises(UserInputError, match="^kv_dtype:"):
        kv_quantized_bytes(kv_dtype="bf16", **kw)
    with pytest.raises(UserInputError, match="^scale_axis:"):
        kv_quantized_bytes(kv_dtype="int8", scale_axis="row", **kw)


def test_kivi_layout_bytes_by_hand():
    """One layer, 2 sequences of 10 tokens, 2 KV heads, d = 8, groups of 4: 8 tokens quantized
    per sequence, the newest 2 in bf16."""
    from kernels.quant import kivi_dequantize_cost, kivi_layout, kivi_quantize_cost

    lay = kivi_layout(num_tokens=10, batch=2, num_kv_heads=2, head_dim=8, kv_dtype="int4", group_size=4)
    assert (lay.num_quantized_tokens, lay.num_residual_tokens, lay.value_group_size) == (8, 2, 4)
    codes = 2 * 8 * 2 * 8 // 2  # per tensor: 2 seqs x 8 tokens x 2 heads x 8 channels, two per byte
    key_meta = 2 * (2 * 8 * 2) * 2 * 2  # seqs x (heads x channels x 2 token groups) x (scale, zero) x bf16
    value_meta = 2 * (8 * 2 * 2) * 2 * 2  # seqs x (tokens x heads x 2 channel groups) x (scale, zero) x bf16
    assert lay.quantized_bytes == 2 * codes + key_meta + value_meta == 768
    assert lay.residual_bytes == 2 * 2 * 2 * 2 * 8 * 2  # K and V x seqs x 2 tokens x heads x d x bf16
    assert lay.dequantized_bytes == 2 * 2 * 10 * 2 * 8 * 2
    assert lay.total_bytes == lay.quantized_bytes + lay.residual_bytes
    int8 = kivi_layout(num_tokens=10, batch=2, num_kv_heads=2, head_dim=8, kv_dtype="int8", group_size=4)
    assert int8.quantized_bytes == 2 * 2 * codes + key_meta + value_meta
    # default group: head_dim tokens per key group, one value group per token and head
    dflt = kivi_layout(num_tokens=20, batch=1, num_kv_heads=1, head_dim=8, kv_dtype="int8")
    assert (dflt.group_size, dflt.num_quantized_tokens) == (8, 16)
    assert dflt.quantized_bytes == 2 * 16 * 8 + (8 * 2) * 2 * 2 + 16 * 2 * 2
    d = kivi_dequantize_cost(lay)
    assert d.hbm_read_bytes == lay.total_bytes and d.hbm_write_bytes == lay.dequantized_bytes
    q = kivi_quantize_cost(lay)
    assert q.hbm_read_bytes == lay.dequantized_bytes - lay.residual_bytes and q.hbm_write_bytes == 768
    with pytest.raises(UserInputError, match="^kv_dtype:"):
        kivi_layout(num_tokens=10, batch=1, num_kv_heads=1, head_dim=8, kv_dtype="fp8")
