"""When an offloaded or recomputed slice of a layer's saved tensors leaves HBM and comes back.

Models: per decoder layer, the points of one training step where its offloaded bytes are
copied out, released and prefetched, and where its backward stage (a token-wise recompute
first, when the plan has one) starts. Two views of the same points, derived here once:
  * in layers (what the executor's hooks see): a side-stream (D2H) copy's source is released
    at the end of the next layer's forward (two rotating staging buffers; the last layer's at
    the end of forward and loss), and the prefetch of layer l is issued by the backward of
    layer l + k (lookahead k) when it starts, or with ``prefetch_at="attention"`` when it
    reaches its attention block (the MLP block's activations are free by then); layers with
    l + k >= n are prefetched when backward starts;
  * in ops of a Workload (what the replay, the MIP's windows and `simulator.des.add_offload`
    read): the op after which the D2H copy starts (the layer's last forward op), the op after
    which the copied bytes leave HBM, the op at whose start the prefetch is allocated and the
    H2D copy starts, and the first op of the layer's backward stage, which waits for the copy
    (and before which a token-wise recompute runs).
A copy on the compute stream (``torch.autograd.graph.save_on_cpu``) is synchronous: its bytes
leave at the end of the layer's forward and come back at the start of its backward stage.
Assumes: a Workload from `simulator.templates` (ops carry layer and phase; a layer's backward
stage opens with its recompute ops when it is checkpointed, and its attention block's backward
ops are named ``layers.{i}.attn.*``); decoder layers are numbered 0..n-1.
Ignores: what is moved and how much (the plan's decisions, applied by `planners.swap.apply`),
and the tier it goes to (the replay's route).
Source: MEMO (Zhao et al., SIGMOD 2025) section 4: offload after a layer's forward on a D2H
stream, two staging buffers, prefetch of layer i during the backward of layer i+1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simulator.workload import Phase, Workload

PREFETCH_POINTS = ("layer", "attention")
STREAMS = ("d2h", "compute")
_BACKWARD_PHASES = (Phase.BWD, Phase.RECOMPUTE)


@dataclass(frozen=True)
class LayerMovement:
    """Where layer ``layer``'s moved bytes leave and come back; op fields are -1 until resolved
    on a Workload (`step_movements` with ``workload``)."""

    layer: int
    release_after_layer: int | None  # a D2H copy's source leaves at the end of this layer's
    # forward (None: the end of forward and loss)
    prefetch_layer: int | None  # this layer's backward issues the prefetch (None: backward's start)
    prefetch_at: str  # "layer" | "attention": where in prefetch_layer's backward
    copy_op: int = -1  # the D2H copy starts when this op (the layer's last forward op) ends
    release_op: int = -1  # the copied bytes leave HBM after this op; the next op waits for the copy
    restore_op: int = -1  # the prefetch is allocated, and the H2D copy starts, at this op's start
    stage_op: int = -1  # first op of the layer's backward stage: waits for the prefetch

    def release_restore_ops(self, stream: str) -> tuple[int, int]:
        """(op after which the bytes leave HBM, op at whose start they come back) for copies on
        ``stream``: the compute stream's are synchronous, at the layer's own boundaries."""
        if stream not in STREAMS:
            raise ValueError(f"stream: expected one of {', '.join(STREAMS)}, got {stream!r}")
        if stream == "compute":
            return self.copy_op, self.stage_op
        return self.release_op, self.restore_op


def step_movements(*, lookahead: int, prefetch_at: str = "layer", num_layers: int | None = None,
                   workload: Workload | None = None) -> tuple[LayerMovement, ...]:
    """Every decoder layer's movement points for a prefetch ``lookahead`` and ``prefetch_at``;
    with ``workload`` also the op indices (its layers must be 0..``num_layers``-1; None: as
    many as it has)."""
    if lookahead < 0:
        raise ValueError(f"lookahead: must be >= 0, got {lookahead}")
    if prefetch_at not in PREFETCH_POINTS:
        raise ValueError(f"prefetch_at: expected one of {', '.join(PREFETCH_POINTS)}, got {prefetch_at!r}")
    if num_layers is None:
        if workload is None:
            raise ValueError("step_movements: give num_layers or a workload")
        num_layers = len({op.layer for op in workload.ops if op.layer is not None and op.phase == Phase.FWD})
    n = num_layers
    moves = tuple(LayerMovement(layer=i, release_after_layer=i + 1 if i + 1 < n else None,
                                prefetch_layer=i + lookahead if i + lookahead < n else None,
                                prefetch_at=prefetch_at)
                  for i in range(n))
    if workload is None:
        return moves
    ops = _layer_ops(workload, n)
    last_fwd_op = ops.first_bwd_op - 1

    def restore(m: LayerMovement) -> int:
        if m.prefetch_layer is None:
            return ops.first_bwd_op
        ahead = m.prefetch_layer
        return ops.first_attn_bwd[ahead] if prefetch_at == "attention" else ops.first_bwd[ahead]

    return tuple(replace(m, copy_op=ops.last_fwd[m.layer],
                         release_op=(last_fwd_op if m.release_after_layer is None
                                     else ops.last_fwd[m.release_after_layer]),
                         restore_op=restore(m), stage_op=ops.first_bwd[m.layer])
                 for m in moves)


@dataclass(frozen=True)
class _LayerOps:
    last_fwd: tuple[int, ...]
    first_bwd: tuple[int, ...]
    first_attn_bwd: tuple[int, ...]  # the layer's first backward op when it has no attention op
    first_bwd_op: int  # the first op of backward (the loss's)


def _layer_ops(workload: Workload, num_layers: int) -> _LayerOps:
    last_fwd: dict[int, int] = {}
    first_bwd: dict[int, int] = {}
    first_attn: dict[int, int] = {}
    first_bwd_op = None
    for k, op in enumerate(workload.ops):
        backward = op.phase in _BACKWARD_PHASES
        if backward and first_bwd_op is None:
            first_bwd_op = k
        if op.layer is None:
            continue
        if op.phase == Phase.FWD:
            last_fwd[op.layer] = k
        elif backward:
            first_bwd.setdefault(op.layer, k)
            if op.phase == Phase.BWD and op.name.startswith(f"layers.{op.layer}.attn."):
                first_attn.setdefault(op.layer, k)
    layers = range(num_layers)
    if sorted(last_fwd) != list(layers) or sorted(first_bwd) != list(layers) or first_bwd_op is None:
        raise ValueError(f"workload: expected decoder layers 0..{num_layers - 1} with forward and "
                         f"backward ops, got {sorted(last_fwd)}")
    return _LayerOps(last_fwd=tuple(last_fwd[i] for i in layers),
                     first_bwd=tuple(first_bwd[i] for i in layers),
                     first_attn_bwd=tuple(first_attn.get(i, first_bwd[i]) for i in layers),
                     first_bwd_op=first_bwd_op)
