"""Decode attention on the host CPU: its rate over a KV cache in host memory, and a decode step that uses it.

Models: nothing; this script measures. Two parts, one process:
  * ``micro``: torch's CPU SDPA of one query token per sequence (GQA: Llama-3.1-8B's 32 query
    heads over 8 KV heads, head_dim 128) over K and V laid out as the static engine's host pool
    ([B, L, K, D], pinned on a CUDA machine, read through the engine's transposed view) at 8K,
    32K, 128K keys and batch 1 and 4, bf16 (the engines' dtype) and fp32, with every CPU this
    process may use (``validate.infer_executor.cpu_attention_threads``: what the engine uses), with
    half of them, and with one for the smallest shape; per shape the median of ``REPEATS`` calls
    and the KV bytes it read per second; per dtype and thread count the
    least-squares line time = latency_s + kv_bytes / kv_bytes_per_s (``hwmodels.host_overhead.fit_line``):
    the figures of ``hwmodels.host_overhead.CpuAttentionRate`` (today assumed); beside them the
    rate of a plain read of 2 GiB (``torch.sum``, fp32) with the same threads;
  * ``decode``: Llama-3.1-8B at 128K tokens, batch 1, gen_len 6 on 1xH200 through the static
    engine (validate.infer_executor, CUDA graphs on): every layer's KV on the host attended on the
    GPU (``kv_host``), then the same with every fourth layer's attention on the CPU
    (``cpu_every_4``: layers 0, 4, ..., 28): prefill time, decode step times (median after the
    first 2), the CPU's seconds per step, tokens (equal or not to kv_host's), and the replay's
    prediction of each at the measured context (``planners.infer.replay_plan``).
Assumes: one CUDA GPU with 40 GiB of HBM free and 40 GiB of host memory for the pinned pools
(``--smoke``: the CPU, a tiny model and short lengths, to check the logic; its figures are not the
H200 host's).
Ignores: NUMA placement of the pinned pool (the reference host has one socket).
Writes ``{"provenance": ..., "micro": [...], "fits": {...}, "read_bytes_per_s": ..., "decode": [...]}``
to ``--out``.
Run on the GPU machine (about 2 minutes on the H200):
    python3 validate/scripts/cpu_attention_bench.py --out cpu-attention-h200.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from hwmodels.host_overhead import fit_line  # noqa: E402
from hwmodels.units import GiB  # noqa: E402
from kernels.microbench import provenance  # noqa: E402
from kernels.timing import time_steps  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3.1-8B
CONTEXTS = (8192, 32768, 131072)
BATCHES = (1, 4)
REPEATS = 5
DECODE_CELL = {"model": "llama-3.1-8b", "prompt_len": 131072, "gen_len": 6, "batch": 1, "node": "1xH200"}
CPU_EVERY = 4


def _time(fn: Any, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one untimed (warm: the thread pool, the kernel's buffers)."""
    return statistics.median(time_steps(fn, device=torch.device("cpu"), warmup=1, repeats=repeats))


def micro_records(*, contexts: Sequence[int], batches: Sequence[int], threads: Sequence[int], pin: bool,
                  repeats: int) -> list[dict[str, Any]]:
    """CPU SDPA of one query token over a [B, L, K, D] pool, per shape, dtype and thread count."""
    import torch.nn.functional as F

    out = []
    for dtype in (torch.bfloat16, torch.float32):
        for b in batches:
            for ctx in contexts:
                k = torch.randn(b, ctx, KV_HEADS, HEAD_DIM, dtype=dtype, pin_memory=pin)
                v = torch.randn(b, ctx, KV_HEADS, HEAD_DIM, dtype=dtype, pin_memory=pin)
                q = torch.randn(b, HEADS, 1, HEAD_DIM, dtype=dtype)
                kv_bytes = 2 * k.numel() * k.element_size()
                for n in threads:
                    if n == 1 and (b, ctx) != (1, min(contexts)) and len(threads) > 1:
                        continue  # one thread: the smallest shape only (its rate, not the fit's)
                    torch.set_num_threads(n)
                    s = _time(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                        q, k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True), repeats)
                    out.append({"dtype": str(dtype).removeprefix("torch."), "batch": b, "context_len": ctx,
                                "threads": n, "time_s": s, "kv_bytes": kv_bytes, "kv_bytes_per_s": kv_bytes / s})
                del k, v
    return out


