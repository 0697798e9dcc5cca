"""Memory snapshots are read without executing code; bad files fail as one line."""

import json
import os
import pathlib
import pickle

import pytest

from hwmodels.units import MiB, UserInputError
from planners.layout.instance import lower_bound_bytes
from planners.layout.plan import plan_layout
from planners.layout.snapshot import load_snapshot
from simulator.allocator import replay_caching_allocator
from tierplan.cli import main


def _snapshot_dict() -> dict:
    """The structure torch.cuda.memory._snapshot() returns, trimmed to what matters."""
    trace = [
        {"action": "segment_alloc", "addr": 0x7F0000000000, "size": 20 * MiB, "stream": 0},
        {"action": "alloc", "addr": 0x7F0000000000, "size": 4 * MiB, "stream": 0, "time_us": 1,
         "frames": [{"filename": "train.py", "line": 3, "name": "step"}]},
        {"action": "alloc", "addr": 0x7F0000400000, "size": 6 * MiB, "stream": 0, "time_us": 2},
        {"action": "free_requested", "addr": 0x7F0000000000, "size": 4 * MiB, "stream": 0},
        {"action": "free_completed", "addr": 0x7F0000000000, "size": 4 * MiB, "stream": 0},
        {"action": "alloc", "addr": 0x7F0000A00000, "size": 1000, "stream": 0},
        # freed, never allocated in the trace: live when recording started
        {"action": "free_completed", "addr": 0x7E0000000000, "size": 3 * MiB, "stream": 0},
    ]
    segments = [{"device": 0, "address": 0x7F0000000000, "total_size": 20 * MiB, "stream": 0,
                 "segment_type": "large", "allocated_size": 6 * MiB + 1024, "blocks": []}]
    return {"segments": segments, "device_traces": [trace]}


