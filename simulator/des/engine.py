"""The discrete-event engine: replay a Schedule on SimPy and measure what an analytical sum cannot.

Models: one SimPy process per stream runs its tasks in order (ops on a stream back to back need
no process of their own); a task waits for its dependencies on other streams, a collective for
all its members; an op then holds its stream for its duration, a transfer waits its latency and
then flows through the `FluidNetwork`, sharing every link on its route with the other transfers
in flight. Memory events allocate on a pool when a task starts and free when it ends.
Outputs: step time; busy and idle time per stream; exposed transfer stall (time a compute
stream waited for a copy), collective wait; busy time, bytes and utilization per link; peak,
its time and the task at the peak per pool and per tier; OOM events; the event log
(`SimResult.events`), which the trace writer and the tests read.
Assumes: a stream starts a task the moment it is ready (no launch queue depth limit); events at
equal times are processed in the order SimPy schedules them (deterministic).
Ignores: kernel slowdown from concurrent copies (the H200 probe saw none on a GEMM stream),
CPU-side launch overhead beyond what op durations contain.
Source: SimPy 4 (processes as generators, resources own contention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import simpy

from simulator.des.resources import FluidNetwork, MemoryPools, OomEvent
from simulator.des.schedule import Op, Schedule, validate_schedule

START, END = "start", "end"


@dataclass(frozen=True)
class StreamStats:
    """Time accounting of one stream over the step."""

    name: str
    kind: str
    busy_s: float  # running a task (a transfer counts from its start, latency included)
    idle_s: float  # step_time_s - busy_s
    stall_s: float  # waiting for a transfer on another stream (exposed copy time)
    collective_wait_s: float  # waiting for the other members of a collective
    num_tasks: int


@dataclass(frozen=True)
class LinkStats:
    """Use of one shared rate over the step."""

    name: str
    kind: str
    capacity_bytes_per_s: float
    busy_s: float  # at least one flow crossing it
    bytes_moved: float
    utilization_frac: float  # bytes_moved / (capacity * step_time_s)


@dataclass(frozen=True)
class PoolStats:
    """Memory of one pool over the step."""

    name: str
    tier: str
    capacity_bytes: int
    peak_bytes: int
    peak_at_s: float
    peak_task: str  # the task whose allocation reached the peak ("<step start>" if none)
    final_bytes: int
    timeline: tuple[tuple[float, int], ...]  # (time_s, live bytes) after every change


@dataclass(frozen=True)
class SimResult:
    """What one replay measured. ``events`` is the log: (time_s, "start"|"end", task id)."""

    step_time_s: float
    streams: tuple[StreamStats, ...]
    links: tuple[LinkStats, ...]
    pools: tuple[PoolStats, ...]
    oom: tuple[OomEvent, ...]
    task_start_s: tuple[float, ...]
    task_end_s: tuple[float, ...]
    log: tuple[tuple[float, str, int], ...]
    link_load_log: tuple[tuple[float, int, float], ...]  # (time_s, link index, bytes/s)
    schedule: Schedule = field(repr=False, compare=False)

    @property
    def num_events(self) -> int:
        """Start and end of every task, plus OOM events."""
        return len(self.log) + len(self.oom)

    @property
    def stall_s(self) -> float:
        """Largest exposed transfer stall of any compute stream (the step waits for the slowest)."""
        return max((s.stall_s for s in self.streams if s.kind == "compute"), default=0.0)

    def peak_bytes_by_tier(self) -> dict[str, int]:
        """Per tier, the largest peak of one of its pools (HBM: the fullest GPU)."""
        out: dict[str, int] = {}
        for p in self.pools:
            out[p.tier] = max(out.get(p.tier, 0), p.peak_bytes)
        return out

    def pool(self, name: str) -> PoolStats:
        return next(p for p in self.pools if p.name == name)

    def stream(self, name: str) -> StreamStats:
        return next(s for s in self.streams if s.name == name)

    def events(self) -> list[tuple[float, str, str, str]]:
        """The log with names: (time_s, "start"|"end", stream, task name)."""
        tasks = self.schedule.tasks
        return [(t, kind, tasks[tid].stream, tasks[tid].name) for t, kind, tid in self.log]


def simulate(schedule: Schedule, *, record_timeline: bool = True, validate: bool = True) -> SimResult:
    """Replay ``schedule``; see the module docstring for what is measured."""
    if validate:
        validate_schedule(schedule)
    env = simpy.Environment()
    tasks = schedule.tasks
    n = len(tasks)
    stream_ix = {s.name: i for i, s in enumerate(schedule.streams)}
    link_ix = {lk.name: i for i, lk in enumerate(schedule.links)}
    pools = MemoryPools([p.name for p in schedule.pools], [p.tier for p in schedule.pools],
                        [p.capacity_bytes for p in schedule.pools], record_timeline=record_timeline)
    net = FluidNetwork(env, [lk.capacity_bytes_per_s for lk in schedule.links])
    pools.alloc(schedule.initial, 0.0, -1, "<step start>")

    # Flat per-task arrays: the hot loop touches no dataclass attribute lookups it can avoid.
    per_stream: list[list[int]] = [[] for _ in schedule.streams]
    is_op = [False] * n
    duration: list[float | None] = [None] * n  # None: a transfer
    cross_deps: list[tuple[int, ...]] = [()] * n
    allocs: list[tuple] = [()] * n
    frees: list[tuple] = [()] * n
    group = [-1] * n
    route: list[tuple[int, ...]] = [()] * n
    num_bytes = [0] * n
    latency = [0.0] * n
    rate_cap = [math.inf] * n
    names = [t.name for t in tasks]
    barrier: dict[int, list] = {}
    for t in tasks:
        i = t.tid
        s = stream_ix[t.stream]
        per_stream[s].append(i)
        if t.deps:
            cross_deps[i] = tuple(d for d in t.deps if tasks[d].stream != t.stream)
        allocs[i] = t.allocs
        frees[i] = t.frees
        if isinstance(t, Op):
            is_op[i] = True
            duration[i] = t.duration_s
            if t.group is not None:
                group[i] = t.group
                barrier.setdefault(t.group, [0, None])[0] += 1
        else:
            route[i] = tuple(link_ix[name] for name in t.route)
            num_bytes[i] = t.num_bytes
            latency[i] = t.latency_s
            rate_cap[i] = t.max_rate_bytes_per_s
    for b in barrier.values():
        b[1] = env.event()

    start_s = [math.nan] * n
    end_s = [math.nan] * n
    done = [False] * n
    waiters: dict[int, simpy.Event] = {}
    log: list[tuple[float, str, int]] = []
    nstreams = len(schedule.streams)
    busy = [0.0] * nstreams
    stall = [0.0] * nstreams
    coll_wait = [0.0] * nstreams
    p_alloc, p_free = pools.alloc, pools.free
    timeout, transfer, event = env.timeout, net.transfer, env.event
    append = log.append

    def run_stream(si: int, tids: list[int]):
        # env._now is SimPy 4's clock behind the ``now`` property (simpy is pinned < 5): read
        # directly, it saves a call on every task of the hot loop.
        prev_end = busy_s = 0.0
        for t in tids:
            deps = cross_deps[t]
            g = group[t]
            if deps or g >= 0:
                waited_copy = False
                for d in deps:
                    if not done[d]:
                        ev = waiters.get(d)
                        if ev is None:
                            ev = waiters[d] = event()
                        yield ev
                        if not is_op[d]:
                            waited_copy = True
                ready = env._now
                if g >= 0:
                    b = barrier[g]
                    b[0] -= 1
                    if b[0] == 0:
                        b[1].succeed()
                    else:
                        yield b[1]
                    coll_wait[si] += env._now - ready
                if waited_copy and ready > prev_end:
                    stall[si] += ready - prev_end
            now = env._now
            start_s[t] = now
            if allocs[t]:
                p_alloc(allocs[t], now, t, names[t])
            append((now, START, t))
            dur = duration[t]
            if dur is None:  # a transfer
                if latency[t] > 0:
                    yield timeout(latency[t])
                if num_bytes[t] > 0:
                    yield transfer(route[t], num_bytes[t], cap=rate_cap[t], tid=t)
            elif dur > 0:
                yield timeout(dur)
            end = env._now
            end_s[t] = end
            busy_s += end - now
            if frees[t]:
                p_free(frees[t], end, names[t])
            append((end, END, t))
            done[t] = True
            if t in waiters:
                waiters.pop(t).succeed()
            prev_end = end
        busy[si] = busy_s

    for si, tids in enumerate(per_stream):
        if tids:
            env.process(run_stream(si, tids))
    env.run()
    if not all(done):
        stuck = next(i for i in range(n) if not done[i])
        raise RuntimeError(f"simulation ended with task {names[stuck]} not run (deadlock)")
    step = max(end_s, default=0.0)
    net._advance()
    stream_stats = tuple(
        StreamStats(s.name, s.kind, busy[i], step - busy[i], stall[i], coll_wait[i], len(per_stream[i]))
        for i, s in enumerate(schedule.streams))
    link_stats = tuple(
        LinkStats(lk.name, lk.kind, lk.capacity_bytes_per_s, net.busy_s[i], net.bytes_moved[i],
                  net.bytes_moved[i] / (lk.capacity_bytes_per_s * step) if step > 0 else 0.0)
        for i, lk in enumerate(schedule.links))
    pool_stats = tuple(
        PoolStats(p.name, p.tier, p.capacity_bytes, pools.peak[i], pools.peak_at_s[i],
                  names[pools.peak_task[i]] if pools.peak_task[i] >= 0 else "<step start>",
                  pools.live[i], tuple(pools.timeline[i]) if pools.timeline is not None else ())
        for i, p in enumerate(schedule.pools))
    return SimResult(
        step_time_s=step,
        streams=stream_stats,
        links=link_stats,
        pools=pool_stats,
        oom=tuple(pools.oom),
        task_start_s=tuple(start_s),
        task_end_s=tuple(end_s),
        log=tuple(log),
        link_load_log=tuple(net.load_log),
        schedule=schedule,
    )
