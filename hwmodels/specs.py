"""Hardware specs: GPUs, memory tiers, storage, links, nodes with topology, clusters, profiles.

Models: the datasheet description of every device a byte can live on (GPU HBM and SRAM, host
DRAM, CXL memory, NVMe, computational storage) and every link it can move over (PCIe, NVLink,
NVLink-C2C, network, CXL), a node as devices plus an explicit topology graph (which device sits
behind which link or switch, so a simulator can see who shares what), and an `AchievedProfile`
of rates measured on a real machine and fitted by `hwmodels.calibrate`.
Assumes: every rate in a spec is the datasheet (theoretical) figure; MFU is always computed
against the datasheet peak, and achieved rates live only in a profile. One time model is used
for every fitted op class and every link (the alpha-beta form):
``time_s = latency_s * num_latency_units + work / rate``, so the achieved rate of a transfer or
kernel of size ``w`` is ``w / time_s`` and half of the asymptotic rate is reached at
``w = latency_s * rate`` (`LinkSpec.half_bandwidth_bytes`).
Ignores: clocks and power limits, MIG partitions, ECC overhead, NUMA distance inside a socket.
Source: vendor datasheets and our measurement files; every number in a preset names its
source in the ``sources`` mapping of the model that holds it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from hwmodels.limits import MAX_GPUS, MAX_HW_COUNT, MAX_RATE, MAX_SECONDS
from hwmodels.op_classes import FLOP_CLASSES as FLOP_CLASSES
from hwmodels.units import parse_bytes, parse_rate, parse_seconds

SCHEMA_VERSION: Final = 1

DType = Literal["fp32", "tf32", "fp16", "bf16", "fp8"]
LinkKind = Literal["pcie", "nvlink", "c2c", "network", "cxl"]
OpClass = Literal[
    "gemm",  # dense matmul, compute-bound (x = FLOPs)
    "attention_fwd",  # fused (flash) attention forward (x = FLOPs)
    "attention_bwd",  # fused attention backward alone (x = FLOPs)
    "memory",  # bandwidth-bound elementwise / norm kernels (x = HBM bytes read + written)
    "hbm_copy",  # device-to-device copy in one GPU (x = bytes read + written)
    "copy_h2d",  # pinned host -> GPU copy (x = bytes)
    "copy_d2h",  # GPU -> pinned host copy (x = bytes)
    "copy_bidir",  # H2D and D2H at once (x = bytes of both directions together)
    "p2p_copy",  # GPU -> GPU copy over NVLink (x = bytes)
    "p2p_bidir",  # GPU <-> GPU both ways at once (x = bytes of both directions together)
    "all_reduce",  # NCCL collectives (x = bus bytes, latency units = algorithm steps)
    "all_gather",
    "all_to_all",
]
OP_CLASSES: tuple[str, ...] = OpClass.__args__  # type: ignore[attr-defined]


def alpha_beta_time_s(
    *, latency_s: float, work: float, rate: float, num_latency_units: float = 1.0
) -> float:
    """The one time model of tierplan's fits and links: ``latency_s * units + work / rate``.

    ``work`` is FLOPs or bytes and ``rate`` the matching achieved rate per second.
    """
    return latency_s * num_latency_units + work / rate


def _as_bytes(value: Any, info: ValidationInfo) -> Any:
    return parse_bytes(value, field=info.field_name or "size") if value is not None else None


def _as_byte_rate(value: Any, info: ValidationInfo) -> Any:
    return parse_rate(value, field=info.field_name or "rate") if value is not None else None


def _as_flop_rate(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):  # peak_flops_per_s: {dtype: rate}
        return {
            k: parse_rate(v, field=f"{info.field_name}.{k}", kind="flops") for k, v in value.items()
        }
    return parse_rate(value, field=info.field_name or "rate", kind="flops")


def _as_seconds(value: Any, info: ValidationInfo) -> Any:
    return parse_seconds(value, field=info.field_name or "time") if value is not None else None


Bytes = Annotated[int, BeforeValidator(_as_bytes)]
ByteRate = Annotated[float, BeforeValidator(_as_byte_rate), Field(le=MAX_RATE)]
FlopRate = Annotated[float, BeforeValidator(_as_flop_rate)]
Seconds = Annotated[float, BeforeValidator(_as_seconds), Field(le=MAX_SECONDS)]


class _Spec(BaseModel):
    """Frozen, strict base: unknown fields are errors, attribute docstrings become descriptions."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False,
                              use_attribute_docstrings=True)


