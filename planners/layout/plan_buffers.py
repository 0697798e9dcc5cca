"""Layouts of a Plan's step: the whole applied step, or only the plan's own buffers in one arena.

Models: a Plan file names its scenario in its provenance (model preset, training job, node);
the step it describes is the template Workload with the plan's checkpoints and the plan
applied (``planners.swap.apply_plan``, exactly as ``planners.swap.evaluate`` replays it).
``apply_plan`` adds the plan's own buffers: for every offloaded token slice a
``<tensor>.prefetched`` storage, allocated when backward reaches the restore point and freed
with the original tensor, and for every token-wise recomputed slice a ``<tensor>.recomputed``
storage, allocated by the layer's recompute op. (Its ``.offloaded``, ``.dropped`` and
``.held`` tensors are parts of storages the step already has, cut so their lifetimes can
differ: they are not new buffers.) Those buffers can live in one pre-allocated arena at
planned offsets; the arena is then held for the whole step, so the predicted HBM peak is
max over time of the live bytes of every other tensor + the arena's planned bytes, next to
the ordinary peak (every tensor allocated on its own, max of live bytes over time). The
caching allocator's reserved memory is predicted both ways (the arena as one block allocated
before the step, the buffers left out of the step's requests).
Assumes: sizes round to 512 B as the caching allocator rounds them; the executor reuses an
arena byte only after the work that used it earlier is ordered before (stream events); the
plan's buffers are the token slices the Workload models (an executor that fetches into
full-size buffers needs a larger arena: lay out what it records, see validate.arena).
Ignores: the D2H staging buffers (the Workload's offloads copy straight from the saved
tensors into the host pool), alignment beyond 512 B.
Source: MEMO (Zhao et al., 2024) section 4.3 (offline layout of the swap buffers);
planners.swap.apply_plan for the buffers' names and lifetimes.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, replace

from pydantic import BaseModel, ConfigDict, Field

from planners.layout.instance import LayoutInstance, instance_from_workload, lower_bound_bytes
from planners.plan import Plan
from planners.swap import AppliedPlan
from simulator.workload import Role, TensorSpec, Workload, walk_memory

PLAN_BUFFER_SUFFIXES = (".prefetched", ".recomputed")
"""Names ``planners.swap.apply_plan`` gives the storages it adds (restore and recompute)."""


@dataclass(frozen=True)
class PlanStep:
    """A plan's scenario and the Workload of one step with the plan applied."""

    plan: Plan
    model: object  # simulator.model.ModelSpec
    job: object  # simulator.job.TrainJob
    node: object  # hwmodels NodeSpec
    applied: AppliedPlan
    name: str

    @property
    def workload(self) -> Workload:
        return self.applied.workload


def plan_step(plan: Plan, *, source: str = "plan") -> PlanStep:
    """The scenario the plan embeds (`Scenario.from_plan`) with the plan applied to its step.

    ``source`` names the plan (its file) in error messages.
    """
    from planners.swap import PlanContext, apply_plan

    ctx = PlanContext.from_plan(plan, source=source)
    model, job, node, prov = ctx.model, ctx.job, ctx.node, plan.provenance
    prof = ctx.profile_for([lp.checkpoint for lp in plan.layers])
    applied = apply_plan(prof, plan.layers, lookahead=ctx.lookahead, prefetch_at=ctx.prefetch_at,
                         copy_s_per_byte=ctx.copy_s_per_byte)
    name = f"{model.name} seq {job.seq_len} x {job.micro_batch}, plan {prov.planner}"
    return PlanStep(plan=plan, model=model, job=job, node=node, applied=applied, name=name)


def load_plan_step(path: str | pathlib.Path) -> PlanStep:
    """``plan_step`` of a plan file; a bad file raises UserInputError naming it."""
    from planners.plan import load_plan

    return plan_step(load_plan(path), source=str(path))


