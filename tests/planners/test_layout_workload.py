"""Layouts of training-step Workloads: MEMO's bi-level decomposition and `tierplan layout`."""

import json

import pytest

from planners.layout.instance import check_layout, instance_from_workload, lower_bound_bytes
from planners.layout.plan import bilevel_layout, layer_blocks, plan_workload_layout
from simulator.job import TrainJob
from simulator.model import get_model
from simulator.templates import training_workload
from simulator.workload import walk_memory
from tierplan.cli import main


@pytest.fixture(scope="module")
def small_step():
    model = get_model("llama-3.2-1b").with_layers(4)
    return training_workload(model, TrainJob(seq_len=4096, checkpointing="full"))


def test_layer_blocks_cover_each_layers_forward_and_backward(small_step):
    blocks = layer_blocks(small_step)
    layers = {(layer, phase) for _, _, layer, phase in blocks}
    assert {(i, "fwd") for i in range(4)} <= layers and {(i, "bwd") for i in range(4)} <= layers
    for a, b, layer, phase in blocks:
        assert all(op.layer == layer and op.phase.value == phase for op in small_step.ops[a:b])


def test_bilevel_reuses_one_solution_for_identical_layers(small_step):
    inst = instance_from_workload(small_step)
    offsets, num_distinct = bilevel_layout(small_step, inst, time_limit_s=20)
    assert check_layout(inst, offsets).valid
    num_blocks = len(layer_blocks(small_step))
    assert num_distinct < num_blocks  # four identical layers: far fewer solves than blocks
    # the tensors born and dead inside layer 1's forward sit, relative to each other, exactly
    # where layer 2's do: one lower-level solution, placed twice
    def internal_pattern(layer):
        a, b = next((a, b) for a, b, lay, ph in layer_blocks(small_step) if lay == layer and ph == "fwd")
        inner = [x for x in inst.buffers if a <= x.lower and x.upper <= b]
        base = min(offsets[x.bid] for x in inner)
        return [(x.lower - a, x.upper - a, x.size_bytes, offsets[x.bid] - base) for x in inner]

    assert len(internal_pattern(1)) >= 3
    assert internal_pattern(1) == internal_pattern(2)


@pytest.mark.parametrize("method", ["flat", "bilevel", "auto"])
def test_workload_layout_is_valid_and_near_the_bound(small_step, method):
    res = plan_workload_layout(small_step, time_limit_s=20, method=method)
    inst = instance_from_workload(small_step)
    assert check_layout(inst, res.offsets).valid
    assert res.lower_bound_bytes == walk_memory(small_step).peak_bytes == lower_bound_bytes(inst.buffers)
    assert res.gap <= 0.01
    assert (res.method == "bilevel") == (method == "bilevel")


def test_cli_model_json_and_files(tmp_path, capsys):
    out = tmp_path / "layout.json"
    rc = main(["layout", "--model", "llama-3.2-1b", "--layers", "2", "--seq-len", "4K",
               "--time-limit", "20", "--out", str(out), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("lower_bound_bytes", "peak_bytes", "solve_time_s", "status", "offsets",
                "reserved_bytes", "gap"):
        assert key in doc
    assert doc["peak_bytes"] <= doc["lower_bound_bytes"] * 1.01
    assert doc["reserved_bytes"] >= doc["lower_bound_bytes"]
    saved = json.loads(out.read_text())
    assert saved["offsets"] == doc["offsets"] and saved["schema_version"] == 1
    assert (tmp_path / "layout.png").stat().st_size > 1000


def test_cli_csv_table(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text("id,lower,upper,size\na,0,4,1024\nb,2,6,2048\nc,4,8,3072\n")
    rc = main(["layout", "--trace", str(csv), "--out", str(tmp_path / "o.json"), "--no-png"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "lower bound" in text and "5.00 KiB" in text and "caching allocator reserved" in text
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["peak_bytes"] == 5120 and doc["status"] == "optimal"


@pytest.mark.parametrize("argv,match", [
    (["--trace", "x.csv", "--model", "llama-3.2-1b"], "--model: not with --trace"),
    (["--trace", "x.csv", "--time-limit", "0"], "--time-limit: must be greater than 0"),
    (["--trace", "x.csv", "--time-limit", "soon"], "--time-limit: expected a number"),
    (["--trace", "missing.csv"], "missing.csv: file not found"),
])
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    assert main(["layout", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