class _Sourced(_Spec):
    """A spec whose numbers each cite where they come from."""

    sources: dict[str, str] = Field(default_factory=dict)
    """Field name (or ``field.key`` for mappings) -> datasheet, paper or measurement file."""

    @model_validator(mode="after")
    def _sources_name_fields(self) -> _Sourced:
        for key in self.sources:
            if key.split(".")[0] not in type(self).model_fields:
                raise ValueError(f"sources: {key!r} is not a field of {type(self).__name__}")
        return self


class GpuSpec(_Sourced):
    """One GPU as its datasheet describes it (dense peaks, no sparsity)."""

    device: Literal["gpu"] = "gpu"
    """Discriminator for preset files."""
    name: str
    """Marketing name and form factor, e.g. ``H200-SXM``."""
    hbm_capacity_bytes: Bytes = Field(gt=0)
    """HBM capacity as the driver reports it (nvidia-smi memory.total), bytes; the CUDA context
    and driver keep roughly 0.5 GiB of it (torch's total_memory is that much smaller)."""
    hbm_bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Datasheet HBM bandwidth, bytes/s (decimal, as quoted)."""
    num_sms: int = Field(gt=0, le=MAX_HW_COUNT, strict=True)
    """Streaming multiprocessors (NVIDIA) or compute units (AMD)."""
    sram_per_sm_bytes: Bytes = Field(gt=0)
    """Shared memory (LDS on AMD) usable per SM, bytes: the FlashAttention tile budget."""
    l2_bytes: Bytes = Field(gt=0)
    """Last-level on-chip cache (L2), bytes."""
    register_file_per_sm_bytes: Bytes = Field(gt=0)
    """Register file per SM, bytes."""
    peak_flops_per_s: dict[DType, FlopRate]
    """Dense peak per dtype (tensor cores where they apply), FLOP/s. Must include bf16."""
    kernel_launch_overhead_s: Seconds = Field(ge=0)
    """Fixed cost of one kernel launch as seen from the host, seconds."""

    @model_validator(mode="after")
    def _peaks(self) -> GpuSpec:
        if "bf16" not in self.peak_flops_per_s:
            raise ValueError("peak_flops_per_s: must include bf16")
        for dtype, rate in self.peak_flops_per_s.items():
            if rate <= 0:
                raise ValueError(f"peak_flops_per_s.{dtype}: must be > 0")
        return self


class HostMemorySpec(_Sourced):
    """Host DRAM of one node (all sockets together)."""

    device: Literal["host_dram"] = "host_dram"
    """Discriminator for preset files."""
    name: str
    """Preset name, e.g. ``ddr5-4800-2s-2tb``."""
    capacity_bytes: Bytes = Field(gt=0)
    """Installed DRAM of the node, bytes."""
    bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Aggregate DRAM bandwidth of all sockets, bytes/s."""
    num_sockets: int = Field(gt=0, le=MAX_HW_COUNT, strict=True)
    """CPU sockets; topology names them ``cpu0``, ``cpu1``, ..."""
    latency_s: Seconds = Field(gt=0)
    """Idle load-to-use latency of local DRAM, seconds."""
    cpu_adamw_rate_bytes_per_s: ByteRate | None = Field(default=None, gt=0)
    """Rate of an AdamW step on the host CPUs (all cores), in bytes of optimizer traffic per
    second (parameters, gradients, moments and master weights read and written, as the
    templates count a GPU step's); None: the DRAM bandwidth (the step is memory bound).
    Refit from a measurement with `hwmodels.calibrate.fit_cpu_adamw_rate`. Omitted from
    dumps when None, so files and hashes of nodes without it are unchanged."""

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("cpu_adamw_rate_bytes_per_s") is None:
            data.pop("cpu_adamw_rate_bytes_per_s", None)
        return data

    @property
    def cpu_adamw_bytes_per_s(self) -> float:
        """The CPU AdamW rate the replay uses (`cpu_adamw_rate_bytes_per_s`, else DRAM's)."""
        rate = self.cpu_adamw_rate_bytes_per_s
        return self.bandwidth_bytes_per_s if rate is None else rate


