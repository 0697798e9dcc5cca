"""The executor's real allocation / free sequence of one plan's steps, as JSON (no pickle).

Models: nothing; this script measures. It runs a plan as ``validate.run_plan.run_case`` does
(the plan's model and batch, the executor, ``--warmup`` + ``--repeats`` steps, grads set to None
before each, peak statistics reset after the warm-up) under the executor's default allocator
(``expandable_segments:True`` unless ``PYTORCH_CUDA_ALLOC_CONF`` names it), without the budget
cap (a cap would only act once reserved memory reaches it), with
``torch.cuda.memory._record_memory_history(context=None)`` on from before the model is built.
At every step boundary it records the trace's length and the allocator's statistics, so that a
comparison can cut the trace into steps. Writes ``--out``:
``{"schema_version", "provenance", "plan", "marks": [{"at", "trace_index", "allocated_bytes",
"reserved_bytes", "peak_allocated_bytes", "peak_reserved_bytes"}], "result", "snapshot":
{"segments", "device_traces"}}`` where ``snapshot`` is ``torch.cuda.memory._snapshot()`` as is
(trace entries: action alloc / free_requested / free_completed / segment_map / segment_unmap /
segment_alloc / segment_free / oom / snapshot, addr, size, stream, time_us).
Assumes: one CUDA device; ``--smoke`` runs the plan's tiny CPU copy (no trace: CPU tensors do not
go through the CUDA allocator) to check the logic.
Ignores: stack frames (context=None keeps the trace small and the steps near their speed).
Source: torch/cuda/memory.py (``_record_memory_history``, ``_snapshot``).

    python3 validate/scripts/alloc_trace.py PLAN.json --out alloc-trace.json [--warmup 1] [--repeats 1] [--smoke]
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
MAX_TRACE_ENTRIES = 4_000_000


def _mark(torch: Any, device: Any, at: str, tracing: bool) -> dict[str, Any]:
    """Where the trace stands at ``at`` (its length) and the allocator's statistics there."""
    mark: dict[str, Any] = {"at": at, "trace_index": 0}
    if device.type != "cuda":
        return mark
    torch.cuda.synchronize(device)
    if tracing:
        traces = torch.cuda.memory._snapshot()["device_traces"]
        mark["trace_index"] = len(traces[device.index or 0])
    mark.update(
        allocated_bytes=torch.cuda.memory_allocated(device),
        reserved_bytes=torch.cuda.memory_reserved(device),
        peak_allocated_bytes=torch.cuda.max_memory_allocated(device),
        peak_reserved_bytes=torch.cuda.max_memory_reserved(device),
    )
    return mark


def trace_plan(plan_path: Path, *, warmup: int, repeats: int, smoke: bool) -> dict[str, Any]:
    """Run the plan's steps and return the file's content (without provenance)."""
    import torch

    marks: list[dict[str, Any]] = []
    device = torch.device("cpu" if smoke else "cuda", None if smoke else 0)
    run = traced_plan_steps(plan_path, warmup=warmup, repeats=repeats, smoke=smoke, max_entries=MAX_TRACE_ENTRIES,
                            on_mark=lambda at, tracing: marks.append(_mark(torch, device, at, tracing)))
    spec = run["spec"]
    result = {"model": spec.name, "num_layers": spec.num_layers, "seq_len": run["seq_len"],
              "micro_batch": run["micro_batch"], "step_times_s": run["step_times_s"],
              "prediction": run["prediction"]}
    if run["status"] != "ok":
        result.update(status=run["status"], message=run["message"])
    return {"plan": str(plan_path), "marks": marks, "result": result, "snapshot": run["snapshot"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = plan_script_args(__doc__, argv, warmup=1, smoke=True)
    use_default_allocator()  # before CUDA initialises
    import torch

    from kernels.microbench import provenance

    words = [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    content = trace_plan(args.plan, warmup=args.warmup, repeats=args.repeats, smoke=args.smoke)
    device = torch.device("cpu" if args.smoke else "cuda")
    out = {"schema_version": SCHEMA_VERSION, "provenance": provenance(words, device), **content}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, default=str))
    trace = (content["snapshot"]["device_traces"] or [[]])[0]
    print(f"wrote {args.out}: {len(trace)} trace entries, marks "
          + ", ".join(f"{m['at']}@{m['trace_index']}" for m in content["marks"]))
    for m in content["marks"]:
        if "reserved_bytes" in m:
            print(f"  {m['at']}: allocated {m['allocated_bytes'] / 2**30:.2f} GiB, reserved "
                  f"{m['reserved_bytes'] / 2**30:.2f} GiB, peaks {m['peak_allocated_bytes'] / 2**30:.2f}"
                  f" / {m['peak_reserved_bytes'] / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
