"""The decode engines on tiny models on the CPU: every placement computes the all-resident
engine's logits (bitwise: the copies move values, the kernels see the same operands), chunked
prefill equals whole prefill, the HF engine equals the static one on the same weights, bad plans
are refused in one line, and the bench runner writes a valid measurement file."""

import json

import pytest
import torch

from hwmodels.catalog import load_node
from hwmodels.units import UserInputError
from planners.plan import KvPlacement, LayerPlan, Plan, Provenance
from simulator.job import InferJob, TrainJob
from simulator.model import ModelSpec, get_model
from simulator.scenario import Scenario
from validate import infer_bench, infer_executor
from validate.infer_bench import infer_plan
from validate.infer_executor import StaticDecodeEngine, run_static
from validate.infer_hf import run_hf
from validate.records import InferBenchFile, model_for
from validate.run_plan import SMOKE_SHAPE

B, P, G = 2, 12, 3  # batch, prompt, decode steps
K, D = 2, 16  # kv heads, head_dim of the tiny models
F32 = torch.float32


def tiny(preset: str = "llama-3.2-1b", layers: int = 3) -> ModelSpec:
    s = get_model(preset)
    return ModelSpec.model_validate({**s.model_dump(), **SMOKE_SHAPE, "num_layers": layers,
                                     "num_kv_heads": K, "max_position_embeddings": 4096})


def scenario(spec: ModelSpec | None = None, **job) -> Scenario:
    fields = {"prompt_len": P, "gen_len": G, "batch": B, **job}
    return Scenario.build(spec or tiny(), InferJob(**fields), load_node("1xH200"))


def same_logits(a, b) -> bool:
    return len(a.logits) == len(b.logits) == G + 1 and all(
        torch.equal(x, y) for x, y in zip(a.logits, b.logits, strict=True))


@pytest.fixture(scope="module")
def resident():
    return run_static(infer_plan(scenario()), device="cpu", dtype=F32, keep_logits=True)


def test_kv_on_host_gives_the_resident_logits_and_moves_the_counted_bytes(resident):
    run = run_static(infer_plan(scenario(), kv_host=(0, 2)), device="cpu", dtype=F32, keep_logits=True)
    assert same_logits(run, resident) and run.tokens == resident.tokens
    assert len(run.tokens) == B and len(run.tokens[0]) == G + 1
    assert run.contexts == [P, P + 1, P + 2]
    row = K * D * 4  # one token's K (or V) of one layer, fp32
    last_ctx = P + G - 1
    assert run.h2d_bytes_per_step == 2 * 2 * B * last_ctx * row  # 2 layers, K and V, rows [:ctx]
    assert run.d2h_bytes_per_step == 2 * 2 * B * 1 * row  # the new token's k, v
    assert resident.h2d_bytes_per_step == resident.d2h_bytes_per_step == 0


@pytest.mark.parametrize("lookahead,buffers,want", [(1, 1, 0), (2, 3, 2), (3, 2, 1)])
def test_staging_buffers_bound_the_lookahead_and_keep_the_logits(resident, lookahead, buffers, want):
    sc = scenario()
    plan = infer_plan(sc, kv_host=range(3), prefetch_lookahead_layers=lookahead, num_staging_buffers=buffers)
    run = run_static(plan, device="cpu", dtype=F32, keep_logits=True)
    assert run.notes["kv_lookahead_layers"] == want
    assert same_logits(run, resident)


def test_weights_on_host_give_the_resident_logits(resident):
    plan = infer_plan(scenario(), kv_host=(1,), w_host=(0, 1, 2), params_prefetch_layers=2)
    engine = StaticDecodeEngine(plan, device="cpu", dtype=F32)
    # the plan's two rotating buffers (num_staging_buffers), not one per lookahead layer
    assert engine.num_wbufs == 2 and len(engine.w_host_flat) == 3
    run = engine.run(keep_logits=True)
    assert same_logits(run, resident)
    layer_bytes = engine.layer_numel * 4
    assert run.h2d_bytes_per_step == 3 * layer_bytes + 2 * B * (P + G - 1) * K * D * 4


def test_teacher_forcing_on_the_reference_tokens_gives_the_reference_logits(resident):
    """Fed the resident run's own tokens, a KV-on-host run's re-decoded steps reproduce the
    resident logits bitwise; fed other tokens, the steps after the first forced one change."""
    plan = infer_plan(scenario(), kv_host=(0, 2))
    run = run_static(plan, device="cpu", dtype=F32, teacher=resident.tokens)
    assert len(run.teacher_logits) == G + 1
    assert all(torch.equal(a, b) for a, b in zip(run.teacher_logits, resident.logits, strict=True))
    other = [[(t + 1) % 100 for t in seq] for seq in resident.tokens]
    moved = run_static(plan, device="cpu", dtype=F32, teacher=other)
    assert torch.equal(moved.teacher_logits[0], resident.logits[0])  # the prefill: no token fed yet
    assert not torch.equal(moved.teacher_logits[1], resident.logits[1])
    with pytest.raises(UserInputError, match=r"^teacher tokens: shape \(1, 4\), the run's is \(2, 4\)$"):
        run_static(plan, device="cpu", dtype=F32, teacher=resident.tokens[:1])