class CxlMemorySpec(_Sourced):
    """A CXL Type-3 memory expander card."""

    device: Literal["cxl_memory"] = "cxl_memory"
    """Discriminator for preset files."""
    name: str
    """Preset name."""
    capacity_bytes: Bytes = Field(gt=0)
    """Memory on the card, bytes."""
    read_bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Sustained read bandwidth of the card, bytes/s."""
    write_bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Sustained write bandwidth of the card, bytes/s."""
    latency_s: Seconds = Field(gt=0)
    """Idle load latency from the host, seconds (typically 2-5x local DRAM)."""
    num_sharing_gpus: int = Field(default=1, gt=0, le=MAX_GPUS, strict=True)
    """GPUs that stage through this card at once; they split its bandwidth."""


class NvmeSpec(_Sourced):
    """A datacenter NVMe SSD."""

    device: Literal["nvme"] = "nvme"
    """Discriminator for preset files."""
    name: str
    """Preset name."""
    capacity_bytes: Bytes = Field(gt=0)
    """User capacity, bytes (decimal TB as sold)."""
    read_bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Sequential read, bytes/s."""
    write_bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Sequential write, bytes/s."""
    latency_s: Seconds = Field(gt=0)
    """Random 4 KiB read latency at queue depth 1, seconds."""
    queue_depth: int = Field(gt=0, le=MAX_HW_COUNT, strict=True)
    """Queue depth at which the datasheet bandwidth is reached."""


class LinkSpec(_Sourced):
    """A point-to-point link or a network port (per GPU).

    Time of one transfer of ``n`` bytes alone on the link: ``latency_s + n / rate`` where
    ``rate`` is the achieved per-direction bandwidth; both directions at once share
    ``bidirectional_bandwidth_bytes_per_s``. See `hwmodels.transfer`.
    """

    device: Literal["link"] = "link"
    """Discriminator for preset files."""
    name: str
    """Preset name, e.g. ``pcie-gen5-x16``."""
    kind: LinkKind
    """Link family."""
    generation: str | None = None
    """Generation where it applies (``"5"`` for PCIe 5.0, ``"4"`` for NVLink 4)."""
    num_lanes: int | None = Field(default=None, gt=0, le=MAX_HW_COUNT, strict=True)
    """PCIe lanes, NVLink links or network ports bundled in this link."""
    per_direction_bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Datasheet bandwidth of one direction, bytes/s."""
    bidirectional_bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Ceiling of both directions running at once (sum of the two), bytes/s."""
    latency_s: Seconds = Field(ge=0)
    """Fixed cost of one transfer (DMA setup, driver and wire latency), seconds."""

    @model_validator(mode="after")
    def _bidir_bounds(self) -> LinkSpec:
        one, both = (
            self.per_direction_bandwidth_bytes_per_s,
            self.bidirectional_bandwidth_bytes_per_s,
        )
        if not one <= both * (1 + 1e-4) or both > 2 * one * (1 + 1e-4):
            raise ValueError(
                "bidirectional_bandwidth_bytes_per_s: must lie between one and two times "
                "per_direction_bandwidth_bytes_per_s"
            )
        return self

    @property
    def half_bandwidth_bytes(self) -> float:
        """Transfer size that reaches half of the per-direction datasheet bandwidth."""
        return self.latency_s * self.per_direction_bandwidth_bytes_per_s


class CsdSpec(_Sourced):
    """A computational storage drive: flash plus compute inside the drive."""

    device: Literal["csd"] = "csd"
    """Discriminator for preset files."""
    name: str
    """Preset name."""
    capacity_bytes: Bytes = Field(gt=0)
    """Flash capacity, bytes."""
    internal_flash_bandwidth_bytes_per_s: ByteRate = Field(gt=0)
    """Bandwidth from flash to the in-drive compute, bytes/s (above the host link)."""
    compute_flops_per_s: FlopRate = Field(gt=0)
    """Peak of the in-drive compute engine (FPGA/ASIC) for fp16 dot products, FLOP/s."""
    dram_bytes: Bytes = Field(ge=0)
    """DRAM on the drive usable by the compute engine, bytes."""
    host_link: LinkSpec
    """The drive's own host interface."""


