"""The GPU scripts of whole-model steps, checked on the CPU: the 8B-shaped plan uses every
model-state mechanism and this executor runs it; cpu_adam.py writes a valid measurement file."""

import importlib.util
import json
from pathlib import Path

import pytest

from planners.plan import RESIDENT
from validate.executor import executor_unsupported
from validate.records import CpuAdamFile

SCRIPTS = Path(__file__).resolve().parents[2] / "validate" / "scripts"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cpu_adam, whole_model_plan = script("cpu_adam"), script("whole_model_plan")


def test_whole_model_plan_uses_every_mechanism():
    plan = whole_model_plan.whole_model_plan(num_layers=4, seq_len=16384, lm_head_chunks=8)
    assert executor_unsupported(plan) == ""
    ms = [lp.model_states for lp in plan.layers]
    assert [m.params for m in ms] == ["host", "host", "hbm", "hbm"]
    assert [m.optimizer_states for m in ms] == ["host", "nvme", "host", "hbm"]
    assert ms[3] == RESIDENT and plan.lm_head_chunks == 8
    assert [lp.mlp_chunks for lp in plan.layers] == [4, 4, 4, 4] and plan.unsupported() == ""
    assert plan.scenario.model.vocab_size == 128256 and plan.scenario.model.hidden_size == 4096


def test_cpu_adam_smoke_writes_a_measurement(tmp_path):
    out = tmp_path / "cpu-adam.json"
    assert cpu_adam.main(["--smoke", "--repeats", "1", "--out", str(out)]) == 0
    rec = CpuAdamFile.model_validate(json.loads(out.read_text()))
    assert rec.smoke and rec.copies == []
    forms = {(r["form"], r["threads"]) for r in rec.adamw}
    assert ("adamw", 1) in forms and ("layer_step", 1) in forms
    for r in rec.adamw:
        assert r["bytes_per_s"] == pytest.approx(r["params_per_s"] * (28 if r["form"] == "adamw" else 34))


whole_model_1m = script("whole_model_1m")


def small_whole_step_plan(num_layers: int = 6):
    """A plan of the whole-step planner's 1M kind for a small model: segments of three layers,
    the fused norm, parameters streamed, moments in NVMe files, the chunked head and MLP."""
    from hwmodels.catalog import load_node
    from planners.plan import ModelStatePlacement
    from planners.swap import PlanContext, evaluate
    from planners.swap.whole import segment_layers
    from simulator.job import TrainJob
    from simulator.model import ModelSpec, get_model

    s = get_model("llama-3.2-1b")
    spec = ModelSpec.model_validate({**s.model_dump(), "num_layers": num_layers, "hidden_size": 64,
                                     "intermediate_size": 160, "num_heads": 4, "num_kv_heads": 2,
                                     "head_dim": 16, "vocab_size": 1000, "tie_word_embeddings": False})
    ms = ModelStatePlacement(params="host", params_prefetch_layers=1, grads="host", optimizer_states="nvme",
                             master_weights="nvme", optimizer_step="cpu")
    ctx = PlanContext(model=spec, job=TrainJob(seq_len=4096, optimizer="adamw", rmsnorm="fused"),
                      node=load_node("1xH200-box"), gpu_budget_bytes=1 << 30, host_budget_bytes=1 << 30,
                      lm_head_chunks=4, mlp_chunks=2, states=(ms,) * num_layers)
    res = evaluate(ctx, "whole_step", segment_layers(ctx, 3))
    assert res.plan is not None
    return res.plan


def test_first_layers_keep_the_decisions_and_the_rest_is_held():
    plan = small_whole_step_plan()
    fewer = whole_model_1m.first_layers(plan, 3)
    assert fewer.layers == plan.layers[:3] and fewer.scenario.model.num_layers == 3
    assert [lp.input for lp in fewer.layers] == ["offload", "recompute", "recompute"]
    assert fewer.unexecuted() == "" and fewer.scenario.job.rmsnorm == "fused"
    held = whole_model_1m.held_bytes(plan.prediction, fewer.prediction)
    # the other three layers' state files: the two fp32 moments of their parameters (the job
    # keeps no master weights)
    n = 3 * (64 * (64 + 2 * 32 + 64) + 3 * 64 * 160 + 2 * 64)  # q, k, v, o; gate, up, down; norms
    assert plan.scenario.job.master_weights is False
    assert held["nvme"] == 2 * 4 * n
    assert 0 < held["host"] < plan.prediction.peak_host_bytes
    with pytest.raises(whole_model_1m.UserInputError, match="cuts a segment"):
        whole_model_1m.first_layers(plan, 2)


