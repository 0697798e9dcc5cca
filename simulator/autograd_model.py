"""A small model of PyTorch eager autograd memory, used to build analytical Workloads.

Models: a forward program written as ops over tensors (inputs, outputs, tensors saved for
backward), and the backward pass that PyTorch's autograd engine derives from it:
  * forward: an op allocates its outputs when it starts; a tensor is freed after its last
    forward consumer unless it is saved for backward or held by the caller;
  * backward: ops run in reverse creation order (the engine's order for the sequential,
    residual programs of decoder LLMs); each allocates the gradients of its differentiable
    inputs (or passes the incoming gradient through, for add and views), plus a declared
    workspace; a gradient that reaches a tensor a second time is accumulated in place (the
    engine's InputBuffer does so when it holds the only reference); the incoming gradient is
    freed once consumed; a saved tensor is freed when the last node that saved it has run;
  * parameter gradients: allocated by the first contribution and kept (``.grad``), or, when
    grads persist across steps, computed into a temporary and added in place;
  * activation checkpointing (``torch.utils.checkpoint``, non-reentrant): a checkpointed region
    saves only its inputs; just before its first backward op the region's forward is re-run
    (``Phase.RECOMPUTE``) and re-allocates what it saves.
Assumes: every tensor is one storage; views are expressed by reusing the same tensor id.
Ignores: engine multithreading (one device, one thread), and the order of independent
branches (decoder programs have none that matter for memory).
Source: torch/csrc/autograd/engine.cpp (ready queue ordered by sequence number),
input_buffer.cpp (in-place accumulation), torch/utils/checkpoint.py (non-reentrant recompute).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from simulator.workload import OpSpec, Phase, Role, TensorSpec, Workload

VIEW_GRAD_KINDS = frozenset({"linear"})
"""Ops whose input gradients are views of a larger result: ``F.linear`` on a [B, T, in] input
folds it to 2-D for ``mm``, and its backward hands back a view of the mm's gradient, which keeps
that result as its base; autograd does not accumulate into such a gradient in place."""


@dataclass(frozen=True, slots=True)
class Cost:
    """FLOPs (FlopCounterMode convention), executed FLOPs, HBM bytes and op class of one kernel."""

    flops: float = 0.0
    hbm_bytes: int = 0
    op_class: str = "memory"
    exec_flops: float | None = None
    time_s: float | None = None
    model_flops: float | None = None


ZERO_COST = Cost()


def add_costs(first: Cost, second: Cost) -> Cost:
    """Two kernels run back to back as one op: work and times add; the op class is the
    second's (the op's main kernel); a time is known only when both are."""
    def _sum(a: float | None, b: float | None, default_a: float, default_b: float) -> float:
        return (default_a if a is None else a) + (default_b if b is None else b)

    time_s = None if first.time_s is None or second.time_s is None else first.time_s + second.time_s
    return Cost(flops=first.flops + second.flops, hbm_bytes=first.hbm_bytes + second.hbm_bytes,
                op_class=second.op_class,
                exec_flops=_sum(first.exec_flops, second.exec_flops, first.flops, second.flops),
                time_s=time_s,
                model_flops=_sum(first.model_flops, second.model_flops, first.flops, second.flops))


@dataclass
class _Tensor:
    tid: int
    name: str
    num_bytes: int
    role: Role
    layer: int | None
    requires_grad: bool
    is_param: bool = False
    persistent: bool = False
    leaf_grad: bool = False  # a leaf that requires grad: its .grad accumulates like a weight's
    view_of: int | None = None  # a view shares the storage of this base tensor (0 bytes itself)
    grad_bytes: int | None = None  # size of its gradient when it differs from num_bytes (views)


@dataclass
class _FwdOp:
    name: str
    kind: str
    layer: int | None
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    saves: tuple[int, ...]
    cost: Cost
    # Backward description
    has_backward: bool
    grad_inputs: tuple[int, ...]  # inputs that receive a newly allocated gradient
    passthrough: tuple[int, ...]  # inputs that receive the output gradient itself (add, view)
    bwd_cost: Cost
    bwd_workspace_bytes: int
    fwd_workspace_bytes: int
    region: int | None  # checkpoint region id
    seq: int = 0


@dataclass
class _Region:
    rid: int
    inputs: tuple[int, ...]
    first_op: int = -1
    last_op: int = -1


class BlockMark(NamedTuple):
    """Counts of tensors, ops, checkpoint regions, initial and held tensors recorded so far."""

    num_tensors: int
    num_ops: int
    num_regions: int
    num_initial: int
    num_held: int


@dataclass
class ProgramBuilder:
    """Write a forward program; ``build()`` derives backward and returns a Workload."""

    grads_persist: bool = False
    no_grad: bool = False  # inference: no backward, nothing saved (torch.no_grad / inference_mode)
    _tensors: list[_Tensor] = field(default_factory=list)
    _ops: list[_FwdOp] = field(default_factory=list)
    _held: set[int] = field(default_factory=set)
    _initial: list[int] = field(default_factory=list)
    _regions: list[_Region] = field(default_factory=list)
    _open_region: _Region | None = None
    _persistent_extra: list[int] = field(default_factory=list)
    _loss_backward_cost: Cost = ZERO_COST
    accumulate_time_s: Callable[[int], float] | None = None
    """Time of adding ``n`` gradient bytes into a gradient in place (``add_``: reads 2n, writes
    n), charged to the backward op whose input gradient is accumulated; None: not timed."""
    leaf_grads: dict[int, list[int]] = field(default_factory=dict)
    """After ``build``: for each leaf that requires grad (a weight), the tensors of its
    gradient's size (``.grad``, ``.grad_tmp``) that backward allocated."""
    derivation: Derivation | None = None
    """After ``build``: what it derived (``retimed`` reuses it)."""
    repeat_backward: bool = True
    """Derive a repeated block's backward once and copy it to the block's other copies whose
    state at their backward is the same (False: derive every block; the copies are equal)."""
    num_copied_blocks: int = 0
    """After ``build``: how many blocks' backward was copied rather than derived."""
    _copies: list[tuple[BlockMark, BlockMark, int, int, int, dict[int, int]]] = field(default_factory=list)
    _edited: list[int] = field(default_factory=list)  # tensors re-labelled or held after their creation

    # ---- tensors -------------------------------------------------------------------------
    def tensor(
        self,
        name: str,
        num_bytes: int,
        role: Role,
        layer: int | None = None,
        *,
        requires_grad: bool = True,
    ) -> int:
        """An activation produced by a later op (or an input, via ``input``)."""
        if num_bytes < 0:
            raise ValueError(f"tensor {name}: negative size {num_bytes}")
        tid = len(self._tensors)
        self._tensors.append(_Tensor(tid, name, int(num_bytes), role, layer, requires_grad))
        return tid

    def view(self, name: str, base: int, logical_bytes: int, role: Role, layer: int | None = None) -> int:
        """A view of ``base`` (chunk, split, transpose): no storage of its own, but it keeps the
        base's storage alive while it lives, and its gradient has ``logical_bytes``."""
        tid = self.tensor(name, 0, role, layer)
        t = self._tensors[tid]
        t.view_of = base
        t.grad_bytes = int(logical_bytes)
        return tid

    def input(self, name: str, num_bytes: int, role: Role = Role.INPUT, *, requires_grad: bool = False) -> int:
        """A tensor live at step start and held by the caller through the step."""
        tid = self.tensor(name, num_bytes, role, None, requires_grad=requires_grad)
        self._tensors[tid].leaf_grad = requires_grad
        self._initial.append(tid)
        self._held.add(tid)
        return tid

    def param(self, name: str, num_bytes: int, layer: int | None = None, *, grad_bytes: int | None = None) -> int:
        """A weight: persistent, requires grad, gets a ``.grad`` (of ``grad_bytes``, default the
        weight's size)."""
        tid = self.tensor(name, num_bytes, Role.WEIGHT, layer, requires_grad=True)
        t = self._tensors[tid]
        t.grad_bytes = grad_bytes
        t.is_param = True
        t.leaf_grad = True
        t.persistent = True
        self._initial.append(tid)
        self._held.add(tid)
        return tid

    def state(self, name: str, num_bytes: int, role: Role) -> int:
        """A persistent tensor that no op touches in this step (optimizer states, master weights)."""
        tid = self.tensor(name, num_bytes, role, None, requires_grad=False)
        self._tensors[tid].persistent = True
        self._initial.append(tid)
        self._held.add(tid)
        return tid

    def set_role(self, tid: int, role: Role) -> None:
        """Re-label a tensor (e.g. a key projection that becomes the KV cache)."""
        self._tensors[tid].role = role
        self._edited.append(tid)

    def hold(self, tid: int) -> None:
        """The caller keeps a reference to ``tid`` until the step ends (e.g. HF outputs.logits)."""
        self._held.add(tid)
        self._edited.append(tid)

    # ---- ops -----------------------------------------------------------------------------
    def op(
        self,
        name: str,
        kind: str,
        layer: int | None,
        *,
        inputs: tuple[int, ...] | list[int],
        outputs: tuple[int, ...] | list[int] = (),
        saves: tuple[int, ...] | list[int] = (),
        cost: Cost = ZERO_COST,
        grad_inputs: tuple[int, ...] | list[int] | None = None,
        passthrough: tuple[int, ...] | list[int] = (),
        bwd_cost: Cost = ZERO_COST,
        bwd_workspace_bytes: int = 0,
        fwd_workspace_bytes: int = 0,
        has_backward: bool | None = None,
    ) -> None:
        """Record a forward op.

        ``grad_inputs`` default: every input that requires grad and is not in ``passthrough``.
        An op whose inputs need no grad has no backward node.
        """
        inputs = tuple(inputs)
        outputs = tuple(outputs)
        if self.no_grad:
            saves, has_backward = (), False
        needs = [] if self.no_grad else [i for i in inputs if self._tensors[i].requires_grad]
        if grad_inputs is None:
            grad_inputs = tuple(i for i in needs if i not in passthrough)
        if has_backward is None:
            has_backward = bool(needs)
        for o in outputs:
            self._tensors[o].requires_grad = bool(needs)
        rid = None
        if self._open_region is not None:
            rid = self._open_region.rid
            if self._open_region.first_op < 0:
                self._open_region.first_op = len(self._ops)
            self._open_region.last_op = len(self._ops)
        self._ops.append(
            _FwdOp(
                name=name,
                kind=kind,
                layer=layer,
                inputs=inputs,
                outputs=outputs,
                saves=tuple(saves),
                cost=cost,
                has_backward=has_backward,
                grad_inputs=tuple(grad_inputs),
                passthrough=tuple(passthrough),
                bwd_cost=bwd_cost,
                bwd_workspace_bytes=int(bwd_workspace_bytes),
                fwd_workspace_bytes=int(fwd_workspace_bytes),
                region=rid,
                seq=len(self._ops),
            )
        )

    def begin_checkpoint(self, inputs: tuple[int, ...] | list[int]) -> None:
        """Start a ``torch.utils.checkpoint`` region whose forward takes ``inputs``."""
        if self._open_region is not None:
            raise ValueError("nested checkpoint regions are not modelled")
        region = _Region(len(self._regions), tuple(inputs))
        self._regions.append(region)
        self._open_region = region

    def end_checkpoint(self) -> None:
        self._open_region = None

    def mark(self) -> BlockMark:
        """Where the program stands: a block between two marks can be repeated (``repeat``)."""
        if self._open_region is not None:
            raise ValueError("mark: inside a checkpoint region")
        return BlockMark(len(self._tensors), len(self._ops), len(self._regions), len(self._initial), len(self._held))

    def repeat(self, start: BlockMark, end: BlockMark, *, inputs: dict[int, int],
               rename: Callable[[str], str], layer: tuple[int, int]) -> dict[int, int] | None:
        """Record again the tensors, ops and checkpoint regions recorded between ``start`` and
        ``end`` (a decoder layer), on ``inputs`` (old tid -> new tid) instead of the block's
        inputs, names through ``rename``, layer ``layer[0]`` as ``layer[1]``: what recording the
        same program on those tensors gives, at the cost of copying it. Returns the map of the
        block's tensors to their copies; None (nothing recorded) when the block touches a
        tensor from before it other than by reading it (or holds one), which copying would
        not repeat."""
        t0, o0, r0, i0, _ = start
        t1, o1, r1, i1, _ = end
        block_ops = self._ops[o0:o1]
        inside = range(t0, t1)
        if any(o not in inside for op in block_ops for o in op.outputs):
            return None
        initial = self._initial[i0:i1]
        held = [t for t in inside if t in self._held]
        if end.num_held - start.num_held != len(held) or held != initial:
            return None
        dt, do, dr = len(self._tensors) - t0, len(self._ops) - o0, len(self._regions) - r0
        tmap = {t: t + dt for t in inside}
        get = {**inputs, **tmap}.get

        def m(ts):
            return tuple(map(get, ts, ts))

        def lay(x):
            return layer[1] if x == layer[0] else x

        for t in self._tensors[t0:t1]:
            view = None if t.view_of is None else m((t.view_of,))[0]
            self._tensors.append(_Tensor(tmap[t.tid], rename(t.name), t.num_bytes, t.role, lay(t.layer), t.requires_grad,
                                         t.is_param, t.persistent, t.leaf_grad, view, t.grad_bytes))
        for tid in initial:
            self._initial.append(tmap[tid])
            self._held.add(tmap[tid])
        for r in self._regions[r0:r1]:
            self._regions.append(_Region(r.rid + dr, m(r.inputs), r.first_op + do, r.last_op + do))
        for op in block_ops:
            self._ops.append(_FwdOp(rename(op.name), op.kind, lay(op.layer), m(op.inputs), m(op.outputs), m(op.saves),
                                    op.cost, op.has_backward, m(op.grad_inputs), m(op.passthrough), op.bwd_cost,
                                    op.bwd_workspace_bytes, op.fwd_workspace_bytes,
                                    None if op.region is None else op.region + dr, op.seq + do))
        self._copies.append((start, end, dt, do, dr, dict(inputs)))
        return tmap

    def set_loss_backward_cost(self, cost: Cost) -> None:
        self._loss_backward_cost = cost

    # ---- derivation ----------------------------------------------------------------------
    def build(self, meta: dict | None = None) -> Workload:
        """Derive forward frees, recompute and backward; return the Workload."""
        signature = self.signature()
        deriver = _Deriver(self)
        wl = deriver.run(meta or {})
        self.leaf_grads = deriver.leaf_grads
        self.num_copied_blocks = deriver.num_copied
        self.derivation = Derivation(signature, tuple(deriver.sources), deriver.leaf_grads)
        return wl

    def signature(self) -> tuple:
        """Everything of the recorded program that the derivation reads, but its costs."""
        return (tuple((t.name, t.num_bytes, t.role, t.layer, t.requires_grad, t.is_param, t.persistent, t.leaf_grad,
                       t.view_of, t.grad_bytes) for t in self._tensors),
                tuple((op.name, op.kind, op.layer, op.inputs, op.outputs, op.saves, op.has_backward, op.grad_inputs,
                       op.passthrough, op.bwd_workspace_bytes, op.fwd_workspace_bytes, op.region) for op in self._ops),
                tuple(self._initial), frozenset(self._held), tuple((r.inputs, r.first_op, r.last_op) for r in self._regions),
                self.grads_persist, self.no_grad)

    def retimed_times_s(self, workload: Workload, derivation: Derivation) -> tuple[float | None, ...] | None:
        """The durations of ``workload``'s ops (built from ``derivation``'s program) under this
        builder's costs: what ``build`` gives when the two programs differ in their ops'
        durations only (the same model and job timed on another node), without deriving
        backward again or making the ops anew. None when they differ in more: the recorded
        program, or any op's FLOPs, bytes or class."""
        if self.signature() != derivation.signature or len(workload.ops) != len(derivation.sources):
            return None
        fwd = self._ops
        times_s: list[float | None] = []
        for op, (i, backward, accumulated) in zip(workload.ops, derivation.sources, strict=True):
            if not backward:
                cost = fwd[i].cost
            elif i < 0:
                cost = self._loss_backward_cost
            else:
                cost = _backward_cost(self, fwd[i], accumulated)
            if (cost.flops != op.flops or cost.hbm_bytes != op.hbm_bytes or cost.op_class != op.op_class
                    or cost.exec_flops != op.exec_flops or cost.model_flops != op.model_flops_):
                return None
            times_s.append(cost.time_s)
        self.leaf_grads = derivation.leaf_grads
        self.derivation = derivation
        return tuple(times_s)

    def retimed(self, workload: Workload, derivation: Derivation) -> Workload | None:
        """``workload`` with the durations of ``retimed_times_s``: what ``build`` gives when the
        programs differ in their durations only; None when they differ in more."""
        times_s = self.retimed_times_s(workload, derivation)
        return None if times_s is None else with_times_s(workload, times_s)


