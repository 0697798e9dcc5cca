"""Typed measurement files above the operator level: steps, plan runs, bench cells, profiles.

Models: the files under validate/measurements/ that the validate scripts write, each a
`RecordFile` (the shared `hwmodels.records.Provenance` plus a schema version) with its records:
whole-model training steps (measure_steps.py), plan runs and their predicted-vs-measured rows
(run_plan.py), bench cells (bench.py), kernel profiles of one step (run_plan.py
--kernel-profile), arena replays and allocator snapshots (validate/scripts), the Hugging Face
configs the step cases build, and the public reference probes. `model_for` names the model of a
committed file from its name; a test validates every file with it.
Assumes: pydantic v2; nested figures the executor or the planner owns (copy statistics, arena
solves, predictions) are kept as the flat JSON objects they are.
Ignores: Markdown reports and pickled snapshots (never unpickled).
Source: validate/measurements/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import ConfigDict, Field, ValidationError, model_validator

from hwmodels.records import OpRecordsFile, Provenance, RecordFile, RecordModel
from hwmodels.units import UserInputError, validation_error_line
from hwmodels.userfile import read_user_json

Scalar = float | int | str | bool | None


# ---- whole-model steps (measure_steps.py) ------------------------------------------------------
class StepRecord(RecordModel):
    """One Hugging Face model, one length, one checkpointing choice: a warm-up and timed steps."""

    case: str
    model: str
    """Key into hf_configs.json."""
    seq_len: int = Field(gt=0)
    batch: int = Field(gt=0)
    dtype: str
    gradient_checkpointing: bool
    optimizer: str | None
    """``None`` (no optimizer step), ``adamw_foreach`` or ``adamw_fused``."""
    model_output: Literal["freed", "kept"] = "kept"
    """The training loop's form: ``freed`` (``loss = model(...).loss; loss.backward()``, the
    output object and its logits die before backward) or ``kept`` (``out = model(...);
    out.loss.backward()``, ``out.logits`` alive through the step). Records made before the field
    existed ran the kept form."""
    use_cache: bool
    config: dict[str, Any]
    """The config.json the model was built from (after overrides)."""
    overrides: dict[str, Any]
    sliding_window: int | None
    status: Literal["ok", "oom", "skipped", "error"]
    error: str | None = None
    """First line of the error, when status is not ok."""
    attn_implementation: str | None = None
    num_params: int | None = Field(None, gt=0)
    param_bytes: int | None = Field(None, gt=0)
    allocated_before_build_bytes: int | None = Field(None, ge=0)
    weights_allocated_bytes: int | None = Field(None, ge=0)
    before_step_allocated_bytes: int | None = Field(None, ge=0)
    warmup_step_time_s: float | None = Field(None, gt=0)
    warmup_peak_allocated_bytes: int | None = Field(None, ge=0)
    warmup_peak_reserved_bytes: int | None = Field(None, ge=0)
    peak_allocated_bytes: int | None = Field(None, ge=0)
    """Peak of the last timed step (peaks are reset before each step)."""
    peak_reserved_bytes: int | None = Field(None, ge=0)
    allocated_after_step_bytes: int | None = Field(None, ge=0)
    reserved_after_step_bytes: int | None = Field(None, ge=0)
    memory_stats: dict[str, int | None] | None = None
    """Selected ``torch.cuda.memory_stats`` keys after the last step."""
    loss: float | None = None
    logits_alive_at_backward: bool | None = None
    """Whether the LM head's output was still alive when backward began (last timed step):
    the evidence of ``model_output`` (True for kept, False for freed); None in older records."""
    step_times_s: list[float] | None = None
    step_time_s: float | None = Field(None, gt=0)
    """Median of step_times_s."""
    wall_s: float | None = Field(None, ge=0)


class StepsFile(RecordFile):
    """validate/measure_steps.py."""

    records: list[StepRecord]


# ---- plan runs (run_plan.py) -------------------------------------------------------------------
class PlanCase(RecordModel):
    """One plan run by the executor: refused, out of memory, or timed."""

    case: str
    planner: str | None = None
    model: str | None = None
    num_layers: int | None = Field(None, gt=0)
    seq_len: int | None = Field(None, gt=0)
    micro_batch: int | None = Field(None, gt=0)
    gpu_budget_bytes: int | None = Field(None, gt=0)
    prediction: dict[str, Scalar | dict[str, int]] | None = None
    """The plan's own prediction (simulator replay), as the plan file holds it (its per-tier
    peaks a mapping)."""
    status: Literal["ok", "refused", "oom", "error"]
    """ok, refused before a step, out of memory, or error: the case's process failed before it
    described the case (then only ``case`` and ``message`` are known)."""
    message: str | None = None
    """Why the case was refused, ran out of memory or failed."""
    host_pool_bytes: int | None = Field(None, ge=0)
    host_pool_setup_s: float | None = Field(None, ge=0)
    host_pool_peak_bytes: int | None = Field(None, ge=0)
    step_time_s: float | None = Field(None, gt=0)
    """Median of step_times_s."""
    step_times_s: list[float] | None = None
    copy_stats: dict[str, float | int | None] | None = None
    """The executor's copy statistics of the last step (bytes, busy time, stall, recompute)."""
    arena: dict[str, Scalar] | None = None
    """The executor's arena solve, when its buffers live in one allocation."""
    prediction_arena: dict[str, int] | None = None
    peak_allocated_bytes: int | None = Field(None, ge=0)
    peak_reserved_bytes: int | None = Field(None, ge=0)
    kernel_profile: dict[str, float | int] | None = None
    """Summary of one profiled step (its kernels are in a separate kernel-profile file)."""
    memory_trace: str | None = None
    """File name of the allocator snapshot of the case."""
    grad_check: dict[str, Scalar] | None = None
    """Gradients of the plan against the plain model's."""
    model_states: dict[str, Scalar] | None = None
    """Whole-model plans: the model states' host and disk bytes and the last step's CPU
    optimizer time (``validate.model_states``)."""

    @model_validator(mode="after")
    def _described(self) -> PlanCase:
        if self.status != "error":
            missing = [k for k in ("planner", "model", "num_layers", "seq_len", "micro_batch")
                       if getattr(self, k) is None]
            if missing:
                raise ValueError(f"{missing[0]}: required for a case with status {self.status!r}")
        elif not self.message:
            raise ValueError("message: an error case says what failed")
        return self


