"""A simulated step as a PyTorch memory snapshot: the file pytorch.org/memory_viz opens.

Models: what ``torch.cuda.memory._dump_snapshot`` writes after ``_record_memory_history()``,
for a Workload replayed on the caching-allocator model (`simulator.allocator`): ``segments``
(every segment at the end of the replay with its blocks: address, size, requested size, state,
frames) and ``device_traces`` (one list for device 0: alloc, free_requested, free_completed and
segment_alloc / segment_free, or segment_map / segment_unmap with expandable segments, each with
addr, size, stream, time_us and frames). A request's frames name what a Python stack would:
the tensor (its role and decoder layer, ``role:layer:tensor``) and the op of the step that
allocates or frees it (``phase:op index:op name (kind)``); layer -1 is outside the decoder
layers.
Assumes: the replay of ``simulator.allocator.workload_events`` (two cuBLAS workspaces first,
then the initial tensors, then ``num_steps`` steps: two by default, the second being the
steady state `predict_reserved` reports), uncapped, one compute stream; frees
complete at once (no cross-stream events pending); ``time_us`` is the entry's index (the
Workload's ops carry no clock until a replay assigns one).
Ignores: the CUDA context, what the snapshot's ``allocator_settings`` would list beyond
``expandable_segments``; real Python stacks.
Source: PyTorch torch/cuda/memory.py (``_snapshot``, ``_dump_snapshot``),
torch/cuda/_memory_viz.py (the reader of those dicts: ``segsum``, ``trace``, ``segment_plot``,
``trace_plot``), c10/cuda/CUDACachingAllocator.h (TraceEntry, SegmentInfo, BlockInfo).
The file holds only dicts, lists, tuples, strings, ints and bools: ``planners.layout.snapshot``
reads it back with its unpickler that refuses every class reference.
"""

from __future__ import annotations

import pickle
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from simulator.allocator import CUBLAS_WORKSPACE_BYTES, CachingAllocator, workload_events
from simulator.workload import OpSpec, TensorSpec, Workload

Frame = dict[str, Any]

DEVICE_BASE_ADDR = 0x7F00_0000_0000
"""Where the first segment starts: the model numbers addresses from 0, a device's pointers
never are 0 (nor are memory_viz's)."""


def _tensor_frame(t: TensorSpec) -> Frame:
    return {"filename": str(t.role), "line": -1 if t.layer is None else t.layer, "name": t.name}


def _op_frame(op: OpSpec) -> Frame:
    return {"filename": str(op.phase), "line": op.oid, "name": f"{op.name} ({op.kind})"}


_BEFORE = {"filename": "step", "line": 0, "name": "before the step (weights, inputs, states)"}
_NEXT = {"filename": "step", "line": 0, "name": "next step starts (zero_grad, outputs dropped)"}
_WORKSPACE = {"filename": "runtime", "line": -1, "name": "cuBLAS workspace"}


class _Frames:
    """The frames of each request key of ``workload_events``, when allocated and when freed."""

    def __init__(self, workload: Workload):
        self.tensors = workload._by_id()
        self.alloc_op: dict[int, OpSpec] = {}
        self.free_op: dict[int, OpSpec] = {}
        for op in workload.ops:
            for tid in op.allocs:
                self.alloc_op.setdefault(tid, op)
            for tid in op.frees:
                self.free_op.setdefault(tid, op)

    def of(self, key: Hashable, *, freeing: bool) -> list[Frame]:
        if not isinstance(key, tuple) or len(key) < 2 or key[0] != "t":
            return [_WORKSPACE]
        t = self.tensors[key[1]]
        ops = self.free_op if freeing else self.alloc_op
        op = ops.get(t.tid)
        if len(key) == 2:  # an initial tensor: allocated before the step
            where = _op_frame(op) if freeing and op is not None else _BEFORE
        else:
            where = _op_frame(op) if op is not None else _NEXT
        return [_tensor_frame(t), where]


def memory_snapshot(workload: Workload, *, expandable_segments: bool = False, num_steps: int = 2,
                    preallocated_bytes: Sequence[int] = (CUBLAS_WORKSPACE_BYTES,
                                                         CUBLAS_WORKSPACE_BYTES)) -> dict:
    """The snapshot dict of ``num_steps`` steps of ``workload`` under the caching allocator
    (``expandable_segments`` as ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``)."""
    events = workload_events(workload, num_steps=num_steps, preallocated_bytes=preallocated_bytes)
    alloc = CachingAllocator(expandable_segments=expandable_segments, record_history=True)
    alloc.replay(events)
    assert alloc.history is not None  # record_history
    frames = _Frames(workload)
    trace: list[dict] = []
    live_frames: dict[Hashable, list[Frame]] = {}
    segment_frames: dict[int, list[Frame]] = {}
    unclaimed: list[int] = []  # segments cudaMalloc'ed for the next request
    for n, h in enumerate(alloc.history):
        if h.action in ("alloc", "free_requested", "free_completed"):
            f = frames.of(h.key, freeing=h.action != "alloc")
            if h.action == "alloc":
                live_frames[h.key] = f
                for addr in unclaimed:
                    segment_frames[addr] = f
                unclaimed.clear()
        else:
            f = []
            if h.action in ("segment_alloc", "segment_map"):
                unclaimed.append(h.addr)
        trace.append({"action": h.action, "addr": DEVICE_BASE_ADDR + h.addr, "size": h.num_bytes, "stream": h.stream,
                      "time_us": n, "frames": f})
    segments: list[dict[str, Any]] = []
    for (stream, small), blocks in alloc.segments():
        out_blocks: list[dict[str, Any]] = []
        for addr, size, allocated, key in blocks:
            asked = alloc.requested_bytes.get(key, 0) if allocated else 0
            out_blocks.append({"address": DEVICE_BASE_ADDR + addr, "size": size, "requested_size": asked,
                               "state": "active_allocated" if allocated else "inactive",
                               "frames": live_frames.get(key, []) if allocated else []})
        used = sum(b["size"] for b in out_blocks if b["state"] == "active_allocated")
        segments.append({
            "device": 0, "address": DEVICE_BASE_ADDR + blocks[0][0], "total_size": sum(b[1] for b in blocks),
            "allocated_size": used, "active_size": used,
            "requested_size": sum(b["requested_size"] for b in out_blocks),
            "stream": stream, "segment_type": "small" if small else "large",
            "segment_pool_id": (0, 0), "is_expandable": expandable_segments,
            "frames": segment_frames.get(blocks[0][0], []), "blocks": out_blocks,
        })
    return {"segments": segments, "device_traces": [trace],
            "allocator_settings": {"expandable_segments": expandable_segments}}


def write_memory_snapshot(snapshot: dict, path: str | Path) -> None:
    """Pickle ``snapshot`` (plain data only) to ``path``, as ``_dump_snapshot`` does."""
    Path(path).write_bytes(pickle.dumps(snapshot, protocol=4))
