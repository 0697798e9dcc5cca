"""The Plan: where every byte of a step lives and what is recomputed, per layer, on every tier.

Models: one versioned, frozen, self-contained document that an executor reads and nothing else.
It embeds the scenario it was made for (`simulator.scenario.Scenario`: the resolved ModelSpec,
the typed job, the NodeSpec with its measured compute profile, the budgets) with a content hash
of each part, so any machine can replay, lay out or execute it without the files or presets it
was planned from (a preset name is a label only). Per decoder layer it states:
  * activations: the checkpoint region (none | selective | full), what happens to the layer's
    input (keep | offload), and, for a layer without a checkpoint, per saved-tensor role (a
    typed role of `simulator.workload.Role`) an action: keep, offload a fraction ``alpha_frac``
    of the tokens to a tier on a stream (the rest ``1 - alpha_frac - keep_frac`` recomputed
    token-wise from the layer input and attention output just before the layer's backward, as
    MEMO does), or recompute;
  * model states: the tier of the parameters, gradients, optimizer moments and master weights,
    where the optimizer step runs (GPU or CPU) and how many layers ahead streamed parameters are
    fetched;
  * the KV cache (inference): its dtype, the fraction resident in HBM and the tier of the rest;
  * compute placement: where attention runs (GPU, CPU, a computational storage drive) and the
    number of token chunks of the MLP;
and for the step: the token chunks of the LM head + loss, prefetch lookahead and point, SwiGLU's
activation, the staging buffers, the provenance (who planned it, with which solver, status, gap,
time limit) and the prediction of its replay (step time, per-tier peaks, MFU). Tiers are
``hbm``, ``host``, ``cxl``, ``nvme``, ``csd``, each resolved against the embedded node: a plan
naming a tier its node lacks is refused. Files of schema version 1 (names instead of content)
load through ``migrate_v1``, which resolves their names against today's presets.
Assumes: layers are numbered 0..n-1 in forward order; tensors of one role in one layer share
one decision; token fractions cut each tensor along its token dimension.
Ignores: pipeline stages and multiple micro-batches (one step of one micro-batch).
Source: MEMO (Zhao et al., SIGMOD 2025) for token-wise offload + recompute; checkmate and POET
for a tiny plan IR replayed by a simulator.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from simulator.scenario import Scenario, ScenarioHashes
from simulator.workload import NOT_ACTIVATIONS, Role

PLAN_SCHEMA_VERSION: Final = 2
SCHEMA_PATH = pathlib.Path(__file__).parent / "schema" / "plan.schema.json"
FLOAT_DIGITS = 6
"""Fractions and times in a plan are rounded to 6 decimals: solver noise must not change the file."""

Action = Literal["keep", "offload", "recompute"]
Checkpoint = Literal["none", "selective", "full"]
Tier = Literal["hbm", "host", "cxl", "nvme", "csd"]
"""Where bytes can live: GPU HBM, host DRAM, a CXL memory card, an NVMe drive, a computational
storage drive (`hwmodels.specs.NodeSpec`: ``cxl``, ``nvme``, ``csd``)."""
OffloadTier = Literal["host", "cxl", "nvme"]
"""Tiers an activation can be offloaded to."""
ACTIVATION_ROLES: tuple[str, ...] = tuple(r.value for r in Role if r.value not in NOT_ACTIVATIONS)
"""Roles a layer's activation decisions may name (every `simulator.workload.Role` but model states)."""


def node_tiers(node: Any) -> tuple[str, ...]:
    """The tiers ``node`` has: HBM and host always, CXL / NVMe / CSD when it has such devices."""
    extra = tuple(t for t in ("cxl", "nvme", "csd") if getattr(node, t))
    return ("hbm", "host") + extra


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


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
    tier: OffloadTier = "host"
    """Where offloaded bytes go: host DRAM (a pinned pool), a CXL card or an NVMe drive."""
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
        """The rest of the tokens, to ``FLOAT_DIGITS`` as the fractions are written (fractions
        written to sum to one recompute nothing, whatever their binary sum)."""
        return max(0.0, round(1.0 - self.alpha_frac - self.keep_frac, FLOAT_DIGITS))


KEEP = RoleAction(action="keep", keep_frac=1.0)