class PlanRunFile(RecordFile):
    """run_plan.py's measured.json."""

    warmup: int = Field(ge=0)
    repeats: int = Field(gt=0)
    cases: list[PlanCase]


class ComparisonRow(RecordModel):
    """One figure of one case: predicted, measured, relative error."""

    case: str
    figure: str
    predicted: float
    measured: float
    rel_error: float | None
    """predicted / measured - 1 (None where measured is 0)."""


class NotMeasured(RecordModel):
    """A case that produced no figures, and why."""

    case: str
    status: str
    message: str | None
    predicted_feasible: bool | None
    """The plan's replayed verdict; None when the case was refused before it was replayed."""


class ComparisonFile(RecordFile):
    """run_plan.py's comparison.json."""

    rows: list[ComparisonRow]
    not_measured: list[NotMeasured] | None = None


class KernelProfile(RecordModel):
    """One step under torch.profiler: its kernels (name, count, seconds) and aten ops."""

    wall_s: float = Field(gt=0)
    kernel_s: float = Field(ge=0)
    """Summed kernel time (the GPU's busy time if kernels do not overlap)."""
    num_kernels: int = Field(ge=0)
    kernels: list[tuple[str, int, float]]
    """The top kernels by total time: name, count, total seconds."""
    ops: list[tuple[str, str, int, float]] | None = None
    """Aten ops: name, input shapes, count, device seconds of the kernels they launched."""


