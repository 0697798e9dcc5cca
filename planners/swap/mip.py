"""tierplan's swap / recompute MIP over the profile of the un-checkpointed step.

Models: per layer binaries (full checkpoint, offload input, offload attention output) and token
fractions of the other skeletal bytes (keep / offload / recompute); HBM capacity at every segment
of the schedule between two release/restore points, host capacity shared by the node's GPUs, the
D2H and H2D queues of the replay as linear max-plus constraints; objective: the step's end time.
Assumes: the replay's copy model (see `planners.swap`). Ignores: what the replay adds (it is
replayed before it is reported). Source: checkmate (Jain et al. 2020); MEMO section 4.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hwmodels.units import GiB, format_bytes
from planners.plan import KEEP, LayerPlan, RoleAction
from planners.solvers import NO_SOLUTION, relative_gap
from planners.swap.apply import PREFETCH_POINTS
from planners.swap.context import PlanContext
from planners.swap.evaluate import StrategyResult, evaluate, relabel
from planners.swap.profile import LayerProfile
from simulator.movement import step_movements
from simulator.workload import ATTN_ROLES, OpSpec, Phase

EPS_FRAC = 1e-6
MAX_REPAIRS = 6
FRAGMENTATION_STEP_FRAC = 0.02
"""A plan whose caching-allocator replay does not fit the budget is solved again against a
budget 2%, then 4%, 8%, ... lower."""
REFINE_SOLVES = 4
REFINE_MIN_FRAC = 0.005
"""After a backed-off budget fits, up to ``REFINE_SOLVES`` more solves bisect between it and the
last budget that did not (down to ``REFINE_MIN_FRAC`` of the budget): the doubling steps
overshoot, and a plan on a budget up to 8% larger can be markedly faster."""
TIE_BREAK_FRAC = 1e-7
MIN_SOLVE_S = 0.05
"""A solve, or a variant, is started only with at least this much of the time limit left
(the first solve of a request always runs)."""
FIRST_VARIANT_FRAC = 0.6
FIRST_VARIANT_MIN_FRAC = 0.6
"""The job's own MIP variant gets this share of the time the baselines left, and at least this
share of the time limit (see ``plan_mip_variants``)."""
BUDGET_MARGIN_FRAC = 1e-3
"""The MIP plans against budgets 0.1% below the user's: fractions are rounded to 6 decimals
and token slices to whole bytes after solving, which must not tip a plan over a budget."""


@dataclass(frozen=True)
class MipSolution:
    layers: tuple[LayerPlan, ...]
    objective_s: float | None  # the MIP's own step time (for the replay-agreement check)
    status: str
    solver: str | None
    gap: float | None
    solve_time_s: float
    binding: str  # the constraint that makes the request infeasible, when it is
    best_bound_s: float | None = None  # the solver's proven lower bound on the objective
    build_time_s: float = 0.0  # of solve_time_s, building the problem

    @property
    def timed_out(self) -> bool:
        """Stopped by its time limit before any incumbent."""
        return self.status == NO_SOLUTION


def solve_mip(ctx: PlanContext, *, budget_bytes: int | None = None, host_budget_bytes: int | None = None,
              time_limit_s: float = 10.0, solver: str = "highs", lp_path: str | None = None,
              max_nodes: int | None = None) -> MipSolution:
    """tierplan's MIP over the profile of the un-checkpointed step (see the module docstring):
    each constraint family is added by one method of `_SwapMip`, in this order."""
    from planners.solvers import solve

    t0 = time.perf_counter()
    mip = _SwapMip(ctx, budget_bytes=budget_bytes, host_budget_bytes=host_budget_bytes)
    mip.add_fractions()
    mip.add_hbm_capacity()
    mip.add_host_capacity()
    mip.add_forward_d2h_queue()
    mip.add_backward_h2d_queue()
    mip.set_objective()
    # building the problem counts against the limit
    build_s = time.perf_counter() - t0
    limit = max(MIN_SOLVE_S, time_limit_s - build_s)
    result = solve(mip.prob, time_limit_s=limit, solver=solver, lp_path=lp_path, max_nodes=max_nodes)
    elapsed = time.perf_counter() - t0
    if not result.has_solution:
        return MipSolution(layers=(), objective_s=None, status=result.status, solver=result.solver,
                           gap=result.gap, solve_time_s=elapsed,
                           binding=mip.binding(result.status) or result.status, best_bound_s=result.best_bound,
                           build_time_s=build_s)
    return MipSolution(layers=mip.layers(), objective_s=float(mip.step.value()), status=result.status,
                       solver=result.solver, gap=result.gap, solve_time_s=elapsed, binding="",
                       best_bound_s=result.best_bound, build_time_s=build_s)


class _SwapMip:
    """The swap / recompute MIP under construction: its problem, the profiles it reads, its
    variables (GiB for bytes, seconds for times) and the per-layer expressions the constraint
    families share. Op points come from `simulator.movement` (the replay's own)."""

    def __init__(self, ctx: PlanContext, *, budget_bytes: int | None, host_budget_bytes: int | None) -> None:
        import pulp

        from simulator.estimator import RUNTIME_WORKSPACE_BYTES

        self.ctx = ctx
        self.prof = ctx.profile("none")
        self.full_prof = ctx.profile("full")
        self.L = self.prof.layers
        self.n = len(self.L)
        self.times = self.prof.op_times_s
        self.moves = step_movements(num_layers=self.n, lookahead=ctx.lookahead, prefetch_at=ctx.prefetch_at,
                                    workload=self.prof.workload)
        self.user_budget = ctx.gpu_budget_bytes if budget_bytes is None else budget_bytes
        self.budget = self.user_budget * (1 - BUDGET_MARGIN_FRAC) - RUNTIME_WORKSPACE_BYTES
        host_budget = ctx.host_budget_bytes if host_budget_bytes is None else host_budget_bytes
        # what the model states leave of it (their pinned pools and CPU-side states)
        host_budget -= ctx.states_host_bytes() if ctx.whole_step else 0
        self.host_budget = host_budget * (1 - BUDGET_MARGIN_FRAC)
        self.g = float(GiB)
        self.prob = pulp.LpProblem("swap_recompute", pulp.LpMinimize)
        var, n = self.prob.add_variable, self.n
        self.full = [var(f"full_{i}", cat="Binary") for i in range(n)]
        self.o_in = [var(f"offload_input_{i}", cat="Binary") for i in range(n)]
        self.o_inf = [var(f"offload_checkpoint_input_{i}", cat="Binary") for i in range(n)]
        # a layer that recomputes tokens holds its whole input (the executor's), when the layer
        # does not save it (hold_bytes > 0): hold >= rec; its offloaded share hold * o_in,
        # linearised (McCormick, exact for binaries)
        self.hold = [var(f"hold_input_{i}", cat="Binary") if lp.hold_bytes else None
                     for i, lp in enumerate(self.L)]
        self.held_off = [var(f"held_input_offloaded_{i}", 0, 1) for i in range(n)]
        self.o_at = [var(f"offload_attn_{i}", cat="Binary") for i in range(n)]
        self.keep = [var(f"keep_frac_{i}", 0, 1) for i in range(n)]
        self.off = [var(f"alpha_frac_{i}", 0, 1) for i in range(n)]
        self.rec = [var(f"recompute_frac_{i}", 0, 1) for i in range(n)]
        # The executor holds an offloading tensor whole until its D2H copy is done (the recomputed
        # rows leave with the offloaded ones, the kept rows have a copy meanwhile) and prefetches
        # it whole (the recomputed rows come back with the offloaded ones): u = "other" offloads,
        # rec_u = rec * u and keep_u = keep * u, linearised (McCormick, exact for a binary u).
        self.u = [var(f"other_offloads_{i}", cat="Binary") for i in range(n)]
        self.rec_u = [var(f"recompute_frac_offloading_{i}", 0, 1) for i in range(n)]
        self.keep_u = [var(f"keep_frac_offloading_{i}", 0, 1) for i in range(n)]
        # per layer, GiB: offloaded; recomputed; offloading tensors' recomputed / kept rows
        self.r_off: list[Any] = []
        self.r_rec: list[Any] = []
        self.r_rec_late: list[Any] = []
        self.r_kept: list[Any] = []
        self.t_rec: list[Any] = []  # per layer, seconds: its recompute before its backward
        self.binding_op: OpSpec | None = None  # the op where HBM cannot fit even with everything removed
        self.worst_left: int | None = None

    def add_fractions(self) -> None:
        """Per layer: the fractions sum to one and every product of a fraction with a binary is
        linked to it ("fractions_{i}" ... "keep_offloading_ge_both_{i}"), and the bytes and
        recompute time each layer's choice moves."""
        prob, g, copy_s = self.prob, self.g, self.ctx.copy_s_per_byte
        full, o_in, o_inf, held_off, o_at = self.full, self.o_in, self.o_inf, self.held_off, self.o_at
        keep, off, rec, u = self.keep, self.off, self.rec, self.u
        for i, lp in enumerate(self.L):
            fp = self.full_prof.layers[i]  # the same layer under a full checkpoint: keeps its input only
            prob += keep[i] + off[i] + rec[i] + full[i] == 1, f"fractions_{i}"
            prob += o_at[i] + full[i] <= 1, f"attn_offload_without_checkpoint_{i}"
            prob += o_in[i] + full[i] <= 1, f"input_offload_without_checkpoint_{i}"
            prob += o_inf[i] <= full[i], f"checkpoint_input_offload_{i}"
            # a token-wise recompute needs the layer's input; a layer that does not save it
            # (hold_bytes > 0) holds it whole (the executor's), or offloads it with the rest
            hold = self.hold[i]
            if hold is None:
                prob += held_off[i] == 0, f"no_held_input_{i}"
            else:
                prob += rec[i] <= hold, f"hold_input_when_recomputing_{i}"
                prob += held_off[i] <= hold, f"held_input_offload_le_hold_{i}"
                prob += held_off[i] <= o_in[i], f"held_input_offload_le_offload_{i}"
                prob += held_off[i] >= hold + o_in[i] - 1, f"held_input_offload_ge_both_{i}"
            if lp.input_bytes == 0 and lp.hold_bytes == 0:
                prob += o_in[i] == 0, f"no_input_to_offload_{i}"
            prob += off[i] <= u[i], f"other_offloads_{i}"
            for name, x, y in (("rec", self.rec_u, rec), ("keep", self.keep_u, keep)):
                prob += x[i] <= y[i], f"{name}_offloading_le_frac_{i}"
                prob += x[i] <= u[i], f"{name}_offloading_le_offloads_{i}"
                prob += x[i] >= y[i] + u[i] - 1, f"{name}_offloading_ge_both_{i}"
            self.r_rec_late.append(lp.other_bytes * self.rec_u[i] / g)
            self.r_kept.append(lp.other_bytes * self.keep_u[i] / g)
            self.r_off.append((lp.input_bytes * o_in[i] + lp.hold_bytes * held_off[i]
                               + fp.input_bytes * o_inf[i] + lp.attn_bytes * o_at[i]
                               + lp.other_bytes * off[i]) / g)
            self.r_rec.append(((lp.saved_bytes - fp.input_bytes) * full[i]
                               + lp.other_bytes * (rec[i] - self.rec_u[i])
                               - lp.hold_bytes * (0 if hold is None else hold)) / g)
            # token-wise recompute: the layer's per-token ops on the dropped rows, then those rows
            # copied into the full-size tensors (apply_plan's assembly)
            self.t_rec.append(fp.recompute_s * full[i] + (lp.other_fwd_s + copy_s * lp.other_bytes) * rec[i])

    def add_hbm_capacity(self) -> None:
        """HBM capacity at every segment between release / restore points of the schedule
        ("hbm_capacity_at_{op}", at the segment's most loaded op), where the bytes live there
        could exceed the budget."""
        import pulp

        L, prof, g = self.L, self.prof, self.g
        windows = []  # (open lo, open hi, expr removed in between, layer, kind)
        adds = []  # (closed lo, closed hi, expr added in between, layer)
        for i, lp in enumerate(L):
            rel, res = self.moves[i].release_restore_ops("d2h")
            windows.append((rel, res, self.r_off[i], i, "off"))
            windows.append((rel, res, self.r_rec_late[i], i, "rec_late"))
            windows.append((lp.last_fwd, lp.first_bwd, self.r_rec[i], i, "rec"))
            if lp.last_fwd + 1 <= rel:
                adds.append((lp.last_fwd + 1, rel, self.r_kept[i], i))
        points = sorted({0, len(self.times) - 1} | {w[0] for w in windows} | {w[1] for w in windows})
        segments = []
        for a, b in zip(points, points[1:], strict=False):
            segments.append((a, a))
            if b - a > 1:
                segments.append((a + 1, b - 1))
        segments.append((points[-1], points[-1]))
        live = prof.live_bytes
        for lo, hi in segments:
            peak = max(live[lo:hi + 1])
            removable = [w for w in windows if w[0] < lo and hi < w[1]]
            added = [a for a in adds if a[0] <= lo and hi <= a[1]]
            held = sum(L[w[3]].hold_bytes for w in removable if w[4] == "rec")
            if peak + held + sum(L[a[3]].other_bytes for a in added) <= self.budget:
                continue
            k = max(range(lo, hi + 1), key=lambda j: live[j])
            name = f"hbm_capacity_at_{prof.workload.ops[k].name}"
            self.prob += (peak / g - pulp.lpSum(w[2] for w in removable) + pulp.lpSum(a[2] for a in added)
                          <= self.budget / g), name
            # what is left when everything removable is removed (for the infeasibility message)
            max_removed = _max_removed_bytes(L, self.full_prof, [w[3] for w in removable if w[4] == "off"],
                                             [w[3] for w in removable if w[4] == "rec"])
            left = peak - max_removed
            if left > self.budget and (self.worst_left is None or left > self.worst_left):
                self.worst_left, self.binding_op = left, prof.workload.ops[k]

    def add_host_capacity(self) -> None:
        """Host memory shared by the node's GPUs ("host_capacity")."""
        import pulp

        self.prob += (pulp.lpSum(self.r_off) * self.ctx.rates.num_gpus_sharing_host
                      <= self.host_budget / self.g), "host_capacity"

    def add_forward_d2h_queue(self) -> None:
        """Time, forward: each layer's compute ("fwd_compute_{i}"), its D2H copy after it
        ("d2h_after_fwd_{i}") in FIFO order ("d2h_fifo_{i}"), done before its staging buffer is
        reused ("staging_buffer_reuse_{i}"), and the loss ("loss_compute"); seconds."""
        prob, var, L, times, n = self.prob, self.prob.add_variable, self.L, self.times, self.n
        b_d2h = self.ctx.rates.d2h_bytes_per_s / self.g  # GiB/s
        self.e = e = [var(f"fwd_end_{i}", 0) for i in range(n)]
        d = [var(f"d2h_done_{i}", 0) for i in range(n)]
        self.fwd_end = var("fwd_and_loss_end", 0)
        pre = sum(times[: L[0].first_fwd])
        for i, lp in enumerate(L):
            gap_before = pre if i == 0 else sum(times[L[i - 1].last_fwd + 1: lp.first_fwd])
            prev = e[i - 1] if i else 0
            prob += e[i] >= prev + gap_before + lp.fwd_s, f"fwd_compute_{i}"
            prob += d[i] >= e[i] + self.r_off[i] / b_d2h, f"d2h_after_fwd_{i}"
            if i:
                prob += d[i] >= d[i - 1] + self.r_off[i] / b_d2h, f"d2h_fifo_{i}"
            j = self.moves[i].release_after_layer
            prob += (e[j] if j is not None else self.fwd_end) >= d[i], f"staging_buffer_reuse_{i}"
        prob += self.fwd_end >= e[n - 1] + sum(times[L[-1].last_fwd + 1: self.prof.first_bwd_op]), "loss_compute"

    def add_backward_h2d_queue(self) -> None:
        """Time, backward: each prefetch after the backward point that issues it
        ("prefetch_after_stage_start_{i}") in FIFO order ("h2d_fifo_{i}"), each layer's
        recompute and backward ("bwd_compute_{i}") after its prefetch ("bwd_needs_prefetch_{i}"),
        and the step's end ("step_end"); seconds."""
        prob, var, L, times, n = self.prob, self.prob.add_variable, self.L, self.times, self.n
        b_h2d = self.ctx.rates.h2d_bytes_per_s / self.g  # GiB/s
        t_rec = self.t_rec
        h = [var(f"h2d_done_{i}", 0) for i in range(n)]
        s = [var(f"bwd_stage_start_{i}", 0) for i in range(n)]
        self.step = var("step_end", 0)
        head_bwd = sum(times[self.prof.first_bwd_op: L[-1].first_bwd])
        for i in range(n - 1, -1, -1):
            lp = L[i]
            mv = self.moves[i]
            j = mv.prefetch_layer
            start = s[j] if j is not None else self.fwd_end
            if j is not None and mv.prefetch_at == "attention":  # after layer j's recompute and MLP backward
                start = start + t_rec[j] + L[j].mlp_bwd_s
            prob += h[i] >= start + self.r_off[i] / b_h2d, f"prefetch_after_stage_start_{i}"
            if i + 1 < n:
                prob += h[i] >= h[i + 1] + self.r_off[i] / b_h2d, f"h2d_fifo_{i}"
                between = sum(times[L[i + 1].last_bwd + 1: lp.first_bwd])
                prob += s[i] >= s[i + 1] + t_rec[i + 1] + L[i + 1].bwd_s + between, f"bwd_compute_{i}"
            else:
                prob += s[i] >= self.fwd_end + head_bwd, f"bwd_compute_{i}"
            prob += s[i] >= h[i], f"bwd_needs_prefetch_{i}"
        tail = sum(times[L[0].last_bwd + 1:])
        prob += self.step >= s[0] + t_rec[0] + L[0].bwd_s + tail, "step_end"

    def set_objective(self) -> None:
        """The step's end time. Among plans of equal step time prefer less copy traffic and
        fewer checkpoints (a tie-break far below any step-time difference: TIE_BREAK_FRAC of
        the step per GiB or per layer)."""
        import pulp

        eps = TIE_BREAK_FRAC * sum(self.times)
        self.prob += self.step + eps * (pulp.lpSum(self.r_off) + pulp.lpSum(self.full))

    def binding(self, status: str) -> str:
        """Why no plan fits, when the problem has no solution: the op HBM cannot fit at even
        with everything removable removed, else the host budget."""
        from simulator.estimator import RUNTIME_WORKSPACE_BYTES

        op = self.binding_op
        if op is not None:
            assert self.worst_left is not None  # set together with binding_op
            what = ("weights + grads + optimizer states + the optimizer step's workspace"
                    if op.phase == Phase.OPTIM else "what is live")
            verb = "need" if op.phase == Phase.OPTIM else "needs"
            return (f"{what} at {op.name} {verb} {format_bytes(self.worst_left + RUNTIME_WORKSPACE_BYTES)}"
                    f" > {format_bytes(self.user_budget)} gpu budget even with every layer"
                    " recomputed and its input offloaded")
        if status == "infeasible":
            return "host_capacity: offloading needed to fit HBM exceeds the host budget"
        return ""

    def layers(self) -> tuple[LayerPlan, ...]:
        """The solution's per-layer decisions."""
        return tuple(_layer_from_solution(i, self.L[i], self.full[i].value(),
                                          max(self.o_in[i].value() or 0, self.o_inf[i].value() or 0),
                                          self.o_at[i].value(), self.keep[i].value(), self.off[i].value(),
                                          self.rec[i].value())
                     for i in range(self.n))


def _max_removed_bytes(L, full_prof, off_layers, rec_layers) -> int:
    """Most bytes the windows covering one moment could remove (every layer at its best mode)."""
    out = 0
    for i in set(off_layers) | set(rec_layers):
        saved, full_in = L[i].saved_bytes, full_prof.layers[i].input_bytes
        if i in off_layers and i in rec_layers:
            out += saved
        elif i in off_layers:
            out += max(saved, full_in)
        else:
            out += max(L[i].other_bytes, saved - full_in)
    return out


def _frac(x) -> float:
    v = round(min(1.0, max(0.0, float(x or 0.0))), 6)
    return 0.0 if v < EPS_FRAC else v


def _layer_from_solution(i, lp: LayerProfile, full, o_in, o_at, keep, off, rec) -> LayerPlan:
    inp = "offload" if round(o_in or 0) == 1 else "keep"
    if round(full or 0) == 1:
        return LayerPlan(layer=i, checkpoint="full", input=inp)
    keep, off = _frac(keep), _frac(off)
    if off > 0:
        other = RoleAction(action="offload", alpha_frac=off, keep_frac=min(keep, 1.0 - off))
    elif keep >= 1.0:
        other = KEEP
    else:
        other = RoleAction(action="recompute", keep_frac=keep)
    attn = RoleAction(action="offload", alpha_frac=1.0) if round(o_at or 0) == 1 else KEEP
    roles = {r: (attn if r in ATTN_ROLES else other) for r in lp.role_tids}
    roles = {r: a for r, a in sorted(roles.items()) if a != KEEP}
    return LayerPlan(layer=i, input=inp, roles=roles)


def _step_time_s(r: StrategyResult) -> float:
    """The replayed step time of a row evaluate() made (every feasible one has it)."""
    assert r.step_time_s is not None, f"{r.name}: no replay"
    return r.step_time_s


def plan_mip(ctx: PlanContext, *, time_limit_s: float = 10.0, solver: str = "highs",
             fallbacks: Sequence[StrategyResult] = (),
             deadline_s: float | None = None,
             max_nodes: int | None = None) -> tuple[StrategyResult, MipSolution | None]:
    """Solve, replay, and tighten the HBM budget by the replay's overshoot (allocated bytes) or
    by a growing step (the caching allocator's fragmentation) until the plan fits.

    Returns the best of the MIP's plan and the feasible ``fallbacks`` (a baseline is a point of
    the MIP's space the linear model may have misjudged), and the MIP's last solution.
    ``time_limit_s`` is the limit the plan records; ``deadline_s`` (``time.perf_counter()``
    time, default: ``time_limit_s`` from now) is when no further solve starts: building,
    solving and replaying count against it. Stopped without any incumbent, it returns the
    fastest valid fallback with status ``time_limit:fallback:<name>``, never "infeasible".
    ``max_nodes``: each solve's branch-and-bound node limit (`planners.solvers.solve`).
    """
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s if deadline_s is None else deadline_s
    budget, host_budget = ctx.gpu_budget_bytes, ctx.host_budget_bytes
    sol = None
    best: StrategyResult | None = None
    frag_repairs = 0
    frag_failed: int | None = None  # the last budget whose plan the caching allocator could not serve

    def attempt(budget_bytes: int) -> tuple[MipSolution, StrategyResult | None]:
        remaining = max(1e-3, deadline - time.perf_counter())
        s = solve_mip(ctx, budget_bytes=budget_bytes, host_budget_bytes=host_budget, time_limit_s=remaining,
                      solver=solver, max_nodes=max_nodes)
        if not s.layers:
            return s, None
        return s, evaluate(ctx, "mip", s.layers, solver=s.solver, status=s.status, gap=s.gap,
                           solve_time_s=time.perf_counter() - t0, time_limit_s=time_limit_s)

    cut_short = False  # the time limit stopped the repairs of a plan that does not fit
    for k in range(MAX_REPAIRS):
        if k and deadline - time.perf_counter() < MIN_SOLVE_S:
            cut_short = True
            break
        sol, res = attempt(budget)
        if res is None:
            break
        if res.feasible or best is None:
            best = res
        if res.feasible:
            break
        assert res.peak_hbm_bytes is not None and res.peak_host_bytes is not None  # evaluate() fills them
        over = res.peak_hbm_bytes - ctx.gpu_budget_bytes
        if over > 0:  # the linear model misjudged allocated bytes: take the overshoot off
            budget -= over + 64 * 2**20
        else:  # fragmentation, not linear in the budget: back off 2%, 4%, 8%, ... of it
            frag_failed = budget
            budget -= int(FRAGMENTATION_STEP_FRAC * ctx.gpu_budget_bytes * 2**frag_repairs)
            frag_repairs += 1
        host_budget -= max(0, res.peak_host_bytes - ctx.host_budget_bytes)
    if best is not None and best.feasible and frag_failed is not None:
        lo, hi = budget, frag_failed
        for _ in range(REFINE_SOLVES):
            if hi - lo < REFINE_MIN_FRAC * ctx.gpu_budget_bytes or deadline - time.perf_counter() < MIN_SOLVE_S:
                break
            mid = (lo + hi) // 2
            mid_sol, res = attempt(mid)
            if res is not None and res.feasible:
                lo = mid
                if _step_time_s(res) < _step_time_s(best):
                    best, sol = res, mid_sol
            else:
                hi = mid
    candidates = [r for r in fallbacks if r.feasible]
    if best is not None and best.feasible:
        candidates.append(best)
    timed_out = best is None and (sol is None or sol.timed_out)  # no incumbent by the limit
    if not candidates:
        # not proven infeasible either: a plan that does not fit and whose repairs the limit cut short
        cut = best is not None and not best.feasible and (cut_short or (sol is not None and sol.timed_out))
        reason = (best.reason if best is not None else (sol.binding if sol else "no solution"))
        if timed_out and best is None:
            reason = ("time limit: the MIP found no plan within the limit and no baseline fits "
                      "(a longer --time-limit may find one)")
        elif cut:
            timed_out = True
            reason = (f"time limit: the MIP's plan does not fit ({best.reason if best else 'none'}) and the "
                      "limit stopped its "
                      "repairs; no baseline fits (a longer --time-limit may find one)")
        return (StrategyResult(name="mip", feasible=False, step_time_s=best.step_time_s if best else None,
                               mfu=best.mfu if best else None,
                               peak_hbm_bytes=best.peak_hbm_bytes if best else None,
                               peak_host_bytes=best.peak_host_bytes if best else None,
                               reason=reason, plan=best.plan if best else None,
                               replay=best.replay if best else None, applied=best.applied if best else None,
                               timed_out=timed_out),
                sol)
    winner = min(candidates, key=lambda r: (r.step_time_s, r.name != "mip"))
    if winner.name == "mip":
        return winner, sol
    # a baseline replays faster than the MIP's plan, or the MIP stopped without one: return the
    # baseline, saying so
    elapsed = time.perf_counter() - t0
    gap = sol.gap if sol else None
    if timed_out and sol is not None and sol.best_bound_s is not None:
        gap = relative_gap(winner.step_time_s, sol.best_bound_s)  # the baseline's, against the bound
    assert winner.plan is not None  # feasible rows come from evaluate(), which sets the plan
    prov: dict[str, Any] = {"solver": sol.solver if sol else None, "gap": gap, "solve_time_s": elapsed,
                            "time_limit_s": time_limit_s,
                            "status": f"{'time_limit:' if timed_out else ''}fallback:{winner.name}"}
    if (winner.plan.prefetch_at, winner.plan.prefetch_lookahead_layers, winner.plan.mlp_activation) == (
            ctx.prefetch_at, ctx.lookahead, ctx.job.mlp_activation):
        res = relabel(ctx, winner, "mip", **prov)  # replayed under these knobs already
    else:
        res = evaluate(ctx, "mip", winner.plan.layers, **prov)
    if timed_out:
        why = "time limit: the MIP found no plan within the limit"
    elif best is not None and best.feasible:
        why = "replays faster than the MIP's"
    elif best is not None:
        why = f"the MIP's plans do not fit: {best.reason}"
    else:
        why = f"the MIP returned no feasible plan: {sol.status if sol else 'not run'}"

    return StrategyResult(**{**res.__dict__, "reason": f"{winner.name}'s plan ({why})",
                             "timed_out": timed_out}), sol


def mip_variants(ctx: PlanContext) -> list[tuple[str, str]]:
    """(prefetch point, MLP activation) pairs the MIP is solved for: every ``PREFETCH_POINTS``
    entry, each with the job's ``mlp_activation`` and, for a SwiGLU model whose job saves the
    activation, with it recomputed."""
    acts = [ctx.job.mlp_activation]
    if ctx.model.mlp == "swiglu" and ctx.job.mlp_activation == "saved":
        acts.append("recomputed")
    return [(point, act) for act in acts for point in PREFETCH_POINTS]


def plan_mip_variants(ctx: PlanContext, *, time_limit_s: float = 10.0, solver: str = "highs",
                      fallbacks: Sequence[StrategyResult] = (),
                      deadline_s: float | None = None) -> StrategyResult:
    """The MIP for each of ``mip_variants`` by ``deadline_s`` (``time.perf_counter()`` time;
    default ``time_limit_s`` from now; `plan_training` passes the one its baselines used
    first); the fastest feasible plan, the first variant's on a tie or when none fits.

    The first variant is the job's own (its prefetch point and MLP activation): it gets
    ``FIRST_VARIANT_FRAC`` of the time left, and never less than ``FIRST_VARIANT_MIN_FRAC`` of
    ``time_limit_s`` whatever the baselines took, so that a large model (70B at TP 8 takes
    ~0.6 s to build and ~1 s more to an incumbent) finds a plan. The others share what is left
    (time one leaves unused goes to the next); one whose share is below ``MIN_SOLVE_S`` or below
    twice the first one's build time is skipped. Each plan records the nominal equal share
    ``time_limit_s / len(variants)`` as its limit. When none fits and one was stopped by the
    limit, the row says "time limit" (not proven infeasible)."""
    from dataclasses import replace as dc_replace

    out = []
    variants = mip_variants(ctx)
    now = time.perf_counter()
    deadline = now + time_limit_s if deadline_s is None else deadline_s
    build_s = 0.0
    for k, (point, act) in enumerate(variants):
        now = time.perf_counter()
        left = deadline - now
        if k == 0:
            until = now + max(FIRST_VARIANT_MIN_FRAC * time_limit_s, FIRST_VARIANT_FRAC * left)
        else:
            share = left / (len(variants) - k)
            if share < max(MIN_SOLVE_S, 2 * build_s):
                break
            until = now + share
        if act == ctx.job.mlp_activation:
            c = ctx if point == ctx.prefetch_at else dc_replace(ctx, prefetch_at=point, _profiles=ctx._profiles)
        else:  # another template: its own profiles
            c = dc_replace(ctx, prefetch_at=point, job=ctx.job.model_copy(update={"mlp_activation": act}),
                           _profiles=ctx._variant_profiles.setdefault(act, {}))
        res, sol = plan_mip(c, time_limit_s=time_limit_s / len(variants), solver=solver, fallbacks=fallbacks,
                            deadline_s=until)
        if k == 0 and sol is not None:
            build_s = sol.build_time_s
        out.append(res)
    feasible = [r for r in out if r.feasible]
    if feasible:
        return min(feasible, key=_step_time_s)
    if out[0].timed_out or (len(out) == len(variants) and not any(r.timed_out for r in out)):
        return out[0]
    # the first variant has no fitting plan, and another was stopped by the limit or not solved
    return dc_replace(out[0], timed_out=True,
                      reason=f"time limit: {out[0].reason}; {len(out)} of the MIP's {len(variants)} "
                             "variants solved within the limit, none fits (a longer --time-limit may find a plan)")
