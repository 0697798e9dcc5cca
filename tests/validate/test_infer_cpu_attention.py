"""The static engine with decode attention on the host CPU (tiny models on the CPU): the tokens and
logits of the all-GPU-attention run, the bytes that cross, CSD attention and KV off the host refused."""

import pytest
import torch

from hwmodels.catalog import load_node
from hwmodels.units import UserInputError
from simulator.job import InferJob
from simulator.model import ModelSpec, get_model
from simulator.scenario import Scenario
from validate.infer_bench import infer_plan
from validate.infer_executor import StaticDecodeEngine, cpu_attention_threads, run_static
from validate.run_plan import SMOKE_SHAPE

B, P, G = 2, 12, 3  # batch, prompt, decode steps


def _scenario(node: str = "1xH200", **job) -> Scenario:
    s = get_model("llama-3.2-1b")
    spec = ModelSpec.model_validate({**s.model_dump(), **SMOKE_SHAPE, "num_layers": 3, "num_kv_heads": 2,
                                     "max_position_embeddings": 4096})
    return Scenario.build(spec, InferJob(prompt_len=P, gen_len=G, batch=B, **job), load_node(node))


@pytest.fixture(scope="module")
def gpu_attention():
    """Every layer's KV on the host, attended on the GPU (fetched into the staging buffers)."""
    return run_static(infer_plan(_scenario(), kv_host=range(3)), device="cpu", dtype=torch.float32, keep_logits=True)


@pytest.mark.parametrize("on_cpu", [(0,), (1, 2), (0, 1, 2)])
def test_cpu_attention_gives_the_gpu_attention_run_bitwise_in_fp32(gpu_attention, on_cpu):
    run = run_static(infer_plan(_scenario(), kv_host=range(3), attention_cpu=on_cpu), device="cpu",
                     dtype=torch.float32, keep_logits=True)
    assert run.tokens == gpu_attention.tokens
    assert all(torch.equal(a, b) for a, b in zip(run.logits, gpu_attention.logits, strict=True))
    spec = _scenario().model
    row = spec.num_kv_heads * spec.head_dim * 4  # one token's K (or V), fp32
    q = B * spec.num_heads * spec.head_dim * 4  # a layer's query (and its output), fp32
    fetched = 3 - len(on_cpu)
    # per step: the GPU layers fetch rows [:ctx]; every layer sends its new k, v out; a CPU layer its
    # query out and its output back
    assert run.h2d_bytes_per_step == fetched * 2 * B * (P + G - 1) * row + len(on_cpu) * q
    assert run.d2h_bytes_per_step == 3 * 2 * B * row + len(on_cpu) * q
    assert run.notes["cpu_attention_layers"] == len(on_cpu)
    assert run.notes["cpu_attention_threads"] == cpu_attention_threads() >= 1


def test_cpu_attention_in_bf16_keeps_the_tokens_and_the_logits_within_a_bf16_step():
    """bf16 (the GPU run's dtype): the same tokens, logits within 2e-2 (one bf16 step at their
    magnitude ~1; the CPU's SDPA and the device's may round differently)."""
    ref = run_static(infer_plan(_scenario()), device="cpu", dtype=torch.bfloat16, keep_logits=True)
    run = run_static(infer_plan(_scenario(), kv_host=range(3), attention_cpu=(0, 2)), device="cpu",
                     dtype=torch.bfloat16, keep_logits=True)
    assert run.tokens == ref.tokens
    for a, b in zip(run.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_chunked_prefill_with_cpu_attention_layers(gpu_attention):
    run = run_static(infer_plan(_scenario(prefill_chunk_len=5), kv_host=range(3), attention_cpu=(1,)), device="cpu",
                     dtype=torch.float32, keep_logits=True)
    assert run.tokens == gpu_attention.tokens


def test_csd_attention_and_kv_off_the_host_are_refused_in_one_line():
    sc = _scenario("1xH200-tiered")
    plan = infer_plan(sc, kv_host=range(3))
    csd = plan.model_copy(update={"layers": [lp.model_copy(update={
        "attention_on": "csd", "kv_cache": lp.kv_cache.model_copy(update={"tier": "csd"})}) for lp in plan.layers]})
    with pytest.raises(UserInputError, match=r"^plan: layers.0.attention_on: attention inside a computational storage drive is replayed, not executed \(no drive to run it\)$"):
        StaticDecodeEngine(csd, device="cpu")
    nvme = plan.model_copy(update={"layers": [lp.model_copy(update={
        "kv_cache": lp.kv_cache.model_copy(update={"tier": "nvme"})}) for lp in plan.layers]})
    with pytest.raises(UserInputError, match=r"^plan: layers.0.kv_cache.tier: KV cache on nvme is not executed yet"):
        StaticDecodeEngine(nvme, device="cpu")


def test_the_cpu_attention_benchmark_runs_its_smoke_shapes(tmp_path):
    import importlib.util
    import json
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "validate" / "scripts" / "cpu_attention_bench.py"
    spec = importlib.util.spec_from_file_location("cpu_attention_bench", path)
    cpu_attention_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_attention_bench)
    out = tmp_path / "cpu-attention.json"
    assert cpu_attention_bench.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {r["dtype"] for r in data["micro"]} == {"bfloat16", "float32"}
    assert all(r["kv_bytes_per_s"] > 0 for r in data["micro"]) and data["read_bytes_per_s"] > 0
    kv_host, mixed = data["decode"]
    assert (kv_host["mode"], mixed["mode"]) == ("kv_host", "cpu_every_4")
    assert mixed["cpu_attention_layers"] == [0] and mixed["tokens_equal_kv_host"]
    assert mixed["notes"]["cpu_attention_layers"] == 1 and mixed["predicted_decode_step_time_s_at_last_context"] > 0


def test_cpu_attention_beside_quantized_host_layers():
    """Layer 1's KV int8 on the host (fetched quantized, dequantized and attended on the GPU),
    layers 0 and 2 bf16-shaped on the host attended by the CPU: the run of the same plan with
    every layer attended on the GPU, bitwise in fp32; CPU attention over a quantized layer is
    refused in one line."""
    sc = _scenario(kv_quant="int8", kv_group_size=4)
    ref = run_static(infer_plan(sc, kv_host=range(3), kv_quant=(1,)), device="cpu", dtype=torch.float32,
                     keep_logits=True)
    run = run_static(infer_plan(sc, kv_host=range(3), kv_quant=(1,), attention_cpu=(0, 2)), device="cpu",
                     dtype=torch.float32, keep_logits=True)
    assert run.tokens == ref.tokens
    assert all(torch.equal(a, b) for a, b in zip(run.logits, ref.logits, strict=True))
    assert run.notes["cpu_attention_layers"] == 2 and run.notes["num_kv_quantized_layers"] == 1
    assert run.h2d_bytes_per_step < ref.h2d_bytes_per_step  # the CPU layers fetch nothing
    with pytest.raises(UserInputError, match="^plan: layers.1.attention_on: attention off the GPU reads an "
                                             "unquantized KV cache, not int8$"):
        StaticDecodeEngine(infer_plan(sc, kv_host=range(3), kv_quant=(1,), attention_cpu=(1,)), device="cpu")
