"""The committed H200 measurement files are well formed, and the scripts that made them still run.

The scripts run here in --smoke mode (tiny shapes on the CPU) so that a change that would
break them on the GPU machine shows up in CI.
"""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
H200 = REPO / "validate" / "measurements" / "h200"
MICROBENCH_FILES = sorted(H200.glob("microbench-h200-*.json"))
STEPS_FILES = sorted(H200.glob("steps-h200-*.json"))

PROVENANCE_KEYS = ("device", "torch", "cuda", "driver", "date_utc", "command", "hostname",
                   "git_commit")
REQUIRED = {
    "gemm": ("m", "n", "k", "dtype", "pass", "layer"),
    "sdpa": ("pass", "batch", "seq_len", "num_heads", "num_kv_heads", "head_dim", "causal",
             "backend"),
    "rmsnorm": ("hbm_bytes", "tokens", "pass"),
    "silu_mul": ("hbm_bytes", "tokens", "pass"),
    "rotary": ("hbm_bytes", "tokens", "pass"),
    "cross_entropy": ("hbm_bytes", "tokens", "pass"),
    "embedding": ("hbm_bytes", "tokens", "pass"),
    "copy": ("direction", "pinned", "bytes"),
    "hbm_copy": ("bytes", "hbm_bytes"),
    "launch_overhead": ("mode",),
}
STEP_KEYS = ("case", "model", "seq_len", "batch", "gradient_checkpointing", "optimizer", "config",
             "status")
STEP_OK_KEYS = ("num_params", "weights_allocated_bytes", "peak_allocated_bytes",
                "peak_reserved_bytes", "allocated_after_step_bytes", "step_time_s",
                "memory_stats")


def _load(path):
    data = json.loads(path.read_text())
    assert set(data) == {"provenance", "records"}
    return data["provenance"], data["records"]


def _check_provenance(prov):
    for key in PROVENANCE_KEYS:
        assert prov.get(key), f"provenance lacks {key}"
    assert prov["device"] == "NVIDIA H200"
    assert prov["command"].startswith("python3 ")


def test_files_exist():
    assert MICROBENCH_FILES and STEPS_FILES


@pytest.mark.parametrize("path", MICROBENCH_FILES, ids=lambda p: p.name)
def test_microbench_file(path):
    prov, records = _load(path)
    _check_provenance(prov)
    ops = {r["op"] for r in records}
    assert {"gemm", "sdpa", "copy", "hbm_copy", "launch_overhead", "rmsnorm"} <= ops
    for r in records:
        for key in REQUIRED[r["op"]]:
            assert key in r, f"{r['op']} record lacks {key}: {r}"
        if r.get("status", "ok") != "ok":
            continue
        assert r["time_s"] > 0 and r["time_min_s"] <= r["time_s"] <= r["time_max_s"]
        if "hbm_bytes" in r:
            assert r["hbm_bytes"] > 0
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
    prov, records = _load(path)
    _check_provenance(prov)
    assert prov.get("transformers")
    assert records
    for r in records:
        for key in STEP_KEYS:
            assert key in r, f"step record lacks {key}"
        assert r["status"] in ("ok", "oom", "skipped", "error")
        if r["status"] != "ok":
            continue
        for key in STEP_OK_KEYS:
            assert key in r, f"{r['case']} lacks {key}"
        assert r["step_time_s"] > 0 and all(t > 0 for t in r["step_times_s"])
        # peak covers the weights, reserved covers allocated
        assert r["weights_allocated_bytes"] >= r["param_bytes"]
        assert r["peak_allocated_bytes"] > r["weights_allocated_bytes"]
        assert r["peak_reserved_bytes"] >= r["peak_allocated_bytes"]
        assert r["num_params"] * 2 == r["param_bytes"]  # bf16 parameters


def _smoke(script, tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(REPO / script), "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prov, records = _load(out)
    assert prov["device_type"] == "cpu" and prov["command"].startswith("python3 ")
    return records


def test_microbench_smoke_on_cpu(tmp_path):
    records = _smoke("kernels/microbench.py", tmp_path)
    ops = {r["op"] for r in records}
    assert {"gemm", "sdpa", "rmsnorm", "silu_mul", "rotary", "cross_entropy", "embedding",
            "hbm_copy", "launch_overhead"} <= ops
    assert all(r["time_s"] > 0 for r in records if r.get("status", "ok") == "ok")


def test_measure_steps_smoke_on_cpu(tmp_path):
    records = _smoke("validate/measure_steps.py", tmp_path)
    assert records and all(r["status"] == "ok" for r in records), records
    assert {r["gradient_checkpointing"] for r in records} == {False, True}
    assert any(r["optimizer"] for r in records)
    assert all(r["step_time_s"] > 0 and r["num_params"] > 0 for r in records)
