"""Job specs: what a step does (train or infer), in which dtypes, split how, on which node.

Models: ``TrainJob`` (one optimizer step over ``micro_batch`` sequences of ``seq_len`` tokens),
``InferJob`` (prefill of ``prompt_len`` then ``gen_len`` decode steps for ``batch`` sequences,
with an optionally quantized KV cache), ``Parallelism`` (tensor, sequence, context and data
parallel degrees, ZeRO stage), ``Job`` (either, tagged by ``mode``), and ``ScenarioFile`` (model +
job + hardware node), loadable from YAML or JSON.
Assumes:
- Element sizes come from one table (``kernels.cost.DTYPE_BITS``); ``DTYPE_BYTES`` is its view
  for the dtypes a job may name; int4 packs two elements per byte.
- ``sgd`` is momentum-free SGD (torch's default): no optimizer state. ``adamw`` keeps two
  moments per parameter in ``optimizer_state_dtype``.
- ``sequence_parallel`` with ``tp == 1`` and ``zero_stage > 0`` with ``dp == 1`` are allowed and
  change nothing (there is nothing to split), as in Megatron-LM and DeepSpeed.
- Tensor parallelism splits heads, so ``num_heads % tp == 0``; KV heads either split
  (``num_kv_heads % tp == 0``) or are replicated (``tp % num_kv_heads == 0``). Ulysses context
  parallelism also scatters heads over ``cp``. Ring (and Ulysses) context parallelism splits the
  sequence, so ``seq_len % cp == 0``; sequence parallelism splits it over ``tp``.
- A learned position table cannot index past ``max_position_embeddings``; rotary models may run
  longer sequences (context extension), so no limit is checked for them.
Ignores: pipeline parallelism, expert parallelism, gradient accumulation across micro-batches
(``grads_persist`` covers its memory effect), loss scaling.
Source: PyTorch optimizer docs (SGD/AdamW state), Megatron-LM arguments (tp, sp, cp, cp_kind),
DeepSpeed ZeRO stages, KIVI (per-group KV quantization).
"""

from __future__ import annotations

import pathlib
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from hwmodels.limits import MAX_BATCH, MAX_PARALLEL_DEGREE
from hwmodels.units import UserInputError, parse_count, validation_error_line
from hwmodels.userfile import read_user_mapping
from kernels.cost import DTYPE_BITS, tensor_bytes  # noqa: F401  (tensor_bytes re-exported)
from simulator.model import ModelSpec, load_model

SCHEMA_VERSION: Final = 1

DType = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4"]
"""dtypes a job may name; their sizes come from kernels.cost.DTYPE_BITS (one table)."""
DTYPE_BYTES: dict[str, float] = {
    name: DTYPE_BITS[name] // 8 if DTYPE_BITS[name] % 8 == 0 else DTYPE_BITS[name] / 8
    for name in get_args(DType)
}
"""Bytes per element: fp32 4, tf32 4, bf16 2, fp16 2, fp8 1, int8 1, int4 0.5."""


ModelOutput = Literal["freed", "kept"]
"""The training loop's form (``TrainJob.model_output``)."""
MODEL_OUTPUTS: tuple[str, ...] = get_args(ModelOutput)


def dtype_bytes(name: str) -> float:
    """Bytes per element of a job dtype in ``DTYPE_BYTES`` (int4: 0.5)."""
    try:
        return DTYPE_BYTES[name]
    except (KeyError, TypeError):
        raise UserInputError(
            f"dtype: unknown dtype {name!r} (supported: {', '.join(DTYPE_BYTES)})"
        ) from None


def _count(minimum: int):
    def parse(value: Any, info: ValidationInfo) -> Any:
        return parse_count(value, field=info.field_name or "length", minimum=minimum)

    return BeforeValidator(parse)