def test_valid_snapshot_gives_events_and_instance(tmp_path):
    path = tmp_path / "snap.pickle"
    path.write_bytes(pickle.dumps(_snapshot_dict()))
    snap = load_snapshot(str(path))
    assert snap.reserved_bytes == 20 * MiB
    sizes = sorted(b.size_bytes for b in snap.instance.buffers)
    assert sizes == [1024, 3 * MiB, 4 * MiB, 6 * MiB]
    # the pre-existing 3 MiB block, the 4 MiB and the 6 MiB are live together at the start
    assert lower_bound_bytes(snap.instance.buffers) == 13 * MiB
    assert [e.action for e in snap.events][:2] == ["alloc", "alloc"]
    rep = replay_caching_allocator(snap.events)
    assert rep.peak_allocated_bytes == 13 * MiB


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"segments": [], "device_traces": [[_Evil()]]}))
    with pytest.raises(UserInputError, match="refused: the pickle refers to posix.system") as err:
        load_snapshot(str(path))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("make,match", [
    (lambda: pickle.dumps(_snapshot_dict())[:-7], "truncated|not a valid"),
    (lambda: b"this is not a pickle at all", "not a valid memory snapshot"),
    (lambda: b"", "empty file"),
    (lambda: pickle.dumps([1, 2, 3]), "expected a dict"),
    (lambda: pickle.dumps({"segments": []}), "device_traces: expected a list"),
    (lambda: pickle.dumps({"device_traces": [[]]}), "no allocation trace"),
    (lambda: pickle.dumps({"device_traces": [[{"action": "alloc", "addr": "x", "size": 4}]]}),
     "entry 0: addr: expected an integer"),
    (lambda: pickle.dumps({"device_traces": [[{"action": "segment_alloc", "addr": 0, "size": 4}]]}),
     "no alloc/free entries"),
])
def test_malformed_snapshots_fail_as_one_line(tmp_path, make, match):
    path = tmp_path / "bad.pickle"
    path.write_bytes(make())
    with pytest.raises(UserInputError, match=match) as err:
        load_snapshot(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_cli_refuses_a_malicious_snapshot_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(_Evil()))
    assert main(["layout", "--snapshot", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def test_cli_truncated_snapshot_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "cut.pickle"
    path.write_bytes(pickle.dumps(_snapshot_dict())[:40])
    assert main(["layout", "--snapshot", str(path), "--out", str(tmp_path / "l.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tierplan layout: error:") and err.count("\n") == 1


def test_cli_snapshot_json(tmp_path, capsys):
    import json

    path = tmp_path / "snap.pickle"
    path.write_bytes(pickle.dumps(_snapshot_dict()))
    out = tmp_path / "layout.json"
    assert main(["layout", "--snapshot", str(path), "--out", str(out), "--no-png", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["lower_bound_bytes"] == doc["peak_bytes"] == 13 * MiB
    assert doc["snapshot_reserved_bytes"] == 20 * MiB
    assert doc["source"] == "snapshot" and len(doc["offsets"]) == 4


SNAPSHOTS = (pathlib.Path(__file__).resolve().parents[2] / "validate" / "measurements" / "h200"
             / "snapshots-h200-2026-11-28.json")
# replaying a real trace with made-up segment addresses is exact on 3 of the 4 runs; the fourth
# is 1.8% high because best-fit ties between equal-size blocks break by address
SNAPSHOT_RESERVED_TOL = 0.02


def _real_snapshots():
    doc = json.loads(SNAPSHOTS.read_text())
    return [pytest.param(rec, id=f"{rec['case']}:ckpt={rec['gradient_checkpointing']}")
            for rec in doc["records"]]


@pytest.mark.parametrize("rec", _real_snapshots())
def test_real_h200_snapshot_replays_to_the_measured_reserved_memory(tmp_path, rec):
    keys = rec["trace_fields"]
    trace = [dict(zip(keys, row, strict=True)) for row in rec["trace"]]
    segments = [{"device": 0, **dict(zip(rec["segment_fields"], row, strict=True))}
                for row in rec["segments"]]
    path = tmp_path / "snap.pickle"  # the structure _dump_snapshot writes
    path.write_bytes(pickle.dumps({"segments": segments, "device_traces": [trace]}))
    snap = load_snapshot(str(path))
    assert snap.reserved_bytes == rec["peak_reserved_bytes"]  # the cache never shrank
    rep = replay_caching_allocator(snap.events)
    assert rep.peak_allocated_bytes == rec["peak_allocated_bytes"]
    err = rep.peak_reserved_bytes / rec["peak_reserved_bytes"] - 1
    assert abs(err) <= SNAPSHOT_RESERVED_TOL, f"reserved {err:+.2%}"
    # with the device's segment addresses, ties break as they did: the replay is exact
    exact = replay_caching_allocator(snap.events, segment_addresses=snap.segment_addresses)
    assert exact.peak_reserved_bytes == rec["peak_reserved_bytes"]
    assert exact.peak_num_segments == sum(1 for row in rec["trace"] if row[0] == "segment_alloc")
    # the planned arena for the same trace: within 2% of the lower bound (today 0-1.1%), and
    # below what the caching allocator reserved. The bound counts requests rounded to 512 B;
    # the allocator's "allocated" also counts the <= 1 MiB tails of large blocks it did not split
    res = plan_layout(snap.instance, time_limit_s=3)
    assert 0 <= rec["peak_allocated_bytes"] - res.lower_bound_bytes <= 2 * MiB
    assert res.gap <= 0.02 and res.peak_bytes < rec["peak_reserved_bytes"]


@pytest.mark.parametrize("seed", range(4))
def test_array_reading_equals_the_entry_loop(seed):
    """Random traces with early frees, blocks live at the end, zero sizes, segment entries,
    other actions and odd streams: the numpy reading gives the loop's events and buffers."""
    import random

    from planners.layout.snapshot import _trace_arrays, _trace_loop

    rng = random.Random(seed)
    for free_action in ("free_completed", "free_requested"):
        live: list[int] = []
        trace: list = []
        for _ in range(600):
            r = rng.random()
            if r < 0.45 or not live:
                addr = rng.randrange(64) * 4096
                if addr in live:
                    continue
                live.append(addr)
                trace.append({"action": "alloc", "addr": addr, "size": rng.choice([0, 1, 512, 700, 3 << 20]),
                              "stream": rng.choice([0, 7, None, "s"])})
            elif r < 0.85:
                addr = live.pop(rng.randrange(len(live)))
                actions = ["free_requested", free_action] if free_action == "free_completed" else [free_action]
                trace += [{"action": a, "addr": addr, "size": 512, "stream": 0} for a in actions]
            elif r < 0.92:  # freed, never allocated in the trace
                trace.append({"action": free_action, "addr": (1 << 40) + rng.randrange(1 << 20), "size": 2048,
                              "stream": 3})
            else:
                trace.append({"action": rng.choice(["segment_alloc", "oom", "segment_free"]),
                              "addr": rng.randrange(1 << 30), "size": 2 << 20})
        fast = _trace_arrays(trace, free_action)
        assert fast is not None and fast == _trace_loop(trace, free_action, "t.pickle")
        assert any(k > 0 for _, k in fast[2]) and len(fast[1]) > 100
    # what the arrays cannot name goes to the loop: not a dict, a bool size, an alloc at a live address
    assert _trace_arrays([*trace, [1]], "free_completed") is None
    assert _trace_arrays([*trace, {"action": "alloc", "addr": 5, "size": True}], "free_completed") is None
    twice = [{"action": "alloc", "addr": 5, "size": 512}] * 2
    assert _trace_arrays(twice, "free_completed") is None
    with pytest.raises(UserInputError, match="entry 1: alloc at 0x5, which is already allocated"):
        _trace_loop(twice, "free_completed", "t.pickle")
