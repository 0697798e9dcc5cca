"""The host's side of eager decoding: what one op, one decoder layer and one CUDA graph cost the CPU.

Models: nothing; this script measures. A decode step of batch 1 runs a few hundred tiny kernels;
on our H200 host the Python + dispatcher + launch time of each exceeds its GPU time, so the step
is bound by the host. Five parts, each in one process on one GPU:
  * ``dispatch``: the host time of one call of a few op kinds (elementwise, reduction, linear,
    cat, copy, SDPA, view-only) on [1, 1, 256]-sized bf16 tensors: ``host_s`` the loop's wall time
    over its calls (no synchronization inside; the GPU keeps up, so the launch queue never fills),
    ``wall_s`` the same with the synchronization at its end;
  * ``hf_decode``: transformers' decode step (validate.infer_hf's engine, DynamicCache, resident
    and ``offloading=True``) of a tiny-width Llama (hidden 256, 4 heads, 2 kv heads, f 512, vocab
    1024: every kernel is far shorter than its launch) at 1, 2, 4, 8, 16, 32 layers, and of
    Llama-3.1-8B's width at 1, 2, 4 layers (its weight GEMMs are still shorter than the layer's
    host time: the check that the width does not matter): per step the host time (the forward's
    return and the argmax's enqueue) and the synchronized wall time, median of the steps after
    ``WARM_STEPS``; the aten op count of one step (``TorchDispatchMode``) and, on CUDA, its
    kernel count (``torch.profiler``);
  * ``static_decode``: the static engine's (validate.infer_executor) decode step of the same
    tiny model, KV resident and on the host (medians of its own per-step times);
  * ``graphs``: a CUDA graph of 1, 8, 32, 128 tiny kernels replayed back to back: host and wall
    time per replay;
  * ``copies``: pinned host <-> device copies: one copy of 4 MiB .. 1 GiB each way, 64 copies of
    64 MiB back to back (the static engine's per-layer KV fetch at 32K), the same H2D chunks on a
    side stream while as many D2H chunks run on the default stream (DynamicCache offloading's
    two directions at once), and ``.to("cpu",
    non_blocking=True)`` of a 128 MiB tensor the first time (a new pinned block: cudaHostAlloc)
    and again after its block was freed (the caching host allocator's reuse);
  * ``decode_attention``: decode's SDPA (one query token, GQA 32/8, head_dim 128) at 8K, 32K,
    128K keys and batch 1, 4, 8 in both engines' KV layouts, queued: the bytes rate of KV reads;
  * ``prefill``: one 32K-token prefill pass of a 2-layer model of Llama-3.1-8B's width on each
    engine under torch.profiler: GPU seconds per kernel name (the 25 largest) and the wall time.
Each decode and prefill part runs twice, SDPA kept off cuDNN attention as the engines run it
(``no_cudnn``) and with torch's default order (``default``: cuDNN first, a plan per KV length).
``fit`` per engine, form and SDPA mode (``.cudnn``: default): host seconds per decode step = ``fixed_s + per_layer_s * layers``
(least squares over the tiny-width layer counts, ``hwmodels.host_overhead.fit_line``), and
``per_op_s`` = per_layer_s / aten ops per layer.
Assumes: torch with CUDA, transformers installed (``--smoke``: the CPU, fewer steps and calls,
to check the logic; its figures are not the GPU's).
Ignores: clocks and CPU frequency scaling (the provenance records nvidia-smi's before the run).
Writes ``{"provenance": ..., "dispatch": [...], ...}`` (validate.records.HostOverheadFile) to ``--out``.
Run on the GPU machine (about 1 minute on the H200):
    python3 validate/scripts/host_overhead.py --out host-overhead-h200.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from hwmodels.host_overhead import fit_line  # noqa: E402
from hwmodels.units import MiB  # noqa: E402
from kernels.microbench import provenance, sync  # noqa: E402

TINY = {"hidden_size": 256, "num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "intermediate_size": 512,
        "vocab_size": 1024, "max_position_embeddings": 4096}
TINY_LAYERS = (1, 2, 4, 8, 16, 32)
WIDE_LAYERS = (1, 2, 4)
PROMPT_LEN = 256
WARM_STEPS = 4
COPY_MIB = (4, 16, 64, 256, 1024)


def _spec(num_layers: int, *, tiny: bool) -> Any:
    from simulator.model import ModelSpec, get_model

    base = get_model("llama-3.1-8b")
    extra = TINY if tiny else {}
    return ModelSpec.model_validate({**base.model_dump(), **extra, "num_layers": num_layers,
                                     "name": f"{base.name}-{'tiny' if tiny else 'width'}-{num_layers}l"})


def _plan(spec: Any, *, engine: str, kv_host: bool, gen_len: int) -> Any:
    from hwmodels.catalog import load_node
    from simulator.job import InferJob
    from simulator.scenario import Scenario
    from validate.infer_bench import infer_plan

    job = InferJob(prompt_len=PROMPT_LEN, gen_len=gen_len, batch=1, engine=engine)
    sc = Scenario.build(spec, job, load_node("1xH200"))
    return infer_plan(sc, kv_host=range(spec.num_layers) if kv_host else ())


SDPA_MODES = ("no_cudnn", "default")
"""How SDPA picks its kernel in a part: ``no_cudnn`` as the engines run it since they keep SDPA
off cuDNN attention (flash, memory-efficient, math: cuDNN built a plan per new KV length, ~36 ms
of host time per decode step at 32K), ``default`` torch's own order (cuDNN first on the H200)."""


