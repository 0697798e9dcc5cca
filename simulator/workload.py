"""Workload: the ops and tensors of one training or inference step, in execution order.

Models: one step on one GPU as a sequence of ops on the compute stream; every op names the
tensors (storages) it allocates when it starts, the tensors freed when it ends, and, in the
forward pass, the tensors it saves for backward. Walking the sequence gives live bytes over
time, the peak and the op at the peak, exactly as `torch.cuda.max_memory_allocated` counts
them once each request is rounded like the caching allocator (512-byte granularity).
Two producers build Workloads and must agree: analytical templates
(`simulator.templates`) and tracing a real torch module on the meta device
(`simulator.trace`).
Assumes: one compute stream, ops in the order PyTorch eager runs them; a tensor is a storage
(views share their base's storage and are never counted twice).
Ignores: copies on side streams (the discrete-event simulator adds those from a Plan), and
allocator fragmentation (`reserved` > `allocated`), which the allocator model predicts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

ALLOCATOR_ROUND_BYTES = 512  # PyTorch CUDA caching allocator: every block is a multiple of 512 B


def allocator_rounded_bytes(num_bytes: int) -> int:
    """Bytes the caching allocator accounts for a request (``allocated_bytes`` statistics).

    Source: c10/cuda/CUDACachingAllocator.cpp ``round_size``: requests below 512 B take 512 B,
    larger ones round up to a multiple of 512 B. A zero-byte request allocates nothing.
    """
    if num_bytes <= 0:
        return 0
    return -(-num_bytes // ALLOCATOR_ROUND_BYTES) * ALLOCATOR_ROUND_BYTES


class Phase(StrEnum):
    FWD = "fwd"
    LOSS = "loss"
    BWD = "bwd"
    RECOMPUTE = "recompute"
    OPTIM = "optim"


class Role(StrEnum):
    """What a tensor is, for breakdowns and for planners choosing what to offload."""

    WEIGHT = "weight"
    GRAD = "grad"
    OPTIMIZER_STATE = "optimizer_state"
    MASTER_WEIGHT = "master_weight"
    INPUT = "input"  # token ids, labels, or the input activation of a bare layer stack
    LAYER_INPUT = "layer_input"  # residual stream entering a decoder layer (or mid-layer residual)
    NORM_OUT = "norm_out"
    NORM_STAT = "norm_stat"  # rstd / mean saved by a norm
    ATTN_QKV = "attn_qkv"  # q, k, v projections (and rotary outputs)
    ATTN_OUT = "attn_out"  # attention kernel output (before the output projection)
    ATTN_STAT = "attn_stat"  # logsumexp and RNG state saved by FlashAttention
    MLP_HIDDEN = "mlp_hidden"  # gate/up projections, activation outputs, their product
    LOGITS = "logits"
    LOGITS_FP32 = "logits_fp32"
    LOSS = "loss"
    ACTIVATION_GRAD = "activation_grad"  # gradients flowing backward, transient
    WORKSPACE = "workspace"  # kernel workspaces and other transients
    KV_CACHE = "kv_cache"
    OTHER = "other"


ATTN_ROLES: tuple[str, ...] = (Role.ATTN_OUT.value, Role.ATTN_STAT.value)
"""The attention output and its statistics: MEMO offloads them whole (recomputing them means
re-running attention)."""
NOT_ACTIVATIONS: tuple[str, ...] = (Role.WEIGHT.value, Role.GRAD.value, Role.OPTIMIZER_STATE.value,
                                    Role.MASTER_WEIGHT.value)
"""Model-state roles: never saved activations."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One storage. ``num_bytes`` is the requested size; rounding happens in the walk."""

    tid: int
    name: str
    num_bytes: int
    role: Role
    layer: int | None = None  # decoder layer index; None for embedding, head, loss, globals
    persistent: bool = False  # lives across steps (weights, grads kept, optimizer states)


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One kernel (or a short fused sequence) on the compute stream."""

    oid: int
    name: str  # e.g. "layers.3.mlp.down_proj"
    kind: str  # e.g. "linear", "sdpa", "rmsnorm", "silu_mul", "cross_entropy", aten op name
    phase: Phase
    layer: int | None
    flops: float = 0.0  # matmul/attention FLOPs as FlopCounterMode counts them (causal = full)
    hbm_bytes: int = 0  # bytes read + written in HBM
    op_class: str = "memory"  # "gemm" | "attention_fwd" | "attention_bwd" | "memory" | "copy"
    allocs: tuple[int, ...] = ()  # tensors allocated when the op starts
    frees: tuple[int, ...] = ()  # tensors freed when the op ends
    saves: tuple[int, ...] = ()  # tensors saved for backward (forward and recompute ops)
    exec_flops: float | None = None  # FLOPs the kernel executes (causal ~ half); None: = flops
    time_s: float | None = None  # predicted duration on the target hardware, when known
    model_flops_: float | None = None  # MFU convention (causal attention half); None: = flops

    @property
    def executed_flops(self) -> float:
        return self.flops if self.exec_flops is None else self.exec_flops

    @property
    def model_flops(self) -> float:
        return self.flops if self.model_flops_ is None else self.model_flops_


@dataclass(frozen=True)
class Workload:
    """A step: tensors, ops in order, and the tensors live before the first op."""

    tensors: tuple[TensorSpec, ...]
    ops: tuple[OpSpec, ...]
    initial: tuple[int, ...] = ()  # tids live at step start (weights, persisting grads, inputs)
    meta: dict = field(default_factory=dict)  # free-form provenance: model, job, producer

    def tensor(self, tid: int) -> TensorSpec:
        return self._by_id()[tid]

    def _by_id(self) -> dict[int, TensorSpec]:
        cache = self.__dict__.get("_tensor_index")
        if cache is None:
            cache = {t.tid: t for t in self.tensors}
            object.__setattr__(self, "_tensor_index", cache)
        return cache


@dataclass(frozen=True, slots=True)
class MemoryPoint:
    """Live bytes just after op ``oid`` allocated its outputs (before its frees)."""

    oid: int
    op_name: str
    phase: Phase
    live_bytes: int


@dataclass(frozen=True)
class WalkPeak:
    """What an estimate reads of a walk: the peak, where it happens, and what is live then."""

    peak_bytes: int
    peak_oid: int  # -1 when the peak is the initial state
    peak_op_name: str
    peak_phase: Phase | None
    peak_breakdown_bytes: dict[str, int]  # role -> live bytes at the peak (roles sorted, zeros left out)

    @classmethod
    def of(cls, walk: MemoryWalk) -> WalkPeak:
        return cls(walk.peak_bytes, walk.peak_oid, walk.peak_op_name, walk.peak_phase, walk.peak_breakdown_bytes)


@dataclass(frozen=True)
class MemoryWalk(WalkPeak):
    """Result of walking a Workload: its peak (`WalkPeak`), the live bytes at the start and end,
    and the live bytes after every op."""

    initial_bytes: int
    final_bytes: int
    timeline: tuple[MemoryPoint, ...]


class WorkloadError(ValueError):
    """A Workload that cannot happen: a tensor freed twice, used before allocation, etc."""


def walk_memory(workload: Workload, *, rounded: bool = True) -> MemoryWalk:
    """Walk the ops in order and track live bytes per role.

    ``rounded`` applies the caching allocator's 512-byte rounding to every tensor, which is what
    ``torch.cuda.max_memory_allocated`` reports. Raises WorkloadError on an impossible sequence.
    """
    index = workload._by_id()
    size = {
        tid: (allocator_rounded_bytes(t.num_bytes) if rounded else t.num_bytes)
        for tid, t in index.items()
    }
    live: set[int] = set()
    by_role: dict[str, int] = defaultdict(int)
    total = 0
    for tid in workload.initial:
        if tid in live:
            raise WorkloadError(f"tensor {index[tid].name} listed twice in initial")
        live.add(tid)
        by_role[index[tid].role.value] += size[tid]
        total += size[tid]
    initial_bytes = total
    peak = total
    peak_oid, peak_name, peak_phase = -1, "<step start>", None
    peak_roles = dict(by_role)
    timeline: list[MemoryPoint] = []
    for op in workload.ops:
        for tid in op.allocs:
            if tid in live:
                raise WorkloadError(f"op {op.name} allocates {index[tid].name}, already live")
            live.add(tid)
            by_role[index[tid].role.value] += size[tid]
            total += size[tid]
        timeline.append(MemoryPoint(op.oid, op.name, op.phase, total))
        if total > peak:
            peak, peak_oid, peak_name, peak_phase = total, op.oid, op.name, op.phase
            peak_roles = dict(by_role)
        for tid in op.frees:
            if tid not in live:
                raise WorkloadError(f"op {op.name} frees {index[tid].name}, which is not live")
            live.remove(tid)
            by_role[index[tid].role.value] -= size[tid]
            total -= size[tid]
    return MemoryWalk(
        peak_bytes=peak,
        peak_oid=peak_oid,
        peak_op_name=peak_name,
        peak_phase=peak_phase,
        peak_breakdown_bytes={k: v for k, v in sorted(peak_roles.items()) if v},
        initial_bytes=initial_bytes,
        final_bytes=total,
        timeline=tuple(timeline),
    )


class ResizableWalk:
    """`walk_memory` of one Workload for many sizes of some of its tensors (``resizable``: the
    model states, whose sizes the ZeRO stage and the data-parallel degree set while the ops stay
    the same): each tensor's live interval is found once, then ``peak(sizes)`` gives the peak
    that `walk_memory` gives on the workload with those sizes, in integer numpy arithmetic.

    Positions: 0 is the step start, k + 1 is op k just after its allocations; a tensor is live
    from the position of the op that allocates it (0: initial) to that of the op that frees it
    (the last position: never freed). `walk_memory`'s strict ``>`` is numpy's first maximum."""

    def __init__(self, workload: Workload, resizable: Iterable[int], *, rounded: bool = True):
        import numpy as np

        index = workload._by_id()
        n = len(workload.ops)
        opened: dict[int, int] = {}  # live tid -> its interval's index
        tids: list[int] = []  # per live interval: its tensor, first position, last position
        starts: list[int] = []
        ends: list[int] = []
        for tid in workload.initial:
            if tid in opened:
                raise WorkloadError(f"tensor {index[tid].name} listed twice in initial")
            opened[tid] = len(tids)
            tids.append(tid)
            starts.append(0)
            ends.append(n)
        for k, op in enumerate(workload.ops, 1):
            for tid in op.allocs:
                if tid in opened:
                    raise WorkloadError(f"op {op.name} allocates {index[tid].name}, already live")
                opened[tid] = len(tids)
                tids.append(tid)
                starts.append(k)
                ends.append(n)
            for tid in op.frees:
                at = opened.pop(tid, None)
                if at is None:
                    raise WorkloadError(f"op {op.name} frees {index[tid].name}, which is not live")
                ends[at] = k
        self.rounded = rounded
        self.ops = workload.ops
        roles = sorted({t.role for t in index.values()})  # StrEnum members sort as their values
        self.roles = tuple(r.value for r in roles)
        code = {r: i for i, r in enumerate(roles)}
        moving = set(resizable)
        specs = list(map(index.__getitem__, tids))
        tid_a = np.array(tids, dtype=np.int64)
        start_a = np.array(starts, dtype=np.int64)
        end_a = np.array(ends, dtype=np.int64)
        role_a = np.fromiter((code[t.role] for t in specs), dtype=np.int64, count=len(specs))
        size_a = np.fromiter((t.num_bytes for t in specs), dtype=np.int64, count=len(specs))
        is_moving = np.fromiter((t in moving for t in tids), dtype=bool, count=len(tids))
        fixed = ~is_moving
        self._fixed_start, self._fixed_end, self._fixed_role = start_a[fixed], end_a[fixed], role_a[fixed]
        size = size_a[fixed]
        self._fixed_size = _rounded(size) if rounded else size
        delta = np.zeros(n + 2, dtype=np.int64)
        np.add.at(delta, self._fixed_start, self._fixed_size)
        np.add.at(delta, self._fixed_end + 1, -self._fixed_size)
        self._fixed_total = np.cumsum(delta)[: n + 1]
        self.resized_tids = tuple(tid_a[is_moving].tolist())  # one per live interval
        self._start, self._end, self._role = start_a[is_moving], end_a[is_moving], role_a[is_moving]
        self._fixed_roles_at: dict[int, Any] = {}

    def peak(self, sizes: dict[int, int]) -> WalkPeak:
        """The walk's peak with the resizable tensors at ``sizes`` (requested bytes, by tid)."""
        import numpy as np

        s = np.fromiter(map(sizes.__getitem__, self.resized_tids), dtype=np.int64, count=len(self.resized_tids))
        if self.rounded:
            s = _rounded(s)
        delta = np.zeros(len(self._fixed_total) + 1, dtype=np.int64)
        np.add.at(delta, self._start, s)
        np.add.at(delta, self._end + 1, -s)
        total = self._fixed_total + np.cumsum(delta)[:-1]
        p = int(np.argmax(total))
        roles = self._fixed_roles_at.get(p)
        if roles is None:
            roles = np.zeros(len(self.roles), dtype=np.int64)
            at = (self._fixed_start <= p) & (p <= self._fixed_end)
            np.add.at(roles, self._fixed_role[at], self._fixed_size[at])
            self._fixed_roles_at[p] = roles
        roles = roles.copy()
        at = (self._start <= p) & (p <= self._end)
        np.add.at(roles, self._role[at], s[at])
        breakdown = {r: int(v) for r, v in zip(self.roles, roles.tolist(), strict=True) if v}
        if p == 0:
            return WalkPeak(int(total[0]), -1, "<step start>", None, breakdown)
        op = self.ops[p - 1]
        return WalkPeak(int(total[p]), op.oid, op.name, op.phase, breakdown)


