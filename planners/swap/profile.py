"""The step profile: per decoder layer, the tensors kept from its forward to its backward.

Models: MEMO's grouping (the layer input; the attention output and its statistics; every other
skeletal tensor) read from the lifetimes of the analytical Workload (views keep their base alive),
their bytes, and the layer's forward, attention and backward times and op indices.
Assumes: a Workload from `simulator.templates` (ops carry layer and phase). Ignores: nothing
the Workload does not hold. Source: MEMO (Zhao et al., SIGMOD 2025) section 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.workload import ATTN_ROLES, NOT_ACTIVATIONS, Phase, Role, Workload, walk_memory


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
    # tensors by the op that frees them: a layer looks only at those freed in its forward
    # (inputs it does not save) or its backward (what it saved), not at every tensor
    freed_at: list[list[int]] = [[] for _ in ops]
    for t, f in free_op.items():
        freed_at[f].append(t)
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
        candidates = [t for f in (*range(lo, hi + 1), *range(b_lo, b_hi + 1)) for t in freed_at[f]
                      if t in alloc_op]
        for t in candidates:
            k = alloc_op[t]
            spec = index[t]
            if spec.persistent or spec.role.value in NOT_ACTIVATIONS or spec.num_bytes == 0:
                continue
            free_k = free_op.get(t)
            if free_k is not None and k < lo <= free_k <= hi and spec.role in (Role.LAYER_INPUT, Role.INPUT):
                holds.append(t)  # an input the layer uses in forward and does not save
            if free_k is None or free_k < first_bwd_op:
                continue
            if lo <= k <= hi and b_lo <= free_k <= b_hi:
                by_role.setdefault(spec.role.value, []).append(t)
            elif k < lo and b_lo <= free_k <= b_hi and spec.role in (Role.LAYER_INPUT, Role.INPUT):
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
