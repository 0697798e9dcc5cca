"""Layouts of a plan's step and of the plan's own buffers; the arena peak; `tierplan layout --plan`."""

import json
import pathlib

import pytest

from hwmodels.units import UserInputError
from planners.layout.instance import check_layout, lower_bound_bytes
from planners.layout.plan import instance_events, plan_layout
from planners.layout.plan_buffers import (
    PLAN_BUFFER_SUFFIXES,
    arena_peak_bytes,
    arena_workload,
    compare_arena,
    load_plan_step,
    plan_buffer_tids,
    plan_buffers_instance,
    step_instance,
    without_tensors,
)
from planners.plan import load_plan
from simulator.allocator import replay_caching_allocator
from simulator.workload import walk_memory
from tierplan.cli import main

PLANS = pathlib.Path(__file__).parents[2] / "validate" / "plans"
MEMO = PLANS / "probe8-32k-memo.json"  # offloads a fraction of 6 layers, recomputes the rest
KEEP_ALL = PLANS / "probe8-32k-mip.json"  # keeps every layer: no plan buffers


@pytest.fixture(scope="module")
def memo_step():
    return load_plan_step(MEMO)


def test_the_plan_step_is_the_plans_replayed_step(memo_step):
    plan = load_plan(MEMO)
    wl = memo_step.workload
    assert wl.meta["plan_applied"] and len(memo_step.model.name) and memo_step.model.num_layers == 8
    # the applied step's live-bytes peak is what the planner's replay reports (with the current
    # cost model), less the runtime workspaces the replay adds, never more
    from planners.swap import PlanContext, evaluate

    replayed = evaluate(PlanContext.from_plan(plan), "memo", plan.layers)
    assert walk_memory(wl).peak_bytes <= replayed.peak_hbm_bytes
    assert replayed.peak_hbm_bytes - walk_memory(wl).peak_bytes <= 128 * 2**20


def test_plan_buffers_are_the_restore_and_recompute_storages(memo_step):
    wl = memo_step.workload
    tids = plan_buffer_tids(wl)
    names = {wl.tensor(t).name for t in tids}
    assert any(n.endswith(".prefetched") for n in names) and any(n.endswith(".recomputed") for n in names)
    assert all(n.endswith(PLAN_BUFFER_SUFFIXES) for n in names)
    # one restore buffer per offloaded slice: apply_plan's ".offloaded" parts pair with them
    num_offloaded = sum(t.name.endswith(".offloaded") for t in wl.tensors)
    assert sum(n.endswith(".prefetched") for n in names) == num_offloaded
    inst = plan_buffers_instance(memo_step)
    whole = step_instance(memo_step)
    assert inst.num_buffers == len(tids) and set(inst.buffers) <= set(whole.buffers)
    # restore buffers live only in backward: after the last forward op
    first_bwd = min(k for k, op in enumerate(wl.ops) if op.phase.value != "fwd")
    assert min(b.lower for b in inst.buffers) >= first_bwd


def test_a_plan_that_keeps_everything_has_no_buffers_and_no_arena_cost():
    step = load_plan_step(KEEP_ALL)
    assert plan_buffers_instance(step).num_buffers == 0
    cmp = compare_arena(step, arena_bytes=0)
    assert cmp.arena_peak_bytes == cmp.ordinary_peak_bytes == cmp.window_arena_peak_bytes
    assert cmp.arena_reserved_bytes == cmp.ordinary_reserved_bytes


def test_arena_peak_is_other_tensors_plus_arena_and_deterministic(memo_step):
    wl = memo_step.workload
    tids = plan_buffer_tids(wl)
    res = plan_layout(plan_buffers_instance(memo_step), time_limit_s=10)
    other = walk_memory(without_tensors(wl, tids)).peak_bytes
    ordinary = walk_memory(wl).peak_bytes
    peak = arena_peak_bytes(wl, buffer_tids=tids, arena_bytes=res.peak_bytes)
    assert peak == other + res.peak_bytes
    assert peak >= ordinary >= other  # the arena is at least the buffers' live bytes at any time
    assert peak == arena_peak_bytes(wl, buffer_tids=tids, arena_bytes=res.peak_bytes)
    window = arena_peak_bytes(wl, buffer_tids=tids, arena_bytes=res.peak_bytes, held="window")
    assert ordinary <= window <= peak
    cmp = compare_arena(memo_step, arena_bytes=res.peak_bytes)
    assert cmp == compare_arena(memo_step, arena_bytes=res.peak_bytes)
    assert (cmp.arena_peak_bytes, cmp.other_peak_bytes, cmp.ordinary_peak_bytes) == (peak, other, ordinary)
    assert cmp.window_arena_peak_bytes == window
    assert cmp.arena_lower_bound_bytes <= cmp.arena_bytes <= cmp.plan_buffer_bytes


