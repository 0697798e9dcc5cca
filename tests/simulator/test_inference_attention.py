"""simulator.inference: decode attention off the GPU (host CPU, computational storage drive) on a
toy 4-layer model, checked by hand against the rates the replay is given."""

import pytest

from hwmodels.catalog import load_node
from hwmodels.host_overhead import cpu_attention_rate
from hwmodels.units import GiB, UserInputError
from simulator.inference import (
    LayerPlacement,
    Placement,
    kv_layer_bytes,
    off_gpu_attention,
    replay_placement,
)
from simulator.job import InferJob
from simulator.model import get_model

NODE = load_node("1xH200-tiered")
MODEL = get_model("llama-3.2-1b").with_layers(4)
JOB = InferJob(prompt_len=65536, gen_len=2, batch=4)
B = JOB.batch


def _replay(layers, job=JOB):
    return replay_placement(MODEL, job, NODE, Placement(tuple(layers), 2, 1), gpu_budget_bytes=100 * GiB,
                            host_budget_bytes=100 * GiB)


def test_cpu_attention_is_the_kv_over_the_cpu_rate_on_the_critical_path():
    rep = _replay([LayerPlacement("host", attention_on="cpu")] * 4)
    ctx = rep.context_len + 1  # the new token's k, v are attended too
    kv = kv_layer_bytes(MODEL, JOB, num_tokens=ctx, batch=B)
    rate = cpu_attention_rate(NODE)
    flops = 4 * B * MODEL.num_heads * ctx * MODEL.head_dim
    assert kv / rate.kv_bytes_per_s > flops / rate.flops_per_s  # memory bound: bytes over the rate
    cpu_s = rate.latency_s + kv / rate.kv_bytes_per_s
    assert off_gpu_attention(MODEL, JOB, NODE, context_len=ctx, batch=B).cpu.time_s == pytest.approx(cpu_s)
    # four layers one after another, plus the compute without their GPU attention and the small copies
    assert 4 * cpu_s <= rep.decode_step_time_s <= 4 * cpu_s + rep.decode_compute_s + 4 * 50e-6
    # only the query and the new token's k, v go out and the output comes back: no KV crosses a link
    q = B * MODEL.q_size * 2
    assert rep.decode_link_bytes == 4 * (q + kv_layer_bytes(MODEL, JOB, num_tokens=1, batch=B) + q)
    assert rep.tier_peak_bytes["host"] == 4 * kv_layer_bytes(MODEL, JOB, num_tokens=JOB.prompt_len + JOB.gen_len,
                                                             batch=B)


def test_cpu_attention_of_one_layer_overlaps_the_next_layers_fetch():
    gpu = _replay([LayerPlacement("host")] * 4)  # link bound: four fetches back to back
    ctx = gpu.context_len
    fetch_s = kv_layer_bytes(MODEL, JOB, num_tokens=ctx, batch=B) / NODE.profile.fits["copy_h2d"].bandwidth_bytes_per_s
    assert gpu.decode_step_time_s == pytest.approx(4 * fetch_s, rel=0.02)
    mixed = _replay([LayerPlacement("host", attention_on=w) for w in ("cpu", "gpu", "cpu", "gpu")])
    cpu_s = off_gpu_attention(MODEL, JOB, NODE, context_len=ctx + 1, batch=B).cpu.time_s
    # layer 1's fetch runs while the CPU attends layer 0, layer 3's while it attends layer 2
    assert mixed.decode_step_time_s == pytest.approx(2 * max(cpu_s, fetch_s), rel=0.05)
    assert mixed.decode_step_time_s < 0.9 * 2 * (cpu_s + fetch_s)  # overlapped, not one after the other
    # the H200 host's CPU attends 11.3 GB/s of K,V (measured), a fifth of the link's 55 GB/s: the
    # fetches alone are faster here
    assert cpu_s > 3 * fetch_s and gpu.decode_step_time_s < mixed.decode_step_time_s


def test_csd_attention_reads_the_kv_at_the_drives_internal_rate():
    csd = NODE.csd[0]
    rep = _replay([LayerPlacement("csd", attention_on="csd")] * 4)
    kv = kv_layer_bytes(MODEL, JOB, num_tokens=rep.context_len + 1, batch=B)
    inside_s = kv / csd.internal_flash_bandwidth_bytes_per_s
    assert 4 * inside_s <= rep.decode_step_time_s <= 4 * inside_s + rep.decode_compute_s + 4 * 60e-6
    fetched = _replay([LayerPlacement("csd")] * 4)  # the same KV fetched over the drive's x4 link
    assert fetched.decode_step_time_s > 1.8 * rep.decode_step_time_s
    assert rep.tier_peak_bytes["csd"] == fetched.tier_peak_bytes["csd"] > 0 and "host" not in rep.tier_peak_bytes


@pytest.mark.parametrize(("layer", "engine", "match"), [
    (LayerPlacement("hbm", attention_on="cpu"), "static", "attention on the cpu needs the layer's KV on host"),
    (LayerPlacement("host", attention_on="csd"), "static", "attention on the csd needs the layer's KV on csd"),
    (LayerPlacement("host", attention_on="cpu"), "hf", "the hf engine"),
])
def test_attention_off_the_gpu_needs_its_kv_next_to_it(layer, engine, match):
    job = JOB.model_copy(update={"engine": engine})
    with pytest.raises(UserInputError, match=match):
        _replay([layer] * 4, job=job)


def test_quantized_layers_attend_on_the_gpu_beside_cpu_attended_layers():
    """int8 host layers (fetched quantized, dequantized and attended on the GPU) alternating with
    bf16 host layers attended on the CPU: the CPU layers fetch nothing, the quantized ones fetch
    their whole groups only, and the step lies between the all-int8 and the all-CPU steps."""
    from simulator.inference import kv_quant_layout

    job = JOB.model_copy(update={"kv_quant": "int8"})
    mixed = _replay([LayerPlacement("host", kv_quant=q, attention_on=w)
                     for q, w in (("int8", "gpu"), ("none", "cpu")) * 2], job=job)
    quant = _replay([LayerPlacement("host", kv_quant="int8")] * 4, job=job)
    cpu = _replay([LayerPlacement("host", attention_on="cpu")] * 4, job=job)
    assert quant.decode_step_time_s < mixed.decode_step_time_s < cpu.decode_step_time_s
    ctx = mixed.context_len
    q = B * MODEL.q_size * 2
    fetched_q = kv_quant_layout(MODEL, job, num_tokens=ctx, batch=B).quantized_bytes
    # two quantized fetches (no write-back: their new token joins the residual window) and two
    # CPU layers' query out, new k, v out and output back
    assert mixed.decode_link_bytes == 2 * fetched_q + 2 * (q + kv_layer_bytes(MODEL, job, num_tokens=1, batch=B) + q)
    assert mixed.breakdown_bytes["dequant_buffer"] > 0


def test_attention_off_the_gpu_over_a_quantized_kv_is_refused():
    job = JOB.model_copy(update={"kv_quant": "int8"})
    with pytest.raises(UserInputError, match="attention off the GPU reads an unquantized KV cache"):
        _replay([LayerPlacement("host", kv_quant="int8", attention_on="cpu")] * 4, job=job)
