"""Swap / recompute planning for one training step: profile, apply a Plan, replay it, and the MIP.

Models:
  * the step profile: per decoder layer, the tensors kept from its forward to its backward,
    grouped as MEMO groups them (the layer input; the attention output and its statistics;
    every other skeletal tensor), read from the lifetimes of the analytical Workload (views keep
    their base alive), their bytes, and the layer's forward, attention and backward times;
  * applying a Plan to the analytical Workload (built with the plan's per-layer checkpoints):
    an offloaded part of a tensor leaves HBM when its D2H copy is done (the end of the next
    layer's forward: two rotating staging buffers) and is allocated again when layer l+k's
    backward starts (prefetch, lookahead k), or with ``prefetch_at="attention"`` when that
    backward reaches its attention block (the MLP block's activations are free by then; the MIP
    is solved for both points and keeps the faster plan); a recomputed part leaves HBM at the end of the
    layer's forward and comes back in a recompute op just before the layer's backward, costing
    that fraction of the layer's non-attention forward plus an HBM copy of the rows it puts
    into full-size tensors (the executor measures 0.055-0.70 s of recompute on the H200 bench
    plans where this predicts within -3% .. +4%) (token-wise, as MEMO: norms, projections
    and MLP are per-token; the attention output is kept or offloaded, never recomputed, unless
    the layer is checkpointed whole). A layer that does not save its input (Hugging Face layers
    save an fp32 copy) holds the recomputed tokens' input rows until its recompute op;
  * the replay: the transformed Workload and its copies on the discrete-event simulator
    (`simulator.des`: every GPU of the node that the job uses, copy streams per direction, links
    and host DRAM shared fluidly); compute waits where a copy must be done (a staging buffer is
    reused, a layer's backward needs its bytes);
  * tierplan's MIP (HiGHS through planners.solvers): per layer binaries (full checkpoint,
    offload input, offload attention output) and token fractions of the other skeletal bytes
    (keep / offload / recompute); HBM capacity at every segment of the schedule between two
    release/restore points, host capacity shared by the node's GPUs, the D2H and H2D queues of
    the replay as linear max-plus constraints (staging-buffer reuse in forward, prefetch before
    each layer's backward); objective: the step's end time.
Assumes: every GPU of the job runs the same schedule at the same time, so copies of the GPUs of
a node share the host-path edges and the host DRAM they have in common; host copies use a
pinned pool allocated once (no per-step allocation cost). Every D2H copy ends before the
backward starts and every H2D copy starts after it, so the two directions never overlap and a
link's both-ways ceiling cannot bind (the replay applies it all the same).
  * memory: the allocated peak of the replay, and the reserved peak of the caching allocator
    replaying the transformed Workload's allocations (simulator.allocator); with
    ``allocator="caching"`` a plan fits only when that allocator, capped anywhere in a band
    just below the budget, serves every request (fragmentation included; CAP_BAND_FRAC); the
    MIP then backs its budget off in steps and bisects back towards the last budget that failed.
  * variants: the MIP is solved per prefetch point (``PREFETCH_POINTS``) and, for a SwiGLU model,
    with the MLP activation saved and recomputed (``mip_variants``); the fastest plan wins.
Ignores: recompute workspaces beyond the recomputed tensors themselves, CXL / NVMe tiers for
activations (the DES models them; plans use host DRAM).
Source: MEMO (Zhao et al., SIGMOD 2025, arXiv 2407.12117) sections 3-4 (token-wise recompute,
three streams, two buffers); Korthikanti et al. 2022 (selective recompute); checkmate (Jain et
al. 2020) for a MIP over a replayable plan.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from hwmodels.units import GiB, UserInputError, format_bytes
from planners.plan import KEEP, LayerPlan, Plan, Prediction, Provenance, RoleAction
from simulator.allocator import AllocatorOOM, predict_workload_reserved
from simulator.workload import OpSpec, Phase, Role, TensorSpec, Workload, walk_memory

ATTN_ROLES = (Role.ATTN_OUT.value, Role.ATTN_STAT.value)
"""MEMO offloads the attention output whole: recomputing it means re-running attention."""
NOT_ACTIVATIONS = (Role.WEIGHT.value, Role.GRAD.value, Role.OPTIMIZER_STATE.value,
                   Role.MASTER_WEIGHT.value)
EPS_FRAC = 1e-6
MAX_REPAIRS = 6
FRAGMENTATION_STEP_FRAC = 0.02
"""A plan whose caching-allocator replay does not fit the budget is solved again against a
budget 2%, then 4%, 8%, ... lower."""
REFINE_SOLVES = 4
REFINE_MIN_FRAC = 0.005
"""After a backed-off budget fits, up to ``REFINE_SOLVES`` more solves bisect between it and the
last budget that did not (down to ``REFINE_MIN_FRAC`` of the budget): the doubling steps
overshoot, and a plan on a budget up to 8% larger can be markedly faster."""
TIE_BREAK_FRAC = 1e-7
BUDGET_MARGIN_FRAC = 1e-3
"""The MIP plans against budgets 0.1% below the user's: fractions are rounded to 6 decimals
and token slices to whole bytes after solving, which must not tip a plan over a budget."""
ALLOCATORS = ("planned", "caching")
CAP_BAND_FRAC = 0.04
CAP_BAND_POINTS = 5
"""With ``allocator="caching"`` a plan fits when the capped allocator replay serves every
request at each of ``CAP_BAND_POINTS`` caps spread over the band from the budget down to
(1 - ``CAP_BAND_FRAC``) x the budget, not at the budget alone. Under a cap, whether a
fragmented sequence fits flips with small changes of the cap or of the request order (the
replay is not monotone in the cap), and the executor's order differs in details from the
simulated one. On the H200 (2026-11-28, validate/measurements/h200/probe48-*): the 64K MIP
plan the single-cap check passed at 47.04 GiB ran out of memory under a 48 GiB cap, as the
replay of its own recorded trace does; the plans that pass the band ran."""
STRATEGIES = ("none", "full_recompute", "selective", "offload_all", "memo", "mip")


# ---- hardware: copy rates --------------------------------------------------------------------
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


# ---- profile ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerProfile:
    """One decoder layer of a base Workload (op indices refer to that Workload)."""

    layer: int
    input_tids: tuple[int, ...]  # saved tensors produced before the layer (its input)
    hold_tids: tuple[int, ...]  # its input when the layer does not save it (freed in forward)
    role_tids: dict[str, tuple[int, ...]]  # saved tensors produced in the layer, by role
    input_bytes: int
    attn_bytes: int  # attention output + statistics
    other_bytes: int  # every other skeletal tensor
    fwd_s: float
    attn_fwd_s: float
    bwd_s: float  # backward ops of the layer (recompute ops of a checkpoint excluded)
    recompute_s: float  # recompute ops the base Workload already has (checkpointing)
    fwd_flops: float
    attn_fwd_flops: float
    first_fwd: int
    last_fwd: int
    first_bwd: int  # first op of the layer's backward stage (recompute included)
    last_bwd: int
    hold_bytes_: int = 0
    first_attn_bwd: int = -1  # first backward op of the attention block (-1: first_bwd)
    mlp_bwd_s: float = 0.0  # backward ops before it (the MLP block and its norm)

    @property
    def saved_bytes(self) -> int:
        return self.input_bytes + self.attn_bytes + self.other_bytes

    @property
    def hold_bytes(self) -> int:
        """Bytes of the input a token-wise recompute must keep when the layer does not save it."""
        return self.hold_bytes_ if not self.input_tids else 0

    @property
    def other_fwd_s(self) -> float:
        """Token-wise recompute of the whole layer but attention (MEMO)."""
        return self.fwd_s - self.attn_fwd_s


@dataclass(frozen=True)
class StepProfile:
    """The layers of a base Workload and the fixed parts around them."""

    workload: Workload
    layers: tuple[LayerProfile, ...]
    last_fwd_op: int  # last op before the first backward op (end of forward and loss)
    first_bwd_op: int
    alloc_op: dict[int, int]
    free_op: dict[int, int]
    live_bytes: tuple[int, ...]  # walk timeline: live bytes at each op (after its allocs)
    persistent_bytes: int  # weights + grads + optimizer states + master weights

    @property
    def op_times_s(self) -> list[float]:
        return [float(op.time_s or 0.0) for op in self.workload.ops]


def profile_workload(wl: Workload) -> StepProfile:
    """Group the saved tensors of each decoder layer and time its forward and backward."""
    index = wl._by_id()
    ops = wl.ops
    alloc_op: dict[int, int] = {}
    free_op: dict[int, int] = {}
    for k, op in enumerate(ops):
        for t in op.allocs:
            alloc_op[t] = k
        for t in op.frees:
            free_op[t] = k
    layer_ids = sorted({op.layer for op in ops if op.layer is not None and op.phase == Phase.FWD})
    first_bwd_op = next(k for k, op in enumerate(ops) if op.phase in (Phase.BWD, Phase.RECOMPUTE))
    by_layer: dict[int, list[int]] = {}
    for k, op in enumerate(ops):
        if op.layer is not None:
            by_layer.setdefault(op.layer, []).append(k)
    layers = []
    for i in layer_ids:
        fwd = [k for k in by_layer[i] if ops[k].phase == Phase.FWD]
        bwd = [k for k in by_layer[i] if ops[k].phase in (Phase.BWD, Phase.RECOMPUTE)]
        lo, hi = fwd[0], fwd[-1]
        b_lo, b_hi = bwd[0], bwd[-1]
        # Skeletal tensors, by what the allocation walk does with them (views keep their base
        # storage alive, so "saved" is read from lifetimes, not from the saves lists): the
        # layer's own are allocated in its forward and freed by its backward; its input is a
        # residual-stream tensor allocated before it and freed by its backward. (The last
        # layer's output, freed by the head's backward, belongs to no layer.)
        inputs: list[int] = []
        holds: list[int] = []
        by_role: dict[str, list[int]] = {}
        for t, k in alloc_op.items():
            spec = index[t]
            if spec.persistent or spec.role.value in NOT_ACTIVATIONS or spec.num_bytes == 0:
                continue
            f = free_op.get(t)
            if f is not None and k < lo <= f <= hi and spec.role in (Role.LAYER_INPUT, Role.INPUT):
                holds.append(t)  # an input the layer uses in forward and does not save
            if f is None or f < first_bwd_op:
                continue
            if lo <= k <= hi and b_lo <= f <= b_hi:
                by_role.setdefault(spec.role.value, []).append(t)
            elif k < lo and b_lo <= f <= b_hi and spec.role in (Role.LAYER_INPUT, Role.INPUT):
                inputs.append(t)
        attn = sum(index[t].num_bytes for r in ATTN_ROLES for t in by_role.get(r, ()))
        other = sum(index[t].num_bytes for r, ts in by_role.items() if r not in ATTN_ROLES for t in ts)
        fwd_ops = [ops[k] for k in fwd]
        attn_ops = [op for op in fwd_ops if op.op_class.startswith("attention")]
        attn_prefix = f"layers.{i}.attn."
        first_attn = next((k for k in bwd if ops[k].phase == Phase.BWD
                           and ops[k].name.startswith(attn_prefix)), b_lo)
        layers.append(LayerProfile(
            layer=i,
            input_tids=tuple(sorted(inputs)),
            hold_tids=tuple(sorted(holds)) if not inputs else (),
            role_tids={r: tuple(sorted(ts)) for r, ts in sorted(by_role.items())},
            input_bytes=sum(index[t].num_bytes for t in inputs),
            attn_bytes=attn,
            other_bytes=other,
            fwd_s=sum(op.time_s or 0.0 for op in fwd_ops),
            attn_fwd_s=sum(op.time_s or 0.0 for op in attn_ops),
            bwd_s=sum(ops[k].time_s or 0.0 for k in bwd if ops[k].phase == Phase.BWD),
            recompute_s=sum(ops[k].time_s or 0.0 for k in bwd if ops[k].phase == Phase.RECOMPUTE),
            fwd_flops=sum(op.executed_flops for op in fwd_ops),
            attn_fwd_flops=sum(op.executed_flops for op in attn_ops),
            first_fwd=lo, last_fwd=hi, first_bwd=bwd[0], last_bwd=bwd[-1],
            hold_bytes_=sum(index[t].num_bytes for t in holds),
            first_attn_bwd=first_attn,
            mlp_bwd_s=sum(ops[k].time_s or 0.0 for k in bwd if k < first_attn and ops[k].phase == Phase.BWD),
        ))
    walk = walk_memory(wl)
    persistent = sum(t.num_bytes for t in wl.tensors if t.persistent)
    return StepProfile(workload=wl, layers=tuple(layers), last_fwd_op=first_bwd_op - 1,
                       first_bwd_op=first_bwd_op, alloc_op=alloc_op, free_op=free_op,
                       live_bytes=tuple(p.live_bytes for p in walk.timeline),
                       persistent_bytes=persistent)


# ---- applying a plan -------------------------------------------------------------------------
@dataclass(frozen=True)
class Transfer:
    """One copy of one layer's offloaded bytes; op indices refer to the transformed Workload."""

    layer: int
    direction: str  # "d2h" | "h2d"
    num_bytes: int
    ready_op: int  # d2h: starts when this op ends; h2d: starts when this op starts
    needed_op: int  # compute cannot start this op before the copy is done
    stream: str  # "d2h" (side streams, overlapped) | "compute" (synchronous)