Length = Annotated[int, _count(1), Field(ge=1)]
"""Token count: an int or a string with binary suffixes ("64K" = 65536, "1M")."""
LengthOrZero = Annotated[int, _count(0), Field(ge=0)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Parallelism(_Spec):
    """How one model replica's step is split over GPUs (total GPUs = tp * cp * dp)."""

    tp: int = Field(default=1, ge=1, le=MAX_PARALLEL_DEGREE, strict=True)
    """Tensor-parallel degree: weights and heads split over tp GPUs."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: norms, dropout and residuals split over tp along tokens
    (a no-op when tp == 1)."""
    cp: int = Field(default=1, ge=1, le=MAX_PARALLEL_DEGREE, strict=True)
    """Context-parallel degree: the sequence split over cp GPUs."""
    cp_kind: Literal["ring", "ulysses"] = "ring"
    """ring: KV blocks passed around a ring (P2P); ulysses: all-to-all from sequence to head
    split."""
    dp: int = Field(default=1, ge=1, le=MAX_PARALLEL_DEGREE, strict=True)
    """Data-parallel degree (replicas)."""
    zero_stage: int = Field(default=0, ge=0, le=3, strict=True)
    """ZeRO stage over dp: 1 optimizer states, 2 + grads, 3 + weights sharded (no-op at dp 1)."""

    @property
    def num_gpus(self) -> int:
        return self.tp * self.cp * self.dp

    def check(
        self,
        model: ModelSpec,
        *,
        seq_len: int | None = None,
        field: str = "parallelism",
        seq_field: str = "seq_len",
    ) -> None:
        """Raise UserInputError naming ``<field>.<name>`` if model/seq_len cannot be split so."""
        tp, cp = self.tp, self.cp
        if model.num_heads % tp:
            raise UserInputError(
                f"{field}.tp: {tp} does not divide {model.name}'s {model.num_heads} heads"
            )
        if model.num_kv_heads % tp and tp % model.num_kv_heads:
            raise UserInputError(
                f"{field}.tp: {tp} neither divides nor is a multiple of {model.name}'s"
                f" {model.num_kv_heads} kv heads"
            )
        if model.intermediate_size % tp:
            raise UserInputError(
                f"{field}.tp: {tp} does not divide {model.name}'s intermediate_size"
                f" {model.intermediate_size}"
            )
        if self.cp_kind == "ulysses" and model.num_heads % (tp * cp):
            raise UserInputError(
                f"{field}.cp: ulysses needs tp*cp = {tp * cp} to divide {model.name}'s"
                f" {model.num_heads} heads"
            )
        if seq_len is not None:
            if seq_len % cp:
                raise UserInputError(f"{field}.cp: {cp} does not divide {seq_field} {seq_len}")
            if self.sequence_parallel and seq_len % (tp * cp):
                raise UserInputError(
                    f"{field}.sequence_parallel: tp*cp = {tp * cp} does not divide"
                    f" {seq_field} {seq_len}"
                )


class _JobBase(_Spec):
    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this schema; files written by a newer tierplan are rejected."""
    parallelism: Parallelism = Parallelism()
    """How the step is split over GPUs."""
    param_dtype: DType = "bf16"
    """dtype of the weights the kernels read."""


class TrainJob(_JobBase):
    """One training step (forward, loss, backward, optimizer) of one micro-batch."""

    mode: Literal["train"] = "train"
    """Tag of the Job union."""
    seq_len: Length
    """Tokens per sequence ("128K" accepted)."""
    micro_batch: int = Field(default=1, ge=1, le=MAX_BATCH, strict=True)
    """Sequences per step on each data-parallel replica."""
    grad_dtype: DType = None  # type: ignore[assignment]  # filled from param_dtype
    """dtype of the weight gradients (default: param_dtype)."""
    optimizer: Literal["none", "sgd", "adamw"] = "adamw"
    """none: forward+backward only; sgd: momentum-free, no state; adamw: two moments."""
    optimizer_state_dtype: DType = "fp32"
    """dtype of AdamW's moments."""
    master_weights: bool = False
    """Keep an fp32 master copy of low-precision weights (Megatron/DeepSpeed mixed precision);
    False for a model loaded in bf16 and stepped directly (plain PyTorch, HF Trainer in bf16)."""
    checkpointing: Literal["none", "full", "selective"] = "none"
    """Activation recomputation: none, full (each layer's input only), selective (Megatron:
    recompute attention internals, keep the rest)."""
    grads_persist: bool = False
    """Weight gradients stay allocated between steps (zero_grad(set_to_none=False) or gradient
    accumulation); PyTorch's and HF Trainer's default set_to_none=True frees them: False."""
    mlp_activation: Literal["saved", "recomputed"] = "saved"
    """SwiGLU's silu(gate) and product: saved for backward as eager autograd does, or
    recomputed in backward from the gate/up projection's output by one fused activation +
    down-projection node (two elementwise kernels per layer; 2 x tokens x intermediate bytes
    per layer fewer activations)."""
    loss: Literal["cross_entropy", "mean_square_fp32"] = "cross_entropy"
    """cross_entropy over the LM head's logits, or ``x.float().pow(2).mean()`` of a bare layer
    stack's output (the H200 probe's loss)."""
    allocator: Literal["caching", "expandable"] = "caching"
    """PyTorch's CUDA allocator the step runs under: the native caching allocator (a segment per
    large request), or ``expandable_segments:True`` (one growing segment per stream, mapped in
    pages; the plan executor's default). Reserved-memory predictions are for this one. Written
    to files only when not ``caching``, so jobs saved before it existed keep their hashes."""

    rmsnorm: Literal["eager", "fused"] = "eager"
    """A Hugging Face model's RMSNorm: ``eager``, transformers' LlamaRMSNorm (an fp32 upcast and
    five aten ops, saving fp32 copies of its input: 16 GiB per norm at 1M tokens of a 4096-wide
    model), or ``fused``, one kernel that saves its input and the fp32 rstd per row
    (``torch.rms_norm`` / ``nn.RMSNorm``, as Liger's RMSNorm in ALST's long-context runs).
    Other code bases keep their own norm. Omitted from dumps when ``eager``."""
    model_output: ModelOutput = "freed"
    """What the training loop does with the model's output object (a Hugging Face
    ``CausalLMOutputWithPast`` holding ``.loss`` and the bf16 ``.logits``, tokens x vocab):
    ``freed``, ``loss = model(ids, labels=ids).loss; loss.backward()`` (Hugging Face Trainer's
    ``compute_loss``, torchtitan, Lightning), drops it when the forward returns, so the logits
    are gone before backward; ``kept``, ``out = model(ids, labels=ids); out.loss.backward()``,
    holds ``out.logits`` through backward and the optimizer step. For a bare layer stack the
    object is the stack's output: ``freed`` when the loss is computed inside the forward (the
    executor's ``validate.model.Decoder``), ``kept`` when the caller holds it (the reference
    probe's ``x.float().pow(2).mean().backward()``). Megatron's form is fixed (its loss never
    returns the logits), whatever this says.
    Omitted from dumps when ``freed``, so that files and content hashes written before the
    field existed read the same."""

    @model_validator(mode="before")
    @classmethod
    def _grad_dtype_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("grad_dtype") is None:
            data = {**data, "grad_dtype": data.get("param_dtype", "bf16")}
        return data

    @model_validator(mode="after")
    def _master_needs_low_precision(self) -> TrainJob:
        if self.master_weights and self.param_dtype == "fp32":
            raise ValueError("master_weights: parameters are already fp32; set it false")
        return self

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Fields added after files were written are left out at their defaults, so those files
        and their content hashes read the same."""
        data = handler(self)
        if self.model_output == "freed":
            data.pop("model_output", None)
        if self.allocator == "caching":
            data.pop("allocator", None)
        if self.rmsnorm == "eager":
            data.pop("rmsnorm", None)
        return data

    @property
    def num_tokens(self) -> int:
        """Tokens per step on one data-parallel replica (before context parallelism)."""
        return self.seq_len * self.micro_batch

    @property
    def num_optimizer_states(self) -> int:
        """Optimizer tensors per parameter (AdamW: exp_avg and exp_avg_sq)."""
        return {"none": 0, "sgd": 0, "adamw": 2}[self.optimizer]

    def check(self, model: ModelSpec) -> None:
        """Raise UserInputError (naming the field) if this job cannot run on ``model``."""
        if self.loss == "cross_entropy" and not model.has_lm_head:
            raise UserInputError(
                f"job.loss: cross_entropy needs an LM head; {model.name} has none"
                " (use mean_square_fp32 for a bare layer stack)"
            )
        if self.mlp_activation == "recomputed" and model.mlp != "swiglu":
            raise UserInputError(
                f"job.mlp_activation: recomputed is for SwiGLU MLPs; {model.name} has {model.mlp}"
            )
        if self.loss == "mean_square_fp32" and model.has_lm_head:
            raise UserInputError(
                f"job.loss: mean_square_fp32 is for bare layer stacks; {model.name} has an LM head"
            )
        _check_positions(model, self.seq_len, "job.seq_len")
        self.parallelism.check(model, seq_len=self.seq_len, field="job.parallelism")


class InferJob(_JobBase):
    """Serving ``batch`` sequences: one prefill of ``prompt_len`` tokens, ``gen_len`` decodes."""

    mode: Literal["infer"] = "infer"
    """Tag of the Job union."""
    prompt_len: Length
    """Prompt tokens per sequence ("32K" accepted)."""
    gen_len: LengthOrZero = 0
    """Generated tokens per sequence (0: prefill only)."""
    batch: int = Field(default=1, ge=1, le=MAX_BATCH, strict=True)
    """Sequences served together."""
    kv_dtype: DType = "bf16"
    """dtype of K and V as attention computes them (and as stored when kv_quant is none)."""
    kv_quant: Literal["none", "int8", "int4", "fp8"] = "none"
    """Storage format of the KV cache; quantized formats add one scale per group."""
    kv_group_size: int | None = Field(default=None, ge=1)
    """Elements per quantization scale; None: the kernels.quant default (int8/int4: one scale
    per token and head, i.e. head_dim elements; fp8: one per tensor)."""
    prefill_chunk_len: Length | None = None
    """Prompt tokens per prefill pass of each sequence (chunked prefill: only one chunk's
    activations live at a time, attention reads the KV cache written so far); None prefills the
    whole prompt in one pass. Omitted from dumps when None."""
    engine: Literal["static", "hf"] = "static"
    """The decode engine modelled: ``static``, tierplan's executor (KV buffers of the final
    length allocated once per layer in their tier, appended in place); ``hf``, Hugging Face
    eager ``generate`` with a ``DynamicCache`` (each layer's keys and values grown by
    ``torch.cat`` at every step; its ``offloading=True`` form when the plan's KV is on the
    host). Omitted from dumps when ``static``."""

    @model_validator(mode="after")
    def _group_size_needs_quant(self) -> InferJob:
        if self.kv_quant == "none" and self.kv_group_size is not None:
            raise ValueError("kv_group_size needs kv_quant int8, int4 or fp8")
        return self

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Fields added after files were written are left out at their defaults."""
        data = handler(self)
        if self.prefill_chunk_len is None:
            data.pop("prefill_chunk_len", None)
        if self.engine == "static":
            data.pop("engine", None)
        return data

    @property
    def max_seq_len(self) -> int:
        """Tokens per sequence at the last decode step: the KV cache's final length."""
        return self.prompt_len + self.gen_len

    @property
    def kv_storage_dtype(self) -> str:
        """dtype the KV cache is stored in."""
        return self.kv_dtype if self.kv_quant == "none" else self.kv_quant

    def check(self, model: ModelSpec) -> None:
        """Raise UserInputError (naming the field) if this job cannot run on ``model``."""
        _check_positions(model, self.max_seq_len, "job.prompt_len + job.gen_len")
        self.parallelism.check(
            model, seq_len=self.prompt_len, field="job.parallelism", seq_field="prompt_len"
        )


