"""Context, tensor (+sequence) and fully sharded data parallel training steps of 8B-shaped layers.

Models: nothing; this script measures, one process per GPU (torch.multiprocessing.spawn, NCCL,
NVLS and multicast off as validate/scripts/nccl_sweep.py sets them), all three modes in one run:
``cp`` ring attention over the zigzag split (validate.context_parallel) at 128K, 256K, 512K
tokens of one sequence; ``tp_sp`` Megatron tensor + sequence parallelism (validate.tensor_parallel)
at 32K, 64K, 128K; ``fsdp2`` fully_shard per layer (validate.fsdp) with each rank's own 16K,
32K, 64K-token micro-batch and an AdamW step. The layers are Llama-3-8B's (llama-3-8b-stack:
hidden 4096, 32 query / 8 kv heads, intermediate 14336), bf16, weights from one seed; cp and
tp_sp run ``--layers`` layers, fsdp2 ``--fsdp-layers``. A step is forward, the stack's loss
(``x.float().pow(2).mean()`` of the rank's rows) and backward (cp: and the all-reduce of the
replicated weights' gradients; tp_sp: of the replicated norms'), timed with CUDA events after
``--warmup`` steps, the slowest rank's figure per step; peak allocated memory is each rank's
``max_memory_allocated`` over the timed steps (peaks reset after warm-up). Cells run smallest
first within a mode; after an out-of-memory cell the mode's larger ones are skipped.
Assumes: 2 or more GPUs on one node (``--smoke``: gloo on the CPU, tiny shapes, wall clock; it
checks the logic, its times mean nothing).
Ignores: activation checkpointing and offload (the plain step of each mode), mixed precision
policies (everything bf16), communication overlap beyond what each executor does itself.
Writes ``{"provenance": ..., "records": [...]}`` (validate.records.MgpuBenchFile) to ``--out``;
each cell is also printed as one JSON line as it finishes.
Run on a 2-GPU and a 4-GPU H200 machine (about 2 minutes on 2 GPUs, 1.5 on 4):
    python3 validate/scripts/mgpu_bench.py --out mgpu-bench-h200x2.json
    python3 validate/scripts/mgpu_bench.py --out mgpu-bench-h200x4.json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from kernels.microbench import provenance  # noqa: E402
from kernels.timing import time_steps  # noqa: E402
from validate.records import MgpuBenchFile  # noqa: E402
from validate.scripts.nccl_sweep import NVLS_OFF_ENV, _free_port  # noqa: E402

K = 1024
CP_LENS = (128 * K, 256 * K, 512 * K)
TP_LENS = (32 * K, 64 * K, 128 * K)
FSDP_LENS = (16 * K, 32 * K, 64 * K)
SMOKE_LENS = (16, 32)
MODEL = "llama-3-8b-stack"


def _spec(num_layers: int, smoke: bool):
    from simulator.model import ModelSpec, get_model

    base = get_model(MODEL).model_dump()
    shape = {"num_layers": num_layers}
    if smoke:
        shape.update(hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16)
    return ModelSpec.model_validate({**base, **shape})


def _loss(x: torch.Tensor) -> torch.Tensor:
    return x.float().pow(2).mean()  # the stack's loss (validate.model, probe variant)


def cp_step(spec, seq_len: int, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    from validate.context_parallel import cp_layer_forward, zigzag_shard
    from validate.model import build_model, rope_tables

    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model(spec, device=device, dtype=dtype, seed=0)
    gen = torch.Generator(device=device).manual_seed(1)
    x = zigzag_shard(torch.randn(1, seq_len, spec.hidden_size, generator=gen, device=device, dtype=dtype),
                     dim=1, cp=world, rank=rank).requires_grad_(True)
    cos, sin = rope_tables(seq_len, spec.head_dim, device=device, dtype=dtype)
    rope = (zigzag_shard(cos, dim=0, cp=world, rank=rank), zigzag_shard(sin, dim=0, cp=world, rank=rank))

    def step() -> None:
        h = x
        for layer in model.layers:
            h = cp_layer_forward(layer, h, rope)
        _loss(h).backward()
        for p in model.parameters():  # weights are replicated over the cp ranks: sum their grads
            if p.grad is not None:
                dist.all_reduce(p.grad)
        model.zero_grad(set_to_none=True)
        x.grad = None

    return step


def tp_step(spec, seq_len: int, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    from validate.model import build_model, rope_tables
    from validate.tensor_parallel import TensorParallelLayer, seq_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    whole = build_model(spec, device=device, dtype=dtype, seed=0)
    layers = torch.nn.ModuleList(TensorParallelLayer(layer) for layer in whole.layers)
    del whole  # each rank keeps its slices (and the replicated norms)
    gen = torch.Generator(device=device).manual_seed(1)
    x = seq_shard(torch.randn(1, seq_len, spec.hidden_size, generator=gen, device=device, dtype=dtype),
                  dim=1, tp=world, rank=rank).requires_grad_(True)
    rope = rope_tables(seq_len, spec.head_dim, device=device, dtype=dtype)

    def step() -> None:
        h = x
        for layer in layers:
            h = layer(h, rope)
        _loss(h).backward()
        for layer in layers:
            layer.allreduce_replicated_grads()
        layers.zero_grad(set_to_none=True)
        x.grad = None

    return step


def fsdp_step(spec, seq_len: int, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    from validate.fsdp import shard_decoder
    from validate.model import build_model

    model = build_model(spec, device=device, dtype=dtype, seed=0)
    shard_decoder(model, device_type=device.type)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator(device=device).manual_seed(1 + dist.get_rank())
    x = torch.randn(1, seq_len, spec.hidden_size, generator=gen, device=device, dtype=dtype)
    x.requires_grad_(True)

    def step() -> None:
        model(x).backward()  # the stack's Decoder returns its loss
        opt.step()
        opt.zero_grad(set_to_none=True)
        x.grad = None

    return step


STEPS = {"cp": cp_step, "tp_sp": tp_step, "fsdp2": fsdp_step}


def cells(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(mode, seq_len, num_layers) in run order."""
    lens = {"cp": CP_LENS, "tp_sp": TP_LENS, "fsdp2": FSDP_LENS}
    out = []
    for mode in args.modes:
        layers = args.fsdp_layers if mode == "fsdp2" else args.layers
        for n in SMOKE_LENS if args.smoke else lens[mode]:
            out.append((mode, n, layers))
    return out


