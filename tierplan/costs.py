"""Cost figures of `tierplan estimate` and `tierplan plan`: dollars per step and per million tokens.

Models: one step of a job at a `hwmodels.prices.CostRate` (the job's GPUs, plus the tier bytes it
holds); tokens per second are training tokens per step / step time, or decode tokens per second.
Assumes: the job's GPUs (tp * cp * dp) are billed, one node kind; tier bytes are per node, times
the nodes the job fills.
Ignores: everything `hwmodels.prices` ignores.
"""

from __future__ import annotations

import argparse
from typing import Any

PRICES_HELP = ("price catalog for the cost figures: a built-in catalog name (aws-on-demand-2026, "
               "the default; lambda-on-demand-2026-09) or a catalog JSON file")


def add_prices_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prices", help=PRICES_HELP)


def job_cost(catalog, node, *, num_gpus: int, step_time_s: float | None, tokens_per_s: float | None,
             tier_bytes: dict[str, int] | None = None) -> dict[str, Any]:
    """The cost of one step as plain data: ``usd_per_s``, ``usd_per_step``,
    ``usd_per_million_tokens`` (None without a step time or tokens), the rate's breakdown and
    sources; or ``{"catalog", "unavailable"}`` when the catalog has no price for the node's GPU."""
    from hwmodels.prices import cost_per_million_tokens, node_cost_per_s
    from hwmodels.units import UserInputError

    nodes = max(1, -(-num_gpus // node.num_gpus))
    held = {tier: n * nodes for tier, n in (tier_bytes or {}).items()}
    try:
        rate = node_cost_per_s(node, catalog, tier_bytes=held, num_gpus=num_gpus)
    except UserInputError as err:  # no price for this GPU: the estimate stands without a cost
        return {"catalog": catalog.name, "unavailable": str(err).removeprefix("prices: ")}
    out = rate.to_dict()
    out["usd_per_step"] = rate.usd_for(step_time_s) if step_time_s else None
    out["usd_per_million_tokens"] = (cost_per_million_tokens(rate.usd_per_s, tokens_per_s)
                                     if tokens_per_s else None)
    return out


def format_usd(usd: float | None) -> str:
    """``$1.23``, ``$0.0123``, ``$4.56e-06``; ``-`` for None."""
    if usd is None:
        return "-"
    if usd == 0 or abs(usd) >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.3g}" if abs(usd) >= 1e-4 else f"${usd:.2e}"


def describe_rate(cost: dict[str, Any]) -> str:
    """One line: catalog, GPUs and dollars per hour, and the tiers it did not price."""
    from hwmodels.units import S_PER_HOUR, format_bytes

    if "unavailable" in cost:
        return f"cost: n/a ({cost['unavailable']})"
    parts = [f"{cost['num_gpus']} x {cost['gpu']} {format_usd(cost['breakdown_usd_per_s']['gpus'] * S_PER_HOUR)}/h"]
    parts += [f"{tier} {format_bytes(cost['tier_bytes'][tier])} {format_usd(v * S_PER_HOUR)}/h"
              for tier, v in cost["breakdown_usd_per_s"].items() if tier != "gpus"]
    line = f"cost ({cost['catalog']}): {format_usd(cost['usd_per_s'] * S_PER_HOUR)}/h = " + " + ".join(parts)
    if cost["unpriced_tiers"]:
        line += f"; not priced: {', '.join(cost['unpriced_tiers'])} (no price in the catalog)"
    return line
