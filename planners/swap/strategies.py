"""Every strategy for one training step, replayed; the fastest feasible one is the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass

from hwmodels.units import GiB, UserInputError
from planners.swap.context import PlanContext
from planners.swap.evaluate import ALLOCATORS, StrategyResult, evaluate
from planners.swap.mip import plan_mip_variants
from simulator.workload import Role

STRATEGIES = ("none", "full_recompute", "selective", "offload_all", "memo", "mip")
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
    for name in STRATEGIES[:-1]:
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
        results.append(plan_mip_variants(ctx, time_limit_s=time_limit_s, solver=solver,
                                         fallbacks=results, deadline_s=deadline))
    feasible = [r for r in results if r.feasible]
    best = min(feasible, key=lambda r: (r.step_time_s, STRATEGIES.index(r.name))).name if feasible else None
    binding = ""
    if best is None:
        binding = static or next((r.reason for r in results if r.name == "mip"), "")
    timed_out = best is None and results[-1].timed_out
    return PlanReport(strategies=tuple(results), best=best, binding=binding, timed_out=timed_out)
