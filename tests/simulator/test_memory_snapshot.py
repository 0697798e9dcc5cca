"""A simulated step written as a PyTorch memory snapshot (`simulator.memory_snapshot`): exact
on a toy step, read back by our safe reader and by torch's own memory_viz code."""

from __future__ import annotations

import json

import pytest

from hwmodels.units import MiB
from simulator.memory_snapshot import DEVICE_BASE_ADDR, memory_snapshot
from simulator.workload import OpSpec, Phase, Role, TensorSpec, Workload


def _toy() -> Workload:
    """A 12 MiB weight live all step; x (3 MiB, layer 0) and y (3 MiB, layer 1) made and freed."""
    tensors = (TensorSpec(0, "w", 12 * MiB, Role.WEIGHT, persistent=True),
               TensorSpec(1, "layers.0.x", 3 * MiB, Role.MLP_HIDDEN, layer=0),
               TensorSpec(2, "layers.1.y", 3 * MiB, Role.ATTN_OUT, layer=1))
    ops = (OpSpec(0, "layers.0.up", "linear", Phase.FWD, 0, allocs=(1,)),
           OpSpec(1, "layers.1.attn", "sdpa", Phase.FWD, 1, allocs=(2,), frees=(1,)),
           OpSpec(2, "loss", "cross_entropy", Phase.LOSS, None, frees=(2,)))
    return Workload(tensors=tensors, ops=ops, initial=(0,))


def test_toy_step_trace_and_segments_exactly():
    snap = memory_snapshot(_toy(), num_steps=1, preallocated_bytes=())
    trace = [(e["action"], e["addr"] - DEVICE_BASE_ADDR, e["size"]) for e in snap["device_traces"][0]]
    # w: a 12 MiB request gets its own segment (>= 10 MiB: rounded to 2 MiB); x: a 1-10 MiB
    # request opens a 20 MiB segment and takes its front; y: best fit in the 17 MiB rest
    assert trace == [
        ("segment_alloc", 0, 12 * MiB), ("alloc", 0, 12 * MiB),
        ("segment_alloc", 12 * MiB, 20 * MiB), ("alloc", 12 * MiB, 3 * MiB),
        ("alloc", 15 * MiB, 3 * MiB),
        ("free_requested", 12 * MiB, 3 * MiB), ("free_completed", 12 * MiB, 3 * MiB),
        ("free_requested", 15 * MiB, 3 * MiB), ("free_completed", 15 * MiB, 3 * MiB),
    ]
    events = snap["device_traces"][0]
    assert [e["time_us"] for e in events] == list(range(len(events)))
    # frames: the tensor (role:layer:name), then the op that allocates or frees it
    assert events[3]["frames"] == [{"filename": "mlp_hidden", "line": 0, "name": "layers.0.x"},
                                   {"filename": "fwd", "line": 0, "name": "layers.0.up (linear)"}]
    assert events[5]["frames"][1]["name"] == "layers.1.attn (sdpa)"
    assert events[8]["frames"] == [{"filename": "attn_out", "line": 1, "name": "layers.1.y"},
                                   {"filename": "loss", "line": 2, "name": "loss (cross_entropy)"}]
    # at the end: the weight's segment, active; x's segment, free and whole again
    seg_w, seg_x = snap["segments"]
    assert (seg_w["address"], seg_w["total_size"], seg_w["allocated_size"]) == (DEVICE_BASE_ADDR, 12 * MiB, 12 * MiB)
    assert seg_w["blocks"] == [{"address": DEVICE_BASE_ADDR, "size": 12 * MiB, "requested_size": 12 * MiB,
                                "state": "active_allocated",
                                "frames": [{"filename": "weight", "line": -1, "name": "w"},
                                           {"filename": "step", "line": 0,
                                            "name": "before the step (weights, inputs, states)"}]}]
    assert seg_w["segment_type"] == "large" and seg_w["stream"] == 0
    assert (seg_x["total_size"], seg_x["allocated_size"]) == (20 * MiB, 0)
    assert [b["state"] for b in seg_x["blocks"]] == ["inactive"]
    assert seg_x["frames"] == events[3]["frames"]  # cudaMalloc'ed for x


def test_expandable_segments_map_pages():
    snap = memory_snapshot(_toy(), num_steps=1, preallocated_bytes=(), expandable_segments=True)
    actions = [e["action"] for e in snap["device_traces"][0]]
    # w maps one 20 MiB page and takes its front; x and y fit the 8 MiB rest of it
    assert actions == ["segment_map", "alloc", "alloc", "alloc"] + ["free_requested", "free_completed"] * 2
    assert snap["device_traces"][0][0]["size"] == 20 * MiB
    (seg,) = snap["segments"]
    assert seg["is_expandable"] and [b["size"] for b in seg["blocks"]] == [12 * MiB, 8 * MiB]


def test_simulate_writes_a_snapshot_memory_viz_reads(tmp_path, capsys):
    """End to end: the file of `tierplan simulate --memory-snapshot` goes back through the safe
    reader (no class references), `layout --snapshot`'s parser, and torch's own memory_viz
    code; its reserved peak is the one simulate reports."""
    from planners.layout.snapshot import load_plain_pickle, load_snapshot
    from tierplan.cli import main

    path = tmp_path / "step.pickle"
    assert main(["simulate", "--model", "llama-3.2-1b", "--layers", "4", "--seq-len", "4K", "--offload", "0.5",
                 "--memory-snapshot", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    data = load_plain_pickle(str(path))
    trace = data["device_traces"][0]
    reserved = peak = 0
    for e in trace:
        reserved += {"segment_alloc": e["size"], "segment_free": -e["size"]}.get(e["action"], 0)
        peak = max(peak, reserved)
    assert peak == summary["peak_reserved_bytes"]
    snap = load_snapshot(str(path))
    num_allocs = sum(e["action"] == "alloc" for e in trace)
    assert len(snap.instance.buffers) == num_allocs
    assert snap.reserved_bytes == sum(s["total_size"] for s in data["segments"])

    viz = pytest.importorskip("torch.cuda._memory_viz")
    summary_text = viz.segsum(data)  # raises on any segment whose blocks do not add up
    assert f"segments: {len(data['segments'])}" in summary_text
    assert viz.trace(data).count("\n") > num_allocs
    for html in (viz.segment_plot(data), viz.trace_plot(data)):
        assert "snapshot.pickle" in html  # the page memory_viz opens, with this snapshot inside


def test_bad_snapshot_path_writes_nothing(tmp_path):
    from tierplan.cli import main

    assert main(["simulate", "--model", "llama-3.2-1b", "--seq-len", "4K",
                 "--memory-snapshot", str(tmp_path / "s.pkl"), "--trace", str(tmp_path / "t.json")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_plan_writes_the_best_plans_step(tmp_path, capsys):
    from planners.layout.snapshot import load_plain_pickle
    from tierplan.cli import main

    path = tmp_path / "best.pickle"
    assert main(["plan", "--model", "llama-3.2-1b", "--layers", "4", "--seq-len", "4K", "--hardware", "1xH200",
                 "--time-limit", "5", "--memory-snapshot", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = next(r for r in out["strategies"] if r["name"] == out["best"])
    reserved = peak = 0
    for e in load_plain_pickle(str(path))["device_traces"][0]:
        reserved += {"segment_alloc": e["size"], "segment_free": -e["size"]}.get(e["action"], 0)
        peak = max(peak, reserved)
    assert peak == best["peak_reserved_bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pickle"]