def fits(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per dtype and thread count: time_s = latency_s + kv_bytes / kv_bytes_per_s, least squares."""
    out = {}
    for key in sorted({(r["dtype"], r["threads"]) for r in records}):
        pts = [r for r in records if (r["dtype"], r["threads"]) == key]
        if len({r["kv_bytes"] for r in pts}) < 2:
            continue
        latency, slope = fit_line([r["kv_bytes"] for r in pts], [r["time_s"] for r in pts])
        out[f"{key[0]}.threads{key[1]}"] = {"latency_s": latency, "kv_bytes_per_s": 1.0 / slope if slope > 0 else 0.0,
                                            "num_points": len(pts)}
    return out


def read_bytes_per_s(num_bytes: int, threads: int, repeats: int) -> float:
    """A plain read of ``num_bytes`` of fp32 (``torch.sum``) with ``threads`` threads."""
    torch.set_num_threads(threads)
    x = torch.ones(num_bytes // 4, dtype=torch.float32)
    return num_bytes / _time(lambda: x.sum(), repeats)


def decode_records(*, smoke: bool) -> list[dict[str, Any]]:
    """The 128K batch-1 cell (smoke: a tiny model) with its KV on the host, attention on the GPU
    and then every ``CPU_EVERY``-th layer's on the CPU: measured, and replayed at the measured
    context."""
    from hwmodels.catalog import load_node
    from planners.infer import replay_plan
    from simulator.job import InferJob
    from simulator.model import ModelSpec, get_model
    from simulator.scenario import Scenario
    from validate.infer_bench import infer_plan
    from validate.infer_executor import run_static
    from validate.run_plan import SMOKE_SHAPE

    cell = dict(DECODE_CELL)
    spec = get_model(cell["model"])
    if smoke:
        spec = ModelSpec.model_validate({**spec.model_dump(), **SMOKE_SHAPE, "num_layers": 4, "num_kv_heads": 2,
                                         "max_position_embeddings": 4096})
        cell.update(prompt_len=32)
    job = InferJob(prompt_len=cell["prompt_len"], gen_len=cell["gen_len"], batch=cell["batch"])
    sc = Scenario.build(spec, job, load_node(cell["node"]))
    layers = range(spec.num_layers)
    device = "cpu" if smoke else "cuda"
    out: list[dict[str, Any]] = []
    ref_tokens = None
    for mode, on_cpu in (("kv_host", ()), (f"cpu_every_{CPU_EVERY}", layers[::CPU_EVERY])):
        plan = infer_plan(sc, kv_host=layers, attention_cpu=on_cpu)
        t0 = time.perf_counter()
        run = run_static(plan, device=device, dtype=torch.float32 if smoke else None)
        wall = time.perf_counter() - t0
        ctx = run.contexts[-1] if run.contexts else job.prompt_len
        pred = replay_plan(plan, context_len=ctx, decode_only=True)
        ref_tokens = run.tokens if ref_tokens is None else ref_tokens
        out.append({"mode": mode, "cpu_attention_layers": list(on_cpu), "prefill_time_s": run.prefill_time_s,
                    "decode_step_times_s": run.decode_step_times_s, "decode_step_time_s": run.decode_step_time_s,
                    "contexts": run.contexts, "tokens": run.tokens, "tokens_equal_kv_host": run.tokens == ref_tokens,
                    "peak_allocated_bytes": run.peak_allocated_bytes, "host_pinned_bytes": run.host_pinned_bytes,
                    "h2d_bytes_per_step": run.h2d_bytes_per_step, "d2h_bytes_per_step": run.d2h_bytes_per_step,
                    "notes": run.notes, "wall_s": wall,
                    "predicted_decode_step_time_s_at_last_context": pred.decode_step_time_s,
                    "predicted_context_len": ctx, **{k: v for k, v in cell.items() if k != "model"},
                    "model": spec.name})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from validate.infer_executor import cpu_attention_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output JSON file")
    ap.add_argument("--smoke", action="store_true", help="the CPU, tiny shapes (checks the logic)")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("cpu_attention_bench: no CUDA device (use --smoke for a CPU check)", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.smoke else torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    prov = provenance(sys.argv if argv is None else ["validate/scripts/cpu_attention_bench.py", *argv], device)
    all_threads = cpu_attention_threads()
    t0 = time.perf_counter()
    threads = sorted({1, max(1, all_threads // 2), all_threads})
    micro = micro_records(contexts=(64, 256) if args.smoke else CONTEXTS, batches=(1,) if args.smoke else BATCHES,
                          threads=threads, pin=device.type == "cuda", repeats=2 if args.smoke else REPEATS)
    read = read_bytes_per_s((16 << 20) if args.smoke else 2 * GiB, all_threads, 2 if args.smoke else REPEATS)
    decode = decode_records(smoke=args.smoke)
    torch.set_num_threads(all_threads)
    data = {"provenance": prov, "wall_s": time.perf_counter() - t0, "cpu_attention_threads": all_threads,
            "micro": micro, "fits": fits(micro),
            "read_bytes_per_s": read, "read_threads": all_threads, "decode": decode}
    Path(args.out).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    for name, f in data["fits"].items():
        print(f"{name}: {f['kv_bytes_per_s'] / 1e9:.1f} GB/s + {f['latency_s'] * 1e6:.0f} us per call")
    print(f"read ({all_threads} threads): {read / 1e9:.1f} GB/s")
    for r in decode:
        print(f"{r['mode']}: decode step {r['decode_step_time_s']:.4f} s (replay "
              f"{r['predicted_decode_step_time_s_at_last_context']:.4f} s), tokens equal kv_host: "
              f"{r['tokens_equal_kv_host']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