def _rounded(num_bytes):
    """`allocator_rounded_bytes` of each of a numpy array of sizes (few distinct ones)."""
    import numpy as np

    distinct, where = np.unique(num_bytes, return_inverse=True)
    rounded = np.fromiter(map(allocator_rounded_bytes, distinct.tolist()), dtype=np.int64, count=len(distinct))
    return rounded[where.reshape(-1)]


def saved_bytes_by_layer(workload: Workload, *, phase: Phase = Phase.FWD) -> dict[int | None, int]:
    """Bytes of distinct storages saved for backward by the ops of each layer in ``phase``.

    A storage saved by several ops (a layer input saved by both a norm and a residual) counts
    once, for the layer of the first op that saves it.
    """
    index = workload._by_id()
    seen: set[int] = set()
    out: dict[int | None, int] = defaultdict(int)
    for op in workload.ops:
        if op.phase != phase:
            continue
        for tid in op.saves:
            if tid in seen:
                continue
            seen.add(tid)
            out[op.layer] += index[tid].num_bytes
    return dict(out)


def flops_by_phase(workload: Workload) -> dict[str, float]:
    """Total matmul/attention FLOPs per phase."""
    out: dict[str, float] = defaultdict(float)
    for op in workload.ops:
        out[op.phase.value] += op.flops
    return dict(out)