@dataclass(frozen=True)
class AppliedPlan:
    workload: Workload
    transfers: tuple[Transfer, ...]
    offloaded_bytes: int  # per GPU, all layers (host bytes one GPU holds at the peak)
    staging_bytes: int  # largest layer's offloaded bytes


PREFETCH_POINTS = ("layer", "attention")


def release_restore_ops(prof: StepProfile, layer: int, *, stream: str, lookahead: int,
                        prefetch_at: str = "layer") -> tuple[int, int]:
    """Base-Workload op indices where layer ``layer``'s offloaded bytes leave HBM (after that op)
    and come back (at that op's start): the start of layer l+k's backward, or with
    ``prefetch_at="attention"`` the start of its attention block's backward."""
    n = len(prof.layers)
    lp = prof.layers[layer]
    if stream == "compute":
        return lp.last_fwd, lp.first_bwd
    release = prof.layers[layer + 1].last_fwd if layer + 1 < n else prof.last_fwd_op
    if layer + lookahead >= n:
        return release, prof.first_bwd_op
    ahead = prof.layers[layer + lookahead]
    if prefetch_at == "attention" and ahead.first_attn_bwd >= 0:
        return release, ahead.first_attn_bwd
    return release, ahead.first_bwd


def apply_plan(prof: StepProfile, layers: Sequence[LayerPlan], *, lookahead: int = 1,
               prefetch_at: str = "layer", copy_s_per_byte: float = 0.0) -> AppliedPlan:
    """The Workload of ``prof`` with ``layers``' offloads and recomputes, and its copies.

    ``prof`` must come from the template Workload with the plan's checkpoints
    (`PlanContext.profile_for`): a checkpointed layer's recompute is already in it, and only its
    input (the checkpoint's saved tensor) may be offloaded. A token-wise recompute re-runs the
    layer from its input: where eager autograd does not save that input (Hugging Face layers
    save an fp32 copy instead), the plan keeps it (or offloads it) until the recompute op.
    ``copy_s_per_byte``: HBM copy time per byte moved (read + write); the recompute op also puts
    the recomputed rows (and a tensor's kept rows, where they are not moved by the prefetch)
    into the full-size tensor backward reads.
    """
    wl = prof.workload
    index = dict(wl._by_id())
    alloc_of = dict(prof.alloc_op)
    if len(layers) != len(prof.layers):
        raise UserInputError(f"plan: {len(layers)} layers for a model of {len(prof.layers)}")
    sizes = {t.tid: t.num_bytes for t in wl.tensors}
    extra: list[TensorSpec] = []
    next_tid = max(sizes) + 1
    add_allocs: dict[int, list[int]] = {}
    add_frees: dict[int, list[int]] = {}
    stage_allocs: dict[int, list[int]] = {}  # base restore op -> prefetched tensors allocated there
    recompute_ops: dict[int, OpSpec] = {}  # base first_bwd index -> recompute op (oid fixed later)
    rec_allocs: dict[int, list[int]] = {}
    rec_frees: dict[int, list[int]] = {}
    pending: list[tuple[int, str, int, str]] = []  # (layer, stream, bytes, kind)
    total_off = 0
    staging = 0

    def part(t: int, num_bytes: int, name: str, alloc_at: int | None, free_at: int | None) -> int:
        """A new storage for a token slice of ``t``; None: placed by the caller."""
        nonlocal next_tid
        spec = index[t]
        tid = next_tid
        next_tid += 1
        extra.append(TensorSpec(tid, f"{spec.name}.{name}", num_bytes, spec.role, spec.layer))
        sizes[tid] = num_bytes
        if alloc_at is not None:
            add_allocs.setdefault(alloc_at, []).append(tid)
        if free_at is not None:
            add_frees.setdefault(free_at, []).append(tid)
        return tid

    for lp, dec in zip(prof.layers, layers, strict=True):
        i = lp.layer
        if (dec.checkpoint != "none") != (lp.recompute_s > 0.0):
            raise ValueError(f"apply_plan: layers.{i}: checkpoint {dec.checkpoint} but the profile's "
                             f"layer {'has' if lp.recompute_s else 'has no'} recompute ops")
        groups: list[tuple[tuple[int, ...], RoleAction]] = []
        inputs = lp.input_tids
        held: set[int] = set()
        hold_frac = max((dec.action(r).recompute_frac for r in lp.role_tids), default=0.0)
        if dec.checkpoint == "none" and lp.hold_bytes and hold_frac > 0:
            # the recomputed tokens' rows of the input stay until the recompute op
            inputs = []
            for t in lp.hold_tids:
                h = part(t, int(round(sizes[t] * hold_frac)), "held", prof.alloc_op[t], None)
                sizes[t] -= sizes[h]
                index[h] = extra[-1]
                alloc_of[h] = prof.alloc_op[t]
                held.add(h)
                rec_frees.setdefault(i, []).append(h)
                inputs.append(h)
            inputs = tuple(inputs)
        if dec.input == "offload":
            groups.append((inputs, RoleAction(action="offload", alpha_frac=1.0, stream=dec.input_stream)))
        if dec.checkpoint == "none":
            groups += [(tids, dec.action(role)) for role, tids in lp.role_tids.items()]
        layer_off: dict[str, int] = {}
        assemble, assemble_t = 0, -1  # the largest tensor put together from kept and recomputed rows
        assembled_bytes = 0  # rows the recompute op copies into full-size tensors
        max_rec = 0.0
        attn_rec = 0.0
        for tids, act in groups:
            if act.action == "keep":
                continue
            for t in tids:
                nb = sizes[t]
                off = int(round(nb * act.alpha_frac))
                keep = int(round(nb * act.keep_frac))
                rec = max(0, nb - off - keep)
                sizes[t] = keep
                if off and t not in held:
                    # The executor's order: the whole tensor stays until its D2H copy is done,
                    # its kept rows are copied out at the layer's end and move into the
                    # full-size prefetch buffer, the recomputed rows pass through it.
                    rel, res = release_restore_ops(prof, i, stream=act.stream, lookahead=lookahead,
                                                   prefetch_at=prefetch_at)
                    sizes[t] = 0
                    part(t, nb, "offloaded", alloc_of[t], rel)
                    if keep:
                        part(t, keep, "kept", lp.last_fwd, res)
                    stage_allocs.setdefault(res, []).append(part(t, nb, "prefetched", None, prof.free_op[t]))
                    layer_off[act.stream] = layer_off.get(act.stream, 0) + off
                    if rec:
                        tmp = part(t, rec, "recomputed", None, None)
                        rec_allocs.setdefault(i, []).append(tmp)
                        rec_frees.setdefault(i, []).append(tmp)
                elif off:
                    rel, res = release_restore_ops(prof, i, stream=act.stream, lookahead=lookahead,
                                                   prefetch_at=prefetch_at)
                    part(t, off, "offloaded", alloc_of[t], rel)
                    back = part(t, off, "prefetched", None, None)
                    rec_frees[i].remove(t)
                    rec_frees[i] += [t, back]
                    stage_allocs.setdefault(res, []).append(back)
                    layer_off[act.stream] = layer_off.get(act.stream, 0) + off
                if rec and not (off and t not in held):
                    part(t, rec, "dropped", alloc_of[t], lp.last_fwd)
                    rec_allocs.setdefault(i, []).append(part(t, rec, "recomputed", None, prof.free_op[t]))
                    if keep and nb > assemble:  # put together in a new tensor while its parts exist
                        assemble, assemble_t = nb, t
                if rec:
                    assembled_bytes += rec + (keep if not (off and t not in held) else 0)
                    if index[t].role.value in ATTN_ROLES:
                        attn_rec = max(attn_rec, act.recompute_frac)
                    else:
                        max_rec = max(max_rec, act.recompute_frac)
        if assemble:
            tmp = part(assemble_t, assemble, "assembled", None, None)
            rec_allocs.setdefault(i, []).append(tmp)
            rec_frees.setdefault(i, []).append(tmp)
        rec_s = max_rec * lp.other_fwd_s + attn_rec * lp.attn_fwd_s + assembled_bytes * copy_s_per_byte
        rec_flops = max_rec * (lp.fwd_flops - lp.attn_fwd_flops) + attn_rec * lp.attn_fwd_flops
        if rec_s > 0 or i in rec_allocs:
            recompute_ops[lp.first_bwd] = OpSpec(
                -1, f"layers.{i}.token_recompute", "recompute", Phase.RECOMPUTE, i,
                exec_flops=rec_flops, flops=0.0, op_class="gemm", time_s=rec_s,
                allocs=tuple(rec_allocs.get(i, ())), frees=tuple(rec_frees.get(i, ())))
        for stream, nbytes in sorted(layer_off.items()):
            pending.append((i, stream, nbytes, "off"))
            total_off += nbytes
            staging = max(staging, nbytes)

    # Rebuild the op list: a recompute op before each layer's first backward op.
    new_index: dict[int, int] = {}
    stage_index: dict[int, int] = {}  # layer -> new index of its backward stage's first op
    first_bwd_of = {lp.first_bwd: lp.layer for lp in prof.layers}
    out: list[OpSpec] = []
    for k, op in enumerate(wl.ops):
        if k in recompute_ops:
            out.append(_renumber(recompute_ops[k], len(out)))
        if k in first_bwd_of:
            stage_index[first_bwd_of[k]] = len(out) - (1 if k in recompute_ops else 0)
        new_index[k] = len(out)
        allocs = list(op.allocs) + add_allocs.get(k, [])
        frees = list(op.frees) + add_frees.get(k, [])
        out.append(_renumber(op, len(out), allocs=allocs, frees=frees))

    def stage_start(base_op: int) -> int:
        """New index of a base op, or of its layer's backward stage when it opens one."""
        return stage_index[first_bwd_of[base_op]] if base_op in first_bwd_of else new_index[base_op]

    # Prefetched bytes are allocated at the start of the stage that fetches them.
    for key, tids in sorted(stage_allocs.items()):
        pos = stage_start(key)
        out[pos] = _renumber(out[pos], pos, allocs=list(out[pos].allocs) + tids, frees=list(out[pos].frees))
    transfers = []
    for i, stream, nbytes, _ in pending:
        lp = prof.layers[i]
        rel, res = release_restore_ops(prof, i, stream=stream, lookahead=lookahead,
                                       prefetch_at=prefetch_at)
        transfers.append(Transfer(i, "d2h", nbytes, new_index[lp.last_fwd], new_index[rel] + 1, stream))
        transfers.append(Transfer(i, "h2d", nbytes, stage_start(res), stage_index[i], stream))
    tensors = tuple(TensorSpec(t.tid, t.name, sizes[t.tid], t.role, t.layer, t.persistent)
                    for t in wl.tensors + tuple(extra))
    new_wl = Workload(tensors=tensors, ops=tuple(out), initial=wl.initial,
                      meta={**wl.meta, "plan_applied": True})
    return AppliedPlan(workload=new_wl, transfers=tuple(transfers), offloaded_bytes=total_off,
                       staging_bytes=staging)