def plan_buffer_tids(workload: Workload) -> frozenset[int]:
    """Tensors of ``workload`` that ``apply_plan`` added as the plan's own buffers."""
    return frozenset(t.tid for t in workload.tensors if t.name.endswith(PLAN_BUFFER_SUFFIXES))


def step_instance(step: PlanStep) -> LayoutInstance:
    """Every allocation of the applied step (what ``tierplan layout`` lays out for a Workload)."""
    return instance_from_workload(step.workload, name=step.name)


def plan_buffers_instance(step: PlanStep) -> LayoutInstance:
    """Only the plan's buffers, with their lifetimes in the applied step's op indices."""
    tids = plan_buffer_tids(step.workload)
    whole = step_instance(step)
    bufs = tuple(b for b in whole.buffers if int(b.bid.split(":", 1)[0]) in tids)
    return LayoutInstance(bufs, name=f"{step.name} (plan buffers)", source="plan")


def without_tensors(workload: Workload, tids: frozenset[int]) -> Workload:
    """``workload`` with the tensors ``tids`` left out of its tensors, ops and initial set."""
    tensors = tuple(t for t in workload.tensors if t.tid not in tids)
    ops = tuple(replace(op, allocs=tuple(x for x in op.allocs if x not in tids),
                        frees=tuple(x for x in op.frees if x not in tids))
                for op in workload.ops)
    initial = tuple(x for x in workload.initial if x not in tids)
    return Workload(tensors=tensors, ops=ops, initial=initial, meta=dict(workload.meta))


ARENA_HELD = ("step", "window")


def arena_workload(workload: Workload, *, buffer_tids: frozenset[int], arena_bytes: int,
                   held: str = "step") -> Workload:
    """``workload`` with the tensors ``buffer_tids`` replaced by one arena tensor of ``arena_bytes``.

    ``held``: "step": allocated before the step and never freed (one allocation for the whole
    run, what ``validate.arena.Arena`` does); "window": allocated by the op that allocates the
    first buffer and freed with the last one (one allocation per step).
    """
    if held not in ARENA_HELD:
        raise ValueError(f"held: expected one of {ARENA_HELD}, got {held!r}")
    if arena_bytes < 0:
        raise ValueError(f"arena_bytes: must be >= 0, got {arena_bytes}")
    others = without_tensors(workload, buffer_tids)
    if arena_bytes == 0:
        return others
    tid = max((t.tid for t in workload.tensors), default=-1) + 1
    arena = TensorSpec(tid, "plan_arena", arena_bytes, Role.WORKSPACE)
    tensors = (*others.tensors, arena)
    if held == "step":
        return replace(others, tensors=tensors, initial=(*others.initial, tid))
    first = min((k for k, op in enumerate(workload.ops) if buffer_tids & set(op.allocs)), default=None)
    if first is None:
        raise ValueError("held='window': none of buffer_tids is allocated by an op")
    freed = [k for k, op in enumerate(workload.ops) if buffer_tids & set(op.frees)]
    live_at_end = len(freed) < len({t for op in workload.ops for t in op.allocs if t in buffer_tids})
    last = None if live_at_end or not freed else max(freed)
    ops = list(others.ops)
    ops[first] = replace(ops[first], allocs=(*ops[first].allocs, tid))
    if last is not None:
        ops[last] = replace(ops[last], frees=(*ops[last].frees, tid))
    return replace(others, tensors=tensors, ops=tuple(ops))


def arena_peak_bytes(workload: Workload, *, buffer_tids: frozenset[int], arena_bytes: int,
                     held: str = "step") -> int:
    """Peak HBM when the tensors ``buffer_tids`` live in one arena of ``arena_bytes``.

    held "step": max over time of the live bytes of every other tensor + the arena; "window":
    the arena counts only from the first buffer's allocation to the last buffer's free.
    """
    return walk_memory(arena_workload(workload, buffer_tids=buffer_tids, arena_bytes=arena_bytes,
                                      held=held)).peak_bytes


