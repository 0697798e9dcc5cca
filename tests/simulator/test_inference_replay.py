"""simulator.inference: the launch pipeline, link- vs compute-bound decode, staging buffers,
the HF DynamicCache's host blocks, and the H100 / H200 decode order."""

import pytest

from hwmodels.catalog import load_node
from hwmodels.units import GiB
from simulator.inference import (
    LayerPlacement,
    Placement,
    decode_segments,
    kv_layer_bytes,
    launch_pipeline_s,
    pinned_block_bytes,
    replay_placement,
)
from simulator.job import InferJob
from simulator.model import get_model

NODE = load_node("1xH200")
MODEL = get_model("llama-3.2-1b").with_layers(4)


def _replay(job, kv_tier="host", *, buffers=2, lookahead=1, node=NODE, model=MODEL):
    pl = Placement(tuple(LayerPlacement(kv_tier=kv_tier) for _ in range(model.num_layers)), buffers, lookahead)
    return replay_placement(model, job, node, pl, gpu_budget_bytes=100 * GiB, host_budget_bytes=100 * GiB)


def test_launch_pipeline_hides_small_kernels_behind_a_long_one():
    # host enqueues every 2 us; a 10 us kernel then two 1 us ones: 2-12, 12-13, 13-14
    assert launch_pipeline_s([10e-6, 1e-6, 1e-6], launch_s=2e-6) == pytest.approx([12e-6, 13e-6, 14e-6])
    # tiny kernels only: launch bound, the i-th ends at i * launch + its time
    assert launch_pipeline_s([1e-6] * 3, launch_s=2e-6) == pytest.approx([3e-6, 5e-6, 7e-6])


def test_link_bound_decode_takes_the_bytes_over_the_h2d_rate():
    job = InferJob(prompt_len=65536, gen_len=2, batch=4)
    rep = _replay(job)
    ctx = rep.context_len
    moved = MODEL.num_layers * kv_layer_bytes(MODEL, job, num_tokens=ctx, batch=4)
    h2d = NODE.profile.fits["copy_h2d"].bandwidth_bytes_per_s
    link_s = moved / h2d
    assert rep.decode_compute_s < 0.1 * link_s  # link bound
    # the step is the copies back to back, plus the compute after the last one at most
    assert link_s <= rep.decode_step_time_s <= link_s + rep.decode_compute_s + 1e-4
    assert rep.decode_stall_s > 0.8 * link_s


def test_compute_bound_decode_hides_the_copies():
    job = InferJob(prompt_len=64, gen_len=2, batch=1)
    host, hbm = _replay(job), _replay(job, kv_tier="hbm")
    assert hbm.decode_stall_s == 0.0
    assert host.decode_step_time_s == pytest.approx(hbm.decode_step_time_s, rel=0.05)


def test_one_staging_buffer_serializes_fetch_and_attention():
    job = InferJob(prompt_len=16384, gen_len=2, batch=1)
    one, two = _replay(job, buffers=1), _replay(job, buffers=2)
    seg = decode_segments(MODEL, job, NODE, context_len=one.context_len, batch=1)
    fetch_s = kv_layer_bytes(MODEL, job, num_tokens=one.context_len, batch=1) / \
        NODE.profile.fits["copy_h2d"].bandwidth_bytes_per_s
    # one buffer: layer l+1's fetch waits for layer l's attention: fetch and attention alternate
    assert one.decode_step_time_s >= MODEL.num_layers * fetch_s + sum(s.gpu_s for s in seg.post[:-1])
    assert two.decode_step_time_s < one.decode_step_time_s


def test_hf_offloaded_cache_moves_each_layer_both_ways_and_pins_power_of_two_blocks():
    job = InferJob(prompt_len=8192, gen_len=4, batch=1, engine="hf")
    rep = _replay(job)
    ctx = rep.context_len
    per = [kv_layer_bytes(MODEL, job, num_tokens=n, batch=1) for n in (ctx, ctx + 1)]
    assert rep.decode_link_bytes == MODEL.num_layers * sum(per)
    assert pinned_block_bytes(3 * 2**20 + 1) == 4 * 2**20 and pinned_block_bytes(2**20) == 2**20
    prompt = kv_layer_bytes(MODEL, job, num_tokens=8192, batch=1) // 2
    final = kv_layer_bytes(MODEL, job, num_tokens=8196, batch=1) // 2
    # per tensor its prompt block and its grown block, and per layer one grown block waiting on its event
    assert rep.tier_peak_bytes["host"] == MODEL.num_layers * (2 * pinned_block_bytes(prompt)
                                                              + 3 * pinned_block_bytes(final))


def test_fold_is_the_launch_pipeline():
    """A run of kernels folded into one segment ends where the kernel-by-kernel pipeline does,
    whenever the GPU becomes free and the host starts."""
    from simulator.inference import Seg, fold, run_segments

    kernels = [(7e-6, 3e-6), (7e-6, 40e-6), (2e-6, 1e-6), (9e-6, 2e-6), (1e-6, 30e-6)]
    seg = fold(kernels)
    ends = launch_pipeline_s([g for _, g in kernels], launch_s=[h for h, _ in kernels])
    assert run_segments([seg]) == pytest.approx(max(ends[-1], seg.host_s))
    # the GPU busy for 100 us first: the run starts when it is free (everything issued by then)
    busy = Seg(gpu_s=100e-6)
    assert run_segments([busy, seg]) == pytest.approx(100e-6 + sum(g for _, g in kernels))


