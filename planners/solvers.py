"""The one module that knows MIP solvers: build with PuLP, solve with HiGHS (or CBC), check status.

Models: nothing; it adapts. A planner builds a ``pulp.LpProblem`` (named constraints, scaled
coefficients) and calls ``solve(prob, time_limit_s=...)``; it gets back a ``SolveResult``
with a status it must check, the incumbent objective, the solver's proven bound, the relative
gap and the wall time. Variable values are read from the problem's variables as usual
(``var.value()``), only when ``result.has_solution``.
Assumes: PuLP 3.3.x; HiGHS through ``highspy`` (``pulp.HiGHS``) is the default, the bundled CBC
(``pulp.PULP_CBC_CMD``) the fallback when highspy is missing or on request. One thread by default,
so results do not depend on the machine's core count.
Ignores: solver callbacks, multiple objectives, LP duals.
Source: PuLP 3.3 ``pulp/apis/highs_api.py`` (HiGHS reports time-limit stops as LpStatusOptimal
with sol_status IntegerFeasible: the model status is read from highspy instead), HiGHS 1.x info
fields ``mip_dual_bound`` / ``mip_gap``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

OPTIMAL = "optimal"  # proven optimal (within the solver's default gap tolerance)
FEASIBLE = "feasible"  # a solution, not proven optimal (time limit, node limit, interrupt)
INFEASIBLE = "infeasible"
UNBOUNDED = "unbounded"
NO_SOLUTION = "no_solution"  # stopped (time limit) before finding any solution

SOLVERS = ("highs", "cbc")


@dataclass(frozen=True, slots=True)
class SolveResult:
    """What a solver returned, in solver-independent terms."""

    status: str  # one of OPTIMAL, FEASIBLE, INFEASIBLE, UNBOUNDED, NO_SOLUTION
    solver: str  # "highs" | "cbc"
    objective: float | None  # incumbent objective (None without a solution)
    best_bound: float | None  # proven bound on the optimum (minimization: a lower bound)
    gap: float | None  # (objective - bound) / |objective|; 0 when optimal; None if unknown
    solve_time_s: float
    time_limit_s: float | None

    @property
    def has_solution(self) -> bool:
        return self.status in (OPTIMAL, FEASIBLE)


def pulp_available() -> bool:
    """Whether PuLP can be imported here (a GPU machine may lack it: heuristics only)."""
    import importlib.util

    try:
        return importlib.util.find_spec("pulp") is not None
    except ValueError:  # sys.modules["pulp"] is None: imports of it are blocked
        return False


def available_solvers() -> tuple[str, ...]:
    import pulp

    names = set(pulp.listSolvers(onlyAvailable=True))
    out = []
    if "HiGHS" in names:
        out.append("highs")
    if "PULP_CBC_CMD" in names:
        out.append("cbc")
    return tuple(out)


def relative_gap(objective: float | None, bound: float | None) -> float | None:
    """(objective - bound) / |objective| for a minimization; None when either is unknown."""
    if objective is None or bound is None or not math.isfinite(bound):
        return None
    if objective == 0:
        return 0.0 if bound >= 0 else None
    return max(0.0, (objective - bound) / abs(objective))


def _highs_class():
    import pulp

    class _WarmHiGHS(pulp.HiGHS):
        """pulp.HiGHS that hands the variables' current values to highspy as a start."""

        warm_start = False

        def callSolver(self, lp):  # noqa: N802 (PuLP's name)
            if self.warm_start:
                import highspy

                sol = highspy.HighsSolution()
                values = [0.0] * lp.solverModel.getNumCol()
                for var in lp.variables():
                    if var.varValue is not None:
                        values[var.index] = float(var.varValue)
                sol.col_value = values
                lp.solverModel.setSolution(sol)
            super().callSolver(lp)

        def findSolutionValues(self, lp):  # noqa: N802 (PuLP's name)
            """PuLP 3.3 has no status for a node limit's stop (kSolutionLimit): it raises
            KeyError after reading the values in. Such a stop is read as a time limit's is
            (`_highs_result` classifies it from highspy)."""
            from pulp import constants

            try:
                return super().findSolutionValues(lp)
            except KeyError:
                if lp.solverModel.getInfo().primal_solution_status == 2:  # kSolutionStatusFeasible
                    return constants.LpStatusOptimal, constants.LpSolutionIntegerFeasible
                return constants.LpStatusNotSolved, constants.LpSolutionNoSolutionFound

    return _WarmHiGHS


