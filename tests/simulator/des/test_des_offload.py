"""Per-layer offload with prefetch, and routes over a node's real topology."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hwmodels.catalog import load_node
from hwmodels.transfer import host_transfer_time_s, tier_transfer_time_s, transfer_time_s
from hwmodels.units import GB, GiB, UserInputError
from simulator.des import (
    Op,
    Pool,
    Schedule,
    Stream,
    Transfer,
    add_offload,
    offload_candidates,
    schedule_from_workload,
    simulate,
)
from simulator.des.schedule import Link, device_route, node_links, node_pools, peer_route
from simulator.estimator import estimate_training
from simulator.templates import training_workload
from simulator.workload import Phase, Role, allocator_rounded_bytes


@pytest.fixture(scope="module")
def small(scenario):
    m, j, node = scenario("llama-2-7b", 32768, "1xH200", layers=4)
    wl = training_workload(m, j, node)
    return wl, node, estimate_training(m, j, node, workload=wl)


def test_candidates_are_saved_by_one_layer_and_freed_in_backward(small):
    wl, _, _ = small
    cands = offload_candidates(wl)
    assert sorted(cands) == [0, 1, 2, 3]
    savers: dict[int, set] = {}
    freed_in: dict[int, str] = {}
    for op in wl.ops:
        if op.phase == Phase.FWD:
            for t in op.saves:
                savers.setdefault(t, set()).add(op.layer)
        for t in op.frees:
            freed_in[t] = op.phase
    for layer, items in cands.items():
        assert items
        for c in items:
            assert savers[c.tid] == {layer}
            assert freed_in[c.tid] in (Phase.BWD, Phase.RECOMPUTE)
            assert wl.tensor(c.tid).role != Role.WEIGHT
    # layer 1's input (layer 0's output) is saved by layer 1's ops: it travels with layer 1
    assert len(cands[1]) == len(cands[2])


def test_offload_moves_bytes_out_after_forward_and_back_before_backward(small):
    wl, node, est = small
    base = schedule_from_workload(wl, node)
    sched = add_offload(base, fraction_by_layer={0: 1.0, 1: 1.0}, lookahead=1)
    r = simulate(sched)
    tasks = sched.tasks
    ctids = sched.compute_tids[0]
    xfers = [t for t in tasks if isinstance(t, Transfer)]
    cands = offload_candidates(wl)
    offloaded = sum(c.num_bytes for L in (0, 1) for c in cands[L])
    assert len(xfers) == 2 * sum(len(cands[L]) for L in (0, 1))
    assert sum(t.num_bytes for t in xfers if t.stream == "gpu0.d2h") == offloaded
    host = r.pool("host")
    assert host.peak_bytes == offloaded and host.final_bytes == 0
    hbm = r.pool("gpu0.hbm")
    # HBM gives back the allocator-rounded bytes of each offloaded tensor
    released = sum(allocator_rounded_bytes(c.num_bytes) for L in (0, 1) for c in cands[L])
    assert est.peak_allocated_bytes - released <= hbm.peak_bytes < est.peak_allocated_bytes
    no_offload = simulate(base).pool("gpu0.hbm")
    assert hbm.final_bytes == no_offload.final_bytes
    last_fwd = {op.layer: i for i, op in enumerate(wl.ops) if op.phase == Phase.FWD and op.layer is not None}
    first_bwd = {}
    for i, op in enumerate(wl.ops):
        if op.phase in (Phase.BWD, Phase.RECOMPUTE) and op.layer is not None:
            first_bwd.setdefault(op.layer, i)
    for t in xfers:
        start, end = r.task_start_s[t.tid], r.task_end_s[t.tid]
        if t.stream == "gpu0.d2h":
            assert start >= r.task_end_s[ctids[last_fwd[t.layer]]]
        else:
            assert end <= r.task_start_s[ctids[first_bwd[t.layer]]]
            # prefetch begins no earlier than the backward of the layer above
            assert start >= r.task_start_s[ctids[first_bwd[t.layer + 1]]]
    # one GPU: the compute stream only ever waits for copies, so the step grows by the stall
    assert r.step_time_s == pytest.approx(est.step_time_s + r.stall_s, rel=1e-12)


def test_a_slow_link_exposes_the_copies(small):
    wl, node, est = small
    sched = add_offload(schedule_from_workload(wl, node), fraction_by_layer={0: 0.5, 1: 0.5, 2: 0.5})
    # 1 GB/s each way; both ways and host DRAM carry 2 GB/s, so D2H never slows H2D
    slow = replace(sched, links=tuple(Link(lk.name, (1 if lk.kind == "link" else 2) * GB, lk.kind)
                                      for lk in sched.links))
    fast, crawl = simulate(sched), simulate(slow)
    assert crawl.stall_s > fast.stall_s
    assert crawl.step_time_s == pytest.approx(est.step_time_s + crawl.stall_s, rel=1e-12)
    pcie = next(lk for lk in crawl.links if lk.name == "gpu0>cpu0")
    moved = sum(t.num_bytes for t in sched.tasks if isinstance(t, Transfer) and t.stream == "gpu0.d2h")
    assert pcie.bytes_moved == pytest.approx(moved) and pcie.busy_s == pytest.approx(moved / GB)


def test_full_checkpointing_prefetches_before_the_recompute(scenario):
    m, j, node = scenario("llama-3.2-1b", 16384, "1xH200", layers=3, checkpointing="full")
    wl = training_workload(m, j, node)
    sched = add_offload(schedule_from_workload(wl, node), fraction_by_layer={0: 1.0})
    r = simulate(sched)
    first = next(i for i, op in enumerate(wl.ops) if op.layer == 0 and op.phase == Phase.RECOMPUTE)
    h2d = [t for t in sched.tasks if isinstance(t, Transfer) and t.stream == "gpu0.h2d"]
    assert h2d and all(r.task_end_s[t.tid] <= r.task_start_s[sched.compute_tids[0][first]] for t in h2d)
    assert r.pool("host").final_bytes == 0


def _lone_copy(node, gpu: int, device: str, direction: str, num_bytes: int) -> float:
    route = device_route(node, gpu, device, direction)
    pool = device if device != "host" else "host"
    sched = Schedule(streams=(Stream("s", direction, f"gpu{gpu}"),),
                     tasks=(Transfer(0, "copy", "s", num_bytes, f"gpu{gpu}.hbm", pool, route.links,
                                     route.latency_s),),
                     pools=node_pools(node, node.num_gpus), links=node_links(node))
    return simulate(sched).step_time_s


@pytest.mark.parametrize("direction", ["d2h", "h2d"])
@pytest.mark.parametrize("device", ["host", "cxl0", "nvme0", "csd0"])
def test_a_lone_copy_takes_the_transfer_model_time(device, direction):
    node = load_node("1xH200-tiered")
    n = 3 * GiB
    expected = (host_transfer_time_s(node, n, direction) if device == "host"
                else tier_transfer_time_s(node, n, direction, device=device))
    assert _lone_copy(node, 0, device, direction, n) == pytest.approx(expected, rel=1e-12)


def test_two_gpus_behind_one_pcie_switch_halve_each_other():
    node = load_node("8xH200")
    n = 2 * GiB
    alone = host_transfer_time_s(node, n, "d2h")
    route = {g: device_route(node, g, "host", "d2h") for g in range(4)}

    def pair(a: int, b: int) -> list[float]:
        sched = Schedule(
            streams=(Stream("a", "d2h", f"gpu{a}"), Stream("b", "d2h", f"gpu{b}")),
            tasks=(Transfer(0, "a", "a", n, f"gpu{a}.hbm", "host", route[a].links, route[a].latency_s),
                   Transfer(1, "b", "b", n, f"gpu{b}.hbm", "host", route[b].links, route[b].latency_s)),
            pools=node_pools(node, 8), links=node_links(node))
        return list(simulate(sched).task_end_s)

    latency = route[0].latency_s
    # gpu0 and gpu1 share pcie_sw0's uplink: each gets half of it
    assert pair(0, 1) == pytest.approx([latency + 2 * (alone - latency)] * 2, rel=1e-12)
    # gpu0 and gpu2 sit behind different switches: no contention (host DRAM is far faster)
    assert pair(0, 2) == pytest.approx([alone] * 2, rel=1e-12)


def test_offload_to_nvme_uses_each_gpus_drive(scenario):
    m, j, node = scenario("llama-3.2-1b", 8192, "8xH200", layers=2, parallelism={"dp": 2})
    wl = training_workload(m, j, node)
    sched = add_offload(schedule_from_workload(wl, node, num_gpus=2), fraction_by_layer={0: 1.0},
                        tier="nvme")
    r = simulate(sched)
    assert r.pool("nvme0").peak_bytes == r.pool("nvme1").peak_bytes > 0
    assert all(p.final_bytes == 0 for p in r.pools if p.tier == "nvme")


def test_add_offload_rejects_bad_requests(small):
    wl, node, _ = small
    base = schedule_from_workload(wl, node)
    with pytest.raises(UserInputError, match=r"fraction_by_layer\.0: must lie in \[0, 1\]"):
        add_offload(base, fraction_by_layer={0: 1.5})
    with pytest.raises(UserInputError, match=r"fraction_by_layer\.9: layer has no tensors"):
        add_offload(base, fraction_by_layer={9: 0.5})
    with pytest.raises(UserInputError, match="tier: 1xH200 has no cxl device"):
        add_offload(base, fraction_by_layer={0: 0.5}, tier="cxl")
    with pytest.raises(UserInputError, match="lookahead"):
        add_offload(base, fraction_by_layer={0: 0.5}, lookahead=-1)
    bare = Schedule(streams=(), tasks=(), pools=(Pool("host", "host", 1),))
    with pytest.raises(UserInputError, match="schedule_from_workload"):
        add_offload(bare, fraction_by_layer={0: 0.5})


def test_peer_copies_share_the_receivers_nvlink_port():
    node = load_node("8xH200")
    n = 4 * GiB
    alone = transfer_time_s(num_bytes=n, link=node.gpu_peer_link(), direction="p2p", profile=node.profile)
    routes = [peer_route(node, src, 1) for src in (0, 2)]
    sched = Schedule(
        streams=(Stream("a", "d2h", "gpu0"), Stream("b", "d2h", "gpu2")),
        tasks=tuple(Transfer(i, f"to gpu1 from {src}", "ab"[i], n, f"gpu{src}.hbm", "gpu1.hbm", r.links,
                             r.latency_s) for i, (src, r) in enumerate(zip((0, 2), routes, strict=True))),
        pools=node_pools(node, 8), links=node_links(node))
    ends = simulate(sched).task_end_s
    # both flows end on nvswitch>gpu1: it carries one port's rate, so each copy takes twice as long
    latency = routes[0].latency_s
    assert list(ends) == pytest.approx([latency + 2 * (alone - latency)] * 2, rel=1e-12)
    lone = Schedule(streams=sched.streams[:1], tasks=sched.tasks[:1], pools=sched.pools, links=sched.links)
    assert simulate(lone).step_time_s == pytest.approx(alone, rel=1e-12)
    with pytest.raises(UserInputError, match="no path from gpu3 to gpu3"):
        peer_route(node, 3, 3)


def test_a_drive_scan_and_a_gpu_read_share_the_csd_flash():
    node = load_node("1xH200-tiered")
    flash = next(lk for lk in node_links(node) if lk.name == "csd0.read").capacity_bytes_per_s
    to_gpu = device_route(node, 0, "csd0", "h2d")
    n = int(flash / 4)  # each flow gets half of the flash rate (below the drive's host link): 0.5 s
    sched = Schedule(
        streams=(Stream("gpu0.compute", "compute", "gpu0"), Stream("gpu0.h2d", "h2d", "gpu0"),
                 Stream("csd0.compute", "csd", "csd0")),
        tasks=(Op(0, "gemm", "gpu0.compute", 1.0),
               Transfer(1, "kv to gpu", "gpu0.h2d", n, "csd0", "gpu0.hbm", to_gpu.links, 0.0),
               Transfer(2, "kv scan", "csd0.compute", n, "csd0", "csd0", ("csd0.read",), 0.0),
               Op(3, "attention in drive", "csd0.compute", 0.25)),
        pools=node_pools(node, 1), links=node_links(node))
    r = simulate(sched)
    assert [(round(t, 9), kind, name) for t, kind, _s, name in r.events()] == [
        (0.0, "start", "gemm"), (0.0, "start", "kv to gpu"), (0.0, "start", "kv scan"),
        (0.5, "end", "kv to gpu"), (0.5, "end", "kv scan"), (0.5, "start", "attention in drive"),
        (0.75, "end", "attention in drive"), (1.0, "end", "gemm")]
    assert r.stream("csd0.compute").busy_s == pytest.approx(0.75)
    assert r.stream("gpu0.compute").stall_s == 0.0


def test_h200_copies_both_ways_meet_the_measured_bidirectional_ceiling():
    node = load_node("1xH200")
    n = 2 * GiB
    routes = {d: device_route(node, 0, "host", d) for d in ("d2h", "h2d")}
    sched = Schedule(
        streams=(Stream("gpu0.d2h", "d2h", "gpu0"), Stream("gpu0.h2d", "h2d", "gpu0")),
        tasks=(Transfer(0, "out", "gpu0.d2h", n, "gpu0.hbm", "host", routes["d2h"].links, routes["d2h"].latency_s),
               Transfer(1, "in", "gpu0.h2d", n, "host", "gpu0.hbm", routes["h2d"].links, routes["h2d"].latency_s)),
        pools=node_pools(node, 1), links=node_links(node))
    r = simulate(sched)
    for tid, direction in ((0, "d2h"), (1, "h2d")):
        both = host_transfer_time_s(node, n, direction, concurrent_opposite=True)
        alone = host_transfer_time_s(node, n, direction)
        # each direction gets half of the measured both-ways rate (97 GB/s), not its 55 GB/s;
        # the few microseconds one copy runs alone before the other joins are all that differ
        assert r.task_end_s[tid] == pytest.approx(both, rel=1e-3)
        assert r.task_end_s[tid] > 1.1 * alone
    ceiling = next(lk for lk in r.links if lk.name == "gpu0<>cpu0")
    assert ceiling.kind == "ceiling" and ceiling.utilization_frac == pytest.approx(1.0, rel=1e-3)
