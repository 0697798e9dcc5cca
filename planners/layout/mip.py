"""Exact dynamic-storage-allocation MIP: offsets of buffers, one binary per overlapping pair.

Models: minimize the arena peak P subject to, for every buffer i, o_i + s_i <= P and, for every
pair (i, j) whose lifetimes intersect, either i lies below j or j below i (binary z_ij, big-M
= an upper bound on the peak, the greedy layout's). P >= the live-bytes lower bound.
The solver's offsets are not used as they are: the binaries define a "below" relation and the
exact integer offsets are recomputed from it as longest paths (o_j = max over i below j of
o_i + s_i), so float round-off in the solver never produces an overlap.
Assumes: small instances (the number of overlapping pairs bounds the model size: a few
thousand binaries is what HiGHS closes in seconds to minutes).
Ignores: symmetry breaking beyond the warm start.
Source: the classic DSA / strip-packing disjunctive model (e.g. Sekiyama et al. 2018, MEMO
Zhao et al. 2024 section 4.3, which solves it with Gurobi).
"""

from __future__ import annotations

from dataclasses import dataclass

from planners.layout.instance import LayoutInstance, lower_bound_bytes, overlapping_pairs


@dataclass(frozen=True, slots=True)
class MipLayout:
    offsets: dict[str, int] | None  # None when the solver found no solution
    peak_bytes: int | None
    status: str  # planners.solvers status
    best_bound_bytes: int | None  # solver's proven lower bound, in bytes (rounded up)
    solve_time_s: float
    num_binaries: int


def solve_layout_mip(
    instance: LayoutInstance,
    *,
    warm_offsets: dict[str, int],
    time_limit_s: float,
    solver: str = "highs",
    lp_path: str | None = None,
) -> MipLayout:
    """Solve the pairwise MIP from a valid warm start (whose peak is the big-M)."""
    import pulp

    from planners.solvers import solve

    bufs = instance.buffers
    n = len(bufs)
    pairs = overlapping_pairs(bufs)
    size = [b.size_bytes for b in bufs]
    warm_peak = max(warm_offsets[b.bid] + b.size_bytes for b in bufs)
    lb = lower_bound_bytes(bufs)
    # scaled coefficients: the arena is 1.0 wide at the warm start's peak
    scale = float(warm_peak)
    s = [x / scale for x in size]
    prob = pulp.LpProblem("dsa_offsets", pulp.LpMinimize)
    peak = prob.add_variable("peak", lowBound=lb / scale, upBound=1.0)
    off = [prob.add_variable(f"o_{i}", lowBound=0.0, upBound=max(0.0, 1.0 - s[i])) for i in range(n)]
    prob += peak
    for i in range(n):
        prob += off[i] + s[i] <= peak, f"peak_above_buffer_{i}"
    z = {}
    for i, j in pairs:
        v = prob.add_variable(f"z_{i}_{j}", cat=pulp.LpBinary)  # 1: i below j
        z[i, j] = v
        prob += off[i] + s[i] <= off[j] + (1 - v), f"below_{i}_{j}"
        prob += off[j] + s[j] <= off[i] + v, f"below_{j}_{i}"
    # warm start: the greedy layout
    peak.setInitialValue(warm_peak / scale)
    for i, b in enumerate(bufs):
        off[i].setInitialValue(warm_offsets[b.bid] / scale)
    for (i, j), v in z.items():
        v.setInitialValue(1 if warm_offsets[bufs[i].bid] < warm_offsets[bufs[j].bid] else 0)
    res = solve(prob, time_limit_s=time_limit_s, solver=solver, warm_start=True, lp_path=lp_path)
    bound = None
    if res.best_bound is not None:
        # undo the scale; the bound is a bound on bytes, and bytes are integers
        bound = int(-(-(res.best_bound * scale - 1e-6 * scale) // 1))
        bound = max(bound, lb)
    if not res.has_solution:
        return MipLayout(None, None, res.status, bound, res.solve_time_s, len(z))
    below = {k: (v.value() or 0.0) > 0.5 for k, v in z.items()}
    offsets = offsets_from_order(instance, below, [v.value() or 0.0 for v in off])
    peak_bytes = max(offsets[b.bid] + b.size_bytes for b in bufs)
    return MipLayout(offsets, peak_bytes, res.status, bound, res.solve_time_s, len(z))


def offsets_from_order(instance: LayoutInstance, below: dict[tuple[int, int], bool],
                       approx: list[float]) -> dict[str, int]:
    """Exact offsets from a "below" relation: longest path, in order of the solver's offsets."""
    bufs = instance.buffers
    n = len(bufs)
    preds: list[list[int]] = [[] for _ in range(n)]
    for (i, j), i_below in below.items():
        if i_below:
            preds[j].append(i)
        else:
            preds[i].append(j)
    order = sorted(range(n), key=lambda i: (approx[i], i))
    off = [0] * n
    done = [False] * n
    # the solver's offsets order the DAG up to round-off; resolve any inversion by recursion
    def place(i: int, stack: set[int]) -> int:
        if done[i]:
            return off[i]
        if i in stack:
            raise ValueError("the MIP's order relation has a cycle")
        stack.add(i)
        best = 0
        for p in preds[i]:
            best = max(best, place(p, stack) + bufs[p].size_bytes)
        stack.discard(i)
        off[i], done[i] = best, True
        return best

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * n + 100))
    try:
        for i in order:
            place(i, set())
    finally:
        sys.setrecursionlimit(limit)
    return {b.bid: off[i] for i, b in enumerate(bufs)}
