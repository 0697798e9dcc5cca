"""The resolved scenario: one model, one job, one node and the memory budgets a question is asked for.

Models: ``Scenario``, what every estimate, simulation and plan is computed for: a ModelSpec (with
its layer count), a typed job (train or infer), a NodeSpec (with the measured compute profile it
carries) and the HBM budget per GPU and host budget per node. ``request_scenario`` builds one
from what a user gives (a scenario file or the built-in default, a model preset or config, a
node preset or file, and overrides of single fields), so that every command resolves a request
the same way. A plan embeds its Scenario and a content hash of each part (``ScenarioHashes``):
``Scenario.from_plan`` is the one way a consumer (executor, layout, simulate, bench) rebuilds
what a plan was made for, with no preset or file lookups.
Assumes: a preset name is a label only (``ModelSpec.name``, ``NodeSpec.name``); the content is
what counts, so two plans made from equal content on two machines hash alike.
Ignores: clusters of several nodes (one node per scenario).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from hwmodels.specs import NodeSpec
from hwmodels.units import UserInputError, validation_error_line
from simulator.job import (
    InferJob,
    Job,
    TrainJob,
    default_scenario,
    load_scenario,
    scenario_from_dict,
)
from simulator.model import ModelSpec, load_model

TRAIN_ONLY_FIELDS = ("seq_len", "checkpointing", "optimizer", "optimizer_state_dtype", "master_weights",
                     "grads_persist", "mlp_activation", "model_output", "micro_batch", "loss")
INFER_ONLY_FIELDS = ("prompt_len", "gen_len", "kv_dtype", "kv_quant", "batch")
_KEPT_ACROSS_MODES = ("parallelism", "param_dtype", "schema_version")


def _canonical_sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def content_sha256(spec: BaseModel) -> str:
    """SHA-256 of a spec's canonical JSON (every field, sorted keys, no whitespace)."""
    return _canonical_sha256(spec.model_dump(mode="json"))


def budgets_sha256(*, gpu_budget_bytes: int, host_budget_bytes: int) -> str:
    """SHA-256 of the two budgets as one canonical JSON object (the scenario's field names)."""
    return _canonical_sha256({"gpu_budget_bytes": gpu_budget_bytes, "host_budget_bytes": host_budget_bytes})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ScenarioHashes(_Frozen):
    """Content hashes of a scenario's parts (``content_sha256``): a plan whose embedded model,
    job, node or budgets were edited after it was written no longer matches them."""

    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the embedded ModelSpec."""
    job_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the embedded job."""
    node_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the embedded NodeSpec (its measured profile included)."""
    budgets_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Hash of the GPU and host budgets (``budgets_sha256``). Every new plan has it and it is
    checked when present; plans written before it have none (their budgets are unchecked) and
    their files and hashes stay as they were: omitted from dumps when None."""

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if self.budgets_sha256 is None:
            data.pop("budgets_sha256", None)
        return data

    def mismatch(self, scenario: Scenario) -> str:
        """The first part whose hash does not match ``scenario``'s content; "" when all do
        (the budgets only when this has their hash)."""
        now = scenario.hashes()
        names = ("model", "job", "node") + (("budgets",) if self.budgets_sha256 is not None else ())
        for name in names:
            if getattr(self, f"{name}_sha256") != getattr(now, f"{name}_sha256"):
                return name
        return ""


class _HasScenario(Protocol):
    @property
    def scenario(self) -> Scenario: ...


class Scenario(_Frozen):
    """One question: this model, this job, on this node, within these budgets."""

    model: ModelSpec
    """The model, resolved (its name is a label)."""
    job: Job
    """What the step does (``mode`` picks train or infer)."""
    node: NodeSpec
    """The node, resolved, with the measured compute profile it was planned with."""
    gpu_budget_bytes: int = Field(gt=0)
    """HBM budget per GPU (the GPU's capacity unless a smaller one was asked for)."""
    host_budget_bytes: int = Field(gt=0)
    """Host memory budget of the node, shared by its GPUs."""

    @model_validator(mode="after")
    def _job_fits_model(self) -> Scenario:
        self.job.check(self.model)
        return self

    @classmethod
    def build(cls, model: ModelSpec, job: TrainJob | InferJob, node: NodeSpec, *,
              gpu_budget_bytes: int | None = None, host_budget_bytes: int | None = None) -> Scenario:
        """A scenario whose budgets default to the node's GPU HBM and host DRAM capacities."""
        return cls(model=model, job=job, node=node,
                   gpu_budget_bytes=gpu_budget_bytes or node.gpu.hbm_capacity_bytes,
                   host_budget_bytes=host_budget_bytes or node.host_memory.capacity_bytes)

    def with_overrides(self, **fields: Any) -> Scenario:
        """A copy with ``fields`` replaced (model, job, node, budgets), validated again."""
        unknown = sorted(set(fields) - set(type(self).model_fields))
        if unknown:
            raise UserInputError(f"scenario: unknown field {unknown[0]!r}")
        data = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).model_validate({**data, **fields})

    def hashes(self) -> ScenarioHashes:
        return ScenarioHashes(model_sha256=content_sha256(self.model), job_sha256=content_sha256(self.job),
                              node_sha256=content_sha256(self.node),
                              budgets_sha256=budgets_sha256(gpu_budget_bytes=self.gpu_budget_bytes,
                                                            host_budget_bytes=self.host_budget_bytes))

    @classmethod
    def from_plan(cls, plan: _HasScenario) -> Scenario:
        """What ``plan`` was made for: the scenario it embeds (its hashes were checked when the
        plan was validated); no preset or file is looked up."""
        return plan.scenario

    def with_current_profile(self) -> Scenario:
        """This scenario with its node's measured profile replaced by today's preset of that
        name (its achieved rates are refitted as measurements are added; a plan embeds the ones
        it was made with); unchanged when the node has no profile or the preset is gone."""
        from hwmodels.catalog import get_profile

        prof = self.node.profile
        if prof is None:
            return self
        try:
            now = get_profile(prof.name)
        except UserInputError:
            return self
        return self.model_copy(update={"node": self.node.model_copy(update={"profile": now})})


