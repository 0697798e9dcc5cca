"""The discrete-event replay of an applied plan: compute, copy streams, links, HBM and host pools.

Models: every copy as a DES transfer on its GPU's D2H or H2D stream over its route to its tier
(host DRAM, or a CXL card / NVMe drive through the host: links shared with the other GPUs'
copies and the device's read / write rate); compute waits where a copy must be done. Model
states off HBM (`planners.swap.states`): parameter fetches on a third copy stream per GPU
(H2D, sharing the link with the activations' prefetches), gradient copies on a fourth (D2H),
the CPU optimizer step per layer on the host's CPU stream once the layer's gradients are on
the host (states on CXL / NVMe read before and written after it on the host's read and write
streams, over the device's rates), updated parameters H2D after it; the states' bytes are live
on their tiers' pools from the start, so the pools' peaks are the tiers' peaks.
Assumes: every GPU of the node that the job uses runs the same schedule. Source: `simulator.des`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from planners.swap.apply import AppliedPlan
from planners.swap.states import StatesApplied
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
    tier_peak_bytes: dict[str, int] = field(default_factory=dict)  # per tier (hbm: one GPU), pools' peaks

    @property
    def sim(self) -> object:
        """The node's simulator.des.SimResult (trace, plot): replayed on first use when the
        figures above came from one GPU's replay (see `replay`)."""
        if self._make_sim is not None:
            object.__setattr__(self, "_sim", self._make_sim())
            object.__setattr__(self, "_make_sim", None)
        return self._sim


def replay(applied: AppliedPlan, node, *, num_gpus: int, tier: str | None = None,
           record_timeline: bool = True, states: StatesApplied | None = None) -> Replay:
    """Replay the transformed Workload on ``num_gpus`` GPUs of ``node`` with the plan's copies.

    Each copy is a DES transfer on the GPU's D2H or H2D copy stream (FIFO) over its host route
    (links shared with the other GPUs' copies): a D2H starts after its ``ready_op`` and reserves
    host memory; an H2D starts when its ``ready_op`` starts (and after its D2H) and frees it;
    the compute op ``needed_op`` waits for the copy. HBM allocations are the Workload's own.
    ``tier``: where every activation copy goes (a what-if: ``host``, ``cxl``, ``nvme``); None:
    each copy's own tier (the plan's), see `simulator.des.schedule.offload_device`.
    ``states``: the plan's model states off HBM (`planners.swap.states.apply_model_states` on
    the base Workload; its op indices are moved onto ``applied``'s here).
    """
    if states is not None and not (states.copies or states.cpu_steps or states.tier_bytes):
        states = None
    if states is not None:
        states = states.moved(applied.op_index)
    if 1 < num_gpus <= node.num_gpus and not applied.transfers and states is None:
        # Without host copies the GPUs share no link or pool, and every GPU reaches each
        # collective at the same moment (one schedule): one GPU's replay gives every figure
        # exactly; the node's replay runs only when its trace or plot is asked for.
        one = _replay_des(applied, node, num_gpus=1, tier=tier, record_timeline=False)
        return replace(one, _sim=None, _make_sim=lambda: _replay_des(
            applied, node, num_gpus=num_gpus, tier=tier, record_timeline=record_timeline).sim)
    return _replay_des(applied, node, num_gpus=num_gpus, tier=tier, record_timeline=record_timeline,
                       states=states)


def _replay_des(applied: AppliedPlan, node, *, num_gpus: int, tier: str | None, record_timeline: bool,
                states: StatesApplied | None = None) -> Replay:
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
        routes: dict[tuple[str, str], object] = {}

        def route_to(tier_name: str, direction: str, g: int = g, routes: dict = routes):
            dev = offload_device(node, tier_name, g)
            if (dev, direction) not in routes:
                routes[(dev, direction)] = device_route(node, g, dev, direction)
            return dev, routes[(dev, direction)]

        d2h_tid: dict[tuple[int, str, str], int] = {}
        for k in order:
            tr = applied.transfers[k]
            device, route = route_to(tier or tr.tier, tr.direction)
            host = MemEvent(device, tr.num_bytes, f"layers.{tr.layer}.offloaded")
            tid = len(tasks)
            deps: tuple[int, ...]
            allocs: tuple[MemEvent, ...]
            frees: tuple[MemEvent, ...]
            if tr.direction == "d2h":
                deps = (ctids[tr.ready_op],)
                allocs, frees = (host,), ()
                d2h_tid[(tr.layer, tr.stream, tr.tier)] = tid
            else:
                deps = (d2h_tid[(tr.layer, tr.stream, tr.tier)],) + ((ctids[tr.ready_op - 1],) if tr.ready_op else ())
                allocs, frees = (), (host,)
            tasks.append(DesTransfer(tid, f"{tr.direction} layers.{tr.layer}", f"gpu{g}.{tr.direction}",
                                     tr.num_bytes, f"gpu{g}.hbm" if tr.direction == "d2h" else device,
                                     device if tr.direction == "d2h" else f"gpu{g}.hbm",
                                     route.links, route.latency_s, deps, allocs, frees, tr.layer))
            extra.setdefault(ctids[tr.needed_op], []).append(tid)
    streams, initial = sched.streams, sched.initial
    if states is not None:
        streams, initial = _add_states(states, node, sched, tasks, extra, num_gpus=num_gpus)
    for tid, later in extra.items():
        tasks[tid] = replace(tasks[tid], deps=tasks[tid].deps + tuple(later))
    sim = simulate(replace(sched, tasks=tuple(tasks), streams=streams, initial=initial),
                   record_timeline=record_timeline)
    hbm = sim.pool("gpu0.hbm")
    model_flops = 3.0 * sum(op.model_flops for op in wl.ops if op.phase in (Phase.FWD, Phase.LOSS))
    recompute = sum(op.time_s or 0.0 for op in wl.ops if op.phase == Phase.RECOMPUTE)
    return Replay(step_time_s=sim.step_time_s, stall_s=sim.stall_s, recompute_s=recompute,
                  peak_hbm_bytes=hbm.peak_bytes, peak_host_bytes=sim.pool("host").peak_bytes,
                  peak_op=hbm.peak_task, model_flops=model_flops, _sim=sim,
                  tier_peak_bytes={**{t: b for t, b in sorted(sim.peak_bytes_by_tier().items()) if b},
                                   "hbm": hbm.peak_bytes})


