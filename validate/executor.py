"""Run a Plan on a real model: per layer keep, offload (token-wise) or recompute saved tensors.

Models: one training step of ``validate.model.Decoder`` under a ``planners.plan.Plan``. Each
decoder layer runs inside ``torch.autograd.graph.saved_tensors_hooks`` of its own. The pack hook
only records the saved tensor; when the layer's forward returns, every saved tensor gets its
role (from the tags the layer put on the tensors it produced; the layer input is ``input``) and
the plan's decision for that role cuts it along its token dimension into three row ranges:
``alpha_frac`` of the tokens are copied into ONE offload pool allocated once (pinned host memory
on CUDA, a plain CPU tensor on the CPU: the same code with the CPU as both sides) on a D2H
stream that waits for an event recorded on the compute stream; ``keep_frac`` of the tokens stay
in HBM (a copy of those rows); the rest is dropped. A tensor copied on the D2H stream is given
back at the end of the next layer's forward, after the compute stream waits for the copy (the
planner's two staging buffers). During backward, a gradient hook on layer m's output (the
moment backward reaches layer m) issues on an H2D stream the prefetch of every layer
l = m - ``prefetch_lookahead_layers`` (the top layer's hook: every layer l + k >= n too; with
``prefetch_at: attention``, a hook on layer m's attention residual issues layer l's once the
MLP block's backward is done, and layer m's own hook only a layer nothing fetched): these
points are `simulator.movement`'s, the replay's own. The prefetch goes into tensors of the
saved tensor's own size and strides (so kernels see the same layout and the gradients stay bitwise equal), and
moves the kept rows in; at the layer's first unpack the dropped rows are recomputed and moved
in; the unpack hook makes the compute stream wait for that layer's H2D event. ``checkpoint: full`` with the input
kept is ``torch.utils.checkpoint`` (non-reentrant); ``selective`` checkpoints the MLP block.
A fully checkpointed layer under the hooks (its input offloaded, a segment's head, a layer of a
segment) holds no saved tensor but its input through its forward, and backward replays it whole.
Segment checkpoints (``input: recompute``, `planners.plan.segments`): a layer of a segment saves
no input; when backward first needs the input of the segment's last layer, the inputs of all
its layers are recomputed from the head's input (kept, or fetched then where it was offloaded:
the prefetch issued at the last layer's point) in one no-grad pass over the layers in between
(their streamed parameters fetched into their slots for it), and each is let go at its layer's
last unpack, as the replay's ``segment_recompute`` op has them. With the
plan's ``mlp_activation: recomputed`` every layer's SwiGLU runs as ``validate.model.SwiGLUDown``
(silu(gate) and the product recomputed in backward, not saved).
Assumes: the model's control flow does not depend on data (recomputation replays the same
sequence of saved tensors); a saved tensor's token dimension is its unique dimension of size
seq_len; tensors without one (weights, RNG state) and tensors no tag names (FlashAttention's
logsumexp, the fused RMSNorm's rstd) are kept.
Recompute: when backward first reaches a layer with dropped rows, MEMO's token-wise recompute
runs the layer's per-token ops on rows [r0, T) only (r0 the first dropped row of any tensor),
from the input's rows and the saved attention output's rows (``DecoderLayer.attn_rows``: no
attention), under no_grad, and takes each tagged tensor's rows in tag order. Where attention
itself or an untagged tensor is dropped, or the input is, the layer's whole forward is replayed
instead (as torch.utils.checkpoint does) and only the dropped rows are held from it. Each saved
tensor is released after its last unpack (autograd holds it from there).
Measures (CUDA): per step, D2H / H2D bytes and busy time (timing events around each layer's
batch of copies on its stream), the compute stream's exposed wait for prefetches (events on
either side of the wait) and the recompute ops' time.
Whole-model plans: ``lm_head_chunks`` and ``mlp_chunks`` set the decoder's chunked head + loss and
tiled MLP (``validate.chunked_ops``); model states off HBM and the optimizer step (a job with an
optimizer) are ``validate.model_states``' (its fetch before each layer's forward, at the gradient
hook of its output in backward, its CPU steps awaited after backward); ``executor_unsupported``
names what this executor does not run.
Ignores: the plan's staging buffers (prefetched tensors come from the caching allocator).
Source: MEMO (Zhao et al., SIGMOD 2025) section 4 (token-wise offload, pinned pool, three
streams); torch.utils.checkpoint's non-reentrant implementation for replaying a forward.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.utils.checkpoint import checkpoint

from hwmodels.units import UserInputError, format_bytes
from planners.plan import RESIDENT, LayerPlan, Plan, RoleAction, segments
from planners.solvers import pulp_available
from simulator.movement import step_movements
from simulator.workload import ATTN_ROLES, Role
from validate.arena import Arena, ArenaMismatch
from validate.model_states import ModelStates

if TYPE_CHECKING:
    from validate.model import Decoder, DecoderLayer

POOL_ALIGN_BYTES = 512
ARENA_TIME_LIMIT_S = 10.0
INPUT_ROLE = "input"


class OffloadPool:
    """One buffer allocated once; slots handed out in order during a step, all freed at its end.

    Host DRAM, page-locked on CUDA with ``cudaHostRegister`` (exactly the bytes asked for: the
    caching host allocator behind ``pin_memory=True`` may round a block up to a power of two).
    Another tier (CXL, a file) implements alloc/reset/peak_bytes/close."""

    def __init__(self, capacity_bytes: int, *, pin: bool) -> None:
        self.capacity_bytes = int(capacity_bytes)
        self.buffer = torch.empty(self.capacity_bytes, dtype=torch.uint8)
        self.used_bytes = 0
        self.peak_bytes = 0
        self._registered = False
        if pin and self.capacity_bytes:
            err = torch.cuda.cudart().cudaHostRegister(
                self.buffer.data_ptr(), self.capacity_bytes, 0
            )
            if int(err) != 0:
                raise UserInputError(
                    f"offload pool: cannot page-lock {format_bytes(self.capacity_bytes)} "
                    f"of host memory (cudaHostRegister error {int(err)})"
                )
            self._registered = True

    def close(self) -> None:
        """Unpin (CUDA) and drop the buffer."""
        if self._registered:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaHostUnregister(self.buffer.data_ptr())
            self._registered = False
        self.buffer = torch.empty(0, dtype=torch.uint8)
        self.capacity_bytes = 0

    def __del__(self) -> None:
        if getattr(self, "_registered", False):
            self.close()

    def alloc(self, shape: torch.Size, dtype: torch.dtype, *, where: str) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        start = -(-self.used_bytes // POOL_ALIGN_BYTES) * POOL_ALIGN_BYTES
        if start + nbytes > self.capacity_bytes:
            raise UserInputError(
                f"{where}: offload pool of {format_bytes(self.capacity_bytes)} is full "
                f"(needs {format_bytes(start + nbytes)})"
            )
        self.used_bytes = start + nbytes
        self.peak_bytes = max(self.peak_bytes, self.used_bytes)
        return self.buffer[start : start + nbytes].view(dtype).view(shape)

    def reset(self) -> None:
        self.used_bytes = 0


@dataclass(eq=False)
class _Entry:
    """One saved tensor of one layer and what the plan does with its rows."""

    tensor: torch.Tensor | None
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    role: str = "other"
    tdim: int | None = None
    perm: tuple[int, ...] = ()  # dims in memory order: rows of the token dim are one memcpy
    n_off: int = 0
    n_keep: int = 0
    n_rec: int = 0
    on_compute_stream: bool = False
    tag_idx: int | None = None  # the layer's tag call that first named this storage
    uses: int = 0  # saved-tensor handles still to be unpacked
    whole: torch.Tensor | None = None  # kept as is
    kept: torch.Tensor | None = None  # rows [n_off, n_off + n_keep)
    host: torch.Tensor | None = None  # rows [0, n_off) in the pool
    fetched: torch.Tensor | None = None  # full-size tensor, offloaded rows filled by the prefetch
    arena_key: str | None = None  # its buffer's key in the executor's arena
    full: torch.Tensor | None = None  # materialised for backward
    rec: torch.Tensor | None = None  # the recomputed rows [n_off + n_keep, end)


@dataclass(eq=False)
class _LayerState:
    index: int
    plan: LayerPlan
    entries: list[_Entry] = field(default_factory=list)
    keys: dict[tuple, int] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # pack call k -> entry index
    tags: dict[int, str] = field(default_factory=dict)  # storage ptr -> role
    tag_index: dict[int, int] = field(default_factory=dict)  # storage ptr -> first tag call
    num_tags: int = 0
    attn_ptr: int | None = None  # storage of the attention kernel's output
    attn_entry: int | None = None
    tagged: list[torch.Tensor] = field(
        default_factory=list
    )  # held to the layer's end: no ptr reuse
    input_entry: int | None = None
    input_requires_grad: bool = False
    rope: Any = None
    d2h_event: Any = None
    h2d_event: Any = None
    prefetched: bool = False
    waited: bool = False
    recomputed: bool = False
    offload_bytes: int = 0
    sources: list[torch.Tensor] = field(default_factory=list)  # read by D2H copies in flight


@dataclass
class StepStats:
    """What one step's copies and recomputes did: bytes per direction; on CUDA, per-stream busy
    time (events around each layer's batch of copies), the compute stream's exposed wait for
    prefetches, and the time of the recompute ops."""

    d2h_bytes: int = 0
    h2d_bytes: int = 0
    d2h_busy_s: float | None = None
    h2d_busy_s: float | None = None
    stall_s: float | None = None
    recompute_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        for d in ("d2h", "h2d"):
            busy = out[f"{d}_busy_s"]
            out[f"{d}_bytes_per_s"] = out[f"{d}_bytes"] / busy if busy else None
        return out


def _split(action: RoleAction, tokens: int) -> tuple[int, int, int]:
    n_off = round(action.alpha_frac * tokens)
    n_keep = min(tokens - n_off, round(action.keep_frac * tokens))
    return n_off, n_keep, tokens - n_off - n_keep


def _uses_hooks(lp: LayerPlan, *, head: bool = False) -> bool:
    """Whether the layer runs under the executor's saved-tensor hooks (else plainly, or under
    torch.utils.checkpoint); ``head``: its input is a segment's head (the segment's layers
    are recomputed from it)."""
    if lp.checkpoint == "full":
        return lp.input != "keep" or head
    return lp.input == "offload" or any(a.action != "keep" for a in lp.roles.values())


def _memory_order(t: torch.Tensor) -> tuple[int, ...]:
    """Dims sorted outermost-first in memory, when that makes ``t`` contiguous (SDPA's output
    [B, H, T, D] lies in memory as [B, T, H, D]); else the dims as they are."""

    def outermost_first(d: int) -> tuple[int, int]:
        return (-t.stride(d), d)

    perm = tuple(sorted(range(t.dim()), key=outermost_first))
    return perm if t.permute(perm).is_contiguous() else tuple(range(t.dim()))


def _rows(t: torch.Tensor, e: _Entry, start: int, length: int) -> torch.Tensor:
    """Token rows [start, start + length) of ``t`` (laid out as entry ``e``), in memory order."""
    return t.permute(e.perm).narrow(e.perm.index(e.tdim), start, length)


def _base(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base


def check_fits(
    plan: Plan,
    *,
    num_layers: int,
    gpu_budget_bytes: int | None = None,
    host_pool_bytes: int = 0,
    host_available_bytes: int | None = None,
    model_state_host_bytes: int = 0,
    disk_bytes: int = 0,
    disk_free_bytes: int | None = None,
) -> None:
    """Refuse, with one line, a plan this model or device cannot run (before any step): the
    layers, the host memory of the offload pool plus the model states the plan keeps on the host
    (``model_state_host_bytes``: pinned regions, master weights, moments), the state files on
    disk (``disk_bytes`` against ``disk_free_bytes``), the predicted peak against the budget."""
    if len(plan.layers) != num_layers:
        raise UserInputError(f"plan.layers: {len(plan.layers)} layers, the model has {num_layers}")
    if host_available_bytes is None:
        host_available_bytes = host_memory_bytes()
    if host_pool_bytes + model_state_host_bytes > host_available_bytes:
        what = "offload pool" if not model_state_host_bytes else (
            f"offload pool {format_bytes(host_pool_bytes)} + model states on the host "
            f"{format_bytes(model_state_host_bytes)} =")
        raise UserInputError(
            f"plan: {what} {format_bytes(host_pool_bytes + model_state_host_bytes)} exceeds "
            f"available host memory {format_bytes(host_available_bytes)}"
        )
    if disk_bytes and disk_free_bytes is not None and disk_bytes > disk_free_bytes:
        raise UserInputError(
            f"plan: optimizer state files {format_bytes(disk_bytes)} exceed the free space of the "
            f"state directory {format_bytes(disk_free_bytes)}"
        )
    pred = plan.prediction
    if gpu_budget_bytes is not None and pred is not None and pred.peak_hbm_bytes > gpu_budget_bytes:
        raise UserInputError(
            f"plan.prediction.peak_hbm_bytes: {format_bytes(pred.peak_hbm_bytes)} exceeds the GPU "
            f"budget {format_bytes(gpu_budget_bytes)}"
        )


def executor_unsupported(plan: Plan) -> str:
    """The first decision of a training plan this executor cannot carry out, as "field: reason";
    "" when it runs them all. It runs: the activation decisions offloading to host memory, the
    chunked LM head (``lm_head_chunks``) and MLP (``mlp_chunks``), the fused RMSNorm, segment
    checkpoints (heads fully checkpointed, as the planner makes them), and per layer the model-state
    placements of ``validate.model_states``: everything in HBM with the step on the GPU, or
    gradients on the host with the step on the CPU (moments and master weights on host or
    nvme), the parameters resident or streamed from the host. The embedding, final norm and LM
    head stay in HBM and are stepped on the GPU."""
    job = plan.scenario.job
    if job.mode != "train":
        return "scenario.job.mode: the plan executor runs training steps"
    opt = getattr(job, "optimizer", "none")
    if opt == "adamw" and getattr(job, "optimizer_state_dtype", "fp32") != "fp32":
        return "scenario.job.optimizer_state_dtype: the executor keeps fp32 moments"
    for h in segments(plan.layers):
        if plan.layers[h].checkpoint != "full":
            return f"layers.{h}.checkpoint: a segment's head is fully checkpointed in this executor"
    for lp in plan.layers:
        where = f"layers.{lp.layer}"
        if lp.attention_on != "gpu":
            return f"{where}.attention_on: attention off the GPU is not executed yet"
        for role, act in sorted(lp.roles.items()):
            if act.action == "offload" and act.tier != "host":
                return f"{where}.roles.{role}.tier: offload to {act.tier} is not executed yet"
        ms = lp.model_states
        if ms.params not in ("hbm", "host"):
            return f"{where}.model_states.params: parameters streamed from {ms.params} are not executed yet"
        if ms.grads not in ("hbm", "host"):
            return f"{where}.model_states.grads: gradients on {ms.grads} are not executed yet"
        if ms.optimizer_step == "gpu":
            if (ms.params, ms.grads, ms.optimizer_states, ms.master_weights) != ("hbm",) * 4:
                return (f"{where}.model_states.optimizer_step: a GPU step with model states off HBM "
                        "is not executed yet (use optimizer_step cpu)")
            continue
        if opt == "none":
            return f"{where}.model_states.optimizer_step: cpu, but scenario.job.optimizer is none"
        if ms.grads != "host":
            return f"{where}.model_states.grads: a CPU step takes its gradients on the host"
        for name in ("optimizer_states", "master_weights"):
            tier = getattr(ms, name)
            if tier not in ("host", "nvme"):
                return f"{where}.model_states.{name}: {tier} is not executed yet (host or nvme)"
    return ""


def host_memory_bytes() -> int:
    """Host memory available now: the kernel's MemAvailable (free pages plus the page cache and
    slab it can reclaim: files just written stay cached but do not hold memory), or the free
    pages where /proc/meminfo has no such line."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class PlanExecutor:
    """Runs training steps of ``model`` (a validate.model.Decoder) under ``plan``.

    ``host_pool_bytes=None`` sizes the pool by one counting forward on the first batch
    (``prepare``); the pool is allocated once and reused by every step."""

    def __init__(
        self,
        model: Decoder,
        plan: Plan,
        *,
        device: Any,
        host_pool_bytes: int | None = None,
        arena: bool = False,
        state_dir: str | os.PathLike | None = None,
    ) -> None:
        check_fits(plan, num_layers=len(model.layers), host_available_bytes=1 << 62)
        why = executor_unsupported(plan)
        if why:
            raise UserInputError(why)
        if plan.lm_head_chunks > 1 and not model.spec.has_lm_head:
            raise UserInputError(f"lm_head_chunks: {plan.lm_head_chunks}, but {model.spec.name} has no LM head")
        model.lm_head_chunks = plan.lm_head_chunks
        model.set_rmsnorm(getattr(plan.scenario.job, "rmsnorm", "eager"))
        for layer, lp in zip(model.layers, plan.layers, strict=True):
            cast("DecoderLayer", layer).mlp_chunks = lp.mlp_chunks
        self.model = model
        self.plan = plan
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.pool: OffloadPool | None = None
        self.host_pool_bytes = host_pool_bytes
        self._param_ptrs = {p.data_ptr() for p in model.parameters()}
        self.states: ModelStates | None = None
        job = plan.scenario.job
        if getattr(job, "optimizer", "none") != "none" or any(lp.model_states != RESIDENT for lp in plan.layers):
            self.states = ModelStates(model, plan, device=self.device,
                                      state_dir=None if state_dir is None else Path(state_dir))
        # where each layer's copies are released and its prefetch issued: the simulator's points
        # (simulator.movement), in the hooks' terms; backward's start is the top layer's hook
        self.movements = step_movements(num_layers=len(plan.layers),
                                        lookahead=plan.prefetch_lookahead_layers,
                                        prefetch_at=plan.prefetch_at)
        # segment checkpoints: head -> its recomputed layers; an offloaded head input is
        # fetched where its segment's last layer is (the replay's `restore_of`)
        self._segments = segments(plan.layers)
        self._head_of = {j: h for h, js in self._segments.items() for j in js}
        self._seg_inputs: dict[int, torch.Tensor] = {}  # layer -> its recomputed input
        self._prefetch_by: dict[tuple[int, str], list[int]] = {}
        for mv in self.movements:
            at = self.movements[self._segments[mv.layer][-1]] if mv.layer in self._segments else mv
            hook = ((len(plan.layers) - 1, "layer") if at.prefetch_layer is None
                    else (at.prefetch_layer, at.prefetch_at))
            self._prefetch_by.setdefault(hook, []).append(mv.layer)
        self._states: dict[int, _LayerState] = {}
        self._counting = False
        self._seq_len = 0
        self.stats = StepStats()
        self.arena: Arena | None = None
        self.arena_fallback = ""
        if arena:
            self.arena = Arena(self.device, time_limit_s=ARENA_TIME_LIMIT_S, use_mip=pulp_available())
        self._d2h_spans: list[tuple[Any, Any]] = []
        self._h2d_spans: list[tuple[Any, Any]] = []
        self._stall_spans: list[tuple[Any, Any]] = []
        self._recompute_spans: list[tuple[Any, Any]] = []
        if self.cuda:
            self.d2h = torch.cuda.Stream(self.device)
            self.h2d = torch.cuda.Stream(self.device)

    # ---- public ------------------------------------------------------------------------------

    def size_pool(self, batch: torch.Tensor) -> int:
        """Bytes the pool needs for ``batch`` (one counting forward, nothing copied) unless given."""
        if self.host_pool_bytes is None:
            self._counting = True
            try:
                self._run(batch).detach()
                need = sum(s.offload_bytes for s in self._states.values())
            finally:
                self._counting = False
                self._states.clear()
            self.host_pool_bytes = need
        return self.host_pool_bytes

    def prepare(self, batch: torch.Tensor) -> int:
        """Allocate the offload pool once (``size_pool`` decides its bytes) and the model
        states' regions; the pool's bytes."""
        if self.pool is None:
            self.pool = OffloadPool(self.size_pool(batch), pin=self.cuda)
        if self.states is not None and not self.states.allocated:
            self.states.allocate()  # streamed parameters now live in their slots
            self._param_ptrs = {p.data_ptr() for p in self.model.parameters()}
        return self.pool.capacity_bytes

    def close(self) -> None:
        """Give the pool and the model states' host regions back."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.states is not None:
            self.states.close()

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one step; returns the (detached) loss. ``last_stats()``
        tells what its copies and recomputes did."""
        self.prepare(batch)
        self.stats = StepStats()
        for spans in (self._d2h_spans, self._h2d_spans, self._stall_spans, self._recompute_spans):
            spans.clear()
        if self.states is not None:
            self.states.begin_step()
        try:
            loss = self._run(batch)
            self._release_sources()
            loss.backward()
            if self.states is not None:
                self.states.finish_step()  # the CPU steps' results, the GPU optimizer step
        finally:
            for st in self._states.values():
                for e in st.entries:
                    self._free_buffer(e)
            self._states.clear()
            self._seg_inputs.clear()
            assert self.pool is not None  # prepare() made it
            self.pool.reset()
        if self.arena is not None and not self.arena.planned:
            self.arena.finish_recording()  # the first step recorded the buffers; plan them
        return loss.detach()

    def arena_stats(self) -> dict[str, Any] | None:
        """The arena's layout (None without one): bytes, lower bound, status, gap; or why the
        executor fell back to ordinary allocation."""
        if self.arena is None:
            return {"fallback": self.arena_fallback} if self.arena_fallback else None
        if not self.arena.planned:
            return {"status": "recording"}
        return {
            "capacity_bytes": self.arena.capacity_bytes,
            "lower_bound_bytes": self.arena.lower_bound_bytes,
            "status": self.arena.status,
            "gap": self.arena.gap,
            "solve_time_s": self.arena.solve_time_s,
        }

    def _buffer(self, st: _LayerState, idx: int) -> torch.Tensor:
        """A full-size tensor for entry ``idx`` of ``st``: at its planned arena offset, or from
        the caching allocator (no arena, or the step differs from the recorded one)."""
        e = st.entries[idx]
        if self.arena is not None:
            key = f"{st.index}.{idx}"
            try:
                out = self.arena.alloc(key, e.shape, e.stride, e.dtype)
                e.arena_key = key
                return out
            except ArenaMismatch as err:
                self.arena_fallback = str(err)
                self.arena = None
        return torch.empty_strided(e.shape, e.stride, dtype=e.dtype, device=self.device)

    def _free_buffer(self, e: _Entry) -> None:
        """Give an entry's arena bytes back, once the kernels of its layer's backward are
        queued (not at its last unpack: the node that unpacks it may unpack, and allocate, more
        before its kernels are queued): later users of the bytes queue after them, on the
        compute stream or on the H2D stream behind an event the compute stream records."""
        if e.arena_key is not None:
            if self.arena is not None:
                self.arena.free(e.arena_key)
            e.arena_key = None

    def last_stats(self) -> StepStats:
        """The last step's StepStats (on CUDA this waits for the step's events)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

            def total(spans: list[tuple[Any, Any]]) -> float:
                return sum(a.elapsed_time(b) for a, b in spans) / 1e3

            self.stats.d2h_busy_s = total(self._d2h_spans)
            self.stats.h2d_busy_s = total(self._h2d_spans)
            self.stats.stall_s = total(self._stall_spans)
            self.stats.recompute_s = total(self._recompute_spans)
        return self.stats

    @staticmethod
    def _timed_event(stream: Any) -> Any:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(stream)
        return ev

    # ---- forward -----------------------------------------------------------------------------

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        self._seq_len = batch.shape[1]
        return self.model(batch, layer_fn=self._layer)

    def _layer(self, i: int, layer: DecoderLayer, x: torch.Tensor, rope: Any) -> torch.Tensor:
        lp = self.plan.layers[i]
        if self.states is not None and not self._counting:
            self.states.before_forward(i)
        layer.checkpoint_mlp = lp.checkpoint == "selective"
        layer.recompute_mlp_act = self.plan.mlp_activation == "recomputed"
        layer.attn_hook = None
        if self.plan.prefetch_at == "attention" and not self._counting:
            layer.attn_hook = lambda m=i: self._attention_reached(m)
        head = i in self._segments
        if lp.checkpoint == "full" and lp.input == "keep" and not head:
            y = checkpoint(layer, x, rope, use_reentrant=False)
        elif not _uses_hooks(lp, head=head) or not torch.is_grad_enabled():
            y = layer(x, rope)
        else:
            st = _LayerState(i, lp, rope=rope, input_requires_grad=x.requires_grad)
            self._states[i] = st
            if lp.input != "keep" or lp.recomputes_tokens or lp.checkpoint == "full" or head:
                st.input_entry = self._entry(st, x)
            # a checkpointed layer recomputes every saved tensor whatever its role: no tags
            # (a tag holds its tensor to the layer's end)
            layer.tagger = None if lp.checkpoint == "full" else (lambda role, t: self._tag(st, role, t))
            try:
                with torch.autograd.graph.saved_tensors_hooks(
                    lambda t: self._pack(st, t), self._unpack
                ):
                    y = layer(x, rope)
            finally:
                layer.tagger = None
            self._finish_forward(st)
        self._release_sources(after_layer=i)
        if y.requires_grad and not self._counting:
            y.register_hook(lambda grad, m=i: self._reached(m))
            if self.states is not None:
                y.register_hook(lambda grad, m=i: self.states.before_backward(m) if self.states else None)
        return y

    def _release_sources(self, after_layer: int | None = None) -> None:
        """At the end of layer ``after_layer``'s forward (of forward: None), give back the
        tensors of the layers whose movement releases them there (``release_after_layer``) or
        before, once their D2H copies are done in the compute stream's order (a wait, timed as a stall, when a copy
        is slower than the next layer's forward). Freed in the compute stream's order, their
        blocks are reused at once; ``record_stream`` would hold them until the allocator
        polls the copy's event, and it allocates new segments meanwhile."""
        for st in self._states.values():
            release = self.movements[st.index].release_after_layer
            if not st.sources or (after_layer is not None and (release is None or release > after_layer)):
                continue
            if self.cuda:
                compute = torch.cuda.current_stream(self.device)
                start = self._timed_event(compute)
                compute.wait_event(st.d2h_event)
                self._stall_spans.append((start, self._timed_event(compute)))
            st.sources.clear()

    @staticmethod
    def _tag(st: _LayerState, role: str, t: torch.Tensor) -> None:
        ptr = t.untyped_storage().data_ptr()
        st.tags[ptr] = str(role)
        st.tag_index.setdefault(ptr, st.num_tags)
        if role == Role.ATTN_OUT and st.attn_ptr is None:
            st.attn_ptr = ptr
        st.num_tags += 1
        st.tagged.append(t)

    def _entry(self, st: _LayerState, t: torch.Tensor) -> int:
        """The entry of ``t``'s base: views of one tensor (q, k, v of a fused qkv) share it."""
        t = _base(t)
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        idx = st.keys.get(key)
        if idx is None:
            idx = st.keys[key] = len(st.entries)
            st.entries.append(
                _Entry(tensor=t, shape=tuple(t.shape), stride=t.stride(), dtype=t.dtype)
            )
        return idx

    def _dropped_entry(self, st: _LayerState, base: torch.Tensor) -> int:
        """An entry of a fully checkpointed layer's saved tensor (not its input): described now
        and not held, as torch.utils.checkpoint does, so that the layer's forward frees its
        tensors as a checkpointed one does; one entry per save (without the tensor its storage
        may be reused, so it cannot be matched by address), recomputed whole from the input."""
        T = self._seq_len
        dims = [d for d, n in enumerate(base.shape) if n == T]
        if len(dims) > 1 and T > 1:
            raise UserInputError(
                f"plan.layers.{st.index}: saved tensor of shape {tuple(base.shape)} has more than one "
                f"dimension of seq_len {T}; use another seq_len"
            )
        e = _Entry(tensor=None, shape=tuple(base.shape), stride=base.stride(), dtype=base.dtype)
        if dims:
            e.tdim, e.perm, e.n_rec = dims[0], _memory_order(base), T
        else:
            e.whole = base  # no token dimension (RNG state, scalars): kept
        st.entries.append(e)
        return len(st.entries) - 1

    def _pack(self, st: _LayerState, t: torch.Tensor) -> Any:
        if t.data_ptr() in self._param_ptrs or t.device != self.device:
            return t
        b = _base(t)
        if st.plan.checkpoint == "full" and (b.data_ptr(), tuple(b.shape), b.stride(), b.dtype) not in st.keys:
            idx = self._dropped_entry(st, b)
        else:
            idx = self._entry(st, t)
        st.order.append(idx)
        st.entries[idx].uses += 1
        rel = t.storage_offset() - _base(t).storage_offset()
        return (st.index, idx, tuple(t.shape), t.stride(), rel)

    def _finish_forward(self, st: _LayerState) -> None:
        lp, T = st.plan, self._seq_len
        for idx, e in enumerate(st.entries):
            t = e.tensor
            if t is None:  # described at its pack (_dropped_entry)
                continue
            ptr = t.untyped_storage().data_ptr()
            role = st.tags.get(ptr, "other")
            e.role = INPUT_ROLE if idx == st.input_entry else role
            e.tag_idx = st.tag_index.get(ptr)
            if ptr == st.attn_ptr:
                st.attn_entry = idx
            dims = [d for d, n in enumerate(t.shape) if n == T]
            if len(dims) > 1 and T > 1:
                raise UserInputError(
                    f"plan.layers.{st.index}: saved tensor of shape {tuple(t.shape)} has more than one "
                    f"dimension of seq_len {T}; use another seq_len"
                )
            e.tdim = dims[0] if dims else None
            if e.tdim is not None:
                e.perm = _memory_order(t)
            if e.tdim is None:
                e.whole = t
            elif e.role == INPUT_ROLE and lp.input == "recompute":
                e.n_rec = T  # recomputed from the segment's head (_segment_inputs)
            elif e.role == INPUT_ROLE:
                e.n_off = T if lp.input == "offload" else 0
                e.n_keep = T - e.n_off
                e.on_compute_stream = lp.input_stream == "compute"
            elif lp.checkpoint == "full":
                e.n_rec = T
            else:
                a = lp.action(e.role)
                e.n_off, e.n_keep, e.n_rec = _split(a, T)
                e.on_compute_stream = a.stream == "compute"
            if e.tdim is not None and e.n_keep == T:
                e.whole = t
            if e.n_off:
                off = _rows(t, e, 0, e.n_off)
                nbytes = off.numel() * t.dtype.itemsize
                st.offload_bytes += -(-nbytes // POOL_ALIGN_BYTES) * POOL_ALIGN_BYTES
                if not self._counting:
                    assert self.pool is not None  # prepare() made it before any step
                    e.host = self.pool.alloc(
                        off.shape, t.dtype, where=f"plan.layers.{st.index}.{e.role}"
                    )
        st.tags.clear()
        st.tagged.clear()
        if self._counting:
            st.entries.clear()
            return
        side = self.cuda and any(e.n_off and not e.on_compute_stream for e in st.entries)
        if side:
            self.d2h.wait_event(torch.cuda.current_stream(self.device).record_event())
            start = self._timed_event(self.d2h)
        # One saved tensor at a time: its kept rows are copied out and its storage released
        # (after its D2H copy, in that stream's order) before the next one's copy is made.
        for e in st.entries:
            t, e.tensor = e.tensor, None
            if t is None:  # described at its pack (_dropped_entry)
                continue
            if e.tdim is not None and 0 < e.n_keep < e.shape[e.tdim]:
                e.kept = _rows(t, e, e.n_off, e.n_keep).clone()
            if e.n_off:
                assert e.host is not None  # allocated in the pool above
                src = _rows(t, e, 0, e.n_off)
                self.stats.d2h_bytes += src.numel() * e.dtype.itemsize
                if side and not e.on_compute_stream:
                    with torch.cuda.stream(self.d2h):
                        e.host.copy_(src, non_blocking=True)
                    st.sources.append(t)  # released at the next layer's end (_release_sources)
                else:
                    e.host.copy_(src)
            del t
        if side:
            st.d2h_event = self._timed_event(self.d2h)
            self._d2h_spans.append((start, st.d2h_event))

    # ---- backward ----------------------------------------------------------------------------

    def _reached(self, m: int) -> None:
        """Backward is about to run layer m: free layer m+1's tensors, prefetch the layers whose
        movement issues their prefetch here, and layer m itself if nothing fetched it yet."""
        done = self._states.pop(m + 1, None)
        if done is not None:  # every kernel of layer m+1's backward is queued by now
            for e in done.entries:
                self._free_buffer(e)
        self._prefetch_layers([*self._prefetch_by.get((m, "layer"), ()), m])

    def _attention_reached(self, m: int) -> None:
        """Backward of layer m has left its MLP block: prefetch the layers whose movement
        issues their prefetch here."""
        self._prefetch_layers(self._prefetch_by.get((m, "attention"), ()))

    def _prefetch_layers(self, layers) -> None:
        for li in sorted(set(layers)):
            st = self._states.get(li)
            if st is not None and not st.prefetched:
                self._prefetch(st)

    def _prefetch(self, st: _LayerState) -> None:
        st.prefetched = True
        todo = [(i, e) for i, e in enumerate(st.entries) if e.n_off and not e.on_compute_stream]
        if not todo:
            return
        # Allocated on the compute stream (its pool: no second cache on the H2D stream); the
        # H2D stream starts once the compute stream reaches this point of the backward, when
        # the blocks handed out here are free in its order.
        for i, e in todo:  # the kept rows move in now: the layer holds one copy of each row
            e.fetched = self._buffer(st, i)
            if e.kept is not None:
                _rows(e.fetched, e, e.n_off, e.n_keep).copy_(e.kept)
                e.kept = None
        moving: list[tuple[_Entry, torch.Tensor, torch.Tensor]] = []  # (entry, fetched, host)
        for _, e in todo:
            assert e.fetched is not None and e.host is not None  # fetched above, host since forward
            moving.append((e, e.fetched, e.host))
        self.stats.h2d_bytes += sum(host.numel() * e.dtype.itemsize for e, _, host in moving)
        if self.cuda:
            self.h2d.wait_event(torch.cuda.current_stream(self.device).record_event())
            self.h2d.wait_event(st.d2h_event)
            start = self._timed_event(self.h2d)
            with torch.cuda.stream(self.h2d):
                for e, fetched, host in moving:
                    _rows(fetched, e, 0, e.n_off).copy_(host, non_blocking=True)
            st.h2d_event = self._timed_event(self.h2d)
            self._h2d_spans.append((start, st.h2d_event))
        else:
            for e, fetched, host in moving:
                _rows(fetched, e, 0, e.n_off).copy_(host)

    def _unpack(self, handle: Any) -> torch.Tensor:
        if isinstance(handle, torch.Tensor):
            return handle
        layer, idx, shape, stride, rel = handle
        st = self._states[layer]
        if not st.recomputed and any(e.n_rec for e in st.entries):
            self._recompute(st)  # before the layer's backward, as the plan has it
        full = self._materialise(st, idx)
        e = st.entries[idx]
        e.uses -= 1
        if e.uses <= 0:  # autograd holds it from here; the last handle lets it go after use
            e.full = e.whole = None  # (its arena bytes: when backward leaves the layer)
        if shape == tuple(full.shape) and stride == full.stride() and rel == 0:
            return full
        return full.as_strided(shape, stride, full.storage_offset() + rel)

    def _materialise(self, st: _LayerState, idx: int) -> torch.Tensor:
        """The whole saved tensor, for a kernel: its prefetched rows waited for."""
        e = st.entries[idx]
        if e.whole is not None:
            return e.whole
        if e.n_off and not e.on_compute_stream:
            if not st.prefetched:
                self._prefetch(st)
            if self.cuda and st.h2d_event is not None and not st.waited:
                compute = torch.cuda.current_stream(self.device)
                before = self._timed_event(compute)
                compute.wait_event(st.h2d_event)
                self._stall_spans.append((before, self._timed_event(compute)))
                st.waited = True
        if e.full is None:
            self._assemble(st, idx)
        assert e.full is not None  # _assemble sets it
        return e.full

    def _assemble(self, st: _LayerState, idx: int) -> None:
        """Put a split tensor's rows together (the kept rows, the offloaded ones from the
        prefetch or, on the compute stream, the pool, the recomputed ones) and drop the parts.
        The H2D stream may still be writing the offloaded rows: the caller waits for them."""
        e = st.entries[idx]
        if e.n_rec and e.rec is None:
            self._recompute(st)
            if e.full is not None:
                return
        if e.n_off and not e.on_compute_stream and not st.prefetched:
            self._prefetch(st)
        out = e.fetched
        if out is None and e.host is None and e.kept is None and e.n_off + e.n_keep:
            raise RuntimeError(f"layer {st.index}: saved tensor {idx} unpacked after its last use")
        if out is None:
            out = self._buffer(st, idx)
            if e.n_off:
                assert e.host is not None  # the check above: its rows are still in the pool
                _rows(out, e, 0, e.n_off).copy_(e.host)
        if e.kept is not None:
            _rows(out, e, e.n_off, e.n_keep).copy_(e.kept)
        if e.rec is not None:
            _rows(out, e, e.n_off + e.n_keep, e.n_rec).copy_(e.rec)
        e.full, e.fetched, e.kept, e.host, e.rec = out, None, None, None, None

    def _recompute(self, st: _LayerState) -> None:
        if st.recomputed:
            return
        st.recomputed = True
        layer = cast("DecoderLayer", self.model.layers[st.index])  # nn.ModuleList items are Modules
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        before = self._timed_event(compute) if self.cuda else None
        if self._token_wise(st, layer):
            self._recompute_rows(st, layer)
        else:
            self._replay_layer(st, layer)
        for idx, e in enumerate(st.entries):  # the recomputed rows go in now, then are freed
            if e.n_rec and e.full is None:
                self._assemble(st, idx)
        if self.cuda:
            self._recompute_spans.append((before, self._timed_event(compute)))

    @staticmethod
    def _token_wise(st: _LayerState, layer: DecoderLayer) -> bool:
        """Whether the dropped rows can be recomputed from the input's and the attention
        output's rows alone (every recomputed tensor named by a tag, attention not recomputed)."""
        if not hasattr(layer, "attn_rows") or st.input_entry is None or st.attn_entry is None:
            return False
        inp, att = st.entries[st.input_entry], st.entries[st.attn_entry]
        if inp.tdim is None or att.tdim is None or inp.n_rec or att.n_rec:
            return False
        return all(
            e.tag_idx is not None and e.role not in ATTN_ROLES for e in st.entries if e.n_rec
        )

    def _recompute_rows(self, st: _LayerState, layer: DecoderLayer) -> None:
        """MEMO's token-wise recompute: the layer's per-token ops on rows [r0, T) only."""
        assert st.input_entry is not None and st.attn_entry is not None  # _token_wise checked
        inp, att = st.entries[st.input_entry], st.entries[st.attn_entry]
        assert inp.tdim is not None and att.tdim is not None  # _token_wise checked
        seq = inp.shape[inp.tdim]
        r0 = min(e.n_off + e.n_keep for e in st.entries if e.n_rec)
        n = seq - r0
        x = self._materialise(st, st.input_entry).narrow(inp.tdim, r0, n)
        a = self._materialise(st, st.attn_entry).narrow(att.tdim, r0, n)
        rope = None if st.rope is None else tuple(r.narrow(0, r0, n) for r in st.rope)
        tagged: list[torch.Tensor] = []
        layer.tagger = lambda role, t: tagged.append(t)
        layer.attn_rows = a
        try:
            with torch.no_grad():
                layer(x, rope)
        finally:
            layer.tagger = None
            layer.attn_rows = None
        for e in st.entries:
            if not e.n_rec:
                continue
            assert e.tdim is not None and e.tag_idx is not None  # recomputed rows: _token_wise checked
            want = e.shape[: e.tdim] + (n,) + e.shape[e.tdim + 1 :]
            t = tagged[e.tag_idx] if e.tag_idx < len(tagged) else None
            if t is not None and tuple(t.shape) != want:
                t = t._base
            if t is None or tuple(t.shape) != want or t.dtype != e.dtype:
                raise RuntimeError(
                    f"layer {st.index}: token-wise recompute diverged from the forward"
                )
            e.rec = _rows(t, e, e.n_off + e.n_keep - r0, e.n_rec)

    def _replay_layer(self, st: _LayerState, layer: DecoderLayer) -> None:
        """The whole layer forward again (dropped rows of the attention output, or a layer
        without ``attn_rows``), keeping only the dropped rows of each saved tensor."""
        assert st.input_entry is not None  # _layer makes it for every layer that recomputes
        if st.plan.input == "recompute":
            if st.index not in self._seg_inputs:
                self._segment_inputs(self._segments[self._head_of[st.index]][-1])
            # held as the input's saved tensor from here, let go at its last unpack
            st.entries[st.input_entry].full = self._seg_inputs.pop(st.index)
        x = self._materialise(st, st.input_entry).detach().requires_grad_(st.input_requires_grad)
        calls = iter(st.order)

        def pack(t: torch.Tensor) -> None:
            if t.data_ptr() in self._param_ptrs or t.device != self.device:
                return None
            e = st.entries[next(calls)]
            t = _base(t)
            if e.n_rec and e.rec is None and e.full is None:
                if tuple(t.shape) != e.shape or t.dtype != e.dtype:
                    raise RuntimeError(f"layer {st.index}: recomputation diverged from the forward")
                if e.tdim is not None and e.n_rec == e.shape[e.tdim]:  # all of it: the replay's own tensor
                    e.full = t
                else:
                    e.rec = _rows(t, e, e.n_off + e.n_keep, e.n_rec).clone()  # only the dropped rows
            return None

        # the replay's graph is never backpropagated: its unpack hook returns nothing
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda h: None):  # type: ignore[arg-type, return-value]
            layer(x, st.rope)

    def _segment_inputs(self, last: int) -> None:
        """Backward first needs the input of ``last``, a segment's last layer: the inputs of
        every layer of the segment again, from the head's input (fetched now where it was
        offloaded), in one no-grad pass over the layers in between (the replay's
        ``layers.{h}-{last - 1}.segment_recompute``, before ``last``'s backward stage). Each is
        held until its layer's backward unpacks it for the last time."""
        h = self._head_of[last]
        head = self._states[h]
        assert head.input_entry is not None  # _layer makes it for a head
        x = self._materialise(head, head.input_entry)
        with torch.no_grad():
            for j in range(h, last):
                if self.states is not None:
                    self.states.params_ready(j)
                x = cast("DecoderLayer", self.model.layers[j])(x, head.rope)
                self._seg_inputs[j + 1] = x
        if self.states is not None:
            self.states.before_backward(last)  # its slot may have served the pass
