"""`layout --snapshot` keeps each allocation's frames and the dump-time segments, and names the
gaps held at the caching allocator's reserved peak with the allocations that pin them."""

from __future__ import annotations

import json
import pickle

from hwmodels.units import MiB
from planners.layout.fragmentation import frame_lines
from planners.layout.snapshot import SnapshotBlock, SnapshotSegment, load_snapshot
from tierplan.cli import main

BASE = 0x7F0000000000
S2 = BASE + 0x10000000  # the second segment cudaMalloc returned


def _frames(line: int) -> list[dict]:
    return [{"filename": "/src/model.py", "line": line, "name": "forward"},
            {"filename": "/src/train.py", "line": 7, "name": "step"}]


def _snapshot() -> dict:
    """A (8 MiB), B (8 MiB), C (4 MiB) fill one 20 MiB segment; A is freed; D (9 MiB) does not
    fit A's 8 MiB gap, so a second segment is cudaMalloc'ed: the reserved peak, 40 MiB."""
    def ev(action, addr, size, line=None):
        e = {"action": action, "addr": addr, "size": size, "stream": 0}
        if line is not None:
            e["frames"] = _frames(line)
        return e

    trace = [ev("segment_alloc", BASE, 20 * MiB),
             ev("alloc", BASE, 8 * MiB, 10), ev("alloc", BASE + 8 * MiB, 8 * MiB, 11),
             ev("alloc", BASE + 16 * MiB, 4 * MiB, 12),
             ev("free_requested", BASE, 8 * MiB), ev("free_completed", BASE, 8 * MiB),
             ev("segment_alloc", S2, 20 * MiB), ev("alloc", S2, 9 * MiB, 13)]
    blocks1 = [{"size": 8 * MiB, "requested_size": 0, "state": "inactive", "frames": []},
               {"size": 8 * MiB, "requested_size": 8 * MiB, "state": "active_allocated", "frames": _frames(11)},
               {"size": 4 * MiB, "requested_size": 4 * MiB, "state": "active_allocated", "frames": _frames(12)}]
    blocks2 = [{"size": 9 * MiB, "requested_size": 9 * MiB, "state": "active_allocated", "frames": _frames(13)},
               {"size": 11 * MiB, "requested_size": 0, "state": "inactive", "frames": []}]
    segments = [{"device": 0, "address": BASE, "total_size": 20 * MiB, "stream": 0, "blocks": blocks1},
                {"device": 0, "address": S2, "total_size": 20 * MiB, "stream": 0, "blocks": blocks2}]
    return {"segments": segments, "device_traces": [trace]}


def test_frames_and_segments_are_kept(tmp_path):
    path = tmp_path / "s.pickle"
    path.write_bytes(pickle.dumps(_snapshot()))
    snap = load_snapshot(str(path))
    assert [frame_lines(f) for f in snap.frames] == [("model.py:10:forward", "train.py:7:step"),
                                                     ("model.py:11:forward", "train.py:7:step"),
                                                     ("model.py:12:forward", "train.py:7:step"),
                                                     ("model.py:13:forward", "train.py:7:step")]
    assert snap.segments[1] == SnapshotSegment(S2, 20 * MiB, 0, (
        SnapshotBlock(S2, 9 * MiB, "active_allocated", _frames(13)),
        SnapshotBlock(S2 + 9 * MiB, 11 * MiB, "inactive", [])))
    assert frame_lines([{"name": 1}, "x", {"filename": "a", "line": True, "name": "b"}]) == ()


def test_layout_names_the_gap_and_what_pins_it(tmp_path, capsys):
    path = tmp_path / "s.pickle"
    path.write_bytes(pickle.dumps(_snapshot()))
    out = tmp_path / "l.json"
    assert main(["layout", "--snapshot", str(path), "--out", str(out), "--no-png", "--json"]) == 0
    frag = json.loads(capsys.readouterr().out)["fragmentation"]
    assert frag["event_index"] == 4  # A, B, C, free A, then D
    assert frag["request"] == {"buffer": "a3", "size_bytes": 9 * MiB,
                               "frames": ["model.py:13:forward", "train.py:7:step"]}
    assert (frag["reserved_bytes"], frag["allocated_bytes"], frag["free_reserved_bytes"],
            frag["peak_reserved_bytes"]) == (20 * MiB, 12 * MiB, 8 * MiB, 40 * MiB)
    assert frag["gaps"] == [{
        "address": BASE, "size_bytes": 8 * MiB, "segment_address": BASE, "segment_bytes": 20 * MiB,
        "stream": 0, "pool": "large", "num_live_blocks": 2, "before": None,
        "after": {"buffer": "a1", "size_bytes": 8 * MiB, "frames": ["model.py:11:forward", "train.py:7:step"]},
    }]
    assert main(["layout", "--snapshot", str(path), "--out", str(out), "--no-png"]) == 0
    text = capsys.readouterr().out
    assert "fragmentation at the reserved peak (40.00 MiB)" in text
    assert "a1 8.00 MiB model.py:11:forward" in text
    assert "request a3 from model.py:13:forward <- train.py:7:step" in text
