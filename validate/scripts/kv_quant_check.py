"""The Triton KV dequantization against the torch path on the GPU, and both timed against the
replay's price (one H200, under a minute).

Models: nothing; it measures. For int8 and int4 (validate.kv_quant, the KIVI layout of
kernels.quant.kivi_layout) and each ``--batch``, one Llama-3.1-8B layer's K and V of ``--tokens``
tokens per sequence (random normal, bf16, 8 KV heads x 128 channels, groups of 128): quantized on
the GPU, then dequantized into bf16 buffers by the torch path and by the Triton kernel. Checks:
the two outputs agree to one bf16 rounding step (both compute ``code * scale + zero`` in fp32 and
round once; the GPU may fuse the multiply-add), and the round trip's relative error (Frobenius)
is under 1% (int8) / 12% (int4). Times (CUDA events, median of 5): the Triton and torch
dequantizations and the quantize, beside ``simulator.inference.kv_quant_time_s`` (the replay's
memory-rate price of the same kernel on 1xH200). Exit 1 when a check fails or triton does not
import.
Assumes: a CUDA device with ~20 GB free (batch 8 at 128K) and triton installed with torch.
Source: validate/kv_quant.py.

python3 validate/scripts/kv_quant_check.py [--tokens 131072] [--batch 1,8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from hwmodels.catalog import load_node  # noqa: E402
from kernels.timing import time_steps  # noqa: E402
from simulator.inference import kv_quant_layout, kv_quant_time_s  # noqa: E402
from simulator.job import InferJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from validate import kv_quant as kq  # noqa: E402

MAX_REL_ERROR = {"int8": 0.01, "int4": 0.12}


def _timed(fn: Any, device: torch.device) -> float:
    return statistics.median(time_steps(fn, device=device, warmup=1, repeats=5))


def check(fmt: str, *, tokens: int, batch: int, device: str = "cuda") -> dict[str, Any]:
    """One format and batch (module docstring); ``device`` other than CUDA only with triton's
    interpreter (TRITON_INTERPRET=1: a CPU dry run of the script's code)."""
    dev = torch.device(device)
    model = get_model("llama-3.1-8b")
    job = InferJob(prompt_len=tokens, gen_len=0, batch=batch, kv_quant=fmt)
    K, D = model.num_kv_heads, model.head_dim
    lay = kv_quant_layout(model, job, num_tokens=tokens, batch=batch)
    g, n = lay.group_size, lay.num_quantized_tokens
    gen = torch.Generator(device=dev).manual_seed(0)
    k = torch.randn(batch, n, K, D, device=dev, dtype=torch.bfloat16, generator=gen)
    v = torch.randn(batch, n, K, D, device=dev, dtype=torch.bfloat16, generator=gen)
    store = kq.alloc_store(lambda shape, dt: torch.empty(shape, dtype=dt, device=dev), batch=batch,
                           num_rows=n, num_kv_heads=K, head_dim=D, kv_dtype=fmt, group_size=g)
    quantize_s = _timed(lambda: kq.quantize_into(store, k, v, kv_dtype=fmt, b0=0, t0=0, t1=n), dev)
    ref = (torch.empty_like(k), torch.empty_like(v))
    tri = (torch.empty_like(k), torch.empty_like(v))
    torch_s = _timed(lambda: kq.dequantize_into(store, *ref, kv_dtype=fmt, b0=0, b1=batch, n=n, use_triton=False), dev)
    triton_s = _timed(lambda: kq.dequantize_into(store, *tri, kv_dtype=fmt, b0=0, b1=batch, n=n, use_triton=True), dev)
    out: dict[str, Any] = {"format": fmt, "tokens": tokens, "batch": batch, "group_size": g,
                           "quantized_bytes": lay.quantized_bytes, "bf16_bytes": lay.dequantized_bytes}
    ok = True
    for name, a, b, x in (("k", ref[0], tri[0], k), ("v", ref[1], tri[1], v)):
        af, bf = a.float(), b.float()
        diff = (af - bf).abs()
        one_step = af.abs() * 2.0**-7 + 1e-30  # one bf16 rounding step at the value (8 significand bits)
        rel = float((af - x.float()).norm() / x.float().norm())
        out[name] = {"bitwise_equal_frac": float((a == b).float().mean()), "max_abs_diff": float(diff.max()),
                     "within_one_bf16_step": bool((diff <= one_step).all()), "round_trip_rel_error": rel}
        ok = ok and out[name]["within_one_bf16_step"] and rel < MAX_REL_ERROR[fmt]
    out.update(ok=ok, quantize_s=quantize_s, dequantize_torch_s=torch_s, dequantize_triton_s=triton_s,
               replay_dequantize_s=kv_quant_time_s(model, job, load_node("1xH200"), num_tokens=tokens, batch=batch),
               triton_bytes_per_s=(lay.quantized_bytes + lay.dequantized_bytes) / triton_s)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("kv_quant_check: needs a CUDA device", file=sys.stderr)
        return 2
    if not kq.triton_available():
        print("kv_quant_check: triton does not import here", file=sys.stderr)
        return 1
    results = {f"{fmt}-b{b}": check(fmt, tokens=args.tokens, batch=int(b))
               for fmt in ("int8", "int4") for b in args.batch.split(",") if b}
    for key, r in results.items():
        print(f"{key}: ok={r['ok']} K equal {r['k']['bitwise_equal_frac']:.4f} max diff {r['k']['max_abs_diff']:.3g}, "
              f"V equal {r['v']['bitwise_equal_frac']:.4f}; round trip {r['k']['round_trip_rel_error']:.4f} / "
              f"{r['v']['round_trip_rel_error']:.4f}; dequantize triton {r['dequantize_triton_s'] * 1e3:.3f} ms, "
              f"torch {r['dequantize_torch_s'] * 1e3:.3f} ms, replay {r['replay_dequantize_s'] * 1e3:.3f} ms; "
              f"quantize {r['quantize_s'] * 1e3:.2f} ms")
    if args.out:
        from kernels.microbench import provenance
        from validate.records import KvQuantCheckFile

        prov = provenance([sys.argv[0], *(argv if argv is not None else sys.argv[1:])], torch.device("cuda", 0))
        Path(args.out).write_text(KvQuantCheckFile.model_validate({"provenance": prov, "results": results}).to_json())
        print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
