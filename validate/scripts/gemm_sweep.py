"""bf16 GEMMs from 256^3 to 16384^3 and decode's skinny shapes, timed queued and one call at a time.

Models: nothing; this script measures. Every shape x[m,k] @ W[k,n] is timed two ways:
``queued`` (kernels.microbench.bench: the stream is held so that the host enqueues every repeat
before the GPU starts, inputs rotated past the L2; the kernel's own time, what a training or
decode step sees when the host runs ahead) and ``isolated`` (the public reference probe's
``ev_time``: three warm-up calls, then ten times event, one call, event, synchronize, on the same
operands; the GPU idles before each call, so the time includes what the launch exposes). The
probe's five GEMMs are also run in the probe's order with its method (``family: probe``), so
that its 4096^3 point (505 TFLOP/s) can be compared with the same shape queued, on one GPU, in
one process. Shape families: ``square`` (256 .. 16384), ``decode`` (m = 1 .. 64 rows against
Llama-3-8B's gate/up 4096 -> 14336 and down 14336 -> 4096 weights), ``prefill`` (128 .. 2048
tokens against the same weights). Each shape carries ``split``: ``fit`` or ``holdout``,
alternating in FLOPs within its family, so that a fit made on one half can be checked on the other.
Assumes: torch with CUDA (``--smoke``: tiny shapes on the CPU, wall clock, to check the logic).
Ignores: clocks and power state (the provenance records nvidia-smi's before the run).
Writes ``{"provenance": ..., "records": [...]}`` (hwmodels.records.OpRecordsFile) to ``--out``.
Run on the GPU machine (about 1 minute on an H200):
    python3 validate/scripts/gemm_sweep.py --out gemm-sweep-h200.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from hwmodels.records import OpRecordsFile  # noqa: E402
from kernels.microbench import (  # noqa: E402
    _DEFAULT_L2_BYTES,
    BF16_BYTES,
    Timing,
    bench,
    free,
    num_rotations,
    provenance,
    randn,
    sync,
)

SQUARE_SIZES = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
DECODE_ROWS = (1, 2, 4, 8, 16, 32, 64)
PREFILL_ROWS = (128, 256, 512, 1024, 2048)
LLAMA3_8B_MLP = ((4096, 14336), (14336, 4096))  # (k, n): gate/up, down
PROBE_SHAPES = ((8192, 8192, 8192), (65536, 4096, 4096), (65536, 4096, 11008),
                (65536, 11008, 4096), (4096, 4096, 4096))  # (m, k, n), hwprobe.py's order


def sweep_shapes(*, smoke: bool = False) -> list[tuple[str, int, int, int]]:
    """(family, m, n, k) of every shape the sweep times, families in order."""
    if smoke:
        return [("square", 64, 64, 64), ("square", 128, 128, 128), ("square", 96, 96, 96),
                ("decode", 1, 256, 128), ("decode", 4, 128, 256), ("prefill", 32, 256, 128)]
    shapes = [("square", s, s, s) for s in SQUARE_SIZES]
    for k, n in LLAMA3_8B_MLP:
        shapes += [("decode", m, n, k) for m in DECODE_ROWS]
        shapes += [("prefill", m, n, k) for m in PREFILL_ROWS]
    return shapes


def with_splits(shapes: Sequence[tuple[str, int, int, int]]) -> list[tuple[str, int, int, int, str]]:
    """Alternate fit / holdout by FLOPs within each family (and weight shape), smallest first."""
    out = []
    groups: dict[tuple, list[tuple[str, int, int, int]]] = {}
    for s in shapes:
        fam, m, n, k = s
        groups.setdefault((fam,) if fam == "square" else (fam, n, k), []).append(s)
    for group in groups.values():
        for i, s in enumerate(sorted(group, key=lambda s: s[1] * s[2] * s[3])):
            out.append((*s, "fit" if i % 2 == 0 else "holdout"))
    return out


def isolated(fn: Callable[[], object], device: torch.device, *, iters: int = 10,
             warm: int = 3) -> Timing:
    """The reference probe's ev_time: events around one call, synchronize after each."""
    for _ in range(warm):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b) / 1e3)
        else:
            import time
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return Timing(times)


def gemm_case(family: str, m: int, n: int, k: int, split: str | None, device: torch.device,
              l2_bytes: int) -> list[dict]:
    in_bytes = (m * k + k * n) * BF16_BYTES
    sets = [(randn((m, k), device), randn((k, n), device))
            for _ in range(num_rotations(in_bytes, l2_bytes))]
    base = {"op": "gemm", "family": family, "m": m, "n": n, "k": k, "dtype": "bf16"}
    if split is not None:
        base["split"] = split
    recs = [{**base, "timing": "queued",
             **bench(lambda i: torch.matmul(*sets[i % len(sets)]), device, target_s=0.1).as_dict()}]
    x, w = sets[0]
    recs.append({**base, "timing": "isolated", **isolated(lambda: x @ w, device).as_dict()})
    return recs  # the operands die here; the caller empties the cache


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        l2_bytes = int(getattr(props, "L2_cache_size", 0)) or _DEFAULT_L2_BYTES
    else:
        l2_bytes = _DEFAULT_L2_BYTES
    prov = provenance([sys.argv[0], *(argv if argv is not None else sys.argv[1:])], device)
    records: list[dict] = []
    probe = [(64, 64, 32), (32, 64, 64)] if args.smoke else PROBE_SHAPES
    for m, k, n in probe:  # first, as in the probe: right after start-up
        recs = gemm_case("probe", m, n, k, None, device, l2_bytes)
        free(device)
        records += [r for r in recs if r["timing"] == "isolated"] + [r for r in recs if r["timing"] == "queued"]
    for family, m, n, k, split in with_splits(sweep_shapes(smoke=args.smoke)):
        records += gemm_case(family, m, n, k, split, device, l2_bytes)
        free(device)
        q, i = records[-2], records[-1]
        print(f"{family:8s} {m:6d} x {n:6d} x {k:6d}  queued {q['time_s'] * 1e6:9.1f} us"
              f"  isolated {i['time_s'] * 1e6:9.1f} us"
              f"  {2 * m * n * k / q['time_s'] / 1e12:7.1f} TFLOP/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(OpRecordsFile(provenance=prov, records=records).to_json())
    print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
