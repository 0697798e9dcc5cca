"""Five collectives (all-reduce, all-gather, reduce-scatter, all-to-all, send/recv) from 8 B to 2 GiB.

Models: nothing; this script measures, for ``hwmodels.collectives``. Per GPU count (``--nproc``,
one process per GPU, started with torch.multiprocessing.spawn or under torchrun) and per size
(powers of ``--factor`` from ``--min-bytes`` to ``--max-bytes``) each collective is called
``warmup`` times, then timed in ``trials`` trials of ``iters`` calls issued back to back between
two CUDA events on the calling stream (what nccl-tests times: the GPU's time per call with the
host ahead). Each trial's figure is the slowest rank's (an all-reduce MAX of the per-rank times,
outside the timed interval); the record holds the median, min and max over trials. Sizes are
``hwmodels.collectives``' ``num_bytes``: the all-reduce buffer, the all-gather OUTPUT (=
reduce-scatter input), the all-to-all send buffer, the send/recv message (rank 0 to rank 1, the
other ranks wait), rounded up to a whole fp32 element per rank. Every rank runs with
NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 (NVLink SHARP
and multicast off, as on the lent machines), set here before torch.distributed starts.
Assumes: torch with CUDA and NCCL, ``--nproc`` GPUs visible (``--smoke``: gloo on the CPU, tiny
sizes, wall clock, to check the logic; its times mean nothing).
Ignores: in-place variants, dtypes other than fp32, NCCL's algorithm/protocol overrides.
Writes ``{"provenance": ..., "records": [...]}`` (validate.records.NcclSweepFile) to ``--out``.
Run on a machine with 2 / 4 / 8 GPUs (about 1-2 minutes per GPU count on H200s):
    python3 validate/scripts/nccl_sweep.py --nproc 2 --out nccl-sweep-h200x2.json
    python3 validate/scripts/nccl_sweep.py --nproc 4 --out nccl-sweep-h200x4.json
    python3 validate/scripts/nccl_sweep.py --nproc 8 --out nccl-sweep-h200x8.json
"""

from __future__ import annotations

import os

# Before torch (and NCCL) read the environment, in every rank: spawned ranks import this module.
NVLS_OFF_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
os.environ.update(NVLS_OFF_ENV)

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from hwmodels.collectives import COLLECTIVES, bus_factor  # noqa: E402
from kernels.microbench import provenance  # noqa: E402
from kernels.timing import time_steps  # noqa: E402
from validate.records import NcclSweepFile  # noqa: E402

FP32_BYTES = 4
# torch 2.13 renames the tensor forms (all_gather_single); 2.11, on the GPU machines, has only these
warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*deprecated")