def test_compare_logits_counts_argmax_flips_only_beyond_the_margin():
    ref = [torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.95]])]  # margins 0.5 and 0.05
    other = [torch.tensor([[0.0, 0.9, 1.0], [0.0, 1.0, 1.05]])]  # both argmaxes flip
    got = infer_executor.compare_logits(ref, other, margin=0.125)
    assert got["argmax_checked"] == 1 and got["argmax_mismatched"] == 1 and got["positions"] == 2
    assert got["max_abs_logit_diff"] == pytest.approx(0.5) and got["bitwise_equal"] is False
    same = infer_executor.compare_logits(ref, ref)
    assert same["bitwise_equal"] is True and same["argmax_mismatched"] == 0 and same["max_abs_logit_diff"] == 0.0


def test_chunked_prefill_equals_whole_prefill(resident):
    for chunk, host in ((5, ()), (4, (0, 1))):  # 5 does not divide the prompt; host KV fetches the prefix
        run = run_static(infer_plan(scenario(prefill_chunk_len=chunk), kv_host=host), device="cpu",
                         dtype=F32, keep_logits=True)
        assert run.tokens == resident.tokens
        for a, b in zip(run.logits, resident.logits, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def hf_scenario(spec: ModelSpec | None = None, **job) -> Scenario:
    return scenario(spec, engine="hf", **job)


@pytest.mark.parametrize("preset", ["llama-3.2-1b", "qwen3-8b"])
def test_hf_engine_equals_static_engine_on_the_same_weights(preset):
    """fp32: logits within 1e-5 and equal tokens; bf16: logits within 2e-2 (one bf16 ulp at the
    logits' magnitude ~1; on this CPU they agree exactly, a GPU's kernels may differ by rounding)."""
    spec = tiny(preset, layers=2)
    for dtype, tol in ((F32, 1e-5), (torch.bfloat16, 2e-2)):
        ours = run_static(infer_plan(scenario(spec)), device="cpu", dtype=dtype, keep_logits=True)
        hf = run_hf(infer_plan(hf_scenario(spec)), device="cpu", dtype=dtype, keep_logits=True)
        if dtype == F32:
            assert hf.tokens == ours.tokens
            forced = run_hf(infer_plan(hf_scenario(spec)), device="cpu", dtype=dtype, teacher=hf.tokens)
            assert all(torch.equal(a, b) for a, b in zip(forced.teacher_logits, hf.logits, strict=True))
        for a, b in zip(hf.logits, ours.logits, strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_hf_chunked_prefill_equals_whole_prefill():
    spec = tiny(layers=2)
    whole = run_hf(infer_plan(hf_scenario(spec)), device="cpu", dtype=F32, keep_logits=True)
    chunked = run_hf(infer_plan(hf_scenario(spec, prefill_chunk_len=5)), device="cpu", dtype=F32, keep_logits=True)
    assert chunked.tokens == whole.tokens
    for a, b in zip(chunked.logits, whole.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_hf_offloading_needs_cuda_on_the_cpu():
    with pytest.raises(UserInputError, match="^layers.kv_cache: DynamicCache offloading needs a CUDA device$"):
        run_hf(infer_plan(hf_scenario(), kv_host=range(3)), device="cpu", dtype=F32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_hf_cache_equals_resident_hf_cache():
    spec = tiny(layers=2)
    res = run_hf(infer_plan(hf_scenario(spec)), device="cuda", keep_logits=True)
    off = run_hf(infer_plan(hf_scenario(spec), kv_host=range(2)), device="cuda", keep_logits=True)
    assert off.tokens == res.tokens
    assert all(torch.equal(a, b) for a, b in zip(off.logits, res.logits, strict=True))


def test_refusals_are_one_line(monkeypatch):
    sc = scenario()
    split = [LayerPlan(layer=i, kv_cache=KvPlacement(resident_frac=0.5)) for i in range(3)]
    plan = Plan.for_scenario(sc, layers=split, provenance=Provenance(tierplan_version="t", planner="t"))
    with pytest.raises(UserInputError) as err:
        StaticDecodeEngine(plan, device="cpu")
    assert str(err.value) == ("plan: layers.0.kv_cache.resident_frac: a KV cache split within a layer "
                              "is not executed yet")
    train = Scenario.build(tiny(), TrainJob(seq_len=16, optimizer="none"), load_node("1xH200"))
    train_plan = Plan.for_scenario(train, layers=[LayerPlan(layer=i) for i in range(3)],
                                   provenance=Provenance(tierplan_version="t", planner="t"))
    with pytest.raises(UserInputError, match="^scenario.job.mode: "):
        StaticDecodeEngine(train_plan, device="cpu")
    with pytest.raises(UserInputError, match="^scenario.job.engine: 'hf' plans run on the HF engine"):
        StaticDecodeEngine(infer_plan(hf_scenario()), device="cpu")
    host_plan = infer_plan(sc, kv_host=range(3))
    monkeypatch.setattr(infer_executor, "host_memory_bytes", lambda: 1000)
    with pytest.raises(UserInputError) as err:
        StaticDecodeEngine(host_plan, device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("plan: offload pool ") and "exceeds available host memory" in msg
    staged = infer_plan(sc, kv_host=(0,), staging_buffer_bytes=64)
    monkeypatch.undo()
    with pytest.raises(UserInputError, match="^plan.staging_buffer_bytes: 64 B is less than one layer's K and V"):
        StaticDecodeEngine(staged, device="cpu")


def test_bench_runner_writes_a_valid_record_file(tmp_path):
    from tierplan.cli import main

    sc, hsc = scenario(), hf_scenario()
    files = {"plan": infer_plan(sc, kv_host=(1,), w_host=(2,)), "kv_host": infer_plan(sc, kv_host=range(3)),
             "hf_resident": infer_plan(hsc)}
    plans = tmp_path / "plans"
    plans.mkdir()
    for mode, plan in files.items():
        (plans / f"tiny-{mode}.json").write_text(plan.to_json())
    index = {"cells": [{"cell": "tiny-b2", "model": "tiny", "prompt_len": P, "batch": B, "gen_len": G,
                        "modes": {m: f"tiny-{m}.json" for m in files} | {"hf_offloaded": None},
                        "refused": {"hf_offloaded": "predicted not to fit"},
                        "predicted": {"plan": {"decode_step_time_s": 0.01}}}]}  # planner keys kept
    (plans / "index.json").write_text(json.dumps(index))
    out = tmp_path / "infer-bench-cpu.json"
    assert main(["bench", "infer", "--plans", str(plans), "--out", str(out), "--smoke"]) == 0
    assert model_for(out) is InferBenchFile
    data = InferBenchFile.model_validate_json(out.read_text())
    by_mode = {r.mode: r for r in data.records}
    assert sorted(by_mode) == ["hf_offloaded", "hf_resident", "kv_host", "plan"]
    assert by_mode["hf_offloaded"].status == "refused" and by_mode["hf_offloaded"].message == "predicted not to fit"
    for mode in ("plan", "kv_host"):
        r = by_mode[mode]
        assert r.status == "ok" and r.tokens_equal_resident is True and r.engine == "static"
        tf = r.teacher_forced or {}
        assert tf["bitwise_equal"] is True and tf["positions"] == B * (G + 1)
        assert tf["argmax_mismatched"] == 0 and tf["max_abs_logit_diff"] == 0.0
        assert len(r.decode_issue_times_s or []) == G and r.decode_issue_time_s is not None
        assert r.plan == f"tiny-{mode}.json" and r.plan_sha256 == infer_bench.sha256_of(plans / r.plan)
        assert len(r.decode_step_times_s or []) == G and r.contexts == [infer_bench.SMOKE_PROMPT_LEN + i for i in range(G)]
    assert by_mode["hf_resident"].status == "ok" and by_mode["hf_resident"].engine == "hf"
    assert main(["bench", "infer", "--plans", str(plans), "--out", str(out), "--modes", "nope"]) == 2


def test_validate_plan_runs_an_inference_plan(tmp_path, capsys):
    from tierplan.cli import main

    path = tmp_path / "p.json"
    path.write_text(infer_plan(scenario(), kv_host=(0,)).to_json())
    assert main(["validate", "plan", str(path), "--smoke", "--out", str(tmp_path / "out")]) == 0
    data = InferBenchFile.model_validate_json((tmp_path / "out" / "infer-bench-runs.json").read_text())
    assert [r.status for r in data.records] == ["ok"]
    assert "decode step" in capsys.readouterr().out


QG = 4  # key group of the quantized tiny runs: groups fill during the prompt and the decode steps
QUANT_LOGIT_BOUND = {"int8": 0.01, "int4": 0.03}
"""Largest |logit - resident logit| accepted (fp32 tiny model, logits up to ~0.9 in size): the
quantization error reaching the logits, measured 0.0008 (int8) and 0.006 (int4) here."""


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_kv_greedy_tokens_equal_resident_and_logits_stay_close(resident, fmt):
    """KIVI int8 / int4 KV (groups of 4 tokens), on the host or resident: the resident run's
    greedy tokens, its logits within the bound; the host pool moves exactly kivi_layout's
    quantized bytes of the whole groups (the residual window stays on the GPU)."""
    from kernels.quant import kivi_layout

    sc = scenario(kv_quant=fmt, kv_group_size=QG)
    host = run_static(infer_plan(sc, kv_host=(0, 2), kv_quant=range(3)), device="cpu", dtype=F32, keep_logits=True)
    hbm = run_static(infer_plan(sc, kv_quant=range(3)), device="cpu", dtype=F32, keep_logits=True)
    for run in (host, hbm):
        assert run.tokens == resident.tokens
        cmp = infer_executor.compare_logits(resident.logits, run.logits)
        assert 0 < cmp["max_abs_logit_diff"] < QUANT_LOGIT_BOUND[fmt] and cmp["argmax_mismatched"] == 0
    assert all(torch.equal(a, b) for a, b in zip(host.logits, hbm.logits, strict=True))  # same values moved
    lay = kivi_layout(num_tokens=P + G - 1, batch=B, num_kv_heads=K, head_dim=D, kv_dtype=fmt, group_size=QG)
    assert host.h2d_bytes_per_step == 2 * lay.quantized_bytes and host.d2h_bytes_per_step == 0
    assert host.notes["kv_dequantize"] == "torch" and host.notes["kv_group_size"] == QG
    # mixed: one layer bf16 on the host beside quantized ones, chunked prefill across groups
    mixed = run_static(infer_plan(scenario(kv_quant=fmt, kv_group_size=QG, prefill_chunk_len=5), kv_host=(0, 1),
                                  kv_quant=(1, 2)), device="cpu", dtype=F32, keep_logits=True)
    assert mixed.tokens == resident.tokens
    assert infer_executor.compare_logits(resident.logits, mixed.logits)["max_abs_logit_diff"] < QUANT_LOGIT_BOUND[fmt]


def test_quantized_layers_must_be_the_jobs_format():
    sc = scenario(kv_quant="int8", kv_group_size=QG)
    plan = infer_plan(sc, kv_quant=(0,))
    bad = Plan.for_scenario(scenario(kv_quant="int4", kv_group_size=QG), layers=list(plan.layers),
                            provenance=plan.provenance)
    with pytest.raises(UserInputError, match="^layers.0.kv_cache.dtype: 'int8', the job accepts 'int4'"):
        StaticDecodeEngine(bad, device="cpu")


def test_bench_quantized_modes_report_their_logit_error_and_fall_back_to_the_plan_reference(tmp_path,
                                                                                            monkeypatch):
    """A cell with kv_host_int8 (and plan): its record's teacher_forced holds the logit error
    against the all-resident run; when that run does not happen (refused here, as a batch whose
    bf16 KV does not fit HBM is), against the lossless plan mode's run."""
    sc = scenario(kv_quant="int8", kv_group_size=QG)
    files = {"plan": infer_plan(scenario(), kv_host=(1,)), "kv_host_int8": infer_plan(sc, kv_host=range(3),
                                                                                      kv_quant=range(3))}
    plans = tmp_path / "plans"
    plans.mkdir()
    for mode, plan in files.items():
        (plans / f"tiny-{mode}.json").write_text(plan.to_json())
    index = {"cells": [{"cell": "tiny-b2", "model": "tiny", "prompt_len": P, "batch": B, "gen_len": G,
                        "modes": {m: f"tiny-{m}.json" for m in files}}]}
    (plans / "index.json").write_text(json.dumps(index))
    for refused_reference in (False, True):
        if refused_reference:
            split = [LayerPlan(layer=i, kv_cache=KvPlacement(resident_frac=0.5)) for i in range(3)]
            monkeypatch.setattr(infer_bench, "resident_plan", lambda plan, split=split: Plan.for_scenario(
                plan.scenario, layers=split, provenance=Provenance(tierplan_version="t", planner="t")))
        recs = {r["mode"]: r for r in infer_bench.run_bench(plans, smoke=True)}
        q = recs["kv_host_int8"]
        assert q["status"] == "ok" and q["engine_notes"]["kv_quant"] == "int8"
        tf = q["teacher_forced"]
        assert tf["positions"] == B * (G + 1) and 0 < tf["max_abs_logit_diff"] < 0.1 and not tf["bitwise_equal"]
        if refused_reference:
            assert q.get("tokens_equal_resident") is None and "against the plan mode's run" in q["reference_message"]
            assert "teacher_forced" not in recs["plan"]
        else:
            assert recs["plan"]["teacher_forced"]["bitwise_equal"] is True
