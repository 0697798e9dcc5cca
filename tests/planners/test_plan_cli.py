"""`tierplan plan`: the table, the JSON object, the files for the best plan, and the exit codes."""

import json

import pytest

from planners.plan import load_plan
from planners.swap import STRATEGIES
from tierplan.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_lists_every_strategy_and_the_best(capsys, tmp_path):
    code, out, _ = _run(capsys, "plan", "--layers", "6", "--json", "--out", str(tmp_path))
    assert code == 0
    d = json.loads(out)
    assert [s["name"] for s in d["strategies"]] == list(STRATEGIES)
    for s in d["strategies"]:
        assert set(s) == {"name", "feasible", "step_time_s", "mfu", "peak_hbm_bytes", "peak_reserved_bytes",
                          "peak_host_bytes", "reason",
                          "solve_time_s"}
        assert s["feasible"] or s["reason"]
    best = next(s for s in d["strategies"] if s["name"] == d["best"])
    assert best["feasible"]
    assert all(best["step_time_s"] <= s["step_time_s"] for s in d["strategies"] if s["feasible"])
    plan = load_plan(tmp_path / "plan.json")
    assert plan.scenario.model.name == "memo-7b" and plan.scenario.node.name == "8xA800"
    assert plan.scenario.job.parallelism.tp == 8
    assert plan.prediction.step_time_s == pytest.approx(best["step_time_s"], rel=1e-6)
    assert plan.prediction.peak_hbm_bytes == best["peak_hbm_bytes"]
    assert len(plan.layers) == 6
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert trace["traceEvents"]
    assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_shows_all_strategies(capsys):
    code, out, _ = _run(capsys, "plan", "--model", "llama-2-7b", "--layers", "4", "--seq-len", "64K",
                        "--hardware", "1xH200", "--gpu-budget", "60GiB")
    assert code == 0
    for name in STRATEGIES:
        assert name in out
    assert "mip: highs" in out


def test_infeasible_request_exits_3_names_the_constraint_and_writes_nothing(capsys, tmp_path):
    code, out, err = _run(capsys, "plan", "--model", "llama-2-13b", "--seq-len", "16K", "--hardware", "1xH200",
                          "--gpu-budget", "80GiB", "--out", str(tmp_path / "out"))
    assert code == 3
    assert err.strip() == ("tierplan plan: infeasible: weights + grads + optimizer states need "
                           "145.5 GiB > 80.0 GiB gpu budget")
    assert not (tmp_path / "out").exists()


def test_bad_budget_is_one_line(capsys):
    code, _, err = _run(capsys, "plan", "--gpu-budget", "80XB")
    assert code == 2
    assert "--gpu-budget" in err and len(err.strip().splitlines()) == 1


def test_mlp_activation_flag_reaches_the_plan_file(capsys, tmp_path):
    code, out, _ = _run(capsys, "plan", "--model", "probe-llama7b-stack", "--layers", "2", "--seq-len", "8K",
                        "--optimizer", "none", "--hardware", "1xH200", "--mlp-activation", "recomputed",
                        "--out", str(tmp_path))
    assert code == 0 and "mlp_activation recomputed" in out
    plan = load_plan(tmp_path / "plan.json")
    assert plan.mlp_activation == "recomputed" == plan.scenario.job.mlp_activation


def test_mlp_activation_recomputed_needs_swiglu_in_one_line(capsys, tmp_path):
    code, out, err = _run(capsys, "plan", "--model", "gpt2", "--mlp-activation", "recomputed",
                          "--out", str(tmp_path))
    assert code == 2 and not out and not list(tmp_path.iterdir())
    assert err.count("\n") == 1 and "job.mlp_activation" in err