def _renumber(op: OpSpec, oid: int, *, allocs=None, frees=None) -> OpSpec:
    return OpSpec(oid=oid, name=op.name, kind=op.kind, phase=op.phase, layer=op.layer, flops=op.flops,
                  hbm_bytes=op.hbm_bytes, op_class=op.op_class,
                  allocs=tuple(op.allocs if allocs is None else allocs),
                  frees=tuple(op.frees if frees is None else frees), saves=op.saves,
                  exec_flops=op.exec_flops, time_s=op.time_s, model_flops_=op.model_flops_)


# ---- replay ----------------------------------------------------------------------------------
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
    sim: object = field(repr=False, compare=False)  # simulator.des.SimResult (trace, plot)
    replayed_by: str = "simulator.des"


def replay(applied: AppliedPlan, node, *, num_gpus: int) -> Replay:
    """Replay the transformed Workload on ``num_gpus`` GPUs of ``node`` with the plan's copies.

    Each copy is a DES transfer on the GPU's D2H or H2D copy stream (FIFO) over its host route
    (links shared with the other GPUs' copies): a D2H starts after its ``ready_op`` and reserves
    host memory; an H2D starts when its ``ready_op`` starts (and after its D2H) and frees it;
    the compute op ``needed_op`` waits for the copy. HBM allocations are the Workload's own.
    """
    from simulator.des import MemEvent, schedule_from_workload, simulate
    from simulator.des import Transfer as DesTransfer
    from simulator.des.schedule import device_route

    wl = applied.workload
    sched = schedule_from_workload(wl, node, num_gpus=num_gpus)
    tasks = list(sched.tasks)
    extra: dict[int, list[int]] = {}
    order = sorted(range(len(applied.transfers)),
                   key=lambda k: (applied.transfers[k].direction == "h2d",
                                  applied.transfers[k].ready_op, -applied.transfers[k].layer))
    for g in range(num_gpus):
        ctids = sched.compute_tids[g]
        routes = {d: device_route(node, g, "host", d) for d in ("d2h", "h2d")}
        d2h_tid: dict[tuple[int, str], int] = {}
        for k in order:
            tr = applied.transfers[k]
            route = routes[tr.direction]
            host = MemEvent("host", tr.num_bytes, f"layers.{tr.layer}.offloaded")
            tid = len(tasks)
            if tr.direction == "d2h":
                deps = (ctids[tr.ready_op],)
                allocs, frees = (host,), ()
                d2h_tid[(tr.layer, tr.stream)] = tid
            else:
                deps = (d2h_tid[(tr.layer, tr.stream)],) + ((ctids[tr.ready_op - 1],) if tr.ready_op else ())
                allocs, frees = (), (host,)
            tasks.append(DesTransfer(tid, f"{tr.direction} layers.{tr.layer}", f"gpu{g}.{tr.direction}",
                                     tr.num_bytes, f"gpu{g}.hbm" if tr.direction == "d2h" else "host",
                                     "host" if tr.direction == "d2h" else f"gpu{g}.hbm",
                                     route.links, route.latency_s, deps, allocs, frees, tr.layer))
            extra.setdefault(ctids[tr.needed_op], []).append(tid)
    for tid, deps in extra.items():
        tasks[tid] = replace(tasks[tid], deps=tasks[tid].deps + tuple(deps))
    sim = simulate(replace(sched, tasks=tuple(tasks)))
    hbm = sim.pool("gpu0.hbm")
    model_flops = 3.0 * sum(op.model_flops for op in wl.ops if op.phase in (Phase.FWD, Phase.LOSS))
    recompute = sum(op.time_s or 0.0 for op in wl.ops if op.phase == Phase.RECOMPUTE)
    return Replay(step_time_s=sim.step_time_s, stall_s=sim.stall_s, recompute_s=recompute,
                  peak_hbm_bytes=hbm.peak_bytes, peak_host_bytes=sim.pool("host").peak_bytes,
                  peak_op=hbm.peak_task, model_flops=model_flops, sim=sim)