# ---- bench (bench.py) --------------------------------------------------------------------------
class BenchCell(RecordModel):
    """One (length, budget, strategy, mode) cell of the bench grid."""

    seq_len: int = Field(gt=0)
    budget: str
    """Budget label (``full``, ``48G``, ...)."""
    budget_bytes: int = Field(gt=0)
    mode: Literal["none", "checkpoint", "save_on_cpu", "memo", "mip", "ideal"]
    """Strategy or executor mode of the cell (bench.MODES, or ``ideal``: the fewer-layer run)."""
    plan: str | None
    """Plan file name inside the plans directory (none when the planner found no plan)."""
    num_layers: int = Field(gt=0)
    model_flops: float | None = Field(gt=0)
    predicted: dict[str, float | int | None] | None
    status: str
    """``ok``, ``refused``, ``oom`` or ``planned`` (an estimate-only run)."""
    message: str | None = None
    reused_from: str | None = None
    """The cell whose measurement this one shares (the same plan)."""
    estimated_s: float | None = Field(None, ge=0)
    leaked_bytes: int | None = Field(None, gt=0)
    """Device memory the cell left allocated (the cells after it are skipped)."""
    wall_s: float | None = Field(None, ge=0)
    host_pool_bytes: int | None = Field(None, ge=0)
    host_pool_peak_bytes: int | None = Field(None, ge=0)
    host_allocator_peak_bytes: int | None = Field(None, ge=0)
    peak_allocated_bytes: int | None = Field(None, ge=0)
    peak_reserved_bytes: int | None = Field(None, ge=0)
    step_time_s: float | None = Field(None, gt=0)
    step_times_s: list[float] | None = None
    copy_stats: dict[str, float | int | None] | None = None


class BenchFile(RecordFile):
    """bench.py run's measured file."""

    smoke: bool
    warmup: int = Field(ge=0)
    repeats: int = Field(gt=0)
    max_step_s: float = Field(gt=0)
    plans_index: dict[str, Any]
    """The plans directory's index: model, node, layers, card and host budgets, margin."""
    cells: list[BenchCell]


# ---- inference plans (infer_bench.py) ----------------------------------------------------------


class InferRecord(RecordModel):
    """One (cell, mode) of the inference bench, or one ``validate plan`` run of an inference plan:
    refused (before or by the prediction), out of memory, failed, or measured."""

    cell: str
    mode: str
    """``hf_resident``, ``hf_offloaded``, ``plan``, ``kv_host`` (bench modes), or ``run``."""
    status: Literal["ok", "refused", "oom", "error"]
    message: str | None = None
    """Why the mode was refused, ran out of memory or failed."""
    plan: str | None = None
    """Plan file name (inside the plans directory)."""
    plan_sha256: str | None = None
    model: str | None = None
    engine: Literal["static", "hf"] | None = None
    prompt_len: int | None = Field(None, gt=0)
    batch: int | None = Field(None, gt=0)
    gen_len: int | None = Field(None, ge=0)
    prefill_chunk_len: int | None = Field(None, gt=0)
    prediction: dict[str, Any] | None = None
    """The plan's own prediction, as the plan file holds it."""
    allocator: str | None = None
    """``PYTORCH_CUDA_ALLOC_CONF`` of the run's process (empty: the native caching allocator)."""
    setup_s: float | None = Field(None, ge=0)
    """Seconds to build the weights and buffers (pinning included)."""
    prefill_time_s: float | None = Field(None, ge=0)
    """Wall time of the whole prefill (all chunks, all sequences), synchronized."""
    decode_step_times_s: list[float] | None = None
    """Each decode step (one token for each sequence), synchronized."""
    decode_step_time_s: float | None = Field(None, ge=0)
    """Median of decode_step_times_s after the first 2 (of all when there are fewer than 3)."""
    contexts: list[int] | None = None
    """KV length (tokens cached before the step) at each decode step."""
    tokens_per_s: float | None = Field(None, ge=0)
    """batch / decode_step_time_s."""
    peak_allocated_bytes: int | None = Field(None, ge=0)
    """torch.cuda.max_memory_allocated over the run (prefill + decode), reset before it."""
    peak_reserved_bytes: int | None = Field(None, ge=0)
    host_pinned_bytes: int | None = Field(None, ge=0)
    """Pinned host bytes: the static engine's pool; the HF engine's pinned allocator peak."""
    h2d_bytes_per_step: int | None = Field(None, ge=0)
    """Bytes the static engine's last decode step copied host to device (KV and weights)."""
    d2h_bytes_per_step: int | None = Field(None, ge=0)
    tokens: list[list[int]] | None = None
    """Generated ids per sequence: the prefill's argmax, then one per decode step."""
    tokens_equal_resident: bool | None = None
    """Static plans: whether the tokens equal the all-resident static run's (None: not run)."""
    reference_message: str | None = None
    """Why the all-resident reference did not run, where it did not."""
    engine_notes: dict[str, Scalar] | None = None
    """Engine facts: effective lookahead, buffer counts, buffer bytes, cache argument."""
    decode_issue_times_s: list[float] | None = None
    """Static engine, per decode step: the host's time to issue the step (its Python and
    launches, before the synchronize that ends the step's timer)."""
    decode_issue_time_s: float | None = Field(None, ge=0)
    """Median of decode_issue_times_s after the first 2 (as decode_step_time_s)."""
    warmup_s: float | None = Field(None, ge=0)
    """Static engine: seconds of the warm-up before the timed prefill (engine_notes.warmup says
    what it warms)."""
    teacher_forced: dict[str, Scalar] | None = None
    """The run's decode steps again fed the reference run's tokens (static modes: the
    all-resident static run; hf_offloaded: hf_resident), its logits against the reference's:
    max_abs_logit_diff, bitwise_equal, and argmax_mismatched of argmax_checked positions (those
    where the reference's top-1 logit leads its top-2 by more than ``margin``) of ``positions``."""


