"""Our FLOP counts against torch.utils.flop_counter.FlopCounterMode (torch 2.13, CPU / meta).

What FlopCounterMode counts (read from torch/utils/flop_counter.py and checked here):
- mm / addmm / bmm: 2 m n k (bias adds not counted);
- the fused SDPA kernels that run on GPUs (_scaled_dot_product_flash_attention and friends):
  forward 4 B H Nq Nkv d with H = query heads (GQA counted by query heads) and *no* causal
  discount; backward 2.5x that (the recomputation of Q K^T included);
- the CPU flash kernel (_scaled_dot_product_flash_attention_for_cpu, what F.sdpa runs on CPU by
  default) has no formula: its FLOPs are counted as 0;
- the math backend is counted through its bmm calls: full attention, backward 2x forward.
The fused GPU kernels are reached on the meta device by calling the aten ops directly.
"""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from kernels.attention import (  # noqa: E402
    attention_bwd_cost,
    attention_bwd_flops,
    attention_fwd_cost,
    attention_fwd_flops,
)
from kernels.cost import MATMUL_OP_CLASSES  # noqa: E402
from kernels.elementwise import rmsnorm_cost, rotary_cost, silu_mul_cost  # noqa: E402
from kernels.gemm import linear_bwd_costs, linear_fwd_cost  # noqa: E402

aten = torch.ops.aten


def _count(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def test_linear_forward_and_backward():
    torch.manual_seed(0)
    layer = nn.Linear(8, 12, bias=True)
    x = torch.randn(2, 5, 8, requires_grad=True)
    fwd_cost = linear_fwd_cost(num_tokens=10, in_features=8, out_features=12, bias=True)
    bwd = linear_bwd_costs(num_tokens=10, in_features=8, out_features=12, bias=True)
    counter = FlopCounterMode(display=False)
    with counter:
        y = layer(x)
    assert counter.get_total_flops() == fwd_cost.flops == 2 * 10 * 8 * 12
    assert _count(lambda: y.sum().backward()) == bwd.input_grad.flops + bwd.weight_grad.flops
    x2 = torch.randn(2, 5, 8)  # input without grad: only the weight-grad GEMM runs
    y2 = layer(x2)
    no_dx = linear_bwd_costs(
        num_tokens=10, in_features=8, out_features=12, input_requires_grad=False
    )
    assert _count(lambda: y2.sum().backward()) == no_dx.weight_grad.flops


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_sdpa_kernels_count_full_attention_by_query_heads(causal, num_kv_heads):
    b, h, s, d = 2, 4, 64, 16
    q = torch.empty(b, h, s, d, device="meta")
    k = torch.empty(b, num_kv_heads, s, d, device="meta")
    v = torch.empty(b, num_kv_heads, s, d, device="meta")
    result = {}

    def fwd():
        result["out"] = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal)

    counted_fwd = _count(fwd)
    o, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = result["out"]
    counted_bwd = _count(
        lambda: aten._scaled_dot_product_flash_attention_backward(
            o, q, k, v, o, lse, cum_q, cum_k, max_q, max_k, 0.0, causal, seed, offset
        )
    )
    shape = dict(batch=b, seq_len_q=s, seq_len_kv=s, num_heads=h, head_dim=d)
    full = attention_fwd_flops(causal=False, **shape)
    # FlopCounterMode ignores the causal mask: it reports twice the causal model FLOPs
    assert counted_fwd == full
    if causal:
        assert counted_fwd == 2 * attention_fwd_flops(causal=True, **shape)
    # its backward counts the recomputation: 2.5x forward
    assert counted_bwd == attention_bwd_flops(causal=False, recompute=True, **shape) == 2.5 * full
    # our executed FLOPs of the non-causal kernels are exactly its numbers
    cost_kw = dict(num_kv_heads=num_kv_heads, causal=False, **shape)
    assert attention_fwd_cost(**cost_kw).flops == counted_fwd
    assert attention_bwd_cost(**cost_kw).main.flops == counted_bwd


def test_cpu_flash_kernel_is_not_counted():
    """F.sdpa on CPU runs _scaled_dot_product_flash_attention_for_cpu, which FlopCounterMode
    has no formula for: tracing a model on CPU without forcing the math backend loses all
    attention FLOPs."""
    q = torch.randn(1, 2, 32, 8)
    assert _count(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)) == 0
    with sdpa_kernel([SDPBackend.MATH]):
        assert _count(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)) > 0


