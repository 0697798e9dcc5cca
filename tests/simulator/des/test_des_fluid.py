"""Fluid link sharing on toy cases whose answers are closed-form, asserted as exact event logs."""

from __future__ import annotations

import math

import pytest

from hwmodels.units import GB
from simulator.des import Link, MemEvent, Op, Pool, Schedule, Stream, Transfer, simulate
from simulator.des.resources import water_fill

POOLS = (Pool("gpu0.hbm", "hbm", 10**12), Pool("host", "host", 10**12))


def log(result) -> list[tuple[float, str, str]]:
    """(time rounded to 1e-12 s, start|end, task name): floating error never changes an event."""
    return [(round(t, 12), kind, name) for t, kind, _stream, name in result.events()]


def xfer(tid, name, stream, num_bytes, route, deps=(), latency_s=0.0):
    return Transfer(tid, name, stream, num_bytes, "gpu0.hbm", "host", route, latency_s, deps)


def test_two_transfers_starting_together_share_the_link():
    s = Schedule(
        streams=(Stream("a", "d2h", "gpu0"), Stream("b", "d2h", "gpu1")),
        tasks=(xfer(0, "x", "a", 1 * GB, ("pcie",)), xfer(1, "y", "b", 1 * GB, ("pcie",))),
        pools=POOLS, links=(Link("pcie", 10 * GB),))
    r = simulate(s)
    # 10 GB/s shared by two: 5 GB/s each, 1 GB takes 0.2 s
    assert log(r) == [(0.0, "start", "x"), (0.0, "start", "y"), (0.2, "end", "x"), (0.2, "end", "y")]
    assert r.step_time_s == pytest.approx(0.2, rel=1e-12)
    link = r.links[0]
    assert link.busy_s == pytest.approx(0.2) and link.bytes_moved == pytest.approx(2 * GB)
    assert link.utilization_frac == pytest.approx(1.0)


def test_a_late_transfer_slows_the_first_from_when_it_starts():
    s = Schedule(
        streams=(Stream("c", "compute", "gpu0"), Stream("a", "d2h", "gpu0"), Stream("b", "d2h", "gpu1")),
        tasks=(Op(0, "wait", "c", 0.05),
               xfer(1, "x", "a", 1 * GB, ("pcie",)),
               xfer(2, "y", "b", 1 * GB, ("pcie",), deps=(0,))),
        pools=POOLS, links=(Link("pcie", 10 * GB),))
    r = simulate(s)
    # x alone moves 0.5 GB by 0.05 s; then 5 GB/s each: x ends at 0.05 + 0.5/5 = 0.15;
    # y has 0.5 GB left at 0.15 and runs alone at 10 GB/s: ends at 0.2
    assert log(r) == [(0.0, "start", "wait"), (0.0, "start", "x"), (0.05, "end", "wait"),
                      (0.05, "start", "y"), (0.15, "end", "x"), (0.2, "end", "y")]
    loads = [(round(t, 12), round(load / GB, 9)) for t, _r, load in r.link_load_log]
    assert loads == [(0.0, 10.0), (0.2, 0.0)]  # the link stays full from 0 to 0.2