class ModelStatePlacement(_Frozen):
    """Where one layer's model states live and where its optimizer step runs."""

    params: Tier = "hbm"
    """bf16 (compute-dtype) parameters: resident in HBM, or streamed from this tier."""
    params_prefetch_layers: int = Field(default=0, ge=0)
    """Streamed parameters are fetched this many layers ahead (0 when resident)."""
    grads: Tier = "hbm"
    """Weight gradients: kept in HBM, or offloaded to this tier as they are produced."""
    optimizer_states: Tier = "hbm"
    """Optimizer moments (AdamW's two)."""
    master_weights: Tier = "hbm"
    """fp32 master weights, when the job keeps them."""
    optimizer_step: Literal["gpu", "cpu"] = "gpu"
    """Where the optimizer step runs: on the GPU (states streamed in when not in HBM) or on the
    CPU (states on host-side tiers)."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelStatePlacement:
        if self.params == "hbm" and self.params_prefetch_layers:
            raise ValueError("params_prefetch_layers: only for parameters streamed from another tier")
        if self.optimizer_step == "cpu" and "hbm" in (self.optimizer_states, self.master_weights):
            raise ValueError("optimizer_step: a CPU step needs optimizer_states and master_weights off HBM")
        return self

    def tiers(self) -> tuple[str, ...]:
        return (self.params, self.grads, self.optimizer_states, self.master_weights)


RESIDENT = ModelStatePlacement()
"""Every model state in HBM, the optimizer step on the GPU (what every plan does today)."""


class KvPlacement(_Frozen):
    """Where one layer's KV cache lives (inference)."""

    dtype: Literal["bf16", "fp16", "fp8", "int8", "int4"] = "bf16"
    """Storage dtype of keys and values (quantized ones carry per-group scales)."""
    group_size: int | None = Field(default=None, ge=1)
    """Quantization group size (KIVI: keys per channel, values per token); None unquantized."""
    resident_frac: float = Field(default=1.0, ge=0.0, le=1.0)
    """Fraction of the cached tokens resident in HBM."""
    tier: Tier = "host"
    """Tier of the non-resident tokens."""

    @model_validator(mode="after")
    def _quantized(self) -> KvPlacement:
        if self.group_size is not None and self.dtype in ("bf16", "fp16"):
            raise ValueError("group_size: only for a quantized dtype (fp8, int8, int4)")
        if self.tier == "hbm" and self.resident_frac < 1.0:
            raise ValueError("tier: the non-resident tokens need a tier other than hbm")
        return self


