"""Tests for simulator.trace: a training step traced on meta, checked by hand and against H200."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from hwmodels.units import GiB, MiB, UserInputError
from simulator._trace_kernels import embedding_backward_workspace_bytes
from simulator.trace import (
    CUBLAS_WORKSPACE_BYTES,
    layer_of_path,
    trace_flops,
    trace_training_step,
    traced_saved_bytes_by_layer,
)
from simulator.workload import Phase, Role, allocator_rounded_bytes, walk_memory


class Layer(nn.Module):
    """The reference probe's Llama-7B-shaped layer (reference/hwprobe.py), sizes as arguments."""

    def __init__(self, h=4096, f=11008, nh=32):
        super().__init__()
        self.nh = nh
        self.n1 = nn.RMSNorm(h)
        self.n2 = nn.RMSNorm(h)
        self.qkv = nn.Linear(h, 3 * h, bias=False)
        self.o = nn.Linear(h, h, bias=False)
        self.gu = nn.Linear(h, 2 * f, bias=False)
        self.d = nn.Linear(f, h, bias=False)

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, s, 3, self.nh, h // self.nh).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, h)
        x = x + self.o(a)
        g, u = self.gu(self.n2(x)).chunk(2, -1)
        return x + self.d(F.silu(g) * u)


class Stack(nn.Module):
    def __init__(self, n=4, **kw):
        super().__init__()
        self.layers = nn.ModuleList([Layer(**kw) for _ in range(n)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


B, S, H, FF, NH = 1, 256, 64, 128, 4  # toy shapes: batch, tokens, hidden, mlp, heads
D = H // NH


def _toy(n=2):
    with torch.device("meta"):
        return Stack(n, h=H, f=FF, nh=NH)


def _x(s=S, h=H):
    return lambda: torch.empty(B, s, h, dtype=torch.bfloat16, requires_grad=True)


def _ops(w, kind):
    return [op for op in w.ops if op.kind == kind]


def _bytes(w, tids):
    return sum(w.tensor(t).num_bytes for t in tids)


def test_layer_index_from_module_path():
    assert layer_of_path("model.layers.7.mlp.down_proj") == 7
    assert layer_of_path("layers.12") == 12
    assert layer_of_path("transformer.h.3.attn") == 3
    assert layer_of_path("lm_head") is None
    assert layer_of_path("model.norm") is None


def test_embedding_backward_workspace_only_on_the_sort_path():
    grad = torch.empty(1, 4096, 4096, device="meta")
    assert embedding_backward_workspace_bytes((grad, torch.empty(1, 4096, device="meta"))) == (
        64 * MiB
    )
    assert embedding_backward_workspace_bytes((grad, torch.empty(1, 3072, device="meta"))) == 0


def test_attention_allocates_like_cudnn_on_h200():
    w = trace_training_step(_toy(), _x())
    fwd = _ops(w, "_scaled_dot_product_cudnn_attention")
    bwd = _ops(w, "_scaled_dot_product_cudnn_attention_backward")
    assert len(fwd) == 2 and len(bwd) == 2  # one per layer, no S x S math path
    assert not _ops(w, "bmm") and not _ops(w, "_safe_softmax")
    # out bf16 [B,S,H] + logsumexp fp32 [B,NH,S,1] + two int64 philox scalars, all saved
    assert _bytes(w, fwd[0].allocs) == B * S * H * 2 + B * NH * S * 4 + 2 * 8
    assert {w.tensor(t).role for t in fwd[0].allocs} == {Role.ATTN_OUT, Role.ATTN_STAT}
    assert set(fwd[0].allocs) <= set(fwd[0].saves)
    # backward: dq, dk, dv stay; fp32 dq accumulator + fp32 softmax_d die inside the kernel
    op = bwd[0]
    workspace = [t for t in op.allocs if t in op.frees]
    assert _bytes(w, workspace) == B * S * H * 4 + B * NH * S * 4
    assert _bytes(w, set(op.allocs) - set(workspace)) == 3 * B * S * H * 2
    assert op.flops == sdpa_backward_flop_count(
        (B, NH, S, D), (B, NH, S, D), (B, NH, S, D), (B, NH, S, D)
    )
    assert fwd[0].flops == sdpa_flop_count((B, NH, S, D), (B, NH, S, D), (B, NH, S, D))


def test_flash_backend_rounds_like_flash_api():
    w = trace_training_step(_toy(), _x(s=200), attention_backend="flash")
    op = _ops(w, "_scaled_dot_product_flash_attention_backward")[0]
    workspace = [t for t in op.allocs if t in op.frees]
    s_rounded, d_rounded = 256, 32  # round to 128 tokens and to 32 head dims (D = 16)
    assert _bytes(w, workspace) == B * s_rounded * NH * d_rounded * 4 + B * NH * s_rounded * 4


class GQA(nn.Module):
    def __init__(self, kv_heads):
        super().__init__()
        self.kv_heads = kv_heads
        self.q = nn.Linear(H, H, bias=False)
        self.kv = nn.Linear(H, 2 * kv_heads * D, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, NH, D).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 2, self.kv_heads, D).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return a.transpose(1, 2).reshape(b, s, H)


def test_gqa_is_native_and_backward_expands_dk_dv():
    with torch.device("meta"):
        model = GQA(kv_heads=2)
    w = trace_training_step(model, _x())
    op = _ops(w, "_scaled_dot_product_cudnn_attention_backward")[0]
    workspace = [t for t in op.allocs if t in op.frees]
    kept = set(op.allocs) - set(workspace)
    assert _bytes(w, kept) == B * S * H * 2 + 2 * B * S * 2 * D * 2  # dq (NH heads), dk, dv (2)
    assert _bytes(w, workspace) == B * S * H * 4 + B * NH * S * 4 + 2 * B * S * H * 2
    assert not _ops(w, "repeat_interleave") and not _ops(w, "expand")


def test_rms_norm_is_the_fused_kernel():
    w = trace_training_step(_toy(1), _x())
    norms = _ops(w, "_fused_rms_norm")
    assert len(norms) == 2 and not _ops(w, "rsqrt")
    assert _bytes(w, norms[0].allocs) == B * S * H * 2 + B * S * 4  # output + fp32 rstd
    assert [w.tensor(t).role for t in norms[0].allocs] == [Role.NORM_OUT, Role.NORM_STAT]
    assert len(_ops(w, "_fused_rms_norm_backward")) == 2


def test_saved_bytes_per_layer_by_hand():
    saved = traced_saved_bytes_by_layer(_toy(2), _x())
    b, s, h, f = B, S, H, FF
    per_layer = sum(
        [
            b * s * h * 2,  # n1 input: the layer input (weights are not counted)
            b * s * 4,  # n1 rstd, fp32
            b * s * h * 2,  # qkv input (n1 output)
            b * s * 3 * h * 2,  # q, k, v: views of one qkv storage
            b * s * h * 2,  # attention output (also the o projection's input)
            b * NH * s * 4 + 2 * 8,  # logsumexp fp32, philox seed and offset
            b * s * h * 2,  # n2 input: the mid-layer residual
            b * s * 4,  # n2 rstd
            b * s * h * 2,  # gu input (n2 output)
            b * s * 2 * f * 2,  # gate/up output: silu saves g, mul saves u, one storage
            b * s * f * 2,  # silu(g)
            b * s * f * 2,  # silu(g) * u, the down projection's input
        ]
    )
    assert saved == {0: per_layer, 1: per_layer}


def test_grads_persist_or_are_allocated_in_backward():
    kept = trace_training_step(_toy(1), _x(), grads_persist=True)
    params = sum(p.numel() * 2 for p in _toy(1).parameters())
    grads_at_start = [kept.tensor(t) for t in kept.initial if kept.tensor(t).role == Role.GRAD]
    assert sum(t.num_bytes for t in grads_at_start) == params + B * S * H * 2  # + input grad
    assert all(t.persistent for t in grads_at_start)
    assert not any(kept.tensor(t).role == Role.GRAD for op in kept.ops for t in op.allocs)

    fresh = trace_training_step(_toy(1), _x(), grads_persist=False)
    grads = [
        fresh.tensor(t) for op in fresh.ops for t in op.allocs if fresh.tensor(t).role == Role.GRAD
    ]
    assert sum(t.num_bytes for t in grads) == params + B * S * H * 2
    assert not any(t.persistent for t in grads)
    assert walk_memory(fresh).final_bytes == walk_memory(kept).final_bytes


def test_cublas_workspaces_are_persistent_at_step_start():
    w = trace_training_step(_toy(1), _x())
    ws = [w.tensor(t) for t in w.initial if w.tensor(t).name.startswith("cublas_workspace")]
    assert [t.num_bytes for t in ws] == [CUBLAS_WORKSPACE_BYTES] * 2
    none = trace_training_step(_toy(1), _x(), cublas_workspace_bytes=0)
    assert walk_memory(w).peak_bytes - walk_memory(none).peak_bytes == 2 * 32 * MiB


def test_flops_match_flop_counter_mode_convention():
    model = _toy(2)
    w = trace_training_step(model, _x())
    with FlopCounterMode(display=False) as counter:  # math path on meta: mm + bmm for attention
        with torch.device("meta"):
            model(_x()()).float().pow(2).mean().backward()
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    gemm = sum(op.flops for op in w.ops if op.kind == "mm")
    assert gemm == counts["aten.mm"]
    attn = sum(op.flops for op in w.ops if op.op_class.startswith("attention"))
    shapes = ((B, NH, S, D),) * 3
    assert attn == 2 * (sdpa_flop_count(*shapes) + sdpa_backward_flop_count(*shapes, (B, NH, S, D)))
    phases = trace_flops(_toy(2), _x())
    # backward = 2x forward, plus the flash/cuDNN recompute of Q K^T (half an attention forward)
    assert phases["bwd"] == 2 * phases["fwd"] + 2 * 0.5 * sdpa_flop_count(*shapes)


def test_checkpointing_recomputes_each_layer_forward():
    plain = trace_training_step(_toy(2), _x(), grads_persist=True)
    ckpt = trace_training_step(_toy(2), _x(), grads_persist=True, checkpointing="full")
    phases = {op.phase for op in ckpt.ops}
    assert Phase.RECOMPUTE in phases
    rec = [op for op in ckpt.ops if op.phase == Phase.RECOMPUTE]
    assert {op.layer for op in rec} == {0, 1}
    fwd_flops = sum(op.flops for op in plain.ops if op.phase == Phase.FWD)
    # early-stopped recompute skips the last matmul (down_proj) of each layer
    assert sum(op.flops for op in rec) == fwd_flops - 2 * 2 * B * S * FF * H
    assert walk_memory(ckpt).peak_bytes < walk_memory(plain).peak_bytes
    # only each checkpointed layer's input is kept for backward
    assert traced_saved_bytes_by_layer(_toy(2), _x(), checkpointing="full") == {
        0: B * S * H * 2,
        1: B * S * H * 2,
    }


def test_backward_ops_carry_their_module_and_layer():
    w = trace_training_step(_toy(2), _x())
    bwd = [op for op in w.ops if op.phase == Phase.BWD and op.kind == "mm"]
    assert [op.layer for op in bwd][:2] == [1, 1] and bwd[-1].layer == 0
    assert bwd[0].name == "layers.1.d" and bwd[-1].name == "layers.0.qkv"


def test_walk_is_consistent():
    w = trace_training_step(_toy(2), _x(), grads_persist=True)
    walk = walk_memory(w)
    weights = sum(allocator_rounded_bytes(t.num_bytes) for t in w.tensors if t.role == Role.WEIGHT)
    assert walk.initial_bytes >= weights
    assert walk.peak_phase in (Phase.BWD, Phase.LOSS)
    # after the step only persistent tensors, the inputs and the held output/loss remain
    assert walk.final_bytes - walk.initial_bytes < 2 * B * S * H * 4


def test_bad_input_is_reported():
    with pytest.raises(UserInputError, match="meta"):
        trace_training_step(Stack(1, h=8, f=8, nh=2), _x(h=8))
    with pytest.raises(UserInputError, match="checkpointing"):
        trace_training_step(_toy(1), _x(), checkpointing="selective")
    with pytest.raises(UserInputError, match="attention_backend"):
        trace_training_step(_toy(1), _x(), attention_backend="math")
    with pytest.raises(UserInputError, match="model_output"):
        trace_training_step(_toy(1), _x(), model_output="held")


def test_a_freed_output_dies_before_backward_and_a_kept_one_after():
    """The toy stack returns its output; the default loss upcasts it (to_copy saves nothing),
    so a loop that drops it frees it in the loss phase, one that keeps it holds it to the end."""
    freed_in = {}
    for form in ("freed", "kept"):
        w = trace_training_step(_toy(1), _x(), model_output=form)
        last_fwd = [op for op in w.ops if op.phase == Phase.FWD][-1]
        stack_out = last_fwd.allocs[-1]  # the last layer's residual add
        freed_in[form] = [op.phase for op in w.ops if stack_out in op.frees]
    assert freed_in == {"freed": [Phase.LOSS], "kept": []}


def test_hugging_face_llama_traces_with_roles_and_loss():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    )
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)

    def inputs():
        ids = torch.zeros(1, S, dtype=torch.long)
        return {"input_ids": ids, "labels": ids}

    for mode in ("none", "full"):
        w = trace_training_step(model, inputs, checkpointing=mode)
        roles = {t.role for t in w.tensors}
        assert {
            Role.LOGITS,
            Role.LOGITS_FP32,
            Role.ATTN_OUT,
            Role.ATTN_QKV,
            Role.MLP_HIDDEN,
            Role.NORM_OUT,
            Role.LAYER_INPUT,
            Role.GRAD,
            Role.WEIGHT,
        } <= roles
        assert {op.layer for op in w.ops} == {None, 0, 1}
        assert any(op.phase == Phase.LOSS and op.kind == "_log_softmax" for op in w.ops)
        attn = _ops(w, "_scaled_dot_product_cudnn_attention")
        assert len(attn) == (2 if mode == "none" else 4)  # GQA native: no repeat_kv copies
        emb = _ops(w, "embedding_dense_backward")[0]
        assert not [t for t in emb.frees if t in emb.allocs]  # <= 3072 tokens: direct kernel
    assert model.config.use_cache is True  # restored after checkpointing


