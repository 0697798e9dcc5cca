"""The plain recipe for the whole Llama-3.1-8B on one H200 (Hugging Face model + gradient
checkpointing + ``torch.optim.AdamW(fused=True)``, the freed loop, PyTorch's default caching
allocator), measured at 44K, 46K and 48K tokens the same day as the whole-step plans' 256K and
384K runs (``validate/measure_steps.py --matrix plain``): its longest length is 46K, and
``tierplan estimate`` said so before it ran (44K and 46K were never measured before: held out).
The tolerances are the loop-form file's (tests/simulator/test_loopform_vs_measured.py)."""

import json
import pathlib

from validate.compare import predict_step_record

PLAIN = (pathlib.Path(__file__).resolve().parents[2] / "validate" / "measurements" / "h200"
         / "steps-plain-h200-2026-12-03.json")
PEAK_TOL, TIME_TOL = 0.03, 0.05


def _records():
    data = json.loads(PLAIN.read_text())
    assert data["provenance"].get("pytorch_cuda_alloc_conf") is None  # the default caching allocator
    return data["records"]


def test_the_plain_recipe_fits_up_to_46k_and_the_estimate_says_so():
    recs = _records()
    assert {r["seq_len"]: r["status"] for r in recs} == {45056: "ok", 47104: "ok", 49152: "oom"}
    for r in recs:
        assert r["model_output"] == "freed" and r["gradient_checkpointing"] and r["optimizer"] == "adamw_fused"
        est = predict_step_record(r)
        assert est.fits == (r["status"] == "ok"), r["seq_len"]


def test_the_plain_recipe_peak_and_step_time_within_tolerance():
    for r in _records():
        if r["status"] != "ok":
            continue
        est = predict_step_record(r)
        assert abs(est.peak_allocated_bytes / r["peak_allocated_bytes"] - 1) <= PEAK_TOL, r["seq_len"]
        assert abs(est.peak_reserved_bytes / r["peak_reserved_bytes"] - 1) <= 0.05, r["seq_len"]
        assert abs(est.step_time_s / r["step_time_s"] - 1) <= TIME_TOL, r["seq_len"]