def _check_positions(model: ModelSpec, num_tokens: int, field: str) -> None:
    if model.position == "learned" and num_tokens > model.max_position_embeddings:
        raise UserInputError(
            f"{field}: {num_tokens} tokens exceed {model.name}'s learned position table of"
            f" {model.max_position_embeddings}"
        )


Job = Annotated[TrainJob | InferJob, Field(discriminator="mode")]
"""A train or infer job, chosen by its ``mode`` field."""
_JOB_ADAPTER: TypeAdapter = TypeAdapter(Job)


def parse_job(data: dict) -> TrainJob | InferJob:
    """Validate a job dict (``mode`` picks the kind)."""
    return _JOB_ADAPTER.validate_python(data)


class ScenarioFile(_Spec):
    """A scenario as a user writes it: a model (preset, config path or inline), a job and a node
    (preset or file); `simulator.scenario.Scenario` is what it resolves to."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of the scenario schema."""
    name: str | None = None
    """Label for tables and file names."""
    model: Annotated[
        Annotated[str, Tag("named")] | Annotated[ModelSpec, Tag("inline")],
        Discriminator(lambda v: "named" if isinstance(v, str) else "inline"),
    ]
    """A model preset name, a path to a config.json (relative to the scenario file), or an
    inline ModelSpec."""
    job: Job
    """What the step does."""
    hardware: str = Field(min_length=1)
    """A node preset name from hwmodels (e.g. "1xH200") or a path to a node file."""

    @field_validator("model", mode="before")
    @classmethod
    def _resolve_model_path(cls, value: Any, info: ValidationInfo) -> Any:
        base = (info.context or {}).get("base_dir")
        if isinstance(value, str) and value.lower().endswith(".json") and base is not None:
            path = pathlib.Path(value)
            if not path.is_absolute():
                return str(pathlib.Path(base) / path)
        return value

    @model_validator(mode="after")
    def _job_fits_model(self) -> ScenarioFile:
        self.job.check(self.model_spec())
        return self

    def model_spec(self) -> ModelSpec:
        """The ModelSpec this scenario names or holds."""
        return self.model if isinstance(self.model, ModelSpec) else load_model(self.model)


