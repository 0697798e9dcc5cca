"""Baseline strategies, each written as a Plan's layers so that all strategies replay alike.

Models:
  * none: every saved tensor kept (plain eager PyTorch);
  * full_recompute: every layer checkpointed whole, its input kept (Megatron-LM
    ``--recompute-granularity full --recompute-method uniform``, ``torch.utils.checkpoint``);
  * selective: the checkpoint region the analytical templates use for selective recompute
    (Korthikanti et al. 2022; see ``simulator.templates``);
  * offload_all: every saved activation of every layer copied to host memory synchronously on
    the compute stream and back when backward needs it (``torch.autograd.graph.save_on_cpu``);
  * memo: MEMO's published rule, exactly: offload the layer input and the attention output
    always; for the other skeletal tensors one token fraction alpha for every layer, the largest
    in [0, 1] with ``(S_in + S_attn + alpha * S_other) / B <= T_layer_fwd`` and
    ``(n - 2) * (S_in + S_attn + alpha * S_other) <= M_host``; the rest of the tokens recomputed;
    the last two layers keep everything.
Assumes: MEMO's B is the D2H rate one GPU gets while every GPU of its node copies, and its
M_host the node's host budget divided among those GPUs; S and T are taken from the model's
middle layer (all layers share a shape; the first may differ by its input).
Ignores: MEMO's own memory-layout MIP (fragmentation is not modelled by the replay either).
Source: Zhao et al., MEMO, SIGMOD 2025 (arXiv 2407.12117), section 4.1, equations for alpha;
PyTorch docs for ``save_on_cpu``; Korthikanti et al., "Reducing Activation Recomputation in
Large Transformer Models", 2022.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from hwmodels.units import format_bytes
from planners.plan import LayerPlan, RoleAction
from simulator.workload import ATTN_ROLES

if TYPE_CHECKING:
    from planners.swap import PlanContext



def keep_all(ctx: PlanContext) -> tuple[list[LayerPlan], str]:
    return [LayerPlan(layer=i) for i in range(ctx.num_layers)], ""


def full_recompute(ctx: PlanContext) -> tuple[list[LayerPlan], str]:
    return [LayerPlan(layer=i, checkpoint="full") for i in range(ctx.num_layers)], ""


def selective(ctx: PlanContext) -> tuple[list[LayerPlan], str]:
    return [LayerPlan(layer=i, checkpoint="selective") for i in range(ctx.num_layers)], ""


def offload_all(ctx: PlanContext) -> tuple[list[LayerPlan], str]:
    prof = ctx.profile("none")
    sync = RoleAction(action="offload", alpha_frac=1.0, stream="compute")
    return [LayerPlan(layer=lp.layer, input="offload", input_stream="compute",
                      roles={r: sync for r in lp.role_tids}) for lp in prof.layers], ""


def memo_alpha_frac(*, input_bytes: int, attn_bytes: int, other_bytes: int, layer_fwd_s: float,
                    d2h_bytes_per_s: float, host_bytes: float, num_layers: int) -> float | None:
    """MEMO's alpha: the largest fraction in [0, 1] meeting both of its constraints; None when
    even alpha = 0 breaks the host-memory one (the rule has no answer then)."""
    always = input_bytes + attn_bytes
    swapped = max(0, num_layers - 2)
    if swapped * always > host_bytes:
        return None
    if other_bytes <= 0:
        return 1.0
    by_bandwidth = (d2h_bytes_per_s * layer_fwd_s - always) / other_bytes
    by_host = (host_bytes / swapped - always) / other_bytes if swapped else 1.0
    return min(1.0, max(0.0, min(by_bandwidth, by_host)))


def memo(ctx: PlanContext) -> tuple[list[LayerPlan] | None, str]:
    prof = ctx.profile("none")
    n = len(prof.layers)
    mid = prof.layers[n // 2]
    rates = ctx.rates
    alpha = memo_alpha_frac(input_bytes=mid.input_bytes, attn_bytes=mid.attn_bytes,
                            other_bytes=mid.other_bytes, layer_fwd_s=mid.fwd_s,
                            d2h_bytes_per_s=rates.d2h_bytes_per_s,
                            host_bytes=ctx.host_budget_per_gpu_bytes, num_layers=n)
    if alpha is None:
        need = (n - 2) * (mid.input_bytes + mid.attn_bytes) * rates.num_gpus_sharing_host
        return None, (f"MEMO's rule: inputs and attention outputs of {n - 2} layers need "
                      f"{format_bytes(need)} > {format_bytes(ctx.host_budget_bytes)} host budget")
    alpha = math.floor(alpha * 1e6) / 1e6  # rounding up could break the host constraint
    other = (RoleAction(action="offload", alpha_frac=alpha) if alpha > 0
             else RoleAction(action="recompute"))
    whole = RoleAction(action="offload", alpha_frac=1.0)
    layers = []
    for lp in prof.layers:
        if lp.layer >= n - 2:
            layers.append(LayerPlan(layer=lp.layer))
            continue
        roles = {r: (whole if r in ATTN_ROLES else other) for r in lp.role_tids}
        layers.append(LayerPlan(layer=lp.layer, input="offload", roles=roles))
    return layers, ""


BASELINES: dict[str, Callable[[PlanContext], tuple[list[LayerPlan] | None, str]]] = {
    "none": keep_all,
    "full_recompute": full_recompute,
    "selective": selective,
    "offload_all": offload_all,
    "memo": memo,
}