class OpClassFit(_Spec):
    """Fitted alpha-beta parameters of one op class on one machine.

    ``time_s = latency_s * num_latency_units + flops / flops_per_s`` (compute classes) or
    ``... + num_bytes / bandwidth_bytes_per_s`` (byte classes).
    """

    flops_per_s: float | None = Field(default=None, gt=0)
    """Achieved asymptotic compute rate, FLOP/s (compute classes)."""
    bandwidth_bytes_per_s: float | None = Field(default=None, gt=0)
    """Achieved asymptotic byte rate, bytes/s (memory, copy and collective classes)."""
    latency_s: float = Field(ge=0)
    """Fixed time per call (per algorithm step for collectives), seconds; sets the size curve."""
    dtype: DType | None = None
    """Dtype of the measured kernels (compute classes); other dtypes scale by datasheet peaks."""
    num_points: int = Field(gt=0)
    """Measurements the fit used."""
    max_abs_rel_error: float = Field(ge=0)
    """Worst |predicted/measured - 1| over those measurements."""
    rate_curve: tuple[tuple[float, float], ...] | None = None
    """(work, achieved rate = work / time) at the measured sizes, work increasing, for classes
    whose rate changes with size beyond the latency ramp (attention: cuDNN's causal forward runs
    at 600-660 TFLOP/s at 8K-64K tokens and 517 at 256K on the H200). From the first point on,
    the rate is interpolated linearly in log(work) and held at the last point's beyond it;
    below the first point the alpha-beta form applies."""

    @model_validator(mode="after")
    def _one_rate(self) -> OpClassFit:
        if (self.flops_per_s is None) == (self.bandwidth_bytes_per_s is None):
            raise ValueError("exactly one of flops_per_s and bandwidth_bytes_per_s must be set")
        curve = self.rate_curve
        if curve is not None:
            if len(curve) < 2 or any(w <= 0 or r <= 0 for w, r in curve):
                raise ValueError("rate_curve: at least two (work, rate) points, all positive")
            if any(b[0] <= a[0] for a, b in zip(curve, curve[1:], strict=False)):
                raise ValueError("rate_curve: work must increase")
        return self

    def time_s(self, work: float, *, num_latency_units: float = 1.0) -> float:
        """Predicted time of ``work`` FLOPs (or bytes) for this class: the rate curve where it
        covers ``work``, else the one alpha-beta form."""
        curve = self.rate_curve
        if curve is not None and work >= curve[0][0]:
            return work / curve_rate(curve, work)
        rate = self.flops_per_s if self.flops_per_s is not None else self.bandwidth_bytes_per_s
        assert rate is not None
        return alpha_beta_time_s(
            latency_s=self.latency_s, work=work, rate=rate, num_latency_units=num_latency_units
        )

    def scaled(self, factor: float) -> OpClassFit:
        """The same fit with every rate times ``factor`` (another dtype's datasheet peak)."""
        update: dict[str, Any] = {}
        if self.flops_per_s is not None:
            update["flops_per_s"] = self.flops_per_s * factor
        if self.bandwidth_bytes_per_s is not None:
            update["bandwidth_bytes_per_s"] = self.bandwidth_bytes_per_s * factor
        if self.rate_curve is not None:
            update["rate_curve"] = tuple((w, r * factor) for w, r in self.rate_curve)
        return self.model_copy(update=update)


def curve_rate(curve: tuple[tuple[float, float], ...], work: float) -> float:
    """Rate of a ``rate_curve`` at ``work``: log-linear between points, flat past the ends."""
    if work <= curve[0][0]:
        return curve[0][1]
    for (w0, r0), (w1, r1) in zip(curve, curve[1:], strict=False):
        if work <= w1:
            f = math.log(work / w0) / math.log(w1 / w0)
            return r0 + f * (r1 - r0)
    return curve[-1][1]