def load_scenario(path: str | pathlib.Path) -> ScenarioFile:
    """Read a scenario from a .yaml/.yml/.json file; errors name the file and the field."""
    path = pathlib.Path(path)
    data = read_user_mapping(path, what="scenario")
    return scenario_from_dict(data, where=str(path), base_dir=path.parent)


_UNION_TAGS = ("train", "infer", "named", "inline")  # union branch names pydantic puts in locs


def scenario_from_dict(
    data: dict, *, where: str = "scenario", base_dir: str | pathlib.Path | None = None
) -> ScenarioFile:
    """Validate a scenario dict; UserInputError names ``where`` and the failing field."""
    try:
        return ScenarioFile.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        raise UserInputError(validation_error_line(err, where, union_tags=_UNION_TAGS)) from None


DEFAULT_SCENARIO = ScenarioFile(
    name="llama-3.1-8b-train-128k-1xh200",
    model="llama-3.1-8b",
    job=TrainJob(
        seq_len=128 * 1024,
        optimizer="adamw",
        param_dtype="bf16",
        checkpointing="none",
    ),
    hardware="1xH200",
)


def default_scenario() -> ScenarioFile:
    """Llama-3.1-8B, one training step at 128K tokens, AdamW, bf16, no recompute, on 1xH200."""
    return DEFAULT_SCENARIO