class InferBenchFile(RecordFile):
    """infer_bench.py's measurement file: one record per (cell, mode)."""

    plans_dir: str
    """The plans directory the index came from."""
    records: list[InferRecord]


class InferSmokeFile(RecordFile):
    """validate/scripts/infer_smoke.py: the engines' smoke runs, one record per run."""

    h2d_bytes_per_s: float | None = Field(None, gt=0)
    """One pinned 1 GiB host-to-device copy (median of 5); None without a GPU."""
    teacher_margin: float = Field(gt=0)
    """The teacher-forced check's margin (validate.infer_executor.TEACHER_MARGIN)."""
    records: dict[str, InferRecord]


class InferDiagFile(RecordFile):
    """validate/scripts/infer_diag.py: copy rates and where two static placements' logits part."""

    results: dict[str, Any]


class CpuAttentionFile(RecordFile):
    """validate/scripts/cpu_attention_bench.py: torch's CPU decode SDPA rates, their fits, a plain
    read's rate, and the 128K decode with some layers attended on the CPU."""

    micro: list[dict[str, Any]]
    fits: dict[str, dict[str, Any]]
    read_bytes_per_s: float
    read_threads: int
    decode: list[dict[str, Any]]
    cpu_attention_threads: int
    wall_s: float


class HfOffloadDiagFile(RecordFile):
    """validate/scripts/hf_offload_diag.py: the HF host probe, the offloaded cache's copy pattern,
    and profiles of HF offloaded and resident decode steps."""

    host_probe: dict[str, Any]
    copies: list[dict[str, Any]] = []
    hf_offloaded: dict[str, Any] = {}
    hf_resident: dict[str, Any]
    elapsed_s: float


class KvQuantCheckFile(RecordFile):
    """validate/scripts/kv_quant_check.py: the Triton KV dequantization against the torch path,
    and both timed against the replay's price."""

    results: dict[str, Any]


# ---- one-off probes (validate/scripts) ---------------------------------------------------------
class ArenaReplayFile(RecordFile):
    """arena_replay_probe.py: predicted against measured arena figures, per plan."""

    plans: dict[str, dict[str, Scalar]]