class LayerPlan(_Frozen):
    """Decisions for one decoder layer."""

    layer: int = Field(ge=0)
    """Decoder layer index (forward order)."""
    checkpoint: Checkpoint = "none"
    """Activation checkpoint region: full = the whole layer (torch.utils.checkpoint), selective
    = the MLP block, none = the role actions below decide."""
    input: Literal["keep", "offload", "recompute"] = "keep"
    """The layer's input (residual stream entering it): kept in HBM, offloaded whole, or (under
    a full checkpoint) recomputed: dropped after the layer's forward and recomputed before the
    backward by re-running the forward of the layers since the nearest earlier layer whose
    input is kept or offloaded (a segment checkpoint of those layers; the re-run saves only
    their inputs, each layer's own checkpoint then recomputes the layer)."""
    input_stream: Literal["d2h", "compute"] = "d2h"
    """Stream of the input's copies when offloaded (see RoleAction.stream)."""
    roles: dict[str, RoleAction] = Field(default_factory=dict)
    """Activation role (one of ``ACTIVATION_ROLES``) -> action, for a layer without a
    checkpoint; a role not listed is kept. Empty under a checkpoint region."""
    model_states: ModelStatePlacement = RESIDENT
    """Where the layer's parameters, gradients, optimizer moments and master weights live."""
    kv_cache: KvPlacement | None = None
    """Where the layer's KV cache lives (inference plans); None for a training step."""
    attention_on: Literal["gpu", "cpu", "csd"] = "gpu"
    """Where the layer's attention runs: on the GPU, on the host CPU next to a host-resident KV
    cache, or inside a computational storage drive next to its KV cache."""
    mlp_chunks: int = Field(default=1, ge=1)
    """The MLP computed in this many token chunks, forward and backward (only one chunk's
    intermediates live at a time); 1 computes it whole."""

    @field_validator("roles", mode="before")
    @classmethod
    def _known_roles(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name in value:
                if name not in ACTIVATION_ROLES:
                    raise ValueError(f"unknown role {str(name)[:40]!r} (roles: {', '.join(ACTIVATION_ROLES)})")
        return value

    @model_validator(mode="after")
    def _roles_only_without_checkpoint(self) -> LayerPlan:
        if self.checkpoint != "none" and any(a.action != "keep" for a in self.roles.values()):
            raise ValueError(f"layers.{self.layer}.roles: only for a layer without a checkpoint")
        if self.input == "recompute" and (self.checkpoint != "full" or self.layer == 0):
            raise ValueError(f"layers.{self.layer}.input: recompute needs a full checkpoint and an "
                             "earlier layer to recompute from")
        return self

    def action(self, role: str) -> RoleAction:
        return self.roles.get(role, KEEP)

    @property
    def recomputes_tokens(self) -> bool:
        """Whether a role drops rows for MEMO's token-wise recompute (any ``recompute_frac``):
        the executor then keeps the layer's whole input to recompute them from."""
        return any(a.recompute_frac > 0 for a in self.roles.values())

    def tiers(self) -> set[str]:
        """Every tier this layer's decisions name."""
        out: set[str] = {a.tier for a in self.roles.values() if a.action == "offload"}
        if self.input == "offload":
            out.add("host")
        out.update(self.model_states.tiers())
        if self.kv_cache is not None:
            out.update(("hbm", self.kv_cache.tier) if self.kv_cache.resident_frac < 1.0 else ("hbm",))
        if self.attention_on == "csd":
            out.add("csd")
        return out


class Provenance(_Frozen):
    """Where a plan came from."""

    tierplan_version: str
    """Version of tierplan that wrote the plan."""
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
    migrated_from: int | None = None
    """Schema version of the file this plan was migrated from (None when written as it is)."""


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
    prefill_time_s: float | None = Field(default=None, ge=0.0)
    """Inference: wall time of the prefill of the whole batch (every chunk). None for training;
    omitted from the file when None."""
    decode_step_time_s: float | None = Field(default=None, ge=0.0)
    """Inference: wall time of one decode step of the whole batch (one token per sequence) at
    the job's mean decode context (prompt_len + gen_len / 2). None for training."""
    tier_peak_bytes: dict[str, int] = Field(default_factory=dict)
    """Peak bytes the plan holds in each tier it uses (hbm allocated, host pinned pools, cxl,
    nvme files), keyed by tier name: inference plans, and training plans with whole-step
    choices (chunked head or MLP, model states off HBM, activations on CXL / NVMe). Empty for
    other training plans; omitted when empty."""

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The inference figures are left out of training plans, whose files predate them."""
        data = handler(self)
        for key in ("prefill_time_s", "decode_step_time_s"):
            if data.get(key) is None:
                data.pop(key, None)
        if not data.get("tier_peak_bytes"):
            data.pop("tier_peak_bytes", None)
        return data


class Plan(_Frozen):
    """A memory plan for one step. The executor reads this and nothing else."""

    schema_version: Literal[2] = PLAN_SCHEMA_VERSION
    """Version of this format (files of version 1 load through ``migrate_v1``)."""
    scenario: Scenario
    """What the plan was made for: model, job, node (with its compute profile), budgets."""
    scenario_sha256: ScenarioHashes
    """Content hashes of the embedded model, job, node and budgets; a plan whose content does not
    match them (edited by hand after it was written) is refused."""
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
    lm_head_chunks: int = Field(default=1, ge=1)
    """The LM head + loss computed in this many token chunks (the logits are never whole; the
    head's gradient is accumulated per chunk, as a fused linear cross-entropy does)."""
    staging_buffer_bytes: int = Field(default=0, ge=0)
    """Size of each GPU staging buffer for copies (the largest layer's offloaded bytes)."""
    num_staging_buffers: int = Field(default=2, ge=1)
    """Rotating staging buffers (MEMO: two)."""
    provenance: Provenance
    """Who made the plan and how."""
    prediction: Prediction | None = None
    """Replayed prediction; None until replayed."""

    @classmethod
    def for_scenario(cls, scenario: Scenario, **fields: Any) -> Plan:
        """A plan for ``scenario``, its content hashes computed here."""
        return cls(scenario=scenario, scenario_sha256=scenario.hashes(), **fields)

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        changed = self.scenario_sha256.mismatch(self.scenario)
        if changed:
            part = ("gpu_budget_bytes / host_budget_bytes" if changed == "budgets" else changed)
            raise ValueError(f"scenario_sha256.{changed}_sha256: does not match the embedded "
                             f"scenario.{part} (the plan was edited after it was written)")
        num_layers = self.scenario.model.num_layers
        if len(self.layers) != num_layers:
            raise ValueError(f"layers: {len(self.layers)} entries for a model of {num_layers} layers")
        for i, lp in enumerate(self.layers):
            if lp.layer != i:
                raise ValueError(f"layers.{i}.layer: expected {i}, got {lp.layer}")
        tiers = node_tiers(self.scenario.node)
        for lp in self.layers:
            missing = sorted(lp.tiers() - set(tiers))
            if missing:
                raise ValueError(f"layers.{lp.layer}: tier {missing[0]!r} is not on node "
                                 f"{self.scenario.node.name} (it has {', '.join(tiers)})")
        job = self.scenario.job
        job_act = getattr(job, "mlp_activation", "saved")
        if job_act != self.mlp_activation:
            raise ValueError(f"mlp_activation: {self.mlp_activation!r}, but scenario.job says {job_act!r}")
        if job.mode == "train" and any(lp.kv_cache is not None for lp in self.layers):
            raise ValueError("layers: a training plan has no KV cache placement")
        return self

    def unsupported(self) -> str:
        """The first decision this version's replay cannot carry out yet, as "field: reason";
        "" when there is none. Callers refuse such a plan in one line. (What the training
        executor runs is `unexecuted`.)"""
        if self.scenario.job.mode == "infer":
            return self._unsupported_infer()
        model = self.scenario.model
        if self.lm_head_chunks > 1 and not model.has_lm_head:
            return f"lm_head_chunks: {model.name} has no LM head to chunk"
        if (self.lm_head_chunks > 1 or any(lp.mlp_chunks > 1 for lp in self.layers)) and (
                self.scenario.job.parallelism.tp > 1 or model.family == "gpt"):
            return ("lm_head_chunks / mlp_chunks: chunked ops are replayed for Llama-family models "
                    "without tensor parallelism")
        if len({lp.mlp_chunks for lp in self.layers}) > 1:
            return "layers.mlp_chunks: the replay takes one MLP chunk count for every layer"
        for lp in self.layers:
            where = f"layers.{lp.layer}"
            ms = lp.model_states
            if lp.attention_on != "gpu":
                return f"{where}.attention_on: attention off the GPU is not replayed yet"
            if ms.grads not in ("hbm", "host"):
                return f"{where}.model_states.grads: gradients on {ms.grads} are not replayed yet"
            if ms.params == "csd" or "csd" in (ms.optimizer_states, ms.master_weights):
                return f"{where}.model_states: model states on a computational storage drive are not replayed"
            if ms.params in ("cxl", "nvme"):  # streaming them is, writing back the stepped ones is not
                return f"{where}.model_states.params: parameters on {ms.params} are not replayed yet"
            if ms.optimizer_step == "gpu" and (ms.grads, ms.optimizer_states, ms.master_weights) != ("hbm",) * 3:
                return (f"{where}.model_states: a GPU optimizer step with states or gradients off HBM "
                        "is not replayed yet")
            if ms.optimizer_step == "cpu" and ms.grads != "host":
                return f"{where}.model_states.grads: a CPU optimizer step needs the gradients on the host"
        return ""

    def unexecuted(self) -> str:
        """The first decision of a training plan that the training executor of this version
        does not run, as "field: reason"; "" when it runs all of it. The executor's own check
        (``validate.executor.executor_unsupported``, which this package cannot import) refuses
        the same (tests/validate/test_plan_unexecuted.py holds them together). An inference
        plan: what its executors do not run (`not_executable`)."""
        if self.scenario.job.mode == "infer":
            return self.not_executable()
        why = self.unsupported()
        if why:
            return why
        job = self.scenario.job
        if job.optimizer == "adamw" and job.optimizer_state_dtype != "fp32":
            return "scenario.job.optimizer_state_dtype: the executor keeps fp32 moments"
        for h in segments(self.layers):
            if self.layers[h].checkpoint != "full":
                return f"layers.{h}.checkpoint: a segment's head is fully checkpointed in this executor"
        for lp in self.layers:
            where = f"layers.{lp.layer}"
            for role, act in sorted(lp.roles.items()):
                if act.action == "offload" and act.tier != "host":
                    return f"{where}.roles.{role}.tier: the executor offloads to host memory only"
            ms = lp.model_states
            if ms.optimizer_step == "gpu" and ms.params != "hbm":
                return f"{where}.model_states: a GPU optimizer step with streamed parameters is not executed"
            if ms.optimizer_step == "cpu" and job.optimizer == "none":
                return f"{where}.model_states.optimizer_step: cpu, but scenario.job.optimizer is none"
            for name in ("optimizer_states", "master_weights"):
                if ms.optimizer_step == "cpu" and getattr(ms, name) not in ("host", "nvme"):
                    return f"{where}.model_states.{name}: the executor keeps them on host or nvme"
        return ""

    def _unsupported_infer(self) -> str:
        """Inference plans (what the replay carries out): each layer's KV cache whole in HBM or
        whole in one other tier (bf16 / fp16, or int8 / int4 in the KIVI layout of
        kernels.quant), its weights resident or streamed from the host, attention on the GPU, or
        next to an unquantized KV: the host CPU for host KV, the drive for KV in a CSD (static
        engine)."""
        if self.lm_head_chunks != 1:
            return "lm_head_chunks: inference computes the head for the last token only"
        engine = getattr(self.scenario.job, "engine", "static")
        for lp in self.layers:
            where = f"layers.{lp.layer}"
            kv = lp.kv_cache
            if kv is None:
                return f"{where}.kv_cache: an inference plan places every layer's KV cache"
            if kv.resident_frac not in (0.0, 1.0):
                return f"{where}.kv_cache.resident_frac: a KV cache split within a layer is not executed yet"
            if kv.dtype == "fp8":
                return f"{where}.kv_cache.dtype: an fp8 KV cache is not executed yet"
            ms = lp.model_states
            if ms.params not in ("hbm", "host"):
                return f"{where}.model_states.params: weights streamed from {ms.params} are not executed yet"
            if (ms.grads, ms.optimizer_states, ms.master_weights, ms.optimizer_step) != ("hbm", "hbm", "hbm", "gpu"):
                return f"{where}.model_states: an inference plan places only the parameters"
            kv_tier = "hbm" if kv.resident_frac == 1.0 else kv.tier
            if lp.attention_on != "gpu":
                needs = "host" if lp.attention_on == "cpu" else "csd"
                if kv_tier != needs:
                    return (f"{where}.attention_on: attention on the {lp.attention_on} needs the layer's KV cache "
                            f"on {needs}, not {kv_tier}")
                if engine != "static":
                    return f"{where}.attention_on: the {engine} engine attends on the GPU"
                if kv.dtype not in ("bf16", "fp16"):
                    return f"{where}.attention_on: attention off the GPU reads an unquantized KV cache, not {kv.dtype}"
            if lp.mlp_chunks != 1:
                return f"{where}.mlp_chunks: a chunked MLP is not executed yet"
            if lp.checkpoint != "none" or lp.input != "keep" or lp.roles:
                return f"{where}: activation decisions are for training plans"
        return ""

    def not_executable(self) -> str:
        """The first decision the executors (validate.infer_executor, validate.infer_hf) cannot
        carry out, as "field: reason"; "" when there is none. Beyond ``unsupported()``: an
        inference plan's KV off HBM only on the host, and attention never inside a drive (the
        executors have none)."""
        why = self.unsupported()
        if why or self.scenario.job.mode != "infer":
            return why
        for lp in self.layers:
            where = f"layers.{lp.layer}"
            kv = lp.kv_cache
            assert kv is not None  # unsupported() refuses inference plans without one
            if lp.attention_on == "csd":
                return (f"{where}.attention_on: attention inside a computational storage drive is replayed, "
                        "not executed (no drive to run it)")
            if kv.resident_frac < 1.0 and kv.tier != "host":
                return f"{where}.kv_cache.tier: KV cache on {kv.tier} is not executed yet (replayed only)"
        return ""

    @property
    def offloads(self) -> bool:
        return any(lp.input == "offload" or any(a.action == "offload" for a in lp.roles.values())
                   for lp in self.layers)

    def to_json(self) -> str:
        """Deterministic JSON: sorted keys; the decisions' and prediction's floats rounded to
        FLOAT_DIGITS decimals (solver noise must not change the file), the embedded scenario
        exact (its hashes are of its exact content)."""
        data = self.model_dump(mode="json")
        scenario = data.pop("scenario")
        data = _rounded(data)
        data["scenario"] = scenario
        return json.dumps(data, sort_keys=True, indent=1) + "\n"


def segments(layers: Sequence[LayerPlan]) -> dict[int, tuple[int, ...]]:
    """Segment checkpoints: each segment's head (a layer whose input is kept or offloaded,
    followed by layers whose input is ``recompute``) -> the layers whose inputs are recomputed
    from the head's input, in order. The replay (`planners.swap.apply`) and the executor read
    the segments from here."""
    out: dict[int, list[int]] = {}
    head = -1
    for lp in layers:
        if lp.input != "recompute":
            head = lp.layer
        elif head >= 0:
            out.setdefault(head, []).append(lp.layer)
    return {h: tuple(js) for h, js in out.items()}


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


V1_PROVENANCE_SCENARIO_KEYS = ("model", "job", "hardware", "gpu_budget_bytes", "host_budget_bytes")


def migrate_v1(data: dict[str, Any], *, where: str = "plan") -> dict[str, Any]:
    """A schema-version-1 plan (provenance naming a model preset, a job dict and a node preset)
    as version 2: the names resolved against this version's presets (the model with the plan's
    layer count), the scenario embedded with its hashes, the decisions unchanged."""
    from hwmodels.catalog import load_node
    from hwmodels.units import UserInputError
    from simulator.job import parse_job
    from simulator.model import get_model

    prov = dict(data.get("provenance") or {})
    missing = [k for k in V1_PROVENANCE_SCENARIO_KEYS if k not in prov]
    if missing:
        raise UserInputError(f"{where}: provenance.{missing[0]}: a version-1 plan must name it")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise UserInputError(f"{where}: layers: a version-1 plan must list its layers")
    def resolved(field: str, build: Any) -> Any:
        try:
            return build()
        except UserInputError as err:
            raise UserInputError(f"{where}: provenance.{field}: {err}") from None
        except (ValueError, TypeError) as err:  # a pydantic ValidationError is a ValueError
            raise UserInputError(f"{where}: provenance.{field}{'.' if field else ''}"
                                 f"{validation_line(err)}") from None

    job_data = prov["job"] if isinstance(prov["job"], dict) else {}
    model = resolved("model", lambda: get_model(str(prov["model"])).with_layers(len(layers)))
    job = resolved("job", lambda: parse_job({**job_data, "mode": job_data.get("mode", "train")}))
    node = resolved("hardware", lambda: load_node(str(prov["hardware"])))
    scenario = resolved("", lambda: Scenario(model=model, job=job, node=node,
                                             gpu_budget_bytes=prov["gpu_budget_bytes"],
                                             host_budget_bytes=prov["host_budget_bytes"]))
    for key in V1_PROVENANCE_SCENARIO_KEYS:
        del prov[key]
    prov["migrated_from"] = 1
    out = {k: v for k, v in data.items() if k != "provenance"}
    out.update(schema_version=PLAN_SCHEMA_VERSION, provenance=prov,
               scenario=scenario.model_dump(mode="json"),
               scenario_sha256=scenario.hashes().model_dump(mode="json"))
    return out


def plan_from_data(data: Any, *, where: str = "plan") -> Plan:
    """Validate plan data of any supported schema version; UserInputError names ``where`` and
    the first failing field."""
    from pydantic import ValidationError

    from hwmodels.units import UserInputError

    if not isinstance(data, dict):
        raise UserInputError(f"{where}: expected a JSON object holding a plan")
    version = data.get("schema_version", PLAN_SCHEMA_VERSION)
    if version == 1:
        data = migrate_v1(data, where=where)
    elif version != PLAN_SCHEMA_VERSION:
        raise UserInputError(f"{where}: schema_version: {str(version)[:20]!r} is not one of 1, "
                             f"{PLAN_SCHEMA_VERSION}")
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        raise UserInputError(f"{where}: {validation_line(err)}") from None


def validation_line(err: Exception) -> str:
    """The first failing field of a pydantic error (``hwmodels.units.validation_error_line``),
    or the text of any other error."""
    from hwmodels.units import validation_error_line

    if not callable(getattr(err, "errors", None)):
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return validation_error_line(err, union_tags=("train", "infer"))


def load_plan(path: str | pathlib.Path) -> Plan:
    """Read a plan file; a malformed one raises UserInputError naming the file and field."""
    from hwmodels.units import UserInputError
    from hwmodels.userfile import read_user_json

    p = pathlib.Path(path)
    try:
        data = read_user_json(p)  # a regular file of bounded size and depth, or one line
    except UserInputError as err:
        reason = str(err).removeprefix(f"{p}: ")
        raise UserInputError(f"{p}: cannot read a plan: {reason}") from None
    return plan_from_data(data, where=str(p))


def tierplan_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tierplan")
    except PackageNotFoundError:
        return "unknown"