def _sdpa(mode: str, device: torch.device) -> Any:
    import contextlib

    if mode == "default" or device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _median_tail(values: Sequence[float]) -> float:
    tail = list(values[WARM_STEPS:]) or list(values)
    return statistics.median(tail)


# ---- dispatch ------------------------------------------------------------------------------------


def _op_cases(device: torch.device) -> list[tuple[str, bool, Callable[[], Any]]]:
    """(name, launches a kernel, call) on decode-sized bf16 operands."""
    bf = torch.bfloat16
    x = torch.randn(1, 1, 256, device=device, dtype=bf)
    y = torch.randn(1, 1, 256, device=device, dtype=bf)
    w = torch.randn(512, 256, device=device, dtype=bf)
    q = torch.randn(1, 4, 1, 64, device=device, dtype=bf)
    kv = torch.randn(1, 2, 64, 64, device=device, dtype=bf)
    dst = torch.empty(1, 2, 65, 64, device=device, dtype=bf)
    new = torch.randn(1, 2, 1, 64, device=device, dtype=bf)
    return [
        ("add", True, lambda: x + y),
        ("mul", True, lambda: x * y),
        ("silu", True, lambda: F.silu(x)),
        ("pow", True, lambda: x.pow(2)),
        ("mean", True, lambda: x.mean(-1, keepdim=True)),
        ("rsqrt", True, lambda: torch.rsqrt(x)),
        ("to_float", True, lambda: x.float()),
        ("linear", True, lambda: F.linear(x, w)),
        ("cat", True, lambda: torch.cat([kv, new], dim=-2)),
        ("copy_", True, lambda: dst[:, :, 64:].copy_(new)),
        ("sdpa_gqa", True, lambda: F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)),
        ("argmax", True, lambda: x.argmax(-1)),
        ("view_transpose", False, lambda: x.view(1, 1, 4, 64).transpose(1, 2)),
        ("empty", False, lambda: torch.empty(1, 1, 256, device=device, dtype=bf)),
    ]


def dispatch_records(device: torch.device, *, calls: int) -> list[dict[str, Any]]:
    rows = []
    with torch.inference_mode():
        for name, kernel, fn in _op_cases(device):
            for _ in range(20):
                fn()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            host = time.perf_counter() - t0
            sync(device)
            wall = time.perf_counter() - t0
            rows.append({"op": name, "kernel": kernel, "calls": calls, "host_s": host / calls,
                         "wall_s": wall / calls})
    return rows