class AchievedProfile(_Spec):
    """Rates achieved on a real machine, fitted from measurement files by `hwmodels.calibrate`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this file format."""
    name: str
    """Human name, e.g. ``H200 (measured)``."""
    gpu: str
    """Name of the `GpuSpec` it was measured on; a node may only use it with that GPU."""
    fits: dict[str, OpClassFit]
    """Fitted parameters per op class, keyed ``class`` or ``class.variant`` (e.g.
    ``attention_fwd.flash``, ``memory.rmsnorm.hf_eager.fwd``); lookups of a variant fall back
    to shorter keys, then to documented defaults."""

    @model_validator(mode="after")
    def _known_classes(self) -> AchievedProfile:
        for key in self.fits:
            if key.split(".")[0] not in OP_CLASSES:
                raise ValueError(
                    f"fits.{key}: unknown op class (use one of {', '.join(OP_CLASSES)})"
                )
        return self

    def find_fit(self, op_class: str) -> OpClassFit | None:
        """The fit of ``op_class`` or of its nearest coarser key (``a.b.c`` -> ``a.b`` -> ``a``)."""
        parts = op_class.split(".")
        for n in range(len(parts), 0, -1):
            fit = self.fits.get(".".join(parts[:n]))
            if fit is not None:
                return fit
        return None

    measurements: list[str]
    """Repository paths of the measurement files the fit used (the source of every number)."""


class Connection(_Spec):
    """One edge of a node's topology: device ``a`` reaches device ``b`` over ``link``."""

    a: str
    """Device id: ``gpu<i>``, ``cpu<j>``, ``cxl<k>``, ``nvme<k>``, ``csd<k>`` or a switch name."""
    b: str
    """Device id at the other end."""
    link: str
    """Key into `NodeSpec.links`."""


class NodeSpec(_Sourced):
    """One server: GPUs, host memory, optional CXL/NVMe/CSD devices, links and topology."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this file format."""
    name: str
    """Preset name, e.g. ``8xH200``."""
    description: str = ""
    """One line for humans."""
    num_gpus: int = Field(gt=0, le=MAX_GPUS, strict=True)
    """GPUs in the node; topology names them ``gpu0`` ... ``gpu<num_gpus-1>``."""
    gpu: GpuSpec
    """The GPU model (all GPUs of a node are the same)."""
    host_memory: HostMemorySpec
    """Host DRAM of the node."""
    cxl: list[CxlMemorySpec] = Field(default_factory=list)
    """CXL memory cards, ids ``cxl0``, ``cxl1``, ..."""
    nvme: list[NvmeSpec] = Field(default_factory=list)
    """NVMe drives, ids ``nvme0``, ..."""
    csd: list[CsdSpec] = Field(default_factory=list)
    """Computational storage drives, ids ``csd0``, ..."""
    switches: list[str] = Field(default_factory=list)
    """Ids of PCIe switches and NVSwitch fabrics that appear in the topology."""
    links: dict[str, LinkSpec]
    """Link types used in this node, by local key."""
    topology: list[Connection]
    """Edges of the device graph. Two transfers contend when their paths share an edge."""
    profile: AchievedProfile | None = None
    """Calibrated achieved rates for this node's GPU and host path, if measured."""

    def device_ids(self) -> list[str]:
        """All device ids of the node, in a fixed order."""
        ids = [f"gpu{i}" for i in range(self.num_gpus)]
        ids += [f"cpu{j}" for j in range(self.host_memory.num_sockets)]
        ids += [f"cxl{k}" for k in range(len(self.cxl))]
        ids += [f"nvme{k}" for k in range(len(self.nvme))]
        ids += [f"csd{k}" for k in range(len(self.csd))]
        return ids + list(self.switches)

    @model_validator(mode="after")
    def _check_topology(self) -> NodeSpec:
        ids = set(self.device_ids())
        if len(ids) != len(self.device_ids()):
            raise ValueError("switches: a switch name repeats or collides with a device id")
        for i, edge in enumerate(self.topology):
            for end in (edge.a, edge.b):
                if end not in ids:
                    raise ValueError(f"topology.{i}: unknown device {end!r} (known: {sorted(ids)})")
            if edge.link not in self.links:
                raise ValueError(f"topology.{i}.link: {edge.link!r} is not a key of links")
        hosts = {f"cpu{j}" for j in range(self.host_memory.num_sockets)}
        for dev in self.device_ids():
            if dev in hosts or dev in self.switches:
                continue
            if not any(self.path(dev, h) for h in hosts):
                raise ValueError(f"topology: {dev} has no path to a CPU socket")
        if self.profile is not None and self.profile.gpu != self.gpu.name:
            raise ValueError(
                f"profile: measured on {self.profile.gpu!r}, but this node has {self.gpu.name!r}"
            )
        return self

    def path(self, src: str, dst: str) -> tuple[Connection, ...]:
        """The widest path from ``src`` to ``dst`` (largest bottleneck per-direction bandwidth,
        then fewest edges, then first-listed edges); empty when there is none.

        Only switches and CPU sockets forward traffic; a GPU or a drive is an end point.
        """
        if src == dst:
            return ()
        relays = set(self.switches) | {f"cpu{j}" for j in range(self.host_memory.num_sockets)}
        best: tuple[float, int] | None = None
        best_path: tuple[Connection, ...] = ()

        def walk(here: str, seen: set[str], edges: list[Connection]) -> None:
            nonlocal best, best_path
            for edge in self.topology:
                if here not in (edge.a, edge.b):
                    continue
                there = edge.b if here == edge.a else edge.a
                if there in seen:
                    continue
                route = [*edges, edge]
                if there == dst:
                    width = min(
                        self.links[e.link].per_direction_bandwidth_bytes_per_s for e in route
                    )
                    score = (-width, len(route))
                    if best is None or score < best:
                        best, best_path = score, tuple(route)
                elif there in relays:
                    walk(there, seen | {there}, route)

        walk(src, {src}, [])
        return best_path

    def host_path(self, gpu_index: int = 0) -> tuple[Connection, ...]:
        """Edges from ``gpu<gpu_index>`` to its nearest CPU socket."""
        if not 0 <= gpu_index < self.num_gpus:
            raise ValueError(f"gpu_index {gpu_index} outside 0..{self.num_gpus - 1}")
        paths = [
            self.path(f"gpu{gpu_index}", f"cpu{j}") for j in range(self.host_memory.num_sockets)
        ]
        return min((p for p in paths if p), key=len)

    def host_link(self, gpu_index: int = 0) -> LinkSpec:
        """The narrowest link on a GPU's path to host memory (its bottleneck when alone)."""
        links = [self.links[e.link] for e in self.host_path(gpu_index)]
        return min(links, key=lambda lk: lk.per_direction_bandwidth_bytes_per_s)

    def num_gpus_sharing(self, edge: Connection) -> int:
        """How many GPUs' host paths cross ``edge``: they split its bandwidth when all copy."""
        return sum(edge in self.host_path(i) for i in range(self.num_gpus))

    def gpu_peer_link(self) -> LinkSpec | None:
        """The narrowest link between gpu0 and gpu1 (NVLink/NVSwitch or PCIe), if >1 GPU."""
        if self.num_gpus < 2:
            return None
        links = [self.links[e.link] for e in self.path("gpu0", "gpu1")]
        return min(links, key=lambda lk: lk.per_direction_bandwidth_bytes_per_s)


