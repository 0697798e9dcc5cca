"""Where transformers' offloaded DynamicCache spends a decode step, and how fast this machine's host
issues an eager decode step (one H200, about two minutes).

Models: nothing; it measures. Four parts, one process:
  * ``host_probe``: the HF engine (validate.infer_hf, all KV resident) on Llama-3.1-8B at a
    ``--probe-prompt-len`` prompt (1K tokens), batch 1, 16 decode steps: at that context the GPU's
    work (about 4 ms of weight reads) is far below the host's issue time, so the median step is
    this machine instance's host floor of an HF eager step; beside it the host seconds of the
    forward call alone (``time.perf_counter`` around it, no synchronize inside);
  * ``copies``: the offloaded cache's pattern without a model: 32 layers of K and V
    ([1, 8, L, 128] bf16 at ``--prompt-len`` L), each step per layer the default stream waits for
    the prefetch stream, layer l + 1 goes H2D on the prefetch stream, layer l's K,V grow by one
    token (``torch.cat``) and go back with ``.to("cpu", non_blocking=True)`` on the default stream
    (transformers 5.17's ``Cache.update``), timed per step; the same with the D2H on a stream of
    its own, with H2D only and with D2H only;
  * ``hf_offloaded``: the HF engine with ``DynamicCache(offloading=True)`` at ``--prompt-len``,
    batch 1: ``--steps`` decode steps timed (CUDA events, ``kernels.timing``), then two steps under
    torch.profiler: per copy kind (the profiler's memcpy names say pinned or pageable) the count,
    bytes, busy seconds and rate, the union of H2D and D2H busy time and their overlap, the
    kernels' busy time, and the host's CUDA runtime calls by name (count, seconds);
  * ``hf_resident``: the same two profiled steps with the resident DynamicCache (its
    ``torch.cat`` kernels' time and bytes).
Assumes: one CUDA GPU with ~45 GB of HBM free and ~70 GiB of host memory for pinned blocks.
Writes ``{"provenance": ..., "host_probe": ..., "copies": ..., "hf_offloaded": ..., "hf_resident": ...}``
to ``--out`` and each profile's Chrome trace beside it (gzip).

python3 validate/scripts/hf_offload_diag.py --out hf-offload-diag.json [--prompt-len 131072]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from hwmodels.catalog import load_node  # noqa: E402
from kernels.microbench import provenance  # noqa: E402
from kernels.timing import time_one  # noqa: E402
from simulator.job import InferJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from validate.infer_bench import infer_plan  # noqa: E402
from validate.infer_hf import HFDecodeEngine  # noqa: E402

LAYERS, KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3.1-8B


def _plan(prompt_len: int, gen_len: int, *, smoke: bool = False) -> Any:
    """The HF engine's all-resident plan of Llama-3.1-8B (smoke: a 2-layer tiny copy), batch 1, on 1xH200."""
    from simulator.model import ModelSpec
    from validate.run_plan import SMOKE_SHAPE

    spec = get_model("llama-3.1-8b")
    if smoke:
        spec = ModelSpec.model_validate({**spec.model_dump(), **SMOKE_SHAPE, "num_layers": 2,
                                         "max_position_embeddings": 4096})
    job = InferJob(prompt_len=prompt_len, gen_len=gen_len, batch=1, engine="hf")
    return infer_plan(Scenario.build(spec, job, load_node("1xH200")))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def host_probe(engine: HFDecodeEngine, prompt_len: int) -> dict[str, Any]:
    """Median decode step of the resident HF engine at a short prompt, and the forward call's host time."""
    run = engine.run()
    cache = engine.new_cache()
    dev = engine.device
    ids = torch.randint(0, min(1000, engine.spec.vocab_size), (1, prompt_len), device=dev)
    host_s: list[float] = []
    with torch.inference_mode():
        lg = engine._forward(ids, cache, keep=1)
        tok = lg.argmax(-1)
        _sync(dev)
        for _ in range(16):
            t0 = time.perf_counter()
            lg = engine._forward(tok[:, None], cache, keep=1)
            host_s.append(time.perf_counter() - t0)
            tok = lg.argmax(-1)
            _sync(dev)
    del cache
    steps = run.decode_step_times_s
    return {"prompt_len": prompt_len, "decode_step_times_s": steps,
            "decode_step_time_s": statistics.median(steps[2:]),
            "forward_host_times_s": host_s, "forward_host_time_s": statistics.median(host_s[2:])}