def with_times_s(workload: Workload, times_s: tuple[float | None, ...]) -> Workload:
    """``workload`` with its ops' durations replaced by ``times_s`` (one per op)."""
    ops = tuple(OpSpec(op.oid, op.name, op.kind, op.phase, op.layer, op.flops, op.hbm_bytes, op.op_class, op.allocs,
                       op.frees, op.saves, op.exec_flops, t, op.model_flops_)
                for op, t in zip(workload.ops, times_s, strict=True))
    return Workload(tensors=workload.tensors, ops=ops, initial=workload.initial, meta=dict(workload.meta))


class _Deriver:
    def __init__(self, b: ProgramBuilder):
        self.b = b
        self.tensors: list[TensorSpec] = []
        self.ops: list[OpSpec] = []
        self.next_tid = len(b._tensors)
        self.extra: list[TensorSpec] = []
        self.view_of: dict[int, int] = {t.tid: t.view_of for t in b._tensors if t.view_of is not None}
        self.leaf_grads: dict[int, list[int]] = {}
        self.sources: list[tuple[int, bool, int]] = []  # per op: (forward op, its backward, accumulated bytes)
        # per derived tensor: what its name and layer come from (an op's index, or a tensor's tid)
        self.extra_src: list[tuple[bool, int] | None] = []
        self.leaf_log: list[tuple[int, int]] = []  # (leaf, its new gradient-sized tensor), in order
        self.num_copied = 0

    def _leaf_grad(self, leaf: _Tensor, suffix: str, role: Role, persistent: bool = False) -> int:
        """A tensor of the size of ``leaf``'s gradient (its ``.grad`` or a temporary)."""
        tid = self._new_tensor(f"{leaf.name}.{suffix}", _grad_bytes(leaf), role, leaf.layer, persistent=persistent,
                               src=(False, leaf.tid))
        self.leaf_grads.setdefault(leaf.tid, []).append(tid)
        self.leaf_log.append((leaf.tid, tid))
        return tid

    def _new_tensor(self, name: str, num_bytes: int, role: Role, layer: int | None, persistent=False, *,
                    src: tuple[bool, int] | None) -> int:
        """A tensor the derivation adds, named and layered after ``src``: (True, an op's index) or
        (False, a tensor's tid); None: neither."""
        tid = self.next_tid
        self.next_tid += 1
        self.extra.append(TensorSpec(tid, name, int(num_bytes), role, layer, persistent))
        self.extra_src.append(src)
        return tid

    def _emit(self, name, kind, phase, layer, cost: Cost, allocs=(), frees=(), saves=(), *,
              source: tuple[int, bool, int]):
        self.sources.append(source)
        self.ops.append(
            OpSpec(
                oid=len(self.ops),
                name=name,
                kind=kind,
                phase=phase,
                layer=layer,
                flops=cost.flops,
                hbm_bytes=cost.hbm_bytes,
                op_class=cost.op_class,
                allocs=tuple(allocs),
                frees=tuple(frees),
                saves=tuple(saves),
                exec_flops=cost.exec_flops,
                time_s=cost.time_s,
                model_flops_=cost.model_flops,
            )
        )

    def run(self, meta: dict) -> Workload:
        """The workload of the recorded program: forward, then backward in reverse op order."""
        self._plan_saves()
        self.live: set[int] = set(self.b._initial)
        self._forward()
        initial = self._start_backward()
        self.recomputed: set[int] = set()
        blocks = _Blocks(self) if self.b.repeat_backward and self.b._copies else None
        i = len(self.b._ops) - 1
        while i >= 0:
            block = None if blocks is None else blocks.ending_at.get(i)
            if blocks is None or block is None:
                self._backward_at(i)
                i -= 1
                continue
            if not blocks.copy(block):
                trace = blocks.start_trace(block)
                for j in range(block.o1 - 1, block.o0 - 1, -1):
                    self._backward_at(j)
                if trace is not None:
                    blocks.end_trace(trace)
            i = block.o0 - 1
        # Gradients of held inputs that require grad (e.g. the input of a bare stack) stay.
        tensors = tuple(
            TensorSpec(t.tid, t.name, t.num_bytes, t.role, t.layer, t.persistent) for t in self.b._tensors
        ) + tuple(self.extra)
        ops_out = _extend_base_lifetimes(self.ops, self.view_of)
        return Workload(tensors=tensors, ops=tuple(ops_out), initial=tuple(initial), meta=dict(meta))

    def _backward_at(self, i: int) -> None:
        """The backward of forward op ``i`` (after its checkpoint region's recompute, if first)."""
        op = self.b._ops[i]
        if not op.has_backward:
            return
        rid = op.region
        if rid is not None and rid not in self.recomputed:
            self.recomputed.add(rid)
            self._recompute(self.b._regions[rid], self.b._ops, self.live, self.saved_by,
                            self.remaining_savers, self.b._held)
        self._backward_op(i, op)

    def _plan_saves(self) -> None:
        """What each region saves, each tensor's last forward use, and which ops save it."""
        b = self.b
        T = b._tensors
        # What each checkpoint region really saves: its inputs (that are not params).
        # (tensors the caller holds anyway, such as rotary tables, are not counted as saved)
        self.ckpt_saved: dict[int, tuple[int, ...]] = {
            r.rid: tuple(i for i in r.inputs if not T[i].is_param and i not in b._held) for r in b._regions
        }
        # Forward liveness: last forward consumer of each tensor.
        self.last_use: dict[int, int] = {}
        for i, op in enumerate(b._ops):
            for t in op.inputs:
                self.last_use[t] = i
        # Saved-tensor owners in the forward: which ops save it (outside checkpoint regions,
        # or region inputs, which the region saves).
        self.saved_by: dict[int, list[int]] = {}
        for i, op in enumerate(b._ops):
            if op.region is None and op.has_backward:
                for t in op.saves:
                    self.saved_by.setdefault(t, []).append(i)
        self.region_first = {r.rid: r.first_op for r in b._regions}
        for r in b._regions:
            for t in self.ckpt_saved[r.rid]:
                self.saved_by.setdefault(t, []).append(r.first_op)

    def _forward_frees(self, i: int, op) -> list[int]:
        """Tensors the forward op ``i`` is the last to need (neither held nor saved)."""
        held, live, last_use, saved_by = self.b._held, self.live, self.last_use, self.saved_by
        frees = []
        for t in set(op.inputs) | set(op.outputs):
            if t in held or t not in live:
                continue
            if last_use.get(t, -1) > i:
                continue
            if t in op.outputs and last_use.get(t, -1) == -1 and t not in saved_by:
                # An output nobody consumes and nobody saves: freed at once (rare).
                frees.append(t)
                continue
            if t in saved_by:
                continue
            if last_use.get(t, -1) == i:
                frees.append(t)
        return frees

    def _forward(self) -> None:
        T, live = self.b._tensors, self.live
        for i, op in enumerate(self.b._ops):
            allocs = [o for o in op.outputs if o not in live]
            live.update(allocs)
            ws = []
            if op.fwd_workspace_bytes:
                ws = [self._new_tensor(f"{op.name}.workspace", op.fwd_workspace_bytes, Role.WORKSPACE, op.layer,
                                        src=(True, i))]
            frees = list(ws) + self._forward_frees(i, op)
            for t in frees:
                live.discard(t)
            if op.region is None:
                saves = op.saves if op.has_backward else ()
            else:
                # reported as saved: the region inputs autograd needs gradients for; the others
                # (rotary tables, masks) stay alive through the closure all the same
                saves = (tuple(t for t in self.ckpt_saved[op.region] if T[t].requires_grad)
                         if i == self.region_first[op.region] else ())
            phase = Phase.LOSS if op.kind.startswith("loss") else Phase.FWD
            self._emit(op.name, op.kind, phase, op.layer, op.cost, allocs + ws, frees, saves, source=(i, False, 0))

    def _start_backward(self) -> list[int]:
        """Persistent parameter gradients and the loss gradient; returns the initial tensors."""
        b, ops = self.b, self.b._ops
        self.grad_of: dict[int, int] = {}  # activation tid -> its gradient tensor tid
        self.holders: dict[int, int] = {}  # gradient tid -> tensors it is the gradient of (absent: one)
        self.view_grads: set[int] = set()  # gradients that are views of a larger result
        self.remaining_savers: dict[int, int] = {t: len(v) for t, v in self.saved_by.items()}
        self.param_grad: dict[int, int] = {}
        for t in b._tensors:
            if t.leaf_grad and b.grads_persist:
                gid = self._leaf_grad(t, "grad", Role.GRAD, persistent=True)
                self.param_grad[t.tid] = gid
                self.live.add(gid)
        initial = list(b._initial) + [self.param_grad[p] for p in sorted(self.param_grad)]
        # The loss tensor's gradient: a scalar of ones, allocated by backward(). The loss is the
        # output of the last op that has one (ops after it only release what the caller drops).
        final_out = next((op.outputs[0] for op in reversed(ops) if op.outputs), None)
        if final_out is not None and not b.no_grad:
            gid = self._new_tensor("loss.grad", 4, Role.ACTIVATION_GRAD, None, src=None)
            self.grad_of[final_out] = gid
            self._emit("backward.start", "ones_like", Phase.BWD, None, self.b._loss_backward_cost, [gid],
                       source=(-1, True, 0))
            self.live.add(gid)
        return initial

    def _input_grads(self, op, incoming: int, allocs: list[int], frees: list[int]) -> tuple[bool, int]:
        """Gradient tensors of ``op``'s inputs; returns (incoming passed through, accumulated bytes)."""
        T, grad_of, param_grad = self.b._tensors, self.grad_of, self.param_grad
        accumulated_bytes = 0
        passed = False
        for t in op.inputs:
            tt = T[t]
            if not tt.requires_grad:
                continue
            if tt.leaf_grad:
                if t in param_grad:
                    tmp = self._leaf_grad(tt, "grad_tmp", Role.WORKSPACE)
                    allocs.append(tmp)
                    frees.append(tmp)
                else:
                    gid = self._leaf_grad(tt, "grad", Role.GRAD, persistent=True)
                    param_grad[t] = gid
                    allocs.append(gid)
                continue
            if t in op.passthrough:
                if t not in grad_of:
                    # every pass-through input gets the output's gradient itself (AddBackward
                    # returns ``grad`` for both operands): one more holder of that tensor
                    grad_of[t] = incoming
                    self.holders[incoming] = self.holders.get(incoming, 1) + 1
                    passed = True
                continue
            if t not in op.grad_inputs:
                continue
            gid = self._new_tensor(f"{tt.name}.grad{'_part' if t in grad_of else ''}", _grad_bytes(tt),
                                   Role.ACTIVATION_GRAD, tt.layer, src=(False, t))
            allocs.append(gid)
            if op.kind in VIEW_GRAD_KINDS:
                self.view_grads.add(gid)
            if t not in grad_of:
                grad_of[t] = gid
                continue
            accumulated_bytes += _grad_bytes(tt)
            old = grad_of[t]
            if self._accumulates_in_place(old):  # old.add_(new): the new one is a temporary
                frees.append(gid)
            elif self._accumulates_in_place(gid):  # new.add_(old)
                grad_of[t] = gid
                self._release_grad(old, frees)
            else:  # old + new, a third tensor (InputBuffer::accumulate)
                total = self._new_tensor(f"{tt.name}.grad_sum", _grad_bytes(tt), Role.ACTIVATION_GRAD, tt.layer,
                                         src=(False, t))
                allocs.append(total)
                frees.append(gid)
                grad_of[t] = total
                self._release_grad(old, frees)
        return passed, accumulated_bytes

    def _accumulates_in_place(self, gid: int) -> bool:
        """Autograd adds a second gradient into ``gid`` in place only when it holds the last
        reference to it and to its storage (input_buffer.cpp ``can_accumulate_inplace``): not
        while another input still holds it, nor when it is a view of a larger result."""
        return self.holders.get(gid, 1) == 1 and gid not in self.view_grads

    def _release_grad(self, gid: int, frees: list[int]) -> None:
        """One holder of gradient ``gid`` lets it go; the last one frees it."""
        n = self.holders.pop(gid, 1) - 1
        if n > 0:
            self.holders[gid] = n
        elif gid in self.live and gid not in frees:
            frees.append(gid)

    def _backward_op(self, i: int, op) -> None:
        b, live = self.b, self.live
        out_grads = [self.grad_of.get(o) for o in op.outputs]
        if all(g is None for g in out_grads):
            # No gradient reached this op (e.g. an output not on the loss path).
            self._release_saved(op, i, live, self.remaining_savers, b._held, [])
            return
        allocs: list[int] = []
        frees: list[int] = []
        incoming = next(g for g in out_grads if g is not None)
        passed, accumulated_bytes = self._input_grads(op, incoming, allocs, frees)
        if op.bwd_workspace_bytes:
            ws = self._new_tensor(f"{op.name}.bwd_workspace", op.bwd_workspace_bytes, Role.WORKSPACE, op.layer,
                                  src=(True, i))
            allocs.append(ws)
            frees.append(ws)
        # Incoming gradients are consumed; one passed through to an input lives on in it.
        for g in out_grads:
            if g is not None:
                self._release_grad(g, frees)
        live.update(a for a in allocs)
        self._release_saved(op, i, live, self.remaining_savers, b._held, frees)
        for t in frees:
            live.discard(t)
        self._emit(f"{op.name}.backward", op.kind, Phase.BWD, op.layer, _backward_cost(b, op, accumulated_bytes),
                   allocs, frees, source=(i, True, accumulated_bytes))

    def _release_saved(self, op, i, live, remaining_savers, held, frees):
        """Free tensors whose last saving node is op ``i`` (or its checkpoint region)."""
        b = self.b
        saves = op.saves if op.region is None else ()
        if op.region is not None:
            r = b._regions[op.region]
            if r.first_op == i:
                saves = tuple(t for t in r.inputs if not b._tensors[t].is_param and t not in b._held)
        for t in saves:
            if t not in remaining_savers:
                continue
            remaining_savers[t] -= 1
            if remaining_savers[t] == 0 and t in live and t not in held and t not in frees:
                frees.append(t)
        # Tensors re-saved by a recomputed region are released by the inner ops' backward.
        for t in getattr(self, "_recompute_saves", {}).get(i, ()):
            if t in live and t not in held and t not in frees:
                frees.append(t)

    def _recompute(self, region, ops, live, saved_by, remaining_savers, held):
        """Re-run a checkpoint region's forward; keep only what its ops save.

        Recomputed tensors are new storages (fresh ids); each is freed by the backward of the
        earliest inner op that saves it, or at once when no inner op saves it.
        """
        if not hasattr(self, "_recompute_saves"):
            self._recompute_saves: dict[int, list[int]] = {}
        T = self.b._tensors
        # Early stop (torch.utils.checkpoint, non-reentrant): recomputation ends as soon as the
        # last saved tensor is packed again. Inputs are packed before an op runs, outputs after,
        # so the last saving op is skipped when it saves only its inputs (a Linear).
        last = region.last_op
        while last > region.first_op and not (ops[last].has_backward and ops[last].saves):
            last -= 1
        tail = ops[last]
        if tail.has_backward and tail.saves and not set(tail.saves) & set(tail.outputs):
            last -= 1
        inner = range(region.first_op, last + 1)
        whole = range(region.first_op, region.last_op + 1)
        produced = {o for j in inner for o in ops[j].outputs}
        first_saver: dict[int, int] = {}
        for j in whole:  # a skipped tail op still holds what it saved until its backward
            op = ops[j]
            if not op.has_backward:
                continue
            for t in op.saves:
                if t in produced:  # tensors from outside the region are not recomputed
                    first_saver.setdefault(t, j)
        last_use: dict[int, int] = {}
        for j in inner:
            for t in ops[j].inputs:
                last_use[t] = j
        fresh: dict[int, int] = {}
        for j in inner:
            op = ops[j]
            allocs = []
            for o in op.outputs:
                if o in fresh:
                    continue  # in-place style op re-emitting a tensor
                src = T[o]
                fresh[o] = self._new_tensor(f"{src.name}.recomputed", src.num_bytes, src.role, src.layer,
                                            src=(False, o))
                if src.view_of is not None:
                    self.view_of[fresh[o]] = fresh.get(src.view_of, src.view_of)
                allocs.append(fresh[o])
                live.add(fresh[o])
            frees = []
            for t in list(fresh):
                f = fresh[t]
                if f not in live or t in first_saver:
                    continue
                if last_use.get(t, -1) <= j:
                    frees.append(f)
                    live.discard(f)
            saves = tuple(fresh[t] for t in op.saves if t in first_saver) if op.has_backward else ()
            self._emit(f"{op.name}.recompute", op.kind, Phase.RECOMPUTE, op.layer, op.cost, allocs, frees, saves,
                       source=(j, False, 0))
        for t, j in first_saver.items():
            self._recompute_saves.setdefault(j, []).append(fresh[t])


