"""The whole-model 1M plan validated with fewer layers: its first segment(s) run for real while
the host memory and disk that its other layers would use are really held.

Models: nothing; it derives, holds and measures. From a whole-step plan of all the model's
layers (``tierplan plan --model llama-3.1-8b --seq-len 1M --hardware 1xH200-box --allocator
expandable --out DIR``: ``DIR/plan.json``) it derives the plan of its first ``--layers`` k layers
with the very same per-layer decisions (k must end a segment, so every segment is whole: the
first one by default), and replays both (`planners.swap.evaluate`, the planner's own counts). The
bytes the other n - k layers would hold are the difference of the two replays' peaks: host
(their pinned parameters and gradients, offloaded segment heads, state staging) and disk (their
optimizer-state files). It refuses in one line, before anything is held, when the k-layer run's
predicted host and disk peaks plus the held bytes exceed what the machine has (available host
memory, free space of the state directory). Otherwise it allocates and touches the host bytes
(one buffer, every page written), writes the disk bytes as files under ``STATE_DIR/held`` (synced),
then runs the k-layer plan through ``validate.run_plan`` (the executor, the plan's GPU budget,
``expandable_segments:True``), and writes ``whole-1m-fewer.json``: the measured case, the k-layer
replay's and the n-layer plan's predictions, the held bytes, and the comparison rows: step time,
per-layer step time (the step less the replay's time outside the decoder layers, per layer),
HBM allocated and reserved peaks, host (pool + model states) and disk peaks.
Assumes: the plan's layers are alike in cost (the per-layer time of the n-layer plan is the
marginal time of a layer: (step_n - step_k) / (n - k)); one GPU; the held bytes stand in for the
other layers' bytes (same tiers, no traffic: their copies are not made).
Ignores: the other layers' copies' share of PCIe and disk bandwidth (the k-layer replay has none).
Run on the GPU machine (one call, about 6-8 minutes of device time at 1M; see
validate/plans/README.md):
    python3 validate/scripts/whole_model_1m.py --plan validate/plans/whole-model/whole-8b-1m.json \\
        --out $OUT/whole-8b-1m-3l --state-dir /var/tmp/tierplan-states
``--smoke`` runs a tiny copy of the k-layer plan on the CPU (the same code path) for CI.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from hwmodels.units import GiB, UserInputError, format_bytes  # noqa: E402
from planners.plan import Plan, Prediction, load_plan, segments  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402

HELD_FILE_BYTES = 1 << 30  # disk bytes are written as files of this size (the last one shorter)
WRITE_CHUNK_BYTES = 64 << 20
PAGE_BYTES = 4096


def first_layers(plan: Plan, k: int) -> Plan:
    """The plan of the first ``k`` layers of ``plan``'s model with ``plan``'s per-layer decisions,
    its knobs and budgets, replayed (its ``prediction``) as ``tierplan plan`` replays a plan."""
    n = len(plan.layers)
    if not 0 < k < n:
        raise UserInputError(f"--layers: {k}, the plan has {n} layers (give 1 .. {n - 1})")
    if plan.layers[k].input == "recompute":
        raise UserInputError(f"--layers: {k} cuts a segment (layer {k} recomputes its input from an earlier "
                             "layer); end at a segment's last layer")
    sc = Scenario.from_plan(plan)
    scenario = Scenario(model=sc.model.with_layers(k), job=sc.job, node=sc.node,
                        gpu_budget_bytes=sc.gpu_budget_bytes, host_budget_bytes=sc.host_budget_bytes)
    sub = Plan.for_scenario(scenario, layers=list(plan.layers[:k]), lm_head_chunks=plan.lm_head_chunks,
                            prefetch_lookahead_layers=plan.prefetch_lookahead_layers, prefetch_at=plan.prefetch_at,
                            mlp_activation=plan.mlp_activation, provenance=plan.provenance)
    return replayed(sub, source=f"first {k} layers")


def replayed(plan: Plan, *, source: str) -> Plan:
    """``plan`` with today's replay as its prediction."""
    from planners.swap import PlanContext, evaluate

    ctx = PlanContext.from_plan(plan, source=source)
    res = evaluate(ctx, plan.provenance.planner, plan.layers)
    assert res.plan is not None and res.plan.prediction is not None  # evaluate always replays
    return res.plan.model_copy(update={"provenance": plan.provenance})


