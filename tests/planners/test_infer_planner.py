"""planners.infer: the MIP equals the best count enumeration, rules, the CLI end to end."""

import json
import statistics

import pytest

from hwmodels.catalog import load_node
from hwmodels.units import GiB, MiB
from planners.infer import plan_inference, replay_plan, spread
from planners.infer.mip import bound_s, coefficients, enumerate_counts, solve_placement
from simulator.job import InferJob
from simulator.model import get_model
from simulator.scenario import Scenario
from tierplan.cli import main

MODEL = get_model("llama-3.2-1b").with_layers(4)


def _scenario(node="1xH200-tiered", *, gpu=None, host=100 * GiB, prompt=8192, batch=8):
    return Scenario.build(MODEL, InferJob(prompt_len=prompt, gen_len=4, batch=batch), load_node(node),
                          gpu_budget_bytes=gpu, host_budget_bytes=host)


def test_spread_places_counts_evenly():
    assert spread(8, {"host": 2}) == ["hbm", "hbm", "host", "hbm", "hbm", "hbm", "host", "hbm"]
    assert spread(4, {"host": 4}) == ["host"] * 4


@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_mip_equals_the_best_count_enumeration(objective):
    """Layers are homogeneous: the MIP's per-layer choice has the objective of the best counts
    (host, cxl, nvme KV layers, streamed weight layers) found by enumerating them all."""
    sc = _scenario(gpu=int(2.1 * GiB), host=150 * MiB)
    c = coefficients(sc, num_staging_buffers=2)
    best, counts = enumerate_counts(c, objective=objective)
    sol = solve_placement(sc, objective=objective, time_limit_s=10)
    assert sol.status == "optimal"
    assert sol.objective == pytest.approx(best, rel=1e-6)
    assert bound_s(c, sol.counts, objective=objective) == pytest.approx(best, rel=1e-6)
    assert sum(sol.counts.values()) > 0  # the budget forces something off HBM


def test_mip_plan_is_replayed_and_never_worse_than_a_rule():
    sc = _scenario(node="1xH200", gpu=int(1.8 * GiB))
    rep = plan_inference(sc, time_limit_s=10)
    mip = rep.result("mip")
    assert mip.feasible and mip.plan.unsupported() == ""
    assert replay_plan(mip.plan).decode_step_time_s == pytest.approx(mip.plan.prediction.decode_step_time_s,
                                                                    rel=1e-6)
    for r in rep.strategies:
        if r.feasible:
            assert mip.replay.decode_step_time_s <= r.replay.decode_step_time_s + 1e-12


