"""Typed measurement records: the provenance block every measurement file carries, and op records.

Models: the on-disk format of measurements, ``{"provenance": {...}, "records": [...]}``. One
`Provenance` (where, with what, when and how a file was measured) is shared by every record
kind; the op records here are the ones `kernels/microbench.py` writes (one per timed shape) and
the in-step kernel times `validate/instep.py` converts from a profiler table. The whole-step,
plan-run and bench records live in `validate/records.py` and reuse `Provenance`.
Assumes: pydantic v2. Files written before ``schema_version`` existed (all of 2026-11-28) lack the
field and read as version 1; writers add it. Sizes are bytes, times seconds, as in the code.
Ignores: the reference probes' own format (hwprobe.py, hostprobe.py), which `hwmodels.calibrate`
converts to records itself; calibration reads any records file as plain dicts so that it can
accept user-made files with ops it only reports as skipped.
Source: validate/measurements/h200/*.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1


class RecordModel(BaseModel):
    """Frozen, closed, documented: the base of every measurement model."""

    model_config = ConfigDict(
        frozen=True,
        allow_inf_nan=False,  # a measured time of inf or nan would pass every bound
        extra="forbid",
        use_attribute_docstrings=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class Provenance(RecordModel):
    """Where and how a measurement was taken: device, software versions, date, command, commit."""

    date_utc: str = Field(min_length=1)
    """ISO-8601 UTC time the run started, to the second."""
    command: str = Field(min_length=1)
    """The exact command that reproduces the file (``python3 ...``)."""
    device: str = Field(min_length=1)
    """Device name as the driver reports it (``NVIDIA H200``), or the CPU for smoke runs."""
    torch: str = Field(min_length=1)
    """``torch.__version__``."""
    argv: list[str] | None = None
    """The script's argv, the script path first."""
    git_commit: str | None = None
    """``git rev-parse HEAD`` of the checkout that ran (or ``TIERPLAN_GIT_COMMIT``)."""
    git_commit_note: str | None = None
    """Why git_commit is not the code that ran, where it is not (a copied tree)."""
    tree_commit: str | None = None
    """The commit whose tree was copied to the GPU machine, when that is not git_commit."""
    hostname: str | None = None
    python: str | None = None
    """``platform.python_version()``."""
    cuda: str | None = None
    """``torch.version.cuda``."""
    cudnn: int | None = None
    """``torch.backends.cudnn.version()``."""
    transformers: str | None = None
    """``transformers.__version__``, for whole-model step measurements."""
    device_type: Literal["cuda", "cpu"] | None = None
    """``cpu`` marks a ``--smoke`` run, whose times mean nothing."""
    device_total_memory_bytes: int | None = Field(None, gt=0)
    device_multiprocessors: int | None = Field(None, gt=0)
    device_l2_bytes: int | None = Field(None, gt=0)
    device_capability: str | None = None
    """Compute capability ``major.minor``."""
    driver: str | None = None
    """NVIDIA driver version (from nvidia-smi)."""
    nvidia_smi: str | None = None
    """nvidia-smi's one-line query: name, driver, memory, max clocks, power limit, pstate, clock."""
    l2_bytes_used_for_rotation: int | None = Field(None, gt=0)
    """L2 size the microbenchmark rotated its inputs over (see kernels/microbench.py)."""
    wall_s: float | None = Field(None, ge=0)
    """Wall time of the whole run so far."""
    section_errors: dict[str, str] | None = None
    """Microbenchmark sections that failed, with the first line of their error."""
    converted_by: str | None = None
    """The command that converted this file from another measurement file."""
    note: str | None = None
    plans_note: str | None = None
    """Where the plans that ran came from, when not from this commit's planners."""
    pytorch_cuda_alloc_conf: str | None = None
    """``PYTORCH_CUDA_ALLOC_CONF`` the process ran under (``expandable_segments:True`` is the
    plan executor's default); absent in files from before it was recorded (then unset, except
    where the command says ``--expandable-segments``)."""


class _OpRecord(RecordModel):
    """Fields every op record has: its time, and how many repeats the median was taken over."""

    time_s: float = Field(gt=0)
    """Median time of one call."""
    time_min_s: float | None = Field(None, gt=0)
    time_max_s: float | None = Field(None, gt=0)
    num_reps: int | None = Field(None, gt=0)
    """Timed repeats (after warm-up)."""
    status: str | None = None
    """``ok``, or why the shape did not run (then time_s is not a measurement)."""
    dtype: str | None = None
    case: str | None = None
    """In-step records: the plan run whose profile the time comes from."""
    source: Literal["in-step"] | None = None
    """``in-step``: summed from a profiled training step, not timed alone."""
    num_calls: int | None = Field(None, gt=0)
    """In-step records: calls of this shape per step (time_s is per call)."""