def sweep_sizes(*, min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """``min_bytes * factor**i`` up to ``max_bytes``."""
    if min_bytes < 1 or max_bytes < min_bytes or factor < 2:
        raise ValueError(f"sizes: need 1 <= min_bytes <= max_bytes and factor >= 2, got "
                         f"{min_bytes}, {max_bytes}, {factor}")
    out, s = [], min_bytes
    while s <= max_bytes:
        out.append(s)
        s *= factor
    return out


def num_elems(op: str, num_bytes: int, world: int) -> int:
    """fp32 elements of ``op``'s ``num_bytes`` buffer, a whole number per rank where it splits."""
    elems = -(-num_bytes // FP32_BYTES)
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        elems = -(-elems // world) * world
    return elems


def iters_for(num_bytes: int) -> int:
    """Calls per trial: many where a call is microseconds, few where it is milliseconds."""
    return 20 if num_bytes <= 64 * 2**20 else 5


def make_call(op: str, elems: int, *, rank: int, world: int, device: torch.device) -> Callable[[], None]:
    """One collective on buffers allocated once."""
    if op == "all_reduce":
        buf = torch.ones(elems, device=device)
        return lambda: dist.all_reduce(buf)
    if op == "all_gather":
        out = torch.empty(elems, device=device)
        shard = torch.ones(elems // world, device=device)
        return lambda: dist.all_gather_into_tensor(out, shard)
    if op == "reduce_scatter":
        full = torch.ones(elems, device=device)
        shard = torch.empty(elems // world, device=device)
        return lambda: dist.reduce_scatter_tensor(shard, full)
    if op == "all_to_all":
        src = torch.ones(elems, device=device)
        dst = torch.empty(elems, device=device)
        return lambda: dist.all_to_all_single(dst, src)
    if op == "send_recv":
        msg = torch.ones(elems, device=device)
        if rank == 0:
            return lambda: dist.send(msg, dst=1)
        if rank == 1:
            return lambda: dist.recv(msg, src=0)
        return lambda: None
    raise ValueError(f"op: unknown {op!r}")


def _worker(rank: int, world: int, args: argparse.Namespace, result_path: str | None) -> None:
    os.environ.update(NVLS_OFF_ENV)
    backend = "gloo" if args.smoke else "nccl"
    if "RANK" not in os.environ:  # started by mp.spawn: rendezvous on the parent's port
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    device = torch.device("cpu") if args.smoke else torch.device("cuda", rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # ranks share the CPU's cores
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        seen: list[dict[str, str | None]] = [{} for _ in range(world)]
        dist.all_gather_object(seen, {k: os.environ.get(k) for k in NVLS_OFF_ENV})
        if any(env != NVLS_OFF_ENV for env in seen):
            raise RuntimeError(f"env: a rank runs without NVLS and multicast off: {seen}")
        records = _sweep(rank, world, args, device)
        if rank == 0 and result_path is not None:
            Path(result_path).write_text(json.dumps(records))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _sweep(rank: int, world: int, args: argparse.Namespace, device: torch.device) -> list[dict]:
    sizes = sweep_sizes(min_bytes=args.min_bytes, max_bytes=args.max_bytes, factor=args.factor)
    records = []
    for op in args.ops:
        for size in sizes:
            elems = num_elems(op, size, world)
            call = make_call(op, elems, rank=rank, world=world, device=device)
            iters = 2 if args.smoke else iters_for(size)

            def trial(call=call, iters=iters) -> None:
                for _ in range(iters):
                    call()

            per_rank = time_steps(trial, device=device, warmup=args.warmup, repeats=args.trials,
                                  before_step=lambda _i: dist.barrier())
            slowest = torch.tensor(per_rank, dtype=torch.float64, device=device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            times = [t / iters for t in slowest.tolist()]
            num_bytes = elems * FP32_BYTES
            n = 2 if op == "send_recv" else world
            median = statistics.median(times)
            records.append({
                "op": op, "bytes": num_bytes, "num_gpus": n, "dtype": "fp32",
                "time_s": median, "time_min_s": min(times), "time_max_s": max(times),
                "busbw_bytes_per_s": bus_factor(op, n) * num_bytes / median,
                "num_trials": args.trials, "iters_per_trial": iters,
            })
            del call
            if rank == 0 and not args.quiet:
                print(f"{op:15s} n={n} {num_bytes:>12d} B {median * 1e6:10.1f} us", flush=True)
    return records


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--nproc", type=int, default=None,
                    help="ranks to spawn (default: every visible GPU; under torchrun: WORLD_SIZE)")
    ap.add_argument("--min-bytes", type=int, default=8)
    ap.add_argument("--max-bytes", type=int, default=2 * 2**30)
    ap.add_argument("--factor", type=int, default=2, choices=(2, 4))
    ap.add_argument("--ops", nargs="+", default=list(COLLECTIVES), choices=COLLECTIVES)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--smoke", action="store_true", help="gloo on the CPU, tiny sizes")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.max_bytes = min(args.max_bytes, 4096)
        args.factor = 4
        args.trials = min(args.trials, 3)
        args.warmup = min(args.warmup, 1)
    t0 = time.perf_counter()
    result = args.out.with_name(args.out.name + ".ranks.tmp")
    if "RANK" in os.environ:  # torchrun: this process is one rank
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        _worker(rank, world, args, str(result))
        if rank != 0:
            return 0
    else:
        world = args.nproc or (2 if args.smoke else torch.cuda.device_count())
        if world < 2:
            raise SystemExit("nproc: a sweep needs at least 2 ranks")
        args.port = _free_port()
        # CPU smoke: forked ranks start with torch imported (a spawned one imports it again)
        mp.start_processes(_worker, args=(world, args, str(result)), nprocs=world, join=True,
                           start_method="fork" if args.smoke else "spawn")
    records = json.loads(result.read_text())
    result.unlink()
    device = torch.device("cpu") if args.smoke else torch.device("cuda", 0)
    prov = provenance([sys.argv[0], *(argv if argv is not None else sys.argv[1:])], device)
    sweep = NcclSweepFile.model_validate({
        "provenance": prov, "smoke": args.smoke, "backend": "gloo" if args.smoke else "nccl",
        "env": dict(NVLS_OFF_ENV), "elapsed_s": time.perf_counter() - t0, "records": records,
    })
    args.out.write_text(sweep.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
