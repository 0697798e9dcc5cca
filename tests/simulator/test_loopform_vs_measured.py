"""Re-predict the H200 runs of both training-loop forms (``TrainJob.model_output``).

``validate/measure_steps.py --matrix loopform --forms freed,kept`` trains Hugging Face models one
step with ``loss = model(...).loss`` (freed: the logits die before backward, as in HF Trainer)
and with ``out = model(...)`` held through backward (kept), at lengths where the bf16 logits
are a visible share of the peak, and tries two lengths where kept is predicted out of memory and
freed to fit. The promise (the issue's tolerances): allocated peak within 2% (median) and 3%
(max), step time within 5%, and ``estimate`` says "fits" exactly when the run fit.
A tolerance here is a promise: tighten it when the models improve, never loosen it silently.
"""

import json
import pathlib
import statistics

import pytest

from hwmodels.units import GiB
from validate.compare import job_for_step_record, predict_step_record

LOOPFORM = (pathlib.Path(__file__).resolve().parents[2] / "validate" / "measurements" / "h200"
            / "steps-loopform-h200-2026-12-02.json")
pytestmark = pytest.mark.skipif(
    not LOOPFORM.exists(),
    reason=f"{LOOPFORM.name} is not measured yet: run the command in validate/measure_steps.py's "
           "docstring (--matrix loopform) on an H200 and commit its output there")

PEAK_TOL_MEDIAN = 0.02
PEAK_TOL_MAX = 0.03
TIME_TOL = 0.05


def _records(status=None):
    recs = json.loads(LOOPFORM.read_text())["records"]
    return [r for r in recs if status is None or r["status"] == status]


def _label(r):
    return (f"{r['case']} S={r['seq_len']} ckpt={'yes' if r['gradient_checkpointing'] else 'no'} "
            f"{r['model_output']}")


def _key(r):
    return (r["case"], r["seq_len"], r["gradient_checkpointing"], r["optimizer"])


def test_the_matrix_measured_both_forms_and_says_so():
    recs = _records()
    assert {r["status"] for r in recs} <= {"ok", "oom"}, [(_label(r), r.get("error")) for r in recs
                                                         if r["status"] not in ("ok", "oom")]
    forms: dict = {}
    for r in recs:
        forms.setdefault(_key(r), {})[r["model_output"]] = r
    assert all(set(f) == {"freed", "kept"} for f in forms.values())
    assert len({r["model"] for r in recs}) >= 3
    assert any(r["optimizer"] == "adamw_fused" and r["status"] == "ok" for r in recs)
    assert {r["gradient_checkpointing"] for r in recs} == {False, True}
    for r in _records("ok"):  # the run's own evidence of its form
        assert r["logits_alive_at_backward"] is (r["model_output"] == "kept"), _label(r)
    # at least one length where the kept loop ran out of memory and the freed one fit
    assert any(f["kept"]["status"] == "oom" and f["freed"]["status"] == "ok" for f in forms.values())


def test_peak_allocated_within_two_percent_median_three_max():
    errs = {}
    for r in _records("ok"):
        est = predict_step_record(r)
        errs[_label(r)] = est.peak_allocated_bytes / r["peak_allocated_bytes"] - 1
    worst = max(errs, key=lambda k: abs(errs[k]))
    median = statistics.median(abs(e) for e in errs.values())
    assert median <= PEAK_TOL_MEDIAN, f"median |error| {median:.2%}"
    assert abs(errs[worst]) <= PEAK_TOL_MAX, f"{worst}: {errs[worst]:+.2%}"


def test_step_time_within_five_percent():
    misses = []
    for r in _records("ok"):
        err = predict_step_record(r).step_time_s / r["step_time_s"] - 1
        if abs(err) > TIME_TOL:
            misses.append(f"{_label(r)}: {err:+.1%}")
    assert not misses, misses


EXPANDABLE = LOOPFORM.with_name("steps-loopform-expandable-h200-2026-12-02.json")


def test_estimate_says_fits_exactly_when_the_run_fit_under_expandable_segments():
    data = json.loads(EXPANDABLE.read_text())
    assert "expandable_segments:True" in data["provenance"]["pytorch_cuda_alloc_conf"]
    recs = data["records"]
    assert {r["model_output"]: r["status"] for r in recs} == {"freed": "ok", "kept": "oom"}
    for r in recs:
        est = predict_step_record(r, allocator="expandable")
        assert est.fits == (r["status"] == "ok"), _label(r)
        if r["status"] == "ok":
            assert abs(est.peak_allocated_bytes / r["peak_allocated_bytes"] - 1) < 0.03, _label(r)


def test_estimate_says_fits_exactly_when_the_run_fit():
    wrong = []
    for r in _records():
        est = predict_step_record(r)
        if est.fits != (r["status"] == "ok"):
            wrong.append(f"{_label(r)}: predicted {est.peak_allocated_bytes / GiB:.2f} GiB "
                         f"({'fits' if est.fits else 'does not fit'}), run {r['status']}")
        assert est.model_output == r["model_output"] == job_for_step_record(r).model_output
    # the whole Llama-3.1-8B + fused AdamW + checkpointing at 48K, freed: 128.9 GiB allocated
    # fit, but the native allocator ran out of memory in fragments (the fit decision replays it)
    assert not wrong, wrong


def test_the_native_allocator_fit_sees_the_8b_fragmentation_and_the_1b_that_ran():
    by = {(r["case"], r["seq_len"], r["model_output"]): r for r in _records()}
    oom = predict_step_record(by[("llama-3.1-8b-adamw-fused-oom-pair", 49152, "freed")])
    assert oom.peak_allocated_bytes < oom.hbm_capacity_bytes and not oom.fits
    ran = by[("llama-3.2-1b-adamw-fused-oom-pair", 40960, "freed")]
    est = predict_step_record(ran)
    assert est.fits  # the closest fit that ran: 138.72 GiB reserved on the H200
    assert abs(est.peak_reserved_bytes / ran["peak_reserved_bytes"] - 1) < 0.01
