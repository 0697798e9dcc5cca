"""Applying a Plan's layer decisions to the analytical Workload: new tensors, frees and copies.

Models: an offloaded part of a tensor leaves HBM when its D2H copy is done and is allocated again
where its prefetch starts; a recomputed part leaves HBM at the end of the layer's forward and
comes back in a recompute op before the layer's backward (see `planners.swap`). Those points
are read from `simulator.movement` (derived once per applied plan, kept in AppliedPlan).
Assumes: the Workload has the plan's per-layer checkpoints. Ignores: recompute workspaces
beyond the recomputed tensors. Source: MEMO (Zhao et al., SIGMOD 2025) sections 3-4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hwmodels.units import UserInputError
from planners.plan import LayerPlan, RoleAction, segments
from planners.swap.profile import StepProfile
from simulator.movement import PREFETCH_POINTS, LayerMovement, step_movements
from simulator.workload import ATTN_ROLES, OpSpec, Phase, TensorSpec, Workload

__all__ = ["PREFETCH_POINTS", "AppliedPlan", "Transfer", "apply_plan"]


@dataclass(frozen=True)
class Transfer:
    """One copy of one layer's offloaded bytes; op indices refer to the transformed Workload."""

    layer: int
    direction: str  # "d2h" | "h2d"
    num_bytes: int
    ready_op: int  # d2h: starts when this op ends; h2d: starts when this op starts
    needed_op: int  # compute cannot start this op before the copy is done
    stream: str  # "d2h" (side streams, overlapped) | "compute" (synchronous)
    tier: str = "host"  # where the bytes go: host DRAM, a CXL card, an NVMe drive


