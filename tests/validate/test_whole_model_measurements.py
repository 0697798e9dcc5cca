"""The whole Llama-3.1-8B with AdamW trained on the H200 from the whole-step search's plans
(validate/measurements/h200/whole-model-2026-12-03/, plans in validate/plans/whole-model/),
re-predicted by today's replay. Step time, host and HBM peaks are held to the issue's bands;
the plan that ran out of memory is named and its replay says it does not fit its budget."""

import json
from pathlib import Path

import pytest

from hwmodels.units import GiB
from validate.bench import repredict
from validate.records import PlanRunFile

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "validate" / "measurements" / "h200" / "whole-model-2026-12-03"
PLANS = ROOT / "validate" / "plans" / "whole-model"

TIMED = ["whole-8b-64k-120g", "whole-8b-128k-120g", "whole-8b-256k-120g-v2", "whole-8b-256k-120g-v3"]
# Measured 126.75 / 131.29 / 124.81 GiB (64K, 128K, 256K) where the replay once said 119.88: it did
# not count, at the chunked loss's forward (the 64K and 128K peaks), torch.logsumexp's fp32
# temporary of a chunk's logits beside them and the previous chunk's bf16 gradient (3.91 GiB at
# 8K-token chunks) and the last layer's output the decoder's loop holds through the loss (0.5 /
# 1 GiB), nor the whole input that the executor keeps for a layer recomputing tokens (the replay
# held the recomputed rows only: 4.25 GiB at 128K). The 64K run's executor also held layer 8's
# whole input for a recompute fraction of rounding noise (0.5 GiB; now none recomputes, and none
# is held), and every run held the LM head's fp32 copy from the previous step's GPU optimizer
# step (1.96 GiB; no longer): the 64K peak is the replay's 124.29 GiB plus those two, within
# 0.01 GiB (a memory snapshot of its step 1), so the replay is low by what today's executor no
# longer holds (-1.9%, -1.8%, -2.1%).
# The 256K v3 plan ran (2026-12-03, 11:37 UTC) with the executor that no longer holds those two:
# 120.94 GiB measured against 119.88 replayed (-0.9%), 157.59 s against 152.28 (-3.4%); held out
# (no fit saw it).
HBM_BAND = 0.03
FIRST_STEP = ["whole-8b-384k-120g"]
"""Runs whose timed step is the process's first (``--warmup 0``: setup, a warm-up and a timed step
did not fit one 10-minute device call). H200, 2026-12-03, 11:55 UTC: the first whole-model run of a
plan that checkpoints every layer (nine inputs kept in HBM, 23 offloaded to the host; moments on
NVMe, AdamW on the CPU) and the first at 384K, held out.
- HBM: torch's AdamW makes its moments at its first ``step()``, after the backward, so a first
  step's peak holds none of the GPU-stepped moments (here the embedding's and the LM head's, 7.83
  GiB) that every later step holds: 85.64 GiB measured, 93.47 GiB replayed for a later step, 85.64
  GiB without those moments (within 0.01%).
- Step: 411.26 s measured, 389.08 s replayed (-5.4%): a first step also pays one-time costs
  (CUDA and cuBLAS set-up, first kernel launches, expandable segments mapping their pages); the
  same code's warmed-up 256K step was -3.4%. Held to a band: -7% .. 0%."""
FIRST_STEP_TIME_BAND = (-0.07, 0.0)
KNOWN_OOM = {"whole-8b-128k-oom-measured.json": "whole-8b-128k", "whole-8b-128k-nocap-oom-measured.json": "whole-8b-128k"}


def _case(name: str) -> dict:
    data = json.loads((RUNS / f"{name}-measured.json").read_text())
    PlanRunFile.model_validate(data)
    (case,) = data["cases"]
    return case


@pytest.mark.parametrize("name", TIMED)
def test_step_time_within_5pct_and_host_within_3pct(name):
    case = _case(name)
    assert case["status"] == "ok" and case["num_layers"] == 32
    pred = repredict(PLANS / f"{name}.json")
    assert pred["step_time_s"] / case["step_time_s"] - 1 == pytest.approx(0, abs=0.05)
    # the host holds the activation pool and, for CPU-stepped layers, the executor's model-state
    # regions (bf16 parameters and gradients, states, staging and the fp32 scratch it sizes)
    host = case["host_pool_peak_bytes"] + case.get("model_states", {}).get("host_bytes", 0)
    assert pred["peak_host_bytes"] / host - 1 == pytest.approx(0, abs=0.03)


def _gpu_moments_at_peak_bytes(name: str) -> int:
    """The optimizer states in HBM at the replay's allocated peak (what a first step lacks)."""
    from planners.plan import load_plan
    from planners.swap import PlanContext, evaluate
    from simulator.workload import walk_memory

    plan = load_plan(PLANS / f"{name}.json")
    res = evaluate(PlanContext.from_plan(plan, source=name), plan.provenance.planner, plan.layers)
    assert res.applied is not None
    return walk_memory(res.applied.workload).peak_breakdown_bytes.get("optimizer_state", 0)


