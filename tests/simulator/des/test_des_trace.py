"""The Chrome trace has the structure Perfetto's JSON importer reads; the PNG is written; the CLI."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from hwmodels.units import US_PER_S, GiB
from simulator.des import Transfer, add_offload, schedule_from_workload, simulate
from simulator.des.trace import TRACE_PHASES, chrome_trace, plot_step, write_chrome_trace
from simulator.templates import training_workload
from tierplan.cli import main


@pytest.fixture(scope="module")
def result(scenario):
    m, j, node = scenario("llama-3.2-1b", 16384, "8xH200", layers=3, parallelism={"dp": 2})
    wl = training_workload(m, j, node)
    sched = add_offload(schedule_from_workload(wl, node, num_gpus=2), fraction_by_layer={0: 1.0, 1: 0.5})
    return simulate(sched)


def test_trace_structure(result, tmp_path):
    path = write_chrome_trace(result, tmp_path / "step.json")
    trace = json.loads(path.read_text())
    events = trace["traceEvents"]
    assert trace["displayTimeUnit"] == "ms"
    for ev in events:
        assert ev["ph"] in TRACE_PHASES
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int) and isinstance(ev["name"], str)
        if ev["ph"] in ("X", "C", "i"):
            assert isinstance(ev["ts"], float) and ev["ts"] >= 0
        if ev["ph"] == "X":
            assert ev["dur"] >= 0
        if ev["ph"] == "C":
            assert all(isinstance(v, float) for v in ev["args"].values())
    sched = result.schedule
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e["ph"] == "M" and e["name"] == "thread_name"}
    assert sorted(threads.values()) == sorted(s.name for s in sched.streams)
    processes = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert processes == {"gpu0", "gpu1", "memory", "links"}
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == len(sched.tasks)
    for e in slices:  # every slice sits on its stream's track with its simulated times
        task = next(t for t in sched.tasks if t.name == e["name"] and threads[(e["pid"], e["tid"])] == t.stream)
        assert e["ts"] == pytest.approx(result.task_start_s[task.tid] * US_PER_S)
    counters = {e["name"] for e in events if e["ph"] == "C"}
    assert {"gpu0.hbm (hbm)", "gpu1.hbm (hbm)", "host (host)", "gpu0>pcie_sw0", "pcie_sw0>cpu0",
            "host_memory"} <= counters
    last_hbm = [e for e in events if e["ph"] == "C" and e["name"] == "gpu0.hbm (hbm)"][-1]
    assert last_hbm["args"]["GiB"] == pytest.approx(result.pool("gpu0.hbm").final_bytes / GiB)
    copies = [e for e in slices if e["cat"] == "transfer"]
    assert copies and all(e["args"]["bytes"] > 0 for e in copies)
    assert chrome_trace(result) == trace  # deterministic


def test_png_is_written(result, tmp_path):
    path = plot_step(result, tmp_path / "step.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 1000 and height > 400


def test_cli_json_trace_and_plot(capsys, tmp_path):
    trace, png = tmp_path / "t.json", tmp_path / "p.png"
    code = main(["simulate", "--model", "llama-3.2-1b", "--layers", "3", "--seq-len", "16K",
                 "--offload", "1", "--trace", str(trace), "--plot", str(png), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert set(data["peak_bytes"]) == {"hbm", "host"}
    assert data["peak_bytes"]["host"] > 0 and data["num_events"] > 0
    assert data["step_time_s"] == pytest.approx(data["estimate_step_time_s"] + data["stall_s"], rel=1e-12)
    assert data["stall_s"] >= 0 and isinstance(data["oom"], list)
    assert json.loads(trace.read_text())["traceEvents"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    code = main(["simulate", "--model", "llama-3.2-1b", "--layers", "3", "--seq-len", "16K"])
    text = capsys.readouterr().out
    assert code == 0 and "step time (simulated)" in text and "peak hbm" in text


def test_estimate_keeps_its_flags(capsys):
    assert main(["estimate", "--model", "gpt2", "--seq-len", "1024", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_len"] == 1024


def test_transfers_carry_their_rates_in_the_trace(result):
    events = chrome_trace(result)["traceEvents"]
    for e in events:
        if e["ph"] == "X" and e["cat"] == "transfer":
            assert 0 < e["args"]["GB_per_s"] <= 55.5  # never above one GPU's measured PCIe rate
    assert any(isinstance(t, Transfer) for t in result.schedule.tasks)


def test_cli_replays_a_plan_file_as_the_planner_predicted(capsys, tmp_path):
    flags = ["--model", "llama-2-7b", "--layers", "4", "--seq-len", "64K", "--hardware", "1xH200"]
    assert main(["plan", *flags, "--gpu-budget", "50GiB", "--out", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["provenance"]["planner"] in ("mip", "whole_step") and plan["prediction"]["peak_host_bytes"] > 0
    assert main(["simulate", "--plan", str(tmp_path / "plan.json"), "--json"]) == 0  # no scenario flags
    data = json.loads(capsys.readouterr().out)
    assert data["step_time_s"] == pytest.approx(plan["prediction"]["step_time_s"], abs=1e-6)
    assert data["peak_bytes"]["hbm"] == plan["prediction"]["peak_hbm_bytes"]
    assert data["peak_bytes"]["host"] == plan["prediction"]["peak_host_bytes"]
    # the plan holds its scenario: a scenario flag or --offload beside it is refused as one line
    assert main(["simulate", "--layers", "3", "--plan", str(tmp_path / "plan.json")]) == 2
    assert "--layers: a plan carries its model, job and node; give --plan alone" in capsys.readouterr().err
    assert main(["simulate", "--plan", str(tmp_path / "plan.json"), "--offload", "0.5"]) == 2
    assert "--offload: a plan carries" in capsys.readouterr().err
