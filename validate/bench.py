"""The plan benchmark: five ways to fit long sequences on one H200, planned, run and reported.

Models: nothing new; it plans with ``planners.swap.plan_training``, runs with
``validate.run_plan.run_case`` (the plan executor) or with the real
``torch.autograd.graph.save_on_cpu(pin_memory=True)``, and re-predicts with
``planners.swap.evaluate``. The grid: the 8-layer ``probe-llama7b-stack`` (no optimizer, loss
``x.float().pow(2).mean()``), 1xH200, lengths 16K..256K, two GPU budgets (``full`` = the whole
card, 48 GiB), five modes:

* ``none``: no checkpointing (strategy ``none``);
* ``checkpoint``: ``torch.utils.checkpoint`` (non-reentrant) on every layer (``full_recompute``);
* ``save_on_cpu``: the plain model forward inside PyTorch's ``save_on_cpu(pin_memory=True)``;
  its prediction is the ``offload_all`` plan (our model of it);
* ``memo``: MEMO's rule (``memo``); ``mip``: tierplan's MIP (``mip``).

Three sub-commands. ``make-plans`` (CPU) runs ``plan_training`` once per (length, budget) and
writes one plan per mode plus, per length, the ``none`` plan of the largest L <= 8 layers whose
predicted peak fits the full card (the ideal: ``8 * t(L) / L``), and ``index.json`` (every cell:
its plan file or why there is none; predictions; model FLOPs). Plans are made for PyTorch's
caching allocator (``allocator="caching"``: the cap the run sets with
``torch.cuda.set_per_process_memory_fraction`` bounds reserved bytes, so a plan fits only when
the allocator model, capped, serves every request) and a GPU budget ``PLANNING_MARGIN_FRAC``
below that cap (the executor's own transients: kept-row copies, row-recompute workspaces). ``run`` (GPU; ``--smoke`` on the CPU with a tiny model) runs the cells in one process,
caps the GPU per cell, refuses a cell whose predicted peak HBM is over the cap or whose
predicted host peak is over the host memory available, and writes ``bench-measured.json``.
``report`` (CPU) re-predicts every measured cell from its committed plan with the current
cost model and prints/writes the table.

``--model`` picks the stack (default ``probe-llama7b-stack``; the committed grids are
``validate/plans/bench`` for it and ``validate/plans/bench-<model>`` for the 8-layer stacks of
Qwen2-7B, Mistral-7B and Llama-3-8B shapes). ``--allocator`` says which PyTorch allocator the
plans are certified for: ``expandable`` (``expandable_segments:True``, what ``run`` sets unless
``PYTORCH_CUDA_ALLOC_CONF`` names ``expandable_segments`` already; the default for every model
but the old one) or ``caching`` (the native allocator: the old grid's plans, kept as measured).

Assumes: one GPU; the device has no pulp (``run`` imports neither pulp nor the planners' solver
code); a long step (predicted, or for ``save_on_cpu`` the measured warm-up, above
``--max-step-s``) is timed once.
Ignores: optimizer steps, data loading, the pinned host allocator's rounding in the host peak
of ``save_on_cpu`` (the bytes of its packed tensors are counted; the allocator's own peak is
recorded beside it on CUDA).
Source: MEMO (Zhao et al., SIGMOD 2025) for the rule and the benchmark's shape; PyTorch's
``torch.autograd.graph.save_on_cpu``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from hwmodels.limits import MAX_REPEATS, MAX_SECONDS, MAX_TIME_LIMIT_S  # noqa: E402
from hwmodels.outputs import OutputSet  # noqa: E402
from hwmodels.records import as_dicts  # noqa: E402
from hwmodels.units import (  # noqa: E402
    TFLOPS,
    GiB,
    MiB,
    UserInputError,
    format_bytes,
    parse_bytes,
    parse_count,
    parse_float,
    parse_int,
)
from hwmodels.userfile import read_user_json  # noqa: E402
from validate.records import BenchFile, load_record_file  # noqa: E402

MODEL = "probe-llama7b-stack"
"""The default stack: the first benchmark's (its plans in validate/plans/bench)."""
NUM_LAYERS = 8
ALLOCATOR_CHOICES = ("caching", "expandable")
NODE = "1xH200"
LENGTHS = ("16K", "32K", "64K", "128K", "256K")
BUDGETS = ("full", "48GiB")
MODES = ("none", "checkpoint", "save_on_cpu", "memo", "mip")
MODE_STRATEGY = {
    "none": "none",
    "checkpoint": "full_recompute",
    "save_on_cpu": "offload_all",
    "memo": "memo",
    "mip": "mip",
}
PLANNING_MARGIN_FRAC = 0.02
"""Plans are made for (1 - this) x the cap the run enforces: the cap bounds reserved bytes
(allocated + the caching allocator's slack), a plan bounds allocated bytes."""
HOST_BUDGET_BYTES = 96 * GiB
"""Host budget for planning: the device host has ~125 GiB; the process needs the rest."""
USABLE_CARD_BYTES = 139 * GiB
"""What ``full`` means for the grids after the first: the H200's 139.8 GiB that torch reports
(``total_memory``) less the CUDA context and the libraries' workspaces outside the allocator,
not the 140.4 GiB of the node preset (nvidia-smi's total). The first grid kept the preset's."""
MIP_TIME_LIMIT_S = 10.0
INDEX = "index.json"
MEASURED = "bench-measured.json"
INDEX_SCHEMA_VERSION = 1


# ---- grid --------------------------------------------------------------------------------------
def parse_lengths(text: str) -> list[int]:
    out = [parse_count(v.strip(), field="--lengths") for v in text.split(",") if v.strip()]
    if not out:
        raise UserInputError(f"--lengths: expected lengths such as 16K,32K, got {text!r}")
    return out


