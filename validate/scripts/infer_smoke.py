"""GPU smoke check of the inference engines at Llama-3.1-8B shape (one H200, about 2 minutes).

Models: nothing; it measures. Four runs of one job (Llama-3.1-8B, prompt ``--prompt-len`` tokens,
batch 1, ``--gen-len`` decode steps), each in a child process of its own
(validate.infer_bench): the static engine with every layer's KV in HBM and with every layer's
KV in the host pool, and the HF engine with a resident and an offloaded DynamicCache; then the
static engine with every layer's KV on the host at ``--long-prompt-len`` (the copy-bound case).
Before them, the H2D rate of one pinned 1 GiB host-to-device copy (median of 5). The static
resident run also re-decodes its steps eagerly and compares the graphed steps' logits with
them; the KV-on-host run and HF offloaded re-decode fed the static resident's / HF resident's
tokens and compare logits (teacher forcing, ``TEACHER_MARGIN``). Prints, per run: prefill,
median decode step, median host issue time, tokens/s, peak allocated / reserved HBM, pinned
bytes, the static runs' H2D bytes per step, the step the H2D rate alone would take (bytes /
rate), the last step's copies (span, time copying, longest gap), and whether the tokens equal
the resident run's. Writes an ``InferSmokeFile`` with provenance.
Assumes: a CUDA device; ``--smoke`` runs tiny copies on the CPU instead (for CI and a dry run).
Source: validate/infer_executor.py, validate/infer_hf.py.

python3 validate/scripts/infer_smoke.py [--prompt-len 32768] [--gen-len 16] [--long-prompt-len 131072]
    [--long-gen-len 8] [--out FILE.json] [--smoke]
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
from validate.infer_executor import TEACHER_MARGIN  # noqa: E402

CASES = (("static_resident", "static", False), ("static_kv_host", "static", True),
         ("hf_resident", "hf", False), ("hf_offloaded", "hf", True))
COPY_BYTES = GiB
LONG_CASE = "static_kv_host_long"


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


def _case_plan(model: Any, node: Any, name: str, engine: str, host: bool, prompt_len: int, gen_len: int) -> Any:
    job = InferJob(prompt_len=prompt_len, gen_len=gen_len, batch=1, engine=engine)
    sc = Scenario.build(model, job, node)
    return infer_bench.infer_plan(sc, kv_host=range(model.num_layers) if host else (), planner=f"smoke:{name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=32768)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--long-prompt-len", type=int, default=131072,
                    help="prompt of the extra static KV-on-host run (0: none)")
    ap.add_argument("--long-gen-len", type=int, default=8)
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
    cases = [(name, engine, host, args.prompt_len, args.gen_len) for name, engine, host in CASES]
    if args.long_prompt_len:
        cases.append((LONG_CASE, "static", True, args.long_prompt_len, args.long_gen_len))
    teacher_of = {"static_kv_host": "static_resident", "hf_offloaded": "hf_resident"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, engine, host, prompt_len, gen_len in cases:
            plan = _case_plan(model, node, name, engine, host, prompt_len, gen_len)
            path = Path(tmp) / f"{name}.json"
            path.write_text(plan.to_json())
            ref_out = Path(tmp) / f"ref-{name}" if name in teacher_of.values() else None
            teacher = Path(tmp) / f"ref-{teacher_of[name]}" if name in teacher_of else None
            if teacher is not None and not teacher.is_dir():
                teacher = None  # its reference did not run
            if args.smoke:
                rec = infer_bench.measure(plan, smoke=True, reference_out=ref_out, check_eager=True,
                                          teacher=infer_bench.load_reference(teacher) if teacher else None)
            else:
                rec = {**infer_bench.describe(plan), **infer_bench._in_child(
                    path, env=infer_bench._env_for(engine, None), teacher=teacher, reference_out=ref_out,
                    check_eager=name == "static_resident")}
            records[name] = {"cell": f"{args.model}-{prompt_len // 1024}k-b1", "mode": name, **rec}
            print(json.dumps({k: v for k, v in rec.items()
                              if k not in ("tokens", "decode_step_times_s", "decode_issue_times_s", "contexts",
                                           "prediction")}), flush=True)
    print_summary(records, rate)
    if args.out:
        from kernels.microbench import provenance
        from validate.records import InferSmokeFile

        device = torch.device("cuda", 0) if rate else torch.device("cpu")
        prov = provenance([sys.argv[0], *(sys.argv[1:] if argv is None else argv)], device)
        prov["transformers"] = _transformers_version()
        prov.pop("pytorch_cuda_alloc_conf", None)  # each record names its own allocator
        data = InferSmokeFile.model_validate({"provenance": prov, "h2d_bytes_per_s": rate,
                                              "teacher_margin": TEACHER_MARGIN, "records": records})
        Path(args.out).write_text(data.to_json())
        print(f"wrote {args.out}")
    return 0


def _transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return str(transformers.__version__)


def print_summary(records: dict[str, Any], rate: float | None) -> None:
    """The table: per run its times, memory, copies, and the token / logit checks."""
    ref = records["static_resident"].get("tokens")
    href = records["hf_resident"].get("tokens")
    print(f"\n{'run':16} {'status':7} {'prefill':>9} {'step':>9} {'issue':>9} {'tok/s':>7} {'HBM peak':>10} "
          f"{'reserved':>10} {'pinned':>10} {'H2D/step':>10} {'H2D-bound':>9}  tokens")
    for name, r in records.items():
        ok = r.get("status") == "ok"
        h2d = r.get("h2d_bytes_per_step") or 0
        bound = format_seconds(h2d / rate) if rate and h2d else "-"
        same = "-"
        if ok and name != LONG_CASE:
            base = ref if name.startswith("static") else href
            same = "= resident" if r.get("tokens") == base else "DIFFER from resident"
            if name == "hf_resident" and ref is not None:
                same += ", = static" if r.get("tokens") == ref else ", differ from static"

        def f(key: str, how: Any, r: dict = r) -> str:
            return how(r[key]) if r.get(key) is not None else "-"

        print(f"{name:16} {r.get('status', '?'):7} {f('prefill_time_s', format_seconds):>9} "
              f"{f('decode_step_time_s', format_seconds):>9} {f('decode_issue_time_s', format_seconds):>9} "
              f"{f('tokens_per_s', lambda v: f'{v:.1f}'):>7} "
              f"{f('peak_allocated_bytes', format_bytes):>10} {f('peak_reserved_bytes', format_bytes):>10} "
              f"{f('host_pinned_bytes', format_bytes):>10} {format_bytes(h2d) if h2d else '-':>10} {bound:>9}  {same}")
        if not ok:
            print(f"  {name}: {r.get('message')}")
            continue
        notes = r.get("engine_notes") or {}
        span, busy = notes.get("h2d_span_s_last_step"), notes.get("h2d_busy_s_last_step")
        if span and h2d:
            step = r["decode_step_times_s"][-1]
            print(f"  {name}: the last step's H2D copies spanned {format_seconds(span)} ({format_rate(h2d / span)}), "
                  f"copying {format_seconds(busy)} ({format_rate(h2d / busy)}), longest gap "
                  f"{format_seconds(notes.get('h2d_max_gap_s_last_step') or 0)}; the step took {format_seconds(step)}"
                  + (f", {step / (h2d / rate):.2f}x the H2D-bound step" if rate else ""))
        if "graphs_equal_eager" in notes:
            print(f"  {name}: graphed decode logits {'= (bitwise)' if notes['graphs_equal_eager'] else 'DIFFER from'} "
                  f"eager (max |diff| {notes['graphs_vs_eager_max_abs_logit_diff']:.3g}); eager step "
                  f"{format_seconds(notes['eager_decode_step_time_s'])}, issue {format_seconds(notes['eager_issue_time_s'])}")
        tf = r.get("teacher_forced")
        if tf:
            print(f"  {name}: teacher-forced on {'static_resident' if name.startswith('static') else 'hf_resident'}: "
                  f"logits {'bitwise equal' if tf['bitwise_equal'] else 'differ'}, max |diff| {tf['max_abs_logit_diff']:.3g}; "
                  f"argmax differs at {tf['argmax_mismatched']} of {tf['argmax_checked']} positions with a "
                  f"reference margin > {tf['margin']} ({tf['positions']} positions)")
        print(f"  {name}: decode steps {[round(t * 1e3, 2) for t in r['decode_step_times_s']]} ms; issue "
              f"{[round(t * 1e3, 2) for t in r.get('decode_issue_times_s') or []]} ms; setup {r.get('setup_s', 0):.1f} s, "
              f"warm-up {r.get('warmup_s') or 0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