@contextlib.contextmanager
def _quiet_stdout(enabled: bool) -> Iterator[None]:
    """Silence file descriptor 1 (HiGHS prints its banner from C++ even with output off)."""
    if not enabled:
        yield
        return
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve(
    prob: Any,
    *,
    time_limit_s: float | None = None,
    solver: str = "highs",
    threads: int = 1,
    mip_rel_gap: float | None = None,
    max_nodes: int | None = None,
    warm_start: bool = False,
    msg: bool = False,
    lp_path: str | None = None,
) -> SolveResult:
    """Solve ``prob`` (a minimization or maximization ``pulp.LpProblem``) and classify the outcome.

    ``max_nodes`` stops the branch and bound after that many nodes: a work limit, so the incumbent
    it returns does not depend on the machine's speed or load (a time limit's does).
    ``warm_start`` passes the variables' current values (set with ``var.setInitialValue``) as a
    starting solution. ``lp_path`` writes the model in LP format first (for debugging and for
    other solvers). Falls back to CBC when HiGHS is not installed.
    """
    import pulp

    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    if lp_path:
        prob.writeLP(lp_path)
    if solver == "highs" and "highs" not in available_solvers():
        solver = "cbc"
    t0 = time.perf_counter()
    if solver == "highs":
        cls = _highs_class()
        params = {} if max_nodes is None else {"mip_max_nodes": int(max_nodes)}
        s = cls(msg=msg, timeLimit=time_limit_s, threads=threads, gapRel=mip_rel_gap, **params)
        s.warm_start = warm_start
        with _quiet_stdout(not msg):
            prob.solve(s)
        elapsed = time.perf_counter() - t0
        return _highs_result(prob, elapsed, time_limit_s)
    options = [] if max_nodes is None else [f"maxNodes {int(max_nodes)}"]
    s = pulp.PULP_CBC_CMD(msg=msg, timeLimit=time_limit_s, threads=threads, gapRel=mip_rel_gap,
                          warmStart=warm_start, options=options)
    with _quiet_stdout(not msg):
        prob.solve(s)
    elapsed = time.perf_counter() - t0
    return _cbc_result(prob, elapsed, time_limit_s)


def _objective(prob) -> float | None:
    value = prob.objective.value() if prob.objective is not None else None
    return None if value is None else float(value)


def _highs_result(prob, elapsed_s: float, time_limit_s: float | None) -> SolveResult:
    import highspy

    h = prob.solverModel
    model_status = h.getModelStatus()
    info = h.getInfo()
    has_primal = info.primal_solution_status == 2  # kSolutionStatusFeasible
    status_map = {
        highspy.HighsModelStatus.kOptimal: OPTIMAL,
        highspy.HighsModelStatus.kInfeasible: INFEASIBLE,
        highspy.HighsModelStatus.kUnboundedOrInfeasible: INFEASIBLE,
        highspy.HighsModelStatus.kUnbounded: UNBOUNDED,
    }
    status = status_map.get(model_status)
    if status is None:
        status = FEASIBLE if has_primal else NO_SOLUTION
    elif status == OPTIMAL and not has_primal:
        status = NO_SOLUTION
    objective = _objective(prob) if status in (OPTIMAL, FEASIBLE) else None
    sense = prob.sense  # 1 minimize, -1 maximize
    bound = float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else None
    if status == OPTIMAL and bound is None:
        bound = objective  # an LP: optimal objective is its own bound
    if bound is not None and objective is not None:
        gap = relative_gap(objective, bound) if sense == 1 else relative_gap(-objective, -bound)
    else:
        gap = None
    if status == OPTIMAL and gap is None:
        gap = 0.0
    return SolveResult(status=status, solver="highs", objective=objective, best_bound=bound,
                       gap=gap, solve_time_s=elapsed_s, time_limit_s=time_limit_s)


def _cbc_result(prob, elapsed_s: float, time_limit_s: float | None) -> SolveResult:
    import pulp

    if prob.status == pulp.LpStatusInfeasible:
        status = INFEASIBLE
    elif prob.status == pulp.LpStatusUnbounded:
        status = UNBOUNDED
    elif prob.sol_status == pulp.LpSolutionOptimal:
        status = OPTIMAL
    elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
        status = FEASIBLE
    else:
        status = NO_SOLUTION
    objective = _objective(prob) if status in (OPTIMAL, FEASIBLE) else None
    # CBC through the command line does not report its bound: only optimality closes the gap
    bound = objective if status == OPTIMAL else None
    gap = 0.0 if status == OPTIMAL else None
    return SolveResult(status=status, solver="cbc", objective=objective, best_bound=bound,
                       gap=gap, solve_time_s=elapsed_s, time_limit_s=time_limit_s)