class HostOverheadFile(RecordFile):
    """validate/scripts/host_overhead.py: the host time of eager ops, decode steps and CUDA graphs."""

    smoke: bool = False
    """True: a CPU run that checks the script's logic; its times mean nothing."""
    elapsed_s: float | None = Field(None, ge=0)
    """Seconds the whole measurement took."""
    dispatch: list[dict[str, Scalar]]
    """Per op kind: host_s (the enqueue loop's time per call), wall_s (synchronized), calls."""
    hf_decode: list[dict[str, Scalar | list[float]]]
    """Per (width, layers, offloading): host_s / wall_s of one decode step (medians), aten ops, kernels."""
    static_decode: list[dict[str, Scalar | list[float]]]
    """Per (layers, kv_host): the static engine's decode step wall_s (median)."""
    graphs: list[dict[str, Scalar]]
    """Per graph size: host_s and wall_s per replay."""
    copies: list[dict[str, Scalar]]
    """Pinned copies: one copy per size and direction, 64 MiB chunks back to back, .to("cpu") blocks."""
    prefill: list[dict[str, Scalar]] = Field(default_factory=list)
    """Per engine: one 32K prefill pass of 2 layers at 8B width, GPU seconds of its largest kernels."""
    decode_attention: list[dict[str, Scalar]] = Field(default_factory=list)
    """Per (batch, context, KV layout): one decode SDPA call's seconds, queued, and its KV bytes rate."""
    fit: dict[str, dict[str, float]]
    """Per engine and form: fixed_s + per_layer_s * layers (hwmodels.host_overhead.fit_line), per_op_s."""


class CpuAdamFile(RecordFile):
    """validate/scripts/cpu_adam.py: torch's CPU AdamW per thread count and layer size, and the
    pinned copies of layer-sized parameters and gradients."""

    smoke: bool = False
    """True: a CPU run with tiny sizes that checks the script's logic; its figures mean nothing."""
    elapsed_s: float | None = Field(None, ge=0)
    """Seconds the whole measurement took."""
    adamw: list[dict[str, Scalar]]
    """Per (size, threads, form): median seconds of one step, params/s and bytes/s (fp32 states:
    28 bytes moved per parameter for ``adamw``; 34 for ``layer_step``, the executor's step with
    the bf16 gradient upcast and the bf16 parameters written)."""
    copies: list[dict[str, Scalar]]
    """Per (size, direction): median seconds of one pinned copy and its bytes/s."""


class FewerLayersFile(RecordModel):
    """validate/scripts/whole_model_1m.py's whole-1m-fewer.json: the first layers of a whole-step
    plan run while the other layers' host and disk bytes are held."""

    provenance: Provenance | None = None
    """Device, torch, date and command; absent in the 2026-12-03 run, whose provenance is in
    the README beside it."""
    plan: str
    """The whole-step plan of all the model's layers."""
    num_layers: int = Field(gt=0)
    layers_run: int = Field(gt=0)
    smoke: bool
    held_bytes: dict[str, int]
    """Bytes held meanwhile per tier (host, nvme): the difference of the two replays' peaks."""
    held_files: int = Field(ge=0)
    prediction_fewer: dict[str, Any]
    prediction_whole: dict[str, Any]
    prediction_whole_committed: dict[str, Any] | None
    case: PlanCase
    comparison: list[dict[str, Scalar]]
    """Per figure: predicted, measured, rel_error (predicted / measured - 1)."""


class CollectiveRecord(RecordModel):
    """One collective at one size on ``num_gpus`` ranks (validate/scripts/nccl_sweep.py)."""

    op: Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"]
    bytes: int = Field(gt=0)
    """The per-GPU buffer as hwmodels.collectives counts it: the all-reduce buffer, the
    all-gather output (= reduce-scatter input), the all-to-all send buffer, the message."""
    num_gpus: int = Field(ge=2)
    """Ranks taking part (send_recv: 2, ranks 0 and 1)."""
    dtype: str
    time_s: float = Field(gt=0)
    """Median over trials of a trial's seconds per call (the slowest rank's, each trial)."""
    time_min_s: float = Field(gt=0)
    time_max_s: float = Field(gt=0)
    busbw_bytes_per_s: float = Field(gt=0)
    """nccl-tests' bus bandwidth of the median: bus_factor * bytes / time_s."""
    num_trials: int = Field(gt=0)
    iters_per_trial: int = Field(gt=0)
    """Calls issued back to back inside one timed trial."""