@dataclass(frozen=True, slots=True)
class _Block:
    """A repeated block (`ProgramBuilder.repeat`) or its template: tensors [t0, t1), ops [o0, o1),
    checkpoint regions [r0, r1); ``interface``: the tensors from before it that it reads (in its
    class's order), then its own tensors that ops outside it use, whose template-relative
    offsets are ``exported``. Its backward reads and changes no other tensor's state."""

    cls: int
    t0: int
    t1: int
    o0: int
    o1: int
    r0: int
    r1: int
    interface: tuple[int, ...]
    exported: tuple[int, ...]


@dataclass
class _Trace:
    """A block's backward as derived, to copy to the other blocks of its class: the ops it emitted
    from ``k0``, the tensors it derived from tid ``n0``, its leaf-gradient log from ``l0``, and the
    state of its interface before (``entry``, ``savers``, the incoming gradients ``grads``) and
    after (``exit``, ``used``: savers it released, ``alive``: those gradients' liveness,
    ``holders`` / ``views``: their holder counts and view marks)."""

    block: _Block
    k0: int
    n0: int
    l0: int
    entry: tuple
    savers: list[int | None]
    grads: list[int]
    k1: int = 0
    n1: int = 0
    l1: int = 0
    exit: list[tuple[bool, int | None, int | None]] = field(default_factory=list)
    used: list[int | None] = field(default_factory=list)
    alive: list[tuple[int, bool]] = field(default_factory=list)
    holders: list[tuple[int, int]] = field(default_factory=list)  # gradients held more than once, after
    views: list[int] = field(default_factory=list)  # derived gradients that are views of a larger result
    ops: list[tuple] = field(default_factory=list)