class GemmRecord(_OpRecord):
    """One ``x[m,k] @ W[k,n]`` shape."""

    op: Literal["gemm"]
    m: int = Field(gt=0)
    n: int = Field(gt=0)
    k: int = Field(gt=0)
    layer: str | None = None
    """The Llama linear whose shape this is (``qkv``, ``o``, ``gate_up``, ``down``, ``lm_head``)."""
    pass_: Literal["fwd", "bwd_input", "bwd_weight"] | None = Field(None, alias="pass")
    tokens: int | None = Field(None, gt=0)
    state: Literal["warm", "cold"] | None = None
    """gemm_warm_vs_cold.py: timed right after the same GEMM (warm) or after a pause (cold)."""
    tflops: float | None = Field(None, gt=0)
    smi_before: str | None = None
    """gemm_warm_vs_cold.py: nvidia-smi clock, power and temperature before the call."""
    family: Literal["square", "decode", "prefill", "probe"] | None = None
    """gemm_sweep.py: the shape family (cubes, decode's 1-64 rows, prefill chunks, the probe's)."""
    timing: Literal["queued", "isolated"] | None = None
    """gemm_sweep.py: ``queued`` (repeats enqueued ahead of the GPU: the kernel's time) or
    ``isolated`` (one call between events after a synchronize: the reference probe's method)."""
    split: Literal["fit", "holdout"] | None = None
    """gemm_sweep.py: the half of the sweep a fit may use, or the half it is checked on."""


class SdpaRecord(_OpRecord):
    """``scaled_dot_product_attention`` at one shape, backend and pass."""

    op: Literal["sdpa"]
    pass_: Literal["fwd", "bwd", "fwdbwd"] = Field(alias="pass")
    batch: int = Field(gt=0)
    seq_len: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    causal: bool
    backend: str
    """The forced backend (``flash``, ``cudnn``, ``masked``), or ``default`` (PyTorch's pick)."""
    default_backend: str | None = None
    """The backend PyTorch picked, where backend is ``default``."""
    kv_len: int | None = Field(None, gt=0)
    mask: str | None = None
    window: int | None = Field(None, gt=0)
    """Sliding-window width in tokens, where mask is ``sliding_window``."""


class MemoryOpRecord(_OpRecord):
    """A bandwidth-bound op with our count of the minimal HBM bytes it must move."""

    op: Literal["rmsnorm", "silu_mul", "rotary", "cross_entropy", "embedding"]
    pass_: Literal["fwd", "fwdbwd"] = Field(alias="pass")
    hbm_bytes: int = Field(gt=0)
    tokens: int = Field(gt=0)
    impl: str
    """Which implementation (``hf_eager``, ``torch_rms_norm``, ``eager``, ...)."""
    hidden: int | None = Field(None, gt=0)
    intermediate: int | None = Field(None, gt=0)
    vocab: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    head_dim: int | None = Field(None, gt=0)
    width: int | None = Field(None, gt=0)
    """In-step records: the last dimension of the tensor."""


class CopyRecord(_OpRecord):
    """A host<->device copy; ``bidir`` runs both directions at once."""

    op: Literal["copy"]
    direction: Literal["h2d", "d2h", "bidir"]
    pinned: bool
    bytes: int = Field(gt=0)
    """Bytes moved (bidir: both directions together)."""
    bytes_each_way: int | None = Field(None, gt=0)


class HbmCopyRecord(_OpRecord):
    """A device-to-device copy of ``bytes``; it reads and writes them (``hbm_bytes``)."""

    op: Literal["hbm_copy"]
    bytes: int = Field(gt=0)
    hbm_bytes: int = Field(gt=0)


class LaunchRecord(_OpRecord):
    """Kernel launch overhead, per kernel, measured one way (``mode``)."""

    op: Literal["launch_overhead"]
    mode: str


OpRecord = Annotated[
    GemmRecord | SdpaRecord | MemoryOpRecord | CopyRecord | HbmCopyRecord | LaunchRecord,
    Field(discriminator="op"),
]


class RecordFile(RecordModel):
    """A measurement file: its provenance and a schema version (absent in files before it)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Format version; files that lack it are version 1."""
    provenance: Provenance

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object: what was set, and the schema version first."""
        data = self.model_dump(mode="json", exclude_unset=True)
        return {"schema_version": self.schema_version, **data}

    def to_json(self, *, sort_keys: bool = False) -> str:
        """The file's text, one space of indent (as every committed file is written)."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=sort_keys) + "\n"


def as_dicts(records: Sequence[RecordModel]) -> list[dict[str, Any]]:
    """Records as the plain dicts they were written as, for the readers that work on dicts."""
    return [r.model_dump(mode="json", exclude_unset=True) for r in records]


class OpRecordsFile(RecordFile):
    """Op timings: kernels/microbench.py, validate/instep.py, validate/scripts/gemm_warm_vs_cold.py."""

    records: list[OpRecord]