def test_cli_plan_simulate_and_infeasible(tmp_path, capsys):
    args = ["plan", "--mode", "infer", "--model", "llama-3.2-1b", "--layers", "4", "--prompt-len", "8K",
            "--gen-len", "4", "--batch", "8", "--hardware", "1xH200", "--gpu-budget", "1.8GiB",
            "--time-limit", "5"]
    assert main(args + ["--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "best: mip" in out and ("in host" in out or "streamed from host" in out)
    assert main(["simulate", "--plan", str(tmp_path / "p" / "plan.json"), "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert sim["decode_step_time_s"] == pytest.approx(plan["prediction"]["decode_step_time_s"], abs=1e-6)
    assert main(args + ["--host-budget", "50MiB", "--out", str(tmp_path / "q")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tierplan plan: infeasible: host:")
    assert not (tmp_path / "q").exists()


def test_estimate_infer_says_what_the_tiers_buy(capsys):
    base = ["estimate", "--mode", "infer", "--model", "llama-3.2-1b", "--layers", "4", "--prompt-len", "4K",
            "--gen-len", "4"]
    assert main(base + ["--hardware", "1xH200", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["tiers"]
    assert main(base + ["--hardware", "1xH200-tiered", "--json"]) == 0
    tiered = json.loads(capsys.readouterr().out)["tiers"]
    assert [o["tiers"] for o in plain] == [["hbm"], ["hbm", "host"]]
    assert [o["tiers"][-1] for o in tiered] == ["hbm", "host", "cxl", "nvme", "csd"]
    assert tiered[2]["max_batch"] > tiered[1]["max_batch"]  # the CXL card holds more sequences' KV
    assert tiered[2]["decode_step_time_s_at_max_batch"] > tiered[1]["decode_step_time_s_at_max_batch"]
    assert main(base + ["--hardware", "1xH200"]) == 0
    assert "no CXL card or NVMe drive" in capsys.readouterr().out


def test_repredict_a_committed_bench_plan_at_the_measured_contexts():
    import pathlib

    from validate.infer_plans import repredict

    plan = pathlib.Path(__file__).parents[2] / "validate/plans/infer-bench/llama-3.1-8b-32k-b1-kv_host.json"
    rec = {"contexts": [32768, 32769, 32770, 32775]}
    out = repredict(plan, rec)
    assert out["contexts"] == rec["contexts"] and len(out["decode_step_times_s"]) == 4
    # link bound: one more token of context moves one more token of KV per layer
    assert out["decode_step_times_s"] == sorted(out["decode_step_times_s"])
    assert out["decode_step_time_s"] == pytest.approx(statistics.median(out["decode_step_times_s"][2:]))
    assert out["host_pinned_bytes"] == 32 * 2 * 8 * 128 * 2 * (32768 + 16)  # layers x K,V x heads x dim x bf16



def test_a_whole_card_budget_is_capped_at_what_a_process_can_allocate():
    """128K x 8 on the full H200: the best plan's HBM peak stays under the card less the driver's
    reserve and the CUDA context (a 139.66 GiB plan under a 140.40 GiB budget ran out of memory)."""
    from hwmodels.catalog import load_node
    from planners.infer import plan_inference
    from simulator.inference import allocatable_hbm_bytes
    from simulator.job import parse_job
    from simulator.model import get_model
    from simulator.scenario import Scenario

    node = load_node("1xH200")
    job = parse_job({"mode": "infer", "prompt_len": "128K", "gen_len": 16, "batch": 8})
    sc = Scenario.build(get_model("llama-3.1-8b"), job, node)
    assert sc.gpu_budget_bytes > allocatable_hbm_bytes(node)
    report = plan_inference(sc, objective="throughput", time_limit_s=10.0, solver="highs")
    best = report.result(report.best)
    assert best.replay.feasible
    assert best.plan.prediction.tier_peak_bytes["hbm"] <= allocatable_hbm_bytes(node)


def test_mip_quantizes_only_when_the_job_accepts_it():
    """A budget the bf16 KV does not fit: lossless (kv_quant none) the MIP moves KV to the host
    and stores nothing quantized; accepting int8 it keeps layers in HBM quantized, is faster,
    equals the best count enumeration, and its plan is replayed and executable."""
    def scenario(kv_quant):
        job = InferJob(prompt_len=8192, gen_len=4, batch=8, kv_quant=kv_quant)
        return Scenario.build(MODEL, job, load_node("1xH200"), gpu_budget_bytes=int(2.0 * GiB),
                              host_budget_bytes=100 * GiB)

    lossless = plan_inference(scenario("none"), time_limit_s=10).result("mip")
    assert lossless.feasible
    assert {lp.kv_cache.dtype for lp in lossless.plan.layers} == {"bf16"}
    sc = scenario("int8")
    quant = plan_inference(sc, time_limit_s=10).result("mip")
    assert quant.feasible and quant.plan.unsupported() == ""
    dtypes = [lp.kv_cache.dtype for lp in quant.plan.layers]
    assert "int8" in dtypes and {lp.kv_cache.group_size for lp in quant.plan.layers if lp.kv_cache.dtype == "int8"} \
        == {MODEL.head_dim}
    assert quant.replay.decode_step_time_s < lossless.replay.decode_step_time_s
    assert replay_plan(quant.plan).decode_step_time_s == pytest.approx(quant.plan.prediction.decode_step_time_s,
                                                                      rel=1e-6)
    c = coefficients(sc, num_staging_buffers=2)
    best, _ = enumerate_counts(c, objective="throughput")
    sol = solve_placement(sc, objective="throughput", time_limit_s=10)
    assert sol.status == "optimal" and sol.objective == pytest.approx(best, rel=1e-6)
    assert any(k.endswith(":int8") and n for k, n in sol.counts.items())