class _Blocks:
    """The backward of a repeated block, derived once and copied to the class's other blocks.

    A block's backward (its ops' backward and its regions' recompute, a contiguous run of the
    derivation) reads the state of its own tensors, which is the same in every copy (they are
    recorded alike and only the block's ops touch them), and of its interface: a block whose
    interface state equals the traced block's, up to saver counts that neither brings to zero
    within the block, derives the same ops on tensor ids shifted by the copy's offsets. Any
    other block (the first layer, whose backward frees the rotary tables) is derived in full."""

    def __init__(self, d: _Deriver):
        self.d = d
        b = d.b
        T, ops = b._tensors, b._ops
        lo: dict[int, int] = {}  # first and last op that reads, writes or saves each tensor
        hi: dict[int, int] = {}
        for i, op in enumerate(ops):
            for t in (*op.inputs, *op.outputs, *op.saves):
                lo.setdefault(t, i)
                hi[t] = i
        for r in b._regions:
            for t in r.inputs:
                lo[t] = min(lo.get(t, r.first_op), r.first_op)
                hi[t] = max(hi.get(t, r.first_op), r.first_op)
        classes: dict[tuple[BlockMark, BlockMark], list[tuple[int, int, int, dict[int, int]]]] = {}
        for start, end, dt, do, dr, inputs in b._copies:
            classes.setdefault((start, end), [(0, 0, 0, {})]).append((dt, do, dr, inputs))
        edited = set(b._edited)
        self.ending_at: dict[int, _Block] = {}
        self.traces: dict[int, _Trace | None] = {}  # None: its block cannot be copied
        for (start, end), members in classes.items():
            t0, t1, o0, o1 = start.num_tensors, end.num_tensors, start.num_ops, end.num_ops
            if o1 <= o0:
                continue
            refs: set[int] = set()
            for op in ops[o0:o1]:
                refs.update(op.inputs, op.outputs, op.saves)
            for r in b._regions[start.num_regions:end.num_regions]:
                refs.update(r.inputs)
            refs.update(t.view_of for t in T[t0:t1] if t.view_of is not None)
            externals = sorted(t for t in refs if not t0 <= t < t1)
            for dt, do, dr, inputs in members:
                bt0, bo0, bo1 = t0 + dt, o0 + do, o1 + do
                exported = tuple(k for k in range(t1 - t0)
                                 if lo.get(bt0 + k, bo0) < bo0 or hi.get(bt0 + k, bo0) >= bo1)
                if any(bt0 <= t < t1 + dt and t - bt0 not in exported for t in edited):
                    continue  # re-labelled or held after the copy: not the template's program
                interface = tuple(inputs.get(e, e) for e in externals) + tuple(bt0 + k for k in exported)
                if len(set(interface)) != len(interface) or any(e >= bt0 for e in interface[:len(externals)]):
                    continue
                self.ending_at[bo1 - 1] = _Block(o0, bt0, t1 + dt, bo0, bo1, start.num_regions + dr,
                                                 end.num_regions + dr, interface, exported)

    def _state(self, block: _Block) -> tuple[tuple, list[int | None], list[int]]:
        """What the backward of ``block`` reads of its interface, but saver counts; the counts;
        the interface's gradients, in order."""
        d = self.d
        T, live, grad_of, param_grad, held = d.b._tensors, d.live, d.grad_of, d.param_grad, d.b._held
        grads: dict[int, int] = {}
        state = []
        for t in block.interface:
            tt = T[t]
            g = grad_of.get(t)
            state.append((tt.num_bytes, tt.role, tt.requires_grad, tt.leaf_grad, tt.is_param, tt.grad_bytes,
                          t in live, t in held, t in param_grad,
                          None if g is None else (grads.setdefault(g, len(grads)), g in live,
                                                  d.holders.get(g, 1), g in d.view_grads)))
        savers = [d.remaining_savers.get(t) for t in block.interface]
        return (block.exported, tuple(state)), savers, list(grads)

    def start_trace(self, block: _Block) -> _Trace | None:
        """Start tracing ``block``'s backward, unless its class has a trace (or cannot have one)."""
        if block.cls in self.traces:
            return None
        d = self.d
        entry, savers, grads = self._state(block)
        return _Trace(block, len(d.ops), d.next_tid, len(d.leaf_log), entry, savers, grads)

    def end_trace(self, tr: _Trace) -> None:
        d, block = self.d, tr.block
        tr.k1, tr.n1, tr.l1 = len(d.ops), d.next_tid, len(d.leaf_log)
        live = d.live
        tr.exit = [(t in live, d.grad_of.get(t), d.param_grad.get(t)) for t in block.interface]
        saved = {t for op in d.b._ops[block.o0:block.o1] for t in op.saves}
        saved.update(t for r in d.b._regions[block.r0:block.r1] for t in r.inputs)
        # how many times the block released each saved tensor (None: unknown, it had no count)
        tr.used = [r - d.remaining_savers[t] if r is not None else None if t in saved else 0
                   for t, r in zip(block.interface, tr.savers, strict=True)]
        after = dict.fromkeys(tr.grads + [g for _, g, _ in tr.exit if g is not None])
        tr.alive = [(g, g in live) for g in after]
        # the gradients' holder counts and view marks the block leaves (`_Deriver.holders`)
        tr.holders = [(g, d.holders[g]) for g in (*after, *range(tr.n0, tr.n1)) if g in d.holders]
        tr.views = [g for g in range(tr.n0, tr.n1) if g in d.view_grads]
        allowed = set(block.interface) | set(tr.grads)

        def known(t: int | None) -> bool:
            return t is None or block.t0 <= t < block.t1 or tr.n0 <= t < tr.n1 or t in allowed

        num_program = len(d.b._tensors)
        srcs = d.extra_src[tr.n0 - num_program:tr.n1 - num_program]
        ok = (all(known(t) for op in d.ops[tr.k0:tr.k1] for ts in (op.allocs, op.frees, op.saves) for t in ts)
              and all(block.o0 <= i < block.o1 for i, _, _ in d.sources[tr.k0:tr.k1])
              and all(known(d.view_of.get(t)) for t in range(tr.n0, tr.n1))
              and all(known(g) and known(p) for _, g, p in tr.exit)
              and all(known(leaf) for leaf, _ in d.leaf_log[tr.l0:tr.l1])
              and all(src is not None and (block.o0 <= src[1] < block.o1 if src[0] else known(src[1]))
                      for src in srcs))
        self.traces[block.cls] = tr if ok else None
        if ok:  # each op's tensors as indices into a copy's table (`copy`): its tensors, its new ones, its interface
            # (an exported tensor is both its own and in its interface: the same tensor in a copy)
            index = {t: k for k, t in enumerate((*range(block.t0, block.t1), *range(tr.n0, tr.n1),
                                                 *block.interface, *tr.grads))}
            at = index.__getitem__
            tr.ops = [(i - block.o0, backward, accumulated, spec, tuple(map(at, spec.allocs)),
                       tuple(map(at, spec.frees)), tuple(map(at, spec.saves)))
                      for spec, (i, backward, accumulated) in zip(d.ops[tr.k0:tr.k1], d.sources[tr.k0:tr.k1],
                                                                  strict=True)]

    def copy(self, block: _Block) -> bool:
        """Emit ``block``'s backward as a copy of its class's trace; False (nothing emitted) when
        there is none or the block's interface state differs from the traced block's."""
        tr = self.traces.get(block.cls)
        if tr is None or tr.block is block:
            return False
        entry, savers, grads = self._state(block)
        if entry != tr.entry:
            return False
        for r, r_traced, used in zip(savers, tr.savers, tr.used, strict=True):
            # the block releases a saved tensor ``used`` times: counts it may bring to zero must agree
            if used is None:
                if r != r_traced:
                    return False
            elif used and r != r_traced and ((r is not None and r <= used) or
                                             (r_traced is not None and r_traced <= used)):
                return False
        d, src_block = self.d, tr.block
        T, fwd, num_program = d.b._tensors, d.b._ops, len(d.b._tensors)
        d_t, d_o, d_n = block.t0 - src_block.t0, block.o0 - src_block.o0, d.next_tid - tr.n0
        t0, t1, n0, n1 = src_block.t0, src_block.t1, tr.n0, tr.n1
        ext = dict(zip(src_block.interface, block.interface, strict=True))
        ext.update(zip(tr.grads, grads, strict=True))

        def m(t: int) -> int:
            return t + d_t if t0 <= t < t1 else t + d_n if n0 <= t < n1 else ext[t]

        table = [*range(block.t0, block.t1), *range(d.next_tid, d.next_tid + n1 - n0), *block.interface, *grads]
        at = table.__getitem__
        out_ops, sources, o0 = d.ops, d.sources, block.o0
        for i, backward, accumulated, spec_, allocs, frees, saves in tr.ops:
            op = fwd[o0 + i]
            out_ops.append(OpSpec(len(out_ops), op.name + (".backward" if backward else ".recompute"), spec_.kind,
                                  spec_.phase, op.layer, spec_.flops, spec_.hbm_bytes, spec_.op_class,
                                  tuple(map(at, allocs)), tuple(map(at, frees)), tuple(map(at, saves)),
                                  spec_.exec_flops, spec_.time_s, spec_.model_flops_))
            sources.append((o0 + i, backward, accumulated))
        view_of = d.view_of
        for tid in range(n0, n1):
            spec = d.extra[tid - num_program]
            is_op, sid = d.extra_src[tid - num_program]  # type: ignore[misc]
            if is_op:
                src_name, new_name, new_layer, new_src = fwd[sid].name, fwd[sid + d_o].name, fwd[sid + d_o].layer, \
                    (True, sid + d_o)
            else:
                src_name, new_name, new_layer, new_src = T[sid].name, T[m(sid)].name, T[m(sid)].layer, (False, m(sid))
            d.extra.append(TensorSpec(tid + d_n, new_name + spec.name[len(src_name):], spec.num_bytes, spec.role,
                                      new_layer, spec.persistent))
            d.extra_src.append(new_src)
            base = view_of.get(tid)
            if base is not None:
                view_of[tid + d_n] = m(base)
        d.next_tid += n1 - n0
        for leaf, gid in d.leaf_log[tr.l0:tr.l1]:
            leaf, gid = m(leaf), gid + d_n
            d.leaf_grads.setdefault(leaf, []).append(gid)
            d.leaf_log.append((leaf, gid))
        live = d.live
        for t, (alive, g, p), r, used in zip(block.interface, tr.exit, savers, tr.used, strict=True):
            if alive:
                live.add(t)
            else:
                live.discard(t)
            if r is not None and used:
                d.remaining_savers[t] = r - used
            if g is not None:
                d.grad_of[t] = m(g)
            if p is not None:
                d.param_grad[t] = m(p)
        for g, alive in tr.alive:
            if alive:
                live.add(m(g))
            else:
                live.discard(m(g))
        holders = d.holders
        for g, _ in tr.alive:
            holders.pop(m(g), None)
        for g, n in tr.holders:
            holders[m(g)] = n
        d.view_grads.update(m(g) for g in tr.views)
        d.recomputed.update(range(block.r0, block.r1))
        d.num_copied += 1
        return True


