"""Helpers for the tests that hold the templates against a real module traced on meta."""

from simulator.workload import Phase


def saved_bytes_per_layer(workload) -> dict:
    """Bytes of distinct storages saved in the forward per decoder layer (views count their base)."""
    index = {t.tid: t for t in workload.tensors}
    out: dict = {}
    seen = set()
    for op in workload.ops:
        if op.phase != Phase.FWD or op.layer is None:
            continue
        for tid in op.saves:
            t = index[tid]
            if tid not in seen and not t.persistent:
                seen.add(tid)
                out[op.layer] = out.get(op.layer, 0) + t.num_bytes
    return out