def parse_budgets(text: str) -> list[str]:
    """Budget labels (``full`` or a size); each checked, returned in canonical form."""
    out = []
    for v in (v.strip() for v in text.split(",")):
        if not v:
            continue
        if v == "full":
            out.append("full")
            continue
        num = parse_bytes(v, field="--budgets")
        if num <= 0:
            raise UserInputError(f"--budgets: {v!r} must be above 0 bytes")
        out.append(budget_label(num))
    if not out:
        raise UserInputError("--budgets: no budget given")
    return out


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise UserInputError(f"--modes: unknown {m!r} (choose from {', '.join(MODES)})")
    if not modes:
        raise UserInputError("--modes: no mode given")
    return modes


def budget_label(num_bytes: int) -> str:
    """``48g`` for whole GiB, else ``<n>m`` (MiB); the file-name form of a budget."""
    if num_bytes % GiB == 0:
        return f"{num_bytes // GiB}g"
    return f"{math.ceil(num_bytes / MiB)}m"


def budget_bytes(label: str, card_bytes: int) -> int:
    """The cap of a budget label: the whole card for ``full``."""
    if label == "full":
        return card_bytes
    return parse_bytes(label.replace("g", "GiB").replace("m", "MiB"), field="budget")


def length_label(seq_len: int) -> str:
    return f"{seq_len // 1024}k" if seq_len % 1024 == 0 else str(seq_len)


def plan_prefix(model: str) -> str:
    """File-name stem of a model's plans: ``probe`` for the default stack (its committed names)."""
    return "probe" if model == MODEL else model


def default_allocator(model: str) -> str:
    """The allocator a model's bench plans are made for: the old grid's ``caching`` (kept as it
    was measured), ``expandable`` for every other (what the executor runs under)."""
    return "caching" if model == MODEL else "expandable"


def plan_name(num_layers: int, seq_len: int, budget: str, strategy: str, model: str = MODEL) -> str:
    return f"{plan_prefix(model)}{num_layers}-{length_label(seq_len)}-{budget}-{strategy}.json"


def _predicted(res: Any) -> dict[str, Any] | None:
    if res.step_time_s is None:
        return None
    return {
        "step_time_s": res.step_time_s,
        "peak_hbm_bytes": res.peak_hbm_bytes,
        "peak_reserved_bytes": getattr(res, "peak_reserved_bytes", None),
        "peak_host_bytes": res.peak_host_bytes,
    }


