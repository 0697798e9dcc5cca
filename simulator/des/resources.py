"""Resources of the discrete-event engine: links with fluid fair sharing, and memory pools.

Models: a `FluidNetwork` owns every shared rate of a node (one direction of a link, a link's
both-ways ceiling, host DRAM bandwidth, a drive's read or write rate). A transfer is a flow over
a route of those rates; concurrent flows share them max-min fairly (water-filling: all flows
rise together, a flow stops rising when a rate on its route is used up or it reaches its own
cap), and every time a flow starts or ends the rates are recomputed and the next completion is
rescheduled - the fluid model whose answers are closed-form on toy cases. A `MemoryPools`
tracks live bytes per pool, the peak, when it happened and the task then starting, and records
an OOM event (tensor, pool, tier, time) whenever a pool goes above its capacity.
Assumes: rates are shared instantaneously (no slow start, no packet effects); a flow's latency
is paid before it joins (`simulator.des.engine`).
Ignores: priorities between copy engines, PCIe credit effects, DRAM read/write asymmetry.
Source: max-min fair water-filling (Bertsekas and Gallager, Data Networks, 6.5.2); fluid
bandwidth sharing as in SimGrid's flow model (Casanova et al. 2008).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from hwmodels.units import UserInputError

DONE_TOLERANCE_S = 1e-12
"""A flow whose remaining bytes take less than this at its rate is complete (floating error)."""


class _Flow:
    __slots__ = ("route", "remaining", "rate", "cap", "event", "tid")

    def __init__(self, route: tuple[int, ...], num_bytes: float, cap: float, event, tid: int):
        self.route = route
        self.remaining = float(num_bytes)
        self.rate = 0.0
        self.cap = cap
        self.event = event
        self.tid = tid


def water_fill(routes: list[tuple[int, ...]], caps: list[float], capacity: list[float]) -> list[float]:
    """Max-min fair rates of flows with ``routes`` (indices into ``capacity``) and own ``caps``.

    Progressive filling by levels: every unfrozen flow has the same rate, the level at which a
    resource saturates is ``(capacity - rate of its frozen flows) / its unfrozen flows``; the
    lowest such level (or a flow's own cap) freezes the flows it binds.
    """
    n = len(routes)
    rates = [0.0] * n
    users: dict[int, list[int]] = {}
    for i, route in enumerate(routes):
        for r in route:
            u = users.get(r)
            if u is None:
                users[r] = [i]
            else:
                u.append(i)
    residual = {r: capacity[r] for r in users}
    count = {r: len(u) for r, u in users.items()}
    frozen = [False] * n
    left = n
    while left:
        level = math.inf
        binding = []
        for r, k in count.items():
            if k:
                lv = residual[r] / k
                if lv < level:
                    level, binding = lv, [r]
                elif lv == level:
                    binding.append(r)
        newly = [i for i in range(n) if not frozen[i] and caps[i] <= level]
        if newly:
            level = min(caps[i] for i in newly)
            newly = [i for i in newly if caps[i] == level]
        else:
            newly = [i for r in binding for i in users[r] if not frozen[i]]
        rate = level if level > 0 else 0.0
        for i in newly:
            if frozen[i]:
                continue
            frozen[i] = True
            left -= 1
            rates[i] = rate
            for r in routes[i]:
                residual[r] -= rate
                count[r] -= 1
    return rates


class FluidNetwork:
    """SimPy resource: flows over shared rates, re-shared whenever one starts or ends.

    ``transfer`` returns an event that succeeds when the flow's last byte has arrived. The
    network keeps, per rate: seconds with at least one flow (``busy_s``), bytes carried, and a
    log of its total load over time (``load_log``: (time_s, index, bytes_per_s)).
    """

    def __init__(self, env: simpy.Environment, capacity_bytes_per_s: list[float]):
        self.env = env
        self.capacity = list(capacity_bytes_per_s)
        self.flows: list[_Flow] = []
        self.busy_s = [0.0] * len(self.capacity)
        self.bytes_moved = [0.0] * len(self.capacity)
        self.load = [0.0] * len(self.capacity)
        self.load_log: list[tuple[float, int, float]] = []
        self.num_reshares = 0
        self._last = 0.0
        self._gen = 0
        self._pending = False
        self._loaded: list[int] = []  # rates with load > 0

    def transfer(self, route: tuple[int, ...], num_bytes: float, *, cap: float = math.inf,
                 tid: int = -1) -> simpy.Event:
        event = self.env.event()
        if num_bytes <= 0:
            event.succeed()
            return event
        self._advance()
        self.flows.append(_Flow(route, num_bytes, cap, event, tid))
        self._request_reshare()
        return event

    def _request_reshare(self) -> None:
        """Re-share once all starts already scheduled for this instant have joined (a new flow
        has rate 0 until then; no time passes, so nothing is lost)."""
        if self._pending:
            return
        self._pending = True
        self._gen += 1  # a completion scheduled before this start is now stale
        self.env.timeout(0).callbacks.append(self._deferred_reshare)

    def _deferred_reshare(self, _event) -> None:
        self._pending = False
        self._advance()
        self._reshare()

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
            load, busy, moved = self.load, self.busy_s, self.bytes_moved
            for r in self._loaded:
                busy[r] += dt
                moved[r] += load[r] * dt
        self._last = now

    def _reshare(self) -> None:
        self.num_reshares += 1
        flows = self.flows
        rates = water_fill([f.route for f in flows], [f.cap for f in flows], self.capacity)
        load = self.load
        touched = dict.fromkeys(self._loaded, 0.0)
        for f, rate in zip(flows, rates, strict=True):
            f.rate = rate
            for r in f.route:
                touched[r] = touched.get(r, 0.0) + rate
        now = self.env.now
        log = self.load_log
        for r, new in touched.items():
            if load[r] != new:
                log.append((now, r, new))
                load[r] = new
        self._loaded = [r for r, x in touched.items() if x > 0]
        self._gen += 1
        if not flows:
            return
        dt = min((f.remaining / f.rate if f.rate > 0 else math.inf) for f in flows)
        if math.isinf(dt):
            raise RuntimeError("fluid network: active flows with no rate (a zero capacity)")
        gen = self._gen
        self.env.timeout(dt).callbacks.append(lambda _ev: self._on_wake(gen))

    def _on_wake(self, gen: int) -> None:
        if gen != self._gen:  # superseded by a later start or end
            return
        self._advance()
        first = min(self.flows, key=lambda f: f.remaining / f.rate if f.rate > 0 else math.inf)
        done = [f for f in self.flows
                if f is first or f.rate > 0 and f.remaining <= f.rate * DONE_TOLERANCE_S]
        self.flows = [f for f in self.flows if not (f is first or f in done)]
        for f in done:
            f.remaining = 0.0
        self._reshare()
        for f in done:
            f.event.succeed()


@dataclass(frozen=True, slots=True)
class OomEvent:
    """A pool went above its capacity: which tensor did it, where, when."""

    time_s: float
    pool: str
    tier: str
    tensor: str
    task: str
    live_bytes: int
    capacity_bytes: int


class MemoryPools:
    """Live bytes per pool, peaks, OOM events and (optionally) the timeline of every change."""

    def __init__(self, names: list[str], tiers: list[str], capacity_bytes: list[int], *,
                 record_timeline: bool = True):
        n = len(names)
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        self.tiers = tiers
        self.capacity = capacity_bytes
        self.live = [0] * n
        self.peak = [0] * n
        self.peak_at_s = [0.0] * n
        self.peak_task = [-1] * n  # task starting at the peak; -1: live at step start
        self.over = [False] * n
        self.oom: list[OomEvent] = []
        self.timeline: list[list[tuple[float, int]]] | None = (
            [[(0.0, 0)] for _ in range(n)] if record_timeline else None)

    def alloc(self, events, now: float, tid: int, task: str) -> None:
        """Allocate every MemEvent of ``events`` (a task's allocations) at ``now``."""
        index, live_of, peak = self.index, self.live, self.peak
        timeline = self.timeline
        for e in events:
            pool = index[e.pool]
            live = live_of[pool] + e.num_bytes
            live_of[pool] = live
            if timeline is not None:
                timeline[pool].append((now, live))
            if live > peak[pool]:
                peak[pool] = live
                self.peak_at_s[pool] = now
                self.peak_task[pool] = tid
                if live > self.capacity[pool] and not self.over[pool]:
                    self._oom(pool, e.tensor, now, task)
            elif live > self.capacity[pool] and not self.over[pool]:
                self._oom(pool, e.tensor, now, task)

    def _oom(self, pool: int, tensor: str, now: float, task: str) -> None:
        self.over[pool] = True
        self.oom.append(OomEvent(now, self.names[pool], self.tiers[pool], tensor, task,
                                 self.live[pool], self.capacity[pool]))

    def free(self, events, now: float, task: str) -> None:
        """Free every MemEvent of ``events`` (a task's frees) at ``now``."""
        index, live_of, timeline = self.index, self.live, self.timeline
        for e in events:
            pool = index[e.pool]
            live = live_of[pool] - e.num_bytes
            if live < 0:
                raise UserInputError(f"schedule: task {task} frees {e.tensor} ({e.num_bytes} bytes) "
                                     f"from pool {e.pool}, which has {live_of[pool]} live")
            live_of[pool] = live
            if timeline is not None:
                timeline[pool].append((now, live))
            if live <= self.capacity[pool]:
                self.over[pool] = False