def copies(prompt_len: int, steps: int) -> list[dict[str, Any]]:
    """The offloaded cache's copy pattern alone, four ways, seconds per step."""
    dev = torch.device("cuda")
    shape = (1, KV_HEADS, prompt_len, HEAD_DIM)
    out = []
    for variant in ("hf_order", "d2h_own_stream", "h2d_only", "d2h_only"):
        host = [[torch.zeros(shape, dtype=torch.bfloat16, pin_memory=True) for _ in range(2)] for _ in range(LAYERS)]
        gpu_new = torch.randn((1, KV_HEADS, 1, HEAD_DIM), dtype=torch.bfloat16, device=dev)
        prefetch, d2h = torch.cuda.Stream(), torch.cuda.Stream()
        default = torch.cuda.current_stream()
        resident = [t.to(dev) for t in host[0]] if variant == "d2h_only" else None
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fetched: dict[int, list[torch.Tensor]] = {}
            if variant != "d2h_only":
                with torch.cuda.stream(prefetch):
                    fetched[0] = [t.to(dev, non_blocking=True) for t in host[0]]
            for layer in range(LAYERS):
                default.wait_stream(prefetch)
                if variant != "d2h_only" and layer + 1 < LAYERS:
                    with torch.cuda.stream(prefetch):
                        fetched[layer + 1] = [t.to(dev, non_blocking=True) for t in host[layer + 1]]
                kv = fetched.pop(layer) if variant != "d2h_only" else resident
                grown = [torch.cat([t, gpu_new], dim=-2) for t in kv]
                if variant == "h2d_only":
                    continue
                if variant == "d2h_own_stream":
                    d2h.wait_stream(default)
                    with torch.cuda.stream(d2h):
                        back = [t.to("cpu", non_blocking=True) for t in grown]
                    for t in grown:
                        t.record_stream(d2h)
                else:
                    back = [t.to("cpu", non_blocking=True) for t in grown]
                host[layer] = [b.narrow(-2, 0, prompt_len) for b in back]
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        moved = LAYERS * 2 * KV_HEADS * prompt_len * HEAD_DIM * 2
        out.append({"variant": variant, "step_times_s": times, "step_time_s": statistics.median(times[2:]),
                    "bytes_per_direction": moved})
        del host, resident, fetched
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()
    return out