# ---- decode steps --------------------------------------------------------------------------------


def _aten_ops(fn: Callable[[], Any]) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def _kernels(fn: Callable[[], Any], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def hf_decode_records(device: torch.device, *, steps: int, layers: Sequence[int], tiny: bool,
                      offloading: bool) -> list[dict[str, Any]]:
    from validate.infer_executor import prompt_ids
    from validate.infer_hf import HFDecodeEngine

    rows = []
    for n in layers:
        spec = _spec(n, tiny=tiny)
        plan = _plan(spec, engine="hf", kv_host=offloading, gen_len=steps)
        eng = HFDecodeEngine(plan, device=device)
        with torch.inference_mode():
            cache = eng.new_cache()
            ids = prompt_ids(eng.spec, eng.job, device)
            tok = eng._forward(ids, cache, keep=1).argmax(-1)
            sync(device)
            host, wall = [], []
            for _ in range(steps):
                t0 = time.perf_counter()
                tok = eng._forward(tok[:, None], cache, keep=1).argmax(-1)
                host.append(time.perf_counter() - t0)
                sync(device)
                wall.append(time.perf_counter() - t0)
            holder = [tok]

            def one_step(holder: list = holder, eng: Any = eng, cache: Any = cache) -> None:
                holder[0] = eng._forward(holder[0][:, None], cache, keep=1).argmax(-1)

            num_ops = _aten_ops(one_step)
            num_kernels = _kernels(one_step, device)
        rows.append({"engine": "hf", "offloading": offloading, "width": "tiny" if tiny else spec.hidden_size,
                     "num_layers": n, "context_len": PROMPT_LEN + steps, "host_s": _median_tail(host),
                     "wall_s": _median_tail(wall), "num_aten_ops": num_ops, "num_kernels": num_kernels,
                     "wall_steps_s": wall})
    return rows


def static_decode_records(device: torch.device, *, steps: int, layers: Sequence[int],
                          kv_host: bool) -> list[dict[str, Any]]:
    from validate.infer_executor import StaticDecodeEngine

    rows = []
    for n in layers:
        plan = _plan(_spec(n, tiny=True), engine="static", kv_host=kv_host, gen_len=steps)
        eng = StaticDecodeEngine(plan, device=device)
        try:
            run = eng.run()
        finally:
            eng.close()
        rows.append({"engine": "static", "kv_host": kv_host, "num_layers": n, "context_len": PROMPT_LEN + steps,
                     "wall_s": _median_tail(run.decode_step_times_s), "wall_steps_s": run.decode_step_times_s})
    return rows


def prefill_profiles(device: torch.device, *, prompt_len: int, tiny: bool) -> list[dict[str, Any]]:
    """One prefill of a 2-layer model of Llama-3.1-8B's width per engine under torch.profiler:
    the GPU time of each kernel name (summed), the pass's wall time before and under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    from validate.infer_executor import StaticDecodeEngine, prompt_ids
    from validate.infer_hf import HFDecodeEngine

    rows = []
    spec = _spec(2, tiny=tiny)
    for engine in ("hf", "static"):
        plan = _plan(spec, engine=engine, kv_host=False, gen_len=1)
        job = plan.scenario.job.model_copy(update={"prompt_len": prompt_len})
        plan = plan.model_copy(update={"scenario": plan.scenario.with_overrides(job=job)})
        eng: Any = HFDecodeEngine(plan, device=device) if engine == "hf" else StaticDecodeEngine(plan, device=device)
        ids = prompt_ids(eng.spec, eng.job, device)

        def once(eng: Any = eng, ids: torch.Tensor = ids, engine: str = engine) -> None:
            if engine == "hf":
                eng._forward(ids, eng.new_cache(), keep=1)
            else:
                eng._pass(ids, 0, 1, 0)

        with torch.inference_mode():
            once()
            wall = _timed(once, device)
            cuda = device.type == "cuda"
            with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                once()
                sync(device)
        by_name: dict[str, float] = {}
        kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
        for e in prof.events():
            if e.device_type == kind:
                t = e.device_time_total if cuda else e.self_cpu_time_total
                by_name[e.name] = by_name.get(e.name, 0.0) + t * 1e-6
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:25]
        rows.append({"engine": engine, "num_layers": 2, "prompt_len": prompt_len, "wall_s": wall,
                     "kernel_s": sum(by_name.values()),
                     **{f"kernel {i:02d}": f"{t:.6f} s {name[:160]}" for i, (name, t) in enumerate(top)}})
        if engine == "static":
            eng.close()
        del eng
        if cuda:
            torch.cuda.empty_cache()
    return rows


def decode_attention_records(device: torch.device, *, contexts: Sequence[int], batches: Sequence[int],
                             reps: int) -> list[dict[str, Any]]:
    """Decode attention as the engines call it (one query token, 32 heads over 8 kv heads of 128,
    enable_gqa, SDPA kept off cuDNN), queued: ``reps`` calls between two CUDA events, K and V
    rotated past the L2. Layouts: ``static`` (a [B, L, K, D] buffer read through a transpose),
    ``hf`` (DynamicCache's contiguous [B, K, L, D])."""
    rows: list[dict[str, Any]] = []
    if device.type != "cuda":
        contexts, batches, reps = contexts[:1], batches[:1], 2
    bf = torch.bfloat16
    with torch.inference_mode(), _sdpa("no_cudnn", device):
        for b in batches:
            for ctx in contexts:
                kv_bytes = 2 * b * ctx * 8 * 128 * 2
                sets = max(1, min(4, -(-(128 * MiB) // kv_bytes)))
                q = torch.randn(b, 32, 1, 128, device=device, dtype=bf)
                for layout in ("static", "hf"):
                    if layout == "static":
                        kv = [torch.randn(b, ctx, 8, 128, device=device, dtype=bf).transpose(1, 2)
                              for _ in range(2 * sets)]
                    else:
                        kv = [torch.randn(b, 8, ctx, 128, device=device, dtype=bf) for _ in range(2 * sets)]

                    def call(i: int, kv: list = kv, q: torch.Tensor = q, sets: int = sets) -> None:
                        j = 2 * (i % sets)
                        F.scaled_dot_product_attention(q, kv[j], kv[j + 1], enable_gqa=True)

                    for i in range(3):
                        call(i)
                    sync(device)
                    if device.type == "cuda":
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        for i in range(reps):
                            call(i)
                        end.record()
                        end.synchronize()
                        t = start.elapsed_time(end) / 1e3 / reps
                    else:
                        t0 = time.perf_counter()
                        for i in range(reps):
                            call(i)
                        t = (time.perf_counter() - t0) / reps
                    rows.append({"batch": b, "context_len": ctx, "layout": layout, "kv_bytes": kv_bytes,
                                 "s": t, "bytes_per_s": kv_bytes / t})
                    del kv
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


# ---- graphs and copies -----------------------------------------------------------------------------


def graph_records(device: torch.device, *, replays: int) -> list[dict[str, Any]]:
    if device.type != "cuda":
        return []
    rows = []
    x = torch.zeros(256, device=device)
    for k in (1, 8, 32, 128):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                for _ in range(k):
                    x.add_(1.0)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(k):
                x.add_(1.0)
        for _ in range(10):
            g.replay()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(replays):
            g.replay()
        host = time.perf_counter() - t0
        sync(device)
        wall = time.perf_counter() - t0
        rows.append({"kernels_per_graph": k, "replays": replays, "host_s": host / replays, "wall_s": wall / replays})
        del g
    return rows


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _one_copy(device: torch.device, n: int) -> list[dict[str, Any]]:
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(n, dtype=torch.uint8, device=device)
    rows = []
    for direction, src, dst in (("h2d", host, dev), ("d2h", dev, host)):
        def fn(src: torch.Tensor = src, dst: torch.Tensor = dst) -> None:
            dst.copy_(src, non_blocking=True)

        fn()
        t = _timed(fn, device)
        rows.append({"what": "one_copy", "direction": direction, "bytes": n, "s": t, "bytes_per_s": n / t})
    return rows


def _chunks(device: torch.device, n: int, num_chunks: int) -> list[dict[str, Any]]:
    host = torch.empty(n * num_chunks, dtype=torch.uint8, pin_memory=True)
    back = torch.empty(n * num_chunks, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(2, n, dtype=torch.uint8, device=device)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    side = torch.cuda.Stream()

    def h2d() -> None:
        with torch.cuda.stream(side):
            for i in range(num_chunks):
                dev[i % 2].copy_(host[i * n : (i + 1) * n], non_blocking=True)

    def chunks() -> None:
        h2d()
        torch.cuda.current_stream().wait_stream(side)

    def both() -> None:  # H2D chunks on a side stream while D2H chunks run on the default stream
        h2d()
        for i in range(num_chunks):
            back[i * n : (i + 1) * n].copy_(src, non_blocking=True)
        torch.cuda.current_stream().wait_stream(side)

    rows = []
    for what, fn, direction, total in (("chunks_side_stream", chunks, "h2d", n * num_chunks),
                                       ("chunks_both_ways", both, "both", 2 * n * num_chunks)):
        fn()
        t = _timed(fn, device)
        rows.append({"what": what, "direction": direction, "bytes": total, "chunk_bytes": n, "s": t,
                     "bytes_per_s": total / t})
    return rows


def _to_cpu_blocks(device: torch.device, n: int) -> list[dict[str, Any]]:
    """``.to("cpu", non_blocking=True)``: a fresh pinned block, then the same size after a free."""
    src = torch.empty(n, dtype=torch.uint8, device=device)
    rows = []
    for what in ("to_cpu_new_block", "to_cpu_reused_block"):
        sync(device)
        t0 = time.perf_counter()
        out = src.to("cpu", non_blocking=True)
        host_s = time.perf_counter() - t0
        sync(device)
        rows.append({"what": what, "direction": "d2h", "bytes": n, "host_s": host_s,
                     "s": time.perf_counter() - t0, "pinned": bool(out.is_pinned())})
        out = None  # noqa: F841  # its block goes back to the caching host allocator
    return rows


def copy_records(device: torch.device, *, sizes_mib: Sequence[int], chunk_mib: int, num_chunks: int
                 ) -> list[dict[str, Any]]:
    if device.type != "cuda":
        return []
    rows = []
    for mib in sizes_mib:
        rows += _one_copy(device, mib * MiB)
    rows += _chunks(device, chunk_mib * MiB, num_chunks)
    rows += _to_cpu_blocks(device, 128 * MiB + 4096)
    return rows


# ---- the fit -----------------------------------------------------------------------------------


def fits(hf_rows: list[dict[str, Any]], static_rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Host seconds per decode step against the layer count, per engine and form (tiny width)."""
    out: dict[str, dict[str, float]] = {}
    groups: list[tuple[str, list[dict[str, Any]], str]] = []
    for mode in SDPA_MODES:
        tag = "" if mode == "no_cudnn" else ".cudnn"
        hf_m = [r for r in hf_rows if r["sdpa"] == mode and r["width"] == "tiny"]
        st_m = [r for r in static_rows if r["sdpa"] == mode]
        groups += [
            (f"hf_resident{tag}", [r for r in hf_m if not r["offloading"]], "host_s"),
            (f"hf_offloaded{tag}", [r for r in hf_m if r["offloading"]], "host_s"),
            (f"static_resident{tag}", [r for r in st_m if not r["kv_host"]], "wall_s"),
            (f"static_kv_host{tag}", [r for r in st_m if r["kv_host"]], "wall_s"),
        ]
    for name, rows, key in groups:
        if len(rows) < 2:
            continue
        fixed, per_layer = fit_line([r["num_layers"] for r in rows], [r[key] for r in rows])
        fit = {"fixed_s": fixed, "per_layer_s": per_layer}
        if "num_aten_ops" in rows[0]:
            ops_fixed, ops_per_layer = fit_line([r["num_layers"] for r in rows], [r["num_aten_ops"] for r in rows])
            fit.update(aten_ops_fixed=ops_fixed, aten_ops_per_layer=ops_per_layer,
                       per_op_s=per_layer / ops_per_layer if ops_per_layer > 0 else 0.0)
        out[name] = fit
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from validate.records import HostOverheadFile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output JSON file")
    ap.add_argument("--smoke", action="store_true", help="the CPU, few steps and calls (checks the logic)")
    args = ap.parse_args(argv)
    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        print("host_overhead: no CUDA device (use --smoke for a CPU check)", file=sys.stderr)
        return 2
    device = torch.device("cpu") if smoke else torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    prov = provenance(sys.argv if argv is None else ["validate/scripts/host_overhead.py", *argv], device)
    try:
        import transformers

        prov["transformers"] = transformers.__version__
    except ImportError:
        pass
    steps = 6 if smoke else 24
    t0 = time.perf_counter()
    dispatch = dispatch_records(device, calls=50 if smoke else 3000)
    tiny = TINY_LAYERS[:3] if smoke else TINY_LAYERS
    hf: list[dict[str, Any]] = []
    static: list[dict[str, Any]] = []
    prefill: list[dict[str, Any]] = []
    for mode in SDPA_MODES if device.type == "cuda" else SDPA_MODES[:1]:
        with _sdpa(mode, device):
            part = hf_decode_records(device, steps=steps, layers=tiny, tiny=True, offloading=False)
            if device.type == "cuda":
                part += hf_decode_records(device, steps=steps, layers=tiny, tiny=True, offloading=True)
                part += hf_decode_records(device, steps=steps, layers=WIDE_LAYERS, tiny=False, offloading=False)
            hf += [{**r, "sdpa": mode} for r in part]
            part = static_decode_records(device, steps=steps, layers=tiny, kv_host=False)
            part += static_decode_records(device, steps=steps, layers=tiny, kv_host=True)
            static += [{**r, "sdpa": mode} for r in part]
            part = prefill_profiles(device, prompt_len=64 if smoke else 32768, tiny=smoke)
            prefill += [{**r, "sdpa": mode} for r in part]
    graphs = graph_records(device, replays=2000)
    attention = decode_attention_records(device, contexts=(8192, 32768, 131072), batches=(1, 4, 8), reps=50)
    copies = copy_records(device, sizes_mib=COPY_MIB, chunk_mib=64, num_chunks=64)
    elapsed = round(time.perf_counter() - t0, 1)
    out = HostOverheadFile.model_validate({"provenance": prov, "smoke": smoke, "elapsed_s": elapsed,
                                           "dispatch": dispatch,
                                           "hf_decode": hf, "static_decode": static, "graphs": graphs,
                                           "copies": copies, "prefill": prefill, "decode_attention": attention,
                                           "fit": fits(hf, static)})
    Path(args.out).write_text(out.to_json())
    for name, fit in out.fit.items():
        print(f"{name:16s} " + "  ".join(f"{k} {v:.4g}" for k, v in fit.items()))
    for r in graphs:
        print(f"graph of {r['kernels_per_graph']:3d} kernels: host {r['host_s'] * 1e6:.1f} us, "
              f"wall {r['wall_s'] * 1e6:.1f} us per replay")
    for r in copies:
        rate = r.get("bytes_per_s")
        print(f"{r['what']:20s} {r['direction']} {r['bytes'] / MiB:8.0f} MiB  {r['s'] * 1e3:8.2f} ms"
              + (f"  {rate / 1e9:.1f} GB/s" if rate else ""))
    print(f"wrote {args.out} ({elapsed} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