class ArenaComparison(BaseModel):
    """A plan's buffers allocated one by one vs in one planned arena: peaks and reserved memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_plan_buffers: int = Field(ge=0, description="restore (prefetched) and recomputed buffers of the plan")
    plan_buffer_bytes: int = Field(ge=0, description="sum of the plan buffers' sizes (512 B rounded)")
    arena_lower_bound_bytes: int = Field(ge=0, description="max of the plan buffers' live bytes over time")
    arena_bytes: int = Field(ge=0, description="the arena: planned peak of the plan buffers' layout")
    other_peak_bytes: int = Field(ge=0, description="max over time of the live bytes of every other tensor")
    ordinary_peak_bytes: int = Field(ge=0, description="max over time of the live bytes of every tensor")
    arena_peak_bytes: int = Field(ge=0, description="other_peak_bytes + arena_bytes: the arena held all step")
    window_arena_peak_bytes: int = Field(
        ge=0, description="peak with the arena allocated from the first plan buffer to the last one, each step")
    ordinary_reserved_bytes: int = Field(ge=0, description="caching allocator reserved, every tensor on its own")
    arena_reserved_bytes: int = Field(ge=0, description="caching allocator reserved, arena held all step")
    window_arena_reserved_bytes: int = Field(ge=0, description="caching allocator reserved, arena per step")


def compare_arena(step: PlanStep, *, arena_bytes: int, expandable_segments: bool = False) -> ArenaComparison:
    """Peaks and predicted reserved memory of ``step`` with and without an arena of ``arena_bytes``.

    Reserved memory is the steady state of two steps, as ``tierplan layout`` predicts it.
    """
    from simulator.allocator import predict_workload_reserved

    wl = step.workload
    tids = plan_buffer_tids(wl)
    bufs = plan_buffers_instance(step).buffers
    lb = lower_bound_bytes(bufs)
    if arena_bytes < lb:
        raise ValueError(f"arena_bytes: {arena_bytes} is below the plan buffers' live bytes {lb}")

    def reserved(w: Workload) -> int:
        return predict_workload_reserved(w, num_steps=2, preallocated_bytes=(),
                                         expandable_segments=expandable_segments).peak_reserved_bytes

    step_wl = arena_workload(wl, buffer_tids=tids, arena_bytes=arena_bytes, held="step")
    window_wl = (arena_workload(wl, buffer_tids=tids, arena_bytes=arena_bytes, held="window")
                 if tids else step_wl)
    step_peak = walk_memory(step_wl).peak_bytes
    return ArenaComparison(
        num_plan_buffers=len(bufs),
        plan_buffer_bytes=sum(b.size_bytes for b in bufs),
        arena_lower_bound_bytes=lb,
        arena_bytes=arena_bytes,
        other_peak_bytes=step_peak - arena_bytes,
        ordinary_peak_bytes=walk_memory(wl).peak_bytes,
        arena_peak_bytes=step_peak,
        window_arena_peak_bytes=walk_memory(window_wl).peak_bytes,
        ordinary_reserved_bytes=reserved(wl),
        arena_reserved_bytes=reserved(step_wl),
        window_arena_reserved_bytes=reserved(window_wl),
    )


def predict_arena(step: PlanStep, *, time_limit_s: float = 10.0, use_mip: bool = True) -> ArenaComparison:
    """The plan's buffers laid out by the layout planner, and the step's peaks and reserved memory
    with them in one arena of that size held all step (what an executor with an arena runs)."""
    from planners.layout.plan import plan_layout

    inst = plan_buffers_instance(step)
    arena_bytes = plan_layout(inst, time_limit_s=time_limit_s, use_mip=use_mip).peak_bytes if inst.buffers else 0
    return compare_arena(step, arena_bytes=arena_bytes)


__all__ = [
    "PLAN_BUFFER_SUFFIXES", "ArenaComparison", "PlanStep", "arena_peak_bytes", "arena_workload",
    "compare_arena", "load_plan_step", "plan_buffer_tids", "plan_buffers_instance", "plan_step",
    "predict_arena", "step_instance", "without_tensors",
]
