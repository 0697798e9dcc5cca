"""run_plan and `tierplan validate plan` on the CPU (--smoke), and the committed H200 runs."""

import json
import pathlib

import pytest

from tierplan.cli import main
from validate import run_plan

REPO = pathlib.Path(__file__).resolve().parents[2]
PLANS = REPO / "validate" / "plans"
H200 = REPO / "validate" / "measurements" / "h200"
MEASURED = sorted(H200.glob("executor-h200-*-measured.json"))


def test_validate_plan_smoke_runs_plan_and_baseline(tmp_path, capsys):
    code = main(
        [
            "validate",
            "plan",
            str(PLANS / "probe8-64k-mip.json"),
            "--smoke",
            "--baselines",
            "none",
            "--check-grads",
            "40",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    cases = {c["case"]: c for c in out["measured"]["cases"]}
    assert set(cases) == {"probe8-64k-mip", "probe8-64k-mip:none"}
    mip = cases["probe8-64k-mip"]
    assert mip["status"] == "ok" and mip["num_layers"] == 8
    assert 0 < mip["host_pool_peak_bytes"] <= mip["host_pool_bytes"]
    assert mip["grad_check"]["bitwise_equal"]
    figures = {r["figure"] for r in out["comparison"]["rows"]}
    assert figures == {"step_time_s", "peak_host_bytes"}  # no HBM peak on the CPU
    assert json.loads((tmp_path / "comparison.json").read_text()) == out["comparison"]


def test_plan_over_host_memory_is_refused_before_a_step(tmp_path, monkeypatch):
    monkeypatch.setattr(run_plan, "host_memory_bytes", lambda: 1024)
    res = run_plan.run(
        [str(PLANS / "probe8-32k-offload_all.json")], out_dir=str(tmp_path), smoke=True
    )
    case = res["measured"]["cases"][0]
    assert case["status"] == "refused" and "step_time_s" not in case
    assert (
        case["message"].startswith("plan: offload pool ")
        and "exceeds available host memory" in case["message"]
    )
    assert res["comparison"]["not_measured"][0]["predicted_feasible"] is True


def test_unknown_baseline_is_one_line(capsys):
    assert (
        main(
            [
                "validate",
                "plan",
                str(PLANS / "probe8-64k-mip.json"),
                "--smoke",
                "--baselines",
                "zero",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--baselines: unknown 'zero'" in err and "\n" not in err


@pytest.mark.parametrize("path", MEASURED, ids=lambda p: p.name)
def test_committed_gpu_runs_are_consistent(path):
    data = json.loads(path.read_text())
    prov = data["provenance"]
    assert (
        prov["device"] == "NVIDIA H200" and prov["git_commit"] and prov["torch"].startswith("2.11")
    )
    comparison = json.loads(
        path.with_name(path.name.replace("-measured", "-comparison")).read_text()
    )
    rows = {(r["case"], r["figure"]): r for r in comparison["rows"]}
    for case in data["cases"]:
        assert case["status"] in ("ok", "oom", "refused")
        if case["status"] != "ok":
            assert case["message"].startswith(case["case"] + ": out of memory at ")
            continue
        assert case["peak_allocated_bytes"] <= case["gpu_budget_bytes"]  # the cap held
        assert case["host_pool_peak_bytes"] <= case["host_pool_bytes"]
        assert sorted(case["step_times_s"])[len(case["step_times_s"]) // 2] == case["step_time_s"]
        row = rows[(case["case"], "step_time_s")]
        assert row["rel_error"] == pytest.approx(
            case["prediction"]["step_time_s"] / case["step_time_s"] - 1
        )


def test_validate_plan_smoke_with_an_arena(tmp_path, capsys):
    plan = str(PLANS / "probe8-32k-memo.json")
    code = main(["validate", "plan", plan, "--smoke", "--arena", "--repeats", "2", "--out", str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    case = out["measured"]["cases"][0]
    assert case["status"] == "ok"
    assert case["arena"]["status"] in ("optimal", "feasible")
    assert case["arena"]["capacity_bytes"] >= case["arena"]["lower_bound_bytes"] > 0
    # the prediction with the arena: the full-size plan's buffers in one arena held all step
    pa = case["prediction_arena"]
    assert pa["arena_bytes"] > 0 and pa["peak_hbm_bytes"] >= pa["peak_hbm_bytes_without_arena"]


def test_arena_without_a_warmup_step_is_one_line(tmp_path):
    res = run_plan.run(
        [str(PLANS / "probe8-32k-memo.json")], out_dir=str(tmp_path), smoke=True, warmup=0, arena=True
    )
    case = res["measured"]["cases"][0]
    assert case["status"] == "refused"
    assert case["message"] == "--arena: needs --warmup 1 or more (the first step records the buffers)"


@pytest.mark.parametrize("flag", ["--memory-trace", "--kernel-profile", "--no-cap", "--expandable-segments"])
def test_gpu_diagnostics_are_refused_in_one_line_on_the_cpu(flag, tmp_path, capsys):
    plan = str(PLANS / "probe8-32k-memo.json")
    code = main(["validate", "plan", plan, "--smoke", flag, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "need a GPU (not --smoke)" in err[0]
    assert not (tmp_path / "measured.json").exists()


def test_baselines_run_beside_a_plan_whose_mlp_activation_is_recomputed(tmp_path, capsys):
    """The baselines keep the plan's scenario, SwiGLU activation included (they used to be
    built without it, and the recomputed plan's job refused them)."""
    plan = PLANS / "bench" / "probe8-64k-48g-mip.json"
    assert json.loads(plan.read_text())["mlp_activation"] == "recomputed"
    code = main(["validate", "plan", str(plan), "--smoke", "--baselines", "none,checkpoint",
                 "--repeats", "1", "--out", str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    cases = {c["case"]: c for c in out["measured"]["cases"]}
    assert set(cases) == {"probe8-64k-48g-mip", "probe8-64k-48g-mip:none", "probe8-64k-48g-mip:checkpoint"}
    assert all(c["status"] == "ok" for c in cases.values())


def test_the_measured_file_records_the_whole_command(tmp_path, capsys):
    """Provenance names the command as given, flags included (it used to keep only the plans)."""
    plan = str(PLANS / "probe8-32k-memo.json")
    argv = ["validate", "plan", plan, "--smoke", "--repeats", "1", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0
    prov = json.loads(capsys.readouterr().out)["measured"]["provenance"]
    assert prov["argv"] == ["tierplan", *argv]


def test_a_plan_the_replay_cannot_carry_out_is_reported_not_a_records_error(tmp_path):
    """A case refused before its plan is replayed has no verdict to compare: the comparison file
    says so (``predicted_feasible`` None) and keeps the refusal's reason."""
    plan = PLANS / "whole-model" / "whole-8b-4l.json"  # MLP chunk counts differ between layers
    res = run_plan.run([str(plan)], out_dir=str(tmp_path), smoke=True)
    (case,) = res["measured"]["cases"]
    assert case["status"] == "refused" and "layers.mlp_chunks" in case["message"]
    (nm,) = res["comparison"]["not_measured"]
    assert nm["predicted_feasible"] is None and "layers.mlp_chunks" in nm["message"]
    assert json.loads((tmp_path / "comparison.json").read_text())["not_measured"] == [nm]
