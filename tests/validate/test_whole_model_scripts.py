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
    assert [lp.mlp_chunks for lp in plan.layers] == [4, 4, 1, 1]
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
