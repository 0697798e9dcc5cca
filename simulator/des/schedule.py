"""Schedule: what the discrete-event engine replays - ops, transfers, memory events, resources.

Models: streams (a GPU's compute stream, its copy engines one per direction, a computational
storage drive's compute) that each run their tasks in order, back to back; tasks are ops (a
duration, or a collective that starts on every member GPU together) and transfers (bytes moved
between two memory pools over a route of shared links); every task may depend on tasks of other
streams; memory events allocate on a pool when a task starts and free when it ends (the
Workload's convention). Resources are memory pools per tier with a capacity and link
capacities (bytes/s) that concurrent transfers share (see `simulator.des.resources`).
`schedule_from_workload` maps a Workload's ops in order onto one compute stream per GPU and its
allocations onto that GPU's HBM pool (the caching allocator's 512-byte rounding, plus
`RUNTIME_WORKSPACE_BYTES` live from the start), so that with no transfers the replay equals
`simulator.estimator.estimate_training`. `add_offload` adds a per-layer offload of saved
activations (D2H after the layer's forward, H2D prefetch before its backward) to host DRAM,
CXL or NVMe.
Assumes: every simulated GPU runs the same per-GPU program (tp/cp/dp ranks of one node); a
collective is a barrier over all simulated GPUs and then lasts the time the Workload gives it,
which comes from `hwmodels.collectives` (the estimator's cost functions); a D2H copy of a
layer's saved tensors may start once that layer's forward has ended (its forward readers are
its own ops), and the layer's backward (or recompute) starts only once they are back.
Link capacities per direction are the achieved copy rates of `hwmodels.transfer.copy_fit`
(the node's measured profile on each GPU's host path and NVLink, datasheet times efficiency
elsewhere); the both-ways ceiling of a link is the sum of the two directions' rates when both
run (`copy_fit(concurrent_opposite=True)`); host DRAM bandwidth is one resource every
GPU<->host copy crosses (never below what the node's measured copies moved through it); a CXL
card or drive has a read and a write rate.
Ignores: GPUs of other nodes (identical, and their traffic does not cross this node's
links), pinned-pool allocation cost, allocator fragmentation (reserved > allocated).
Source: MEMO (Zhao et al. 2024): offload after a layer's forward on a D2H stream, prefetch of
layer i during the backward of layer i+1 on an H2D stream, events guarding reuse.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from hwmodels.units import UserInputError
from simulator.movement import step_movements
from simulator.workload import Phase, Role, Workload, allocator_rounded_bytes

TIERS: tuple[str, ...] = ("hbm", "host", "cxl", "nvme", "csd")
STREAM_KINDS: tuple[str, ...] = ("compute", "d2h", "h2d", "csd", "cpu")
"""``cpu``: the host's work for a step (a CPU optimizer step, its reads and writes of states on
a CXL card or a drive)."""
_BACKWARD_PHASES = (Phase.BWD, Phase.RECOMPUTE)


@dataclass(frozen=True, slots=True)
class Stream:
    """An in-order queue of tasks: a CUDA stream, a copy engine, or a drive's compute engine."""

    name: str  # e.g. "gpu0.compute", "gpu0.d2h", "gpu0.h2d", "csd0.compute", "cpu.optimizer"
    kind: str  # one of STREAM_KINDS
    device: str  # "gpu0", "csd0"


@dataclass(frozen=True, slots=True)
class Pool:
    """Memory of one device in one tier; going above ``capacity_bytes`` is an OOM event."""

    name: str  # "gpu0.hbm", "host", "cxl0", "nvme0"
    tier: str  # one of TIERS
    capacity_bytes: int


@dataclass(frozen=True, slots=True)
class Link:
    """A shared rate: one direction of a link, a link's both-ways ceiling, DRAM, a drive."""

    name: str  # "gpu0>pcie_sw0", "gpu0<>pcie_sw0", "host_memory", "cxl0.write"
    capacity_bytes_per_s: float
    kind: str = "link"  # "link" | "ceiling" | "memory" | "device"


@dataclass(frozen=True, slots=True)
class MemEvent:
    """``num_bytes`` allocated on (or freed from) ``pool``, for tensor ``tensor``."""

    pool: str
    num_bytes: int
    tensor: str


