"""What is alive on the GPU at the peak of one plan's step, by the Python line that allocated it.

Models: nothing; this script measures. It runs a plan as ``validate.scripts.alloc_trace`` does
(the plan's model and batch, the executor, its optimizer states and their ``--state-dir``,
``--warmup`` + ``--repeats`` steps, the executor's default allocator, no budget cap) with
``torch.cuda.memory._record_memory_history(context="alloc", stacks="python")`` on from before the
model is built, then replays the allocator's trace (``alloc`` adds a block, ``free_completed``
removes it) to the entry where the live bytes are highest, and groups the blocks alive there by
the innermost frame in this repository's code (and by the three innermost such frames). Writes
``--out`` as JSON: ``{"schema_version", "provenance", "plan", "result": {"peak_allocated_bytes",
"peak_reserved_bytes", "step_times_s"}, "peak": {"trace_index", "live_bytes", "at": frames of the
allocation that made the peak}, "by_line": [{"where", "bytes", "blocks"}], "by_stack": [...]}``
and the same as text beside it (``.txt``).
Assumes: one CUDA device; the trace holds every allocation of the case (``MAX_TRACE_ENTRIES``;
the script says when it does not).
Ignores: blocks whose allocation has no frame in this repository (grouped as ``<outside repo>``).
Source: torch/cuda/memory.py (``_record_memory_history``, ``_snapshot``).

    python3 validate/scripts/peak_blocks.py PLAN.json --out peak.json [--warmup 0] [--repeats 1]
        [--state-dir DIR]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from validate.diagnostics import plan_script_args, traced_plan_steps, use_default_allocator  # noqa: E402

SCHEMA_VERSION = 1
MAX_TRACE_ENTRIES = 3_000_000
TOP = 40


def _repo_frames(frames: list[dict[str, Any]]) -> list[str]:
    """The frames of one allocation inside this repository, innermost first, as ``path:line name``."""
    out = []
    for f in frames:
        name = str(f.get("filename", ""))
        if str(REPO) in name and "/scripts/peak_blocks.py" not in name:
            out.append(f"{Path(name).relative_to(REPO)}:{f.get('line')} {f.get('name')}")
    return out


def peak_of(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """Replay ``trace`` (one device's entries) to its highest live bytes; group the blocks alive there."""
    live: dict[int, tuple[int, int]] = {}  # addr -> (size, trace index of its alloc)
    live_bytes = best_bytes = 0
    best_index = -1
    best_live: dict[int, tuple[int, int]] = {}
    for i, e in enumerate(trace):
        action = e.get("action")
        if action == "alloc":
            live[e["addr"]] = (e["size"], i)
            live_bytes += e["size"]
            if live_bytes > best_bytes:
                best_bytes, best_index = live_bytes, i
                best_live = dict(live)
        elif action == "free_completed" and e["addr"] in live:
            live_bytes -= live.pop(e["addr"])[0]
    by_line: dict[str, list[int]] = {}
    by_stack: dict[str, list[int]] = {}
    for size, i in best_live.values():
        frames = _repo_frames(trace[i].get("frames") or [])
        line = frames[0] if frames else "<outside repo>"
        stack = " <- ".join(frames[:3]) if frames else "<outside repo>"
        for key, table in ((line, by_line), (stack, by_stack)):
            row = table.setdefault(key, [0, 0])
            row[0] += size
            row[1] += 1

    def ranked(table: dict[str, list[int]]) -> list[dict[str, Any]]:
        rows = sorted(table.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return [{"where": k, "bytes": v[0], "blocks": v[1]} for k, v in rows[:TOP]]

    at = _repo_frames(trace[best_index].get("frames") or []) if best_index >= 0 else []
    return {"trace_index": best_index, "trace_entries": len(trace), "live_bytes": best_bytes,
            "at": at, "by_line": ranked(by_line), "by_stack": ranked(by_stack)}


def run(plan_path: Path, *, warmup: int, repeats: int, state_dir: Path | None) -> dict[str, Any]:
    r = traced_plan_steps(plan_path, warmup=warmup, repeats=repeats, frames=True, state_dir=state_dir,
                          max_entries=MAX_TRACE_ENTRIES)
    result = {k: r[k] for k in ("status", "message", "step_times_s", "peak_allocated_bytes",
                                "peak_reserved_bytes", "prediction")}
    trace = (r["snapshot"].get("device_traces") or [[]])[0]
    return {"plan": str(plan_path), "result": result, "peak": peak_of(trace)}


def as_text(out: dict[str, Any]) -> str:
    gib = 2**30
    r, p = out["result"], out["peak"]
    lines = [f"{out['plan']}: {r['status']} {r['message']}".rstrip(),
             f"peak allocated {r['peak_allocated_bytes'] / gib:.2f} GiB, reserved "
             f"{r['peak_reserved_bytes'] / gib:.2f} GiB; trace peak {p['live_bytes'] / gib:.2f} GiB at entry "
             f"{p['trace_index']} of {p['trace_entries']}",
             "peak made by: " + " <- ".join(p["at"][:4]), "", "by line:"]
    lines += [f"  {row['bytes'] / gib:8.3f} GiB {row['blocks']:6d}  {row['where']}" for row in p["by_line"]]
    lines += ["", "by stack (3 innermost repo frames):"]
    lines += [f"  {row['bytes'] / gib:8.3f} GiB {row['blocks']:6d}  {row['where']}" for row in p["by_stack"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = plan_script_args(__doc__, argv, warmup=0, state_dir=True)
    use_default_allocator()  # before CUDA initialises
    import torch

    from kernels.microbench import provenance

    words = [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    content = run(args.plan, warmup=args.warmup, repeats=args.repeats, state_dir=args.state_dir)
    out = {"schema_version": SCHEMA_VERSION, "provenance": provenance(words, torch.device("cuda")), **content}
    if content["peak"]["trace_entries"] >= MAX_TRACE_ENTRIES:
        print(f"warning: the trace is full ({MAX_TRACE_ENTRIES} entries): its oldest allocations are lost")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    text = as_text(out)
    args.out.with_suffix(".txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
