"""Price catalog: what a GPU-hour and a GB-hour of each memory tier cost, and what a node costs per second.

Models: a catalog (``hwmodels/presets/prices/<name>.json``, or a user's JSON file) that prices
GPUs by `GpuSpec.name` in dollars per GPU-hour and the memory tiers a plan can place bytes on
(``host`` DRAM, ``cxl`` memory expanders, ``nvme`` and ``csd`` drives: `planners.plan.Tier`
without ``hbm``) in dollars per decimal GB per hour. Every price carries a ``source`` string
(the price list or paper, and the date it was read); a price without one is refused.
Method: a GPU-hour is a cloud on-demand price of one GPU (an 8-GPU instance's hourly price
divided by 8 where the provider quotes instances); it pays for the instance's CPUs, host DRAM
and local drives too, and HBM is part of it. A tier is priced either by a purchase price per
GB amortized straight-line over a stated lifetime,
``usd_per_gb_hour = purchase_usd_per_gb / (lifetime_years * HOURS_PER_YEAR)``, or by a
provider's rental price per GB-hour. A node costs
``usd_per_s = num_gpus * usd_per_gpu_hour / 3600 + sum_tier bytes / 1e9 * usd_per_gb_hour / 3600``
where ``bytes`` is what the job holds in the tier (its peak), not the tier's capacity.
Assumes: every hour is used (no idle time), straight-line amortization with no residual value;
a tier's bytes are charged on top of the GPU-hour, priced as if bought for the job: the
marginal cost of that capacity, which is what a DRAM vs CXL vs NVMe comparison needs (for a
cloud instance whose price already includes its DRAM and drives it is an upper bound).
Ignores: power and cooling beyond what a rental price includes, networking, egress, taxes,
spot / reserved discounts, currencies other than USD.
Source: the ``source`` of each price in the catalog files (README, "Cost", lists them).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from hwmodels.catalog import validate_file_data
from hwmodels.limits import echo
from hwmodels.specs import NodeSpec
from hwmodels.units import GB, HOURS_PER_YEAR, S_PER_HOUR, UserInputError
from hwmodels.userfile import read_user_json

PRICES_DIR: Final = Path(__file__).resolve().parent / "presets" / "prices"
DEFAULT_PRICE_CATALOG: Final = "aws-on-demand-2026"
"""The catalog `load_price_catalog` reads when given none: it prices the reference H200."""

PricedTier = Literal["host", "cxl", "nvme", "csd"]
PRICED_TIERS: Final[tuple[str, ...]] = PricedTier.__args__  # type: ignore[attr-defined]
FREE_TIERS: Final[tuple[str, ...]] = ("hbm",)
"""Tiers whose bytes cost nothing beyond the GPU-hour (HBM is part of the GPU)."""

MAX_USD_PER_GPU_HOUR: Final = 1e4
MAX_USD_PER_GB: Final = 1e5
MAX_USD_PER_GB_HOUR: Final = 1e3
MAX_LIFETIME_YEARS: Final = 30.0

Source = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
"""Where a price comes from: price list or paper, URL, and the date it was read."""


class _PriceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False,
                              use_attribute_docstrings=True)


class GpuHourPrice(_PriceSpec):
    """What one GPU costs per hour, from one price list."""

    usd_per_gpu_hour: float = Field(gt=0, le=MAX_USD_PER_GPU_HOUR)
    """Dollars per GPU per hour (an instance's hourly price / its GPUs)."""
    source: Source
    """Price list (provider, instance, region), URL and the date it was read."""


class CapacityPrice(_PriceSpec):
    """What one decimal GB of a memory or storage tier costs per hour: a purchase price amortized
    over a lifetime, or a provider's rental price."""

    purchase_usd_per_gb: float | None = Field(default=None, gt=0, le=MAX_USD_PER_GB)
    """Purchase price, dollars per decimal GB (with ``lifetime_years``)."""
    lifetime_years: float | None = Field(default=None, gt=0, le=MAX_LIFETIME_YEARS)
    """Years the purchase is amortized over (straight-line, no residual value)."""
    rental_usd_per_gb_hour: float | None = Field(default=None, gt=0, le=MAX_USD_PER_GB_HOUR)
    """A provider's price per decimal GB per hour (instead of a purchase price)."""
    source: Source
    """Price list or paper, URL and the date it was read; for a purchase, where the lifetime
    comes from too."""

    @model_validator(mode="after")
    def _one_way(self) -> CapacityPrice:
        bought = self.purchase_usd_per_gb is not None or self.lifetime_years is not None
        if bought and (self.purchase_usd_per_gb is None or self.lifetime_years is None):
            raise ValueError("purchase_usd_per_gb and lifetime_years: give both, or neither")
        if bought == (self.rental_usd_per_gb_hour is not None):
            raise ValueError("give purchase_usd_per_gb with lifetime_years, or rental_usd_per_gb_hour")
        return self

    @property
    def usd_per_gb_hour(self) -> float:
        """Dollars per decimal GB per hour: the rental price, or the purchase amortized."""
        if self.rental_usd_per_gb_hour is not None:
            return self.rental_usd_per_gb_hour
        assert self.purchase_usd_per_gb is not None and self.lifetime_years is not None
        return self.purchase_usd_per_gb / (self.lifetime_years * HOURS_PER_YEAR)


class PriceCatalog(_PriceSpec):
    """Prices of GPUs (by `GpuSpec.name`) and of memory tiers (by plan tier name)."""

    schema_version: Literal[1] = 1
    """Version of this file format."""
    name: str = Field(min_length=1, max_length=200)
    """Catalog name, e.g. ``aws-on-demand-2026``."""
    description: str = ""
    """One line for humans: provider, region, pricing model."""
    currency: Literal["USD"] = "USD"
    """Currency of every price."""
    gpus: dict[str, GpuHourPrice] = Field(default_factory=dict)
    """GPU name (``H200-SXM``) -> price per GPU-hour."""
    tiers: dict[PricedTier, CapacityPrice] = Field(default_factory=dict)
    """Tier (host, cxl, nvme, csd) -> price per GB-hour; a tier left out is not priced."""

    @model_validator(mode="after")
    def _prices_something(self) -> PriceCatalog:
        if not self.gpus and not self.tiers:
            raise ValueError("gpus: a catalog must price at least one GPU or tier")
        return self


@dataclass(frozen=True)
class CostRate:
    """What running ``num_gpus`` GPUs of one node kind, and the tier bytes a job holds, costs."""

    usd_per_s: float
    breakdown_usd_per_s: dict[str, float]  # "gpus" and each priced tier the job uses
    catalog: str
    gpu: str
    num_gpus: int
    tier_bytes: dict[str, int] = field(default_factory=dict)  # bytes held per tier (hbm included as given)
    unpriced_tiers: tuple[str, ...] = ()  # tiers holding bytes that the catalog has no price for
    sources: dict[str, str] = field(default_factory=dict)  # "gpus" / tier -> the price's source

    def usd_for(self, seconds: float) -> float:
        """Dollars for ``seconds`` at this rate (one step: its step time)."""
        return self.usd_per_s * seconds

    def to_dict(self) -> dict:
        return {"catalog": self.catalog, "gpu": self.gpu, "num_gpus": self.num_gpus,
                "usd_per_s": self.usd_per_s, "breakdown_usd_per_s": dict(self.breakdown_usd_per_s),
                "tier_bytes": dict(self.tier_bytes), "unpriced_tiers": list(self.unpriced_tiers),
                "sources": dict(self.sources)}


def list_price_catalogs() -> list[str]:
    """Names of the built-in catalogs, sorted."""
    return sorted(p.stem for p in PRICES_DIR.glob("*.json"))


@cache
def _preset_catalog(name: str) -> PriceCatalog:
    path = PRICES_DIR / f"{name}.json"
    return validate_file_data(PriceCatalog, read_user_json(path), path)


def load_price_catalog(name_or_path: str | Path | None = None) -> PriceCatalog:
    """``--prices``: a built-in catalog by name, a path to a catalog JSON file, or (None) the
    default catalog. Unknown names and bad files raise a one-line `UserInputError`."""
    if name_or_path is None:
        return _preset_catalog(DEFAULT_PRICE_CATALOG)
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".json") or "/" in text:
        path = Path(text)
        return validate_file_data(PriceCatalog, read_user_json(path), path)
    names = list_price_catalogs()
    if text not in names:
        close = difflib.get_close_matches(text, names, n=3, cutoff=0.4)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise UserInputError(f"--prices: unknown price catalog {echo(text)}{hint} "
                             f"(built-in: {', '.join(names)}; or a catalog .json file)")
    return _preset_catalog(text)