@dataclass(frozen=True)
class Derivation:
    """What ``ProgramBuilder.build`` derived, beyond its Workload: the program it derived from
    (``ProgramBuilder.signature``), the forward op each op came from (index, whether it is
    that op's backward, the gradient bytes it accumulated; index -1: the loss's gradient), and
    each leaf's gradient-sized tensors."""

    signature: tuple
    sources: tuple[tuple[int, bool, int], ...]
    leaf_grads: dict[int, list[int]]


def _backward_cost(b: ProgramBuilder, op: _FwdOp, accumulated_bytes: int) -> Cost:
    """The cost of ``op``'s backward, with the in-place add of the gradients it accumulates."""
    cost = op.bwd_cost
    if accumulated_bytes and b.accumulate_time_s is not None and cost.time_s is not None:
        cost = Cost(flops=cost.flops, hbm_bytes=cost.hbm_bytes + 3 * accumulated_bytes, op_class=cost.op_class,
                    exec_flops=cost.exec_flops, time_s=cost.time_s + b.accumulate_time_s(accumulated_bytes),
                    model_flops=cost.model_flops)  # dataclasses.replace, without its field introspection
    return cost


def _grad_bytes(t: _Tensor) -> int:
    return t.num_bytes if t.grad_bytes is None else t.grad_bytes