# ---- the planning context ----------------------------------------------------------------------
@dataclass
class PlanContext:
    """Everything the strategies share for one (model, job, node, budgets) request."""

    model: object
    job: object
    node: object
    gpu_budget_bytes: int
    host_budget_bytes: int
    lookahead: int = 1
    allocator: str = "planned"
    """planned: addresses planned ahead (MEMO's layout, ``tierplan layout``): a plan fits when
    its allocated peak does; caching: PyTorch's caching allocator (what a plain torch run and
    validate.executor use): it must also serve every request under the budget, fragmentation
    included (simulator.allocator)."""
    prefetch_at: str = "layer"
    """Where the prefetch of layer l starts in layer l+k's backward (``Plan.prefetch_at``)."""
    _profiles: dict[tuple[str, ...], StepProfile] = field(default_factory=dict)
    _variant_profiles: dict[str, dict] = field(default_factory=dict)  # other mlp_activation -> profiles

    @classmethod
    def from_plan(cls, plan: Plan, *, source: str = "plan") -> PlanContext:
        """The scenario a plan was made for, rebuilt from its provenance (model preset with the
        plan's layer count, job, hardware, budgets); ``source`` names the plan in errors."""
        from pydantic import ValidationError

        from hwmodels.catalog import load_node
        from simulator.job import TrainJob
        from simulator.model import get_model

        prov = plan.provenance
        try:
            model = get_model(prov.model).with_layers(len(plan.layers))
        except UserInputError as err:
            raise UserInputError(f"{source}: provenance.model: {err}") from None
        try:
            job = TrainJob.model_validate(prov.job)  # its mlp_activation is the plan's (Plan checks)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(x) for x in first.get("loc", ()))
            raise UserInputError(f"{source}: provenance.job.{loc}: {first.get('msg')}") from None
        if job.mode != "train":
            raise UserInputError(f"{source}: provenance.job.mode: a plan is for a training job, got {job.mode!r}")
        try:
            node = load_node(prov.hardware)
            job.check(model)
        except UserInputError as err:
            raise UserInputError(f"{source}: provenance: {err}") from None
        return cls(model=model, job=job, node=node, gpu_budget_bytes=prov.gpu_budget_bytes,
                   host_budget_bytes=prov.host_budget_bytes, lookahead=plan.prefetch_lookahead_layers,
                   prefetch_at=plan.prefetch_at)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def rates(self) -> CopyRates:
        par = self.job.parallelism
        return host_copy_rates(self.node, num_active_gpus=par.tp * par.cp * par.dp)

    @property
    def copy_s_per_byte(self) -> float:
        """HBM copy time per byte moved (read + write), from a 1 GiB copy on the node's GPU."""
        from hwmodels.compute import compute_time_s

        return compute_time_s(flops=0.0, hbm_bytes=2 * GiB, op_class="hbm_copy",
                              dtype=self.job.param_dtype, node=self.node) / GiB

    @property
    def host_budget_per_gpu_bytes(self) -> int:
        return self.host_budget_bytes // self.rates.num_gpus_sharing_host

    def profile(self, checkpointing: str = "none") -> StepProfile:
        """The profile of the step with the same checkpoint on every layer."""
        return self.profile_for((checkpointing,) * self.num_layers)

    def profile_for(self, modes: Sequence[str]) -> StepProfile:
        """The profile of the step with per-layer checkpoints ``modes`` (template Workload)."""
        modes = tuple(modes)
        if modes not in self._profiles:
            from simulator.templates import training_workload

            job = self.job.model_copy(update={"checkpointing": "none"})
            per_layer = {i: m for i, m in enumerate(modes) if m != "none"}
            wl = training_workload(self.model, job, self.node, layer_checkpointing=per_layer)
            self._profiles[modes] = profile_workload(wl)
        return self._profiles[modes]


