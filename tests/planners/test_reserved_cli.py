"""`estimate`, `plan` and `simulate` report the predicted reserved peak beside the allocated one,
for the allocator the job names (``TrainJob.allocator``; `tierplan plan --allocator` sets it)."""

import json

import pytest

from hwmodels.units import GiB
from planners.plan import load_plan
from tierplan.cli import main

SCENARIO = """\
model: probe-llama7b-stack
hardware: 1xH200
job:
  mode: train
  seq_len: 32K
  optimizer: none
  loss: mean_square_fp32
  allocator: {allocator}
"""


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _scenario(tmp_path, allocator):
    path = tmp_path / f"{allocator}.yaml"
    path.write_text(SCENARIO.format(allocator=allocator))
    return str(path)


def test_estimate_reports_reserved_for_the_job_s_allocator(capsys, tmp_path):
    est = {a: json.loads(_run(capsys, "estimate", _scenario(tmp_path, a), "--layers", "8", "--json"))
           for a in ("caching", "expandable")}
    for a, d in est.items():
        assert d["allocator"] == a
        assert d["peak_reserved_bytes"] >= 0.99 * d["peak_allocated_bytes"]
    # one growing segment per stream strands less than a segment per large request
    assert est["expandable"]["peak_reserved_bytes"] <= est["caching"]["peak_reserved_bytes"]
    assert est["expandable"]["peak_allocated_bytes"] == est["caching"]["peak_allocated_bytes"]
    table = _run(capsys, "estimate", _scenario(tmp_path, "expandable"), "--layers", "8")
    assert "peak reserved (expandable allocator)" in table


def test_plan_for_expandable_segments_certifies_reserved_under_the_budget(capsys, tmp_path):
    out = _run(capsys, "plan", "--model", "probe-llama7b-stack", "--layers", "8", "--seq-len", "64K",
               "--optimizer", "none", "--hardware", "1xH200", "--gpu-budget", "48GiB",
               "--allocator", "expandable", "--time-limit", "5", "--json", "--out", str(tmp_path))
    d = json.loads(out)
    feasible = [s for s in d["strategies"] if s["feasible"]]
    assert any(s["name"] == "mip" for s in feasible)
    for s in feasible:
        assert s["peak_hbm_bytes"] <= s["peak_reserved_bytes"] <= 48 * GiB
    plan = load_plan(tmp_path / "plan.json")
    assert plan.scenario.job.allocator == "expandable"
    assert plan.prediction.peak_reserved_bytes <= 48 * GiB
    table = _run(capsys, "plan", "--model", "probe-llama7b-stack", "--layers", "2", "--seq-len", "16K",
                 "--optimizer", "none", "--hardware", "1xH200", "--allocator", "expandable",
                 "--time-limit", "2")
    assert "reserved (expandable)" in table
    sim = json.loads(_run(capsys, "simulate", "--plan", str(tmp_path / "plan.json"), "--json"))
    assert sim["allocator"] == "expandable"
    assert sim["peak_reserved_bytes"] == plan.prediction.peak_reserved_bytes


@pytest.mark.parametrize("offload", [None, "0.5"])
def test_simulate_reports_reserved_beside_the_hbm_peak(capsys, tmp_path, offload):
    argv = ["simulate", _scenario(tmp_path, "expandable"), "--layers", "4", "--json"]
    if offload:
        argv += ["--offload", offload]
    d = json.loads(_run(capsys, *argv))
    assert d["allocator"] == "expandable"
    assert d["peak_reserved_bytes"] >= 0.99 * d["peak_bytes"]["hbm"]
