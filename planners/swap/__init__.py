"""Swap / recompute planning for one training step: profile, apply a Plan, replay it, and the MIP.

Models:
  * the step profile: per decoder layer, the tensors kept from its forward to its backward,
    grouped as MEMO groups them (the layer input; the attention output and its statistics;
    every other skeletal tensor), read from the lifetimes of the analytical Workload (views keep
    their base alive), their bytes, and the layer's forward, attention and backward times;
  * applying a Plan to the analytical Workload (built with the plan's per-layer checkpoints):
    an offloaded part of a tensor leaves HBM when its D2H copy is done (the end of the next
    layer's forward: two rotating staging buffers) and is allocated again when layer l+k's
    backward starts (prefetch, lookahead k), or with ``prefetch_at="attention"`` when that
    backward reaches its attention block (the MLP block's activations are free by then; the MIP
    is solved for both points and keeps the faster plan); a recomputed part leaves HBM at the end of the
    layer's forward and comes back in a recompute op just before the layer's backward, costing
    that fraction of the layer's non-attention forward plus an HBM copy of the rows it puts
    into full-size tensors (the executor measures 0.055-0.70 s of recompute on the H200 bench
    plans where this predicts within -3% .. +4%) (token-wise, as MEMO: norms, projections
    and MLP are per-token; the attention output is kept or offloaded, never recomputed, unless
    the layer is checkpointed whole). A layer that does not save its input (Hugging Face layers
    save an fp32 copy) holds the recomputed tokens' input rows until its recompute op;
  * the replay: the transformed Workload and its copies on the discrete-event simulator
    (`simulator.des`: every GPU of the node that the job uses, copy streams per direction, links
    and host DRAM shared fluidly); compute waits where a copy must be done (a staging buffer is
    reused, a layer's backward needs its bytes);
  * tierplan's MIP (HiGHS through planners.solvers): per layer binaries (full checkpoint,
    offload input, offload attention output) and token fractions of the other skeletal bytes
    (keep / offload / recompute); HBM capacity at every segment of the schedule between two
    release/restore points, host capacity shared by the node's GPUs, the D2H and H2D queues of
    the replay as linear max-plus constraints (staging-buffer reuse in forward, prefetch before
    each layer's backward); objective: the step's end time.
Assumes: every GPU of the job runs the same schedule at the same time, so copies of the GPUs of
a node share the host-path edges and the host DRAM they have in common; host copies use a
pinned pool allocated once (no per-step allocation cost). Every D2H copy ends before the
backward starts and every H2D copy starts after it, so the two directions never overlap and a
link's both-ways ceiling cannot bind (the replay applies it all the same).
  * memory: the allocated peak of the replay, and the reserved peak of the caching allocator
    replaying the transformed Workload's allocations (simulator.allocator); with
    ``allocator="caching"`` a plan fits only when that allocator, capped anywhere in a band
    just below the budget, serves every request (fragmentation included; CAP_BAND_FRAC); the
    MIP then backs its budget off in steps and bisects back towards the last budget that failed.
  * variants: the MIP is solved per prefetch point (``PREFETCH_POINTS``) and, for a SwiGLU model,
    with the MLP activation saved and recomputed (``mip_variants``); the fastest plan wins.
Ignores: recompute workspaces beyond the recomputed tensors themselves, CXL / NVMe tiers for
activations (the DES models them; plans use host DRAM).
Source: MEMO (Zhao et al., SIGMOD 2025, arXiv 2407.12117) sections 3-4 (token-wise recompute,
three streams, two buffers); Korthikanti et al. 2022 (selective recompute); checkmate (Jain et
al. 2020) for a MIP over a replayable plan.
"""

from planners.swap.apply import (
    PREFETCH_POINTS,
    AppliedPlan,
    Transfer,
    apply_plan,
)
from planners.swap.context import PlanContext
from planners.swap.evaluate import (
    ALLOCATORS,
    CAP_BAND_FRAC,
    CAP_BAND_POINTS,
    StrategyResult,
    capped_replay_failure,
    evaluate,
)
from planners.swap.mip import (
    BUDGET_MARGIN_FRAC,
    FRAGMENTATION_STEP_FRAC,
    MipSolution,
    mip_variants,
    plan_mip,
    plan_mip_variants,
    solve_mip,
)
from planners.swap.profile import LayerProfile, StepProfile, profile_workload
from planners.swap.rates import CopyRates, host_copy_rates, with_host_link
from planners.swap.replay import Replay, replay
from planners.swap.strategies import STRATEGIES, PlanReport, plan_training, static_bytes_check

__all__ = [
    "ALLOCATORS", "BUDGET_MARGIN_FRAC", "CAP_BAND_FRAC", "CAP_BAND_POINTS", "FRAGMENTATION_STEP_FRAC",
    "PREFETCH_POINTS", "STRATEGIES", "AppliedPlan", "CopyRates", "LayerProfile", "MipSolution",
    "PlanContext", "PlanReport", "Replay", "StepProfile", "StrategyResult", "Transfer", "apply_plan",
    "capped_replay_failure", "evaluate", "host_copy_rates", "mip_variants", "plan_mip",
    "plan_mip_variants", "plan_training", "profile_workload", "replay",
    "solve_mip", "static_bytes_check", "with_host_link",
]