def catalogs_pricing(gpu_name: str) -> list[str]:
    """The built-in catalogs that price ``gpu_name``."""
    return [n for n in list_price_catalogs() if gpu_name in _preset_catalog(n).gpus]


def node_cost_per_s(node: NodeSpec, catalog: PriceCatalog, *, tier_bytes: dict[str, int] | None = None,
                    num_gpus: int | None = None) -> CostRate:
    """Dollars per second of ``num_gpus`` GPUs of ``node`` (default: all of the node's) plus the
    ``tier_bytes`` a job holds in each tier (``hbm``, ``host``, ``cxl``, ``nvme``, ``csd``; HBM
    is free beyond the GPU-hour). A GPU the catalog has no price for raises `UserInputError`
    naming the catalogs that have one; a tier holding bytes without a price is charged nothing
    and listed in ``unpriced_tiers``."""
    gpus = node.num_gpus if num_gpus is None else num_gpus
    if gpus < 1:
        raise ValueError(f"num_gpus: must be at least 1, got {gpus}")
    price = catalog.gpus.get(node.gpu.name)
    if price is None:
        others = [n for n in catalogs_pricing(node.gpu.name) if n != catalog.name]
        hint = f" (--prices {' or '.join(others)} has one)" if others else ""
        raise UserInputError(f"prices: catalog {catalog.name!r} has no price for GPU {node.gpu.name!r}{hint}")
    breakdown = {"gpus": gpus * price.usd_per_gpu_hour / S_PER_HOUR}
    sources = {"gpus": price.source}
    held = dict(tier_bytes or {})
    unpriced: list[str] = []
    for tier, num_bytes in held.items():
        if tier not in PRICED_TIERS + FREE_TIERS:
            raise ValueError(f"tier_bytes: unknown tier {tier!r} (use {', '.join(FREE_TIERS + PRICED_TIERS)})")
        if num_bytes < 0:
            raise ValueError(f"tier_bytes.{tier}: must be >= 0, got {num_bytes}")
        if tier in FREE_TIERS or num_bytes == 0:
            continue
        tier_price = catalog.tiers.get(tier)  # type: ignore[call-overload]
        if tier_price is None:
            unpriced.append(tier)
            continue
        breakdown[tier] = num_bytes / GB * tier_price.usd_per_gb_hour / S_PER_HOUR
        sources[tier] = tier_price.source
    return CostRate(usd_per_s=sum(breakdown.values()), breakdown_usd_per_s=breakdown, catalog=catalog.name,
                    gpu=node.gpu.name, num_gpus=gpus, tier_bytes=held, unpriced_tiers=tuple(unpriced),
                    sources=sources)


def _check_rates(usd_per_s: float, tokens_per_s: float) -> None:
    if not (math.isfinite(usd_per_s) and usd_per_s >= 0):
        raise ValueError(f"usd_per_s: must be finite and >= 0, got {usd_per_s}")
    if not (math.isfinite(tokens_per_s) and tokens_per_s > 0):
        raise ValueError(f"tokens_per_s: must be finite and > 0, got {tokens_per_s}")


def cost_per_million_tokens(usd_per_s: float, tokens_per_s: float) -> float:
    """Dollars per million tokens at ``usd_per_s`` (a `CostRate.usd_per_s`) and ``tokens_per_s``
    (training: tokens per step / step time; inference: decode tokens per second)."""
    _check_rates(usd_per_s, tokens_per_s)
    return usd_per_s / tokens_per_s * 1e6


def tokens_per_usd(usd_per_s: float, tokens_per_s: float) -> float:
    """Tokens per dollar (a planner's objective to maximize); infinite at a cost of zero."""
    _check_rates(usd_per_s, tokens_per_s)
    return tokens_per_s / usd_per_s if usd_per_s > 0 else math.inf
