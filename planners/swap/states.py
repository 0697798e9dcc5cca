"""Model states off HBM: a plan's per-layer `ModelStatePlacement` applied to the step's Workload.

Models (the contract of ``LayerPlan.model_states``, shared with ``validate.executor``):
  * parameters streamed from a tier (``params`` host / cxl / nvme): the layer's bf16 weights
    are not resident; a GPU buffer of the layer's weight bytes is allocated when its H2D copy
    starts, ``params_prefetch_layers`` layers ahead (at the start of layer i - k's forward; in
    backward, reverse order, at the start of layer i + k's backward stage), and freed when the
    layer's forward (backward stage, recompute included) ends: k + 1 buffers rotate;
  * gradients to the host (``grads`` host): each weight gradient is copied D2H when the layer's
    backward ends and its GPU buffer is freed at the end of the next backward layer's last op,
    which waits for that copy (two layers' gradients live at most);
  * optimizer moments and master weights off HBM with ``optimizer_step`` cpu: their bytes live
    on their tier (host DRAM, a CXL card, an NVMe file); the layer's AdamW step runs on the CPU
    as soon as its gradients are on the host (one CPU stream, layer after layer, overlapped
    with the rest of the backward), its bytes (the template's optimizer-step traffic for the
    layer's share of the parameters) at the node's CPU AdamW rate
    (`hwmodels.specs.HostMemorySpec.cpu_adamw_rate_bytes_per_s`); states on CXL or NVMe are
    read into host buffers before the layer's step and written back after it, over the
    device's read and write rates (shared with the activations' copies to that device);
    updated parameters go to the host pool (params on host: nothing to copy) or H2D to the
    resident parameters once the layer's step is done (params in HBM), before the step ends.
  * the GPU's optimizer step (``optimizer.step``) keeps the share of the work and of the moment
    and master-weight bytes of the parameters it still steps.
Assumes: the step's "other" parameters (embedding, final norm, LM head) stay resident with
their gradients and states (this version's contract); a CPU step needs the layer's gradients
on the host and its states off HBM (`Plan.unsupported` refuses the rest); one GPU per host.
Ignores: page-cache effects of the NVMe files (direct IO), the CPU time of the copies' own
launches, the write-back of stepped parameters that stream from CXL / NVMe (`Plan.unsupported`
refuses parameters there; the host's staging buffer for states there is counted, one layer's).
Source: ZeRO-Offload (Ren et al., USENIX ATC 2021, arXiv 2101.06840): gradients D2H as they are
produced, CPU Adam overlapped with backward, parameters back H2D; ZeRO-Infinity (arXiv
2104.07857) for states on NVMe; ALST (arXiv 2506.13996) for the whole step at long context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hwmodels.units import UserInputError
from planners.plan import RESIDENT, ModelStatePlacement
from simulator.templates import FP32_BYTES
from simulator.workload import OpSpec, Phase, Role, TensorSpec, Workload

STATE_STAGING_LAYERS = 1
"""Host buffers a CXL / NVMe state read goes through, a layer's states each: one, as the
executor (validate.model_states) reads a layer's states into it, steps them there in place (its
first step makes the moments there, zeroed) and writes them back, one layer at a time on its
one optimizer thread."""


@dataclass(frozen=True)
class StateCopy:
    """One copy of one layer's model-state bytes; op indices refer to the Workload it is on."""

    layer: int
    kind: str  # "params" (H2D, forward or backward), "grads" (D2H), "updated_params" (H2D)
    direction: str  # "h2d" | "d2h"
    num_bytes: int
    tier: str  # the tier the bytes come from or go to
    ready_op: int  # h2d: starts when this op starts; d2h: when this op ends; -1: after the CPU step
    needed_op: int  # compute cannot start this op before the copy is done; -1: none (step end)


@dataclass(frozen=True)
class CpuStep:
    """The CPU AdamW step of one layer."""

    layer: int
    step_bytes: int  # optimizer traffic (params, grads, moments, master weights read and written)
    state_bytes: int  # the layer's moments and master weights that are off the host
    state_tier: str  # where those live (host, cxl, nvme)
    params_tier: str  # where the updated parameters go (hbm: copied H2D)
    param_bytes: int


@dataclass(frozen=True)
class StatesApplied:
    """The Workload with the model-state placement applied, and what the replay adds to it."""

    workload: Workload
    copies: tuple[StateCopy, ...]
    cpu_steps: tuple[CpuStep, ...]
    tier_bytes: dict[str, int]  # static bytes per tier off HBM (host, cxl, nvme), one GPU
    by_kind: dict[str, dict[str, int]]  # tier -> state kind -> bytes (the report's breakdown)

    def moved(self, op_index: Sequence[int]) -> StatesApplied:
        """The same copies on a Workload whose op k is op ``op_index[k]`` (`apply_plan`'s
        renumbering after its recompute ops)."""
        def at(k: int) -> int:
            return op_index[k] if k >= 0 else k

        from dataclasses import replace

        return replace(self, copies=tuple(replace(c, ready_op=at(c.ready_op), needed_op=at(c.needed_op))
                                          for c in self.copies))