def tier_peak(pred: Prediction, tier: str) -> int:
    if tier == "host":
        return pred.peak_host_bytes
    return (pred.tier_peak_bytes or {}).get(tier, 0)


def held_bytes(whole: Prediction, fewer: Prediction) -> dict[str, int]:
    """Host and disk bytes the layers left out would hold at the peak: the difference of the
    two replays' peaks (never negative)."""
    return {tier: max(0, tier_peak(whole, tier) - tier_peak(fewer, tier)) for tier in ("host", "nvme")}


def check_room(fewer: Prediction, held: dict[str, int], *, host_available_bytes: int,
               disk_free_bytes: int) -> None:
    """Refuse, in one line, a run whose held bytes plus its own predicted peaks do not fit."""
    need_host = held["host"] + tier_peak(fewer, "host")
    if need_host > host_available_bytes:
        raise UserInputError(
            f"host: held {format_bytes(held['host'])} + the run's {format_bytes(tier_peak(fewer, 'host'))} = "
            f"{format_bytes(need_host)} exceeds available host memory {format_bytes(host_available_bytes)}")
    need_disk = held["nvme"] + tier_peak(fewer, "nvme")
    if need_disk > disk_free_bytes:
        raise UserInputError(
            f"disk: held {format_bytes(held['nvme'])} + the run's {format_bytes(tier_peak(fewer, 'nvme'))} = "
            f"{format_bytes(need_disk)} exceeds the free space of the state directory {format_bytes(disk_free_bytes)}")


def hold_host(num_bytes: int) -> mmap.mmap | None:
    """``num_bytes`` of private anonymous host memory with every page written (resident, not just
    mapped; populated by the kernel up front where it can, which is several times faster than
    faulting each page in from Python)."""
    if num_bytes <= 0:
        return None
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    buf = mmap.mmap(-1, num_bytes, flags=flags)
    chunk = b"\x01" * min(num_bytes, WRITE_CHUNK_BYTES)
    for start in range(0, num_bytes, len(chunk)):
        n = min(len(chunk), num_bytes - start)
        buf[start:start + n] = chunk[:n]
    return buf


