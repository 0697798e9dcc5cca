"""Price catalog: hand-checked cost rates, sourced built-in prices, one-line errors for bad catalogs."""

from __future__ import annotations

import json
import math

import pytest

from hwmodels.catalog import get_node, list_presets
from hwmodels.prices import (
    DEFAULT_PRICE_CATALOG,
    CapacityPrice,
    catalogs_pricing,
    cost_per_million_tokens,
    list_price_catalogs,
    load_price_catalog,
    node_cost_per_s,
    tokens_per_usd,
)
from hwmodels.units import GB, UserInputError

# $3.60 per GPU-hour is $0.001 per GPU-second; host DRAM bought at $8.76/GB over one 8,760-hour
# year is $0.001 per GB-hour; NVMe rented at $0.036 per GB-hour is $1e-5 per GB-second.
TOY = {
    "schema_version": 1,
    "name": "toy",
    "gpus": {"H200-SXM": {"usd_per_gpu_hour": 3.6, "source": "toy price for tests"}},
    "tiers": {
        "host": {"purchase_usd_per_gb": 8.76, "lifetime_years": 1, "source": "toy purchase for tests"},
        "nvme": {"rental_usd_per_gb_hour": 0.036, "source": "toy rental for tests"},
    },
}


def _write(tmp_path, data, name="prices.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_node_rate_by_hand(tmp_path):
    catalog = load_price_catalog(_write(tmp_path, TOY))
    assert catalog.tiers["host"].usd_per_gb_hour == pytest.approx(0.001)
    rate = node_cost_per_s(get_node("8xH200"), catalog,
                           tier_bytes={"hbm": 10**12, "host": 3600 * GB, "nvme": 100 * GB, "cxl": 0})
    assert rate.num_gpus == 8 and rate.gpu == "H200-SXM"
    assert rate.breakdown_usd_per_s["gpus"] == pytest.approx(8 * 0.001)
    assert rate.breakdown_usd_per_s["host"] == pytest.approx(0.001)  # 3600 GB * $0.001/GB-h / 3600 s
    assert rate.breakdown_usd_per_s["nvme"] == pytest.approx(100 * 1e-5)
    assert set(rate.breakdown_usd_per_s) == {"gpus", "host", "nvme"}  # HBM is in the GPU-hour
    assert rate.usd_per_s == pytest.approx(0.008 + 0.001 + 0.001)
    assert rate.usd_for(2.0) == pytest.approx(0.02)
    assert rate.unpriced_tiers == ()
    assert rate.sources["host"] == "toy purchase for tests"
    one = node_cost_per_s(get_node("8xH200"), catalog, num_gpus=1)
    assert one.usd_per_s == pytest.approx(0.001)


def test_cost_per_million_tokens_and_tokens_per_dollar():
    assert cost_per_million_tokens(0.01, 10_000) == pytest.approx(1.0)  # $0.01/s at 10K tok/s
    assert tokens_per_usd(0.01, 10_000) == pytest.approx(1e6)
    assert tokens_per_usd(0.0, 5.0) == math.inf
    with pytest.raises(ValueError):
        cost_per_million_tokens(0.01, 0.0)


def test_unpriced_tier_is_listed_not_charged(tmp_path):
    data = {**TOY, "tiers": {}}
    rate = node_cost_per_s(get_node("1xH200"), load_price_catalog(_write(tmp_path, data)),
                           tier_bytes={"host": 5 * GB, "cxl": 1})
    assert rate.unpriced_tiers == ("host", "cxl")
    assert rate.usd_per_s == pytest.approx(0.001)
    with pytest.raises(ValueError, match="unknown tier 'ssd'"):
        node_cost_per_s(get_node("1xH200"), load_price_catalog(_write(tmp_path, data)), tier_bytes={"ssd": 1})


def test_builtin_catalogs_are_sourced_and_name_gpu_presets():
    gpus = set(list_presets("gpus"))
    names = list_price_catalogs()
    assert DEFAULT_PRICE_CATALOG in names and len(names) >= 2
    for name in names:
        catalog = load_price_catalog(name)
        assert catalog.name == name
        assert set(catalog.gpus) <= gpus, f"{name}: prices a GPU that is not a preset"
        for price in [*catalog.gpus.values(), *catalog.tiers.values()]:
            assert len(price.source) > 40 and "20" in price.source  # names a list and its date
    aws = load_price_catalog()
    assert aws.name == DEFAULT_PRICE_CATALOG
    assert aws.gpus["H200-SXM"].usd_per_gpu_hour == pytest.approx(63.296 / 8)  # p5en.48xlarge / 8
    assert catalogs_pricing("GH200") == ["lambda-on-demand-2026-09"]


def test_gpu_without_price_names_the_catalogs_that_have_one():
    with pytest.raises(UserInputError, match="no price for GPU 'GH200'.*lambda-on-demand-2026-09"):
        node_cost_per_s(get_node("1xGH200"), load_price_catalog())


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["gpus"]["H200-SXM"].pop("source"), "gpus.H200-SXM.source: Field required"),
    (lambda d: d["gpus"]["H200-SXM"].update(source="   "), "gpus.H200-SXM.source"),
    (lambda d: d["tiers"]["host"].pop("source"), "tiers.host.source: Field required"),
    (lambda d: d["gpus"]["H200-SXM"].update(usd_per_gpu_hour=-1), "gpus.H200-SXM.usd_per_gpu_hour"),
    (lambda d: d["tiers"]["host"].pop("lifetime_years"), "give both, or neither"),
    (lambda d: d["tiers"]["nvme"].update(purchase_usd_per_gb=0.1, lifetime_years=5), "or rental_usd_per_gb_hour"),
    (lambda d: d["tiers"].update(ssd=d["tiers"]["nvme"]), "tiers.ssd"),
    (lambda d: d.update(currency="EUR"), "currency"),
    (lambda d: d.update(gpus={}, tiers={}), "at least one GPU or tier"),
])
def test_bad_catalog_is_one_line_naming_file_and_field(tmp_path, edit, needle):
    data = json.loads(json.dumps(TOY))
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(UserInputError) as err:
        load_price_catalog(str(path))
    line = str(err.value)
    assert "\n" not in line and str(path.name) in line and needle in line


def test_bad_catalog_files_and_names(tmp_path):
    with pytest.raises(UserInputError, match="malformed JSON"):
        load_price_catalog(_write(tmp_path, "{", "broken.json"))
    with pytest.raises(UserInputError, match="file not found"):
        load_price_catalog(str(tmp_path / "missing.json"))
    with pytest.raises(UserInputError, match="close matches: aws-on-demand-2026"):
        load_price_catalog("aws-on-demand")


def test_capacity_price_amortizes_over_its_lifetime():
    price = CapacityPrice(purchase_usd_per_gb=87.6, lifetime_years=5, source="toy")
    assert price.usd_per_gb_hour == pytest.approx(87.6 / (5 * 8760))