def _add_states(states: StatesApplied, node, sched, tasks: list, extra: dict[int, list[int]], *,
                num_gpus: int):
    """Append the model states' copies and CPU steps to ``tasks`` (see the module docstring);
    returns the schedule's streams and initial memory with the states' own."""
    from simulator.des import MemEvent, Op, Stream
    from simulator.des import Transfer as DesTransfer
    from simulator.des.schedule import device_route, offload_device

    streams = list(sched.streams)
    initial = list(sched.initial)
    rate = node.host_memory.cpu_adamw_bytes_per_s
    streams += [Stream("cpu.optimizer", "cpu", "cpu0"), Stream("cpu.read", "cpu", "cpu0"),
                Stream("cpu.write", "cpu", "cpu0")]
    for g in range(num_gpus):
        ctids = sched.compute_tids[g]
        streams += [Stream(f"gpu{g}.params", "h2d", f"gpu{g}"), Stream(f"gpu{g}.grads", "d2h", f"gpu{g}")]
        for tier_name, nbytes in states.tier_bytes.items():
            initial.append(MemEvent(offload_device(node, tier_name, g), nbytes, f"model_states.{tier_name}"))
        grad_tid: dict[int, int] = {}
        updated: list = []
        # each copy stream runs its copies in the order they become ready
        for c in sorted(states.copies, key=lambda c: (c.ready_op, c.needed_op)):
            if c.kind == "updated_params":
                updated.append(c)
                continue
            dev = offload_device(node, c.tier, g)
            route = device_route(node, g, dev, c.direction)
            tid = len(tasks)
            if c.direction == "h2d":
                deps = (ctids[c.ready_op - 1],) if c.ready_op > 0 else ()
                src, dst, stream = dev, f"gpu{g}.hbm", f"gpu{g}.params"
            else:
                deps = (ctids[c.ready_op],)
                src, dst, stream = f"gpu{g}.hbm", dev, f"gpu{g}.grads"
                grad_tid[c.layer] = tid
            tasks.append(DesTransfer(tid, f"{c.kind} layers.{c.layer}", stream, c.num_bytes, src, dst,
                                     route.links, route.latency_s, deps, layer=c.layer))
            if c.needed_op >= 0:
                extra.setdefault(ctids[c.needed_op], []).append(tid)
        # one optimizer thread steps the layers in the order their gradients arrive, each once its
        # gradients are on the host and the previous layer is done: states off the host are read
        # into the one staging buffer, stepped there and written back before the next layer starts
        step_tid: dict[int, int] = {}
        steps = sorted(states.cpu_steps, key=lambda s: grad_tid.get(s.layer, -1))
        done: int | None = None  # the thread's last task
        for st in steps:
            after: tuple[int, ...] = (grad_tid[st.layer],) if st.layer in grad_tid else ()
            after += (done,) if done is not None else ()
            state_dev = offload_device(node, st.state_tier, g) if st.state_tier != "host" else None
            if state_dev is not None:
                rid = len(tasks)
                tasks.append(DesTransfer(rid, f"read states layers.{st.layer}", "cpu.read", st.state_bytes,
                                         state_dev, "host", (f"{state_dev}.read",), 0.0, after, layer=st.layer))
                after = (rid,)
            sid = len(tasks)
            tasks.append(Op(sid, f"cpu_adamw layers.{st.layer}", "cpu.optimizer", st.step_bytes / rate, after,
                            phase="optim", layer=st.layer))
            step_tid[st.layer] = done = sid
            if state_dev is not None:
                done = len(tasks)
                tasks.append(DesTransfer(done, f"write states layers.{st.layer}", "cpu.write",
                                         st.state_bytes, "host", state_dev, (f"{state_dev}.write",), 0.0, (sid,),
                                         layer=st.layer))
        for c in sorted(updated, key=lambda c: step_tid[c.layer]):  # in the order the CPU steps them
            route = device_route(node, g, "host", "h2d")
            tasks.append(DesTransfer(len(tasks), f"updated_params layers.{c.layer}", f"gpu{g}.params", c.num_bytes,
                                     "host", f"gpu{g}.hbm", route.links, route.latency_s,
                                     (step_tid[c.layer],), layer=c.layer))
    return tuple(streams), tuple(initial)
