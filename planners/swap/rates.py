"""GPU<->host copy rates of a node, read off the simulator's link model, and the host-link what-if.

Models: the rate one GPU's host copies get while every GPU of the job on the node copies (fair
sharing of every link on the host route, as the discrete-event simulator shares them).
Assumes: every GPU of the job copies at the same time. Ignores: copies to CXL / NVMe tiers.
Source: `simulator.des.schedule.node_links` and `device_route`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CopyRates:
    """Per-GPU GPU<->host copy rates when every GPU of the job on the node copies at once."""

    d2h_bytes_per_s: float
    h2d_bytes_per_s: float
    bidir_bytes_per_s: float  # both directions together, per GPU
    latency_s: float
    num_gpus_sharing_host: int  # GPUs of the job on one node: they share its host memory


def host_copy_rates(node, *, num_active_gpus: int) -> CopyRates:
    """Rates of one GPU's host copies while ``num_active_gpus`` GPUs of ``node`` copy too.

    Read off the discrete-event simulator's own resources (`simulator.des.schedule.node_links`,
    `device_route`), so that the MIP and the replay share one link model: every link on the
    GPU's host route (each edge per direction, its both-ways ceiling, host DRAM) is split evenly
    among the active GPUs whose routes cross it, as the simulator's fair sharing does when all
    GPUs copy at once (two A800s behind one PCIe switch get half its uplink each).
    """
    from simulator.des.schedule import device_route, node_links

    n_active = max(1, min(num_active_gpus, node.num_gpus))
    caps = {lk.name: lk.capacity_bytes_per_s for lk in node_links(node)}
    routes = {d: [device_route(node, g, "host", d) for g in range(n_active)] for d in ("d2h", "h2d")}

    def share(link: str, directions: tuple[str, ...]) -> float:
        return caps[link] / sum(link in r.links for d in directions for r in routes[d])

    one = {d: min(share(lk, (d,)) for lk in routes[d][0].links) for d in ("d2h", "h2d")}
    common = set(routes["d2h"][0].links) & set(routes["h2d"][0].links)
    both = 2 * min((share(lk, ("d2h", "h2d")) for lk in common), default=min(one.values()))
    return CopyRates(d2h_bytes_per_s=float(one["d2h"]), h2d_bytes_per_s=float(one["h2d"]),
                     bidir_bytes_per_s=float(min(both, one["d2h"] + one["h2d"])),
                     latency_s=float(routes["d2h"][0].latency_s), num_gpus_sharing_host=n_active)


def with_host_link(node, link_name: str):
    """What-if: ``node`` with every link on its GPUs' host paths replaced by preset ``link_name``
    (e.g. PCIe Gen4 vs Gen5, or NVLink-C2C). The measured copy fits of its profile describe the
    old link and are dropped (copies then run at the new link's datasheet rate times the
    efficiency measured for its kind); every other fit (GEMM, attention, memory) is kept."""
    from hwmodels.catalog import get_link

    link = get_link(link_name)
    keys = {e.link for g in range(node.num_gpus) for e in node.host_path(g)}
    links = {k: (link if k in keys else v) for k, v in node.links.items()}
    profile = node.profile
    if profile is not None:
        profile = profile.model_copy(update={"fits": {k: v for k, v in profile.fits.items()
                                                       if not k.startswith("copy_")}})
    return node.model_copy(update={"links": links, "profile": profile,
                                   "name": f"{node.name}+{link_name}"})
