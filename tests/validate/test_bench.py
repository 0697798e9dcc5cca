"""The plan benchmark (validate/bench.py, `tierplan bench`) on a 4K grid, on the CPU."""

import json
import pathlib
import subprocess
import sys

import pytest

from hwmodels.units import GiB
from tierplan.cli import main
from validate import bench

REPO = pathlib.Path(__file__).resolve().parents[2]
BUDGETS = "full,48GiB,7GiB"  # 7 GiB: the `none` plan (8.1 GiB predicted) is over it

H200_BENCH = pathlib.Path(__file__).resolve().parents[2] / "validate" / "measurements" / "h200"


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    out = tmp_path_factory.mktemp("plans")
    assert main(make_plans_args(out)) == 0
    return out


def make_plans_args(out) -> list[str]:
    return ["bench", "make-plans", "--out", str(out), "--lengths", "4K", "--budgets", BUDGETS,
            "--time-limit", "5"]


@pytest.fixture(scope="module")
def measured(plans, tmp_path_factory):
    """`run --smoke` in a process where pulp and highspy cannot be imported."""
    out = tmp_path_factory.mktemp("run")
    code = (
        "import sys; sys.modules['pulp'] = None; sys.modules['highspy'] = None; "
        f"sys.path.insert(0, {str(REPO)!r}); from validate import bench; "
        f"sys.exit(bench.main(['run', '--plans', {str(plans)!r}, '--out', {str(out)!r}, "
        "'--smoke', '--budgets', 'full,7GiB', '--warmup', '0', '--repeats', '1']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    progress = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    return json.loads((out / bench.MEASURED).read_text()), progress


def test_make_plans_is_deterministic_and_indexes_every_cell(plans, tmp_path):
    again = tmp_path / "again"
    assert (
        main(make_plans_args(again))
        == 0
    )
    names = sorted(p.name for p in plans.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (plans / name).read_bytes() == (again / name).read_bytes(), name
    index = json.loads((plans / "index.json").read_text())
    assert len(index["cells"]) == 3 * len(bench.MODES)
    assert index["planning_margin_frac"] == bench.PLANNING_MARGIN_FRAC
    cells = {(c["budget"], c["mode"]): c for c in index["cells"]}
    assert set(cells) == {(b, m) for b in ("full", "48g", "7g") for m in bench.MODES}
    refused = cells[("7g", "none")]
    assert not refused["feasible"] and "gpu budget" in refused["reason"]
    assert refused["planning_budget_bytes"] == int(7 * GiB * (1 - bench.PLANNING_MARGIN_FRAC))
    assert cells[("full", "checkpoint")]["feasible"]
    assert cells[("full", "save_on_cpu")]["strategy"] == "offload_all"
    assert cells[("full", "save_on_cpu")]["plan"] == "probe8-4k-full-offload_all.json"
    assert cells[("full", "none")]["model_flops"] > 0
    (ideal,) = index["ideal"]
    assert ideal["num_layers"] == 8 and ideal["plan"] == "probe8-4k-full-none.json"


def test_run_smoke_without_pulp_runs_every_mode(measured):
    data, progress = measured
    assert data["smoke"] and data["provenance"]["device_type"] == "cpu"
    cells = {(c["budget"], c["mode"]): c for c in data["cells"]}
    assert set(cells) == {(b, m) for b in ("full", "7g") for m in bench.MODES} | {("full", "ideal")}
    for mode in bench.MODES:
        c = cells[("full", mode)]
        assert c["status"] == "ok", c
        assert c["step_time_s"] > 0 and len(c["step_times_s"]) == 1
        assert c["predicted"]["step_time_s"] > 0 and c["num_layers"] == 8
    assert cells[("full", "save_on_cpu")]["host_pool_peak_bytes"] > 0  # the real save_on_cpu
    assert cells[("full", "memo")]["host_pool_peak_bytes"] > 0
    assert cells[("full", "none")]["host_pool_peak_bytes"] == 0
    refused = cells[("7g", "none")]
    assert refused["status"] == "refused" and "step_time_s" not in refused
    assert "exceeds the GPU budget 7.00 GiB" in refused["message"]
    assert cells[("7g", "checkpoint")]["status"] == "ok"
    assert cells[("full", "ideal")]["reused_from"] == "none"
    assert [(p["budget"], p["mode"]) for p in progress] == [
        (c["budget"], c["mode"]) for c in data["cells"]
    ]


def test_report_ratios_by_hand(plans, tmp_path, capsys):
    index = json.loads((plans / "index.json").read_text())
    pred = next(c for c in index["cells"] if c["budget"] == "full" and c["mode"] == "mip")

    def cell(mode, step, **kw):
        return {
            "seq_len": 4096,
            "budget": "full",
            "mode": mode,
            "num_layers": 8,
            "plan": f"probe8-4k-full-{bench.MODE_STRATEGY.get(mode, 'none')}.json",
            "budget_bytes": 141 * GiB,
            "model_flops": 1e15,
            "predicted": None,
            "status": "ok",
            "peak_allocated_bytes": 8 * GiB,
            "peak_reserved_bytes": 9 * GiB,
            "host_pool_peak_bytes": 0,
            **({"step_time_s": step} if step else {}),
            **kw,
        }

    committed = json.loads(sorted(H200_BENCH.glob("bench-h200-*.json"))[0].read_text())
    fake = {
        **{k: committed[k] for k in ("provenance", "plans_index", "smoke", "warmup", "repeats",
                                     "max_step_s")},
        "cells": [
            cell("checkpoint", 1.0),
            cell("mip", 0.8),
            cell("none", 0.0, status="oom", message="none: out of memory at step 0"),
            # the ideal on 4 of 8 layers: 8 * 0.2 / 4 = 0.4 s
            cell("ideal", 0.2, num_layers=4, plan=None),
        ],
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps(fake))
    md = tmp_path / "bench.md"
    assert (
        main(
            [
                "bench",
                "report",
                "--measured",
                str(path),
                "--plans",
                str(plans),
                "--out",
                str(md),
                "--json",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    rows = {r["mode"]: r for r in rep["rows"] if r["budget"] == "full"}
    # the index's cells no file measured are listed: refused with the reason, or not run
    other = {(r["budget"], r["mode"]): r for r in rep["rows"] if r["budget"] != "full"}
    assert other[("7g", "none")]["status"] == "refused"
    assert "exceeds the GPU budget 7.00 GiB" in other[("7g", "none")]["message"]
    assert other[("7g", "checkpoint")]["status"] == "not run"
    assert other[("7g", "checkpoint")]["step_time_s"] is None
    assert rep["ideal_step_s"] == {"4096": pytest.approx(0.4)}
    mip = rows["mip"]
    assert mip["x_ideal"] == pytest.approx(0.5)
    assert mip["x_checkpoint"] == pytest.approx(1.25)
    assert mip["model_tflops_per_s"] == pytest.approx(pred["model_flops"] / 0.8 / 1e12)
    assert mip["predicted_step_s"] == pytest.approx(pred["predicted"]["step_time_s"])
    assert mip["step_err"] == pytest.approx(pred["predicted"]["step_time_s"] / 0.8 - 1)
    assert mip["peak_err"] == pytest.approx(pred["predicted"]["peak_hbm_bytes"] / (8 * GiB) - 1)
    assert rows["checkpoint"]["x_checkpoint"] == pytest.approx(1.0)
    assert rows["none"]["step_time_s"] is None and rows["none"]["x_ideal"] is None
    text = md.read_text()
    assert "| 4K | full | mip | ok | 0.800 |" in text and "| 0.50 | 1.25 | 8.0 | 9.0 |" in text
    assert "none: out of memory at step 0" in text


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--lengths", "12Q"], "--lengths: unknown suffix 'Q'"),
        (["--modes", "none,zero"], "--modes: unknown 'zero'"),
        (["--lengths", "8K"], "--lengths: 8192 tokens not planned"),
    ],
)
def test_bad_run_input_is_one_line(plans, tmp_path, capsys, extra, needle):
    args = ["bench", "run", "--plans", str(plans), "--out", str(tmp_path), "--smoke", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_missing_plans_dir_is_one_line(tmp_path, capsys):
    assert (
        main(["bench", "run", "--plans", str(tmp_path / "none"), "--out", str(tmp_path), "--smoke"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "is not a directory" in err and "\n" not in err
    assert bench.main(["report", "--measured", str(tmp_path / "x.json")]) == 2


def test_dry_run_estimates_and_refuses_without_running(plans, tmp_path, capsys):
    res = bench.run_bench(bench.BenchRun(
        plans,
        out_dir=tmp_path / "never",
        budgets=["full"],
        dry_run=True,
        host_available_bytes=GiB,  # below save_on_cpu's predicted 4.7 GiB of host
    ))
    assert not (tmp_path / "never").exists()
    cells = {c["mode"]: c for c in res["cells"]}
    assert cells["save_on_cpu"]["status"] == "refused"
    assert "peak_host_bytes" in cells["save_on_cpu"]["message"]
    none = cells["none"]
    assert none["status"] == "planned"
    step_s = none["predicted"]["step_time_s"]
    assert none["estimated_s"] == pytest.approx(4 * step_s, rel=1e-5)  # 1 + 3; plans round to 1 us
    assert cells["ideal"]["reused_from"] == "none"
    assert capsys.readouterr().err == ""
