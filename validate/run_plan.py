"""Run plans for real on a GPU: step time, peak HBM and host pool, against the plan's prediction.

Models: nothing; this script measures. For each plan file (read only through
``planners.plan.load_plan``) it builds ``validate.model`` for the plan's model with one layer
per plan layer, bf16, and a batch of the plan's job (micro-batch x seq_len), caps the GPU at the
plan's budget with ``torch.cuda.set_per_process_memory_fraction``, sizes and allocates the
executor's pinned pool (one counting forward), refuses a plan that does not fit (``check_fits``:
host memory, predicted peak vs budget) before any step runs, then times ``--warmup`` steps and
the median of ``--repeats`` steps by CUDA events, with the peak allocated and reserved over the
timed steps (stats reset after the warm-up, grads set to None before each step), the pool's
peak and the last step's copy statistics (bytes, per-stream busy time and bandwidth, exposed
stall, recompute time: ``PlanExecutor.last_stats``). Baselines run through the same executor with plans made here: ``none`` (keep all) and
``checkpoint`` (``torch.utils.checkpoint`` on every layer). ``--check-grads T`` compares, at T
tokens, each plan's gradients with the no-plan ones (bitwise flag and max |difference|).
An out-of-memory step is recorded as ``"status": "oom"`` with the plan and the step.
Writes ``measured.json`` (every case) and ``comparison.json`` (predicted, measured, relative
error of step time, peak HBM and peak host bytes, for plans that carry a prediction).
Whole-model plans (the job's optimizer, model states off HBM: ``validate.model_states``) run
the optimizer step inside the timed step; their host and disk bytes are refused before a step
when they do not fit, their states on nvme live in ``--state-dir`` (files removed after the case),
and the case records ``model_states`` (host, pinned and disk bytes, the CPU step's seconds); the
gradient check is for plans without them (their gradients leave the GPU).
Assumes: a Llama-family model (the one the plan embeds); one GPU.
Ignores: data loading.
Source: the plan's own ``prediction`` (simulator.des replay).

``--smoke`` runs a tiny copy of each plan's model on the CPU (the same code path) for CI.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hwmodels.units import GiB, UserInputError  # noqa: E402
from kernels import timing  # noqa: E402
from planners.plan import LayerPlan, Plan, load_plan  # noqa: E402
from simulator.model import ModelSpec  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from validate.diagnostics import add_diagnostic_args, diagnostic_kwargs, use_default_allocator  # noqa: E402
from validate.executor import PlanExecutor, check_fits, host_memory_bytes  # noqa: E402
from validate.model import Decoder, build_model, make_batch  # noqa: E402
from validate.records import ComparisonFile, KernelProfile, PlanRunFile  # noqa: E402

SMOKE_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_heads": 4,
    "num_kv_heads": 4,
    "head_dim": 16,
    "vocab_size": 128,
}
SMOKE_SEQ_LEN = 48
BASELINES = ("none", "checkpoint")
ARENA_PREDICT_TIME_LIMIT_S = 5.0


def spec_for_plan(plan: Plan, smoke: bool) -> ModelSpec:
    """The model the plan embeds (`Scenario.from_plan`), or for ``smoke`` its tiny CPU copy."""
    spec = Scenario.from_plan(plan).model
    if smoke:
        kv = min(spec.num_kv_heads, SMOKE_SHAPE["num_heads"])
        spec = ModelSpec.model_validate({**spec.model_dump(), **SMOKE_SHAPE, "num_kv_heads": kv})
    return spec


def baseline_plan(plan: Plan, name: str) -> Plan:
    """The same scenario with every layer kept (``none``) or checkpointed (``checkpoint``); the
    plan's MLP activation (saved or recomputed) as in its job."""
    ckpt = "full" if name == "checkpoint" else "none"
    layers = [LayerPlan(layer=i, checkpoint=ckpt) for i in range(len(plan.layers))]
    prov = plan.provenance.model_copy(
        update={"planner": f"baseline:{name}", "solver": None, "status": "rule", "gap": None}
    )
    return Plan.for_scenario(Scenario.from_plan(plan), layers=layers, mlp_activation=plan.mlp_activation,
                             provenance=prov, prediction=None)


