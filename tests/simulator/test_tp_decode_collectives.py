"""Tensor-parallel decode: the layers' collectives at the NCCL model's small-message time."""

import pytest

from hwmodels.catalog import load_node
from hwmodels.collectives import collective_time_s, num_steps
from simulator.inference import _is_kernel, _kernel_gpu_s, decode_segments
from simulator.job import InferJob, Parallelism
from simulator.model import get_model
from simulator.templates import decode_workload

NODE = load_node("8xH200")
CTX = 8192 + 128


def test_70b_tp8_decode_collective_share():
    """Llama-3.1-70B, TP 8 on 8xH200, batch 1 at 8K: two all-reduces of one token's hidden
    state (8192 x bf16 = 16 KiB) per layer, 160 per token, in the step's stream order. At NCCL's
    LL latency (15.2 us each) that is 2.4 ms of a 16 ms step; the 2-GPU fit's 14.7 us per ring
    step made each 207 us and the 160 of them 33 ms, two thirds of the step."""
    model = get_model("llama-3.1-70b")
    job = InferJob(prompt_len=8192, gen_len=256, parallelism=Parallelism(tp=8))
    one = collective_time_s("all_reduce", num_bytes=model.hidden_size * 2, num_gpus=8,
                            link=NODE.gpu_peer_link(), profile=NODE.profile)
    assert 10e-6 < one < 20e-6
    old = num_steps("all_reduce", 8) * NODE.profile.fits["all_reduce"].latency_s
    assert old > 200e-6  # the per-step form this replaces

    wl = decode_workload(model, job, None, context_len=CTX + 1, batch=1)
    assert sum(op.op_class == "comm" for op in wl.ops) == 2 * model.num_layers
    kernels_s = sum(_kernel_gpu_s(op, NODE, job.param_dtype) for op in wl.ops if _is_kernel(op))
    comm_s = 2 * model.num_layers * one
    seg = decode_segments(model, job, NODE, context_len=CTX, batch=1)
    assert seg.gpu_s == pytest.approx(kernels_s + comm_s, rel=1e-9)
    assert 0.05 < comm_s / seg.total_s < 0.25
    old_comm_s = 2 * model.num_layers * old
    assert old_comm_s / (kernels_s + old_comm_s) > 0.6


def test_single_gpu_decode_has_no_collectives():
    model = get_model("llama-3.1-8b")
    job = InferJob(prompt_len=4096, gen_len=16)
    wl = decode_workload(model, job, None, context_len=4101, batch=1)
    kernels_s = sum(_kernel_gpu_s(op, NODE, job.param_dtype) for op in wl.ops if _is_kernel(op))
    assert decode_segments(model, job, NODE, context_len=4100, batch=1).gpu_s == pytest.approx(kernels_s)