# Peak allocated bytes (max_memory_allocated) measured on one H200, torch 2.11.0+cu130, by
# /work/shared/reference/hwprobe.py: h200-probe-2026-11-28.json, baseline_4x_llama7b_layers,
# peak_GiB * 2**30. 4 probe layers, input requires grad, grads accumulate across repeats.
H200_PROBE_PEAK_BYTES = {
    (8192, "none"): 9148175360,
    (8192, "full"): 5328013312,
    (32768, "none"): 26676958208,
    (32768, "full"): 11396319232,
    (65536, "none"): 50048668672,
    (65536, "full"): 19487393792,
}


@pytest.mark.slow
@pytest.mark.parametrize("tokens,mode", sorted(H200_PROBE_PEAK_BYTES))
def test_probe_stack_peak_matches_h200(tokens, mode):
    with torch.device("meta"):
        model = Stack(4)
    # hwprobe.py's loop holds the stack output through backward
    w = trace_training_step(model, _x(s=tokens, h=4096), grads_persist=True, checkpointing=mode,
                            model_output="kept")
    measured = H200_PROBE_PEAK_BYTES[(tokens, mode)]
    peak = walk_memory(w).peak_bytes
    assert abs(peak - measured) / measured < 0.03, (peak / GiB, measured / GiB)