def tokens_for_plan(plan: Plan, smoke: bool) -> tuple[int, int]:
    job = Scenario.from_plan(plan).job
    if job.mode != "train":
        raise UserInputError("scenario.job.mode: the plan executor runs training steps")
    return job.micro_batch, SMOKE_SEQ_LEN if smoke else job.seq_len


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()  # pinned pools of earlier cases go back to the OS


def time_steps(
    step: Callable[[], Any],
    *,
    model: torch.nn.Module,
    batch: torch.Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
    max_step_s: float | None = None,
    where: list[str] | None = None,
    after_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Seconds of each timed step of ``step()`` (CUDA events on the GPU, wall time on the CPU).

    ``warmup`` untimed steps first; the peak memory statistics (device and pinned host) are reset
    after them; gradients are set to None before every step. When the last warm-up step took
    longer than ``max_step_s``, one step is timed. ``where[0]`` names the step running (for an
    out-of-memory report); ``after_step(i, seconds)`` runs after step ``i``, outside its time."""
    cuda = device.type == "cuda"

    def before_step(i: int) -> None:
        if where is not None:
            where[0] = f"step {i}"
        model.zero_grad(set_to_none=True)
        if batch.requires_grad:
            batch.grad = None
        if i == warmup and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            if hasattr(torch.cuda, "reset_peak_host_memory_stats"):
                torch.cuda.reset_peak_host_memory_stats()

    return timing.time_steps(step, device=device, warmup=warmup, repeats=repeats,
                             max_step_s=max_step_s, before_step=before_step,
                             after_step=after_step)


def run_case(
    label: str,
    plan: Plan,
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    smoke: bool,
    check_grads_tokens: int | None = None,
    arena: bool = False,
    memory_trace: Path | None = None,
    kernel_profile: Path | None = None,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """One plan: refuse it, or time it; never raises for a refusal or an OOM. ``state_dir``:
    where optimizer states on nvme live (made for the case, its files removed after). ``arena``: the
    executor's buffers at planned offsets in one allocation (the warm-up steps record them).
    Diagnostics (CUDA only; they slow the steps they watch): ``memory_trace`` writes the
    allocator's history of the whole case (``torch.cuda.memory._dump_snapshot``, also after an
    OOM) for ``tierplan layout --snapshot``; ``kernel_profile`` times one extra step under
    torch.profiler and writes its kernels (``profile_kernels``)."""
    spec = spec_for_plan(plan, smoke)
    batch_size, seq_len = tokens_for_plan(plan, smoke)
    case: dict[str, Any] = {
        "case": label,
        "planner": plan.provenance.planner,
        "model": spec.name,
        "num_layers": spec.num_layers,
        "seq_len": seq_len,
        "micro_batch": batch_size,
        "gpu_budget_bytes": plan.scenario.gpu_budget_bytes,
        "prediction": plan.prediction.model_dump() if plan.prediction else None,
    }
    dtype = torch.float32 if smoke else torch.bfloat16
    where = ["setup"]
    model: Decoder | None = None
    ex: PlanExecutor | None = None
    batch: torch.Tensor | None = None
    tracing = memory_trace is not None and device.type == "cuda"
    if tracing:
        torch.cuda.memory._record_memory_history(max_entries=4_000_000, context=None)
    try:
        unexecuted = plan.unexecuted()  # replayed, but not run by this executor yet
        if unexecuted:
            raise UserInputError(f"{label}: {unexecuted}")
        model = build_model(spec, device=device, dtype=dtype, seed=0)
        batch = make_batch(spec, seq_len=seq_len, batch=batch_size, device=device, dtype=dtype)
        if arena and warmup < 1:
            raise UserInputError("--arena: needs --warmup 1 or more (the first step records the buffers)")
        arena_pred = predict_with_arena(plan) if arena and plan.prediction else None
        budget = plan.scenario.gpu_budget_bytes
        if arena_pred and not smoke and budget and arena_pred["peak_hbm_bytes"] > budget:
            raise UserInputError(
                f"--arena: the plan's peak with its buffers in one arena, "
                f"{arena_pred['peak_hbm_bytes'] / GiB:.2f} GiB, exceeds the GPU budget "
                f"{budget / GiB:.2f} GiB (the arena holds every buffer for the whole step)"
            )
        ex = PlanExecutor(model, plan, device=device, arena=arena, state_dir=state_dir)
        if ex.states is not None and ex.states.nvme and state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        where[0] = "pool sizing"
        pool_bytes = ex.size_pool(batch)
        case["host_pool_bytes"] = pool_bytes
        states = ex.states
        if states is not None:
            case["model_states"] = {"host_bytes": states.host_bytes(), "pinned_bytes": states.pinned_bytes(),
                                    "disk_bytes": states.disk_bytes()}
        check_fits(
            plan,
            num_layers=spec.num_layers,
            host_pool_bytes=pool_bytes,
            gpu_budget_bytes=None if smoke else plan.scenario.gpu_budget_bytes,
            host_available_bytes=host_memory_bytes(),
            model_state_host_bytes=0 if states is None else states.host_bytes(),
            disk_bytes=0 if states is None else states.disk_bytes(),
            disk_free_bytes=None if states is None or not states.disk_bytes() or state_dir is None
            else shutil.disk_usage(state_dir).free,
        )
        where[0] = "pool allocation"
        t0 = time.perf_counter()
        ex.prepare(batch)
        assert ex.pool is not None  # prepare() made it
        case["host_pool_setup_s"] = time.perf_counter() - t0
        times = time_steps(
            partial(ex.step, batch), model=model, batch=batch, device=device, warmup=warmup,
            repeats=repeats, where=where,
        )
        case.update(
            status="ok",
            step_time_s=statistics.median(times),
            step_times_s=times,
            host_pool_peak_bytes=ex.pool.peak_bytes,
            copy_stats=ex.last_stats().to_dict(),
            arena=ex.arena_stats(),
        )
        if ex.states is not None:
            case["model_states"]["cpu_step_s"] = ex.states.cpu_step_s
        if arena_pred and (case["arena"] or {}).get("capacity_bytes"):
            case["prediction_arena"] = arena_pred
        if device.type == "cuda":
            case.update(
                peak_allocated_bytes=torch.cuda.max_memory_allocated(device),
                peak_reserved_bytes=torch.cuda.max_memory_reserved(device),
            )
        if kernel_profile is not None and device.type == "cuda":
            where[0] = "profiled step"
            model.zero_grad(set_to_none=True)
            case["kernel_profile"] = profile_kernels(
                partial(ex.step, batch), kernel_profile
            )
    except UserInputError as err:
        case.update(status="refused", message=str(err))
    except torch.OutOfMemoryError as err:
        first = str(err).splitlines()[0] if str(err) else "out of memory"
        case.update(status="oom", message=f"{label}: out of memory at {where[0]}: {first}")
    finally:
        if tracing:
            assert memory_trace is not None  # tracing needs it
            torch.cuda.synchronize()
            torch.cuda.memory._dump_snapshot(str(memory_trace))
            torch.cuda.memory._record_memory_history(enabled=None)
            case["memory_trace"] = memory_trace.name
        if ex is not None:
            ex.close()
        if state_dir is not None and state_dir.is_dir():
            for f in state_dir.glob("layer*.states*"):
                f.unlink()
            if not any(state_dir.iterdir()):
                state_dir.rmdir()
        del model, ex, batch
        free_device_memory(device)
    if check_grads_tokens and case.get("status") == "ok" and "model_states" not in case:
        case["grad_check"] = check_grads(
            plan, device=device, seq_len=check_grads_tokens, smoke=smoke
        )
        free_device_memory(device)
    return case


def profile_kernels(step: Callable[[], Any], path: Path, top: int = 60) -> dict[str, Any]:
    """One ``step()`` under torch.profiler: the step's wall time, the summed kernel time (the
    GPU's busy time if kernels do not overlap), the ``top`` kernels by total time (name, count,
    total seconds) and every aten op with its input shapes and the device time of the kernels
    it launched (name, shapes, count, seconds: the in-step times of GEMMs and attention, for
    ``hwmodels.calibrate``), written to ``path``; returns the summary."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall_s = time.perf_counter() - t0
    kernels: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels.setdefault(ev.name, [0, 0.0])
            k[0] += 1
            k[1] += ev.device_time / 1e6
    rows: list[list[Any]] = sorted(([n, c, t] for n, (c, t) in kernels.items()), key=lambda r: -r[2])
    ops = []
    for avg in prof.key_averages(group_by_input_shape=True):
        dev_s = getattr(avg, "self_device_time_total", 0.0) / 1e6
        if dev_s > 0 and avg.key.startswith("aten::"):
            ops.append([avg.key, str(avg.input_shapes), avg.count, dev_s])
    ops.sort(key=lambda r: -r[3])
    summary = {
        "wall_s": wall_s,
        "kernel_s": sum(r[2] for r in rows),
        "num_kernels": sum(r[1] for r in rows),
    }
    record = KernelProfile.model_validate({**summary, "kernels": rows[:top], "ops": ops})
    path.write_text(json.dumps(record.model_dump(mode="json"), indent=1) + "\n")
    return summary