def _first_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text.splitlines()[0][:300]


def run_cell(mode: str, seq_len: int, num_layers: int, args: argparse.Namespace,
             device: torch.device) -> dict[str, Any]:
    world = dist.get_world_size()
    spec = _spec(num_layers, args.smoke)
    rec: dict[str, Any] = {
        "mode": mode, "model": MODEL if not args.smoke else f"{MODEL} (smoke shape)",
        "num_layers": num_layers, "seq_len": seq_len,
        "tokens_per_rank": seq_len if mode == "fsdp2" else seq_len // world,
        "num_gpus": world, "dtype": "bf16",
    }
    status, times, peak = "ok", [], 0
    try:
        step = STEPS[mode](spec, seq_len, device, torch.bfloat16)

        def reset(i: int) -> None:
            if i == args.warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

        times = time_steps(step, device=device, warmup=args.warmup, repeats=args.repeats, before_step=reset)
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
        del step
    except torch.cuda.OutOfMemoryError as err:
        status, rec["error"] = "oom", _first_line(err)
    except RuntimeError as err:
        status, rec["error"] = "error", _first_line(err)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # every rank's outcome, times and peak (a failed rank reports zeros)
    mine = torch.tensor([1.0 if status != "ok" else 0.0, float(peak), *(times or [0.0] * args.repeats)],
                        dtype=torch.float64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    rows = torch.stack(everyone).cpu()
    if status == "ok" and bool(rows[:, 0].any()):
        status, rec["error"] = "error", "another rank failed"
    rec["status"] = status
    if status == "ok":
        slowest = rows[:, 2:].max(dim=0).values.tolist()
        rec.update(step_times_s=slowest, step_time_s=statistics.median(slowest))
        if device.type == "cuda":
            rec["peak_allocated_per_rank_bytes"] = [int(p) for p in rows[:, 1].tolist()]
            rec["peak_allocated_bytes"] = max(rec["peak_allocated_per_rank_bytes"])
    return rec


def _worker(rank: int, world: int, args: argparse.Namespace, result_path: str) -> None:
    os.environ.update(NVLS_OFF_ENV)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    backend = "gloo" if args.smoke else "nccl"
    device = torch.device("cpu") if args.smoke else torch.device("cuda", rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # ranks share the CPU's cores
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=args.timeout_s))
    records: list[dict[str, Any]] = []
    skip: set[str] = set()
    try:
        for mode, seq_len, layers in cells(args):
            if mode in skip:
                continue
            rec = run_cell(mode, seq_len, layers, args, device)
            records.append(rec)
            if rec["status"] == "oom":
                skip.add(mode)
            if rank == 0 and not args.quiet:
                print(json.dumps(rec), flush=True)
        if rank == 0:
            Path(result_path).write_text(json.dumps(records))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--nproc", type=int, default=None, help="ranks (default: every visible GPU)")
    ap.add_argument("--modes", nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--layers", type=int, default=1, help="decoder layers of the cp and tp_sp cells")
    ap.add_argument("--fsdp-layers", type=int, default=4, help="decoder layers of the fsdp2 cells")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout-s", type=int, default=300, help="process group timeout")
    ap.add_argument("--smoke", action="store_true", help="gloo on the CPU, tiny shapes")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    world = args.nproc or (2 if args.smoke else torch.cuda.device_count())
    if world < 2:
        raise SystemExit("nproc: the parallel modes need at least 2 ranks")
    t0 = time.perf_counter()
    args.port = _free_port()
    result = args.out.with_name(args.out.name + ".ranks.tmp")
    method = "spawn"
    if args.smoke:  # CPU only: fork ranks that start with the executors imported (seconds each)
        for name in ("torch._dynamo", "validate.context_parallel", "validate.fsdp",
                     "validate.tensor_parallel"):  # dynamo: fully_shard's first use imports it
            importlib.import_module(name)
        method = "fork"
    mp.start_processes(_worker, args=(world, args, str(result)), nprocs=world, join=True,
                       start_method=method)
    records = json.loads(result.read_text())
    result.unlink()
    device = torch.device("cpu") if args.smoke else torch.device("cuda", 0)
    prov = provenance([sys.argv[0], *(argv if argv is not None else sys.argv[1:])], device)
    bench = MgpuBenchFile.model_validate({
        "provenance": prov, "smoke": args.smoke, "backend": "gloo" if args.smoke else "nccl",
        "env": dict(NVLS_OFF_ENV), "num_gpus": world, "elapsed_s": time.perf_counter() - t0,
        "records": records,
    })
    args.out.write_text(bench.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
