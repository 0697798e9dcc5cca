"""Time to move bytes over a link: GPU<->host copies, GPU<->GPU copies, any `LinkSpec`.

Models: one transfer of ``n`` bytes takes ``latency_s + n / rate`` (the alpha-beta form of
`hwmodels.specs.alpha_beta_time_s`), so small transfers reach a fraction of the rate and half
of it at ``n = latency_s * rate``. When the opposite direction runs at the same time, each
direction gets ``min(one-way rate, both-ways ceiling / 2)``.
With a calibrated `AchievedProfile`, host copies use its ``copy_h2d`` / ``copy_d2h`` /
``copy_bidir`` fits and GPU peer copies its ``p2p_copy`` / ``p2p_bidir`` fits, as long as the
fitted rate does not exceed the link's datasheet rate (one way, or both ways for the ``*_bidir``
fits): a measured profile may lower a link's rate, never raise it past its spec; a fit above it
was measured on another link and is not used. Without one (or without a usable fit),
the rate is the link's datasheet rate times the efficiency measured for that link kind
(`LINK_EFFICIENCY_FRAC`, `BIDIR_EFFICIENCY_FRAC`) and the latency is the link's ``latency_s``.
Assumes: pinned host memory and copy engines (pageable copies ran 6-14 GB/s on the reference
H200 and are not modelled here); transfers on different links do not slow each other (the
simulator adds contention from the node topology).
Ignores: IOMMU/ATS effects, PCIe payload-size tuning, copy-engine count limits.
Source: validate/measurements/reference/h200-probe-2026-11-28.json (PCIe Gen5 x16:
54.8/55.3 GB/s one way at 2 GiB, 88.9 GB/s both ways) and h200x2-p2p-probe-2026-11-28.json
(NVLink 4 x18: 394 GB/s one way, 762 GB/s both ways).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from hwmodels.specs import (
    AchievedProfile,
    CsdSpec,
    CxlMemorySpec,
    LinkSpec,
    NodeSpec,
    NvmeSpec,
    OpClassFit,
    alpha_beta_time_s,
)
from hwmodels.units import GB, UserInputError

Direction = Literal["h2d", "d2h", "p2p"]

# Achieved / datasheet per-direction rate of large pinned copies, by link kind.
LINK_EFFICIENCY_FRAC: dict[str, float] = {
    "pcie": 54.8 * GB / 63.015e9,  # H200 probe, Gen5 x16 H2D at 512 MiB-2 GiB (D2H: 55.3)
    "nvlink": 393.8 * GB / 450e9,  # 2xH200 probe, NVLink 4 x18, one way, 1 GiB
    "c2c": 393.8 * GB / 450e9,  # assumed as NVLink (same signalling family); not measured
    "cxl": 54.8 * GB / 63.015e9,  # assumed as PCIe (CXL runs on the PCIe PHY); not measured
    "network": 0.9,  # assumed: large RDMA messages reach about 90% of the port rate
}
# Achieved both-ways total / datasheet both-ways ceiling, by link kind.
BIDIR_EFFICIENCY_FRAC: dict[str, float] = {
    "pcie": 88.9 * GB / 126.03e9,  # H200 probe: 1 GiB each way at once, 88.9 GB/s total
    "nvlink": 761.9 * GB / 900e9,  # 2xH200 probe: 1 GiB each way at once, 762 GB/s total
    "c2c": 761.9 * GB / 900e9,  # assumed as NVLink
    "cxl": 88.9 * GB / 126.03e9,  # assumed as PCIe
    "network": 0.9,  # assumed: full duplex at the one-way efficiency
}


def link_efficiency_frac(kind: str) -> float:
    """Default achieved fraction of a link kind's per-direction datasheet rate."""
    return LINK_EFFICIENCY_FRAC[kind]


def _check_direction(direction: str) -> None:
    if direction not in ("h2d", "d2h", "p2p"):
        raise UserInputError(f"direction: expected h2d, d2h or p2p, got {direction!r}")


