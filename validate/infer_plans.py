"""The inference bench plans: the cells and modes of the contract, planned and replayed on the
CPU; and the re-prediction of a committed plan at the contexts a measurement ran at.

Models: nothing new; it plans with ``planners.infer.plan_inference`` (which replays with
``simulator.inference``) and writes ``validate/plans/infer-bench/`` (``tierplan bench
make-plans --mode infer``): per cell (model, prompt_len, batch; gen_len 16 on 1xH200) the plan
files of four modes and ``index.json``:
  * ``hf_resident``: engine hf, every layer's KV (and every weight) in HBM;
  * ``hf_offloaded``: engine hf, ``DynamicCache(offloading=True)``: every layer's KV on the host;
  * ``plan``: engine static, the planner's best plan (its MIP's row);
  * ``kv_host``: engine static, every layer's KV on the host, the weights resident unless they
    cannot be (then the fewest layers streamed from the host).
Quantized KV (``QUANT_MODES``, only in the cells of ``QUANT_CELLS``): ``kv_host_int8`` /
``kv_host_int4``, every layer's KV on the host stored int8 / int4 (KIVI layout,
``kernels.quant.kivi_layout``), and ``plan_int8`` / ``plan_int4``, the planner's best plan when
the job accepts that format (per layer lossless or quantized).
A mode whose replay does not fit is null, its one-line reason under ``refused``.
Budgets: the GPU budget is ``validate.bench.USABLE_CARD_BYTES`` (what torch reports of the
H200, less the CUDA context) less ``PLANNING_MARGIN_FRAC``; the host budget 100 GiB of pinned
pools (the box has 125 GiB of host RAM; the process needs the rest).
Assumes: the HF modes' predicted peaks are allocated bytes; the default caching allocator
reserves more (8-22% on our H200 runs of HF models), which the measurement records.
Source: /work contract "Inference plans, bench and measurement" (index layout and modes).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hwmodels.units import GiB, UserInputError  # noqa: E402

NODE = "1xH200"
GEN_LEN = 16
HOST_BUDGET_BYTES = 100 * GiB
"""Pinned host pools stay within this (the device host has ~125 GiB of RAM)."""
CELLS: tuple[tuple[str, int, int], ...] = (
    ("llama-3.1-8b", 32 * 1024, 1),
    ("llama-3.1-8b", 128 * 1024, 1),
    ("llama-3.1-8b", 128 * 1024, 4),
    ("llama-3.1-8b", 128 * 1024, 8),
    ("llama-3.1-70b", 32 * 1024, 1),
)
"""(model preset, prompt_len, batch): the 8B at 32K and 128K (at batch 8 its KV does not fit
HBM), and the 70B at 32K (its bf16 weights and KV do not fit HBM together)."""
BASE_MODES = ("hf_resident", "hf_offloaded", "plan", "kv_host")
QUANT_MODES = ("kv_host_int8", "kv_host_int4", "plan_int8", "plan_int4")
MODES = BASE_MODES + QUANT_MODES
MODE_SOURCE = {"hf_resident": ("hf", "resident", "none"), "hf_offloaded": ("hf", "kv_host", "none"),
               "plan": ("static", None, "none"), "kv_host": ("static", "kv_host", "none"),
               "kv_host_int8": ("static", "kv_host", "int8"), "kv_host_int4": ("static", "kv_host", "int4"),
               "plan_int8": ("static", None, "int8"), "plan_int4": ("static", None, "int4")}
"""mode -> (engine, strategy of planners.infer (None: the report's best), the job's kv_quant)."""
QUANT_CELLS: dict[tuple[str, int, int], tuple[str, ...]] = {
    ("llama-3.1-8b", 128 * 1024, 1): ("kv_host_int8", "kv_host_int4"),
    ("llama-3.1-8b", 128 * 1024, 8): ("plan_int8", "plan_int4"),
}
"""The quantized modes of a cell: the 128K batch-1 KV all on the host (link bound: the step
shrinks with the bytes), the 128K batch-8 cell whose bf16 KV does not fit HBM."""
INDEX = "index.json"
INDEX_SCHEMA_VERSION = 1
DEFAULT_OUT = REPO / "validate" / "plans" / "infer-bench"


def cell_name(model: str, prompt_len: int, batch: int) -> str:
    return f"{model}-{prompt_len // 1024}k-b{batch}"


def gpu_budget_bytes() -> int:
    from validate.bench import PLANNING_MARGIN_FRAC, USABLE_CARD_BYTES

    return int(USABLE_CARD_BYTES * (1.0 - PLANNING_MARGIN_FRAC))


def _predicted(plan: Any) -> dict[str, Any]:
    p = plan.prediction
    return {"prefill_time_s": round(p.prefill_time_s, 6), "decode_step_time_s": round(p.decode_step_time_s, 6),
            "decode_context_len": plan.scenario.job.prompt_len + plan.scenario.job.gen_len // 2,
            "step_time_s": round(p.step_time_s, 6), "tier_peak_bytes": dict(p.tier_peak_bytes)}


def make_infer_plans(out_dir: str | Path, *, time_limit_s: float = 10.0, cells=CELLS, progress: bool = True
                     ) -> dict[str, Any]:
    """Plan every cell and mode; write the plan files and ``index.json`` (all or nothing)."""
    import time

    from hwmodels.catalog import load_node
    from hwmodels.outputs import OutputSet
    from planners.infer import plan_inference, tiers_line
    from simulator.job import InferJob
    from simulator.model import get_model
    from simulator.scenario import Scenario

    node = load_node(NODE)
    out = Path(out_dir)
    files: dict[str, str] = {}
    rows = []
    for model_name, prompt_len, batch in cells:
        t0 = time.perf_counter()
        model = get_model(model_name)
        name = cell_name(model_name, prompt_len, batch)
        cell_modes = BASE_MODES + QUANT_CELLS.get((model_name, prompt_len, batch), ())
        reports = {}
        for engine, kv_quant in sorted({MODE_SOURCE[m][0::2] for m in cell_modes}):
            job = InferJob(prompt_len=prompt_len, gen_len=GEN_LEN, batch=batch, engine=engine, kv_quant=kv_quant)
            sc = Scenario.build(model, job, node, gpu_budget_bytes=gpu_budget_bytes(),
                                host_budget_bytes=HOST_BUDGET_BYTES)
            reports[engine, kv_quant] = plan_inference(sc, time_limit_s=time_limit_s)
        modes: dict[str, str | None] = {}
        refused: dict[str, str] = {}
        predicted: dict[str, Any] = {}
        tiers: dict[str, str] = {}
        for mode in cell_modes:
            engine, strategy, kv_quant = MODE_SOURCE[mode]
            rep = reports[engine, kv_quant]
            res = rep.result(strategy or "mip")
            if res.plan is None or not res.feasible:
                modes[mode] = None
                refused[mode] = res.reason or rep.binding or "no plan"
                continue
            fname = f"{name}-{mode}.json"
            files[fname] = res.plan.to_json()
            modes[mode] = fname
            predicted[mode] = _predicted(res.plan)
            tiers[mode] = tiers_line(res.plan)
        rows.append({"cell": name, "model": model_name, "prompt_len": prompt_len, "batch": batch,
                     "gen_len": GEN_LEN, "modes": modes, "refused": refused, "predicted": predicted,
                     "tiers": tiers})
        if progress:
            print(f"planned {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    index = {"schema_version": INDEX_SCHEMA_VERSION, "node": NODE, "gen_len": GEN_LEN,
             "gpu_budget_bytes": gpu_budget_bytes(), "host_budget_bytes": HOST_BUDGET_BYTES,
             "mip_time_limit_s": time_limit_s, "modes": list(MODES),
             "decode_step_time_s": "one decode step of the whole batch at context prompt_len + gen_len // 2",
             "cells": rows}
    out.mkdir(parents=True, exist_ok=True)
    with OutputSet() as outputs:
        for fname, text in sorted(files.items()):
            outputs.write_text(out / fname, text, field="--out")
        outputs.write_text(out / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n", field="--out")
    return index


def _field(record: Any, name: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def _middle(values: list[int]) -> list[int]:
    """The one or two middle values of a sorted list (those its median is made of)."""
    n = len(values)
    return [] if not n else values[(n - 1) // 2 : n // 2 + 1]


def record_graphs(record: Any) -> bool | None:
    """Whether a measurement's static engine ran its decode steps through CUDA graphs: its
    ``engine_notes["cuda_graphs"]``; records of the engine before graphs lack it (eager: False);
    None without a record (the engine's default)."""
    if record is None:
        return None
    notes = _field(record, "engine_notes") or {}
    return bool(notes.get("cuda_graphs", False))


SMOKE_RUNS_ON_HOST = {"static_resident": False, "static_kv_host": True, "static_kv_host_long": True,
                      "hf_resident": False, "hf_offloaded": True}
"""validate/scripts/infer_smoke.py's runs (records that name no plan file): whether every layer's
KV is on the host."""


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def plan_for_record(record: Any, plans_dir: str | Path | None = None) -> Any:
    """The plan a measured record ran: its plan file in ``plans_dir`` (or, when that file has
    been made again, the copy with the record's sha256 in a sibling ``<plans_dir>*`` directory,
    e.g. validate/plans/infer-bench-f897228), or, for a smoke run (no
    plan file), the plan infer_smoke.py builds for its job (``infer_bench.infer_plan`` on
    1xH200, every layer's KV on the host or none); None when neither applies."""
    from planners.plan import load_plan

    name = _field(record, "plan")
    if name and plans_dir is not None:
        path = Path(plans_dir) / str(name)
        want = _field(record, "plan_sha256")
        if want and (not path.is_file() or _sha256(path) != want):
            # the plans were made again since: the one that ran is kept beside them
            found = [p for p in sorted(Path(plans_dir).parent.glob(f"{Path(plans_dir).name}*/{name}"))
                     if _sha256(p) == want]
            if not found:
                raise UserInputError(f"{name}: no plan file with the sha256 the record ran ({want[:12]}...)")
            path = found[0]
        return load_plan(path)
    mode = _field(record, "mode")
    if mode not in SMOKE_RUNS_ON_HOST or not _field(record, "model"):
        return None
    from hwmodels.catalog import load_node
    from simulator.job import InferJob
    from simulator.model import get_model
    from simulator.scenario import Scenario
    from validate.infer_bench import infer_plan

    model = get_model(str(_field(record, "model")))
    job = InferJob(prompt_len=int(_field(record, "prompt_len")), gen_len=int(_field(record, "gen_len")),
                   batch=int(_field(record, "batch")), engine=_field(record, "engine"),
                   prefill_chunk_len=_field(record, "prefill_chunk_len"))
    sc = Scenario.build(model, job, load_node(NODE))
    return infer_plan(sc, kv_host=range(model.num_layers) if SMOKE_RUNS_ON_HOST[mode] else (),
                      planner=f"smoke:{mode}")


def record_warmed_up(record: Any) -> bool | None:
    """Whether a measurement's engine ran a warm-up before its timed prefill: the static engine
    records its ``warmup_s`` (records of the engine before it warmed up lack it), the HF engine
    never warms up; None without a record (the engine's default)."""
    if record is None:
        return None
    return _field(record, "warmup_s") is not None


def record_sdpa_cudnn(record: Any) -> bool:
    """Whether a measurement ran SDPA in torch's default order (cuDNN attention first on the
    H200): records of the engines before they kept SDPA off cuDNN have no
    ``engine_notes["sdpa_backends"]``; those after it name the backends (without cuDNN)."""
    if record is None:
        return False
    notes = _field(record, "engine_notes") or {}
    backends = notes.get("sdpa_backends")
    return backends is None or "CUDNN" in str(backends).upper()


def with_current_profile(plan: Any) -> Any:
    """``plan`` with its node's embedded measured profile replaced by today's preset of the same
    name and GPU (a plan embeds the profile it was made with; a re-prediction prices the run with
    today's calibration too). Unchanged when no preset matches."""
    from hwmodels.catalog import get_profile, list_presets

    node = plan.scenario.node
    if node.profile is None:
        return plan
    for name in list_presets("profiles"):
        current = get_profile(name)
        if (current.name, current.gpu) == (node.profile.name, node.profile.gpu):
            if current == node.profile:
                return plan
            scenario = plan.scenario.model_copy(update={"node": node.model_copy(update={"profile": current})})
            return plan.model_copy(update={"scenario": scenario})
    return plan


def repredict(plan_path: Any, record: Any = None, *, skip_steps: int = 2, all_steps: bool = True
              ) -> dict[str, Any]:
    """The plan's prediction with today's cost model: prefill time, the decode step time at
    each context of ``record`` (a measurement record or mapping with ``contexts``: the KV length
    at each decode step; default: the plan's mean context), their median over the steps after
    the first ``skip_steps`` (what the measurement's ``decode_step_time_s`` is the median of),
    and the per-tier peaks; the static engine's decode issued as the record says it ran
    (``record_graphs``). ``all_steps`` False: only the contexts the median is made of are
    replayed (a decode step's time does not fall as its context grows), ``decode_step_times_s``
    is then empty."""
    from planners.infer import replay_plan
    from planners.plan import load_plan

    plan = load_plan(plan_path) if isinstance(plan_path, (str, Path)) else plan_path
    if plan.scenario.job.mode != "infer":
        raise UserInputError(f"{plan_path}: not an inference plan")
    plan = with_current_profile(plan)
    contexts = list(_field(record, "contexts") or []) if record is not None else []
    graphs = record_graphs(record)
    cudnn = record_sdpa_cudnn(record)
    base = replay_plan(plan, graphs=graphs, sdpa_cudnn=cudnn, warmed_up=record_warmed_up(record))
    ints = [int(c) for c in contexts]
    tail_ctx = ints[skip_steps:] or ints
    wanted = set(ints) if all_steps else set(_middle(sorted(tail_ctx)))
    by_ctx = {ctx: replay_plan(plan, context_len=ctx, graphs=graphs, sdpa_cudnn=cudnn,
                               decode_only=True).decode_step_time_s
              for ctx in sorted(wanted)}
    steps = [by_ctx[c] for c in ints] if all_steps else []
    tail = [by_ctx[c] for c in tail_ctx] if all_steps else [by_ctx[c] for c in _middle(sorted(tail_ctx))]
    return {
        "prefill_time_s": base.prefill_time_s,
        "decode_step_time_s": statistics.median(tail) if tail else base.decode_step_time_s,
        "decode_step_times_s": steps,
        "contexts": [int(c) for c in contexts],
        "tier_peak_bytes": dict(base.tier_peak_bytes),
        "peak_allocated_bytes": base.tier_peak_bytes["hbm"],
        "host_pinned_bytes": base.tier_peak_bytes.get("host", 0),
        "feasible": base.feasible,
    }


# ---- predicted against measured ------------------------------------------------------------------

TIME_BAND = 0.10
"""Decode step and prefill times: re-predicted within 10% of the measured."""
HBM_BAND = 0.03
"""Peak allocated HBM: re-predicted within 3% of the measured."""
COMPARED = (("prefill_time_s", "prefill_time_s", TIME_BAND), ("decode_step_time_s", "decode_step_time_s", TIME_BAND),
            ("peak_allocated_bytes", "peak_allocated_bytes", HBM_BAND))
"""(measured field, re-predicted field, band) of each compared figure."""


def compare_record(record: Any, plans_dir: str | Path | None) -> dict[str, Any]:
    """One measured record against ``repredict`` of its plan (in ``plans_dir``): per compared
    figure the measured and predicted values and the relative error (predicted / measured - 1),
    and whether it is inside its band. Records that did not run (refused, out of memory) carry
    their status only."""
    row: dict[str, Any] = {"cell": _field(record, "cell"), "mode": _field(record, "mode"),
                           "engine": _field(record, "engine"), "status": _field(record, "status"),
                           "cuda_graphs": bool(record_graphs(record)), "sdpa_cudnn": record_sdpa_cudnn(record)}
    plan = plan_for_record(record, plans_dir) if row["status"] == "ok" else None
    if plan is None:
        return row
    pred = repredict(plan, record, all_steps=False)
    for measured_key, pred_key, band in COMPARED:
        m, p = _field(record, measured_key), pred[pred_key]
        err = (p / m - 1.0) if m else None
        row[measured_key] = {"measured": m, "predicted": p, "rel_error": err,
                             "within": err is not None and abs(err) <= band, "band": band}
    m = _field(record, "host_pinned_bytes")
    if m:
        p = pred["host_pinned_bytes"]
        row["host_pinned_bytes"] = {"measured": m, "predicted": p, "rel_error": p / m - 1.0}
    return row


def comparison_rows(paths: list[str | Path], *, plans_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """``compare_record`` of every record of inference measurement files (their own plans
    directory unless ``plans_dir``)."""
    from pydantic import ValidationError

    from hwmodels.userfile import read_user_json
    from validate.records import InferBenchFile, InferSmokeFile

    rows = []
    for path in paths:
        raw = read_user_json(path)
        kind: Any = InferSmokeFile if isinstance(raw, dict) and isinstance(raw.get("records"), dict) else InferBenchFile
        try:
            data = kind.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "file"
            raise UserInputError(f"{path}: {loc}: {first['msg']}") from None
        if isinstance(data, InferSmokeFile):
            plans, records = plans_dir, list(data.records.values())
        else:
            plans, records = (Path(plans_dir) if plans_dir is not None else REPO / data.plans_dir), data.records
        for rec in records:
            rows.append({"file": Path(path).name, **compare_record(rec, plans)})
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> list[str]:
    """A table of comparison rows: per figure measured, predicted and the error (* outside band)."""
    def cell(row: dict[str, Any], key: str, scale: float, unit: str) -> str:
        c = row.get(key)
        if not c:
            return "-"
        mark = "" if c.get("within", True) else " *"
        return (f"{c['measured'] / scale:.4g}{unit} / {c['predicted'] / scale:.4g}{unit} "
                f"({c['rel_error'] * 100:+.1f}%){mark}")

    head = f"{'cell':24s} {'mode':19s} {'graphs':6s} {'cudnn':5s} {'prefill meas/pred':30s} {'decode step meas/pred':32s} " \
           f"{'HBM alloc meas/pred':32s} pinned meas/pred"
    out = [head]
    for r in rows:
        if r.get("status") != "ok":
            out.append(f"{r['cell']!s:24s} {r['mode']!s:19s} {r['status']}")
            continue
        out.append(f"{r['cell']:24s} {r['mode']:19s} {'yes' if r['cuda_graphs'] else 'no':6s} "
                   f"{'yes' if r['sdpa_cudnn'] else 'no':5s} "
                   f"{cell(r, 'prefill_time_s', 1, ' s'):30s} {cell(r, 'decode_step_time_s', 1e-3, ' ms'):32s} "
                   f"{cell(r, 'peak_allocated_bytes', 2**30, ' GiB'):32s} {cell(r, 'host_pinned_bytes', 2**30, ' GiB')}")
    out.append(f"* outside its band (times {TIME_BAND:.0%}, allocated HBM {HBM_BAND:.0%})")
    return out
