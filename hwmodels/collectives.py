"""Cost of collective communication among ``n`` GPUs: NCCL's latency per algorithm and protocol,
bandwidth from a measured profile or the link.

Models: ``time_s = min over protocols p (LL, LL128, Simple) of latency_p + bus_bytes / rate_p``
with ``bus_bytes = bus_factor * num_bytes``, as NCCL's tuner chooses (src/graph/tuning.cc):
``latency_p = base_p + num_steps * hop_p`` (NCCL's baseLat and hwLat tables for the algorithm,
protocol and link kind; `nccl_tuning`) and ``rate_Simple`` the asymptotic bus bandwidth,
``rate_LL128 = 0.92 rate_Simple``, ``rate_LL = min(0.5 rate_Simple, 141 GB/s)``. Small messages
are latency-bound and take LL (a 128 KiB all-reduce on 8 NVLink GPUs: 6.6 + 14 x 0.6 us + 1.6 us
of bytes), large ones bandwidth-bound on Simple. ``num_bytes`` is the per-GPU buffer the caller
holds: the all-reduce buffer, the all-gather OUTPUT (= reduce-scatter input), the all-to-all send
buffer, the point-to-point message. Bus factors are those of nccl-tests' "busbw": all_reduce
2(n-1)/n, all_gather and reduce_scatter (n-1)/n, all_to_all (n-1)/n, send_recv 1. Steps: ring
all_reduce 2(n-1), ring all_gather / reduce_scatter (n-1), pairwise all_to_all (n-1), tree
all_reduce 2*ceil(log2 n), send_recv 1.
Rates and the measured profile: a profile's NCCL fits (``all_reduce``, ``all_gather``,
``all_to_all``; reduce_scatter uses all_gather's, the same ring traffic in reverse) give the
Simple rate, and their fixed time at the GPU count they were measured at (2) beyond NCCL's
Simple latency there is kept as an extra fixed cost of the bandwidth protocols (LL128, Simple):
the ramp to full bandwidth that an alpha-beta fit of 16 MiB-1 GiB folds into its latency (14-22 us
on 2xH200). LL, the latency-bound protocol, runs at NCCL's table latency. So at the measured
count the Simple line is the fit itself; more GPUs add NCCL's per-hop latency per extra step.
Without a profile fit the Simple rate is the link's per-direction datasheet rate times the bus
bandwidth fraction NCCL reaches on that link kind (NVLink 4: ~370 of 450 GB/s), else the copy
efficiency of the link kind (`hwmodels.transfer.link_efficiency_frac`); send_recv takes the
profile's GPU-to-GPU copy rate, never its zero copy latency.
Assumes: every GPU drives one port of ``link`` (NVSwitch or a rail-optimized network), so the
rate does not depend on ``n``; NCCL's table latencies describe GPU time of back-to-back calls, as
nccl-tests time them (no host launch cost; a CUDA-graphed or busy stream hides it).
Ignores: NVLink SHARP (NVLS; our runs set NCCL_NVLS_ENABLE=0: 480 instead of 370 GB/s on 8
H100s), PAT and CollNet, hierarchical (intra+inter node) rings, channel counts, congestion.
Source: hwmodels/presets/collectives/nccl-tuning.json (NCCL's tables and the published 8xH100
nccl-tests figures it is checked against); fitted and checked against
validate/measurements/reference/h200x2-p2p-probe-2026-11-28.json (tests/hwmodels/test_hw_collectives.py).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, NamedTuple

from pydantic import Field

from hwmodels.catalog import PRESET_DIR, read_json, validate_file_data
from hwmodels.specs import AchievedProfile, ByteRate, LinkSpec, OpClassFit, Seconds, _Sourced
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
PROTOCOLS: tuple[str, ...] = ("LL", "LL128", "Simple")
_FIT_CLASS = {
    "all_reduce": "all_reduce",
    "all_gather": "all_gather",
    "reduce_scatter": "all_gather",
    "all_to_all": "all_to_all",
    "send_recv": "p2p_copy",
}
_NCCL_FIT_CLASSES = frozenset({"all_reduce", "all_gather", "all_to_all"})
"""Profile classes fitted on NCCL calls (their latency is NCCL's); ``p2p_copy`` is a copy."""
_HOP_KIND = {"nvlink": "nvlink", "c2c": "nvlink", "pcie": "pcie", "cxl": "pcie", "network": "network"}
TUNING_FILE = PRESET_DIR / "collectives" / "nccl-tuning.json"


class NcclTuning(_Sourced):
    """NCCL's cost-model constants (src/graph/tuning.cc) and the published figures that check them."""

    schema_version: int = Field(default=1, ge=1, le=1)
    """File format version."""
    name: str
    """Preset name."""
    description: str = ""
    """What the file holds."""
    base_latency_s: dict[str, Seconds]
    """``algorithm.protocol`` -> fixed latency of one call, seconds."""
    hop_latency_s: dict[str, Seconds]
    """``link_kind.algorithm.protocol`` -> latency per ring step or tree level, seconds."""
    ll_bandwidth_frac: float = Field(gt=0, le=1)
    """LL's bus bandwidth / Simple's."""
    ll128_bandwidth_frac: float = Field(gt=0, le=1)
    """LL128's bus bandwidth / Simple's."""
    tree_bandwidth_frac: float = Field(gt=0, le=1)
    """Tree all-reduce bus bandwidth / ring's."""
    ll_max_bus_bandwidth_bytes_per_s: dict[str, ByteRate]
    """Link kind (nvlink, pcie, network) -> ceiling of LL's bus bandwidth, bytes/s."""
    ll128_link_kinds: tuple[str, ...]
    """Link kinds (of the hop table) where NCCL enables LL128 by default."""
    bus_bandwidth_frac: dict[str, float]
    """Link kind -> NCCL's large-message bus bandwidth / the link's per-direction datasheet rate
    (the default Simple rate without a profile fit; kinds not listed use the copy efficiency)."""
    profile_fit_num_gpus: int = Field(ge=2)
    """GPU count the measured profile's NCCL fits come from."""
    published: dict[str, float]
    """Published measurements the model is tested against (key names their unit)."""


@lru_cache(maxsize=1)
def nccl_tuning() -> NcclTuning:
    """The committed NCCL tuning preset."""
    return validate_file_data(NcclTuning, read_json(TUNING_FILE), TUNING_FILE)


class ProtocolTime(NamedTuple):
    """One protocol's prediction for a collective."""

    protocol: str
    latency_s: float
    bus_bandwidth_bytes_per_s: float
    time_s: float


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
    """Latency-bound steps of the algorithm (each pays one hop latency)."""
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


def _nccl_latency_s(protocol: str, *, algorithm: str, hop_kind: str, steps: int) -> float:
    t = nccl_tuning()
    return (t.base_latency_s[f"{algorithm}.{protocol}"]
            + steps * t.hop_latency_s[f"{hop_kind}.{algorithm}.{protocol}"])


def collective_fit(op: str, link: LinkSpec, profile: AchievedProfile | None = None) -> OpClassFit:
    """Simple-protocol alpha-beta parameters of ``op``: the profile's fit if it has one, else
    the link's per-direction rate times NCCL's bus bandwidth fraction on that link kind (or the
    link kind's copy efficiency) with NCCL's one-step Simple latency."""
    cls = _FIT_CLASS.get(op)
    if profile is not None and cls in profile.fits:
        return profile.fits[cls]
    frac = nccl_tuning().bus_bandwidth_frac.get(link.kind, link_efficiency_frac(link.kind))
    latency = _nccl_latency_s("Simple", algorithm="ring", hop_kind=_HOP_KIND[link.kind], steps=1)
    return OpClassFit(bandwidth_bytes_per_s=link.per_direction_bandwidth_bytes_per_s * frac,
                      latency_s=latency, num_points=1, max_abs_rel_error=0.0)


def _fit_excess_s(op: str, link: LinkSpec, profile: AchievedProfile | None) -> float:
    """Fixed time of the profile's NCCL fit at the GPU count it was measured at beyond NCCL's
    Simple latency there (0 without an NCCL fit; never negative)."""
    cls = _FIT_CLASS[op]
    if profile is None or cls not in profile.fits or cls not in _NCCL_FIT_CLASSES:
        return 0.0
    n_fit = nccl_tuning().profile_fit_num_gpus
    steps = num_steps(op, n_fit)
    measured = profile.fits[cls].latency_s * steps
    table = _nccl_latency_s("Simple", algorithm="ring", hop_kind=_HOP_KIND[link.kind], steps=steps)
    return max(0.0, measured - table)


def protocol_times(
    op: str,
    *,
    num_bytes: float,
    num_gpus: int,
    link: LinkSpec,
    algorithm: str = "ring",
    profile: AchievedProfile | None = None,
) -> list[ProtocolTime]:
    """Every protocol NCCL would consider for this call, with its latency, rate and time."""
    if num_bytes < 0:
        raise UserInputError(f"num_bytes: must be >= 0, got {num_bytes}")
    steps = num_steps(op, num_gpus, algorithm)
    tuning = nccl_tuning()
    hop_kind = _HOP_KIND[link.kind]
    fit = collective_fit(op, link, profile)
    assert fit.bandwidth_bytes_per_s is not None  # collective fits are byte rates
    rate = fit.bandwidth_bytes_per_s
    if algorithm == "tree":
        rate *= tuning.tree_bandwidth_frac
    excess = _fit_excess_s(op, link, profile)
    bus_bytes = bus_factor(op, num_gpus) * num_bytes
    out = []
    for proto in PROTOCOLS:
        if proto == "LL128" and hop_kind not in tuning.ll128_link_kinds:
            continue
        lat = _nccl_latency_s(proto, algorithm=algorithm, hop_kind=hop_kind, steps=steps)
        if proto == "LL":
            bw = min(rate * tuning.ll_bandwidth_frac, tuning.ll_max_bus_bandwidth_bytes_per_s[hop_kind])
        else:
            lat += excess
            bw = rate * (tuning.ll128_bandwidth_frac if proto == "LL128" else 1.0)
        out.append(ProtocolTime(proto, lat, bw, lat + bus_bytes / bw))
    return out


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
    _check(op, num_gpus)
    if num_gpus == 1:
        return 0.0
    return min(p.time_s for p in protocol_times(op, num_bytes=num_bytes, num_gpus=num_gpus,
                                                link=link, algorithm=algorithm, profile=profile))


def bus_bandwidth_bytes_per_s(op: str, *, num_bytes: float, num_gpus: int, time_s: float) -> float:
    """nccl-tests' busbw of a measured or predicted collective: bus bytes / time."""
    return bus_factor(op, num_gpus) * num_bytes / time_s


__all__ = [
    "COLLECTIVES",
    "PROTOCOLS",
    "NcclTuning",
    "ProtocolTime",
    "bus_bandwidth_bytes_per_s",
    "bus_factor",
    "collective_fit",
    "collective_time_s",
    "nccl_tuning",
    "num_steps",
    "protocol_times",
]
