"""GPU smoke check of the inference engines at Llama-3.1-8B shape (one H200, under 2 minutes).

Models: nothing; it measures. Four runs of one job (Llama-3.1-8B, prompt ``--prompt-len`` tokens,
batch 1, ``--gen-len`` decode steps), each in a child process of its own
(validate.infer_bench): the static engine with every layer's KV in HBM and with every layer's
KV in the host pool, and the HF engine with a resident and an offloaded DynamicCache. Before
them, the H2D rate of one pinned 1 GiB host-to-device copy (median of 5). Prints, per run:
prefill, median decode step, tokens/s, peak allocated / reserved HBM, pinned bytes, the static
runs' H2D bytes per step and the step the H2D rate alone would take (bytes / rate), and whether
the tokens equal the resident run's.
Assumes: a CUDA device; ``--smoke`` runs tiny copies on the CPU instead (for CI and a dry run).
Source: validate/infer_executor.py, validate/infer_hf.py.

python3 validate/scripts/infer_smoke.py [--prompt-len 32768] [--gen-len 16] [--out FILE.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from hwmodels.catalog import load_node  # noqa: E402
from hwmodels.units import GiB, format_bytes, format_rate, format_seconds  # noqa: E402
from simulator.job import InferJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402
from validate import infer_bench  # noqa: E402

CASES = (("static_resident", "static", False), ("static_kv_host", "static", True),
         ("hf_resident", "hf", False), ("hf_offloaded", "hf", True))
COPY_BYTES = GiB


def h2d_rate_bytes_per_s(nbytes: int = COPY_BYTES, repeats: int = 5) -> float | None:
    """Bytes/s of one pinned host-to-device copy of ``nbytes`` (median of ``repeats``)."""
    if not torch.cuda.is_available():
        return None
    from kernels import timing

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    device = torch.device("cuda")
    times = timing.time_steps(lambda: dev.copy_(host, non_blocking=True), device=device, warmup=1,
                              repeats=repeats)
    return nbytes / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=32768)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--out", help="write every run's record here (JSON)")
    ap.add_argument("--smoke", action="store_true", help="tiny copies on the CPU")
    args = ap.parse_args(argv)
    rate = None if args.smoke else h2d_rate_bytes_per_s()
    if rate:
        torch.cuda.empty_cache()  # the copy's buffers: gone before the runs start
    print(f"H2D pinned copy of {format_bytes(COPY_BYTES)}: "
          f"{format_rate(rate) if rate else '- (no GPU)'}", flush=True)
    model = get_model(args.model)
    node = load_node("1xH200")
    records: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, engine, host in CASES:
            job = InferJob(prompt_len=args.prompt_len, gen_len=args.gen_len, batch=1, engine=engine)
            sc = Scenario.build(model, job, node)
            plan = infer_bench.infer_plan(sc, kv_host=range(model.num_layers) if host else (),
                                          planner=f"smoke:{name}")
            path = Path(tmp) / f"{name}.json"
            path.write_text(plan.to_json())
            if args.smoke:
                rec = infer_bench.measure(plan, smoke=True)
            else:
                rec = {**infer_bench.describe(plan), **infer_bench._in_child(
                    path, env=infer_bench._env_for(engine, None))}
            records[name] = rec
            print(json.dumps({k: v for k, v in rec.items()
                              if k not in ("tokens", "decode_step_times_s", "contexts", "prediction")}),
                  flush=True)
    ref = records["static_resident"].get("tokens")
    href = records["hf_resident"].get("tokens")
    print(f"\n{'run':16} {'status':7} {'prefill':>9} {'step':>9} {'tok/s':>7} {'HBM peak':>10} "
          f"{'reserved':>10} {'pinned':>10} {'H2D/step':>10} {'H2D-bound':>9}  tokens")
    for name, _, _ in CASES:
        r = records[name]
        ok = r.get("status") == "ok"
        h2d = r.get("h2d_bytes_per_step") or 0
        bound = format_seconds(h2d / rate) if rate and h2d else "-"
        same = "-"
        if ok:
            base = ref if name.startswith("static") else href
            same = "= resident" if r.get("tokens") == base else "DIFFER from resident"
            if name == "hf_resident" and ref is not None:
                same += ", = static" if r.get("tokens") == ref else ", differ from static"

        def f(key: str, how: Any, r: dict = r) -> str:
            return how(r[key]) if r.get(key) is not None else "-"

        print(f"{name:16} {r.get('status', '?'):7} {f('prefill_time_s', format_seconds):>9} "
              f"{f('decode_step_time_s', format_seconds):>9} {f('tokens_per_s', lambda v: f'{v:.1f}'):>7} "
              f"{f('peak_allocated_bytes', format_bytes):>10} {f('peak_reserved_bytes', format_bytes):>10} "
              f"{f('host_pinned_bytes', format_bytes):>10} {format_bytes(h2d) if h2d else '-':>10} {bound:>9}  {same}")
        if not ok:
            print(f"  {name}: {r.get('message')}")
        else:
            span = (r.get("engine_notes") or {}).get("h2d_span_s_last_step")
            if span and h2d:
                print(f"  {name}: the last step's H2D copies spanned {format_seconds(span)} "
                      f"({format_rate(h2d / span)}); the step took {format_seconds(r['decode_step_times_s'][-1])}")
            print(f"  {name}: decode steps {[round(t * 1e3, 2) for t in r['decode_step_times_s']]} ms; "
                  f"setup {r.get('setup_s', 0):.1f} s; {r.get('engine_notes')}")
    if args.out:
        Path(args.out).write_text(json.dumps({"h2d_bytes_per_s": rate, "records": records}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