class ClusterSpec(_Spec):
    """``num_nodes`` identical nodes joined by a network (one port of ``network`` per GPU)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this file format."""
    name: str
    """Human name, e.g. ``4x 8xH200 (NDR400)``."""
    num_nodes: int = Field(gt=0)
    """Nodes in the cluster."""
    node: NodeSpec
    """The node every member is."""
    network: LinkSpec
    """Scale-out port of one GPU (rail-optimized: one NIC per GPU)."""

    @property
    def num_gpus(self) -> int:
        """GPUs in the whole cluster."""
        return self.num_nodes * self.node.num_gpus


def missing_sources(spec: BaseModel, prefix: str = "") -> list[str]:
    """Numeric fields of ``spec`` (recursively) that have no entry in their model's ``sources``.

    Counts that only name topology (``num_gpus`` is checked; schema versions are not numbers
    of hardware) are included; fitted profile numbers are sourced by ``measurements``.
    """
    out: list[str] = []
    if isinstance(spec, AchievedProfile):
        return [] if spec.measurements else [f"{prefix}measurements"]
    sources = getattr(spec, "sources", {})
    for name in type(spec).model_fields:
        if name == "schema_version":
            continue
        value = getattr(spec, name)
        if isinstance(value, BaseModel):
            out += missing_sources(value, f"{prefix}{name}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    out += missing_sources(item, f"{prefix}{name}.{i}.")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, BaseModel):
                    out += missing_sources(item, f"{prefix}{name}.{key}.")
                elif (
                    isinstance(item, int | float)
                    and name not in sources
                    and f"{name}.{key}" not in sources
                ):
                    out.append(f"{prefix}{name}.{key}")
        elif isinstance(value, int | float) and not isinstance(value, bool) and name not in sources:
            out.append(f"{prefix}{name}")
    return out
