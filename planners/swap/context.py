"""The planning context: one (model, job, node, budgets) request and its cached step profiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hwmodels.specs import NodeSpec
from hwmodels.units import GiB, UserInputError
from planners.plan import RESIDENT, LayerPlan, ModelStatePlacement, Plan
from planners.swap.profile import StepProfile, profile_workload
from planners.swap.rates import CopyRates, host_copy_rates
from planners.swap.states import StatesApplied, all_resident, apply_model_states
from simulator.job import TrainJob
from simulator.model import ModelSpec
from simulator.scenario import Scenario
from simulator.workload import Workload


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
    predict_reserved: bool = True
    """Replay the caching allocator for every plan evaluated; False while a search runs under the
    planned allocator (where the reserved peak only informs): its returned plan is re-evaluated."""
    lm_head_chunks: int = 1
    """Token chunks of the LM head + loss (``Plan.lm_head_chunks``; 1: the job's own loss)."""
    mlp_chunks: int = 1
    """Token chunks of every layer's tiled MLP (``LayerPlan.mlp_chunks``)."""
    states: tuple[ModelStatePlacement, ...] | None = None
    """Per layer, where its model states live (``LayerPlan.model_states``); None: resident."""
    _profiles: dict[tuple[str, ...], StepProfile] = field(default_factory=dict)
    _states_applied: dict[tuple[str, ...], StatesApplied] = field(default_factory=dict)
    _templates: dict[tuple, Workload] = field(default_factory=dict)  # shared by copies of a context
    _state_bytes: dict[str, int] | None = None
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
        mlp = {lp.mlp_chunks for lp in plan.layers}
        if len(mlp) > 1:
            raise UserInputError(f"{source}: layers.mlp_chunks: this replay takes one MLP chunk count "
                                 "for every layer")
        states = tuple(lp.model_states for lp in plan.layers)
        return cls.from_scenario(Scenario.from_plan(plan), lookahead=plan.prefetch_lookahead_layers,
                                 prefetch_at=plan.prefetch_at, lm_head_chunks=plan.lm_head_chunks,
                                 mlp_chunks=mlp.pop(), states=None if all_resident(states) else states)

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

    @property
    def whole_step(self) -> bool:
        """The context plans any choice beyond activations (chunked head or MLP, model states
        off HBM): its plans carry those choices and their predictions every tier's peak."""
        return self.lm_head_chunks > 1 or self.mlp_chunks > 1 or not all_resident(self.placements)

    @property
    def placements(self) -> tuple[ModelStatePlacement, ...]:
        return self.states if self.states is not None else (RESIDENT,) * self.num_layers

    def states_tier_bytes(self) -> dict[str, int]:
        """Bytes the model states hold on each tier off HBM, one GPU (they do not depend on the
        checkpoints: read off the template without a profile)."""
        if self._state_bytes is None:
            wl = self.template(("none",) * self.num_layers)
            self._state_bytes = dict(apply_model_states(wl, self.placements).tier_bytes)
        return self._state_bytes

    def states_host_bytes(self) -> int:
        """Host bytes the model states hold (pinned pools, CPU-side states), all GPUs of a host."""
        return self.states_tier_bytes().get("host", 0) * self.rates.num_gpus_sharing_host

    def states_applied(self, modes: Sequence[str]) -> StatesApplied:
        """The model-state placement applied to the profile of ``modes`` (its copies and CPU
        steps, on that profile's Workload)."""
        modes = tuple(modes)
        if modes not in self._states_applied:  # a context copy sharing only the profiles
            self._profiles.pop(modes, None)
            self.profile_for(modes)
        return self._states_applied[modes]

    def stamped(self, layers: Sequence[LayerPlan]) -> list[LayerPlan]:
        """``layers`` with this context's MLP chunks and model-state placements."""
        if not self.whole_step:
            return list(layers)
        return [lp.model_copy(update={"mlp_chunks": self.mlp_chunks, "model_states": ms})
                for lp, ms in zip(layers, self.placements, strict=True)]

    def template(self, modes: Sequence[str]) -> Workload:
        """The template Workload of the step with per-layer checkpoints ``modes`` and this
        context's chunk counts (model states resident), shared by the copies of a context."""
        from simulator.templates import training_workload

        key = (tuple(modes), self.lm_head_chunks, self.mlp_chunks, self.job.mlp_activation, self.job.rmsnorm)
        if key not in self._templates:
            job = self.job.model_copy(update={"checkpointing": "none"})
            per_layer = {i: m for i, m in enumerate(modes) if m != "none"}
            self._templates[key] = training_workload(
                self.model, job, self.node, layer_checkpointing=per_layer, lm_head_chunks=self.lm_head_chunks,
                mlp_chunks={i: self.mlp_chunks for i in range(self.num_layers)})
        return self._templates[key]

    def profile(self, checkpointing: str = "none") -> StepProfile:
        """The profile of the step with the same checkpoint on every layer."""
        return self.profile_for((checkpointing,) * self.num_layers)

    def profile_for(self, modes: Sequence[str]) -> StepProfile:
        """The profile of the step with per-layer checkpoints ``modes`` (template Workload)."""
        modes = tuple(modes)
        if modes not in self._profiles:
            applied = apply_model_states(self.template(modes), self.placements)
            self._states_applied[modes] = applied
            self._profiles[modes] = profile_workload(applied.workload)
        return self._profiles[modes]
