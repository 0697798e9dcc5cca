"""The Plan: what a training step keeps in HBM, offloads, or recomputes, per layer and role.

Models: one versioned, frozen document that an executor reads and nothing else. Per decoder
layer it states the activation-checkpoint region (none | selective | full), what happens to the
layer's input (keep | offload), and, for a layer without a checkpoint, per saved-tensor role an
action: keep, offload a fraction ``alpha_frac`` of the tokens to a tier on a stream (the rest
``1 - alpha_frac - keep_frac`` recomputed token-wise from the layer input and attention output
just before the layer's backward, as MEMO does), or recompute. Plus prefetch lookahead and the
staging buffers, the provenance (who planned it, with which solver, status, gap, time) and the
prediction of its replay (step time, per-tier peaks, MFU).
Assumes: layers are numbered 0..n-1 in forward order; tensors of one role in one layer share
one decision; token fractions cut each tensor along its token dimension.
Ignores: pipeline stages and multiple micro-batches (one step of one micro-batch).
Source: MEMO (Zhao et al., SIGMOD 2025) for token-wise offload + recompute; checkmate and POET
for a tiny plan IR replayed by a simulator.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PLAN_SCHEMA_VERSION = 1
SCHEMA_PATH = pathlib.Path(__file__).parent / "schema" / "plan.schema.json"
FLOAT_DIGITS = 6
"""Fractions and times in a plan are rounded to 6 decimals: solver noise must not change the file."""

Action = Literal["keep", "offload", "recompute"]
Checkpoint = Literal["none", "selective", "full"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RoleAction(_Frozen):
    """What happens to the saved tensors of one role in one layer."""

    action: Action
    """keep: stays in HBM; offload: ``alpha_frac`` of its tokens go to ``tier`` (and
    ``keep_frac`` stay), the rest is recomputed before backward; recompute: dropped after the
    forward (but ``keep_frac`` of the tokens) and recomputed token-wise before the layer's
    backward."""
    alpha_frac: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of the tokens offloaded (0 unless action is offload)."""
    keep_frac: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of the tokens kept in HBM (1 for keep)."""
    tier: Literal["host"] = "host"
    """Where offloaded bytes go: host DRAM (pinned pool)."""
    stream: Literal["d2h", "compute"] = "d2h"
    """d2h: copy-engine side streams (D2H out, H2D back) overlapped with compute; compute:
    synchronous copies on the compute stream (``torch.autograd.graph.save_on_cpu``)."""

    @model_validator(mode="after")
    def _fractions(self) -> RoleAction:
        if self.action == "keep" and (self.keep_frac != 1.0 or self.alpha_frac != 0.0):
            raise ValueError("keep: keep_frac must be 1 and alpha_frac 0")
        if self.action == "recompute" and (self.keep_frac >= 1.0 or self.alpha_frac != 0.0):
            raise ValueError("recompute: alpha_frac must be 0 and keep_frac below 1")
        if self.action == "offload":
            if self.alpha_frac <= 0.0:
                raise ValueError("offload: alpha_frac must be > 0")
            if self.alpha_frac + self.keep_frac > 1.0 + 1e-9:
                raise ValueError("offload: alpha_frac + keep_frac must be <= 1")
        return self

    @property
    def recompute_frac(self) -> float:
        return max(0.0, 1.0 - self.alpha_frac - self.keep_frac)


KEEP = RoleAction(action="keep", keep_frac=1.0)


class LayerPlan(_Frozen):
    """Decisions for one decoder layer."""

    layer: int = Field(ge=0)
    """Decoder layer index (forward order)."""
    checkpoint: Checkpoint = "none"
    """Activation checkpoint region: full = the whole layer (torch.utils.checkpoint), selective
    = the MLP block, none = the role actions below decide."""
    input: Literal["keep", "offload"] = "keep"
    """The layer's input (residual stream entering it): kept in HBM or offloaded whole."""
    input_stream: Literal["d2h", "compute"] = "d2h"
    """Stream of the input's copies when offloaded (see RoleAction.stream)."""
    roles: dict[str, RoleAction] = Field(default_factory=dict)
    """Role name (simulator.workload.Role) -> action, for a layer without a checkpoint; a role
    not listed is kept. Empty under a checkpoint region."""

    @model_validator(mode="after")
    def _roles_only_without_checkpoint(self) -> LayerPlan:
        if self.checkpoint != "none" and any(a.action != "keep" for a in self.roles.values()):
            raise ValueError(f"layers.{self.layer}.roles: only for a layer without a checkpoint")
        return self

    def action(self, role: str) -> RoleAction:
        return self.roles.get(role, KEEP)


class Provenance(_Frozen):
    """Where a plan came from."""

    tierplan_version: str
    """Version of tierplan that wrote the plan."""
    model: str
    """Model name (preset or config)."""
    job: dict[str, Any]
    """The training job (simulator.job.TrainJob fields, JSON form)."""
    hardware: str
    """Node name."""
    planner: str
    """Strategy that produced the plan: none, full_recompute, selective, offload_all, memo, mip."""
    solver: str | None = None
    """MIP solver (highs, cbc), or None for a rule."""
    status: str = "rule"
    """Solver status (optimal, feasible, ...), "rule" for a baseline, or "fallback:<name>"."""
    gap: float | None = None
    """Relative MIP gap of the returned solution (None for a rule)."""
    time_limit_s: float | None = Field(default=None, gt=0.0)
    """The solver's time limit in seconds (None for a rule). The wall time a run took is reported
    by ``tierplan plan``, not stored: equal inputs must give byte-identical plans."""
    gpu_budget_bytes: int = Field(gt=0)
    """HBM budget per GPU the plan was made for."""
    host_budget_bytes: int = Field(gt=0)
    """Host memory budget of the node (shared by its GPUs) the plan was made for."""