def predict_with_arena(plan: Plan) -> dict[str, Any]:
    """The plan's peak allocated and reserved HBM when its buffers live in one arena sized by
    the layout planner (planners.layout.plan_buffers.predict_arena), as the executor runs it."""
    from planners.layout.plan_buffers import plan_step, predict_arena
    from planners.solvers import pulp_available
    from simulator.estimator import RUNTIME_WORKSPACE_BYTES

    cmp = predict_arena(plan_step(plan), time_limit_s=ARENA_PREDICT_TIME_LIMIT_S, use_mip=pulp_available())
    return {
        "arena_bytes": cmp.arena_bytes,
        "peak_hbm_bytes": cmp.arena_peak_bytes + RUNTIME_WORKSPACE_BYTES,
        "peak_reserved_bytes": cmp.arena_reserved_bytes,
        "peak_hbm_bytes_without_arena": cmp.ordinary_peak_bytes + RUNTIME_WORKSPACE_BYTES,
    }


def check_grads(plan: Plan, *, device: torch.device, seq_len: int, smoke: bool) -> dict[str, Any]:
    """Gradients under ``plan`` vs no plan at ``seq_len`` tokens (same weights, same batch)."""
    spec = spec_for_plan(plan, smoke)
    dtype = torch.float32 if smoke else torch.bfloat16
    model = build_model(spec, device=device, dtype=dtype, seed=0)
    model.set_rmsnorm(getattr(plan.scenario.job, "rmsnorm", "eager"))  # the plan's own norm
    batch = make_batch(spec, seq_len=seq_len, device=device, dtype=dtype)

    def grads() -> list[torch.Tensor]:
        out = []
        for g in [p.grad for p in model.parameters()] + ([batch.grad] if batch.requires_grad else []):
            assert g is not None  # every parameter (and a batch that takes a gradient) gets one
            out.append(g)
        return out

    model(batch).backward()
    ref = grads()
    model.zero_grad(set_to_none=True)
    if batch.requires_grad:
        batch.grad = None
    ex = PlanExecutor(model, plan, device=device)
    ex.step(batch)
    ex.close()
    got = grads()
    bitwise = all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    max_abs = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ref, got, strict=True))
    return {
        "seq_len": seq_len,
        "bitwise_equal": bitwise,
        "max_abs_diff": max_abs,
        "num_tensors": len(ref),
    }


