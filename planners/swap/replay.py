"""The discrete-event replay of an applied plan: compute, copy streams, links, HBM and host pools.

Models: every copy as a DES transfer on its GPU's D2H or H2D stream over its host route (links
shared with the other GPUs' copies); compute waits where a copy must be done.
Assumes: every GPU of the node that the job uses runs the same schedule. Ignores: CXL / NVMe
routes for activations. Source: `simulator.des`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from planners.swap.apply import AppliedPlan
from simulator.workload import Phase


@dataclass(frozen=True)
class Replay:
    """What the discrete-event replay of one plan measured."""

    step_time_s: float
    stall_s: float
    recompute_s: float
    peak_hbm_bytes: int  # one GPU's allocated peak, runtime workspaces included
    peak_host_bytes: int  # the node's host pool (every simulated GPU's copies)
    peak_op: str
    model_flops: float
    _sim: object = field(repr=False, compare=False)  # simulator.des.SimResult, or None until asked
    replayed_by: str = "simulator.des"
    _make_sim: Callable[[], object] | None = field(default=None, repr=False, compare=False)

    @property
    def sim(self) -> object:
        """The node's simulator.des.SimResult (trace, plot): replayed on first use when the
        figures above came from one GPU's replay (see `replay`)."""
        if self._make_sim is not None:
            object.__setattr__(self, "_sim", self._make_sim())
            object.__setattr__(self, "_make_sim", None)
        return self._sim


def replay(applied: AppliedPlan, node, *, num_gpus: int, tier: str = "host",
           record_timeline: bool = True) -> Replay:
    """Replay the transformed Workload on ``num_gpus`` GPUs of ``node`` with the plan's copies.

    Each copy is a DES transfer on the GPU's D2H or H2D copy stream (FIFO) over its host route
    (links shared with the other GPUs' copies): a D2H starts after its ``ready_op`` and reserves
    host memory; an H2D starts when its ``ready_op`` starts (and after its D2H) and frees it;
    the compute op ``needed_op`` waits for the copy. HBM allocations are the Workload's own.
    ``tier``: where the copies go (``host``; ``cxl`` / ``nvme`` for what-ifs: a Plan's tier is
    host DRAM), see `simulator.des.schedule.offload_device`.
    """
    if 1 < num_gpus <= node.num_gpus and not applied.transfers:
        # Without host copies the GPUs share no link or pool, and every GPU reaches each
        # collective at the same moment (one schedule): one GPU's replay gives every figure
        # exactly; the node's replay runs only when its trace or plot is asked for.
        one = _replay_des(applied, node, num_gpus=1, tier=tier, record_timeline=False)
        return replace(one, _sim=None, _make_sim=lambda: _replay_des(
            applied, node, num_gpus=num_gpus, tier=tier, record_timeline=record_timeline).sim)
    return _replay_des(applied, node, num_gpus=num_gpus, tier=tier, record_timeline=record_timeline)


def _replay_des(applied: AppliedPlan, node, *, num_gpus: int, tier: str, record_timeline: bool) -> Replay:
    from simulator.des import MemEvent, schedule_from_workload, simulate
    from simulator.des import Transfer as DesTransfer
    from simulator.des.schedule import device_route, offload_device

    wl = applied.workload
    sched = schedule_from_workload(wl, node, num_gpus=num_gpus)
    tasks = list(sched.tasks)
    extra: dict[int, list[int]] = {}
    order = sorted(range(len(applied.transfers)),
                   key=lambda k: (applied.transfers[k].direction == "h2d",
                                  applied.transfers[k].ready_op, -applied.transfers[k].layer))
    for g in range(num_gpus):
        ctids = sched.compute_tids[g]
        device = offload_device(node, tier, g)
        routes = {d: device_route(node, g, device, d) for d in ("d2h", "h2d")}
        d2h_tid: dict[tuple[int, str], int] = {}
        for k in order:
            tr = applied.transfers[k]
            route = routes[tr.direction]
            host = MemEvent(device, tr.num_bytes, f"layers.{tr.layer}.offloaded")
            tid = len(tasks)
            deps: tuple[int, ...]
            allocs: tuple[MemEvent, ...]
            frees: tuple[MemEvent, ...]
            if tr.direction == "d2h":
                deps = (ctids[tr.ready_op],)
                allocs, frees = (host,), ()
                d2h_tid[(tr.layer, tr.stream)] = tid
            else:
                deps = (d2h_tid[(tr.layer, tr.stream)],) + ((ctids[tr.ready_op - 1],) if tr.ready_op else ())
                allocs, frees = (), (host,)
            tasks.append(DesTransfer(tid, f"{tr.direction} layers.{tr.layer}", f"gpu{g}.{tr.direction}",
                                     tr.num_bytes, f"gpu{g}.hbm" if tr.direction == "d2h" else device,
                                     device if tr.direction == "d2h" else f"gpu{g}.hbm",
                                     route.links, route.latency_s, deps, allocs, frees, tr.layer))
            extra.setdefault(ctids[tr.needed_op], []).append(tid)
    for tid, later in extra.items():
        tasks[tid] = replace(tasks[tid], deps=tasks[tid].deps + tuple(later))
    sim = simulate(replace(sched, tasks=tuple(tasks)), record_timeline=record_timeline)
    hbm = sim.pool("gpu0.hbm")
    model_flops = 3.0 * sum(op.model_flops for op in wl.ops if op.phase in (Phase.FWD, Phase.LOSS))
    recompute = sum(op.time_s or 0.0 for op in wl.ops if op.phase == Phase.RECOMPUTE)
    return Replay(step_time_s=sim.step_time_s, stall_s=sim.stall_s, recompute_s=recompute,
                  peak_hbm_bytes=hbm.peak_bytes, peak_host_bytes=sim.pool("host").peak_bytes,
                  peak_op=hbm.peak_task, model_flops=model_flops, _sim=sim)