@dataclass(frozen=True, slots=True)
class Op:
    """Work on one stream for ``duration_s``. Ops sharing a ``group`` are one collective: each
    member starts when every member is ready."""

    tid: int
    name: str
    stream: str
    duration_s: float
    deps: tuple[int, ...] = ()  # tasks of other streams that must end first
    allocs: tuple[MemEvent, ...] = ()  # at start
    frees: tuple[MemEvent, ...] = ()  # at end
    group: int | None = None
    phase: str = ""
    layer: int | None = None


@dataclass(frozen=True, slots=True)
class Transfer:
    """``num_bytes`` from pool ``src`` to pool ``dst`` over ``route`` (link names), after a fixed
    ``latency_s``; its rate is shared fairly with the transfers that use the same links."""

    tid: int
    name: str
    stream: str
    num_bytes: int
    src: str
    dst: str
    route: tuple[str, ...]
    latency_s: float = 0.0
    deps: tuple[int, ...] = ()
    allocs: tuple[MemEvent, ...] = ()
    frees: tuple[MemEvent, ...] = ()
    layer: int | None = None
    max_rate_bytes_per_s: float = math.inf  # the flow's own cap (a pageable copy, one engine)


Task = Op | Transfer


@dataclass(frozen=True)
class Schedule:
    """Everything one replay needs. Task ``tid`` is its index in ``tasks``; a stream runs its
    tasks in the order they appear there."""

    streams: tuple[Stream, ...]
    tasks: tuple[Task, ...]
    pools: tuple[Pool, ...]
    links: tuple[Link, ...] = ()
    initial: tuple[MemEvent, ...] = ()  # live at t = 0
    compute_tids: tuple[tuple[int, ...], ...] = ()  # per GPU: the task of each Workload op
    workload: Workload | None = field(default=None, compare=False, repr=False)
    node: object = field(default=None, compare=False, repr=False)  # hwmodels NodeSpec
    meta: dict = field(default_factory=dict, compare=False)


def validate_schedule(schedule: Schedule) -> None:
    """Raise UserInputError (one line naming the task and field) if the schedule cannot run:
    an unknown stream, pool or link, a negative size or duration, a dependency on a missing
    task, or a dependency cycle (stream order and collective groups included)."""
    streams = {s.name for s in schedule.streams}
    for s in schedule.streams:
        if s.kind not in STREAM_KINDS:
            raise UserInputError(f"schedule.streams.{s.name}.kind: unknown {s.kind!r} "
                                 f"(use one of {', '.join(STREAM_KINDS)})")
    pools = {p.name for p in schedule.pools}
    for p in schedule.pools:
        if p.tier not in TIERS:
            raise UserInputError(f"schedule.pools.{p.name}.tier: unknown {p.tier!r} "
                                 f"(use one of {', '.join(TIERS)})")
        if p.capacity_bytes <= 0:
            raise UserInputError(f"schedule.pools.{p.name}.capacity_bytes: must be > 0, "
                                 f"got {p.capacity_bytes}")
    links = {lk.name for lk in schedule.links}
    for lk in schedule.links:
        if not lk.capacity_bytes_per_s > 0:
            raise UserInputError(f"schedule.links.{lk.name}.capacity_bytes_per_s: must be > 0, "
                                 f"got {lk.capacity_bytes_per_s}")
    n = len(schedule.tasks)

    def where(t: Task) -> str:
        return f"schedule.tasks[{t.tid}] ({t.name})"

    for i, t in enumerate(schedule.tasks):
        if t.tid != i:
            raise UserInputError(f"schedule.tasks[{i}].tid: must equal its index, got {t.tid}")
        if t.stream not in streams:
            raise UserInputError(f"{where(t)}.stream: unknown stream {t.stream!r}")
        for d in t.deps:
            if not 0 <= d < n or d == i:
                raise UserInputError(f"{where(t)}.deps: no task {d} to depend on")
        for ev in (*t.allocs, *t.frees):
            if ev.pool not in pools:
                raise UserInputError(f"{where(t)}: tensor {ev.tensor} on unknown pool {ev.pool!r}")
            if ev.num_bytes < 0:
                raise UserInputError(f"{where(t)}: tensor {ev.tensor} has negative size "
                                     f"{ev.num_bytes} bytes")
        if isinstance(t, Op):
            if not t.duration_s >= 0 or math.isinf(t.duration_s):
                raise UserInputError(f"{where(t)}.duration_s: must be finite and >= 0, "
                                     f"got {t.duration_s}")
        else:
            if t.num_bytes < 0:
                raise UserInputError(f"{where(t)}.num_bytes: must be >= 0, got {t.num_bytes}")
            if not t.latency_s >= 0:
                raise UserInputError(f"{where(t)}.latency_s: must be >= 0, got {t.latency_s}")
            if not t.max_rate_bytes_per_s > 0:
                raise UserInputError(f"{where(t)}.max_rate_bytes_per_s: must be > 0, "
                                     f"got {t.max_rate_bytes_per_s}")
            for name in t.route:
                if name not in links:
                    raise UserInputError(f"{where(t)}.route: unknown link {name!r}")
            if t.num_bytes > 0 and not t.route:
                raise UserInputError(f"{where(t)}.route: a transfer of bytes needs a link")
            for end in (t.src, t.dst):
                if end not in pools:
                    raise UserInputError(f"{where(t)}: unknown pool {end!r}")
    for ev in schedule.initial:
        if ev.pool not in pools:
            raise UserInputError(f"schedule.initial: tensor {ev.tensor} on unknown pool {ev.pool!r}")
        if ev.num_bytes < 0:
            raise UserInputError(f"schedule.initial: tensor {ev.tensor} has negative size {ev.num_bytes}")
    _check_acyclic(schedule)