class Prediction(_Frozen):
    """The replay of the plan by the simulator."""

    step_time_s: float = Field(ge=0.0)
    """Predicted wall time of one step."""
    mfu: float = Field(ge=0.0)
    """Model FLOPs utilisation against the datasheet peak."""
    peak_hbm_bytes: int = Field(ge=0)
    """Peak allocated HBM per GPU (with the runtime workspaces)."""
    peak_reserved_bytes: int | None = Field(default=None, ge=0)
    """Peak HBM the caching allocator reserves for two steps of the plan's allocation sequence
    (simulator.allocator, no cap): what ``torch.cuda.max_memory_reserved`` would report."""
    peak_host_bytes: int = Field(ge=0)
    """Peak host bytes of the node (all GPUs' offloaded activations)."""
    stall_s: float = Field(ge=0.0)
    """Compute time lost waiting for copies."""
    recompute_s: float = Field(ge=0.0)
    """Time spent recomputing activations."""
    feasible: bool
    """Fits the GPU and host budgets: peak allocated within the GPU budget, and the caching
    allocator, capped at the budget, serves every request (fragmentation included)."""
    replayed_by: str
    """Which simulator produced the numbers."""


class Plan(_Frozen):
    """A training memory plan. The executor reads this and nothing else."""

    schema_version: Literal[1] = PLAN_SCHEMA_VERSION
    """Version of this format."""
    layers: list[LayerPlan]
    """One entry per decoder layer, in order."""
    prefetch_lookahead_layers: int = Field(default=1, ge=1)
    """Layer l's offloaded bytes are fetched back from layer l+k's backward on."""
    prefetch_at: Literal["layer", "attention"] = "layer"
    """Where in layer l+k's backward the prefetch of layer l starts: ``layer``, when it starts;
    ``attention``, when it reaches its attention block (after the MLP's backward, whose
    activations are free by then: less HBM at the peak, less time to hide the copy). Omitted
    from the file when ``layer``."""
    mlp_activation: Literal["saved", "recomputed"] = "saved"
    """SwiGLU's silu(gate) and product in every layer: ``saved`` for backward (eager autograd),
    or ``recomputed`` in backward by one fused activation + down-projection node that saves
    only the gate/up projection's output (``validate.model.SwiGLUDown``; the job's
    ``mlp_activation``). Omitted from the file when ``saved``."""
    staging_buffer_bytes: int = Field(default=0, ge=0)
    """Size of each GPU staging buffer for copies (the largest layer's offloaded bytes)."""
    num_staging_buffers: int = Field(default=2, ge=1)
    """Rotating staging buffers (MEMO: two)."""
    provenance: Provenance
    """Who made the plan and how."""
    prediction: Prediction | None = None
    """Replayed prediction; None until replayed."""

    @model_validator(mode="after")
    def _layers_in_order(self) -> Plan:
        for i, lp in enumerate(self.layers):
            if lp.layer != i:
                raise ValueError(f"layers.{i}.layer: expected {i}, got {lp.layer}")
        job_act = self.provenance.job.get("mlp_activation", "saved")
        if job_act != self.mlp_activation:
            raise ValueError(f"mlp_activation: {self.mlp_activation!r}, but provenance.job says {job_act!r}")
        return self

    @property
    def offloads(self) -> bool:
        return any(lp.input == "offload" or any(a.action == "offload" for a in lp.roles.values())
                   for lp in self.layers)

    def to_json(self) -> str:
        """Deterministic JSON: sorted keys, floats rounded to FLOAT_DIGITS decimals."""
        data = self.model_dump(mode="json")
        # defaults that earlier plans lack are left out: their files stay unchanged
        if data.get("prefetch_at") == "layer":
            del data["prefetch_at"]
        if data.get("mlp_activation") == "saved":
            del data["mlp_activation"]
            if data["provenance"]["job"].get("mlp_activation") == "saved":
                del data["provenance"]["job"]["mlp_activation"]
        return json.dumps(_rounded(data), sort_keys=True, indent=1) + "\n"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, FLOAT_DIGITS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def plan_json_schema() -> dict[str, Any]:
    """JSON Schema of the Plan (what ``planners/schema/plan.schema.json`` must equal)."""
    return Plan.model_json_schema()


def write_plan(plan: Plan, path: str | pathlib.Path) -> None:
    pathlib.Path(path).write_text(plan.to_json())


def load_plan(path: str | pathlib.Path) -> Plan:
    """Read a plan file; a malformed one raises UserInputError naming the file and field."""
    from pydantic import ValidationError

    from hwmodels.units import UserInputError

    p = pathlib.Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"{p}: cannot read a plan: {err}") from None
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise UserInputError(f"{p}: {loc}: {first.get('msg')}") from None


def tierplan_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tierplan")
    except PackageNotFoundError:
        return "unknown"