def test_the_run_is_refused_in_one_line_when_the_held_bytes_do_not_fit(tmp_path, monkeypatch, capsys):
    import validate.run_plan

    plan_path = tmp_path / "plan.json"
    plan_path.write_text(small_whole_step_plan().to_json())
    monkeypatch.setattr(validate.run_plan, "host_memory_bytes", lambda: 1 << 20)
    rc = whole_model_1m.main(["--plan", str(plan_path), "--out", str(tmp_path / "out"), "--smoke"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: host: held ") and "exceeds available host memory 1.00 MiB" in err
    assert not (tmp_path / "out").exists()  # nothing made before the refusal, the state dir neither


@pytest.mark.parametrize("flag, value", [("--repeats", "0"), ("--warmup", "-1")])
def test_bad_step_counts_are_refused_in_one_line(tmp_path, capsys, flag, value):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(small_whole_step_plan().to_json())
    rc = whole_model_1m.main(["--plan", str(plan_path), "--out", str(tmp_path / "out"), "--smoke", flag, value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {flag}: {value} (warm-up steps >= 0, timed steps >= 1)"
    assert not (tmp_path / "out").exists()


def test_smoke_run_holds_the_bytes_and_reports_against_the_replay(tmp_path, capsys):
    plan = small_whole_step_plan()
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.to_json())
    held_seen = []
    real = whole_model_1m.hold_disk

    def spy(num_bytes, where):
        paths = real(num_bytes, where)
        held_seen.append(sum(p.stat().st_size for p in paths))
        return paths

    whole_model_1m.hold_disk = spy
    try:
        rc = whole_model_1m.main(["--plan", str(plan_path), "--out", str(tmp_path / "out"), "--smoke",
                                  "--state-dir", str(tmp_path / "states")])
    finally:
        whole_model_1m.hold_disk = real
    assert rc == 0, capsys.readouterr()
    rep = json.loads((tmp_path / "out" / "whole-1m-fewer.json").read_text())
    assert rep["layers_run"] == 3 and rep["case"]["status"] == "ok"
    assert held_seen == [rep["held_bytes"]["nvme"]] and not list((tmp_path / "states" / "held").iterdir())
    figs = {r["figure"]: r for r in rep["comparison"]}
    assert set(figs) == {"step_time_s", "per_layer_step_time_s", "peak_host_bytes", "peak_disk_bytes"}
    whole, fewer = rep["prediction_whole"], rep["prediction_fewer"]
    assert figs["per_layer_step_time_s"]["predicted"] == pytest.approx(
        (whole["step_time_s"] - fewer["step_time_s"]) / 3)
    assert rep["case"]["model_states"]["disk_bytes"] > 0


def test_the_committed_1m_plan_is_run_by_the_executor_and_its_first_segment_fits_the_box():
    """validate/plans/whole-model/whole-8b-1m.json (the whole-step search at 1M, README): the
    executor runs it now; its first segment (3 layers) predicts a step of under 5 minutes, and
    with the other 29 layers' bytes held the box's host and disk hold exactly the whole plan's."""
    from hwmodels.catalog import load_node
    from hwmodels.units import GiB
    from planners.plan import load_plan

    plan = load_plan(SCRIPTS.parents[1] / "validate" / "plans" / "whole-model" / "whole-8b-1m.json")
    assert plan.unexecuted() == "" and executor_unsupported(plan) == ""
    assert plan.scenario.job.rmsnorm == "fused" and len(plan.layers) == 32
    whole = whole_model_1m.replayed(plan, source="whole-8b-1m")
    # the committed prediction is the replay's when the plan was made (2950.7 s); today's replay of
    # the same decisions on the same embedded hardware moves with the cost model, within 1%
    assert whole.prediction.step_time_s == pytest.approx(plan.prediction.step_time_s, rel=0.01)
    fewer = whole_model_1m.first_layers(plan, 3)
    assert 240 < fewer.prediction.step_time_s < 300  # the device call's budget rests on it
    held = whole_model_1m.held_bytes(whole.prediction, fewer.prediction)
    for tier in ("host", "nvme"):
        assert held[tier] + whole_model_1m.tier_peak(fewer.prediction, tier) == whole_model_1m.tier_peak(
            whole.prediction, tier)
    node = load_node("1xH200-box")
    assert whole.prediction.peak_host_bytes <= node.host_memory.capacity_bytes
    assert whole_model_1m.tier_peak(whole.prediction, "nvme") <= 64 * GiB