def test_eager_decode_at_batch_1_is_host_bound():
    """Llama-3.1-8B at 32K, batch 1: the HF engine's step is the host's issue time (its kernels
    take ~8.7 ms of GPU time); the static engine through CUDA graphs is GPU bound."""
    from hwmodels.host_overhead import eager_host_costs

    model = get_model("llama-3.1-8b")
    hf = InferJob(prompt_len=32768, gen_len=16, engine="hf")
    cost = eager_host_costs(NODE).hf_resident
    rep = _replay(hf, kv_tier="hbm", model=model)
    host_s = cost.fixed_s + model.num_layers * cost.per_layer_s
    assert host_s <= rep.decode_step_time_s <= host_s + 0.5e-3
    seg = decode_segments(model, InferJob(prompt_len=32768, gen_len=16), NODE, context_len=32776, batch=1)
    assert seg.total_s == pytest.approx(seg.gpu_s, rel=0.02)
    assert seg.total_s < 0.6 * host_s


def test_batch1_decode_is_faster_on_h200_than_h100():
    """Decode at batch 1 is HBM-bandwidth bound: the H200 (4.8 TB/s) beats the H100 (3.35 TB/s).
    Timed with the eager composites fitted on training shapes, the H200 came out slower."""
    from simulator.estimator import estimate_inference

    job = InferJob(prompt_len=32768, gen_len=16)
    model = get_model("llama-3.1-8b")
    h200 = estimate_inference(model, job, NODE).decode_time_per_token_s
    h100 = estimate_inference(model, job, load_node("8xH100")).decode_time_per_token_s
    assert h200 < h100


@pytest.mark.parametrize("kv_quant", ["int8", "int4"])
def test_quantized_kv_host_decode_is_faster_by_the_byte_ratio(kv_quant):
    """Link-bound cell: a host layer moves only its quantized groups, so the step shrinks by
    about the bytes' ratio (the dequantize is GPU time the link mostly hides); the pool shrinks alike,
    the HBM gains the bf16 dequantize buffer and the residual windows."""
    from simulator.inference import kv_quant_layout, kv_quant_time_s

    job = InferJob(prompt_len=65536, gen_len=2, batch=4, kv_quant=kv_quant)
    L = MODEL.num_layers
    bf16 = replay_placement(MODEL, job, NODE, Placement(tuple(LayerPlacement(kv_tier="host") for _ in range(L))),
                            gpu_budget_bytes=100 * GiB, host_budget_bytes=100 * GiB)
    quant = replay_placement(MODEL, job, NODE,
                             Placement(tuple(LayerPlacement(kv_tier="host", kv_quant=kv_quant) for _ in range(L))),
                             gpu_budget_bytes=100 * GiB, host_budget_bytes=100 * GiB)
    ctx = quant.context_len
    lay = kv_quant_layout(MODEL, job, num_tokens=ctx, batch=4)
    ratio = lay.quantized_bytes / kv_layer_bytes(MODEL, job, num_tokens=ctx, batch=4)
    bits, g = {"int8": 8, "int4": 4}[kv_quant], MODEL.head_dim  # a scale and a zero (bf16) per G elements
    assert ratio == pytest.approx((bits / 8 + 4 / g) / 2, rel=1e-4)
    # the link's share shrinks by the bytes' ratio; the dequantize (int4 runs at half int8's
    # measured rate) is hidden behind the next layer's fetch except where it outlasts it
    dequant_s = L * kv_quant_time_s(MODEL, job, NODE, num_tokens=ctx, batch=4)
    assert 0.95 * ratio * bf16.decode_step_time_s <= quant.decode_step_time_s
    assert quant.decode_step_time_s <= ratio * bf16.decode_step_time_s + 0.5 * dequant_s
    # the compute gains one dequantize per layer
    assert quant.decode_compute_s == pytest.approx(
        bf16.decode_compute_s + L * kv_quant_time_s(MODEL, job, NODE, num_tokens=ctx, batch=4), rel=0.02)
    final = kv_quant_layout(MODEL, job, num_tokens=job.max_seq_len, batch=4)
    assert quant.tier_peak_bytes["host"] == L * final.quantized_bytes
    assert bf16.tier_peak_bytes["host"] == L * kv_layer_bytes(MODEL, job, num_tokens=job.max_seq_len, batch=4)
    # resident: the quantized layers take less HBM than bf16 ones and are dequantized every step
    res_q = replay_placement(MODEL, job, NODE, Placement(tuple(LayerPlacement(kv_quant=kv_quant) for _ in range(L))),
                             gpu_budget_bytes=100 * GiB, host_budget_bytes=100 * GiB)
    res = replay_placement(MODEL, job, NODE, Placement(tuple(LayerPlacement() for _ in range(L))),
                           gpu_budget_bytes=100 * GiB, host_budget_bytes=100 * GiB)
    assert res_q.tier_peak_bytes["hbm"] < res.tier_peak_bytes["hbm"]
    assert res_q.decode_step_time_s > res.decode_step_time_s


def test_a_layer_quantized_in_a_format_the_job_does_not_accept_is_refused():
    from hwmodels.units import UserInputError

    pl = Placement(tuple(LayerPlacement(kv_tier="host", kv_quant="int8") for _ in range(MODEL.num_layers)))
    with pytest.raises(UserInputError, match=r"^layers\.0\.kv_cache\.dtype: 'int8' is not the quantized format"):
        replay_placement(MODEL, InferJob(prompt_len=64, gen_len=2), NODE, pl, gpu_budget_bytes=100 * GiB,
                         host_budget_bytes=100 * GiB)