def _extend_base_lifetimes(ops: list[OpSpec], view_of: dict[int, int]) -> list[OpSpec]:
    """A storage lives while its base tensor or any view of it lives: move each base's free to
    the op that frees its last live view."""
    if not view_of:
        return ops
    views_of: dict[int, set[int]] = {}
    live_views: dict[int, set[int]] = {}
    for v, b in view_of.items():
        views_of.setdefault(b, set()).add(v)
    dead_base: set[int] = set()
    new_frees: list[list[int]] = [list(op.frees) for op in ops]
    for k, op in enumerate(ops):
        for t in op.allocs:
            base = view_of.get(t)
            if base is not None:
                live_views.setdefault(base, set()).add(t)
        for t in list(new_frees[k]):
            if t in views_of and live_views.get(t):
                new_frees[k].remove(t)  # the base dies with its last view
                dead_base.add(t)
            base = view_of.get(t)
            if base is not None:
                live_views[base].discard(t)
                if not live_views[base] and base in dead_base:
                    new_frees[k].append(base)
                    dead_base.discard(base)
    return [
        op if list(op.frees) == new_frees[k] else OpSpec(
            oid=op.oid, name=op.name, kind=op.kind, phase=op.phase, layer=op.layer, flops=op.flops,
            hbm_bytes=op.hbm_bytes, op_class=op.op_class, allocs=op.allocs, frees=tuple(new_frees[k]),
            saves=op.saves, exec_flops=op.exec_flops, time_s=op.time_s, model_flops_=op.model_flops_)
        for k, op in enumerate(ops)
    ]
