"""The planning context: one (model, job, node, budgets) request and its cached step profiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hwmodels.specs import NodeSpec
from hwmodels.units import GiB, UserInputError
from planners.plan import Plan
from planners.swap.profile import StepProfile, profile_workload
from planners.swap.rates import CopyRates, host_copy_rates
from simulator.job import TrainJob
from simulator.model import ModelSpec
from simulator.scenario import Scenario


@dataclass
class PlanContext:
    """Everything the strategies share for one (model, job, node, budgets) request."""

    model: ModelSpec
    job: TrainJob
    node: NodeSpec
    gpu_budget_bytes: int
    host_budget_bytes: int
    lookahead: int = 1
    allocator: str = "planned"
    """planned: addresses planned ahead (MEMO's layout, ``tierplan layout``): a plan fits when
    its allocated peak does; caching: PyTorch's caching allocator (what a plain torch run and
    validate.executor use): it must also serve every request under the budget, fragmentation
    included (simulator.allocator); expandable: the same with ``expandable_segments:True`` (the
    executor's default): the capped replay must serve every request. With caching or expandable
    the job's ``allocator`` is set to match (the one the reserved peak is predicted for)."""
    prefetch_at: str = "layer"
    """Where the prefetch of layer l starts in layer l+k's backward (``Plan.prefetch_at``)."""
    _profiles: dict[tuple[str, ...], StepProfile] = field(default_factory=dict)
    _variant_profiles: dict[str, dict] = field(default_factory=dict)  # other mlp_activation -> profiles

    def __post_init__(self) -> None:
        if self.allocator in ("caching", "expandable") and self.job.allocator != self.allocator:
            self.job = self.job.model_copy(update={"allocator": self.allocator})

    @classmethod
    def from_scenario(cls, scenario: Scenario, **knobs: Any) -> PlanContext:
        """The context of ``scenario`` with planning knobs (lookahead, allocator, prefetch_at)."""
        assert isinstance(scenario.job, TrainJob), "callers refuse inference scenarios first"
        return cls(model=scenario.model, job=scenario.job, node=scenario.node,
                   gpu_budget_bytes=scenario.gpu_budget_bytes,
                   host_budget_bytes=scenario.host_budget_bytes, **knobs)

    @classmethod
    def from_plan(cls, plan: Plan, *, source: str = "plan") -> PlanContext:
        """What ``plan`` was made for (``Scenario.from_plan``: the scenario it embeds), with its
        prefetch knobs; a plan this replay cannot carry out is refused in one line naming
        ``source`` and the field."""
        unsupported = plan.unsupported()
        if unsupported:
            raise UserInputError(f"{source}: {unsupported}")
        return cls.from_scenario(Scenario.from_plan(plan), lookahead=plan.prefetch_lookahead_layers,
                                 prefetch_at=plan.prefetch_at)

    @property
    def scenario(self) -> Scenario:
        """The scenario this context plans for (what its plans embed)."""
        return Scenario(model=self.model, job=self.job, node=self.node,
                        gpu_budget_bytes=self.gpu_budget_bytes, host_budget_bytes=self.host_budget_bytes)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def rates(self) -> CopyRates:
        par = self.job.parallelism
        return host_copy_rates(self.node, num_active_gpus=par.tp * par.cp * par.dp)

    @property
    def copy_s_per_byte(self) -> float:
        """HBM copy time per byte moved (read + write), from a 1 GiB copy on the node's GPU."""
        from hwmodels.compute import compute_time_s

        return compute_time_s(flops=0.0, hbm_bytes=2 * GiB, op_class="hbm_copy",
                              dtype=self.job.param_dtype, node=self.node) / GiB

    @property
    def host_budget_per_gpu_bytes(self) -> int:
        return self.host_budget_bytes // self.rates.num_gpus_sharing_host

    def profile(self, checkpointing: str = "none") -> StepProfile:
        """The profile of the step with the same checkpoint on every layer."""
        return self.profile_for((checkpointing,) * self.num_layers)

    def profile_for(self, modes: Sequence[str]) -> StepProfile:
        """The profile of the step with per-layer checkpoints ``modes`` (template Workload)."""
        modes = tuple(modes)
        if modes not in self._profiles:
            from simulator.templates import training_workload

            job = self.job.model_copy(update={"checkpointing": "none"})
            per_layer = {i: m for i, m in enumerate(modes) if m != "none"}
            wl = training_workload(self.model, job, self.node, layer_checkpointing=per_layer)
            self._profiles[modes] = profile_workload(wl)
        return self._profiles[modes]