def cpu_step_scratch_bytes(param_bytes: int, meta: dict) -> int:
    """Host bytes a layer's CPU optimizer step makes for itself: the fp32 copy of its gradients
    and, without master weights, the fp32 copy of its parameters (taken again from the bf16
    ones every step); one layer at a time (one CPU optimizer stream). ``param_bytes``: the
    layer's parameters in their dtype; ``meta``: the template Workload's (element bytes of the
    parameters, master weights)."""
    elem_bytes = meta.get("param_elem_bytes")
    if not elem_bytes:
        raise UserInputError("layers.model_states.optimizer_step: a CPU step is modelled on the "
                             "templates' Workload (it names the parameters' dtype)")
    numel = param_bytes // int(elem_bytes)
    return FP32_BYTES * numel * (1 + (not meta.get("master_weights", False)))


def all_resident(states: Sequence[ModelStatePlacement]) -> bool:
    return all(s == RESIDENT for s in states)


def apply_model_states(wl: Workload, states: Sequence[ModelStatePlacement]) -> StatesApplied:
    """``wl`` (a template Workload) with ``states[i]`` applied to decoder layer i (see the module
    docstring). With every layer resident the Workload is returned unchanged."""
    if all_resident(states):
        return StatesApplied(workload=wl, copies=(), cpu_steps=(), tier_bytes={}, by_kind={})
    ops = list(wl.ops)
    n = len(states)
    fwd: dict[int, list[int]] = {}
    bwd: dict[int, list[int]] = {}
    for k, op in enumerate(ops):
        if op.layer is None:
            continue
        (fwd if op.phase == Phase.FWD else bwd if op.phase in (Phase.BWD, Phase.RECOMPUTE) else {}).setdefault(
            op.layer, []).append(k)
    if sorted(fwd) != list(range(n)) or sorted(bwd) != list(range(n)):
        raise UserInputError(f"model_states: {n} placements for a Workload of {len(fwd)} decoder layers")
    first_bwd_op = next(k for k, op in enumerate(ops) if op.phase in (Phase.BWD, Phase.RECOMPUTE))
    optim = [k for k, op in enumerate(ops) if op.phase == Phase.OPTIM]
    after_bwd = optim[0] if optim else None
    index = wl._by_id()
    initial = list(wl.initial)
    weights: dict[int, list[int]] = {}
    grads: dict[int, list[int]] = {}
    for spec in wl.tensors:
        if spec.layer is not None and spec.role == Role.WEIGHT and spec.persistent:
            weights.setdefault(spec.layer, []).append(spec.tid)
        elif spec.layer is not None and spec.role == Role.GRAD and spec.persistent:
            grads.setdefault(spec.layer, []).append(spec.tid)
    weight_bytes = {i: sum(index[t].num_bytes for t in weights.get(i, ())) for i in range(n)}
    total_weight_bytes = sum(x.num_bytes for x in wl.tensors if x.role == Role.WEIGHT and x.persistent)
    add_allocs: dict[int, list[int]] = {}
    add_frees: dict[int, list[int]] = {}
    extra: list[TensorSpec] = []
    next_tid = max(x.tid for x in wl.tensors) + 1
    copies: list[StateCopy] = []
    tier_bytes: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}

    def hold(tier: str, kind: str, num_bytes: int) -> None:
        if num_bytes:
            tier_bytes[tier] = tier_bytes.get(tier, 0) + num_bytes
            by_kind.setdefault(tier, {})[kind] = by_kind.get(tier, {}).get(kind, 0) + num_bytes

    def buffer(name: str, num_bytes: int, layer: int, alloc_at: int, free_at: int) -> None:
        nonlocal next_tid
        extra.append(TensorSpec(next_tid, name, num_bytes, Role.WEIGHT, layer))
        add_allocs.setdefault(alloc_at, []).append(next_tid)
        add_frees.setdefault(free_at, []).append(next_tid)
        next_tid += 1

    for i, ms in enumerate(states):
        if ms.params != "hbm":
            k = max(1, ms.params_prefetch_layers)
            nbytes = weight_bytes[i]
            initial = [t for t in initial if t not in set(weights.get(i, ()))]
            hold(ms.params, "params", nbytes)
            start_f = fwd[i - k][0] if i - k >= 0 else 0
            buffer(f"layers.{i}.params.fwd_buffer", nbytes, i, start_f, fwd[i][-1])
            copies.append(StateCopy(i, "params", "h2d", nbytes, ms.params, start_f, fwd[i][0]))
            start_b = bwd[i + k][0] if i + k < n else first_bwd_op
            buffer(f"layers.{i}.params.bwd_buffer", nbytes, i, start_b, bwd[i][-1])
            copies.append(StateCopy(i, "params", "h2d", nbytes, ms.params, start_b, bwd[i][0]))
        if ms.grads != "hbm":
            if any(t in wl.initial for t in grads.get(i, ())):
                raise UserInputError("model_states.grads: gradients kept across steps (grads_persist) "
                                     "cannot be offloaded as they are produced")
            if ms.grads != "host":
                raise UserInputError(f"model_states.grads: gradients go to the host, not {ms.grads}")
            nbytes = sum(index[t].num_bytes for t in grads.get(i, ()))
            free_at = bwd[i - 1][-1] if i >= 1 else after_bwd
            if free_at is None:
                raise UserInputError("model_states.grads: a step without an optimizer keeps its gradients")
            for t in grads.get(i, ()):
                add_frees.setdefault(free_at, []).append(t)
            hold("host", "grads", nbytes)
            copies.append(StateCopy(i, "grads", "d2h", nbytes, "host", bwd[i][-1], free_at))

    # optimizer moments and master weights: the HBM share of the parameters whose states stay
    sizes = {x.tid: x.num_bytes for x in wl.tensors}
    cpu_steps: list[CpuStep] = []
    step_k = next((k for k in optim if ops[k].name == "optimizer.step"), None)
    for role, field, kind in ((Role.OPTIMIZER_STATE, "optimizer_states", "optimizer_states"),
                              (Role.MASTER_WEIGHT, "master_weights", "master_weights")):
        tids = [x.tid for x in wl.tensors if x.role == role and x.persistent]
        total = sum(sizes[t] for t in tids)
        if not total:
            continue
        off = 0
        for i, ms in enumerate(states):
            tier = getattr(ms, field)
            if tier != "hbm":
                share = total * weight_bytes[i] // max(1, total_weight_bytes)
                hold(tier, kind, share)
                off += share
        for t in tids:
            sizes[t] -= off * sizes[t] // total
    step_bytes_per_weight_byte = (ops[step_k].hbm_bytes / total_weight_bytes
                                  if step_k is not None and total_weight_bytes else 0.0)
    cpu_share = 0
    for i, ms in enumerate(states):
        if ms.optimizer_step != "cpu":
            continue
        if ms.grads != "host":
            raise UserInputError(f"layers.{i}.model_states.grads: a CPU optimizer step needs the "
                                 "gradients on the host")
        if step_k is None:
            raise UserInputError(f"layers.{i}.model_states.optimizer_step: the job has no optimizer step")
        # the states off the host: read before the layer's step, written after (those on the host
        # are stepped where they are; the executor's state file holds only the others)
        state = sum(total * weight_bytes[i] // max(1, total_weight_bytes) for total, tier in (
            (sum(x.num_bytes for x in wl.tensors if x.role == r and x.persistent), getattr(ms, f))
            for r, f in ((Role.OPTIMIZER_STATE, "optimizer_states"), (Role.MASTER_WEIGHT, "master_weights")))
            if tier != "host")
        tiers = {ms.optimizer_states, ms.master_weights}
        state_tier = next((t for t in ("nvme", "cxl") if t in tiers), "host")
        cpu_steps.append(CpuStep(i, int(step_bytes_per_weight_byte * weight_bytes[i]), state,
                                 state_tier, ms.params, weight_bytes[i]))
        cpu_share += weight_bytes[i]
        if ms.params == "hbm":  # the CPU steps a host copy of the parameters, then sends it back
            hold("host", "params", weight_bytes[i])
            copies.append(StateCopy(i, "updated_params", "h2d", weight_bytes[i], "host", -1, -1))
    staged = [c.state_bytes for c in cpu_steps if c.state_tier != "host"]
    if staged:
        hold("host", "state_staging", STATE_STAGING_LAYERS * max(staged))
    if cpu_steps:
        hold("host", "cpu_step_scratch", cpu_step_scratch_bytes(max(c.param_bytes for c in cpu_steps), wl.meta))
    if step_k is not None and cpu_share:
        gpu_frac = 1.0 - cpu_share / total_weight_bytes
        op = ops[step_k]
        ops[step_k] = _with(op, time_s=None if op.time_s is None else op.time_s * gpu_frac,
                            hbm_bytes=int(op.hbm_bytes * gpu_frac))
    out = [_with(op, allocs=op.allocs + tuple(add_allocs.get(k, ())), frees=op.frees + tuple(add_frees.get(k, ())))
           if k in add_allocs or k in add_frees else op for k, op in enumerate(ops)]
    tensors = tuple(TensorSpec(x.tid, x.name, sizes[x.tid], x.role, x.layer, x.persistent) for x in wl.tensors)
    new = Workload(tensors=tensors + tuple(extra), ops=tuple(out), initial=tuple(initial),
                   meta={**wl.meta, "model_states_applied": True})
    return StatesApplied(workload=new, copies=tuple(copies), cpu_steps=tuple(cpu_steps),
                         tier_bytes=dict(sorted(tier_bytes.items())),
                         by_kind={t: dict(sorted(v.items())) for t, v in sorted(by_kind.items())})


def _with(op: OpSpec, **changes) -> OpSpec:
    from dataclasses import replace

    return replace(op, **changes)
