"""A branch-and-bound node limit is a work limit: its incumbent is the same whatever the machine's
load, it is classified (a feasible stop, with its gap) rather than raising (PuLP 3.3 has no status
for HiGHS's node-limit stop), and the whole-step search's activation solves are bounded by it."""

import random

import pytest

from planners.solvers import FEASIBLE, available_solvers, solve


def _knapsack(seed: int = 3, n: int = 40, m: int = 5):
    """A multi-dimensional knapsack that one node does not solve (HiGHS takes over a minute to
    prove it)."""
    import pulp

    rng = random.Random(seed)
    prob = pulp.LpProblem("mkp", pulp.LpMaximize)
    x = [pulp.LpVariable(f"x{i}", cat="Binary") for i in range(n)]
    w = [[rng.randint(1, 1000) for _ in range(n)] for _ in range(m)]
    v = [sum(w[k][i] for k in range(m)) // m + rng.randint(0, 50) for i in range(n)]
    prob += pulp.lpSum(vi * xi for vi, xi in zip(v, x, strict=True))
    for k in range(m):
        prob += pulp.lpSum(w[k][i] * x[i] for i in range(n)) <= sum(w[k]) // 2, f"capacity_{k}"
    return prob, x


@pytest.mark.parametrize("solver", available_solvers())
def test_a_node_limit_stops_with_a_classified_incumbent_and_the_same_one_each_time(solver):
    picks = []
    for _ in range(2):
        prob, x = _knapsack()
        res = solve(prob, time_limit_s=60, solver=solver, max_nodes=1)
        assert res.status == FEASIBLE and res.has_solution  # stopped by the node limit
        assert res.solve_time_s < 30
        assert res.gap is None or res.gap >= 0
        picks.append(tuple(round(xi.value()) for xi in x))
    assert picks[0] == picks[1]


def test_the_whole_step_search_bounds_its_activation_solves_by_nodes(monkeypatch):
    import planners.swap.mip as mip_mod
    import planners.swap.whole as whole
    from hwmodels.catalog import load_node
    from hwmodels.units import GiB
    from planners.swap import PlanContext
    from simulator.job import TrainJob
    from simulator.model import get_model

    seen = []
    real = mip_mod.plan_mip

    def spy(ctx, **kw):
        seen.append(kw.get("max_nodes"))
        return real(ctx, **kw)

    monkeypatch.setattr(mip_mod, "plan_mip", spy)
    ctx = PlanContext(model=get_model("llama-3.1-8b").with_layers(4), node=load_node("1xH200-box"),
                      job=TrainJob(seq_len=32768, optimizer="adamw", allocator="expandable"),
                      gpu_budget_bytes=40 * GiB, host_budget_bytes=100 * GiB, allocator="expandable")
    res = whole.plan_whole_step(ctx, time_limit_s=30)
    assert res.feasible
    assert seen and set(seen) == {whole.MIP_MAX_NODES}
