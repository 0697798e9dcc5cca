"""`Plan.unexecuted` (planners, which cannot import validate) refuses at least what the training
executor's own check refuses, and for these choices exactly the same."""

import pytest

pytest.importorskip("torch")

from hwmodels.catalog import load_node  # noqa: E402
from planners.plan import LayerPlan, ModelStatePlacement, Plan, Provenance, RoleAction  # noqa: E402
from simulator.job import TrainJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from validate.executor import executor_unsupported  # noqa: E402

CPU = dict(grads="host", optimizer_step="cpu")
PLACEMENTS = [
    ModelStatePlacement(),
    ModelStatePlacement(optimizer_states="host", master_weights="host", **CPU),
    ModelStatePlacement(params="host", params_prefetch_layers=1, optimizer_states="nvme", master_weights="nvme", **CPU),
    ModelStatePlacement(optimizer_states="host", master_weights="host"),  # GPU step, states off HBM
]


@pytest.mark.parametrize("k", range(len(PLACEMENTS)))
@pytest.mark.parametrize("tier", ["host", "nvme"])
def test_unexecuted_agrees_with_the_executor(k, tier):
    node = load_node("1xH200-box")
    scenario = Scenario(model=get_model("llama-3.2-1b").with_layers(2), job=TrainJob(seq_len=4096), node=node,
                        gpu_budget_bytes=node.gpu.hbm_capacity_bytes, host_budget_bytes=node.host_memory.capacity_bytes)
    off = RoleAction(action="offload", alpha_frac=1.0, tier=tier)
    layers = [LayerPlan(layer=i, roles={"mlp_hidden": off}, model_states=PLACEMENTS[k]) for i in range(2)]
    plan = Plan.for_scenario(scenario, layers=layers, lm_head_chunks=4,
                             provenance=Provenance(tierplan_version="t", planner="whole_step"))
    assert bool(plan.unexecuted()) == bool(executor_unsupported(plan)), (plan.unexecuted(), executor_unsupported(plan))
