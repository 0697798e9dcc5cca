"""Every strategy for one training step, replayed; the fastest feasible one is the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass

from hwmodels.units import GiB, UserInputError
from planners.swap.context import PlanContext
from planners.swap.evaluate import ALLOCATORS, StrategyResult, evaluate
from planners.swap.mip import plan_mip_variants
from planners.swap.whole import plan_whole_step
from simulator.workload import Role

STRATEGIES = ("none", "full_recompute", "selective", "offload_all", "memo", "mip", "whole_step")
"""The activation strategies (baselines and the MIP, model states resident), then the whole-step
search (`planners.swap.whole`: chunked head and MLP, model states off HBM, segment checkpoints)."""
WHOLE_STEP_SHARE_FRAC = 0.6
"""When the whole-step search applies, the activation MIP must be done by 1 - this share of the
time limit; the search gets the rest (and whatever the MIP leaves), never less than this share
of the limit, counted in the process's CPU time (`planners.swap.whole.plan_whole_step`)."""
BASELINE_SHARE_FRAC = 0.25
"""Once the baselines have taken this share of the time limit, the rest are evaluated
``short_of_time`` (see `evaluate`): a baseline whose host peak is proven over the host budget is
not replayed (its row gives the bound; on 70B at TP 8 the copying baselines' replays take
seconds each), and one over the GPU budget gets no caching-allocator replay."""


@dataclass(frozen=True)
class PlanReport:
    strategies: tuple[StrategyResult, ...]
    best: str | None  # name of the fastest feasible strategy
    binding: str  # why nothing fits, when nothing does
    timed_out: bool = False  # nothing found: the MIP's time limit stopped it before any incumbent

    def result(self, name: str) -> StrategyResult:
        return next(r for r in self.strategies if r.name == name)

    def to_dict(self) -> dict:
        """The rows, the best, and the MIP row's solver status and gap (None without a plan)."""
        mip = next((r for r in self.strategies if r.name == "mip"), None)
        prov = mip.plan.provenance if mip is not None and mip.plan is not None else None
        return {"strategies": [r.row() for r in self.strategies], "best": self.best,
                "mip": {"status": prov.status if prov else None, "gap": prov.gap if prov else None}}


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


def whole_step_applies(ctx: PlanContext) -> str:
    """Why the whole-step search does not run for ``ctx`` ("" when it does): it runs for a
    Hugging Face (Llama-family) job on one GPU with an LM head or an optimizer step (model
    states to place). A bare layer stack trained without an optimizer (the bench's probe jobs)
    plans its activations only, and its plans stay what they were."""
    from simulator.templates import code_base

    par = ctx.job.parallelism
    if (par.tp, par.cp, par.dp) != (1, 1, 1):
        return "not searched: the whole-step choices are planned for one GPU"
    if code_base(ctx.model) == "megatron":
        return "not searched: the whole-step choices are modelled for Llama-family models"
    if not ctx.model.has_lm_head and ctx.job.optimizer == "none":
        return "not searched: a bare layer stack without an optimizer (no head, no optimizer states)"
    return ""


def plan_training(model, job, node, *, gpu_budget_bytes: int | None = None,
                  host_budget_bytes: int | None = None, time_limit_s: float = 10.0,
                  solver: str = "highs", lookahead: int = 1, allocator: str = "planned") -> PlanReport:
    """Every strategy for one training step, replayed; the fastest feasible one is ``best``.
    ``allocator``: "planned", "caching" or "expandable" (see PlanContext.allocator). The baselines
    are replayed first, then the MIP gets what is left of ``time_limit_s`` (its own variant never
    less than ``FIRST_VARIANT_MIN_FRAC`` of it, see `plan_mip_variants`)."""
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
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s  # the baselines and the MIP share it (see plan_mip_variants)
    static = static_bytes_check(ctx)
    results: list[StrategyResult] = []
    not_whole = whole_step_applies(ctx)
    whole = not not_whole
    for name in STRATEGIES[:-2]:
        layers, why_not = baselines.BASELINES[name](ctx)
        if layers is None:
            results.append(StrategyResult(name=name, feasible=False, step_time_s=None, mfu=None,
                                          peak_hbm_bytes=None, peak_host_bytes=None, reason=why_not))
            continue
        short = time.perf_counter() - t0 > BASELINE_SHARE_FRAC * time_limit_s
        results.append(evaluate(ctx, name, layers, short_of_time=short))
    if static:
        results.append(StrategyResult(name="mip", feasible=False, step_time_s=None, mfu=None,
                                      peak_hbm_bytes=None, peak_host_bytes=None, reason=static))
    else:
        mip_deadline = deadline - (WHOLE_STEP_SHARE_FRAC * time_limit_s if whole else 0.0)
        results.append(plan_mip_variants(ctx, time_limit_s=time_limit_s, solver=solver,
                                         fallbacks=results, deadline_s=mip_deadline))
    mip = results[-1]
    if whole:
        # never less than its share of the limit, whatever the others took (counted in CPU time)
        until = max(deadline, time.perf_counter() + WHOLE_STEP_SHARE_FRAC * time_limit_s)
        results.append(plan_whole_step(ctx, time_limit_s=time_limit_s, solver=solver, deadline_s=until))
    else:
        results.append(StrategyResult(name="whole_step", feasible=False, step_time_s=None, mfu=None,
                                      peak_hbm_bytes=None, peak_host_bytes=None, reason=not_whole))
    feasible = [r for r in results if r.feasible]
    # the best is the fastest plan the training executor runs; one it does not run yet (model
    # states off HBM, segment checkpoints, ...: `Plan.unexecuted`) only when nothing else fits
    runnable = [r for r in feasible if r.plan is None or not r.plan.unexecuted()]
    pool = runnable or feasible
    best = min(pool, key=lambda r: (r.step_time_s, STRATEGIES.index(r.name))).name if pool else None
    binding = ""
    if best is None:
        binding = static or mip.reason
        if whole:
            binding += f"; whole step: {results[-1].reason}"
    timed_out = best is None and mip.timed_out
    return PlanReport(strategies=tuple(results), best=best, binding=binding, timed_out=timed_out)
