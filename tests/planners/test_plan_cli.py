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
                          "solve_time_s", "cost"}
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
    assert err.strip().startswith("tierplan plan: infeasible: weights + grads + optimizer states need "
                                  "145.5 GiB > 80.0 GiB gpu budget; whole step: no combination fits: ")
    assert "host budget" in err and "\n" not in err.strip()  # off HBM the states overflow the host
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


def _no_incumbent(monkeypatch, calls=None):
    """Every MIP solve stops at its time limit without an incumbent (as HiGHS does when the
    limit is too short for the problem), after sleeping through that limit."""
    import time

    import planners.solvers
    from planners.solvers import NO_SOLUTION, SolveResult

    def solve(prob, *, time_limit_s, solver="highs", lp_path=None, max_nodes=None):
        if calls is not None:
            calls.append(time_limit_s)
        time.sleep(time_limit_s)
        return SolveResult(status=NO_SOLUTION, solver=solver, objective=None, best_bound=1.0, gap=None,
                           solve_time_s=time_limit_s, time_limit_s=time_limit_s)

    monkeypatch.setattr(planners.solvers, "solve", solve)


SMALL = ("--model", "llama-2-7b", "--layers", "4", "--seq-len", "64K", "--hardware", "1xH200")


def test_time_limit_without_incumbent_returns_the_best_baseline_not_infeasible(capsys, tmp_path, monkeypatch):
    _no_incumbent(monkeypatch)
    code, out, err = _run(capsys, "plan", *SMALL, "--gpu-budget", "60GiB", "--time-limit", "0.4",
                          "--json", "--out", str(tmp_path))
    assert code == 0 and "infeasible" not in err
    d = json.loads(out)
    mip = next(s for s in d["strategies"] if s["name"] == "mip")
    baselines = [s for s in d["strategies"] if s["name"] != "mip" and s["feasible"]]
    fastest = min(baselines, key=lambda s: s["step_time_s"])
    # the fastest baseline's layer decisions, replayed in the MIP variant that runs them fastest
    # (here with SwiGLU's activation recomputed): never slower than the baseline as listed
    assert mip["feasible"] and mip["step_time_s"] <= fastest["step_time_s"]
    assert mip["reason"].startswith(f"{fastest['name']}'s plan (time limit:")
    plan = load_plan(tmp_path / "plan.json")
    assert plan.provenance.planner == d["best"]
    # the best is that baseline, or the MIP's row where its variant replays the decisions faster
    assert d["best"] == (fastest["name"] if mip["step_time_s"] == fastest["step_time_s"] else "mip")


def test_time_limit_status_and_gap_of_the_fallback(monkeypatch):
    from hwmodels.catalog import load_node
    from hwmodels.units import GiB
    from planners.swap import plan_training
    from simulator.job import TrainJob
    from simulator.model import get_model

    _no_incumbent(monkeypatch)
    model = get_model("llama-2-7b").with_layers(4)
    rep = plan_training(model, TrainJob(seq_len=65536), load_node("1xH200"), gpu_budget_bytes=60 * GiB,
                        time_limit_s=0.4)
    mip = rep.result("mip")
    assert mip.feasible and mip.plan.provenance.status.startswith("time_limit:fallback:")
    # the gap is the baseline's own step time against the solver's bound (1 s here); the MIP's
    # variant may replay the baseline's decisions a little faster, so it is never understated
    baseline = rep.result(mip.plan.provenance.status.rsplit(":", 1)[1])
    assert mip.plan.provenance.gap == pytest.approx(1.0 - 1.0 / baseline.step_time_s)
    assert mip.plan.provenance.gap >= 1.0 - 1.0 / mip.step_time_s
    assert not rep.timed_out


def test_time_limit_without_any_plan_exits_4_saying_time_limit(capsys, tmp_path, monkeypatch):
    _no_incumbent(monkeypatch)
    # the whole-step search finds a plan here (states off HBM): left out, this is the MIP's limit
    import planners.swap.strategies

    monkeypatch.setattr(planners.swap.strategies, "whole_step_applies", lambda ctx: "not searched: test")
    code, out, err = _run(capsys, "plan", *SMALL, "--gpu-budget", "24GiB", "--time-limit", "0.4",
                          "--json", "--out", str(tmp_path / "out"))
    assert code == 4, err
    assert err.startswith("tierplan plan: time limit:") and "infeasible" not in err
    assert json.loads(out)["status"] == "time_limit"
    assert not (tmp_path / "out").exists()


def test_the_mip_variants_share_the_time_limit(monkeypatch):
    """Building, solving and replaying every variant stay within the limit plus one build
    (generous bound: this machine's cores are shared)."""
    import time

    from hwmodels.catalog import load_node
    from hwmodels.units import GiB
    from planners.swap import PlanContext, plan_mip_variants
    from simulator.job import TrainJob
    from simulator.model import get_model

    calls: list[float] = []
    _no_incumbent(monkeypatch, calls)
    ctx = PlanContext(model=get_model("llama-2-7b").with_layers(8), job=TrainJob(seq_len=65536),
                      node=load_node("1xH200"), gpu_budget_bytes=60 * GiB, host_budget_bytes=1000 * GiB)
    ctx.profile("none"), ctx.profile("full")  # profiles are the baselines' (outside the limit)
    t0 = time.perf_counter()
    res = plan_mip_variants(ctx, time_limit_s=2.0)
    wall = time.perf_counter() - t0
    assert res.timed_out and not res.feasible
    assert sum(calls) <= 2.0 + 1e-6 and wall < 2.0 + 3.0