class NcclSweepFile(RecordFile):
    """validate/scripts/nccl_sweep.py: five collectives from a few bytes to GiBs, per GPU count."""

    smoke: bool = False
    """True: a CPU run over gloo that checks the script's logic; its times mean nothing."""
    backend: Literal["nccl", "gloo"]
    env: dict[str, str]
    """Environment every rank ran with (NVLS and multicast off)."""
    elapsed_s: float | None = Field(None, ge=0)
    """Seconds the whole sweep took."""
    records: list[CollectiveRecord]


class MgpuRecord(RecordModel):
    """One parallel training step cell (validate/scripts/mgpu_bench.py)."""

    mode: Literal["cp", "tp_sp", "fsdp2"]
    """cp: ring attention over the zigzag split (validate.context_parallel); tp_sp: tensor +
    sequence parallel (validate.tensor_parallel); fsdp2: fully_shard per layer (validate.fsdp)."""
    model: str
    num_layers: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    """Tokens of one sequence (fsdp2: of each rank's own micro-batch)."""
    tokens_per_rank: int = Field(gt=0)
    num_gpus: int = Field(ge=1)
    dtype: str
    status: Literal["ok", "oom", "error"]
    error: str | None = None
    """First line of the error, when status is not ok."""
    step_times_s: list[float] | None = None
    """Timed steps (forward, backward; fsdp2: and AdamW), the slowest rank's each."""
    step_time_s: float | None = Field(None, gt=0)
    """Median of step_times_s."""
    peak_allocated_bytes: int | None = Field(None, ge=0)
    """Largest ``torch.cuda.max_memory_allocated`` over the ranks (peaks reset before the steps)."""
    peak_allocated_per_rank_bytes: list[int] | None = None


class MgpuBenchFile(RecordFile):
    """validate/scripts/mgpu_bench.py: CP, TP+SP and FSDP2 steps of 8B-shaped layers on one node."""

    smoke: bool = False
    """True: a CPU run over gloo with tiny shapes that checks the script's logic."""
    backend: Literal["nccl", "gloo"]
    env: dict[str, str]
    num_gpus: int = Field(ge=1)
    elapsed_s: float | None = Field(None, ge=0)
    records: list[MgpuRecord]


class AllocTraceMark(RecordModel):
    """Where a step boundary falls in an allocation trace, and the allocator's statistics there."""

    at: str
    """``prepared`` (model, batch and executor set up) or ``after step N``."""
    trace_index: int = Field(ge=0)
    """Length of the device trace at this point: entries before it happened before."""
    allocated_bytes: int | None = Field(default=None, ge=0)
    reserved_bytes: int | None = Field(default=None, ge=0)
    peak_allocated_bytes: int | None = Field(default=None, ge=0)
    peak_reserved_bytes: int | None = Field(default=None, ge=0)


class AllocTraceFile(RecordFile):
    """validate/scripts/alloc_trace.py: the executor's allocation / free sequence of one plan's
    steps (``torch.cuda.memory._snapshot()`` as is, no stack frames) with step marks."""

    plan: str
    """The plan file that ran."""
    marks: list[AllocTraceMark]
    result: dict[str, Any]
    """Model, layers, tokens, the timed steps' seconds and the plan's prediction."""
    snapshot: dict[str, Any]
    """``{"segments": [...], "device_traces": [[{"action", "addr", "size", "stream", "time_us",
    ...}, ...]]}``."""


class PeakBlocksRow(RecordModel):
    """Blocks alive at the peak that one place allocated."""

    where: str
    """``path:line function`` of the innermost repository frame (or three of them, ``<-``-joined),
    or ``<outside repo>``."""
    bytes: int = Field(ge=0)
    blocks: int = Field(ge=0)


class PeakBlocks(RecordModel):
    """The allocator trace's highest live point and what was alive there."""

    trace_index: int
    trace_entries: int = Field(ge=0)
    live_bytes: int = Field(ge=0)
    at: list[str]
    """Repository frames of the allocation that made the peak, innermost first."""
    by_line: list[PeakBlocksRow]
    by_stack: list[PeakBlocksRow]


class PeakBlocksFile(RecordFile):
    """validate/scripts/peak_blocks.py: what is alive on the GPU at the peak of one plan's steps,
    by the line that allocated it."""

    plan: str
    result: dict[str, Any]
    """Status, the timed steps' seconds, the allocator's peaks and the plan's prediction."""
    peak: PeakBlocks


