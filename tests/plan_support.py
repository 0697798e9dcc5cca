"""Plans for tests: decisions on a small embedded scenario (a probe-shaped stack on 1xH200)."""

from hwmodels.catalog import load_node
from planners.plan import LayerPlan, Plan, Provenance
from simulator.job import TrainJob
from simulator.model import get_model
from simulator.scenario import Scenario


def scenario_for(num_layers: int, *, mlp_activation: str = "saved", seq_len: int = 4096,
                 gpu_budget_bytes: int = 1 << 30, host_budget_bytes: int = 1 << 30,
                 rmsnorm: str = "eager") -> Scenario:
    model = get_model("probe-llama7b-stack").with_layers(num_layers)
    job = TrainJob(seq_len=seq_len, loss="mean_square_fp32", optimizer="none", mlp_activation=mlp_activation,
                   rmsnorm=rmsnorm)
    return Scenario.build(model, job, load_node("1xH200"), gpu_budget_bytes=gpu_budget_bytes,
                          host_budget_bytes=host_budget_bytes)


def plan_for(layers: list[LayerPlan], *, mlp_activation: str = "saved", rmsnorm: str = "eager",
             **fields) -> Plan:
    """A plan of ``layers`` for ``scenario_for(len(layers))``, made by planner "test"."""
    return Plan.for_scenario(scenario_for(len(layers), mlp_activation=mlp_activation, rmsnorm=rmsnorm),
                             layers=layers,
                             mlp_activation=mlp_activation,
                             provenance=Provenance(tierplan_version="test", planner="test"), **fields)
