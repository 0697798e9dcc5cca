"""The GPU diagnostics of a plan run, as command-line flags (shared by validate/run_plan.py and
`tierplan validate plan`; importing this module imports neither torch nor the executor).

Models: nothing; flags only. ``--memory-trace`` records each case's allocator history,
``--kernel-profile`` times one extra step under torch.profiler, ``--no-cap`` runs without the
plan's budget cap, ``--expandable-segments`` starts each case's allocator with
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` (validate.run_plan.run).
"""

from __future__ import annotations

import argparse
from collections.abc import MutableMapping
from typing import Any

FLAGS = ("memory_trace", "kernel_profile", "no_cap", "expandable_segments")
ALLOC_CONF_VAR = "PYTORCH_CUDA_ALLOC_CONF"
DEFAULT_ALLOC_CONF = "expandable_segments:True"
"""The executor's allocator: plans are certified against the expandable-segments model
(planners.swap.evaluate, allocator="expandable"); the native caching allocator's fragmentation
under a cap ran plans that fit in allocated bytes out of memory (see the README)."""


def use_default_allocator(env: MutableMapping[str, str] | None = None) -> str:
    """Add ``expandable_segments:True`` to ``PYTORCH_CUDA_ALLOC_CONF`` in ``env`` (default
    ``os.environ``) unless it names ``expandable_segments`` already (the user's choice, e.g.
    ``expandable_segments:False`` for the native caching allocator); the resulting value.
    It must run before CUDA initialises: the allocator reads the variable once."""
    import os

    target: MutableMapping[str, str] = os.environ if env is None else env
    conf = target.get(ALLOC_CONF_VAR, "")
    if "expandable_segments" not in conf:
        conf = ",".join(filter(None, [conf, DEFAULT_ALLOC_CONF]))
        target[ALLOC_CONF_VAR] = conf
    return conf


def add_diagnostic_args(parser: argparse.ArgumentParser) -> None:
    diag = parser.add_argument_group(
        "diagnostics (GPU; they slow what they watch, so time runs without them)"
    )
    diag.add_argument("--memory-trace", action="store_true",
                      help="each case's allocator history, <case>.snapshot.pickle, into --out")
    diag.add_argument("--kernel-profile", action="store_true",
                      help="one extra step under torch.profiler: <case>.kernels.json into --out")
    diag.add_argument("--no-cap", action="store_true", help="run without the plan's GPU budget cap")
    diag.add_argument("--expandable-segments", action="store_true",
                      help="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True for each case (the "
                           "default unless PYTORCH_CUDA_ALLOC_CONF names expandable_segments)")


def diagnostic_kwargs(args: Any) -> dict[str, bool]:
    """The parsed flags as keyword arguments of ``validate.run_plan.run``."""
    return {name: bool(getattr(args, name)) for name in FLAGS}


def plan_script_args(doc: str, argv: Any, *, warmup: int, smoke: bool = False,
                     state_dir: bool = False) -> argparse.Namespace:
    """The arguments of a diagnostic script that runs one plan's steps (validate/scripts/
    alloc_trace.py, peak_blocks.py): the plan, ``--out``, ``--warmup`` (default ``warmup``),
    ``--repeats``, and ``--smoke`` / ``--state-dir`` where the script takes them."""
    from pathlib import Path

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("plan", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--repeats", type=int, default=1)
    if smoke:
        ap.add_argument("--smoke", action="store_true", help="the plan's tiny model on the CPU")
    if state_dir:
        ap.add_argument("--state-dir", type=Path, default=None, help="where optimizer states on nvme live")
    args = ap.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1:
        ap.error("--warmup must be at least 0 and --repeats at least 1")
    return args


def traced_plan_steps(plan_path: Any, *, warmup: int, repeats: int, smoke: bool = False,
                      frames: bool = False, state_dir: Any = None, max_entries: int = 4_000_000,
                      on_mark: Any = None) -> dict[str, Any]:
    """Run a plan's steps as ``validate.run_plan.run_case`` does (its model and batch, the
    executor, ``warmup`` + ``repeats`` steps, no budget cap) with the CUDA allocator's history
    recorded from before the model is built (Python frames of every allocation when ``frames``).
    ``on_mark(at, tracing)`` is called once the executor is prepared and after every step.
    Returns ``{"plan", "status", "message", "step_times_s", "peak_allocated_bytes",
    "peak_reserved_bytes", "prediction", "spec", "seq_len", "micro_batch", "snapshot"}``; an
    out-of-memory step ends the run with ``status`` "oom" and its trace kept."""
    from functools import partial

    import torch

    from planners.plan import load_plan
    from validate import run_plan
    from validate.executor import PlanExecutor
    from validate.model import build_model, make_batch

    plan = load_plan(plan_path)
    device = torch.device("cpu") if smoke else torch.device("cuda", 0)
    tracing = device.type == "cuda"
    spec = run_plan.spec_for_plan(plan, smoke)
    batch_size, seq_len = run_plan.tokens_for_plan(plan, smoke)
    dtype = torch.float32 if smoke else torch.bfloat16
    mark = on_mark or (lambda _at, _tracing: None)
    if tracing:
        history: dict[str, Any] = {"context": "alloc", "stacks": "python"} if frames else {"context": None}
        torch.cuda.memory._record_memory_history(max_entries=max_entries, **history)
    model = build_model(spec, device=device, dtype=dtype, seed=0)
    batch = make_batch(spec, seq_len=seq_len, batch=batch_size, device=device, dtype=dtype)
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    ex = PlanExecutor(model, plan, device=device, state_dir=state_dir)
    ex.size_pool(batch)
    ex.prepare(batch)
    mark("prepared", tracing)
    status, message, times = "ok", "", []
    try:
        times = run_plan.time_steps(
            partial(ex.step, batch), model=model, batch=batch, device=device, warmup=warmup, repeats=repeats,
            after_step=lambda i, _s: mark(f"after step {i}", tracing))
    except torch.OutOfMemoryError as err:
        status, message = "oom", (str(err).splitlines() or ["out of memory"])[0]
    snapshot: dict[str, Any] = {"segments": [], "device_traces": []}
    peaks: dict[str, int | None] = {"peak_allocated_bytes": None, "peak_reserved_bytes": None}
    if tracing:
        torch.cuda.synchronize(device)
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        peaks = {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                 "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    ex.close()
    return {"plan": str(plan_path), "status": status, "message": message, "step_times_s": times, **peaks,
            "prediction": plan.prediction.model_dump() if plan.prediction else None, "spec": spec,
            "seq_len": seq_len, "micro_batch": batch_size, "snapshot": snapshot}