@dataclass(frozen=True)
class StrategyResult:
    """One row of the strategy table: the same type for every baseline and the MIP."""

    name: str
    feasible: bool
    step_time_s: float | None
    mfu: float | None
    peak_hbm_bytes: int | None
    peak_host_bytes: int | None
    reason: str  # why not feasible (or how it was chosen)
    plan: Plan | None = None
    replay: Replay | None = None
    applied: AppliedPlan | None = None
    solve_time_s: float = 0.0  # wall time of planning this row (a run's figure, not the plan's)
    peak_reserved_bytes: int | None = None  # the caching allocator's, two steps, no cap

    def row(self) -> dict:
        return {"name": self.name, "feasible": self.feasible, "step_time_s": self.step_time_s,
                "mfu": self.mfu, "peak_hbm_bytes": self.peak_hbm_bytes,
                "peak_reserved_bytes": self.peak_reserved_bytes,
                "peak_host_bytes": self.peak_host_bytes, "reason": self.reason,
                "solve_time_s": self.solve_time_s}


def evaluate(ctx: PlanContext, name: str, layers: Sequence[LayerPlan], *, solver: str | None = None,
             status: str = "rule", gap: float | None = None, solve_time_s: float = 0.0,
             time_limit_s: float | None = None) -> StrategyResult:
    """Replay ``layers`` and wrap the outcome as a Plan and a table row."""
    from hwmodels.compute import peak_flops_per_s

    prof = ctx.profile_for([lp.checkpoint for lp in layers])
    applied = apply_plan(prof, layers, lookahead=ctx.lookahead, prefetch_at=ctx.prefetch_at,
                         copy_s_per_byte=ctx.copy_s_per_byte)
    rep = replay(applied, ctx.node, num_gpus=ctx.rates.num_gpus_sharing_host)
    host_peak = rep.peak_host_bytes
    mfu = rep.model_flops / rep.step_time_s / peak_flops_per_s(ctx.node, ctx.job.param_dtype)
    reasons = []
    if rep.peak_hbm_bytes > ctx.gpu_budget_bytes:
        reasons.append(f"HBM peak {format_bytes(rep.peak_hbm_bytes)} > {format_bytes(ctx.gpu_budget_bytes)}"
                       f" gpu budget (at {rep.peak_op})")
    reserved = predict_workload_reserved(applied.workload).peak_reserved_bytes
    if ctx.allocator == "caching" and not reasons and reserved > ctx.gpu_budget_bytes:
        failed = capped_replay_failure(applied.workload, ctx.gpu_budget_bytes)
        if failed is not None:
            reasons.append(f"caching allocator: {format_bytes(reserved)} reserved (fragmentation) > "
                           f"{format_bytes(ctx.gpu_budget_bytes)} gpu budget and the allocator, "
                           f"capped at {format_bytes(failed)}, cannot serve every request")
    if host_peak > ctx.host_budget_bytes:
        reasons.append(f"host {format_bytes(host_peak)} > {format_bytes(ctx.host_budget_bytes)} host budget")
    feasible = not reasons
    prediction = Prediction(step_time_s=rep.step_time_s, mfu=mfu, peak_hbm_bytes=rep.peak_hbm_bytes,
                            peak_reserved_bytes=reserved, peak_host_bytes=host_peak, stall_s=rep.stall_s, recompute_s=rep.recompute_s,
                            feasible=feasible, replayed_by=rep.replayed_by)
    plan = Plan(layers=list(layers), prefetch_lookahead_layers=ctx.lookahead, prefetch_at=ctx.prefetch_at,
                mlp_activation=ctx.job.mlp_activation,
                staging_buffer_bytes=applied.staging_bytes, num_staging_buffers=2,
                provenance=_provenance(ctx, name, solver=solver, status=status, gap=gap,
                                       time_limit_s=time_limit_s),
                prediction=prediction)
    return StrategyResult(name=name, feasible=feasible, step_time_s=rep.step_time_s, mfu=mfu,
                          peak_hbm_bytes=rep.peak_hbm_bytes, peak_host_bytes=host_peak,
                          peak_reserved_bytes=reserved,
                          reason="; ".join(reasons), plan=plan, replay=rep, applied=applied,
                          solve_time_s=solve_time_s)


def capped_replay_failure(workload: Workload, budget_bytes: int) -> int | None:
    """The first cap of the band (see ``CAP_BAND_FRAC``) under which the caching allocator's
    replay of ``workload`` runs out of memory (over the cap it frees its cache and retries, as
    PyTorch does); None when every cap of the band serves every request."""
    for j in range(CAP_BAND_POINTS):
        cap = int(budget_bytes * (1.0 - CAP_BAND_FRAC * j / max(1, CAP_BAND_POINTS - 1)))
        try:
            predict_workload_reserved(workload, capacity_bytes=cap)
        except AllocatorOOM:
            return cap
    return None


def _provenance(ctx: PlanContext, planner: str, **kw) -> Provenance:
    from planners.plan import tierplan_version

    return Provenance(tierplan_version=tierplan_version(), model=ctx.model.name,
                      job=ctx.job.model_dump(mode="json"), hardware=ctx.node.name, planner=planner,
                      gpu_budget_bytes=ctx.gpu_budget_bytes, host_budget_bytes=ctx.host_budget_bytes, **kw)


# ---- the MIP ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MipSolution:
    layers: tuple[LayerPlan, ...]
    objective_s: float | None  # the MIP's own step time (for the replay-agreement check)
    status: str
    solver: str | None
    gap: float | None
    solve_time_s: float
    binding: str  # the constraint that makes the request infeasible, when it is