def _measured_on(profile: AchievedProfile, op_class: str, spec_bytes_per_s: float) -> bool:
    """Whether ``profile`` has a fit of ``op_class`` that this link could have produced: a
    measured rate above the link's datasheet rate was measured on another link (a node file
    with a PCIe Gen4 link and the H200's Gen5 profile), so it does not describe this one."""
    fit = profile.fits.get(op_class)
    return (fit is not None and fit.bandwidth_bytes_per_s is not None
            and fit.bandwidth_bytes_per_s <= spec_bytes_per_s)


def copy_fit(
    *,
    link: LinkSpec,
    direction: str = "h2d",
    concurrent_opposite: bool = False,
    profile: AchievedProfile | None = None,
) -> OpClassFit:
    """Alpha-beta parameters (per direction) of a copy in ``direction`` over ``link``."""
    _check_direction(direction)
    one_cls = "p2p_copy" if direction == "p2p" else f"copy_{direction}"
    both_cls = "p2p_bidir" if direction == "p2p" else "copy_bidir"
    if profile is not None and _measured_on(profile, one_cls, link.per_direction_bandwidth_bytes_per_s):
        one = profile.fits[one_cls]
        assert one.bandwidth_bytes_per_s is not None
        if not concurrent_opposite or not _measured_on(
                profile, both_cls, link.bidirectional_bandwidth_bytes_per_s):
            return one
        both = profile.fits[both_cls]
        assert both.bandwidth_bytes_per_s is not None
        rate = min(one.bandwidth_bytes_per_s, both.bandwidth_bytes_per_s / 2)
        return one.model_copy(update={"bandwidth_bytes_per_s": rate, "latency_s": both.latency_s})
    rate = link.per_direction_bandwidth_bytes_per_s * LINK_EFFICIENCY_FRAC[link.kind]
    if concurrent_opposite:
        both_rate = link.bidirectional_bandwidth_bytes_per_s * BIDIR_EFFICIENCY_FRAC[link.kind]
        rate = min(rate, both_rate / 2)
    return OpClassFit(
        bandwidth_bytes_per_s=rate, latency_s=link.latency_s, num_points=1, max_abs_rel_error=0.0
    )


def transfer_time_s(
    *,
    num_bytes: float,
    link: LinkSpec,
    direction: str = "h2d",
    concurrent_opposite: bool = False,
    profile: AchievedProfile | None = None,
) -> float:
    """Seconds to move ``num_bytes`` one way; ``concurrent_opposite``: the other way is busy too."""
    if num_bytes < 0:
        raise UserInputError(f"num_bytes: must be >= 0, got {num_bytes}")
    if num_bytes == 0:
        return 0.0
    fit = copy_fit(
        link=link, direction=direction, concurrent_opposite=concurrent_opposite, profile=profile
    )
    return fit.time_s(num_bytes)


def effective_bandwidth_bytes_per_s(
    *,
    num_bytes: float,
    link: LinkSpec,
    direction: str = "h2d",
    concurrent_opposite: bool = False,
    profile: AchievedProfile | None = None,
) -> float:
    """``num_bytes / transfer_time_s``: the size curve of a link (per direction)."""
    t = transfer_time_s(
        num_bytes=num_bytes,
        link=link,
        direction=direction,
        concurrent_opposite=concurrent_opposite,
        profile=profile,
    )
    return num_bytes / t if t > 0 else 0.0


def host_transfer_time_s(
    node: NodeSpec,
    num_bytes: float,
    direction: str,
    *,
    gpu_index: int = 0,
    concurrent_opposite: bool = False,
) -> float:
    """GPU<->host copy on ``node``: its GPU's bottleneck host link and its profile if measured."""
    if direction not in ("h2d", "d2h"):
        raise UserInputError(f"direction: expected h2d or d2h, got {direction!r}")
    return transfer_time_s(
        num_bytes=num_bytes,
        link=node.host_link(gpu_index),
        direction=direction,
        concurrent_opposite=concurrent_opposite,
        profile=node.profile,
    )


