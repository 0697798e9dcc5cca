"""The result type of every per-operator cost function, and its time on a node.

Models: one GPU kernel as (FLOPs, HBM bytes read, HBM bytes written, op class, dtype). A fused
sequence of kernels is their sum (`combine`). Time comes from the roofline in
``hwmodels.compute.compute_time_s``; this module only hands it the numbers, so the roofline and its
calibrated efficiencies live in one place.
Assumes: HBM bytes are the bytes a kernel must move between HBM and the SMs (each tensor counted
once per pass the kernel makes over it); FLOPs count multiply and add separately (a multiply-add is
2 FLOPs), as `torch.utils.flop_counter` does for matmuls.
Ignores: L2 cache hits across kernels, kernel-launch queuing (the roofline adds a per-launch
overhead), and anything not on the GPU.
Source: roofline model (Williams, Waterman, Patterson, CACM 2009).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from hwmodels.op_classes import FLOP_CLASSES, KERNEL_CLASSES
from hwmodels.units import UserInputError

if TYPE_CHECKING:  # pragma: no cover
    from hwmodels.specs import NodeSpec

_ROOFLINE_OP_CLASS = {"copy": "hbm_copy"}
"""Our op class -> the class name of hwmodels.compute where they differ (device-to-device copy)."""

OP_CLASSES: tuple[str, ...] = tuple(
    {ours: roofline for roofline, ours in _ROOFLINE_OP_CLASS.items()}.get(c, c) for c in KERNEL_CLASSES
)
"""Op classes the roofline knows efficiencies for: `hwmodels.op_classes.KERNEL_CLASSES` with
"copy" (device-to-device) for the roofline's "hbm_copy"."""

MATMUL_OP_CLASSES: frozenset[str] = frozenset(FLOP_CLASSES)
"""Op classes whose FLOPs are matmul FLOPs: what FlopCounterMode and MFU conventions count."""

DTYPE_BITS: dict[str, int] = {
    "fp64": 64,
    "fp32": 32,
    "tf32": 32,  # stored as fp32
    "bf16": 16,
    "fp16": 16,
    "fp8": 8,
    "fp8_e4m3": 8,
    "fp8_e5m2": 8,
    "int64": 64,
    "int32": 32,
    "int8": 8,
    "int4": 4,
}
"""Storage bits per element of the dtypes tierplan knows."""


def dtype_bits(dtype: str, *, field: str = "dtype") -> int:
    """Storage bits per element of ``dtype``; unknown names raise UserInputError naming ``field``."""
    try:
        return DTYPE_BITS[dtype]
    except KeyError:
        known = ", ".join(DTYPE_BITS)
        raise UserInputError(f"{field}: unknown dtype {dtype!r} (known: {known})") from None


def tensor_bytes(num_elements: int, dtype: str, *, field: str = "dtype") -> int:
    """Bytes of ``num_elements`` packed elements of ``dtype`` (int4 packs two per byte)."""
    return math.ceil(num_elements * dtype_bits(dtype, field=field) / 8)


def require_positive(field: str, value: int) -> int:
    """Check a shape argument: a positive int (bool rejected), else UserInputError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(f"{field}: must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class KernelCost:
    """Work of one GPU kernel (or a fused sequence of them)."""

    name: str
    """Kernel name, e.g. ``"attention_fwd"`` or ``"linear_fwd"``."""
    op_class: str
    """One of OP_CLASSES; selects the roofline efficiencies."""
    flops: float
    """Floating-point operations actually executed (multiply-add = 2)."""
    hbm_read_bytes: int
    """Bytes read from HBM."""
    hbm_write_bytes: int
    """Bytes written to HBM."""
    dtype: str
    """Compute dtype (selects the peak FLOP rate): "bf16", "fp16", "fp32", "fp8", ..."""

    def __post_init__(self) -> None:
        if self.op_class not in OP_CLASSES:
            raise ValueError(f"op_class: {self.op_class!r} is not one of {OP_CLASSES}")
        if self.flops < 0 or self.hbm_read_bytes < 0 or self.hbm_write_bytes < 0:
            raise ValueError(f"{self.name}: FLOPs and bytes must be non-negative")
        dtype_bits(self.dtype)

    @property
    def hbm_bytes(self) -> int:
        """Total HBM traffic (read + write)."""
        return self.hbm_read_bytes + self.hbm_write_bytes

    @property
    def arithmetic_intensity_flops_per_byte(self) -> float:
        """FLOPs per HBM byte (inf when the kernel moves no bytes)."""
        return self.flops / self.hbm_bytes if self.hbm_bytes else math.inf

    def __add__(self, other: KernelCost) -> KernelCost:
        if not isinstance(other, KernelCost):
            return NotImplemented
        return combine((self, other), name=f"{self.name}+{other.name}")


def combine(costs: Iterable[KernelCost], name: str) -> KernelCost:
    """Sum a sequence of kernels into one fused cost named ``name``.

    FLOPs and bytes add. The op class and dtype are those of the kernel with the most FLOPs (the
    first one on a tie), because that kernel sets the compute roofline of the fused sequence.
    """
    items = list(costs)
    if not items:
        raise ValueError("combine: needs at least one KernelCost")
    lead = max(items, key=lambda c: c.flops)  # max() keeps the first maximal item
    return KernelCost(
        name=name,
        op_class=lead.op_class,
        flops=float(sum(c.flops for c in items)),
        hbm_read_bytes=sum(c.hbm_read_bytes for c in items),
        hbm_write_bytes=sum(c.hbm_write_bytes for c in items),
        dtype=lead.dtype,
    )


class FwdBwd(NamedTuple):
    """Forward and backward kernels of a layer that is one kernel each way."""

    fwd: KernelCost
    bwd: KernelCost


_ROOFLINE_DTYPE = {"fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}
"""Storage dtypes -> the dtype whose datasheet peak applies."""


def kernel_time_s(cost: KernelCost, node: NodeSpec) -> float:
    """Predicted run time of ``cost`` on one GPU of ``node`` (roofline + launch overhead)."""
    from hwmodels.compute import compute_time_s

    return compute_time_s(
        flops=cost.flops,
        hbm_bytes=cost.hbm_bytes,
        op_class=_ROOFLINE_OP_CLASS.get(cost.op_class, cost.op_class),
        dtype=_ROOFLINE_DTYPE.get(cost.dtype, cost.dtype),
        node=node,
    )


class KernelTiming(NamedTuple):
    """A kernel's predicted time and which roofline side bounds it."""

    time_s: float
    """Predicted time (roofline + launch overhead)."""
    compute_s: float
    """Time of the FLOPs alone (HBM traffic set to zero), launch overhead included."""
    memory_s: float
    """Time of the HBM traffic alone (FLOPs set to zero), launch overhead included."""
    bound: str
    """"compute" or "memory": the side that sets ``time_s``."""


def kernel_timing(cost: KernelCost, node: NodeSpec) -> KernelTiming:
    """Time of ``cost`` plus its bound, from the same roofline as `kernel_time_s`.

    The two sides are found by asking the roofline for the kernel with only its FLOPs and with only
    its bytes, so the efficiencies and overheads stay those of ``hwmodels.compute``.
    """
    from dataclasses import replace

    compute_s = kernel_time_s(replace(cost, hbm_read_bytes=0, hbm_write_bytes=0), node)
    memory_s = kernel_time_s(replace(cost, flops=0.0), node)
    bound = "compute" if compute_s >= memory_s else "memory"
    return KernelTiming(kernel_time_s(cost, node), compute_s, memory_s, bound)
