"""Schedules that cannot run fail with one line naming the task and the field."""

from __future__ import annotations

import pytest

from hwmodels.units import UserInputError
from simulator.des import Link, MemEvent, Op, Pool, Schedule, Stream, Transfer, simulate
from tierplan.cli import main

STREAMS = (Stream("gpu0.compute", "compute", "gpu0"), Stream("gpu0.d2h", "d2h", "gpu0"))
POOLS = (Pool("gpu0.hbm", "hbm", 1000), Pool("host", "host", 1000))
LINKS = (Link("pcie", 100.0),)


def sched(*tasks, initial=()):
    return Schedule(streams=STREAMS, tasks=tasks, pools=POOLS, links=LINKS, initial=initial)


@pytest.mark.parametrize(("tasks", "message"), [
    ((Op(0, "a", "gpu0.compute", 1.0, deps=(1,)), Transfer(1, "b", "gpu0.d2h", 10, "gpu0.hbm", "host",
                                                           ("pcie",), deps=(0,))),
     r"dependency cycle among 2 tasks \(e\.g\. a, b\)"),
    ((Op(0, "a", "gpu0.compute", 1.0), Op(1, "b", "gpu0.compute", 1.0, deps=(2,)),
      Op(2, "c", "gpu0.d2h", 1.0, deps=(1,))), "dependency cycle"),
    ((Op(0, "a", "gpu7.compute", 1.0),), r"tasks\[0\] \(a\)\.stream: unknown stream 'gpu7.compute'"),
    ((Op(0, "a", "gpu0.compute", -1.0),), r"duration_s: must be finite and >= 0, got -1.0"),
    ((Op(0, "a", "gpu0.compute", 1.0, allocs=(MemEvent("gpu0.hbm", -5, "x"),)),),
     "tensor x has negative size -5 bytes"),
    ((Transfer(0, "t", "gpu0.d2h", -10, "gpu0.hbm", "host", ("pcie",)),), r"num_bytes: must be >= 0"),
    ((Transfer(0, "t", "gpu0.d2h", 10, "gpu0.hbm", "host", ("nvlink",)),), "unknown link 'nvlink'"),
    ((Transfer(0, "t", "gpu0.d2h", 10, "gpu0.hbm", "cxl0", ("pcie",)),), "unknown pool 'cxl0'"),
    ((Op(0, "a", "gpu0.compute", 1.0, deps=(5,)),), r"deps: no task 5"),
    ((Op(0, "a", "gpu0.compute", 1.0, allocs=(MemEvent("gpu3.hbm", 5, "x"),)),), "unknown pool 'gpu3.hbm'"),
    ((Op(0, "a", "gpu0.compute", 1.0, group=1), Op(1, "b", "gpu0.compute", 1.0, group=1)),
     "two members of one collective on the same stream"),
    ((Op(3, "a", "gpu0.compute", 1.0),), r"tid: must equal its index"),
    ((Transfer(0, "t", "gpu0.d2h", 10, "gpu0.hbm", "host", ("pcie",), max_rate_bytes_per_s=0.0),),
     r"max_rate_bytes_per_s: must be > 0"),
])
def test_bad_schedules_are_rejected(tasks, message):
    with pytest.raises(UserInputError, match=message) as info:
        simulate(sched(*tasks))
    assert "\n" not in str(info.value)


def test_a_free_of_bytes_never_allocated_is_named():
    bad = sched(Op(0, "a", "gpu0.compute", 1.0, frees=(MemEvent("gpu0.hbm", 10, "ghost"),)))
    with pytest.raises(UserInputError, match="task a frees ghost .* from pool gpu0.hbm, which has 0 live"):
        simulate(bad)


def test_going_over_capacity_is_an_oom_event_naming_tensor_tier_and_time():
    s = sched(Op(0, "a", "gpu0.compute", 0.5), Op(1, "b", "gpu0.compute", 1.0,
                                                  allocs=(MemEvent("gpu0.hbm", 600, "big"),)),
              initial=(MemEvent("gpu0.hbm", 500, "weights"),))
    r = simulate(s)
    (oom,) = r.oom
    assert (oom.time_s, oom.pool, oom.tier, oom.tensor, oom.task) == (0.5, "gpu0.hbm", "hbm", "big", "b")
    assert (oom.live_bytes, oom.capacity_bytes) == (1100, 1000)
    assert r.num_events == 5


BASE = ["simulate", "--model", "gpt2", "--seq-len", "1024"]


@pytest.mark.parametrize(("argv", "message"), [
    (BASE + ["--offload", "2"], "--offload: must lie between 0 and 1"),
    (BASE + ["--offload", "half"], "--offload: expected a number"),
    (BASE + ["--gpus", "3"], "--gpus: must be between 1 and 1 (1xH200)"),
    (BASE + ["--lookahead", "-1"], "--lookahead: must be between 0 and"),
    (["simulate", "--model", "gpt2", "--mode", "infer", "--prompt-len", "512", "--gen-len", "8"], "--mode: simulate replays training steps"),
    (["simulate", "--model", "gpt2", "--seq-len", "-4"], "seq_len"),
])
def test_cli_bad_input_is_one_line(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1
