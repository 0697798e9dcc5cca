"""validate/scripts/peak_blocks.py: the replay of an allocator trace to its peak, and the grouping by line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("peak_blocks", REPO / "validate" / "scripts" / "peak_blocks.py")
assert SPEC and SPEC.loader
peak_blocks = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(peak_blocks)


def _frame(path: str, line: int, name: str) -> dict:
    return {"filename": str(REPO / path), "line": line, "name": name}


def test_peak_is_the_highest_live_point_and_groups_by_innermost_repo_line():
    a = [_frame("validate/chunked_ops.py", 10, "loss"), {"filename": "/usr/lib/torch/x.py", "line": 1, "name": "f"}]
    b = [{"filename": "/usr/lib/torch/y.py", "line": 2, "name": "g"}, _frame("validate/executor.py", 20, "step")]
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": a},
        {"action": "alloc", "addr": 2, "size": 50, "frames": b},
        {"action": "free_requested", "addr": 1, "size": 100},  # not yet free
        {"action": "alloc", "addr": 3, "size": 30, "frames": b},  # peak: 180
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 4, "size": 120, "frames": []},  # 200: a new peak, outside the repo
        {"action": "free_completed", "addr": 4, "size": 120},
    ]
    p = peak_blocks.peak_of(trace)
    assert p["live_bytes"] == 200 and p["trace_index"] == 5 and p["at"] == []
    assert p["by_line"][0] == {"where": "<outside repo>", "bytes": 120, "blocks": 1}
    assert p["by_line"][1] == {"where": "validate/executor.py:20 step", "bytes": 80, "blocks": 2}
    del trace[5:]
    p = peak_blocks.peak_of(trace)
    assert p["live_bytes"] == 180 and p["trace_index"] == 3
    assert [r["where"] for r in p["by_line"]] == ["validate/chunked_ops.py:10 loss", "validate/executor.py:20 step"]
