"""The CPU side of a whole-model step: torch's CPU AdamW and the pinned copies of one layer.

Models: nothing; this script measures. (1) ``adamw``: ``torch.optim.AdamW`` (``fused=True``
where torch has it on the CPU, else ``foreach``; ``validate.model_states.make_optimizer``) on fp32
parameters with fp32 moments, per thread count (``torch.set_num_threads``: 1, 2, 4, 8, 16, at
most the machine's cores) and per size of Llama-3.1-8B's: one decoder layer's parameters
(218 M), its MLP down projection (58.7 M), and its attention projections (41.9 M). Two forms:
``adamw``, the optimizer step alone (28 bytes per parameter: the fp32 parameter, gradient and two
moments read, parameter and moments written); ``layer_step``, what ``validate.model_states``
runs for a CPU-stepped layer: the bf16 gradient upcast to fp32, the step, the bf16 parameters
written (34 bytes per parameter). Median of ``--repeats`` steps after one warm-up.
(2) ``copies`` (CUDA only): a layer's bf16 parameters (and gradients) between a page-locked
host buffer (cudaHostRegister, as the executor's regions) and the GPU, H2D, D2H and both at once
on two streams, timed by CUDA events, median of ``--repeats``.
Assumes: an idle machine (the CPU step shares the cores with nothing else).
Ignores: NUMA placement, huge pages.
Writes ``validate.records.CpuAdamFile`` to ``--out`` (provenance: device, torch, date, command).
Run on the GPU machine (about 2 minutes on the H200's 16 cores):
    python3 validate/scripts/cpu_adam.py --out $OUT/cpu-adam-h200.json
``--smoke``: tiny sizes, one thread, no copies without CUDA (a CPU check for CI).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from kernels.microbench import provenance  # noqa: E402
from kernels.timing import time_steps  # noqa: E402
from validate.model_states import make_optimizer  # noqa: E402
from validate.records import CpuAdamFile  # noqa: E402

H, F, Q, KV = 4096, 14336, 4096, 1024  # Llama-3.1-8B: hidden, intermediate, q and kv widths
SIZES = {
    "layer_8b": 2 * H * Q + 2 * H * KV + 3 * H * F + 2 * H,
    "down_proj_8b": F * H,
    "attn_proj_8b": 2 * H * Q + 2 * H * KV,
}
SMOKE_SIZES = {"tiny": 1 << 12}
THREADS = (1, 2, 4, 8, 16)
ADAMW_BYTES_PER_PARAM = 28
LAYER_STEP_BYTES_PER_PARAM = 34


def time_cpu(fn: Any, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one untimed (warm-up: the moments are made on the first step)."""
    return statistics.median(time_steps(fn, device=torch.device("cpu"), warmup=1, repeats=repeats))


def adamw_rows(sizes: dict[str, int], threads: list[int], repeats: int) -> list[dict[str, Any]]:
    return [row for name, numel in sizes.items() for row in size_rows(name, numel, threads, repeats)]


def size_rows(name: str, numel: int, threads: list[int], repeats: int) -> list[dict[str, Any]]:
    """One parameter tensor of ``numel`` fp32 elements stepped at every thread count."""
    gen = torch.Generator().manual_seed(0)
    param = torch.randn(numel, generator=gen)
    grad_bf16 = torch.randn(numel, generator=gen).bfloat16()
    out_bf16 = torch.empty(numel, dtype=torch.bfloat16)
    opt = make_optimizer([param], kind="adamw")
    impl = "fused" if opt.defaults.get("fused") else "foreach"

    def step() -> None:
        opt.step()

    def layer_step() -> None:
        param.grad = grad_bf16.float()
        opt.step()
        param.grad = None
        out_bf16.copy_(param)

    rows = []
    for n in threads:
        torch.set_num_threads(n)
        for form, fn, per in (("adamw", step, ADAMW_BYTES_PER_PARAM),
                              ("layer_step", layer_step, LAYER_STEP_BYTES_PER_PARAM)):
            param.grad = grad_bf16.float()
            s = time_cpu(fn, repeats)
            rows.append({"size": name, "numel": numel, "threads": n, "form": form, "impl": impl,
                         "step_s": s, "params_per_s": numel / s, "bytes_per_s": per * numel / s})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def copy_rows(numel: int, repeats: int, device: torch.device) -> list[dict[str, Any]]:
    nbytes = 2 * numel  # bf16
    host = torch.empty(nbytes, dtype=torch.uint8)
    host2 = torch.empty(nbytes, dtype=torch.uint8)
    for buf in (host, host2):
        err = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), nbytes, 0)
        assert int(err) == 0, f"cudaHostRegister error {int(err)}"
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dev2 = torch.empty(nbytes, dtype=torch.uint8, device=device)
    s1, s2 = torch.cuda.Stream(device), torch.cuda.Stream(device)
    rows = []

    def timed(kind: str) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for st in (s1, s2):
            st.wait_event(start)
        if kind in ("h2d", "both"):
            with torch.cuda.stream(s1):
                dev.copy_(host, non_blocking=True)
        if kind in ("d2h", "both"):
            with torch.cuda.stream(s2):
                host2.copy_(dev2, non_blocking=True)
        for st in (s1, s2):
            torch.cuda.current_stream(device).wait_stream(st)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    for kind in ("h2d", "d2h", "both"):
        timed(kind)
        s = statistics.median(timed(kind) for _ in range(repeats))
        moved = nbytes * (2 if kind == "both" else 1)
        rows.append({"size": "layer_8b_bf16", "bytes": nbytes, "direction": kind, "copy_s": s,
                     "bytes_per_s": moved / s})
        print(rows[-1], file=sys.stderr, flush=True)
    torch.cuda.synchronize(device)
    for buf in (host, host2):
        torch.cuda.cudart().cudaHostUnregister(buf.data_ptr())
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="measurement JSON to write")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (CI)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cores = os.cpu_count() or 1
    threads = [n for n in THREADS if n <= cores] or [1]
    sizes = SMOKE_SIZES if args.smoke else SIZES
    if args.smoke:
        threads = threads[:1]
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    threads_before = torch.get_num_threads()
    try:
        adamw = adamw_rows(sizes, threads, args.repeats)
    finally:
        torch.set_num_threads(threads_before)
    copies = copy_rows(SIZES["layer_8b"], args.repeats, device) if cuda else []
    record = CpuAdamFile.model_validate({
        "provenance": provenance([sys.argv[0], *(argv if argv is not None else sys.argv[1:])], device),
        "smoke": args.smoke, "elapsed_s": time.perf_counter() - t0, "adamw": adamw, "copies": copies})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