H200_DIR = Path(__file__).resolve().parents[2] / "validate" / "measurements" / "h200"
STEPS_H200 = (
    H200_DIR / "steps-h200-2026-11-28-r2.json",  # the kept loop (out = model(...))
    H200_DIR / "steps-loopform-h200-2026-12-02.json",  # both loop forms, once measured
)


def _hf_step_records():
    records = []
    for path in STEPS_H200:
        if path.exists():
            records += json.loads(path.read_text())["records"]
    return [r for r in records if r.get("status") == "ok" and not r["optimizer"]]


@pytest.mark.slow
@pytest.mark.parametrize(
    "record",
    _hf_step_records(),
    ids=lambda r: (f"{r['case']}-{r['seq_len']}-gc{int(r['gradient_checkpointing'])}"
                   f"-{r.get('model_output', 'kept')}"),
)
def test_hugging_face_step_peak_matches_h200(record):
    """validate/measure_steps.py on one H200: grads set to None before the step, no KV cache."""
    transformers = pytest.importorskip("transformers")
    cfg_dict = dict(record["config"])
    config = transformers.AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    tokens = record["seq_len"]

    def inputs():
        ids = torch.zeros(1, tokens, dtype=torch.long)
        return {"input_ids": ids, "labels": ids, "use_cache": False}

    mode = "full" if record["gradient_checkpointing"] else "none"
    walk = walk_memory(trace_training_step(model, inputs, checkpointing=mode,
                                           model_output=record.get("model_output", "kept")))
    measured = record["peak_allocated_bytes"]
    assert abs(walk.peak_bytes - measured) / measured < 0.03, (
        walk.peak_bytes / GiB,
        measured / GiB,
    )
    # what the step adds on top of weights and workspaces, to within 4 MiB
    added = record["peak_allocated_bytes"] - record["before_step_allocated_bytes"]
    assert abs((walk.peak_bytes - walk.initial_bytes) - added) < 4 * MiB