@dataclass(frozen=True)
class AppliedPlan:
    workload: Workload
    transfers: tuple[Transfer, ...]
    offloaded_bytes: int  # per GPU, all layers (host bytes one GPU holds at the peak)
    staging_bytes: int  # largest layer's offloaded bytes
    movements: tuple[LayerMovement, ...] = ()  # on the base Workload (the profile's)
    op_index: tuple[int, ...] = ()  # base Workload op k -> its index in ``workload``


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
    moves = step_movements(num_layers=len(prof.layers), lookahead=lookahead, prefetch_at=prefetch_at,
                           workload=wl)
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
    pending: list[tuple[int, str, int, str]] = []  # (layer, stream, bytes, tier)
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

    # Segment checkpoints: a layer whose input is "recompute" gets it back from the segment's
    # head (the nearest earlier layer whose input is kept or offloaded) by one op that re-runs
    # the forward of the layers in between, placed before the backward stage of the segment's
    # last layer; an offloaded head input is fetched for that op, not for the head's own stage.
    segs = segments(layers)
    head_of = {j: h for h, js in segs.items() for j in js}
    seg_last = {h: js[-1] for h, js in segs.items()}
    seg_allocs: dict[int, list[int]] = {}  # segment's last layer -> recomputed inputs

    def restore_of(i: int, stream: str) -> tuple[int, int]:
        rel, res = moves[i].release_restore_ops(stream)
        if i in seg_last:
            res = moves[seg_last[i]].release_restore_ops(stream)[1]
        return rel, res

    for lp, dec in zip(prof.layers, layers, strict=True):
        i = lp.layer
        if dec.input == "recompute":
            if dec.checkpoint != "full" or not lp.input_tids or i not in head_of:
                raise ValueError(f"apply_plan: layers.{i}.input: recompute needs a full checkpoint "
                                 "and an earlier layer")
            for t in lp.input_tids:
                nb = sizes[t]
                sizes[t] = 0
                part(t, nb, "dropped", alloc_of[t], lp.last_fwd)
                seg_allocs.setdefault(seg_last[head_of[i]], []).append(
                    part(t, nb, "recomputed", None, prof.free_op[t]))
        if (dec.checkpoint != "none") != (lp.recompute_s > 0.0):
            raise ValueError(f"apply_plan: layers.{i}: checkpoint {dec.checkpoint} but the profile's "
                             f"layer {'has' if lp.recompute_s else 'has no'} recompute ops")
        groups: list[tuple[tuple[int, ...], RoleAction]] = []
        inputs = lp.input_tids
        held: set[int] = set()
        if dec.checkpoint == "none" and lp.hold_bytes and dec.recomputes_tokens:
            # The executor keeps the whole input of a layer that recomputes tokens (the rows it
            # drops are recomputed from it) until the layer's backward is done, or offloads it
            # whole; its prefetched copy leaves at the recompute op.
            held_inputs: list[int] = []
            for t in lp.hold_tids:
                h = part(t, sizes[t], "held", prof.alloc_op[t], None if dec.input == "offload" else lp.last_bwd)
                sizes[t] = 0
                index[h] = extra[-1]
                alloc_of[h] = prof.alloc_op[t]
                held.add(h)
                if dec.input == "offload":
                    rec_frees.setdefault(i, []).append(h)
                held_inputs.append(h)
            inputs = tuple(held_inputs)
        if dec.input == "offload":
            groups.append((inputs, RoleAction(action="offload", alpha_frac=1.0, stream=dec.input_stream)))
        if dec.checkpoint == "none":
            groups += [(tids, dec.action(role)) for role, tids in lp.role_tids.items()]
        layer_off: dict[tuple[str, str], int] = {}  # (stream, tier) -> offloaded bytes
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
                    rel, res = restore_of(i, act.stream)
                    sizes[t] = 0
                    part(t, nb, "offloaded", alloc_of[t], rel)
                    if keep:
                        part(t, keep, "kept", lp.last_fwd, res)
                    stage_allocs.setdefault(res, []).append(part(t, nb, "prefetched", None, prof.free_op[t]))
                    off_key = (act.stream, act.tier)
                    layer_off[off_key] = layer_off.get(off_key, 0) + off
                    if rec:
                        tmp = part(t, rec, "recomputed", None, None)
                        rec_allocs.setdefault(i, []).append(tmp)
                        rec_frees.setdefault(i, []).append(tmp)
                elif off:
                    rel, res = restore_of(i, act.stream)
                    part(t, off, "offloaded", alloc_of[t], rel)
                    back = part(t, off, "prefetched", None, None)
                    rec_frees[i].remove(t)
                    rec_frees[i] += [t, back]
                    stage_allocs.setdefault(res, []).append(back)
                    off_key = (act.stream, act.tier)
                    layer_off[off_key] = layer_off.get(off_key, 0) + off
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
            recompute_ops[moves[i].stage_op] = OpSpec(
                -1, f"layers.{i}.token_recompute", "recompute", Phase.RECOMPUTE, i,
                exec_flops=rec_flops, flops=0.0, op_class="gemm", time_s=rec_s,
                allocs=tuple(rec_allocs.get(i, ())), frees=tuple(rec_frees.get(i, ())))
        if i in seg_allocs:
            h = min(j for j, last in seg_last.items() if last == i)
            seg = prof.layers[h:i]
            recompute_ops[moves[i].stage_op] = OpSpec(
                -1, f"layers.{h}-{i - 1}.segment_recompute", "recompute", Phase.RECOMPUTE, i,
                exec_flops=sum(s.fwd_flops for s in seg), flops=0.0, op_class="gemm",
                time_s=sum(s.fwd_s for s in seg), allocs=tuple(seg_allocs[i]))
        per_stream: dict[str, int] = {}
        for (stream, tier), nbytes in sorted(layer_off.items()):
            pending.append((i, stream, nbytes, tier))
            total_off += nbytes
            per_stream[stream] = per_stream.get(stream, 0) + nbytes
        staging = max([staging, *per_stream.values()])

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
    for key, fetched in sorted(stage_allocs.items()):
        pos = stage_start(key)
        out[pos] = _renumber(out[pos], pos, allocs=list(out[pos].allocs) + fetched, frees=list(out[pos].frees))
    transfers = []
    for i, stream, nbytes, tier in pending:
        rel, res = restore_of(i, stream)
        transfers.append(Transfer(i, "d2h", nbytes, new_index[moves[i].copy_op], new_index[rel] + 1, stream, tier))
        transfers.append(Transfer(i, "h2d", nbytes, stage_start(res), stage_index[seg_last.get(i, i)], stream, tier))
    tensors = tuple(TensorSpec(t.tid, t.name, sizes[t.tid], t.role, t.layer, t.persistent)
                    for t in wl.tensors + tuple(extra))
    new_wl = Workload(tensors=tensors, ops=tuple(out), initial=wl.initial,
                      meta={**wl.meta, "plan_applied": True})
    return AppliedPlan(workload=new_wl, transfers=tuple(transfers), offloaded_bytes=total_off,
                       staging_bytes=staging, movements=moves,
                       op_index=tuple(new_index[k] for k in range(len(wl.ops))))


def _renumber(op: OpSpec, oid: int, *, allocs=None, frees=None) -> OpSpec:
    return OpSpec(oid=oid, name=op.name, kind=op.kind, phase=op.phase, layer=op.layer, flops=op.flops,
                  hbm_bytes=op.hbm_bytes, op_class=op.op_class,
                  allocs=tuple(op.allocs if allocs is None else allocs),
                  frees=tuple(op.frees if frees is None else frees), saves=op.saves,
                  exec_flops=op.exec_flops, time_s=op.time_s, model_flops_=op.model_flops_)