@pytest.mark.parametrize("name", FIRST_STEP)
def test_first_steps_peak_without_the_moments_and_time_in_their_band(name):
    case = _case(name)
    assert case["status"] == "ok" and case["num_layers"] == 32
    assert json.loads((RUNS / f"{name}-measured.json").read_text())["warmup"] == 0
    pred = repredict(PLANS / f"{name}.json")
    moments = _gpu_moments_at_peak_bytes(name)
    assert moments > 0
    err = (pred["peak_hbm_bytes"] - moments) / case["peak_allocated_bytes"] - 1
    assert abs(err) <= HBM_BAND, f"{name}: HBM without the moments {err:+.1%}"
    step_err = pred["step_time_s"] / case["step_time_s"] - 1
    assert FIRST_STEP_TIME_BAND[0] <= step_err <= FIRST_STEP_TIME_BAND[1], f"{name}: step {step_err:+.1%}"
    host = case["host_pool_peak_bytes"] + case.get("model_states", {}).get("host_bytes", 0)
    assert pred["peak_host_bytes"] / host - 1 == pytest.approx(0, abs=0.03)


BENCH_256K = ROOT / "validate" / "measurements" / "h200" / "bench-mistral-7b-stack" / "256k" / "bench-measured.json"
BENCH_PLANS = ROOT / "validate" / "plans" / "bench-mistral-7b-stack"


def ideal_256k_s() -> float:
    """The whole Llama-3.1-8B's 256K step with no memory limit, its layers measured: the replay of
    the plan with nothing recomputed or offloaded (`none`: embedding, 32 layers, the whole LM head
    and loss, the GPU AdamW step) with its 32 layers' predicted time replaced by the measured one.
    The layers are the Mistral-7B stack's (hidden 4096, GQA 32/8, intermediate 14336: the 8B's
    layer shape; rope theta changes no cost), whose bench ideal ran two layers with nothing
    recomputed on the same H200 the same day; its prediction is the same replay's."""
    from planners import baselines
    from planners.plan import load_plan
    from planners.swap import PlanContext, evaluate

    (ideal,) = [c for c in json.loads(BENCH_256K.read_text())["cells"]
                if c["mode"] == "ideal" and c["status"] == "ok"]
    (pred,) = [c for c in json.loads((BENCH_PLANS / "index.json").read_text())["ideal"]
               if c["seq_len"] == 256 * 1024]
    assert ideal["num_layers"] == pred["num_layers"]
    plan = load_plan(PLANS / "whole-8b-256k-120g-v3.json")
    c0 = PlanContext.from_plan(plan, source="whole-8b-256k-120g-v3")
    assert (c0.model.hidden_size, c0.model.intermediate_size, c0.model.num_heads, c0.model.num_kv_heads) == (
        4096, 14336, 32, 8)
    ctx = PlanContext(model=c0.model, job=c0.job.model_copy(update={"checkpointing": "none"}), node=c0.node,
                      gpu_budget_bytes=c0.gpu_budget_bytes, host_budget_bytes=c0.host_budget_bytes,
                      allocator=c0.allocator)
    layers, _ = baselines.BASELINES["none"](ctx)
    none = evaluate(ctx, "none", layers, short_of_time=True)
    assert none.step_time_s is not None
    per_layer_delta_s = (ideal["step_time_s"] - pred["predicted"]["step_time_s"]) / ideal["num_layers"]
    return none.step_time_s + c0.model.num_layers * per_layer_delta_s


def test_the_256k_steps_run_at_0_9x_the_ideal_of_measured_layers():
    ideal_s = ideal_256k_s()
    assert ideal_s == pytest.approx(144.88, abs=0.05)  # 141.90 s replayed + 32 x (4.363 - 4.270) s
    for name in ("whole-8b-256k-120g-v2", "whole-8b-256k-120g-v3"):
        assert ideal_s / _case(name)["step_time_s"] >= 0.9, name  # 0.911x, 0.919x


@pytest.mark.parametrize("name", TIMED)
def test_hbm_peak_within_3pct(name):
    case = _case(name)
    pred = repredict(PLANS / f"{name}.json")
    err = pred["peak_hbm_bytes"] / case["peak_allocated_bytes"] - 1
    assert abs(err) <= HBM_BAND, f"{name}: HBM {err:+.1%}"
    assert case["peak_allocated_bytes"] < 140 * GiB  # ran on the whole card (--no-cap)


def test_the_out_of_memory_runs_are_the_known_ones_and_do_not_fit():
    ooms = {}
    for path in sorted(RUNS.glob("*-measured.json")):
        for case in json.loads(path.read_text())["cases"]:
            if case["status"] == "oom":
                ooms[path.name] = case["case"]
    assert ooms == KNOWN_OOM
    for name in sorted(set(KNOWN_OOM.values())):
        plan = json.loads((PLANS / f"{name}.json").read_text())
        assert repredict(PLANS / f"{name}.json")["peak_hbm_bytes"] > plan["scenario"]["gpu_budget_bytes"]
