"""Re-predict every committed H200 measurement with the current code.

Peak allocated memory is checked against ``torch.cuda.max_memory_allocated`` of real runs:
Hugging Face models trained one step (validate/measurements/h200/steps-*.json) and the public
4-layer Llama-7B-shaped stack (validate/measurements/reference/h200-probe-2026-11-28.json).
A tolerance here is a promise: tighten it when the models improve, never loosen it silently.
"""

import json
import pathlib

import pytest

from hwmodels.units import GiB
from validate.compare import predict_probe_case, predict_step_record

MEAS = pathlib.Path(__file__).resolve().parents[2] / "validate" / "measurements"

PEAK_TOL_HF = 0.01  # every HF step record today: |error| <= 0.1%
PEAK_TOL_PROBE = 0.01  # today: |error| <= 0.05% (the issue asked for 3%)
TIME_TOL_PROBE = 0.10


def _hf_records():
    out = []
    for path in sorted((MEAS / "h200").glob("steps-h200-*.json")):
        for rec in json.loads(path.read_text())["records"]:
            if rec["status"] == "ok":
                out.append(pytest.param(rec, id=f"{path.stem}:{rec['case']}:{rec['seq_len']}:"
                                                f"ckpt={rec['gradient_checkpointing']}"))
    return out


@pytest.mark.parametrize("rec", _hf_records())
def test_hf_step_peak_allocated(rec):
    est = predict_step_record(rec)
    measured = rec["peak_allocated_bytes"]
    err = est.peak_allocated_bytes / measured - 1
    assert abs(err) <= PEAK_TOL_HF, (
        f"predicted {est.peak_allocated_bytes / GiB:.3f} GiB vs measured {measured / GiB:.3f} GiB "
        f"({err:+.2%}) at {est.peak_op}"
    )


def _probe():
    data = json.loads((MEAS / "reference" / "h200-probe-2026-11-28.json").read_text())
    cases = []
    for key, rec in data["baseline_4x_llama7b_layers"].items():
        seq, mode = key.split("_", 1)
        if mode == "save_on_cpu" or not isinstance(rec, dict):
            continue  # host offload is the planner's business, not the estimator's
        cases.append(pytest.param(int(seq), mode, rec, id=key))
    return cases


@pytest.mark.parametrize("seq_len,mode,rec", _probe())
def test_reference_probe_stack(seq_len, mode, rec):
    """hwprobe.py: 4 layers, input requires grad, grads accumulate over the timed repeats."""
    est = predict_probe_case(seq_len, mode)
    peak_err = est.peak_allocated_bytes / (rec["peak_GiB"] * GiB) - 1
    time_err = est.step_time_s / rec["step_s"] - 1
    assert abs(peak_err) <= PEAK_TOL_PROBE, f"peak error {peak_err:+.2%}"
    assert abs(time_err) <= TIME_TOL_PROBE, f"step time error {time_err:+.2%}"


# Step time. Known gaps carry their own bound so they cannot grow unnoticed:
#  - gpt2-medium: a 0.36B model at 4K tokens is CPU-launch bound (24 layers of small kernels,
#    dropout RNG state saved per checkpointed layer), which a GPU kernel model does not see.
TIME_TOL_HF = 0.10
TIME_KNOWN_GAPS = {"gpt2-medium": 0.60}


@pytest.mark.parametrize("rec", _hf_records())
def test_hf_step_time(rec):
    est = predict_step_record(rec)
    err = est.step_time_s / rec["step_time_s"] - 1
    tol = TIME_KNOWN_GAPS.get(rec["case"], TIME_TOL_HF)
    if rec.get("optimizer") == "adamw_foreach":
        tol = 0.20  # torch's foreach AdamW launches ~10 kernels per tensor group: launch bound
    assert abs(err) <= tol, f"predicted {est.step_time_s:.4f} s vs measured {rec['step_time_s']:.4f} s ({err:+.1%})"