def hold_disk(num_bytes: int, where: Path) -> list[Path]:
    """``num_bytes`` written (and synced) as files under ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    chunk = b"\x01" * WRITE_CHUNK_BYTES
    paths: list[Path] = []
    left = num_bytes
    while left > 0:
        path = where / f"held{len(paths):04d}.bin"
        size = min(left, HELD_FILE_BYTES)
        with open(path, "wb") as f:
            done = 0
            while done < size:
                n = min(len(chunk), size - done)
                f.write(chunk[:n])
                done += n
            f.flush()
            os.fsync(f.fileno())
        paths.append(path)
        left -= size
    return paths


def rows(case: dict[str, Any], fewer: Prediction, whole: Prediction, *, num_layers: int, k: int) -> list[dict]:
    """Predicted vs measured figures of the k-layer run; the n-layer plan's per-layer time beside."""
    if case.get("status") != "ok":
        return []
    per_layer_s = (whole.step_time_s - fewer.step_time_s) / (num_layers - k)
    outside_s = fewer.step_time_s - k * per_layer_s  # embedding, head + loss, the steps' tails
    states = case.get("model_states", {})
    pairs = [
        ("step_time_s", fewer.step_time_s, case["step_time_s"]),
        ("per_layer_step_time_s", per_layer_s, (case["step_time_s"] - outside_s) / k),
        ("peak_host_bytes", tier_peak(fewer, "host"), case["host_pool_peak_bytes"] + states.get("host_bytes", 0)),
        ("peak_disk_bytes", tier_peak(fewer, "nvme"), states.get("disk_bytes", 0)),
    ]
    if "peak_allocated_bytes" in case:
        pairs.insert(2, ("peak_hbm_bytes", fewer.peak_hbm_bytes, case["peak_allocated_bytes"]))
        if fewer.peak_reserved_bytes is not None:
            pairs.insert(3, ("peak_reserved_bytes", fewer.peak_reserved_bytes, case["peak_reserved_bytes"]))
    return [{"figure": fig, "predicted": p, "measured": m,
             "rel_error": (p / m - 1.0) if m else (0.0 if p == m else None)} for fig, p, m in pairs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", required=True, help="the whole-step plan of all layers (plan.json)")
    ap.add_argument("--out", required=True, help="directory for the k-layer plan and whole-1m-fewer.json")
    ap.add_argument("--layers", type=int, default=None, help="k: layers to run (default: the first segment)")
    ap.add_argument("--state-dir", default=None, help="optimizer-state files and the held disk bytes (default: OUT/states)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps (0: one 1M step of 3 layers is ~5 min)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny copy of the k-layer plan on the CPU")
    args = ap.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1:
        bad = "--warmup" if args.warmup < 0 else "--repeats"
        print(f"error: {bad}: {getattr(args, bad[2:])} (warm-up steps >= 0, timed steps >= 1)", file=sys.stderr)
        return 2
    out = Path(args.out)
    state_dir = Path(args.state_dir) if args.state_dir else out / "states"
    held_dir = state_dir / "held"
    try:
        # the executor's allocator, before CUDA starts (as validate.run_plan's cases)
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
        if "expandable_segments" not in conf:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ",".join(filter(None, [conf, "expandable_segments:True"]))
        plan = load_plan(args.plan)
        n = len(plan.layers)
        segs = segments(plan.layers)
        k = args.layers if args.layers is not None else (segs[0][-1] + 1 if 0 in segs else 1)
        whole = replayed(plan, source=args.plan)
        fewer = first_layers(plan, k)
        assert whole.prediction is not None and fewer.prediction is not None  # replayed
        held = held_bytes(whole.prediction, fewer.prediction)
        import validate.run_plan as run_plan

        existing = state_dir  # the free space where the state dir will be: nothing made before the check
        while not existing.exists():
            existing = existing.parent
        check_room(fewer.prediction, held, host_available_bytes=run_plan.host_memory_bytes(),
                   disk_free_bytes=shutil.disk_usage(existing).free)
        state_dir.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        sub_path = out / f"first-{k}-layers.json"
        sub_path.write_text(fewer.to_json())
        host = hold_host(held["host"])
        files = hold_disk(held["nvme"], held_dir)
        try:
            case = run_plan.measure_one(str(sub_path), None, warmup=args.warmup, repeats=args.repeats, smoke=args.smoke,
                               check_grads_tokens=None, state_dir=state_dir)
        finally:
            for f in files:
                f.unlink()
            if host is not None:
                host.close()
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch

    from kernels.microbench import provenance
    from validate.records import FewerLayersFile

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    report = {
        "provenance": provenance(sys.argv if argv is None else [sys.argv[0], *argv], device),
        "plan": str(args.plan), "num_layers": n, "layers_run": k, "smoke": args.smoke,
        "held_bytes": held, "held_files": len(files),
        "prediction_fewer": fewer.prediction.model_dump(), "prediction_whole": whole.prediction.model_dump(),
        "prediction_whole_committed": plan.prediction.model_dump() if plan.prediction else None,
        "case": case,
        "comparison": rows(case, fewer.prediction, whole.prediction, num_layers=n, k=k),
    }
    FewerLayersFile.model_validate(report)  # what is written is a valid measurement file
    (out / "whole-1m-fewer.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    status = case.get("status")
    print(f"{k} of {n} layers: {status}; held host {held['host'] / GiB:.2f} GiB, disk {held['nvme'] / GiB:.2f} GiB")
    for r in report["comparison"]:
        err = "" if r["rel_error"] is None else f"{r['rel_error']:+.1%}"
        print(f"  {r['figure']:24s} predicted {r['predicted']:.6g} measured {r['measured']:.6g} {err}")
    if status != "ok":
        print(f"  {case.get('message', '')}".rstrip())
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