def _summarize_trace(path: Path) -> dict[str, Any]:
    """Copies by kind, their busy union and overlap, kernels' busy time, and runtime calls, from a Chrome trace."""
    events = json.loads(path.read_text())["traceEvents"]
    memcpy: dict[str, dict[str, float]] = {}
    spans: dict[str, list[tuple[float, float]]] = {"h2d": [], "d2h": [], "kernel": []}
    runtime: dict[str, dict[str, float]] = {}
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        cat, name, ts, dur = e.get("cat", ""), e.get("name", ""), float(e.get("ts", 0)), float(e.get("dur", 0))
        if cat == "gpu_memcpy":
            k = memcpy.setdefault(name, {"count": 0, "bytes": 0.0, "busy_s": 0.0})
            k["count"] += 1
            k["bytes"] += float(e.get("args", {}).get("bytes", 0))
            k["busy_s"] += dur * 1e-6
            key = "h2d" if "HtoD" in name else "d2h" if "DtoH" in name else None
            if key:
                spans[key].append((ts, ts + dur))
        elif cat == "kernel":
            spans["kernel"].append((ts, ts + dur))
            k = memcpy.setdefault("kernel " + name[:60], {"count": 0, "bytes": 0.0, "busy_s": 0.0})
            k["count"] += 1
            k["busy_s"] += dur * 1e-6
        elif cat == "cuda_runtime" or cat == "cuda_driver":
            r = runtime.setdefault(name, {"count": 0, "s": 0.0})
            r["count"] += 1
            r["s"] += dur * 1e-6

    def union(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
        merged: list[list[float]] = []
        for a, b in sorted(iv):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return [(a, b) for a, b in merged]

    def total(iv: list[tuple[float, float]]) -> float:
        return sum(b - a for a, b in iv) * 1e-6

    h2d, d2h = union(spans["h2d"]), union(spans["d2h"])
    both = union(h2d + d2h)
    for k in memcpy.values():
        if k["bytes"] and k["busy_s"]:
            k["bytes_per_s"] = k["bytes"] / k["busy_s"]
    top = dict(sorted(memcpy.items(), key=lambda kv: -kv[1]["busy_s"])[:25])
    calls = dict(sorted(runtime.items(), key=lambda kv: -kv[1]["s"])[:25])
    all_gpu = union(h2d + d2h + union(spans["kernel"]))
    return {"h2d_busy_s": total(h2d), "d2h_busy_s": total(d2h), "copy_union_s": total(both),
            "copy_overlap_s": total(h2d) + total(d2h) - total(both), "kernel_busy_s": total(union(spans["kernel"])),
            "gpu_any_busy_s": total(all_gpu),
            "span_s": (max(b for _, b in all_gpu) - min(a for a, _ in all_gpu)) * 1e-6 if all_gpu else 0.0,
            "by_kind": top, "runtime_calls": calls}


def profiled(engine: HFDecodeEngine, prompt_len: int, steps: int, trace: Path) -> dict[str, Any]:
    """Prefill, ``steps`` timed decode steps, then two under the profiler (their trace summarized)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.device.type == "cuda" else [])

    dev = engine.device
    cache = engine.new_cache()
    ids = torch.randint(0, min(1000, engine.spec.vocab_size), (1, prompt_len), device=dev)
    times: list[float] = []
    with torch.inference_mode():
        lg = engine._forward(ids, cache, keep=1)
        tok = [lg.argmax(-1)]
        _sync(dev)

        def decode() -> None:
            lg = engine._forward(tok[0][:, None], cache, keep=1)
            tok[0] = lg.argmax(-1)

        for _ in range(steps):
            times.append(time_one(decode, dev))
        _sync(dev)
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(2):
                decode()
            _sync(dev)
            wall = time.perf_counter() - t0
    prof.export_chrome_trace(str(trace))
    summary = _summarize_trace(trace)
    with open(trace, "rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"prompt_len": prompt_len, "decode_step_times_s": times,
            "decode_step_time_s": statistics.median(times[len(times) // 2:]),
            "profiled_two_steps_wall_s": wall, "trace": trace.name + ".gz", **summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt-len", type=int, default=131072)
    ap.add_argument("--probe-prompt-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--copy-steps", type=int, default=6)
    ap.add_argument("--smoke", action="store_true", help="the CPU, a tiny model: the probe and the resident "
                    "profile only (checks the logic; its figures are not the H200 host's)")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("hf_offload_diag: needs a CUDA device (use --smoke for a CPU check)", file=sys.stderr)
        return 2
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.prompt_len, args.probe_prompt_len, args.steps = 64, 16, 4
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"schema_version": 1, "provenance": provenance(sys.argv, torch.device(device))}
    resident = HFDecodeEngine(_plan(args.probe_prompt_len, 16, smoke=args.smoke), device=device)
    result["host_probe"] = host_probe(resident, args.probe_prompt_len)
    print("host_probe", json.dumps({k: v for k, v in result["host_probe"].items() if not k.endswith("times_s")}),
          flush=True)
    if not args.smoke:
        result["copies"] = copies(args.prompt_len, args.copy_steps)
        for c in result["copies"]:
            print("copies", c["variant"], round(c["step_time_s"], 4), flush=True)
        resident.offloading = True  # DynamicCache(offloading=True) from here: the same model, one copy in HBM
        result["hf_offloaded"] = profiled(resident, args.prompt_len, args.steps,
                                          out.with_name(out.stem + "-offloaded-trace.json"))
        gc.collect()  # the offloaded cache's blocks, before the resident run
        print("hf_offloaded", round(result["hf_offloaded"]["decode_step_time_s"], 4),
              json.dumps({k: v for k, v in result["hf_offloaded"].items() if k.endswith("_s") and "times" not in k}),
              flush=True)
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()
        resident.offloading = False
    result["hf_resident"] = profiled(resident, args.prompt_len, 6, out.with_name(out.stem + "-resident-trace.json"))
    print("hf_resident", round(result["hf_resident"]["decode_step_time_s"], 4), flush=True)
    result["elapsed_s"] = time.perf_counter() - t0
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