def _check_acyclic(schedule: Schedule) -> None:
    """Kahn's algorithm over deps + stream order, with each collective group as one node."""
    tasks = schedule.tasks
    n = len(tasks)
    node_of = list(range(n))
    groups: dict[int, list[int]] = defaultdict(list)
    for t in tasks:
        if isinstance(t, Op) and t.group is not None:
            groups[t.group].append(t.tid)
    for members in groups.values():
        streams = [tasks[m].stream for m in members]
        if len(set(streams)) != len(streams):
            raise UserInputError(f"schedule.tasks[{members[0]}] ({tasks[members[0]].name}).group: "
                                 "two members of one collective on the same stream")
        for m in members:
            node_of[m] = members[0]
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    last_on: dict[str, int] = {}
    for t in tasks:
        i = node_of[t.tid]
        prev = last_on.get(t.stream)
        last_on[t.stream] = t.tid
        preds = t.deps if prev is None else (prev, *t.deps)
        for d in preds:
            a = node_of[d]
            if a == i:  # waits for a member of its own collective
                raise UserInputError(f"schedule: dependency cycle: {t.name} waits for "
                                     f"{tasks[d].name} of its own collective")
            succ[a].append(i)
            indeg[i] += 1
    nodes = set(node_of)
    ready = [v for v in nodes if indeg[v] == 0]
    seen = 0
    while ready:
        v = ready.pop()
        seen += 1
        for w in succ[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    if seen < len(nodes):
        stuck = sorted(v for v in nodes if indeg[v] > 0)
        names = ", ".join(tasks[v].name for v in stuck[:3])
        raise UserInputError(f"schedule: dependency cycle among {len(stuck)} tasks (e.g. {names})")


# ---- node resources -------------------------------------------------------------------------


def _edge_rates(node, edge, d2h_from) -> tuple[float, float, float]:
    """(a->b rate, b->a rate, both-ways ceiling) of one topology edge, bytes/s.

    ``d2h_from`` maps each edge on a GPU's host path to its GPU-side end.
    """
    from hwmodels.transfer import copy_fit

    link = node.links[edge.link]
    if edge in d2h_from:  # the node's profile measured GPU<->host copies over this path
        a_is_gpu_side = d2h_from[edge] == edge.a
        dirs, profile = (("d2h", "h2d") if a_is_gpu_side else ("h2d", "d2h")), node.profile
    elif link.kind in ("nvlink", "c2c"):
        dirs, profile = ("p2p", "p2p"), node.profile
    else:
        dirs, profile = ("h2d", "h2d"), None

    def rate(direction: str, concurrent_opposite: bool = False) -> float:
        bw = copy_fit(link=link, direction=direction, concurrent_opposite=concurrent_opposite,
                      profile=profile).bandwidth_bytes_per_s
        assert bw is not None  # copy_fit always fits a bandwidth
        return bw

    one = [rate(d) for d in dirs]
    both = sum(rate(d, concurrent_opposite=True) for d in dirs)
    return one[0], one[1], both


def _gpu_side_ends(node) -> dict:
    """Each edge of a GPU's host path -> its end nearer the GPU."""
    out: dict = {}
    for g in range(node.num_gpus):
        here = f"gpu{g}"
        for e in node.host_path(g):
            out.setdefault(e, here)
            here = e.b if here == e.a else e.a
    return out


def node_links(node) -> tuple[Link, ...]:
    """Every shared rate of ``node``: each topology edge per direction and both ways, host DRAM,
    and each CXL card's / drive's read and write rate."""
    from hwmodels.transfer import device_rate_bytes_per_s

    d2h_from = _gpu_side_ends(node)
    out: list[Link] = []
    measured_host_s = 0.0  # the most one GPU's measured copies moved through host DRAM, bytes/s
    for edge in node.topology:
        ab, ba, both = _edge_rates(node, edge, d2h_from)
        out += [Link(f"{edge.a}>{edge.b}", ab), Link(f"{edge.b}>{edge.a}", ba),
                Link(f"{edge.a}<>{edge.b}", both, "ceiling")]
        if edge in d2h_from and node.profile is not None:
            measured_host_s = max(measured_host_s, both)
    # A rate measured through DRAM is a lower bound of DRAM's: on the reference VM the CPU copy
    # figure (72.4 GB/s, 16 threads) is below the 89-97 GB/s its GPU copies reached both ways.
    out.append(Link("host_memory", max(node.host_memory.bandwidth_bytes_per_s, measured_host_s),
                    "memory"))
    for dev in node.device_ids():
        if dev.startswith(("cxl", "nvme", "csd")):
            out.append(Link(f"{dev}.read", device_rate_bytes_per_s(node, dev, "h2d"), "device"))
            out.append(Link(f"{dev}.write", device_rate_bytes_per_s(node, dev, "d2h"), "device"))
    return tuple(out)


def node_pools(node, num_gpus: int) -> tuple[Pool, ...]:
    """HBM of each simulated GPU, the node's host DRAM, and each CXL card and drive."""
    pools = [Pool(f"gpu{g}.hbm", "hbm", node.gpu.hbm_capacity_bytes) for g in range(num_gpus)]
    pools.append(Pool("host", "host", node.host_memory.capacity_bytes))
    for kind, items in (("cxl", node.cxl), ("nvme", node.nvme), ("csd", node.csd)):
        pools += [Pool(f"{kind}{k}", kind, spec.capacity_bytes) for k, spec in enumerate(items)]
    return tuple(pools)


@dataclass(frozen=True, slots=True)
class Route:
    """The links a GPU<->device copy crosses (in flow direction) and its fixed latency."""

    links: tuple[str, ...]
    latency_s: float


def device_route(node, gpu_index: int, device: str, direction: str) -> Route:
    """Route of a copy between ``gpu<gpu_index>`` and ``device`` (``"host"``, ``cxl<k>``,
    ``nvme<k>``, ``csd<k>``); ``direction`` ``"d2h"`` (GPU -> device) or ``"h2d"``.

    Alone on its route, a copy takes `hwmodels.transfer.tier_transfer_time_s`: the latency is
    that function's (the host link's fitted latency; or the path's link latencies plus the
    device's access latency) and the rate the smallest capacity on the route.
    """
    from hwmodels.transfer import copy_fit, device_latency_s

    if direction not in ("h2d", "d2h"):
        raise UserInputError(f"direction: expected h2d or d2h, got {direction!r}")
    gpu = f"gpu{gpu_index}"
    if device == "host":
        edges = node.host_path(gpu_index)
        latency = copy_fit(link=node.host_link(gpu_index), direction=direction,
                           profile=node.profile).latency_s
        tail = "host_memory"
    else:
        edges = node.path(gpu, device)
        if not edges:
            raise UserInputError(f"tier: {node.name} has no path from {gpu} to {device!r}")
        host_edges = set(node.host_path(gpu_index))
        latency = device_latency_s(node, device)
        for e in edges:
            latency += copy_fit(link=node.links[e.link], direction=direction,
                                profile=node.profile if e in host_edges else None).latency_s
        tail = f"{device}.{'write' if direction == 'd2h' else 'read'}"
    return Route(_edge_names(edges, gpu, outbound=direction == "d2h") + (tail,), latency)


def _edge_names(edges, start: str, *, outbound: bool) -> tuple[str, ...]:
    """Link names of a path walked from ``start``: each edge's direction (away from ``start``
    when ``outbound``, towards it otherwise) and its both-ways ceiling."""
    names: list[str] = []
    here = start
    for e in edges:
        there = e.b if here == e.a else e.a
        names.append(f"{here}>{there}" if outbound else f"{there}>{here}")
        names.append(f"{e.a}<>{e.b}")
        here = there
    return tuple(names)


def peer_route(node, src_gpu: int, dst_gpu: int) -> Route:
    """Route of a GPU -> GPU copy (NVLink through NVSwitch, or PCIe where there is none).

    Alone it takes `hwmodels.transfer.transfer_time_s` over the node's peer link in direction
    ``p2p`` (the profile's measured peer copy when there is one).
    """
    from hwmodels.transfer import copy_fit

    edges = node.path(f"gpu{src_gpu}", f"gpu{dst_gpu}")
    if src_gpu == dst_gpu or not edges:
        raise UserInputError(f"gpu: {node.name} has no path from gpu{src_gpu} to gpu{dst_gpu}")
    latency = copy_fit(link=node.gpu_peer_link(), direction="p2p", profile=node.profile).latency_s
    return Route(_edge_names(edges, f"gpu{src_gpu}", outbound=True), latency)


# ---- from a Workload ------------------------------------------------------------------------


def schedule_from_workload(workload: Workload, node, *, num_gpus: int = 1) -> Schedule:
    """One compute stream per GPU running ``workload``'s ops in order, their allocations on that
    GPU's HBM pool (512-byte rounded; `RUNTIME_WORKSPACE_BYTES` live from the start), a D2H and
    an H2D copy stream per GPU (empty until a plan adds copies), and the node's links and pools.

    Ops with ``op_class == "comm"`` become collectives over all ``num_gpus`` GPUs.
    """
    from simulator.estimator import RUNTIME_WORKSPACE_BYTES

    if not 1 <= num_gpus <= node.num_gpus:
        raise UserInputError(f"num_gpus: must be between 1 and {node.num_gpus} ({node.name}), "
                             f"got {num_gpus}")
    index = workload._by_id()
    size = {tid: allocator_rounded_bytes(t.num_bytes) for tid, t in index.items()}
    streams: list[Stream] = []
    tasks: list[Task] = []
    initial: list[MemEvent] = []
    compute_tids: list[tuple[int, ...]] = []
    ops = workload.ops
    num_ops = len(ops)
    # what every GPU's copy of an op shares, read once (80 layers x 8 GPUs is 10^5 ops)
    rows = [(op.name, float(op.time_s or 0.0), op.allocs, op.frees,
             i if op.op_class == "comm" and num_gpus > 1 else None, op.phase.value, op.layer)
            for i, op in enumerate(ops)]
    tids = list(index)
    sizes = [size[tid] for tid in tids]
    tensor_names = [index[tid].name for tid in tids]
    for g in range(num_gpus):
        hbm = f"gpu{g}.hbm"
        stream = f"gpu{g}.compute"
        streams += [Stream(stream, "compute", f"gpu{g}"), Stream(f"gpu{g}.d2h", "d2h", f"gpu{g}"),
                    Stream(f"gpu{g}.h2d", "h2d", f"gpu{g}")]
        initial += [MemEvent(hbm, size[tid], index[tid].name) for tid in workload.initial]
        initial.append(MemEvent(hbm, RUNTIME_WORKSPACE_BYTES, "runtime_workspace"))
        # MemEvents are shared between ops of one GPU: build each tensor's once
        ev = dict(zip(tids, map(MemEvent, [hbm] * len(tids), sizes, tensor_names), strict=True))
        get = ev.__getitem__
        base = len(tasks)
        tasks += [Op(base + i, name, stream, dur, (), tuple(map(get, al)) if al else (),
                     tuple(map(get, fr)) if fr else (), group, phase, layer)
                  for i, (name, dur, al, fr, group, phase, layer) in enumerate(rows)]
        compute_tids.append(tuple(range(base, base + num_ops)))
    return Schedule(
        streams=tuple(streams),
        tasks=tuple(tasks),
        pools=node_pools(node, num_gpus),
        links=node_links(node),
        initial=tuple(initial),
        compute_tids=tuple(compute_tids),
        workload=workload,
        node=node,
        meta={"num_gpus": num_gpus, "node": node.name, "model": workload.meta.get("model")},
    )


@dataclass(frozen=True, slots=True)
class OffloadCandidate:
    """A tensor saved in forward by ops of one layer and freed in backward."""

    tid: int
    name: str
    num_bytes: int
    layer: int  # the layer whose forward ops save it


def offload_candidates(workload: Workload) -> dict[int, list[OffloadCandidate]]:
    """Per layer, the tensors its forward ops save for backward that a plan may move off the
    GPU: allocated in forward, not persistent (no weights), saved by ops of that layer only,
    and freed by a backward or recompute op."""
    index = workload._by_id()
    saver_layers: dict[int, set] = defaultdict(set)
    alloc_phase: dict[int, Phase] = {}
    free_phase: dict[int, Phase] = {}
    for op in workload.ops:
        for t in op.allocs:
            alloc_phase.setdefault(t, op.phase)
        for t in op.frees:
            free_phase[t] = op.phase
        if op.phase == Phase.FWD:
            for t in op.saves:
                saver_layers[t].add(op.layer)
    out: dict[int, list[OffloadCandidate]] = defaultdict(list)
    for tid, layers in saver_layers.items():
        spec = index[tid]
        if (len(layers) != 1 or None in layers or spec.persistent or spec.role == Role.WEIGHT
                or alloc_phase.get(tid) != Phase.FWD or free_phase.get(tid) not in _BACKWARD_PHASES
                or spec.num_bytes <= 0):
            continue
        (layer,) = layers
        out[layer].append(OffloadCandidate(tid, spec.name, spec.num_bytes, layer))
    for items in out.values():
        items.sort(key=lambda c: c.tid)
    return dict(out)


def offload_device(node, tier: str, gpu_index: int) -> str:
    """The device (and pool) GPU ``gpu_index``'s offloaded bytes go to on ``tier``: ``host``, or
    the GPU's ``cxl<k>`` / ``nvme<k>`` / ``csd<k>`` (GPU g uses device ``g % count``)."""
    if tier == "host":
        return "host"
    if tier not in ("cxl", "nvme", "csd"):
        raise UserInputError(f"tier: expected host, cxl, nvme or csd, got {tier!r}")
    items = getattr(node, tier)
    if not items:
        raise UserInputError(f"tier: {node.name} has no {tier} device")
    return f"{tier}{gpu_index % len(items)}"


def add_offload(
    schedule: Schedule,
    *,
    fraction_by_layer: Mapping[int, float],
    tier: str = "host",
    lookahead: int = 1,
) -> Schedule:
    """Offload ``fraction_by_layer[L]`` of the bytes of every tensor layer L saves for backward
    (`offload_candidates`) to ``tier`` (``host``, ``cxl``, ``nvme``; GPU g uses device
    ``g % count`` of that kind) and prefetch it back.

    The points are `simulator.movement`'s (those of a plan's replay). Per GPU and layer: one D2H
    copy per tensor on the GPU's D2H stream, after the layer's last forward op; each allocates
    its bytes on the tier's pool when it starts; they leave HBM at the end of the next layer's
    forward (two staging buffers), whose next op waits for the copy. One H2D copy per tensor on
    the H2D stream (layers in backward order), starting once the compute stream reaches the
    backward of layer ``L + lookahead`` (for the top layers: the start of backward) and after
    its D2H; it allocates HBM when it starts and
    frees the tier's copy when it ends; the layer's first backward (or recompute) op waits for
    all of them. What stays on the GPU (``1 - fraction``) is untouched; a plan that recomputes
    it instead adds those ops.
    """
    wl, node = schedule.workload, schedule.node
    if wl is None or node is None:
        raise UserInputError("schedule: add_offload needs a schedule built by schedule_from_workload")
    if lookahead < 0:
        raise UserInputError(f"lookahead: must be >= 0, got {lookahead}")
    for layer, frac in fraction_by_layer.items():
        if not 0.0 <= frac <= 1.0:
            raise UserInputError(f"fraction_by_layer.{layer}: must lie in [0, 1], got {frac}")
    offload_device(node, tier, 0)  # refuses an unknown tier, or one the node lacks
    cands = offload_candidates(wl)
    unknown = sorted(set(fraction_by_layer) - set(cands), key=str)
    if unknown:
        raise UserInputError(f"fraction_by_layer.{unknown[0]}: layer has no tensors to offload "
                             f"(layers {min(cands)}..{max(cands)} have)" if cands else
                             f"fraction_by_layer.{unknown[0]}: the workload saves no tensors to offload")
    moves = step_movements(workload=wl, lookahead=lookahead)
    layers = sorted((L for L, f in fraction_by_layer.items() if f > 0), reverse=True)
    tasks = list(schedule.tasks)
    extra_deps: dict[int, list[int]] = defaultdict(list)
    release_frees: dict[int, list[MemEvent]] = defaultdict(list)
    num_gpus = len(schedule.compute_tids)
    for g in range(num_gpus):
        ctids = schedule.compute_tids[g]
        device = pool = offload_device(node, tier, g)
        hbm = f"gpu{g}.hbm"
        down = device_route(node, g, device, "d2h")
        up = device_route(node, g, device, "h2d")
        d2h_of: dict[int, int] = {}
        delta_of: dict[int, int] = {}  # HBM bytes each copy releases and its prefetch allocates
        for layer in sorted(layers):
            frac = fraction_by_layer[layer]
            for c in cands[layer]:
                off = int(c.num_bytes * frac)
                if off <= 0:
                    continue
                full = allocator_rounded_bytes(c.num_bytes)
                hbm_delta = full - allocator_rounded_bytes(c.num_bytes - off)
                tid = len(tasks)
                mv = moves[layer]
                tasks.append(Transfer(tid, f"d2h {c.name}", f"gpu{g}.d2h", off, hbm, pool,
                                      down.links, down.latency_s, (ctids[mv.copy_op],),
                                      (MemEvent(pool, off, c.name),), (), layer))
                d2h_of[c.tid], delta_of[c.tid] = tid, hbm_delta
                # its bytes leave HBM after the release op, and the next op waits for the copy
                release_frees[ctids[mv.release_op]].append(MemEvent(hbm, hbm_delta, c.name))
                extra_deps[ctids[mv.release_op + 1]].append(tid)
        for layer in layers:  # backward order
            start_at = moves[layer].restore_op
            gate = ctids[start_at - 1] if start_at > 0 else None
            for c in cands[layer]:
                if c.tid not in d2h_of:
                    continue
                d2h = tasks[d2h_of[c.tid]]
                assert isinstance(d2h, Transfer)  # d2h_of indexes the D2H copies added above
                hbm_delta = delta_of[c.tid]
                deps = (d2h.tid,) if gate is None else (gate, d2h.tid)
                tid = len(tasks)
                tasks.append(Transfer(tid, f"h2d {c.name}", f"gpu{g}.h2d", d2h.num_bytes, pool, hbm,
                                      up.links, up.latency_s, deps,
                                      (MemEvent(hbm, hbm_delta, c.name),),
                                      (MemEvent(pool, d2h.num_bytes, c.name),), layer))
                extra_deps[ctids[moves[layer].stage_op]].append(tid)
    for tid, later in extra_deps.items():
        tasks[tid] = replace(tasks[tid], deps=tasks[tid].deps + tuple(later))
    for tid, frees in release_frees.items():
        tasks[tid] = replace(tasks[tid], frees=tasks[tid].frees + tuple(frees))
    meta = dict(schedule.meta)
    meta["offload"] = {"tier": tier, "lookahead": lookahead,
                       "fraction_by_layer": {str(k): v for k, v in sorted(fraction_by_layer.items())}}
    return replace(schedule, tasks=tuple(tasks), meta=meta)