def test_arena_workload_keeps_every_other_tensor_and_one_arena(memo_step):
    wl = memo_step.workload
    tids = plan_buffer_tids(wl)
    for held in ("step", "window"):
        aw = arena_workload(wl, buffer_tids=tids, arena_bytes=4096, held=held)
        assert len(aw.tensors) == len(wl.tensors) - len(tids) + 1
        arena = next(t for t in aw.tensors if t.name == "plan_arena")
        assert (arena.tid in aw.initial) == (held == "step")
        assert not any(t in tids for op in aw.ops for t in (*op.allocs, *op.frees))
    with pytest.raises(ValueError, match="below the plan buffers' live bytes"):
        compare_arena(memo_step, arena_bytes=512)


def test_cli_plan_json_whole_step(tmp_path, capsys):
    rc = main(["layout", "--plan", str(KEEP_ALL), "--time-limit", "10", "--out", str(tmp_path / "l.json"),
               "--no-png", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("lower_bound_bytes", "peak_bytes", "gap", "status", "solve_time_s", "offsets",
                "reserved_bytes", "arena_peak_bytes", "ordinary_peak_bytes", "arena_bytes", "source"):
        assert key in doc
    assert doc["source"] == "plan" and doc["peak_bytes"] >= doc["lower_bound_bytes"] > 0
    assert doc["lower_bound_bytes"] == doc["ordinary_peak_bytes"]
    assert doc["num_buffers"] == step_instance(load_plan_step(KEEP_ALL)).num_buffers


def test_cli_plan_buffers_only_json_and_table(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["layout", "--plan", str(MEMO), "--buffers-only", "--time-limit", "10", "--out", str(out),
                 "--no-png", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    inst = plan_buffers_instance(load_plan_step(MEMO))
    assert doc["source"] == "plan buffers" and doc["num_buffers"] == doc["num_plan_buffers"] == inst.num_buffers
    assert check_layout(inst, doc["offsets"]).valid
    assert doc["peak_bytes"] == doc["arena_bytes"] >= doc["lower_bound_bytes"] == lower_bound_bytes(inst.buffers)
    assert doc["arena_peak_bytes"] == doc["other_peak_bytes"] + doc["arena_bytes"]
    # the caching allocator's row is for the same requests as the layout: the buffers alone
    alone = replay_caching_allocator(instance_events(inst)).peak_reserved_bytes
    assert doc["reserved_bytes"] == alone < doc["ordinary_reserved_bytes"]
    assert main(["layout", "--plan", str(MEMO), "--buffers-only", "--time-limit", "10", "--out", str(out),
                 "--no-png"]) == 0
    text = capsys.readouterr().out
    assert "arena held all step" in text and "ordinary (every tensor on its own)" in text


@pytest.mark.parametrize("argv,match", [
    (["--plan", "missing.json"], "missing.json: cannot read a plan"),
    (["--plan", "bad.json"], "bad.json: scenario: Field required"),
    (["--plan", "alien.json"], "alien.json: provenance.model: model: unknown preset 'no-such-model'"),
    (["--plan", "edited.json"], "edited.json: scenario_sha256.job_sha256: does not match"),
    (["--plan", "x.json", "--model", "llama-3.2-1b"], "--model: not with --plan"),
    (["--trace", "x.csv", "--buffers-only"], "--buffers-only: only with --plan"),
])
def test_cli_bad_plan_is_one_line(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text('{"layers": 3}')
    doc = json.loads(KEEP_ALL.read_text())
    doc["provenance"]["model"] = "no-such-model"
    (tmp_path / "alien.json").write_text(json.dumps(doc))
    v2 = json.loads(load_plan(KEEP_ALL).to_json())
    v2["scenario"]["job"]["seq_len"] *= 2
    (tmp_path / "edited.json").write_text(json.dumps(v2))
    assert main(["layout", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_plan_step_names_the_file_in_job_errors(tmp_path):
    doc = json.loads(KEEP_ALL.read_text())
    doc["provenance"]["job"]["seq_len"] = -1
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserInputError, match=r"p.json: provenance.job.seq_len"):
        load_plan_step(path)