@pytest.mark.parametrize("num_kv_heads", [4, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_math_sdpa_counts_full_attention_and_2x_backward(causal, num_kv_heads):
    b, h, s, d = 2, 4, 32, 8
    q = torch.randn(b, h, s, d, requires_grad=True)
    k = torch.randn(b, num_kv_heads, s, d, requires_grad=True)
    v = torch.randn(b, num_kv_heads, s, d, requires_grad=True)
    out = {}

    def fwd():
        with sdpa_kernel([SDPBackend.MATH]):
            out["o"] = F.scaled_dot_product_attention(
                q, k, v, is_causal=causal, enable_gqa=num_kv_heads != h
            )

    counted_fwd = _count(fwd)
    counted_bwd = _count(lambda: out["o"].sum().backward())
    shape = dict(batch=b, seq_len_q=s, seq_len_kv=s, num_heads=h, head_dim=d)
    assert counted_fwd == attention_fwd_flops(causal=False, **shape)
    assert counted_bwd == attention_bwd_flops(causal=False, recompute=False, **shape)


class _RMSNorm(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + 1e-6)).to(x.dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class _LlamaBlock(nn.Module):
    """Norm, fused qkv, rotary, SDPA (GQA, causal), o, norm, SwiGLU MLP: B T N H D shapes."""

    def __init__(self, hidden=64, heads=4, kv_heads=2, inter=96):
        super().__init__()
        self.h, self.kv, self.d = heads, kv_heads, hidden // heads
        self.n1, self.n2 = _RMSNorm(hidden), _RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, (heads + 2 * kv_heads) * self.d, bias=False)
        self.o = nn.Linear(heads * self.d, hidden, bias=False)
        self.gate_up = nn.Linear(hidden, 2 * inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):  # x: [B, T, hidden]
        b, t, _ = x.shape
        qkv = self.qkv(self.n1(x)).view(b, t, self.h + 2 * self.kv, self.d).transpose(1, 2)
        q, k, v = qkv.split([self.h, self.kv, self.kv], dim=1)  # [B, N, T, D]
        pos = torch.arange(t, dtype=torch.float32)
        inv = 1.0 / (10000 ** (torch.arange(0, self.d, 2, dtype=torch.float32) / self.d))
        ang = torch.cat([torch.outer(pos, inv)] * 2, dim=-1)  # [T, D]
        cos, sin = ang.cos(), ang.sin()
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, self.h * self.d))
        g, u = self.gate_up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


def test_llama_block_sum_of_ops_equals_flop_counter():
    torch.manual_seed(0)
    b, t, hidden, heads, kv, inter = 2, 16, 64, 4, 2, 96
    d = hidden // heads
    block = _LlamaBlock(hidden, heads, kv, inter)
    x = torch.randn(b, t, hidden, requires_grad=True)
    n = b * t
    linears = [
        (hidden, (heads + 2 * kv) * d),
        (heads * d, hidden),
        (hidden, 2 * inter),
        (inter, hidden),
    ]
    shape = dict(batch=b, seq_len_q=t, seq_len_kv=t, num_heads=heads, head_dim=d)
    # Per-op costs of the block's forward, in execution order.
    fwd_ops = [
        rmsnorm_cost(num_tokens=n, hidden_size=hidden).fwd,
        linear_fwd_cost(num_tokens=n, in_features=hidden, out_features=linears[0][1]),
        rotary_cost(num_tokens=n, num_heads=heads, num_kv_heads=kv, head_dim=d).fwd,
        # the math backend's convention: full attention (see test_math_sdpa_*)
        attention_fwd_cost(num_kv_heads=kv, causal=False, **shape),
        linear_fwd_cost(num_tokens=n, in_features=heads * d, out_features=hidden),
        rmsnorm_cost(num_tokens=n, hidden_size=hidden).fwd,
        linear_fwd_cost(num_tokens=n, in_features=hidden, out_features=2 * inter),
        silu_mul_cost(num_tokens=n, intermediate_size=inter).fwd,
        linear_fwd_cost(num_tokens=n, in_features=inter, out_features=hidden),
    ]
    # FlopCounterMode counts matmul FLOPs only: norms, rotary and SiLU*mul count zero.
    ours_fwd = sum(c.flops for c in fwd_ops if c.op_class in MATMUL_OP_CLASSES)
    assert ours_fwd == sum(2 * n * i * o for i, o in linears) + attention_fwd_flops(
        causal=False, **shape
    )
    out = {}

    def fwd():
        with sdpa_kernel([SDPBackend.MATH]):
            out["y"] = block(x)

    assert _count(fwd) == ours_fwd
    bwd_ops = [
        k for i, o in linears for k in linear_bwd_costs(num_tokens=n, in_features=i, out_features=o)
    ]
    ours_bwd = sum(k.flops for k in bwd_ops) + attention_bwd_flops(causal=False, **shape)
    with sdpa_kernel([SDPBackend.MATH]):
        assert _count(lambda: out["y"].sum().backward()) == ours_bwd
