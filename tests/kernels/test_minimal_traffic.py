"""The byte convention of composite-op rates must be the one the microbenchmarks recorded."""

import json
import pathlib

import pytest

from kernels.elementwise import minimal_traffic_bytes

H200 = pathlib.Path(__file__).resolve().parents[2] / "validate" / "measurements" / "h200"


def _records():
    out = []
    for path in sorted(H200.glob("microbench-*.json")):
        for r in json.loads(path.read_text())["records"]:
            if r["op"] in ("rmsnorm", "silu_mul", "rotary", "cross_entropy", "embedding"):
                out.append(r)
    return out


def test_every_memory_bound_record_matches():
    recs = _records()
    assert len(recs) >= 50
    for r in recs:
        op, t = r["op"], r["tokens"]
        if op == "rmsnorm":
            f, fb = minimal_traffic_bytes(op, num_tokens=t, width=r["hidden"])
        elif op == "silu_mul":
            f, fb = minimal_traffic_bytes(op, num_tokens=t, width=r["intermediate"])
        elif op == "rotary":  # q and k with the same heads
            f, fb = minimal_traffic_bytes(op, num_tokens=t, width=2 * r["hidden"], head_dim=r["head_dim"])
        elif op == "cross_entropy":
            f, fb = minimal_traffic_bytes(op, num_tokens=t, width=r["vocab"])
        else:
            f, fb = minimal_traffic_bytes(op, num_tokens=t, width=r["hidden"], head_dim=r["vocab"])
        assert (f if r["pass"] == "fwd" else fb) == r["hbm_bytes"], r


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        minimal_traffic_bytes("conv", num_tokens=1, width=1)