def test_bidirectional_copies_meet_the_both_ways_ceiling():
    # 10 GB/s per direction, 12 GB/s both ways: each direction gets 6 while both run
    links = (Link("d2h", 10 * GB), Link("h2d", 10 * GB), Link("both", 12 * GB, "ceiling"))
    s = Schedule(
        streams=(Stream("down", "d2h", "gpu0"), Stream("up", "h2d", "gpu0")),
        tasks=(xfer(0, "out", "down", 1 * GB, ("d2h", "both")),
               Transfer(1, "in", "up", 3 * GB // 10, "host", "gpu0.hbm", ("h2d", "both"))),
        pools=POOLS, links=links)
    r = simulate(s)
    # "in" (0.3 GB at 6 GB/s) ends at 0.05; "out" has 0.7 GB left and runs at 10: ends at 0.12
    assert log(r) == [(0.0, "start", "out"), (0.0, "start", "in"), (0.05, "end", "in"),
                      (0.12, "end", "out")]


def test_two_d2h_and_one_h2d_water_fill():
    # direction cap binds the two D2H flows at 5 each; the H2D flow takes the ceiling's rest: 6
    rates = water_fill([(0, 2), (0, 2), (1, 2)], [math.inf] * 3, [10.0, 10.0, 16.0])
    assert rates == [5.0, 5.0, 6.0]
    # a flow's own cap freezes it first and the others share what it leaves
    assert water_fill([(0,), (0,)], [2.0, math.inf], [10.0]) == [2.0, 8.0]


def test_eight_gpus_saturate_one_host_memory():
    # eight GPUs, each on its own 10 GB/s link, all into 40 GB/s of host DRAM: 5 GB/s each.
    links = tuple(Link(f"gpu{g}>cpu0", 10 * GB) for g in range(8)) + (Link("host_memory", 40 * GB, "memory"),)
    streams = tuple(Stream(f"gpu{g}.d2h", "d2h", f"gpu{g}") for g in range(8))
    sizes = [GB // 2] + [GB] * 7
    tasks = tuple(xfer(g, f"copy{g}", f"gpu{g}.d2h", sizes[g], (f"gpu{g}>cpu0", "host_memory"))
                  for g in range(8))
    r = simulate(Schedule(streams=streams, tasks=tasks, pools=POOLS, links=links))
    # copy0 (0.5 GB at 5) ends at 0.1; the other seven then get 40/7 each for their last 0.5 GB:
    # 0.1 + 0.5 * 7 / 40 = 0.1875
    assert log(r) == ([(0.0, "start", f"copy{g}") for g in range(8)] + [(0.1, "end", "copy0")]
                      + [(0.1875, "end", f"copy{g}") for g in range(1, 8)])
    host = r.links[-1]
    assert host.bytes_moved == pytest.approx(7.5 * GB) and host.busy_s == pytest.approx(0.1875)


def test_latency_is_paid_before_the_flow_joins():
    s = Schedule(streams=(Stream("a", "d2h", "gpu0"),),
                 tasks=(xfer(0, "x", "a", 1 * GB, ("pcie",), latency_s=0.01),),
                 pools=POOLS, links=(Link("pcie", 10 * GB),))
    assert log(simulate(s)) == [(0.0, "start", "x"), (0.11, "end", "x")]


def test_transfers_on_one_stream_run_in_order_and_hold_memory():
    s = Schedule(
        streams=(Stream("a", "d2h", "gpu0"),),
        tasks=(Transfer(0, "x", "a", GB, "gpu0.hbm", "host", ("pcie",), 0.0, (),
                        (MemEvent("host", GB, "t0"),), (MemEvent("gpu0.hbm", GB, "t0"),)),
               Transfer(1, "y", "a", GB, "gpu0.hbm", "host", ("pcie",), 0.0, (),
                        (MemEvent("host", GB, "t1"),), (MemEvent("gpu0.hbm", GB, "t1"),))),
        pools=POOLS, links=(Link("pcie", 10 * GB),),
        initial=(MemEvent("gpu0.hbm", 2 * GB, "acts"),))
    r = simulate(s)
    assert log(r) == [(0.0, "start", "x"), (0.1, "end", "x"), (0.1, "start", "y"), (0.2, "end", "y")]
    host, hbm = r.pool("host"), r.pool("gpu0.hbm")
    assert host.peak_bytes == 2 * GB and host.peak_task == "y"
    assert hbm.peak_bytes == 2 * GB and hbm.final_bytes == 0
    assert [(round(t, 12), v) for t, v in hbm.timeline] == [(0.0, 0), (0.0, 2 * GB), (0.1, GB), (0.2, 0)]


def test_a_collective_starts_when_its_last_member_is_ready():
    s = Schedule(
        streams=(Stream("gpu0.compute", "compute", "gpu0"), Stream("gpu1.compute", "compute", "gpu1")),
        tasks=(Op(0, "slow", "gpu0.compute", 0.3), Op(1, "fast", "gpu1.compute", 0.1),
               Op(2, "all_reduce", "gpu0.compute", 0.05, group=7),
               Op(3, "all_reduce", "gpu1.compute", 0.05, group=7)),
        pools=POOLS)
    r = simulate(s)
    assert log(r) == [(0.0, "start", "slow"), (0.0, "start", "fast"), (0.1, "end", "fast"),
                      (0.3, "end", "slow"), (0.3, "start", "all_reduce"), (0.3, "start", "all_reduce"),
                      (0.35, "end", "all_reduce"), (0.35, "end", "all_reduce")]
    assert r.stream("gpu1.compute").collective_wait_s == pytest.approx(0.2)
    assert r.stream("gpu0.compute").collective_wait_s == 0.0
    assert r.stream("gpu1.compute").idle_s == pytest.approx(0.2)


def test_a_capped_flow_leaves_the_rest_of_the_link_to_the_others():
    # a pageable copy (2 GB/s cap) and a pinned one share 10 GB/s: 2 and 8 GB/s
    s = Schedule(
        streams=(Stream("a", "d2h", "gpu0"), Stream("b", "d2h", "gpu1")),
        tasks=(Transfer(0, "pageable", "a", GB, "gpu0.hbm", "host", ("pcie",), max_rate_bytes_per_s=2 * GB),
               xfer(1, "pinned", "b", 2 * GB, ("pcie",))),
        pools=POOLS, links=(Link("pcie", 10 * GB),))
    # pinned: 2 GB at 8 GB/s ends at 0.25; pageable has 0.5 GB left, still capped at 2: ends 0.5
    assert log(simulate(s)) == [(0.0, "start", "pageable"), (0.0, "start", "pinned"),
                                (0.25, "end", "pinned"), (0.5, "end", "pageable")]
