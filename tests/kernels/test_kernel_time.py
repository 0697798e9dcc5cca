"""Kernel time on a node: delegation to the hwmodels roofline, bounds, and predicted vs measured.

The measured side is validate/measurements/h200/microbench-h200-2026-11-28.json (H200, torch
2.11, kernels/microbench.py). F.scaled_dot_product_attention ran there with two backends; the
cuDNN one is what PyTorch picks by default on the H200 and what the 1xH200 profile is fitted to.
"""

import json
import pathlib

import pytest

from hwmodels.catalog import get_node
from hwmodels.compute import compute_time_s
from kernels.attention import attention_bwd_cost, attention_fwd_cost, decode_attention_cost
from kernels.cost import KernelCost, kernel_time_s, kernel_timing
from kernels.elementwise import rmsnorm_cost
from kernels.gemm import gemm_cost
from kernels.lm_head import lm_head_loss_cost

MICROBENCH = (
    pathlib.Path(__file__).resolve().parents[2]
    / "validate/measurements/h200/microbench-h200-2026-11-28.json"
)


@pytest.fixture(scope="module")
def h200():
    return get_node("1xH200")


def test_time_is_the_hwmodels_roofline(h200):
    c = gemm_cost(m=8192, n=4096, k=4096)
    assert kernel_time_s(c, h200) == compute_time_s(
        flops=c.flops, hbm_bytes=c.hbm_bytes, op_class="gemm", dtype="bf16", node=h200
    )
    copy = KernelCost(
        name="d2d",
        op_class="copy",
        flops=0.0,
        hbm_read_bytes=2**30,
        hbm_write_bytes=2**30,
        dtype="bf16",
    )
    assert kernel_time_s(copy, h200) == compute_time_s(
        flops=0.0, hbm_bytes=2**31, op_class="hbm_copy", dtype="bf16", node=h200
    )
    fp8 = gemm_cost(m=8192, n=4096, k=4096, dtype="fp8_e4m3")
    assert kernel_time_s(fp8, h200) == compute_time_s(
        flops=fp8.flops, hbm_bytes=fp8.hbm_bytes, op_class="gemm", dtype="fp8", node=h200
    )


def test_bounds(h200):
    big_gemm = kernel_timing(gemm_cost(m=65536, n=4096, k=4096), h200)
    assert big_gemm.bound == "compute" and big_gemm.time_s == big_gemm.compute_s
    norm = kernel_timing(rmsnorm_cost(num_tokens=65536, hidden_size=4096).fwd, h200)
    assert norm.bound == "memory" and norm.time_s == norm.memory_s
    decode = decode_attention_cost(
        batch=8, context_len=131072, num_heads=32, num_kv_heads=8, head_dim=128
    )
    assert kernel_timing(decode.split, h200).bound == "memory"
    attn = kernel_timing(
        attention_fwd_cost(
            batch=1,
            seq_len_q=65536,
            seq_len_kv=65536,
            num_heads=32,
            num_kv_heads=32,
            head_dim=128,
            causal=True,
        ),
        h200,
    )
    assert attn.bound == "compute"
    for t in (big_gemm, norm, attn):
        assert t.time_s == max(t.compute_s, t.memory_s)


def test_causal_attention_takes_about_half_the_time(h200):
    kw = dict(
        batch=1, seq_len_q=65536, seq_len_kv=65536, num_heads=32, num_kv_heads=8, head_dim=128
    )
    full = kernel_time_s(attention_fwd_cost(causal=False, **kw), h200)
    causal = kernel_time_s(attention_fwd_cost(causal=True, **kw), h200)
    assert 0.49 < causal / full < 0.52


def _records(op):
    data = json.loads(MICROBENCH.read_text())
    return [r for r in data["records"] if r["op"] == op and r.get("status", "ok") == "ok"]


def test_predicted_sdpa_within_15_percent_of_h200(h200):
    checked = 0
    for r in _records("sdpa"):
        if r["backend"] != "cudnn" or r["seq_len"] < 16384:
            continue  # below 16K the fixed per-kernel latency dominates: see the report table
        kw = dict(
            batch=r["batch"],
            seq_len_q=r["seq_len"],
            seq_len_kv=r["seq_len"],
            num_heads=r["num_heads"],
            num_kv_heads=r["num_kv_heads"],
            head_dim=r["head_dim"],
            causal=r["causal"],
            dtype=r["dtype"],
        )
        kernels = []
        if r["pass"] in ("fwd", "fwdbwd"):
            kernels.append(attention_fwd_cost(**kw))
        if r["pass"] in ("bwd", "fwdbwd"):
            kernels.extend(attention_bwd_cost(**kw).kernels)
        predicted = sum(kernel_time_s(k, h200) for k in kernels)
        assert predicted == pytest.approx(r["time_s"], rel=0.15), r
        checked += 1
    assert checked == 24


def test_predicted_gemm_within_15_percent_of_h200(h200):
    checked = 0
    for r in _records("gemm"):
        if r["m"] < 16384:
            continue
        predicted = kernel_time_s(gemm_cost(m=r["m"], n=r["n"], k=r["k"], dtype=r["dtype"]), h200)
        assert predicted == pytest.approx(r["time_s"], rel=0.15), r
        checked += 1
    assert checked >= 30


def test_predicted_cross_entropy_within_20_percent_of_h200(h200):
    records = _records("cross_entropy")
    assert records
    for r in records:
        c = lm_head_loss_cost(num_tokens=r["tokens"], hidden_size=4096, vocab_size=r["vocab"])
        kernels = [c.upcast_fwd, c.loss_fwd]
        if r["pass"] == "fwdbwd":
            kernels += [c.loss_bwd, c.upcast_bwd]
        predicted = sum(kernel_time_s(k, h200) for k in kernels)
        assert predicted == pytest.approx(r["time_s"], rel=0.20), r