def device_rate_bytes_per_s(node: NodeSpec, device: str, direction: str) -> float:
    """Sustained rate of a memory or storage device itself (not its link), bytes/s.

    ``direction`` is from the GPU's view: ``h2d`` reads the device, ``d2h`` writes it.
    Host DRAM: its aggregate bandwidth; CXL and NVMe: datasheet read or write rate; a CSD:
    its internal flash rate (its host interface is a link of the path).
    """
    kind, index = device.rstrip("0123456789"), device[len(device.rstrip("0123456789")) :]
    if kind == "cpu" and index and int(index) < node.host_memory.num_sockets:
        return node.host_memory.bandwidth_bytes_per_s
    by_kind: dict[str, Sequence[CxlMemorySpec | NvmeSpec | CsdSpec]] = {
        "cxl": node.cxl, "nvme": node.nvme, "csd": node.csd}
    items = by_kind.get(kind)
    if items is None or not index or int(index) >= len(items):
        raise UserInputError(
            f"device: {node.name} has no memory or storage device {device!r} "
            f"(has {', '.join(d for d in node.device_ids() if not d.startswith('gpu'))})"
        )
    spec = items[int(index)]
    if isinstance(spec, CsdSpec):
        return spec.internal_flash_bandwidth_bytes_per_s
    read = direction == "h2d"
    return spec.read_bandwidth_bytes_per_s if read else spec.write_bandwidth_bytes_per_s


def tier_transfer_time_s(
    node: NodeSpec, num_bytes: float, direction: str, *, device: str = "cpu0", gpu_index: int = 0
) -> float:
    """Copy between a GPU and a memory tier of ``node`` (host DRAM, CXL, NVMe, CSD), alone.

    Host DRAM (``cpu<j>``) is `host_transfer_time_s`. For another device the bytes cross
    every link of the topology path GPU -> device: the rate is the smallest of each link's
    achieved rate (the GPU's own host link from the profile when measured, others at datasheet
    times `LINK_EFFICIENCY_FRAC`) and the device's own rate; the latency is the sum of the
    links' latencies plus the device's access latency (staged through host memory, each hop
    costs a copy set-up). Ignores: GPUDirect Storage, the DRAM bounce buffer's own traffic,
    file-system overhead (0.6-0.7 GB/s through a plain Python loop on the reference VM).
    """
    if direction not in ("h2d", "d2h"):
        raise UserInputError(f"direction: expected h2d or d2h, got {direction!r}")
    if device.startswith("cpu"):
        device_rate_bytes_per_s(node, device, direction)  # validates the socket id
        return host_transfer_time_s(node, num_bytes, direction, gpu_index=gpu_index)
    if num_bytes < 0:
        raise UserInputError(f"num_bytes: must be >= 0, got {num_bytes}")
    rate = device_rate_bytes_per_s(node, device, direction)
    path = node.path(f"gpu{gpu_index}", device)
    host_edges = set(node.host_path(gpu_index))
    latency = device_latency_s(node, device)
    for edge in path:
        link = node.links[edge.link]
        profile = node.profile if edge in host_edges else None
        fit = copy_fit(link=link, direction=direction, profile=profile)
        assert fit.bandwidth_bytes_per_s is not None
        rate = min(rate, fit.bandwidth_bytes_per_s)
        latency += fit.latency_s
    if num_bytes == 0:
        return 0.0
    return alpha_beta_time_s(latency_s=latency, work=num_bytes, rate=rate)


def device_latency_s(node: NodeSpec, device: str) -> float:
    kind = device.rstrip("0123456789")
    index = int(device[len(kind) :])
    by_kind: dict[str, Sequence[CxlMemorySpec | NvmeSpec | CsdSpec]] = {
        "cxl": node.cxl, "nvme": node.nvme, "csd": node.csd}
    spec = by_kind[kind][index]
    if isinstance(spec, CsdSpec):
        return spec.host_link.latency_s
    return spec.latency_s