def solve_mip(ctx: PlanContext, *, budget_bytes: int | None = None, host_budget_bytes: int | None = None,
              time_limit_s: float = 10.0, solver: str = "highs", lp_path: str | None = None) -> MipSolution:
    """tierplan's MIP over the profile of the un-checkpointed step (see the module docstring)."""
    import pulp

    from planners.solvers import solve
    from simulator.estimator import RUNTIME_WORKSPACE_BYTES

    t0 = time.perf_counter()
    prof = ctx.profile("none")
    full_prof = ctx.profile("full")
    rates = ctx.rates
    budget = (ctx.gpu_budget_bytes if budget_bytes is None else budget_bytes) * (1 - BUDGET_MARGIN_FRAC)
    budget -= RUNTIME_WORKSPACE_BYTES
    host_budget = (ctx.host_budget_bytes if host_budget_bytes is None else host_budget_bytes)
    host_budget *= 1 - BUDGET_MARGIN_FRAC
    n = len(prof.layers)
    L = prof.layers
    times = prof.op_times_s
    prob = pulp.LpProblem("swap_recompute", pulp.LpMinimize)
    g = float(GiB)
    b_d2h = rates.d2h_bytes_per_s / g  # GiB/s
    b_h2d = rates.h2d_bytes_per_s / g
    var = prob.add_variable
    full = [var(f"full_{i}", cat="Binary") for i in range(n)]
    o_in = [var(f"offload_input_{i}", cat="Binary") for i in range(n)]
    o_inf = [var(f"offload_checkpoint_input_{i}", cat="Binary") for i in range(n)]
    # offloaded share of a held input: rec * o_in, linearised (McCormick, exact for a binary)
    held_off = [var(f"held_input_offloaded_frac_{i}", 0, 1) for i in range(n)]
    o_at = [var(f"offload_attn_{i}", cat="Binary") for i in range(n)]
    keep = [var(f"keep_frac_{i}", 0, 1) for i in range(n)]
    off = [var(f"alpha_frac_{i}", 0, 1) for i in range(n)]
    rec = [var(f"recompute_frac_{i}", 0, 1) for i in range(n)]
    # The executor holds an offloading tensor whole until its D2H copy is done (the recomputed
    # rows leave with the offloaded ones, the kept rows have a copy meanwhile) and prefetches
    # it whole (the recomputed rows come back with the offloaded ones): u = "other" offloads,
    # rec_u = rec * u and keep_u = keep * u, linearised (McCormick, exact for a binary u).
    u = [var(f"other_offloads_{i}", cat="Binary") for i in range(n)]
    rec_u = [var(f"recompute_frac_offloading_{i}", 0, 1) for i in range(n)]
    keep_u = [var(f"keep_frac_offloading_{i}", 0, 1) for i in range(n)]
    r_off, r_rec, t_rec, r_rec_late, r_kept = [], [], [], [], []
    copy_s = ctx.copy_s_per_byte
    for i, lp in enumerate(L):
        fp = full_prof.layers[i]  # the same layer under a full checkpoint: keeps its input only
        prob += keep[i] + off[i] + rec[i] + full[i] == 1, f"fractions_{i}"
        prob += o_at[i] + full[i] <= 1, f"attn_offload_without_checkpoint_{i}"
        prob += o_in[i] + full[i] <= 1, f"input_offload_without_checkpoint_{i}"
        prob += o_inf[i] <= full[i], f"checkpoint_input_offload_{i}"
        # a token-wise recompute needs the recomputed tokens' input rows; a layer that does not
        # save its input (hold_bytes > 0) holds them, or offloads them with the rest
        prob += held_off[i] <= rec[i], f"held_input_offload_le_recompute_{i}"
        prob += held_off[i] <= o_in[i], f"held_input_offload_le_offload_{i}"
        prob += held_off[i] >= rec[i] + o_in[i] - 1, f"held_input_offload_ge_both_{i}"
        if lp.input_bytes == 0 and lp.hold_bytes == 0:
            prob += o_in[i] == 0, f"no_input_to_offload_{i}"
        prob += off[i] <= u[i], f"other_offloads_{i}"
        for name, x, y in (("rec", rec_u, rec), ("keep", keep_u, keep)):
            prob += x[i] <= y[i], f"{name}_offloading_le_frac_{i}"
            prob += x[i] <= u[i], f"{name}_offloading_le_offloads_{i}"
            prob += x[i] >= y[i] + u[i] - 1, f"{name}_offloading_ge_both_{i}"
        r_rec_late.append(lp.other_bytes * rec_u[i] / g)
        r_kept.append(lp.other_bytes * keep_u[i] / g)
        r_off.append((lp.input_bytes * o_in[i] + lp.hold_bytes * held_off[i] + fp.input_bytes * o_inf[i]
                      + lp.attn_bytes * o_at[i] + lp.other_bytes * off[i]) / g)
        r_rec.append(((lp.saved_bytes - fp.input_bytes) * full[i] + lp.other_bytes * (rec[i] - rec_u[i])
                      - lp.hold_bytes * rec[i]) / g)
        # token-wise recompute: the layer's per-token ops on the dropped rows, then those rows
        # copied into the full-size tensors (apply_plan's assembly)
        t_rec.append(fp.recompute_s * full[i] + (lp.other_fwd_s + copy_s * lp.other_bytes) * rec[i])

    # HBM capacity at every segment between release / restore points of the schedule
    windows = []  # (open lo, open hi, expr removed in between, layer, kind)
    adds = []  # (closed lo, closed hi, expr added in between, layer)
    for i, lp in enumerate(L):
        rel, res = release_restore_ops(prof, i, stream="d2h", lookahead=ctx.lookahead,
                                       prefetch_at=ctx.prefetch_at)
        windows.append((rel, res, r_off[i], i, "off"))
        windows.append((rel, res, r_rec_late[i], i, "rec_late"))
        windows.append((lp.last_fwd, lp.first_bwd, r_rec[i], i, "rec"))
        if lp.last_fwd + 1 <= rel:
            adds.append((lp.last_fwd + 1, rel, r_kept[i], i))
    points = sorted({0, len(times) - 1} | {w[0] for w in windows} | {w[1] for w in windows})
    segments = []
    for a, b in zip(points, points[1:], strict=False):
        segments.append((a, a))
        if b - a > 1:
            segments.append((a + 1, b - 1))
    segments.append((points[-1], points[-1]))
    live = prof.live_bytes
    binding_seg = None
    worst_left = None
    for lo, hi in segments:
        peak = max(live[lo:hi + 1])
        removable = [w for w in windows if w[0] < lo and hi < w[1]]
        added = [a for a in adds if a[0] <= lo and hi <= a[1]]
        held = sum(L[w[3]].hold_bytes for w in removable if w[4] == "rec")
        if peak + held + sum(L[a[3]].other_bytes for a in added) <= budget:
            continue
        k = max(range(lo, hi + 1), key=lambda j: live[j])
        name = f"hbm_capacity_at_{prof.workload.ops[k].name}"
        prob += (peak / g - pulp.lpSum(w[2] for w in removable) + pulp.lpSum(a[2] for a in added)
                 <= budget / g), name
        # what is left when everything removable is removed (for the infeasibility message)
        max_removed = _max_removed_bytes(L, full_prof, [w[3] for w in removable if w[4] == "off"],
                                         [w[3] for w in removable if w[4] == "rec"])
        left = peak - max_removed
        if left > budget and (worst_left is None or left > worst_left):
            worst_left, binding_seg = left, prof.workload.ops[k]

    # host memory shared by the node's GPUs
    prob += pulp.lpSum(r_off) * rates.num_gpus_sharing_host <= host_budget / g, "host_capacity"

    # time: forward with the D2H queue, then backward with the H2D queue (seconds)
    e = [var(f"fwd_end_{i}", 0) for i in range(n)]
    d = [var(f"d2h_done_{i}", 0) for i in range(n)]
    h = [var(f"h2d_done_{i}", 0) for i in range(n)]
    s = [var(f"bwd_stage_start_{i}", 0) for i in range(n)]
    fwd_end = var("fwd_and_loss_end", 0)
    step = var("step_end", 0)
    pre = sum(times[: L[0].first_fwd])
    for i, lp in enumerate(L):
        gap_before = pre if i == 0 else sum(times[L[i - 1].last_fwd + 1: lp.first_fwd])
        prev = e[i - 1] if i else 0
        prob += e[i] >= prev + gap_before + lp.fwd_s, f"fwd_compute_{i}"
        prob += d[i] >= e[i] + r_off[i] / b_d2h, f"d2h_after_fwd_{i}"
        if i:
            prob += d[i] >= d[i - 1] + r_off[i] / b_d2h, f"d2h_fifo_{i}"
        if i + 1 < n:
            prob += e[i + 1] >= d[i], f"staging_buffer_reuse_{i}"
        else:
            prob += fwd_end >= d[i], f"staging_buffer_reuse_{i}"
    prob += fwd_end >= e[n - 1] + sum(times[L[-1].last_fwd + 1: prof.first_bwd_op]), "loss_compute"
    head_bwd = sum(times[prof.first_bwd_op: L[-1].first_bwd])
    for i in range(n - 1, -1, -1):
        lp = L[i]
        j = i + ctx.lookahead
        start = s[j] if j < n else fwd_end
        if j < n and ctx.prefetch_at == "attention":  # after layer j's recompute and MLP backward
            start = start + t_rec[j] + L[j].mlp_bwd_s
        prob += h[i] >= start + r_off[i] / b_h2d, f"prefetch_after_stage_start_{i}"
        if i + 1 < n:
            prob += h[i] >= h[i + 1] + r_off[i] / b_h2d, f"h2d_fifo_{i}"
            between = sum(times[L[i + 1].last_bwd + 1: lp.first_bwd])
            prob += s[i] >= s[i + 1] + t_rec[i + 1] + L[i + 1].bwd_s + between, f"bwd_compute_{i}"
        else:
            prob += s[i] >= fwd_end + head_bwd, f"bwd_compute_{i}"
        prob += s[i] >= h[i], f"bwd_needs_prefetch_{i}"
    tail = sum(times[L[0].last_bwd + 1:])
    prob += step >= s[0] + t_rec[0] + L[0].bwd_s + tail, "step_end"
    # Among plans of equal step time prefer less copy traffic and fewer checkpoints (a tie-break
    # far below any step-time difference: TIE_BREAK_FRAC of the step per GiB or per layer).
    eps = TIE_BREAK_FRAC * sum(times)
    prob += step + eps * (pulp.lpSum(r_off) + pulp.lpSum(full))
    result = solve(prob, time_limit_s=time_limit_s, solver=solver, lp_path=lp_path)
    elapsed = time.perf_counter() - t0
    if not result.has_solution:
        binding = ""
        if binding_seg is not None:
            user_budget = ctx.gpu_budget_bytes if budget_bytes is None else budget_bytes
            what = ("weights + grads + optimizer states + the optimizer step's workspace"
                    if binding_seg.phase == Phase.OPTIM else "what is live")
            verb = "need" if binding_seg.phase == Phase.OPTIM else "needs"
            binding = (f"{what} at {binding_seg.name} {verb} {format_bytes(worst_left + RUNTIME_WORKSPACE_BYTES)}"
                       f" > {format_bytes(user_budget)} gpu budget even with every layer"
                       " recomputed and its input offloaded")
        elif result.status == "infeasible":
            binding = "host_capacity: offloading needed to fit HBM exceeds the host budget"
        return MipSolution(layers=(), objective_s=None, status=result.status, solver=result.solver,
                           gap=result.gap, solve_time_s=elapsed, binding=binding or result.status)
    layers = tuple(_layer_from_solution(i, L[i], full[i].value(),
                                        max(o_in[i].value() or 0, o_inf[i].value() or 0),
                                        o_at[i].value(), keep[i].value(), off[i].value(), rec[i].value())
                   for i in range(n))
    return MipSolution(layers=layers, objective_s=float(step.value()), status=result.status,
                       solver=result.solver, gap=result.gap, solve_time_s=elapsed, binding="")


