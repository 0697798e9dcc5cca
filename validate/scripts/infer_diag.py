"""Why the static engine's KV-on-host run differs from its all-resident run, and how fast its
host copies can go (one H200, about a minute).

Models: nothing; it measures. (1) H2D rates: one 1 GiB copy from torch's pinned allocator and
from the engine's registered pool (``OffloadPool``), and 64 back-to-back copies of one 4 GiB
registered pool in 64 MiB pieces (the 32K decode step's pattern), each alone and with small D2H
copies on another stream. (2) Llama-3.1-8B at ``--prompt-len``, batch 1, in this process: the
all-resident static engine and the all-KV-on-host one, eager (graphs off); their prefill and
decode logits compared bitwise; then one traced eager decode pass of each at the first decode
context fed the same token, and the first per-layer tensor (q, attention output, layer output)
that differs; the same pass again with the KV-on-host engine's copies on the compute stream
(no concurrency), and with SDPA held to the flash kernel; and, for layer 0's decode attention,
which SDPA backend the default call matches and whether it gives the same bits on a copy of
its K, V at another address.
Assumes: a CUDA device with room for both engines (~45 GB HBM, 4 GiB pinned at 32K).
Source: validate/infer_executor.py.

python3 validate/scripts/infer_diag.py [--prompt-len 32768] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hwmodels.catalog import load_node  # noqa: E402
from hwmodels.units import GiB, MiB  # noqa: E402
from kernels.timing import time_steps  # noqa: E402
from simulator.job import InferJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from validate.executor import OffloadPool  # noqa: E402
from validate.infer_bench import infer_plan  # noqa: E402
from validate.infer_executor import StaticDecodeEngine, _Streams, compare_logits, prompt_ids  # noqa: E402


def _timed(fn: Any, repeats: int = 3) -> float:
    """Median seconds of ``repeats`` event-timed calls (kernels.timing)."""
    return statistics.median(time_steps(fn, device=torch.device("cuda"), warmup=0, repeats=repeats))


def copy_rates() -> dict[str, float]:
    """Bytes/s of the H2D copy patterns (see the module docstring)."""
    out: dict[str, float] = {}
    dev = torch.empty(4 * GiB, dtype=torch.uint8, device="cuda")
    pinned = torch.empty(GiB, dtype=torch.uint8, pin_memory=True)
    out["pinned_alloc_1GiB"] = GiB / _timed(lambda: dev[:GiB].copy_(pinned, non_blocking=True))
    pool = OffloadPool(4 * GiB, pin=True)
    host = pool.alloc(torch.Size([4 * GiB]), torch.uint8, where="diag")
    out["registered_1GiB"] = GiB / _timed(lambda: dev[:GiB].copy_(host[:GiB], non_blocking=True))
    piece = 64 * MiB

    def pieces() -> None:
        for k in range(64):
            dev[k * piece : (k + 1) * piece].copy_(host[k * piece : (k + 1) * piece], non_blocking=True)

    out["registered_64x64MiB"] = 4 * GiB / _timed(pieces)
    side = torch.cuda.Stream()
    small_dev = torch.zeros(4096, dtype=torch.uint8, device="cuda")
    small_host = torch.empty(4096, dtype=torch.uint8, pin_memory=True)

    def pieces_with_d2h() -> None:
        for k in range(64):
            dev[k * piece : (k + 1) * piece].copy_(host[k * piece : (k + 1) * piece], non_blocking=True)
            with torch.cuda.stream(side):
                small_host.copy_(small_dev, non_blocking=True)
        torch.cuda.current_stream().wait_stream(side)

    out["registered_64x64MiB_with_d2h"] = 4 * GiB / _timed(pieces_with_d2h)
    pool.close()
    return out


def first_difference(a: list[tuple[str, torch.Tensor]], b: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    for (na, ta), (nb, tb) in zip(a, b, strict=True):
        assert na == nb
        if not torch.equal(ta, tb):
            return {"first_differing": na, "max_abs_diff": float((ta - tb).abs().max())}
    return {"first_differing": None, "num_compared": len(a)}


def traced(engine: StaticDecodeEngine, fn: Any) -> list[tuple[str, torch.Tensor]]:
    engine.trace = []
    with torch.inference_mode():
        fn()
        engine.streams.join()
    torch.cuda.synchronize()
    out, engine.trace = engine.trace, None
    return [(n, t.cpu()) for n, t in out]


def decode_pass(engine: StaticDecodeEngine, tok: torch.Tensor, ctx: int) -> torch.Tensor:
    with torch.inference_mode():
        lg = engine._pass(tok[:, None], 0, engine.B, ctx)
        engine.streams.join()
    return lg.cpu()


def attention_backends(engine: StaticDecodeEngine, tok: torch.Tensor, ctx: int) -> dict[str, Any]:
    """Layer 0's decode attention: which backend the default SDPA call matches, and whether the
    default gives the same bits on a copy of K, V at another address (same strides)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    trace = traced(engine, lambda: engine._pass(tok[:, None], 0, engine.B, ctx, num_layers=1))
    q = trace[0][1].to("cuda", torch.bfloat16)[:, :, None]  # B H 1 D
    kbuf, vbuf = engine.kv[0]
    kk, vv = kbuf[:, : ctx + 1].transpose(1, 2), vbuf[:, : ctx + 1].transpose(1, 2)
    with torch.inference_mode():
        ref = F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)
        out: dict[str, Any] = {}
        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            try:
                with sdpa_kernel(getattr(SDPBackend, name)):
                    got = F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)
                out[name] = "equal" if torch.equal(got, ref) else f"differs {float((got - ref).abs().max()):.3g}"
            except RuntimeError as err:
                out[name] = f"unavailable: {str(err).splitlines()[0][:120]}"
        k2, v2 = torch.empty_like(kbuf), torch.empty_like(vbuf)
        k2.copy_(kbuf)
        v2.copy_(vbuf)
        again = F.scaled_dot_product_attention(q, k2[:, : ctx + 1].transpose(1, 2), v2[:, : ctx + 1].transpose(1, 2),
                                               enable_gqa=True)
        out["other_address"] = "equal" if torch.equal(again, ref) else "differs"
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            on_side = F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)
        torch.cuda.current_stream().wait_stream(side)
        out["other_stream"] = "equal" if torch.equal(on_side, ref) else "differs"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=32768)
    ap.add_argument("--gen-len", type=int, default=4)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    result["h2d_bytes_per_s"] = copy_rates()
    print(json.dumps(result), flush=True)
    model = get_model(args.model)
    sc = Scenario.build(model, InferJob(prompt_len=args.prompt_len, gen_len=args.gen_len, batch=1),
                        load_node("1xH200"))
    res = StaticDecodeEngine(infer_plan(sc), device="cuda", graphs=False)
    host = StaticDecodeEngine(infer_plan(sc, kv_host=range(model.num_layers)), device="cuda", graphs=False)
    ids = prompt_ids(res.spec, res.job, res.device)
    runs = {name: e.run(ids, keep_logits=True) for name, e in (("resident", res), ("kv_host", host))}
    a, b = runs["resident"], runs["kv_host"]
    result["eager_runs"] = {"tokens_equal": a.tokens == b.tokens,
                            "prefill_logits_equal": bool(torch.equal(a.logits[0], b.logits[0])),
                            "per_position_equal": [bool(torch.equal(x, y)) for x, y in zip(a.logits, b.logits, strict=True)],
                            "compare": compare_logits(a.logits, b.logits)}
    print(json.dumps(result["eager_runs"]), flush=True)
    tok = torch.tensor([t[0] for t in a.tokens], device="cuda")
    ctx = args.prompt_len
    result["decode_trace"] = first_difference(traced(res, lambda: res._pass(tok[:, None], 0, 1, ctx)),
                                              traced(host, lambda: host._pass(tok[:, None], 0, 1, ctx)))
    if not result["eager_runs"]["prefill_logits_equal"]:
        pre = ids[:1]
        result["prefill_trace"] = first_difference(traced(res, lambda: res._pass(pre, 0, 1, 0)),
                                                   traced(host, lambda: host._pass(pre, 0, 1, 0)))
    base = decode_pass(res, tok, ctx)
    variants: dict[str, Any] = {"default": bool(torch.equal(base, decode_pass(host, tok, ctx)))}
    streams = host.streams
    host.streams = _Streams(host.device, separate=False)
    variants["kv_host_one_stream"] = bool(torch.equal(base, decode_pass(host, tok, ctx)))
    host.streams = streams
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fbase = decode_pass(res, tok, ctx)
        variants["flash_forced"] = bool(torch.equal(fbase, decode_pass(host, tok, ctx)))
        variants["flash_forced_equals_default"] = bool(torch.equal(fbase, base))
    for e in (res, host):
        e._capture()
    with torch.inference_mode():
        g1 = res._pass(tok[:, None], 0, 1, ctx, graphed=True).cpu()
        g2 = host._pass(tok[:, None], 0, 1, ctx, graphed=True).cpu()
        host.streams.join()
    variants["graphed"] = bool(torch.equal(g1, g2))
    variants["graphed_equals_eager_resident"] = bool(torch.equal(g1, base))
    result["decode_variants_equal_resident"] = variants
    result["layer0_attention"] = attention_backends(res, tok, ctx)
    print(json.dumps({k: result[k] for k in ("decode_trace", "decode_variants_equal_resident", "layer0_attention")}),
          flush=True)
    host.close()
    if args.out:
        from kernels.microbench import provenance
        from validate.records import InferDiagFile

        prov = provenance([sys.argv[0], *(sys.argv[1:] if argv is None else argv)], torch.device("cuda", 0))
        Path(args.out).write_text(InferDiagFile.model_validate({"provenance": prov, "results": result}).to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