def request_scenario(*, scenario_path: str | None = None, model: str | None = None,
                     mode: str | None = None, job_fields: Mapping[str, Any] | None = None,
                     batch: int | None = None, parallelism: Mapping[str, Any] | None = None, hardware: str | None = None,
                     num_layers: int | None = None, gpu_budget_bytes: int | None = None,
                     host_budget_bytes: int | None = None,
                     labels: Mapping[str, str] | None = None) -> Scenario:
    """Resolve a user's request: a scenario file (or the built-in default) with single fields
    replaced. ``job_fields`` are job fields by their schema names; a field of the other mode is
    refused, naming it; ``batch`` is the micro-batch of a training job or the batch of an
    inference job. Switching ``mode`` keeps the parallelism and dtype and carries the
    length over (``seq_len`` <-> ``prompt_len``). A training job whose scenario does not name a
    loss gets cross-entropy, or for a bare layer stack without an LM head the probe's mean of
    squares. Errors are one line naming the file (or "arguments") and the field, or the label
    ``labels`` gives a job field (a command-line flag, say)."""
    base = load_scenario(scenario_path) if scenario_path else default_scenario()
    where = scenario_path if scenario_path else "arguments"
    data = base.model_dump(mode="json")
    if model is not None:
        data["model"] = model
    job = dict(data["job"])
    mode = mode or job["mode"]
    if mode != job["mode"]:
        old = job
        job = {k: v for k, v in old.items() if k in _KEPT_ACROSS_MODES}
        job["mode"] = mode
        if mode == "infer":
            job["prompt_len"] = old.get("seq_len", 4096)
        else:
            job["seq_len"] = old.get("prompt_len", 4096)
    for field, value in (job_fields or {}).items():
        if value is None:
            continue
        wrong = INFER_ONLY_FIELDS if mode == "train" else TRAIN_ONLY_FIELDS
        if field in wrong:
            name = (labels or {}).get(field, f"job.{field}")
            raise UserInputError(f"{name}: only for mode {'infer' if mode == 'train' else 'train'}")
        job[field] = value
    if batch is not None:
        job["micro_batch" if mode == "train" else "batch"] = batch
    par = dict(job.get("parallelism") or {})
    par.update({k: v for k, v in (parallelism or {}).items() if v is not None})
    job["parallelism"] = par
    if mode == "train" and "loss" not in (job_fields or {}) and "loss" not in (
            base.job.model_fields_set if scenario_path else set()):
        spec = data["model"] if isinstance(data["model"], dict) else load_model(data["model"])
        has_head = spec.get("has_lm_head", True) if isinstance(spec, dict) else spec.has_lm_head
        job["loss"] = "cross_entropy" if has_head else "mean_square_fp32"
    data["job"] = job
    if hardware is not None:
        data["hardware"] = hardware
    request = scenario_from_dict(data, where=where)
    spec = request.model_spec()
    if num_layers is not None:
        spec = spec.with_layers(num_layers)
    from hwmodels.catalog import load_node

    try:
        node = load_node(request.hardware)
    except UserInputError as err:  # say which input named the node: the flag or the file's field
        raise UserInputError(f"{'--hardware' if hardware is not None else f'{where}: hardware'}: "
                             f"{err}") from None
    try:
        return Scenario.build(spec, request.job, node, gpu_budget_bytes=gpu_budget_bytes,
                              host_budget_bytes=host_budget_bytes)
    except ValidationError as err:
        raise UserInputError(validation_error_line(err, where, union_tags=("train", "infer"))) from None