def _max_removed_bytes(L, full_prof, off_layers, rec_layers) -> int:
    """Most bytes the windows covering one moment could remove (every layer at its best mode)."""
    out = 0
    for i in set(off_layers) | set(rec_layers):
        saved, full_in = L[i].saved_bytes, full_prof.layers[i].input_bytes
        if i in off_layers and i in rec_layers:
            out += saved
        elif i in off_layers:
            out += max(saved, full_in)
        else:
            out += max(L[i].other_bytes, saved - full_in)
    return out


def _frac(x) -> float:
    v = round(min(1.0, max(0.0, float(x or 0.0))), 6)
    return 0.0 if v < EPS_FRAC else v


def _layer_from_solution(i, lp: LayerProfile, full, o_in, o_at, keep, off, rec) -> LayerPlan:
    inp = "offload" if round(o_in or 0) == 1 else "keep"
    if round(full or 0) == 1:
        return LayerPlan(layer=i, checkpoint="full", input=inp)
    keep, off = _frac(keep), _frac(off)
    if off > 0:
        other = RoleAction(action="offload", alpha_frac=off, keep_frac=min(keep, 1.0 - off))
    elif keep >= 1.0:
        other = KEEP
    else:
        other = RoleAction(action="recompute", keep_frac=keep)
    attn = RoleAction(action="offload", alpha_frac=1.0) if round(o_at or 0) == 1 else KEEP
    roles = {r: (attn if r in ATTN_ROLES else other) for r in lp.role_tids}
    roles = {r: a for r, a in sorted(roles.items()) if a != KEEP}
    return LayerPlan(layer=i, input=inp, roles=roles)