def compare(case: dict[str, Any]) -> list[dict[str, Any]]:
    """Predicted vs measured rows for one measured case with a prediction."""
    pred = case.get("prediction")
    if not pred or case.get("status") != "ok":
        return []
    pred = {**pred, **case.get("prediction_arena", {})}  # the arena's layout, when one was used
    pairs = [
        ("step_time_s", pred["step_time_s"], case["step_time_s"]),
        ("peak_host_bytes", pred["peak_host_bytes"], case["host_pool_peak_bytes"]),
    ]
    if "peak_allocated_bytes" in case:
        pairs.insert(1, ("peak_hbm_bytes", pred["peak_hbm_bytes"], case["peak_allocated_bytes"]))
        if pred.get("peak_reserved_bytes") is not None:
            pairs.insert(2, ("peak_reserved_bytes", pred["peak_reserved_bytes"], case["peak_reserved_bytes"]))
    return [
        {
            "case": case["case"],
            "figure": fig,
            "predicted": p,
            "measured": m,
            "rel_error": (p / m - 1.0) if m else (0.0 if p == m else None),
        }
        for fig, p, m in pairs
    ]


def measure_one(
    path: str,
    baseline: str | None,
    *,
    warmup: int,
    repeats: int,
    smoke: bool,
    check_grads_tokens: int | None,
    arena: bool = False,
    diagnostics_dir: Path | None = None,
    memory_trace: bool = False,
    kernel_profile: bool = False,
    cap: bool = True,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """One case in this process: the plan at ``path`` (or its ``baseline``) under its budget
    (``cap=False``: the whole device, a diagnostic). ``memory_trace`` / ``kernel_profile``
    write ``<case>.snapshot.pickle`` / ``<case>.kernels.json`` into ``diagnostics_dir``."""
    plan = load_plan(path)
    label = Path(path).stem
    if baseline:
        plan, label = baseline_plan(plan, baseline), f"{label}:{baseline}"
    if smoke:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise UserInputError("validate plan: no CUDA device here (use --smoke for a CPU check)")
        device = torch.device("cuda", torch.cuda.current_device())
        total = torch.cuda.get_device_properties(device).total_memory
        budget = plan.scenario.gpu_budget_bytes
        if cap:
            torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
    stem = label.replace(":", "-")
    diag = Path(diagnostics_dir) if diagnostics_dir is not None else None
    return run_case(
        label,
        plan,
        device=device,
        warmup=warmup,
        repeats=repeats,
        smoke=smoke,
        check_grads_tokens=check_grads_tokens if plan.prediction else None,
        arena=arena and baseline is None,
        memory_trace=diag / f"{stem}.snapshot.pickle" if diag and memory_trace else None,
        kernel_profile=diag / f"{stem}.kernels.json" if diag and kernel_profile else None,
        state_dir=None if state_dir is None else Path(state_dir) / stem,
    )


def _in_child(path: str, baseline: str | None, opts: dict[str, Any]) -> dict[str, Any]:
    """A GPU case in its own process: no cached or leaked memory of an earlier case (an OOM
    traceback, a pinned pool) can change its peak or its time."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--plan",
            path,
            "--out",
            tmp,
            "--case-out",
            str(out),
            "--warmup",
            str(opts["warmup"]),
            "--repeats",
            str(opts["repeats"]),
        ]
        if baseline:
            cmd += ["--baselines", baseline]
        if opts["check_grads_tokens"]:
            cmd += ["--check-grads", str(opts["check_grads_tokens"])]
        for flag in ("arena", "memory_trace", "kernel_profile", "no_cap", "expandable_segments"):
            if opts.get(flag):
                cmd += ["--" + flag.replace("_", "-")]
        if opts.get("memory_trace") or opts.get("kernel_profile"):
            cmd += ["--diagnostics-dir", str(opts["out_dir"])]
        cmd += ["--state-dir", str(opts["state_dir"])]
        env = dict(os.environ)  # read when the child's allocator starts
        if opts.get("expandable_segments"):
            conf = env.get("PYTORCH_CUDA_ALLOC_CONF", "")
            env["PYTORCH_CUDA_ALLOC_CONF"] = ",".join(filter(None, [conf, "expandable_segments:True"]))
        else:
            use_default_allocator(env)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.is_file():
            return json.loads(out.read_text())
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    label = Path(path).stem + (f":{baseline}" if baseline else "")
    return {
        "case": label,
        "status": "error",
        "message": f"{label}: exit {proc.returncode}: {tail[-1] if tail else 'no output'}",
    }


def run(
    plan_paths: list[str],
    *,
    out_dir: str,
    warmup: int = 1,
    repeats: int = 3,
    baselines: tuple[str, ...] = (),
    smoke: bool = False,
    check_grads_tokens: int | None = None,
    arena: bool = False,
    memory_trace: bool = False,
    kernel_profile: bool = False,
    no_cap: bool = False,
    expandable_segments: bool = False,
    state_dir: str | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Measure every plan (and the baselines of the first plan's job); write the two files.

    On the GPU each case runs in a process of its own; ``--smoke`` runs them in this one.
    Diagnostics (GPU): ``memory_trace`` and ``kernel_profile`` (see ``run_case``) write their
    files into ``out_dir``; ``no_cap`` runs without the budget cap; ``expandable_segments``
    starts each case's allocator with ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``."""
    from kernels.microbench import provenance

    states_at = Path(state_dir or Path(out_dir) / "optimizer-states").resolve()

    if not smoke:  # the cases' processes, and this one's provenance, run under it
        use_default_allocator()
    if not smoke and not torch.cuda.is_available():
        raise UserInputError("validate plan: no CUDA device here (use --smoke for a CPU check)")
    for p in plan_paths:
        load_plan(p)  # a malformed plan stops the run before any case
    jobs = [(plan_paths[0], name) for name in baselines] + [(p, None) for p in plan_paths]
    opts = {
        "warmup": warmup,
        "repeats": repeats,
        "check_grads_tokens": check_grads_tokens,
        "arena": arena,
        "memory_trace": memory_trace,
        "kernel_profile": kernel_profile,
        "no_cap": no_cap,
        "expandable_segments": expandable_segments,
        "out_dir": str(Path(out_dir).resolve()),
        "state_dir": str(states_at),
    }
    if smoke and (memory_trace or kernel_profile or no_cap or expandable_segments):
        raise UserInputError("--memory-trace, --kernel-profile, --no-cap, --expandable-segments: need a GPU (not --smoke)")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    cases = []
    for path, baseline in jobs:
        if smoke:
            cases.append(measure_one(path, baseline, smoke=True, warmup=warmup, repeats=repeats,
                                     check_grads_tokens=check_grads_tokens, arena=arena,
                                     state_dir=states_at))
        else:
            cases.append(_in_child(path, baseline, opts))
        print(
            json.dumps({k: v for k, v in cases[-1].items() if k != "prediction"}),
            file=sys.stderr,
            flush=True,
        )
    device = torch.device("cpu") if smoke else torch.device("cuda", torch.cuda.current_device())
    prov = provenance(argv if argv is not None else sys.argv, device)
    measured = {"provenance": prov, "warmup": warmup, "repeats": repeats, "cases": cases}
    failed = [
        {
            "case": c["case"],
            "status": c["status"],
            "message": c.get("message"),
            "predicted_feasible": (c.get("prediction") or {}).get("feasible"),
        }
        for c in cases
        if c["status"] != "ok"
    ]
    comparison = {
        "provenance": prov,
        "rows": [r for c in cases for r in compare(c)],
        "not_measured": failed,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    measured_file = PlanRunFile.model_validate(measured)
    comparison_file = ComparisonFile.model_validate(comparison)
    (out / "measured.json").write_text(measured_file.to_json(sort_keys=True))
    (out / "comparison.json").write_text(comparison_file.to_json(sort_keys=True))
    return {"measured": measured_file.to_dict(), "comparison": comparison_file.to_dict()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--plan", nargs="+", required=True, help="plan.json files (tierplan plan --out)"
    )
    ap.add_argument("--out", required=True, help="directory for measured.json and comparison.json")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baselines", default="", help="comma list of: none, checkpoint")
    ap.add_argument(
        "--check-grads",
        type=int,
        default=None,
        metavar="TOKENS",
        help="compare each plan's gradients with no plan at this many tokens",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    ap.add_argument(
        "--arena",
        action="store_true",
        help="the executor's buffers at planned offsets in one allocation (the warm-up records them)",
    )
    add_diagnostic_args(ap)
    ap.add_argument("--state-dir", default=None,
                    help="directory for optimizer states on nvme (default: OUT/optimizer-states)")
    ap.add_argument("--case-out", help=argparse.SUPPRESS)  # one case, by run() on the GPU
    ap.add_argument("--diagnostics-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = tuple(b for b in args.baselines.split(",") if b)
    bad = [b for b in names if b not in BASELINES]
    if bad:
        print(
            f"--baselines: unknown {bad[0]!r} (choose from {', '.join(BASELINES)})", file=sys.stderr
        )
        return 2
    try:
        if args.case_out:
            case = measure_one(
                args.plan[0],
                names[0] if names else None,
                warmup=args.warmup,
                repeats=args.repeats,
                smoke=args.smoke,
                check_grads_tokens=args.check_grads,
                arena=args.arena,
                diagnostics_dir=Path(args.diagnostics_dir) if args.diagnostics_dir else None,
                memory_trace=args.memory_trace,
                kernel_profile=args.kernel_profile,
                cap=not args.no_cap,
                state_dir=Path(args.state_dir) if args.state_dir else None,
            )
            Path(args.case_out).write_text(json.dumps(case))
            return 0
        run(
            args.plan,
            out_dir=args.out,
            warmup=args.warmup,
            repeats=args.repeats,
            baselines=names,
            smoke=args.smoke,
            check_grads_tokens=args.check_grads,
            arena=args.arena,
            **diagnostic_kwargs(args),
            state_dir=args.state_dir,
            argv=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
        )
    except UserInputError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
