"""`estimate` and `plan` report dollars per step and per million tokens from a price catalog."""

from __future__ import annotations

import json

import pytest

from tierplan.cli import main

# $3.60 per GPU-hour = $0.001 per GPU-second; host at $0.0036 per GB-hour = $1e-6 per GB-second
TOY = {"schema_version": 1, "name": "toy",
       "gpus": {"H200-SXM": {"usd_per_gpu_hour": 3.6, "source": "toy price for tests"}},
       "tiers": {"host": {"rental_usd_per_gb_hour": 0.0036, "source": "toy rental for tests"}}}


@pytest.fixture
def toy_prices(tmp_path):
    path = tmp_path / "toy-prices.json"
    path.write_text(json.dumps(TOY))
    return str(path)


def _json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_estimate_train_cost_by_hand(capsys, toy_prices):
    d = _json(capsys, "estimate", "--model", "llama-3.2-1b", "--seq-len", "4K", "--optimizer", "none",
              "--hardware", "8xH200", "--dp", "2", "--prices", toy_prices, "--json")
    cost = d["cost"]
    assert cost["catalog"] == "toy" and cost["num_gpus"] == 2  # the job's GPUs, not the node's 8
    assert cost["usd_per_s"] == pytest.approx(0.002)
    assert cost["usd_per_step"] == pytest.approx(0.002 * d["step_time_s"])
    tokens_per_s = 2 * 4096 / d["step_time_s"]  # both replicas' tokens per step / step time
    assert d["tokens_per_s"] == pytest.approx(tokens_per_s)
    assert cost["usd_per_million_tokens"] == pytest.approx(0.002 / tokens_per_s * 1e6)
    assert cost["sources"] == {"gpus": "toy price for tests"}


def test_estimate_infer_cost_is_per_decode_step(capsys, toy_prices):
    d = _json(capsys, "estimate", "--mode", "infer", "--model", "llama-3.2-1b", "--prompt-len", "4K",
              "--gen-len", "64", "--batch", "2", "--hardware", "1xH200", "--prices", toy_prices, "--json")
    cost = d["cost"]
    assert cost["usd_per_step"] == pytest.approx(0.001 * d["decode_time_per_token_s"])
    assert cost["usd_per_million_tokens"] == pytest.approx(0.001 / d["decode_tokens_per_s"] * 1e6)


def test_estimate_table_shows_cost_and_default_catalog(capsys):
    assert main(["estimate", "--model", "llama-3.2-1b", "--seq-len", "4K", "--hardware", "1xH200"]) == 0
    out = capsys.readouterr().out
    assert "cost per step (aws-on-demand-2026)" in out and "cost per million tokens" in out
    assert "1 x H200-SXM $7.91/h" in out  # p5en.48xlarge $63.296/h over 8 GPUs


def test_estimate_without_a_price_still_estimates(capsys):
    d = _json(capsys, "estimate", "--model", "llama-3.2-1b", "--seq-len", "4K", "--hardware", "1xGH200", "--json")
    assert d["step_time_s"] > 0
    assert "lambda-on-demand-2026-09" in d["cost"]["unavailable"]
    d = _json(capsys, "estimate", "--model", "llama-3.2-1b", "--seq-len", "4K", "--hardware", "1xGH200",
              "--prices", "lambda-on-demand-2026-09", "--json")
    assert d["cost"]["usd_per_s"] == pytest.approx(2.29 / 3600)


def test_bad_prices_is_one_line_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "gpus": {"H200-SXM": {"usd_per_gpu_hour": 3.6}}}))
    cases = ((["estimate", "--prices", str(bad)], "bad.json: gpus.H200-SXM.source: Field required"),
             (["plan", "--prices", "nope", "--model", "gpt2"], "--prices: unknown price catalog 'nope'"))
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and needle in err


def test_plan_rows_carry_cost_with_host_bytes(capsys, toy_prices):
    d = _json(capsys, "plan", "--model", "llama-3.2-1b", "--layers", "4", "--seq-len", "16K",
              "--hardware", "1xH200", "--gpu-budget", "30GiB", "--time-limit", "5",
              "--prices", toy_prices, "--json")
    rows = {r["name"]: r for r in d["strategies"]}
    offloading = [r for r in rows.values() if r["feasible"] and r["peak_host_bytes"]]
    assert offloading, "expected a feasible strategy that holds host bytes"
    for r in rows.values():
        if not r["feasible"]:
            assert r["cost"]["usd_per_step"] is None
            continue
        usd_per_s = 0.001 + r["peak_host_bytes"] / 1e9 * 1e-6
        assert r["cost"]["usd_per_s"] == pytest.approx(usd_per_s)
        assert r["cost"]["usd_per_step"] == pytest.approx(usd_per_s * r["step_time_s"])
        assert r["cost"]["usd_per_million_tokens"] == pytest.approx(usd_per_s * r["step_time_s"] / 16384 * 1e6)


def test_plan_table_has_cost_columns(capsys):
    main(["plan", "--model", "llama-3.2-1b", "--layers", "2", "--seq-len", "4K", "--hardware", "1xH200",
          "--time-limit", "3"])
    out = capsys.readouterr().out
    assert "$/step" in out and "$/Mtok" in out and "cost (aws-on-demand-2026)" in out