def plan_mip(ctx: PlanContext, *, time_limit_s: float = 10.0, solver: str = "highs",
             fallbacks: Sequence[StrategyResult] = ()) -> tuple[StrategyResult, MipSolution | None]:
    """Solve, replay, and tighten the HBM budget by the replay's overshoot (allocated bytes) or
    by a growing step (the caching allocator's fragmentation) until the plan fits.

    Returns the best of the MIP's plan and the feasible ``fallbacks`` (a baseline is a point of
    the MIP's space the linear model may have misjudged), and the MIP's last solution.
    """
    t0 = time.perf_counter()
    budget, host_budget = ctx.gpu_budget_bytes, ctx.host_budget_bytes
    sol = None
    best: StrategyResult | None = None
    frag_repairs = 0
    frag_failed: int | None = None  # the last budget whose plan the caching allocator could not serve

    def attempt(budget_bytes: int) -> tuple[MipSolution, StrategyResult | None]:
        remaining = max(1e-3, time_limit_s - (time.perf_counter() - t0))
        s = solve_mip(ctx, budget_bytes=budget_bytes, host_budget_bytes=host_budget, time_limit_s=remaining,
                      solver=solver)
        if not s.layers:
            return s, None
        return s, evaluate(ctx, "mip", s.layers, solver=s.solver, status=s.status, gap=s.gap,
                           solve_time_s=time.perf_counter() - t0, time_limit_s=time_limit_s)

    for _ in range(MAX_REPAIRS):
        sol, res = attempt(budget)
        if res is None:
            break
        if res.feasible or best is None:
            best = res
        if res.feasible:
            break
        over = res.peak_hbm_bytes - ctx.gpu_budget_bytes
        if over > 0:  # the linear model misjudged allocated bytes: take the overshoot off
            budget -= over + 64 * 2**20
        else:  # fragmentation, not linear in the budget: back off 2%, 4%, 8%, ... of it
            frag_failed = budget
            budget -= int(FRAGMENTATION_STEP_FRAC * ctx.gpu_budget_bytes * 2**frag_repairs)
            frag_repairs += 1
        host_budget -= max(0, res.peak_host_bytes - ctx.host_budget_bytes)
    if best is not None and best.feasible and frag_failed is not None:
        lo, hi = budget, frag_failed
        for _ in range(REFINE_SOLVES):
            if hi - lo < REFINE_MIN_FRAC * ctx.gpu_budget_bytes or time.perf_counter() - t0 >= time_limit_s:
                break
            mid = (lo + hi) // 2
            mid_sol, res = attempt(mid)
            if res is not None and res.feasible:
                lo = mid
                if res.step_time_s < best.step_time_s:
                    best, sol = res, mid_sol
            else:
                hi = mid
    candidates = [r for r in fallbacks if r.feasible]
    if best is not None and best.feasible:
        candidates.append(best)
    if not candidates:
        reason = (best.reason if best is not None else (sol.binding if sol else "no solution"))
        return (StrategyResult(name="mip", feasible=False, step_time_s=best.step_time_s if best else None,
                               mfu=best.mfu if best else None,
                               peak_hbm_bytes=best.peak_hbm_bytes if best else None,
                               peak_host_bytes=best.peak_host_bytes if best else None,
                               reason=reason, plan=best.plan if best else None,
                               replay=best.replay if best else None, applied=best.applied if best else None),
                sol)
    winner = min(candidates, key=lambda r: (r.step_time_s, r.name != "mip"))
    if winner.name == "mip":
        return winner, sol
    # a baseline replays faster than the MIP's plan, or the MIP stopped without one: return the
    # baseline, saying so
    elapsed = time.perf_counter() - t0
    res = evaluate(ctx, "mip", winner.plan.layers, solver=sol.solver if sol else None,
                   status=f"fallback:{winner.name}", gap=sol.gap if sol else None, solve_time_s=elapsed,
                   time_limit_s=time_limit_s)
    if best is not None and best.feasible:
        why = "replays faster than the MIP's"
    elif best is not None:
        why = f"the MIP's plans do not fit: {best.reason}"
    else:
        why = f"the MIP returned no feasible plan: {sol.status if sol else 'not run'}"

    return StrategyResult(**{**res.__dict__, "reason": f"{winner.name}'s plan ({why})"}), sol


def mip_variants(ctx: PlanContext) -> list[tuple[str, str]]:
    """(prefetch point, MLP activation) pairs the MIP is solved for: every ``PREFETCH_POINTS``
    entry, each with the job's ``mlp_activation`` and, for a SwiGLU model whose job saves the
    activation, with it recomputed."""
    acts = [ctx.job.mlp_activation]
    if ctx.model.mlp == "swiglu" and ctx.job.mlp_activation == "saved":
        acts.append("recomputed")
    return [(point, act) for act in acts for point in PREFETCH_POINTS]


def plan_mip_variants(ctx: PlanContext, *, time_limit_s: float = 10.0, solver: str = "highs",
                      fallbacks: Sequence[StrategyResult] = ()) -> StrategyResult:
    """The MIP for each of ``mip_variants`` (an equal share of the time limit each); the
    fastest feasible plan, the first variant's on a tie or when none fits."""
    from dataclasses import replace as dc_replace

    out = []
    variants = mip_variants(ctx)
    for point, act in variants:
        if act == ctx.job.mlp_activation:
            c = ctx if point == ctx.prefetch_at else dc_replace(ctx, prefetch_at=point, _profiles=ctx._profiles)
        else:  # another template: its own profiles
            c = dc_replace(ctx, prefetch_at=point, job=ctx.job.model_copy(update={"mlp_activation": act}),
                           _profiles=ctx._variant_profiles.setdefault(act, {}))
        res, _ = plan_mip(c, time_limit_s=time_limit_s / len(variants), solver=solver, fallbacks=fallbacks)
        out.append(res)
    feasible = [r for r in out if r.feasible]
    if not feasible:
        return out[0]
    return min(feasible, key=lambda r: r.step_time_s)


# ---- all strategies ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanReport:
    strategies: tuple[StrategyResult, ...]
    best: str | None  # name of the fastest feasible strategy
    binding: str  # why nothing fits, when nothing does

    def result(self, name: str) -> StrategyResult:
        return next(r for r in self.strategies if r.name == name)

    def to_dict(self) -> dict:
        return {"strategies": [r.row() for r in self.strategies], "best": self.best}


def static_bytes_check(ctx: PlanContext) -> str:
    """Non-empty when the model states alone exceed the GPU budget (no plan can help)."""
    prof = ctx.profile("none")
    index = prof.workload._by_id()
    groups = {"weights": 0, "grads": 0, "optimizer states": 0}
    for t in index.values():
        if not t.persistent:
            continue
        key = {Role.WEIGHT: "weights", Role.GRAD: "grads"}.get(t.role, "optimizer states")
        groups[key] += t.num_bytes
    total = sum(groups.values())
    if total <= ctx.gpu_budget_bytes:
        return ""
    names = " + ".join(k for k, v in groups.items() if v)
    return f"{names} need {total / GiB:.1f} GiB > {ctx.gpu_budget_bytes / GiB:.1f} GiB gpu budget"


def plan_training(model, job, node, *, gpu_budget_bytes: int | None = None,
                  host_budget_bytes: int | None = None, time_limit_s: float = 10.0,
                  solver: str = "highs", lookahead: int = 1, allocator: str = "planned") -> PlanReport:
    """Every strategy for one training step, replayed; the fastest feasible one is ``best``.
    ``allocator``: "planned" or "caching" (see PlanContext.allocator)."""
    from planners import baselines

    if allocator not in ALLOCATORS:
        raise UserInputError(f"allocator: {allocator!r} is not one of {', '.join(ALLOCATORS)}")

    if job.mode != "train":
        raise UserInputError("job.mode: planning needs a training job")
    job.check(model)
    ctx = PlanContext(model=model, job=job.model_copy(update={"checkpointing": "none"}), node=node,
                      gpu_budget_bytes=gpu_budget_bytes or node.gpu.hbm_capacity_bytes,
                      host_budget_bytes=host_budget_bytes or node.host_memory.capacity_bytes,
                      lookahead=lookahead, allocator=allocator)
    static = static_bytes_check(ctx)
    results: list[StrategyResult] = []
    for name in STRATEGIES[:-1]:
        layers, why_not = baselines.BASELINES[name](ctx)
        if layers is None:
            results.append(StrategyResult(name=name, feasible=False, step_time_s=None, mfu=None,
                                          peak_hbm_bytes=None, peak_host_bytes=None, reason=why_not))
            continue
        results.append(evaluate(ctx, name, layers))
    if static:
        results.append(StrategyResult(name="mip", feasible=False, step_time_s=None, mfu=None,
                                      peak_hbm_bytes=None, peak_host_bytes=None, reason=static))
    else:
        results.append(plan_mip_variants(ctx, time_limit_s=time_limit_s, solver=solver,
                                                fallbacks=results))
    feasible = [r for r in results if r.feasible]
    best = min(feasible, key=lambda r: (r.step_time_s, STRATEGIES.index(r.name))).name if feasible else None
    binding = ""
    if best is None:
        binding = static or next((r.reason for r in results if r.name == "mip"), "")
    return PlanReport(strategies=tuple(results), best=best, binding=binding)