# ---- make-plans ----------------------------------------------------------------------------------
def make_plans(
    out_dir: str | Path,
    *,
    lengths: list[int],
    budgets: list[str],
    time_limit_s: float = MIP_TIME_LIMIT_S,
    progress: bool = True,
    model_name: str = MODEL,
    modes: Sequence[str] = MODES,
    allocator: str | None = None,
) -> dict[str, Any]:
    """Plan every (length, budget), write the plan files and ``index.json``; the index.
    ``allocator`` (default ``default_allocator(model_name)``): the planner's allocator option."""
    from hwmodels.catalog import load_node
    from planners import baselines
    from planners.plan import write_plan
    from planners.swap import PlanContext, evaluate, plan_training
    from simulator.job import TrainJob
    from simulator.model import get_model

    node = load_node(NODE)
    card = node.gpu.hbm_capacity_bytes
    if model_name != MODEL:
        card = min(card, USABLE_CARD_BYTES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    ideals: list[dict[str, Any]] = []
    written: dict[str, str] = {}
    allocator = allocator or default_allocator(model_name)
    if allocator not in ALLOCATOR_CHOICES:
        raise UserInputError(f"--allocator: {allocator!r} is not one of {', '.join(ALLOCATOR_CHOICES)}")
    model = get_model(model_name).with_layers(NUM_LAYERS)

    def write(plan: Any, name: str) -> str:
        text = plan.to_json()
        if written.get(name, text) != text:
            raise RuntimeError(f"{name}: two different plans for one file name")
        written[name] = text
        write_plan(plan, out / name)
        return name

    for seq_len in lengths:
        job = TrainJob(seq_len=seq_len, optimizer="none", loss="mean_square_fp32")
        for budget in budgets:
            cap = budget_bytes(budget, card)
            planning = int(cap * (1.0 - PLANNING_MARGIN_FRAC))
            t0 = time.perf_counter()
            rep = plan_training(
                model,
                job,
                node,
                gpu_budget_bytes=planning,
                host_budget_bytes=HOST_BUDGET_BYTES,
                time_limit_s=time_limit_s,
                allocator=allocator,
            )
            for mode in modes:
                res = rep.result(MODE_STRATEGY[mode])
                name = None
                if res.plan is not None:
                    name = write(res.plan, plan_name(NUM_LAYERS, seq_len, budget, res.name, model_name))
                cells.append(
                    {
                        "seq_len": seq_len,
                        "budget": budget,
                        "budget_bytes": cap,
                        "planning_budget_bytes": planning,
                        "mode": mode,
                        "strategy": res.name,
                        "plan": name,
                        "feasible": res.feasible,
                        "reason": res.reason,
                        "predicted": _predicted(res),
                        "model_flops": res.replay.model_flops if res.replay else None,
                    }
                )
            if progress:
                print(
                    f"planned {length_label(seq_len)} {budget}: {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        # the ideal: no checkpointing on as many layers as fit the full card
        planning = int(card * (1.0 - PLANNING_MARGIN_FRAC))
        ideal: dict[str, Any] = {
            "seq_len": seq_len,
            "budget_bytes": card,
            "num_layers": None,
            "plan": None,
            "predicted": None,
            "reason": "",
        }
        for num_layers in range(NUM_LAYERS, 0, -1):
            ctx = PlanContext(
                model=get_model(model_name).with_layers(num_layers),
                job=job,
                node=node,
                gpu_budget_bytes=planning,
                host_budget_bytes=HOST_BUDGET_BYTES,
                allocator=allocator,
            )
            layers, _ = baselines.BASELINES["none"](ctx)
            assert layers is not None  # keeping everything is always a plan
            res = evaluate(ctx, "none", layers)
            if res.feasible:
                assert res.replay is not None  # evaluate() replays every plan
                ideal.update(
                    num_layers=num_layers,
                    plan=write(res.plan, plan_name(num_layers, seq_len, "full", "none", model_name)),
                    predicted=_predicted(res),
                    model_flops=res.replay.model_flops,
                )
                break
            ideal["reason"] = f"{num_layers} layers: {res.reason}"
        else:
            ideal["reason"] = f"not even 1 layer fits: {ideal['reason']}"
        if ideal["plan"]:
            ideal["reason"] = ""
        ideals.append(ideal)
    index = {
        "schema_version": INDEX_SCHEMA_VERSION,
        "model": model_name,
        "num_layers": NUM_LAYERS,
        "node": NODE,
        "card_bytes": card,
        "planning_margin_frac": PLANNING_MARGIN_FRAC,
        "host_budget_bytes": HOST_BUDGET_BYTES,
        "mip_time_limit_s": time_limit_s,
        "cells": cells,
        "ideal": ideals,
    }
    if model_name != MODEL:  # the old index stays byte-identical
        index.update(allocator=allocator, modes=list(modes))
    (out / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def load_index(plans_dir: str | Path) -> dict[str, Any]:
    path = Path(plans_dir) / INDEX
    if not Path(plans_dir).is_dir():
        raise UserInputError(f"--plans: {plans_dir} is not a directory (run make-plans first)")
    try:
        index = read_user_json(path)
    except UserInputError as err:
        raise UserInputError(f"--plans: cannot read the index: {err}") from None
    if not isinstance(index, dict):
        raise UserInputError(f"--plans: {path}: expected a JSON object")
    if index.get("schema_version") != INDEX_SCHEMA_VERSION:
        raise UserInputError(f"{path}: schema_version: expected {INDEX_SCHEMA_VERSION}")
    return index


# ---- run ---------------------------------------------------------------------------------------
def _cell_record(cell: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "seq_len": cell["seq_len"],
        "budget": cell.get("budget", "full"),
        "budget_bytes": cell["budget_bytes"],
        "mode": mode,
        "plan": cell["plan"],
        "num_layers": cell.get("num_layers") or NUM_LAYERS,
        "predicted": cell["predicted"],
        "model_flops": cell.get("model_flops"),
    }


def step_key(plan: Any) -> str:
    """What a plan makes the executor do, without its budgets, provenance and prediction: two
    plans with one key run the same step."""
    data = plan.model_dump(mode="json")
    for k in ("provenance", "prediction", "scenario_sha256"):
        data.pop(k, None)
    for k in ("gpu_budget_bytes", "host_budget_bytes"):
        data["scenario"].pop(k, None)
    return json.dumps(data, sort_keys=True)


def _refusal(plan: Any, cap_bytes: int, host_available_bytes: int) -> str | None:
    """Why a plan cannot run under ``cap_bytes`` on this host (its own prediction), or None."""
    from hwmodels.units import format_bytes
    from validate.executor import check_fits

    try:
        check_fits(
            plan,
            num_layers=len(plan.layers),
            gpu_budget_bytes=cap_bytes,
            host_available_bytes=host_available_bytes,
        )
    except UserInputError as err:
        return str(err)
    pred = plan.prediction
    if pred is not None and pred.peak_host_bytes > host_available_bytes:
        return (
            f"plan.prediction.peak_host_bytes: {format_bytes(pred.peak_host_bytes)} exceeds "
            f"available host memory {format_bytes(host_available_bytes)}"
        )
    return None


def run_save_on_cpu(
    label: str,
    plan: Any,
    *,
    device: Any,
    warmup: int,
    repeats: int,
    max_step_s: float,
    smoke: bool,
) -> dict[str, Any]:
    """The plain model under ``torch.autograd.graph.save_on_cpu(pin_memory=True)``, timed as
    ``run_plan.run_case`` times a plan; never raises for an OOM."""
    import torch

    from validate import run_plan
    from validate.model import build_model, make_batch

    spec = run_plan.spec_for_plan(plan, smoke)
    batch_size, seq_len = run_plan.tokens_for_plan(plan, smoke)
    dtype = torch.float32 if smoke else torch.bfloat16
    cuda = device.type == "cuda"
    case: dict[str, Any] = {"case": label, "seq_len": seq_len}
    where = ["setup"]
    model = batch = None
    try:
        model = build_model(spec, device=device, dtype=dtype, seed=0)
        batch = make_batch(spec, seq_len=seq_len, batch=batch_size, device=device, dtype=dtype)
        host_bytes = [0]
        host_peak_bytes = 0

        def step(model: Any = model, batch: Any = batch) -> None:
            nonlocal host_peak_bytes
            hooks = torch.autograd.graph.save_on_cpu(pin_memory=True)
            pack = hooks.pack_hook
            host_bytes[0] = 0

            def counting_pack(t: Any) -> Any:
                dev, packed = pack(t)
                host_bytes[0] += packed.numel() * packed.element_size()
                return dev, packed

            hooks.pack_hook = counting_pack
            with hooks:
                loss = model(batch)
            host_peak_bytes = max(host_peak_bytes, host_bytes[0])
            loss.backward()

        times = run_plan.time_steps(
            step, model=model, batch=batch, device=device, warmup=warmup, repeats=repeats,
            max_step_s=max_step_s, where=where,
        )
        case.update(
            status="ok",
            step_time_s=statistics.median(times),
            step_times_s=times,
            host_pool_peak_bytes=host_peak_bytes,
        )
        if cuda:
            case.update(
                peak_allocated_bytes=torch.cuda.max_memory_allocated(device),
                peak_reserved_bytes=torch.cuda.max_memory_reserved(device),
            )
            if hasattr(torch.cuda, "host_memory_stats"):
                stats = torch.cuda.host_memory_stats()
                case["host_allocator_peak_bytes"] = stats.get("allocated_bytes.all.peak")
    except RuntimeError as err:  # torch.OutOfMemoryError, or cudaHostAlloc failing for pins
        first = str(err).splitlines()[0] if str(err) else "out of memory"
        if not isinstance(err, torch.OutOfMemoryError) and "out of memory" not in first.lower():
            raise
        case.update(status="oom", message=f"{label}: out of memory at {where[0]}: {first}")
    finally:
        del model, batch
        run_plan.free_device_memory(device)
    return case


MEASURED_KEYS = (
    "status",
    "message",
    "step_time_s",
    "step_times_s",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "host_pool_bytes",
    "host_pool_peak_bytes",
    "host_allocator_peak_bytes",
    "copy_stats",
)
LEAK_TOLERANCE_BYTES = 256 * 2**20
"""After a cell, memory still allocated beyond this over what was allocated before it means the
cell's tensors were not given back (seen on the H200 after an out-of-memory step: +32 GiB
in the cells that followed): the run stops measuring rather than report inflated peaks."""


@dataclass(frozen=True)
class BenchRun:
    """What one `run_bench` call runs, how, and where it writes."""

    plans_dir: str | Path
    """A directory written by `make_plans` (its index names every cell's plan)."""
    out_dir: str | Path
    """Where the measured file goes (not created on a dry run)."""
    lengths: Sequence[int] | None = None
    """Sequence lengths to run (default: every planned one)."""
    budgets: Sequence[str] | None = None
    """Budget labels to run (default: every planned one)."""
    modes: Sequence[str] | None = None
    """Modes to run (default: `MODES`)."""
    warmup: int = 1
    """Untimed steps before the timed ones."""
    repeats: int = 3
    """Timed steps (1 for a cell predicted to take longer than max_step_s)."""
    max_step_s: float = 20.0
    ideal: bool = True
    """Also run the ideal (no budget) plan of each length."""
    smoke: bool = False
    """Tiny model on the CPU."""
    dry_run: bool = False
    """Run nothing, write nothing; each cell that would run gets ``status: planned`` and
    ``estimated_s`` = its timed steps x its predicted step time (setup not counted)."""
    host_available_bytes: int | None = None
    """Host memory the refusal check assumes (default: this machine's)."""
    argv: list[str] | None = None
    """The command line recorded in the provenance (default: ``sys.argv``)."""


def _bench_device(run: BenchRun) -> Any:
    import torch

    if run.warmup < 0 or run.repeats < 1:
        raise UserInputError("--repeats: must be at least 1 (and --warmup at least 0)")
    if run.smoke or run.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserInputError("bench run: no CUDA device here (use --smoke for a CPU check)")
    return torch.device("cuda", torch.cuda.current_device())


def _selection(run: BenchRun, index: dict[str, Any]) -> tuple[list[int], list[str], list[str]]:
    """The lengths, budgets and modes to run, each checked against what was planned."""
    from planners.plan import load_plan

    plans = Path(run.plans_dir)
    known_lengths = sorted({c["seq_len"] for c in index["cells"]})
    known_budgets = list(dict.fromkeys(c["budget"] for c in index["cells"]))
    lengths = list(run.lengths or known_lengths)
    budgets = list(run.budgets or known_budgets)
    modes = list(run.modes or index.get("modes", MODES))
    for n in lengths:
        if n not in known_lengths:
            raise UserInputError(f"--lengths: {n} tokens not planned in {plans / INDEX}")
    for b in budgets:
        if b not in known_budgets:
            raise UserInputError(f"--budgets: {b!r} not planned in {plans / INDEX}")
    known_modes = {c["mode"] for c in index["cells"]}
    for m in modes:
        if m not in known_modes:
            raise UserInputError(f"--modes: {m!r} not planned in {plans / INDEX}")
    for c in index["cells"]:  # a missing plan stops the run before any cell
        if c["plan"]:
            load_plan(plans / c["plan"])
    return lengths, budgets, modes


class _BenchCells:
    """Runs cells one at a time in this process and rewrites the measured file after each."""

    def __init__(self, run: BenchRun, index: dict[str, Any], device: Any):
        from kernels.microbench import provenance

        self.run, self.device = run, device
        self.plans, self.out = Path(run.plans_dir), Path(run.out_dir)
        self.leaked: dict[str, Any] = {"bytes": 0, "why": ""}
        self.allocator = index.get("allocator", "caching")
        self.ran: list[tuple[dict[str, Any], str]] = []  # measured records and their step_key
        if not run.dry_run:
            self.out.mkdir(parents=True, exist_ok=True)
        self.cells: list[dict[str, Any]] = []
        self.measured = {
            "provenance": provenance(run.argv if run.argv is not None else sys.argv, device),
            "plans_index": {
                k: index[k]
                for k in (
                    "model",
                    "num_layers",
                    "node",
                    "card_bytes",
                    "planning_margin_frac",
                    "host_budget_bytes",
                    "allocator",
                )
                if k in index
            },
            "warmup": run.warmup,
            "repeats": run.repeats,
            "max_step_s": run.max_step_s,
            "smoke": run.smoke,
            "cells": self.cells,
        }

    def cap(self, fraction_bytes: int) -> None:
        """Cap this process's device memory at ``fraction_bytes`` (no-op on the CPU)."""
        import torch

        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, fraction_bytes / total), self.device)

    def one(self, cell: dict[str, Any], mode: str, label: str) -> dict[str, Any]:
        """The record of one cell: refused, planned (dry run), skipped (after a leak) or run."""
        from planners.plan import load_plan
        from validate.executor import host_memory_bytes

        run = self.run
        rec = _cell_record(cell, mode)
        if not cell["plan"]:
            rec.update(status="refused", message=f"{label}: no plan: {cell['reason']}")
            return rec
        plan = load_plan(self.plans / cell["plan"])
        host = host_memory_bytes() if run.host_available_bytes is None else run.host_available_bytes
        why = _refusal(plan, cell["budget_bytes"], host)
        if why:
            rec.update(status="refused", message=f"{label}: {why}")
            return rec
        same = self.same_step(plan, cell["budget_bytes"])
        if same is not None:
            rec.update({k: same[k] for k in MEASURED_KEYS if k in same},
                       reused_from=f"{same['budget']} {same['mode']}")
            return rec
        predicted_s = plan.prediction.step_time_s if plan.prediction else 0.0
        reps = 1 if predicted_s > run.max_step_s else run.repeats
        if run.dry_run:
            rec.update(status="planned", estimated_s=(run.warmup + reps) * predicted_s)
            self.ran.append((rec, step_key(plan)))
            return rec
        if self.leaked["bytes"]:
            rec.update(status="skipped", message=f"{label}: not measured: {self.leaked['why']}")
            return rec
        self.cap(cell["budget_bytes"] if cell.get("budget", "full") != "full" else 1 << 62)
        self._measure(rec, plan, mode, label, reps)
        return rec

    def same_step(self, plan: Any, cap_bytes: int) -> dict[str, Any] | None:
        """An earlier record of this run that ran the same step (``step_key``) and whose peak
        reserved memory fits under ``cap_bytes``, so that the cap changes nothing (plans for
        expandable segments only: under that allocator a cap acts only when reserved memory
        reaches it); None if there is none."""
        if self.allocator != "expandable":
            return None
        key = step_key(plan)
        for rec, k in self.ran:
            ok = rec["status"] in ("ok", "planned")
            fits = rec["status"] == "planned" or (rec.get("peak_reserved_bytes") or cap_bytes + 1) <= cap_bytes
            if k == key and ok and fits and not rec.get("reused_from"):
                return rec
        return None

    def _measure(self, rec: dict[str, Any], plan: Any, mode: str, label: str, reps: int) -> None:
        """Time the cell's plan into ``rec``; a cell that leaves memory allocated stops the rest."""
        import torch

        from validate import run_plan

        run, device = self.run, self.device
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t0 = time.perf_counter()
        if mode == "save_on_cpu":
            case = run_save_on_cpu(
                label,
                plan,
                device=device,
                warmup=run.warmup,
                repeats=reps,
                max_step_s=run.max_step_s,
                smoke=run.smoke,
            )
        else:
            case = run_plan.run_case(
                label, plan, device=device, warmup=run.warmup, repeats=reps, smoke=run.smoke
            )
        rec["wall_s"] = time.perf_counter() - t0
        rec.update({k: case[k] for k in MEASURED_KEYS if k in case})
        self.ran.append((rec, step_key(plan)))
        if device.type == "cuda":
            run_plan.free_device_memory(device)
            left = torch.cuda.memory_allocated(device) - before
            if left > LEAK_TOLERANCE_BYTES:
                self.leaked["bytes"] = left
                self.leaked["why"] = (f"{format_bytes(left)} of cell {label} ({rec['status']}) "
                                      "still allocated after it; rerun the remaining cells in a "
                                      "new process")
                rec["leaked_bytes"] = left

    def emit(self, rec: dict[str, Any]) -> None:
        """Keep ``rec``; outside a dry run, print its summary and rewrite the measured file."""
        self.cells.append(rec)
        if self.run.dry_run:
            return
        line = {
            k: rec.get(k)
            for k in (
                "seq_len",
                "budget",
                "mode",
                "num_layers",
                "status",
                "step_time_s",
                "peak_allocated_bytes",
                "message",
            )
        }
        print(json.dumps(line), file=sys.stderr, flush=True)
        # rewritten after every cell: a run cut short still leaves every finished cell
        (self.out / MEASURED).write_text(
            BenchFile.model_validate(self.measured).to_json(sort_keys=True)
        )

    def ideal(self, icell: dict[str, Any], seq_len: int) -> None:
        """The ideal plan of a length: the none cell on the full card when it already is it."""
        same = next(
            (
                c
                for c in self.cells
                if c["mode"] == "none"
                and c["plan"] == icell["plan"]
                and c["seq_len"] == seq_len
                and c["status"] in ("ok", "planned")
            ),
            None,
        )
        if same is not None:
            self.emit({**same, "mode": "ideal", "budget": "full", "reused_from": "none"})
        else:
            self.emit(self.one(icell, "ideal", f"{length_label(seq_len)}-full-ideal"))


def run_bench(run: BenchRun) -> dict[str, Any]:
    """Run the selected cells (and the ideal per length) in this process; write the file.
    On the GPU the process's allocator is ``expandable_segments:True`` unless
    ``PYTORCH_CUDA_ALLOC_CONF`` says otherwise (``validate.diagnostics.use_default_allocator``;
    effective only when CUDA has not initialised yet, as from ``main``)."""
    from validate.diagnostics import use_default_allocator

    index = load_index(run.plans_dir)
    if not (run.smoke or run.dry_run):
        use_default_allocator()
    device = _bench_device(run)
    lengths, budgets, modes = _selection(run, index)
    cells_by_key = {(c["seq_len"], c["budget"], c["mode"]): c for c in index["cells"]}
    ideal_by_len = {c["seq_len"]: c for c in index["ideal"]}
    bench = _BenchCells(run, index, device)
    for seq_len in lengths:
        for budget in budgets:
            for mode in modes:
                cell = cells_by_key[(seq_len, budget, mode)]
                bench.emit(bench.one(cell, mode, f"{length_label(seq_len)}-{budget}-{mode}"))
        if run.ideal:
            bench.ideal(ideal_by_len[seq_len], seq_len)
    bench.cap(1 << 62)
    return bench.measured


# ---- report ------------------------------------------------------------------------------------
def repredict(plan_path: Path) -> dict[str, Any]:
    """Replay a committed plan's layers with the current cost model and the current measured
    profile of its node (``Scenario.with_current_profile``)."""
    from planners.plan import load_plan
    from planners.swap import PlanContext, evaluate

    plan = load_plan(plan_path)
    plan = plan.model_copy(update={"scenario": plan.scenario.with_current_profile()})
    ctx = PlanContext.from_plan(plan, source=str(plan_path))
    res = evaluate(ctx, plan.provenance.planner, plan.layers)
    predicted = _predicted(res)
    assert predicted is not None and res.replay is not None  # evaluate() replays every plan
    return {**predicted, "model_flops": res.replay.model_flops,
            "recompute_s": res.replay.recompute_s}


def repredict_index(plans_dir: str | Path) -> list[tuple[str, str, Any, Any]]:
    """Rewrite ``index.json``'s predicted figures of every planned cell and ideal with the current
    cost model (the plans' decisions unchanged); returns (plan, figure, old, new) of each change."""
    plans = Path(plans_dir)
    index = load_index(plans)
    changed: list[tuple[str, str, Any, Any]] = []
    cache: dict[str, dict[str, Any]] = {}
    for c in [*index["cells"], *index["ideal"]]:
        if not c.get("plan") or not c.get("predicted"):
            continue
        pred = cache.setdefault(c["plan"], repredict(plans / c["plan"]))
        for key, old in c["predicted"].items():
            if pred[key] != old:
                changed.append((c["plan"], key, old, pred[key]))
                c["predicted"][key] = pred[key]
    (plans / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return changed


def _err(pred: float | None, meas: float | None) -> float | None:
    if pred is None or not meas:
        return None
    return pred / meas - 1.0


REPORT_HOST_AVAILABLE_BYTES = 120 * GiB
"""Host memory the report's refusals of unmeasured cells assume (what the H200 runs gave)."""


def _unmeasured(plans: Path, measured: set[tuple]) -> dict[tuple, dict[str, Any]]:
    """Index cells no measured file has: refused (no plan, or the plan's own prediction over
    the cap or the host), or ``not run``."""
    from planners.plan import load_plan

    index = load_index(plans)
    out: dict[tuple, dict[str, Any]] = {}
    for cell in index["cells"]:
        key = (cell["seq_len"], cell["budget"], cell["mode"])
        if key in measured:
            continue
        rec = _cell_record(cell, cell["mode"])
        label = f"{length_label(cell['seq_len'])}-{cell['budget']}-{cell['mode']}"
        if not cell["plan"]:
            rec.update(status="refused", message=f"{label}: no plan: {cell['reason']}")
        else:
            why = _refusal(load_plan(plans / cell["plan"]), cell["budget_bytes"],
                           REPORT_HOST_AVAILABLE_BYTES)
            rec.update(status="refused" if why else "not run",
                       message=f"{label}: {why}" if why else None)
        out[key] = rec
    return out


def report_rows(measured_files: list[str | Path], plans_dir: str | Path) -> dict[str, Any]:
    """Merge measured files (a later one replaces a cell of an earlier one) and re-predict; the
    index's other cells are listed as refused (with the reason) or not run."""
    merged: dict[tuple, dict[str, Any]] = {}
    provs = []
    for f in measured_files:
        data = load_record_file(f, BenchFile, field="--measured", what="a bench-measured file")
        cells = as_dicts(data.cells)
        provs.append(data.provenance.model_dump(mode="json", exclude_unset=True))
        after_oom = False
        for c in cells:
            key = (c["seq_len"], c["budget"], c["mode"])
            # an out-of-memory step may leave its tensors allocated (runs before the leak check
            # existed): what the same process measured after it replaces no cleaner record
            if after_oom and key in merged:
                continue
            merged[key] = {**c, "after_oom": True} if after_oom else c
            after_oom = after_oom or c.get("status") == "oom"
    plans = Path(plans_dir)
    if not plans.is_dir():
        raise UserInputError(f"--plans: {plans} is not a directory")
    merged.update(_unmeasured(plans, set(merged)))
    ideal_s: dict[int, float] = {}
    full_layers = load_index(plans).get("num_layers", NUM_LAYERS)
    for (seq_len, _, mode), c in merged.items():
        if mode == "ideal" and c.get("status") == "ok":
            ideal_s[seq_len] = full_layers * c["step_time_s"] / c["num_layers"]
    rows = []
    cache: dict[str, dict[str, Any]] = {}
    for key in sorted(
        merged, key=lambda k: (k[0], k[1] != "full", k[1], ([*MODES, "ideal"]).index(k[2]))
    ):
        c = merged[key]
        seq_len, budget, mode = key
        pred = None
        if c.get("plan") and c.get("status") != "not run":
            path = plans / c["plan"]
            if not path.is_file():
                raise UserInputError(
                    f"--plans: {path} is missing (measured cell {seq_len} {budget} {mode})"
                )
            pred = cache.setdefault(c["plan"], repredict(path))
        ok = c.get("status") == "ok"
        step = c.get("step_time_s") if ok else None
        ckpt = merged.get((seq_len, budget, "checkpoint"), {})
        ckpt_s = ckpt.get("step_time_s") if ckpt.get("status") == "ok" else None
        flops = pred["model_flops"] if pred else None  # of the plan's own layers
        rows.append(
            {
                "seq_len": seq_len,
                "budget": budget,
                "mode": mode,
                "num_layers": c["num_layers"],
                "status": c.get("status"),
                "message": c.get("message"),
                "after_oom": bool(c.get("after_oom")),
                "step_time_s": step,
                "model_tflops_per_s": flops / step / TFLOPS if (flops and step) else None,
                "ideal_step_s": ideal_s.get(seq_len),
                "x_ideal": ideal_s[seq_len] / step if (step and seq_len in ideal_s) else None,
                "x_checkpoint": ckpt_s / step if (step and ckpt_s) else None,
                "peak_allocated_bytes": c.get("peak_allocated_bytes") if ok else None,
                "peak_reserved_bytes": c.get("peak_reserved_bytes") if ok else None,
                "host_peak_bytes": c.get("host_pool_peak_bytes") if ok else None,
                "predicted_step_s": pred["step_time_s"] if pred else None,
                "predicted_peak_hbm_bytes": pred["peak_hbm_bytes"] if pred else None,
                "predicted_peak_host_bytes": pred["peak_host_bytes"] if pred else None,
                "predicted_peak_reserved_bytes": pred["peak_reserved_bytes"] if pred else None,
                "recompute_s": (c.get("copy_stats") or {}).get("recompute_s") if ok else None,
                "predicted_recompute_s": pred.get("recompute_s") if pred else None,
                "step_err": _err(pred["step_time_s"] if pred else None, step),
                "peak_err": _err(
                    pred["peak_hbm_bytes"] if pred else None,
                    c.get("peak_allocated_bytes") if ok else None,
                ),
                "reserved_err": _err(
                    pred["peak_reserved_bytes"] if pred else None,
                    c.get("peak_reserved_bytes") if ok else None,
                ),
                "reused_from": c.get("reused_from"),
            }
        )
    return {
        "provenance": provs,
        "ideal_step_s": {str(k): v for k, v in ideal_s.items()},
        "rows": rows,
    }


COLUMNS = (
    ("length", lambda r: length_label(r["seq_len"]).upper()),
    ("budget", lambda r: r["budget"]),
    ("mode", lambda r: r["mode"] + (f" (L={r['num_layers']})" if r["mode"] == "ideal" else "")),
    ("status", lambda r: r["status"] or ""),
    ("step s", lambda r: _f(r["step_time_s"], "{:.3f}")),
    ("model TFLOP/s", lambda r: _f(r["model_tflops_per_s"], "{:.0f}")),
    ("x ideal", lambda r: _f(r["x_ideal"], "{:.2f}")),
    ("x checkpoint", lambda r: _f(r["x_checkpoint"], "{:.2f}")),
    ("peak alloc GiB", lambda r: _f(r["peak_allocated_bytes"], "{:.1f}", GiB)),
    ("reserved GiB", lambda r: _f(r["peak_reserved_bytes"], "{:.1f}", GiB)),
    ("host GiB", lambda r: _f(r["host_peak_bytes"], "{:.1f}", GiB)),
    ("pred step s", lambda r: _f(r["predicted_step_s"], "{:.3f}")),
    ("err %", lambda r: _f(r["step_err"], "{:+.1f}", 0.01)),
    ("pred peak GiB", lambda r: _f(r["predicted_peak_hbm_bytes"], "{:.1f}", GiB)),
    ("peak err %", lambda r: _f(r["peak_err"], "{:+.1f}", 0.01)),
    ("pred reserved GiB", lambda r: _f(r["predicted_peak_reserved_bytes"], "{:.1f}", GiB)),
    ("reserved err %", lambda r: _f(r.get("reserved_err"), "{:+.1f}", 0.01)),
)


def _f(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if value is None else fmt.format(value / scale)


def print_estimate(cells: list[dict[str, Any]]) -> None:
    """The --dry-run table: what would run, what would be refused, and the GPU seconds."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bench run --dry-run (seconds: timed steps x predicted step)")
    for name in ("length", "budget", "mode", "layers", "would", "pred step s", "est. s", "why"):
        table.add_column(name)
    for c in cells:
        pred = (c.get("predicted") or {}).get("step_time_s")
        table.add_row(
            length_label(c["seq_len"]).upper(),
            c["budget"],
            c["mode"],
            str(c["num_layers"]),
            f"reuse {c['reused_from']}"
            if c.get("reused_from")
            else ("run" if c["status"] == "planned" else "refuse"),
            _f(pred, "{:.3f}"),
            _f(None if c.get("reused_from") else c.get("estimated_s"), "{:.1f}"),
            (c.get("message") or "")[:90],
        )
    Console(width=200).print(table)
    total = sum(c.get("estimated_s") or 0.0 for c in cells if not c.get("reused_from"))
    print(f"estimated GPU time of the timed and warm-up steps: {total:.0f} s")


def markdown(rep: dict[str, Any]) -> str:
    head = [name for name, _ in COLUMNS]
    lines = []
    for prov in rep["provenance"]:
        where = prov.get("device") or prov.get("device_type", "?")
        lines.append(
            f"Measured on {where}, {prov.get('date_utc', '?')}, commit "
            f"{str(prov.get('tree_commit') or prov.get('git_commit') or '?')[:10]}: `{prov.get('command', '?')}`"
            + (f" (PYTORCH_CUDA_ALLOC_CONF={prov['pytorch_cuda_alloc_conf']})"
               if prov.get("pytorch_cuda_alloc_conf") else "") + "  "
        )
    if lines:
        lines += ["Predictions: the committed plans replayed by the current cost model.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rep["rows"]:
        lines.append("| " + " | ".join(fn(r) for _, fn in COLUMNS) + " |")
    notes = [
        f"- {r['seq_len'] // 1024}K {r['budget']} {r['mode']}: {r['status']}: {r['message']}"
        for r in rep["rows"]
        if r["status"] != "ok" and r["message"]
    ]
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\nNot measured:\n\n" + "\n".join(notes) + "\n"
    return text


def print_table(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plan benchmark (measured vs re-predicted)")
    for name, _ in COLUMNS:
        table.add_column(
            name, justify="left" if name in ("length", "budget", "mode", "status") else "right"
        )
    for r in rep["rows"]:
        table.add_row(*(fn(r) for _, fn in COLUMNS))
    Console(width=220).print(table)


# ---- command line --------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{self.prog}: {message}")

    def _get_values(self, action, arg_strings):
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {action.option_strings[0]}: expected a value, got '--'")
        return super()._get_values(action, arg_strings)


def _number(maximum: float):
    """argparse type: a finite number in (0, maximum] (nan and inf would lift the limit)."""
    def convert(text: str) -> float:
        try:
            return parse_float(text, field="", maximum=maximum)
        except UserInputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


def _integer(minimum: int):
    """argparse type: an integer in [minimum, MAX_REPEATS]."""
    def convert(text: str) -> int:
        try:
            return parse_int(text, field="", minimum=minimum, maximum=MAX_REPEATS)
        except UserInputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


def build_parser(prog: str = "validate/bench.py") -> argparse.ArgumentParser:
    ap = _Parser(prog=prog, description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(
        dest="bench_command", required=True, parser_class=_Parser, metavar="make-plans|run|report"
    )
    mk = sub.add_parser("make-plans", help="plan every cell (CPU; needs pulp)")
    mk.add_argument("--out", required=True, help="directory for the plan files and index.json")
    mk.add_argument("--lengths", default=",".join(LENGTHS))
    mk.add_argument("--budgets", default=",".join(BUDGETS), help="full and/or sizes (48GiB)")
    mk.add_argument("--time-limit", type=_number(MAX_TIME_LIMIT_S), default=MIP_TIME_LIMIT_S,
                    help="MIP seconds")
    mk.add_argument("--model", default=MODEL, help=f"the stack's preset (default {MODEL})")
    mk.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    mk.add_argument("--mode", choices=("train", "infer"), default="train",
                    help="train: the training grid (default); infer: the inference bench cells of "
                         "validate/infer_plans.py (--lengths, --budgets, --model, --modes do not apply)")
    mk.add_argument("--allocator", choices=ALLOCATOR_CHOICES, default=None,
                    help=f"allocator the plans are certified for (default: caching for {MODEL}, "
                         "expandable for the others)")
    rn = sub.add_parser("run", help="run the cells on the GPU (--smoke: CPU, tiny model)")
    rn.add_argument("--plans", required=True, help="make-plans' directory")
    rn.add_argument("--out", required=True, help="directory for bench-measured.json")
    rn.add_argument("--lengths", default="", help="subset, e.g. 16K,32K (default: all planned)")
    rn.add_argument("--budgets", default="", help="subset, e.g. full,48GiB")
    rn.add_argument("--modes", default="", help=f"subset of {','.join(MODES)}")
    rn.add_argument("--warmup", type=_integer(0), default=1)
    rn.add_argument("--repeats", type=_integer(1), default=3)
    rn.add_argument(
        "--max-step-s", type=_number(MAX_SECONDS), default=20.0,
        help="steps longer than this are timed once"
    )
    rn.add_argument("--no-ideal", action="store_true", help="skip the ideal (fewer-layer) runs")
    rn.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    rn.add_argument(
        "--dry-run",
        action="store_true",
        help="run nothing: list the cells and the GPU seconds their predictions add up to",
    )
    rn.add_argument(
        "--host-available",
        default=None,
        help="host memory the --dry-run checks plans against (default: this machine's)",
    )
    rp = sub.add_parser("report", help="re-predict the measured cells and print the table")
    rp.add_argument("--measured", nargs="+", required=True, help="bench-measured.json files")
    rp.add_argument("--plans", default=str(REPO / "validate" / "plans" / "bench"))
    rp.add_argument("--out", help="Markdown file to write")
    rp.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return ap


def _model_arg(name: str) -> str:
    from simulator.model import list_models

    if name not in list_models():
        raise UserInputError(f"--model: unknown preset {name!r}")
    return name


def dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    if args.bench_command == "make-plans" and args.mode == "infer":
        from validate.infer_plans import make_infer_plans

        t0 = time.perf_counter()
        index = make_infer_plans(args.out, time_limit_s=args.time_limit)
        print(f"wrote {sum(1 for c in index['cells'] for f in c['modes'].values() if f)} inference plans "
              f"({len(index['cells'])} cells) to {args.out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 0
    if args.bench_command == "make-plans":
        t0 = time.perf_counter()
        index = make_plans(
            args.out,
            lengths=parse_lengths(args.lengths),
            budgets=parse_budgets(args.budgets),
            time_limit_s=args.time_limit,
            model_name=_model_arg(args.model),
            modes=parse_modes(args.modes),
            allocator=args.allocator,
        )
        print(
            f"wrote {sum(1 for c in index['cells'] if c['plan'])} cell plans and "
            f"{len(index['ideal'])} ideal plans to {args.out} in "
            f"{time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
        return 0
    if args.bench_command == "run":
        res = run_bench(BenchRun(
            args.plans,
            out_dir=args.out,
            lengths=parse_lengths(args.lengths) if args.lengths else None,
            budgets=parse_budgets(args.budgets) if args.budgets else None,
            modes=parse_modes(args.modes) if args.modes else None,
            warmup=args.warmup,
            repeats=args.repeats,
            max_step_s=args.max_step_s,
            ideal=not args.no_ideal,
            smoke=args.smoke,
            dry_run=args.dry_run,
            host_available_bytes=(
                parse_bytes(args.host_available, field="--host-available")
                if args.host_available
                else None
            ),
            argv=argv,
        ))
        if args.dry_run:
            print_estimate(res["cells"])
        return 0
    rep = report_rows(args.measured, args.plans)
    if args.out:
        with OutputSet() as outputs:
            outputs.write_text(args.out, markdown(rep), field="--out")
    if args.json:
        print(json.dumps(rep, sort_keys=True))
    else:
        print_table(rep)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"] and "--smoke" not in argv and "--dry-run" not in argv:
        from validate.diagnostics import use_default_allocator

        use_default_allocator()  # before anything initialises CUDA
    try:
        return dispatch(build_parser().parse_args(argv), [sys.argv[0], *argv])
    except UserInputError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
