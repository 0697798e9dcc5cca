"""Record PyTorch memory snapshots of real Hugging Face training steps, for `tierplan layout --snapshot`.

Measures: for each case, in a fresh process, records the allocator history from the first CUDA
allocation (``torch.cuda.memory._record_memory_history``), builds the model as
validate/measure_steps.py does (bf16, sdpa, random init from the published config), runs one
warm-up and two training steps (forward with labels, backward), dumps the snapshot
(``_dump_snapshot``) and writes ``max_memory_reserved`` / ``max_memory_allocated`` and the
provenance next to it. Replaying the snapshot's own alloc/free trace through
``simulator.allocator`` must then give the measured reserved memory: that checks the allocator
model on the exact request sequence, with no Workload model in between.
Assumes: one CUDA device; torch and transformers installed (imports only those and the
standard library plus validate.measure_steps).

Run (GPU): python3 benchmarks/layout_snapshot_probe.py --out DIR [--cases llama-3.2-1b-2l:4096:0,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = "llama-3.2-1b-2l:4096:0,llama-3.2-1b-2l:4096:1,llama-2-7b-2l:4096:0,llama-2-7b-2l:4096:1"
MODELS = {"llama-3.2-1b-2l": ("llama-3.2-1b", 2), "llama-2-7b-2l": ("llama-2-7b", 2)}


def run_one(case: str, out: Path) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from kernels.microbench import provenance
    from validate.measure_steps import build_config_dict, build_model, load_configs

    name, seq, ckpt = case.split(":")
    key, layers = MODELS[name]
    seq_len, checkpointing = int(seq), ckpt == "1"
    dev = torch.device("cuda")
    try:
        torch.cuda.memory._record_memory_history(max_entries=2_000_000, context=None)
    except TypeError:  # older signature
        torch.cuda.memory._record_memory_history(True)
    cfg = build_config_dict(load_configs()[key]["config"], {"num_hidden_layers": layers}, seq_len,
                            False)
    model = build_model(cfg, dev)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    gen = torch.Generator(device="cpu").manual_seed(seq_len)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=gen).to(dev)
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
    torch.cuda.synchronize()
    stem = f"{name}-s{seq_len}-ckpt{int(checkpointing)}"
    torch.cuda.memory._dump_snapshot(str(out / f"{stem}.pickle"))
    rec = {"case": name, "model": key, "num_hidden_layers": layers, "seq_len": seq_len,
           "gradient_checkpointing": checkpointing, "num_steps": 3,
           "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
           "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
           "snapshot": f"{stem}.pickle",
           "provenance": provenance([sys.argv[0], "--case", case], dev)}
    (out / f"{stem}.json").write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.case:
        rec = run_one(args.case, out)
        print(f"{args.case}: reserved {rec['peak_reserved_bytes']} allocated {rec['peak_allocated_bytes']}")
        return 0
    rc = 0
    for case in args.cases.split(","):  # a fresh process each: the trace starts at the first allocation
        rc |= subprocess.call([sys.executable, __file__, "--out", str(out), "--case", case])
    return rc


if __name__ == "__main__":
    sys.exit(main())
