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

TIMED = ["whole-8b-64k-120g", "whole-8b-128k-120g", "whole-8b-256k-120g-v2", "whole-8b-256k-120g-v3",
         "whole-8b-256k-132g"]
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
# The 256K plan at a 132 GiB budget (optimizer states of more layers resident, stepped on the GPU) ran
# 2026-12-03, 18:36-18:43 UTC (code 218d659): 157.37 s against 152.56 replayed (-3.1%), 132.10 GiB
# allocated against 130.44 (-1.3%), reserved 138.74 GiB against 131.63 (-5.1%: expandable segments
# mapped 6.6 GiB over the allocated peak, where the replay maps 1.2), host +0.9%; held out.
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
- Step: 411.26 s measured; 389.08 s replayed when the attention rate past 256K was held at 256K's
  (-5.4%), 397.96 s since cuDNN's causal attention was measured at 384K-1M (-3.2%; 2026-12-03, the
  H200 profile). A first step also pays one-time costs (CUDA and cuBLAS set-up, first kernel
  launches, expandable segments mapping their pages), so it is held to -5% .. 0%."""
FIRST_STEP_TIME_BAND = (-0.05, 0.0)
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


def _none_step_s(ctx, num_layers: int) -> float:
    """The replayed step of ``ctx``'s model with ``num_layers`` layers, nothing recomputed or
    offloaded, no memory limit (the `none` strategy)."""
    from planners import baselines
    from planners.swap import PlanContext, evaluate

    c = PlanContext(model=ctx.model.with_layers(num_layers), job=ctx.job.model_copy(update={"checkpointing": "none"}),
                    node=ctx.node, gpu_budget_bytes=ctx.gpu_budget_bytes, host_budget_bytes=ctx.host_budget_bytes,
                    allocator=ctx.allocator)
    layers, _ = baselines.BASELINES["none"](c)
    res = evaluate(c, "none", layers, short_of_time=True)
    assert res.step_time_s is not None
    return res.step_time_s


def ideal_256k_s() -> tuple[float, float, float]:
    """The whole Llama-3.1-8B's 256K step with no memory limit, its layers measured: (ideal,
    measured seconds a layer, replayed rest). The rest (embedding, final norm, the whole LM head
    and loss, the GPU AdamW step) is the replay of the plan with nothing recomputed or offloaded
    (`none`) less its 32 layers, a layer being what one more layer adds to that replay (32 against
    31). A layer is measured on the Mistral-7B stack (hidden 4096, GQA 32/8, intermediate 14336:
    the 8B's layer shape; rope theta changes no cost), whose bench ideal ran two layers with
    nothing recomputed on the same H200 the same day (the stack's own loss is a few milliseconds)."""
    from planners.plan import load_plan
    from planners.swap import PlanContext

    (ideal,) = [c for c in json.loads(BENCH_256K.read_text())["cells"]
                if c["mode"] == "ideal" and c["status"] == "ok"]
    plan = load_plan(PLANS / "whole-8b-256k-120g-v3.json")
    ctx = PlanContext.from_plan(plan, source="whole-8b-256k-120g-v3")
    m = ctx.model
    assert (m.hidden_size, m.intermediate_size, m.num_heads, m.num_kv_heads, m.num_layers) == (4096, 14336, 32, 8, 32)
    whole_s = _none_step_s(ctx, 32)
    layer_pred_s = whole_s - _none_step_s(ctx, 31)
    rest_s = whole_s - 32 * layer_pred_s
    layer_s = ideal["step_time_s"] / ideal["num_layers"]
    return rest_s + 32 * layer_s, layer_s, rest_s


def test_the_256k_steps_against_the_ideal_of_measured_layers():
    ideal_s, layer_s, rest_s = ideal_256k_s()
    # 32 x 4.363 s measured + 1.64 s replayed = 141.25 s (the replay's own ideal: 141.90 s)
    assert layer_s == pytest.approx(4.3626, abs=1e-3) and rest_s == pytest.approx(1.64, abs=0.05)
    ratios = {name: ideal_s / _case(name)["step_time_s"]
              for name in ("whole-8b-256k-120g-v2", "whole-8b-256k-120g-v3", "whole-8b-256k-132g")}
    # 0.888x, 0.896x and 0.898x: short of the 0.9x (README says so); held so that it cannot slip
    assert ratios["whole-8b-256k-132g"] == pytest.approx(0.898, abs=0.002), ratios
    assert ratios["whole-8b-256k-120g-v3"] == pytest.approx(0.896, abs=0.002), ratios
    assert ratios["whole-8b-256k-120g-v2"] == pytest.approx(0.888, abs=0.002), ratios


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