class SnapshotRecord(RecordModel):
    """One step's allocator snapshot, reduced to segments and a trace of (field...) rows."""

    case: str
    model: str
    seq_len: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    gradient_checkpointing: bool
    num_steps: int = Field(gt=0)
    peak_allocated_bytes: int = Field(ge=0)
    peak_reserved_bytes: int = Field(ge=0)
    segment_fields: list[str]
    segments: list[list[Scalar]]
    trace_fields: list[str]
    trace: list[list[Scalar]]


class SnapshotsFile(RecordFile):
    """PyTorch memory snapshots of whole-model steps."""

    about: str = Field(alias="_about")
    records: list[SnapshotRecord]


class HfModelConfig(RecordModel):
    """One model's published config and where it comes from."""

    source: str
    """Where the config.json was published."""
    config: dict[str, Any]


class HfConfigsFile(RecordModel):
    """The published config.json values measure_steps.py builds its models from (an input)."""

    about: str = Field(alias="_about")
    models: dict[str, HfModelConfig]


class ReferenceProbe(RecordModel):
    """A public reference probe (hwprobe.py, hostprobe.py): its own flat format, read by
    hwmodels.calibrate; only its torch version is common to every probe."""

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False,
                              use_attribute_docstrings=True)

    torch: str


_BY_NAME: tuple[tuple[str, type[RecordModel]], ...] = (
    ("bench-measured.json", BenchFile),  # bench.py run's own name for its file
    ("-fewer.json", FewerLayersFile),
    ("-comparison.json", ComparisonFile),
    ("comparison.json", ComparisonFile),
    ("-measured.json", PlanRunFile),
    ("measured.json", PlanRunFile),
    (".kernels.json", KernelProfile),
)
_BY_PREFIX: tuple[tuple[str, type[RecordModel]], ...] = (
    ("microbench-", OpRecordsFile),
    ("gemm-warm-cold-", OpRecordsFile),
    ("gemm-sweep-", OpRecordsFile),
    ("alloc-trace-", AllocTraceFile),
    ("peak-blocks-", PeakBlocksFile),
    ("instep-", OpRecordsFile),
    ("steps-", StepsFile),
    ("bench-", BenchFile),
    ("infer-bench-", InferBenchFile),
    ("infer-smoke-", InferSmokeFile),
    ("infer-diag-", InferDiagFile),
    ("cpu-attention-", CpuAttentionFile),
    ("hf-offload-diag-", HfOffloadDiagFile),
    ("kv-quant-check-", KvQuantCheckFile),
    ("arena-replay-", ArenaReplayFile),
    ("snapshots-", SnapshotsFile),
    ("kernels-h200-2026-11-28-probe8-", KernelProfile),
    ("hf_configs", HfConfigsFile),
    ("host-overhead-", HostOverheadFile),
    ("cpu-adam-", CpuAdamFile),
    ("nccl-sweep-", NcclSweepFile),
    ("mgpu-bench-", MgpuBenchFile),
    ("h200", ReferenceProbe),
)


def model_for(path: str | Path) -> type[RecordModel]:
    """The model of a measurement file, from its name (as the scripts name them)."""
    name = Path(path).name
    for suffix, model in _BY_NAME:
        if name.endswith(suffix):
            return model
    for prefix, model in _BY_PREFIX:
        if name.startswith(prefix):
            return model
    raise ValueError(f"{path}: no measurement model for this file name")


RecordT = TypeVar("RecordT", bound=RecordModel)


def load_record_file(path: str | Path, model: type[RecordT], *, field: str, what: str) -> RecordT:
    """The measurement file ``path`` read through the user-file reader and validated as
    ``model``; an unreadable or malformed file is one line naming ``field``, the path and what it
    should have been (``what``)."""
    try:
        return model.model_validate(read_user_json(path))
    except UserInputError as err:
        raise UserInputError(f"{field}: {err}") from None
    except ValidationError as err:
        raise UserInputError(f"{field}: {path}: not {what}: {validation_error_line(err)}") from None
