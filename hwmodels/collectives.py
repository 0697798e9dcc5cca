"""Cost of collective communication among ``n`` GPUs (alpha-beta model, NCCL conventions).

Models: ``time_s = num_steps * latency_s + bus_factor * num_bytes / bus_bandwidth_bytes_per_s``.
``num_bytes`` is the per-GPU buffer the caller holds: the all-reduce buffer, the all-gather
OUTPUT (= reduce-scatter input), the all-to-all send buffer, the point-to-point message.
Bus factors are those of nccl-tests' "busbw": all_reduce 2(n-1)/n, all_gather and
reduce_scatter (n-1)/n, all_to_all (n-1)/n, send_recv 1. Steps: ring all_reduce 2(n-1),
ring all_gather / reduce_scatter (n-1), pairwise all_to_all (n-1), tree all_reduce
2*ceil(log2 n), send_recv 1.
Assumes: every GPU drives one port of ``link`` at its achieved per-direction rate (NVSwitch or a
rail-optimized network), so bus bandwidth does not depend on ``n``; a calibrated profile
(fits ``all_reduce``, ``all_gather``, ``all_to_all`` in bus bytes) replaces the link defaults;
reduce_scatter uses the all_gather fit (the same ring traffic in reverse).
Ignores: NCCL protocol switches (LL/LL128/Simple) beyond what the fitted latency absorbs,
hierarchical (intra+inter node) algorithms, SHARP/NVLS in-switch reduction, congestion.
Source: NCCL tests PERFORMANCE.md (bus bandwidth definitions); fitted and checked against
validate/measurements/reference/h200x2-p2p-probe-2026-11-28.json. Residual on those 2xH200
NCCL runs (16 MiB-1 GiB): the fitted profile is within 6.1%; link defaults alone are always
optimistic, 16-29% at 1 GiB and 23-46% at 16 MiB (tests/hwmodels/test_hw_collectives.py).
"""

from __future__ import annotations

import math
from typing import Literal

from hwmodels.specs import AchievedProfile, LinkSpec, OpClassFit
from hwmodels.transfer import link_efficiency_frac
from hwmodels.units import UserInputError

Collective = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"]
Algorithm = Literal["ring", "tree"]
COLLECTIVES: tuple[str, ...] = (
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "send_recv",
)
_FIT_CLASS = {
    "all_reduce": "all_reduce",
    "all_gather": "all_gather",
    "reduce_scatter": "all_gather",
    "all_to_all": "all_to_all",
    "send_recv": "p2p_copy",
}


def _check(op: str, num_gpus: int) -> None:
    if op not in COLLECTIVES:
        raise UserInputError(f"collective: unknown {op!r} (use one of {', '.join(COLLECTIVES)})")
    if num_gpus < 1 or (op == "send_recv" and num_gpus != 2):
        raise UserInputError(f"num_gpus: {num_gpus} is not valid for {op}")


def bus_factor(op: str, num_gpus: int) -> float:
    """Bytes each GPU puts on its link per byte of ``num_bytes`` (nccl-tests busbw factor)."""
    _check(op, num_gpus)
    n = num_gpus
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op == "send_recv":
        return 1.0
    return (n - 1) / n


def num_steps(op: str, num_gpus: int, algorithm: str = "ring") -> int:
    """Latency-bound steps of the algorithm (each pays one ``latency_s``)."""
    _check(op, num_gpus)
    n = num_gpus
    if n == 1:
        return 0
    if op == "send_recv":
        return 1
    if op == "all_reduce":
        if algorithm == "tree":
            return 2 * math.ceil(math.log2(n))
        if algorithm != "ring":
            raise UserInputError(f"algorithm: unknown {algorithm!r} (use ring or tree)")
        return 2 * (n - 1)
    if algorithm != "ring":
        raise UserInputError(f"algorithm: {op} is modelled as ring only, got {algorithm!r}")
    return n - 1


def collective_fit(op: str, link: LinkSpec, profile: AchievedProfile | None = None) -> OpClassFit:
    """Alpha-beta parameters for ``op``: the profile's fit if it has one, else link defaults.

    Default: per-step latency is the link's ``latency_s`` and bus bandwidth its per-direction
    datasheet rate times the measured efficiency of that link kind (`link_efficiency_frac`).
    """
    if profile is not None and _FIT_CLASS.get(op) in profile.fits:
        return profile.fits[_FIT_CLASS[op]]
    rate = link.per_direction_bandwidth_bytes_per_s * link_efficiency_frac(link.kind)
    return OpClassFit(
        bandwidth_bytes_per_s=rate, latency_s=link.latency_s, num_points=1, max_abs_rel_error=0.0
    )


def collective_time_s(
    op: str,
    *,
    num_bytes: float,
    num_gpus: int,
    link: LinkSpec,
    algorithm: str = "ring",
    profile: AchievedProfile | None = None,
) -> float:
    """Time of one collective of ``num_bytes`` (see module docstring for what the bytes mean)."""
    if num_bytes < 0:
        raise UserInputError(f"num_bytes: must be >= 0, got {num_bytes}")
    if num_gpus == 1:
        return 0.0
    fit = collective_fit(op, link, profile)
    return fit.time_s(
        bus_factor(op, num_gpus) * num_bytes, num_latency_units=num_steps(op, num_gpus, algorithm)
    )


def bus_bandwidth_bytes_per_s(op: str, *, num_bytes: float, num_gpus: int, time_s: float) -> float:
    """nccl-tests' busbw of a measured or predicted collective: bus bytes / time."""
    return bus_factor(op, num_gpus) * num_bytes / time_s


__all__ = [
    "COLLECTIVES",
    "bus_bandwidth_bytes_per_s",
    "bus_factor",
    "collective_fit",
    "collective_time_s",
    "num_steps",
]
