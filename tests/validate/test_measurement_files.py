"""The committed H200 measurement files are well formed, and the scripts that made them still run.

The scripts run here in --smoke mode (tiny shapes on the CPU) so that a change that would
break them on the GPU machine shows up in CI.
"""

import json
import pathlib
import subprocess
import sys

import pytest
from pydantic import ValidationError

from hwmodels.records import OpRecordsFile, as_dicts
from validate.records import StepsFile, model_for

REPO = pathlib.Path(__file__).resolve().parents[2]
MEASUREMENTS = REPO / "validate" / "measurements"
H200 = MEASUREMENTS / "h200"
ALL_FILES = sorted(MEASUREMENTS.rglob("*.json"))
MICROBENCH_FILES = sorted(H200.glob("microbench-h200-*.json"))
STEPS_FILES = sorted(H200.glob("steps-*h200-*.json"))  # steps-h200-*, steps-loopform-h200-*


def _check_provenance(prov):
    assert prov.device == "NVIDIA H200" and prov.driver and prov.git_commit and prov.hostname
    assert prov.command.startswith("python3 ")


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(MEASUREMENTS)))
def test_every_file_validates_and_round_trips(path):
    data = json.loads(path.read_text())
    record = model_for(path).model_validate(data)
    # what a writer dumps from the model is what the file holds, key for key
    assert record.model_dump(mode="json", exclude_unset=True) == data


def test_a_record_the_readers_cannot_use_is_rejected():
    data = json.loads(MICROBENCH_FILES[0].read_text())
    gemm = next(r for r in data["records"] if r["op"] == "gemm")
    for bad in ({**gemm, "time_s": 0.0}, {**gemm, "flops_typo": 1}, {**gemm, "op": "gem"}):
        with pytest.raises(ValidationError):
            OpRecordsFile.model_validate({**data, "records": [bad]})
    with pytest.raises(ValidationError):
        OpRecordsFile.model_validate({**data, "provenance": {**data["provenance"], "device": ""}})
    with pytest.raises(ValueError, match="no measurement model"):
        model_for("notes.json")


def test_files_exist():
    assert MICROBENCH_FILES and STEPS_FILES


@pytest.mark.parametrize("path", MICROBENCH_FILES, ids=lambda p: p.name)
def test_microbench_file(path):
    data = OpRecordsFile.model_validate_json(path.read_text())
    _check_provenance(data.provenance)
    records = as_dicts(data.records)
    ops = {r["op"] for r in records}
    assert {"gemm", "sdpa", "copy", "hbm_copy", "launch_overhead", "rmsnorm"} <= ops
    for r in records:
        if r.get("status", "ok") != "ok":
            continue
        assert r["time_min_s"] <= r["time_s"] <= r["time_max_s"]
    # every Llama-7B GEMM shape is there, in all three passes, at 4K..128K tokens
    gemm = {(r["layer"], r["pass"], r["tokens"]) for r in records if r["op"] == "gemm"}
    for layer in ("qkv", "o", "gate_up", "down"):
        for pass_name in ("fwd", "bwd_input", "bwd_weight"):
            for t in (4096, 8192, 16384, 32768, 65536, 131072):
                assert (layer, pass_name, t) in gemm
    # physical sanity: nothing beats the H200 datasheet (990 TFLOP/s bf16 dense, 4.8 TB/s)
    for r in records:
        if r["op"] == "gemm":
            assert 2 * r["m"] * r["n"] * r["k"] / r["time_s"] < 990e12
        if r["op"] == "hbm_copy":
            assert r["hbm_bytes"] / r["time_s"] < 4.8e12


@pytest.mark.parametrize("path", STEPS_FILES, ids=lambda p: p.name)
def test_steps_file(path):
    data = StepsFile.model_validate_json(path.read_text())
    _check_provenance(data.provenance)
    assert data.provenance.transformers
    assert data.records
    for r in data.records:
        if r.status != "ok":
            continue
        assert r.step_time_s and r.memory_stats and all(t > 0 for t in r.step_times_s)
        # peak covers the weights, reserved covers allocated
        assert r.weights_allocated_bytes >= r.param_bytes
        assert r.peak_allocated_bytes > r.weights_allocated_bytes
        assert r.peak_reserved_bytes >= r.peak_allocated_bytes
        assert r.num_params * 2 == r.param_bytes  # bf16 parameters


def _smoke(script, model, tmp_path, *args):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(REPO / script), "--smoke", "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = model.model_validate_json(out.read_text())  # what the script wrote, its reader reads
    assert json.loads(out.read_text())["schema_version"] == 1
    assert data.provenance.device_type == "cpu" and data.provenance.command.startswith("python3 ")
    return as_dicts(data.records)


def test_microbench_smoke_on_cpu(tmp_path):
    records = _smoke("kernels/microbench.py", OpRecordsFile, tmp_path)
    ops = {r["op"] for r in records}
    assert {"gemm", "sdpa", "rmsnorm", "silu_mul", "rotary", "cross_entropy", "embedding",
            "hbm_copy", "launch_overhead"} <= ops
    assert all(r["time_s"] > 0 for r in records if r.get("status", "ok") == "ok")


def test_measure_steps_smoke_on_cpu(tmp_path):
    records = _smoke("validate/measure_steps.py", StepsFile, tmp_path)
    assert records and all(r["status"] == "ok" for r in records), records
    assert {r["gradient_checkpointing"] for r in records} == {False, True}
    assert any(r["optimizer"] for r in records)
    assert all(r["step_time_s"] > 0 and r["num_params"] > 0 for r in records)


def test_a_plan_run_file_holds_a_case_whose_process_failed():
    """run_plan records a case whose subprocess died before it described itself (only its label
    and the last line it printed); the file must still validate so the other cases are kept."""
    from validate.records import PlanCase

    ok = PlanCase(case="a", planner="mip", model="m", num_layers=8, seq_len=16, micro_batch=1,
                  status="ok", step_time_s=0.5)
    failed = PlanCase(case="b", status="error", message="b: exit 2: plan.layers.0: ...")
    assert ok.status == "ok" and failed.planner is None
    with pytest.raises(ValueError, match="planner: required"):
        PlanCase(case="c", status="ok")
    with pytest.raises(ValueError, match="message"):
        PlanCase(case="d", status="error")


def test_measure_steps_loopform_smoke_on_cpu(tmp_path):
    """The matrix of both training-loop forms: every case builds and runs in both forms, and
    each record carries the evidence of its form (logits dead or alive when backward starts)."""
    from validate.measure_steps import LOOPFORM_CASES

    records = _smoke("validate/measure_steps.py", StepsFile, tmp_path,
                     "--matrix", "loopform", "--forms", "freed,kept")
    assert records and all(r["status"] == "ok" for r in records), records
    expected = {(c[0], ckpt, form) for c in LOOPFORM_CASES for ckpt in c[4]
                for form in ("freed", "kept")}
    assert {(r["case"], r["gradient_checkpointing"], r["model_output"]) for r in records} == expected
    for r in records:
        assert r["logits_alive_at_backward"] is (r["model_output"] == "kept"), r["case"]
    assert any(r["optimizer"] == "adamw_fused" and r["gradient_checkpointing"] for r in records)


def test_measure_steps_rejects_an_unknown_form(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "validate/measure_steps.py"), "--smoke",
                           "--out", str(tmp_path / "x.json"), "--forms", "freed,held"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--forms: held" in proc.stderr
    assert not (tmp_path / "x.json").exists()
