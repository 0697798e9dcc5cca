"""Replay a plan's step's exact requests on this GPU: caching allocator alone vs an Arena.

Models: nothing; this script measures. For each plan named (validate/plans/NAME.json) it builds the
plan's applied step (planners.layout.plan_buffers.load_plan_step) and replays its allocation
sequence (simulator.allocator.workload_events, two steps) with one torch.empty per request and no
kernels, first through the caching allocator alone, then with the plan's restore / recompute
buffers (``--all``: every tensor of the step) in a validate.arena.Arena planned from a recording
step; arena buffers are filled and checked at their free (none overwritten). Records peak reserved
and allocated with and without the arena, and the layout planner's predictions.
Assumes: one GPU; the wheels of pydantic on PYTHONPATH (no pulp: the arena uses heuristics only).
Ignores: kernels, streams (one stream), the executor's own allocation order.
Source: validate.arena, planners.layout.plan_buffers.

    PYTHONPATH=/tmp/site python3 validate/scripts/arena_replay_probe.py [--all] probe8-32k-memo ...
"""

import json
import os
import sys

import torch

from planners.layout.plan_buffers import compare_arena, load_plan_step, plan_buffer_tids
from simulator.allocator import workload_events
from validate.arena import Arena

dev = torch.device("cuda")
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "plans": {}}


def replay(events, tids, arena=None, check=False):
    live = {}
    for ev in events:
        tid = ev.key[1]
        if ev.action == "alloc":
            if arena is not None and tid in tids:
                t = arena.alloc(str(tid), (ev.num_bytes,), (1,), torch.uint8)
                if check:
                    t.fill_(tid % 251)
            else:
                t = torch.empty(ev.num_bytes, dtype=torch.uint8, device=dev)
            live[ev.key] = t
        else:
            t = live.pop(ev.key)
            if arena is not None and tid in tids:
                if check:
                    assert t.numel() == 0 or int(t.min()) == int(t.max()) == tid % 251, f"buffer {tid} clobbered"  # no temporaries
                arena.free(str(tid))
            del t
    live.clear()


def fresh():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


ALL = len(sys.argv) > 1 and sys.argv[1] == "--all"  # every tensor of the step in the arena, not only the plan's buffers
for name in sys.argv[2 if ALL else 1:]:
    step = load_plan_step(f"validate/plans/{name}.json")
    wl = step.workload
    tids = frozenset(t.tid for t in wl.tensors) if ALL else plan_buffer_tids(wl)
    fresh()
    replay(workload_events(wl, num_steps=2), tids)
    torch.cuda.synchronize()
    plain = (torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated())
    fresh()
    arena = Arena(dev, time_limit_s=10, use_mip=False)
    replay(workload_events(wl, num_steps=1), tids, arena)  # recording step: ordinary tensors
    fresh()
    res = arena.finish_recording()
    replay(workload_events(wl, num_steps=2), tids, arena, check=True)
    torch.cuda.synchronize()
    with_arena = (torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated())
    cmp = compare_arena(step, arena_bytes=res.peak_bytes) if not ALL else None
    if ALL:
        from planners.layout.plan import plan_workload_layout
        whole = plan_workload_layout(wl, time_limit_s=10, use_mip=False)
    row = {"num_plan_buffers": len(tids), "arena_bytes": arena.capacity_bytes, "arena_status": arena.status,
           "arena_gap": arena.gap, "arena_method": res.method,
           "measured_reserved_bytes": plain[0], "measured_allocated_bytes": plain[1],
           "measured_arena_reserved_bytes": with_arena[0], "measured_arena_allocated_bytes": with_arena[1],
           **({f"predicted_{k}": v for k, v in cmp.model_dump().items()} if cmp else
              {"workload_layout_peak_bytes": whole.peak_bytes, "workload_lower_bound_bytes": whole.lower_bound_bytes})}
    out["plans"][name] = row
    print(name, json.dumps(row), flush=True)
    del arena
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "arena_h200_all.json" if ALL else "arena_h200.json"), "w"), indent=1, sort_keys=True)
