"""Measure real training steps of Hugging Face causal LMs: peak memory and step time.

Models: nothing; this script measures. For each case it builds a randomly initialised model
from a published config (``validate/measurements/h200/hf_configs.json``, no download) with
``attn_implementation="sdpa"`` in bf16 on the GPU, then times one training step at batch 1:
forward with ``labels=input_ids`` (the Hugging Face loss, which upcasts logits to fp32) and
backward; optionally an AdamW step. The training loop has one of two forms (``--forms``, the
record's ``model_output`` field, ``simulator.job.TrainJob.model_output``):
  * ``freed``: ``loss = model(ids, labels=ids).loss; loss.backward()`` (Hugging Face Trainer's
    ``compute_loss``, torchtitan, Lightning): the output object and its bf16 logits die before
    backward;
  * ``kept``: ``out = model(ids, labels=ids); out.loss.backward()``: ``out.logits`` stays alive
    through backward and the optimizer step (the form of the 2026-11-28 records).
Each record says its form and, as evidence, whether the LM head's output was still alive when
backward began (``logits_alive_at_backward``). It records memory after load (weights), the peak
allocated and reserved over the step (peak stats reset just before; grads set to None before),
memory after the step, selected ``torch.cuda.memory_stats()`` keys, and the median step time of
3 after one warm-up (CUDA events). A case runs with, without, or with and without gradient
checkpointing (``use_reentrant=False``). An out-of-memory case is recorded as
``"status": "oom"``.
Assumes: batch 1, random token ids, ``use_cache=False``, ``model.train()`` (dropout active
where the config has it, as in GPT-2), bf16 parameters and bf16 grads (no fp32 master copy).
Ignores: data loading, the optimizer unless the case names one, multi-GPU.
Source: the simulator's predictions are checked against these files.

Imports only torch, transformers and the standard library so that it runs on a bare GPU
machine. ``--smoke`` runs tiny models on the CPU to check the logic.

Matrices (``--matrix``):
  * ``default`` (about 1 min on an H200): ``python3 validate/measure_steps.py --out steps.json``
    made ``validate/measurements/h200/steps-h200-2026-11-28*.json`` (form kept).
  * ``loopform`` (about 3.5 min on an H200, estimated from the 2026-11-28 step times and the
    estimator's for the 8B): both loop forms for Llama-3.2-1B (16 layers) at 16K and 32K,
    4-layer Llama-2-7B / Qwen2-7B shapes at 16K and 32K and Mistral-7B v0.3 at 32K, each with
    and without gradient checkpointing; Llama-3.2-1B + fused AdamW at 32K with and without
    checkpointing; and two pairs chosen with ``tierplan estimate`` so that kept runs out of
    memory and freed fits: Llama-3.2-1B + fused AdamW at 40K without checkpointing (predicted
    142.4 GiB kept, 132.6 freed) and the whole Llama-3.1-8B + fused AdamW + checkpointing at
    48K (140.7 kept, 128.9 freed, of 140.4 GiB)::

        python3 validate/measure_steps.py --matrix loopform --forms freed,kept \
            --out OUT/steps-loopform-h200-2026-12-02.json

  * ``plain`` (99 s on the H200, 2026-12-03): the plain recipe for the whole Llama-3.1-8B (Hugging
    Face model + checkpointing + fused AdamW, freed loop, the default caching allocator) at 44K,
    46K and 48K, the lengths around its predicted longest (46K)::

        python3 validate/measure_steps.py --matrix plain --forms freed --out OUT/steps-plain.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kernels.microbench import provenance, sync  # noqa: E402
from kernels.timing import time_steps  # noqa: E402
from validate.records import HfConfigsFile, StepsFile  # noqa: E402

CONFIGS_PATH = REPO / "validate" / "measurements" / "h200" / "hf_configs.json"
K = 1024
MEMORY_STAT_KEYS = (
    "num_alloc_retries", "num_ooms", "active_bytes.all.peak", "reserved_bytes.all.peak",
    "allocated_bytes.all.peak", "segment.all.peak", "segment.all.current",
    "segment.large_pool.peak", "segment.small_pool.peak", "inactive_split_bytes.all.peak",
    "requested_bytes.all.peak",
)

# (case name, model key, overrides, seq lens, checkpointing options, optimizer)
Case = tuple[str, str, dict, tuple[int, ...], tuple[bool, ...], str | None]
FULL_CASES: tuple[Case, ...] = (
    ("llama-3.2-1b", "llama-3.2-1b", {}, (4 * K, 16 * K, 32 * K), (False, True), None),
    ("llama-2-7b-4l", "llama-2-7b", {"num_hidden_layers": 4}, (4 * K, 16 * K), (False, True),
     None),
    ("mistral-7b-v0.3-4l", "mistral-7b-v0.3", {"num_hidden_layers": 4}, (4 * K, 16 * K),
     (False, True), None),
    ("mistral-7b-v0.1-4l", "mistral-7b-v0.1", {"num_hidden_layers": 4}, (16 * K,), (False,),
     None),
    ("qwen2-7b-4l", "qwen2-7b", {"num_hidden_layers": 4}, (4 * K, 16 * K), (False, True), None),
    ("gpt2-medium", "gpt2-medium", {"n_positions": "S", "n_ctx": "S"}, (4 * K,), (False, True),
     None),
    ("llama-3.2-1b-adamw", "llama-3.2-1b", {}, (4 * K,), (False,), "adamw_foreach"),
    ("llama-3.2-1b-adamw-fused", "llama-3.2-1b", {}, (4 * K,), (False,), "adamw_fused"),
)

# Where the loop's form matters: logits (tokens x vocab, bf16) a visible share of the peak.
# The last two cases are the pairs where kept is predicted out of memory and freed to fit.
LOOPFORM_CASES: tuple[Case, ...] = (
    ("llama-3.2-1b", "llama-3.2-1b", {}, (16 * K, 32 * K), (False, True), None),
    ("llama-2-7b-4l", "llama-2-7b", {"num_hidden_layers": 4}, (16 * K, 32 * K), (False, True),
     None),
    ("qwen2-7b-4l", "qwen2-7b", {"num_hidden_layers": 4}, (16 * K, 32 * K), (False, True), None),
    ("mistral-7b-v0.3-4l", "mistral-7b-v0.3", {"num_hidden_layers": 4}, (32 * K,),
     (False, True), None),
    ("llama-3.2-1b-adamw-fused", "llama-3.2-1b", {}, (32 * K,), (False, True), "adamw_fused"),
    ("llama-3.2-1b-adamw-fused-oom-pair", "llama-3.2-1b", {}, (40 * K,), (False,),
     "adamw_fused"),
    ("llama-3.1-8b-adamw-fused-oom-pair", "llama-3.1-8b", {}, (48 * K,), (True,),
     "adamw_fused"),
)
# The plain recipe for the whole Llama-3.1-8B (Hugging Face model + gradient checkpointing +
# torch.optim.AdamW(fused=True), freed loop, the default caching allocator): its longest length
# on one H200. `tierplan estimate` (caching, bf16 moments) says 44K and 46K fit (121.9 / 125.4 GiB
# allocated, 129.0 / 134.1 GiB reserved) and 48K does not (the native allocator fragments).
PLAIN_CASES: tuple[Case, ...] = (
    ("llama-3.1-8b-adamw-fused-plain", "llama-3.1-8b", {}, (44 * K, 46 * K, 48 * K), (True,),
     "adamw_fused"),
)
MATRICES = {"default": FULL_CASES, "loopform": LOOPFORM_CASES, "plain": PLAIN_CASES}
FORMS = ("freed", "kept")

SMOKE_SHRINK = {
    "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "head_dim": 16,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
    "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
    "n_embd": 64, "n_head": 4, "n_layer": 2,
}


def load_configs(path: Path = CONFIGS_PATH) -> dict:
    configs = HfConfigsFile.model_validate_json(path.read_text())
    return {name: m.model_dump() for name, m in configs.models.items()}


def build_config_dict(base: dict, overrides: dict, seq_len: int, smoke: bool) -> dict:
    """The exact config dict a case uses: published values, then overrides ("S" = seq_len)."""
    cfg = copy.deepcopy(base)
    if smoke:
        for key, val in SMOKE_SHRINK.items():
            if key in cfg:
                cfg[key] = val
        if cfg.get("model_type") == "gpt2":
            cfg["n_inner"] = None
        if cfg.get("num_key_value_heads") is not None and "num_attention_heads" in cfg:
            cfg["num_key_value_heads"] = min(cfg["num_key_value_heads"],
                                             cfg["num_attention_heads"])
        if isinstance(cfg.get("rope_scaling"), dict):
            cfg["rope_scaling"]["original_max_position_embeddings"] = 64
        if cfg.get("sliding_window") and cfg.get("model_type") == "mistral":
            cfg["sliding_window"] = 32
    for key, val in overrides.items():
        cfg[key] = seq_len if val == "S" else val
    if smoke and "num_hidden_layers" in overrides:
        cfg["num_hidden_layers"] = min(cfg["num_hidden_layers"], 2)
    return cfg


def build_model(cfg_dict: dict, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = dict(cfg_dict)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
        except TypeError:  # older transformers spell it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
    model.to(device)
    model.train()
    return model


def _mem(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    stats = torch.cuda.memory_stats(device)
    return {
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
        "allocated_after_step_bytes": torch.cuda.memory_allocated(device),
        "reserved_after_step_bytes": torch.cuda.memory_reserved(device),
        "memory_stats": {k: stats.get(k) for k in MEMORY_STAT_KEYS},
    }


def run_case(*, name: str, model_key: str, cfg_dict: dict, overrides: dict, seq_len: int,
             checkpointing: bool, optimizer: str | None, device: torch.device,
             num_timed: int, model_output: str = "kept") -> dict:
    """One case: build, warm-up step, timed steps; memory of the last timed step.

    ``model_output``: "freed" drops the model's output object before backward, "kept" holds it
    (and its logits) until the step ends."""
    if model_output not in FORMS:
        raise ValueError(f"model_output: {model_output!r} is not one of {FORMS}")
    rec: dict = {"case": name, "model": model_key, "seq_len": seq_len, "batch": 1,
                 "dtype": "bf16", "gradient_checkpointing": checkpointing,
                 "optimizer": optimizer, "model_output": model_output, "use_cache": False,
                 "config": cfg_dict,
                 "overrides": overrides, "sliding_window": cfg_dict.get("sliding_window")}
    model: Any = None  # a transformers model (untyped)
    opt: torch.optim.Optimizer | None = None
    ids: torch.Tensor | None = None
    head: Any = None
    hook: Any = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.reset_accumulated_memory_stats(device)
        if device.type == "cuda":
            # left over from earlier cases (cuBLAS/cuDNN workspaces); part of "weights" below
            rec["allocated_before_build_bytes"] = torch.cuda.memory_allocated(device)
        model = build_model(cfg_dict, device)
        sync(device)
        rec["attn_implementation"] = model.config._attn_implementation
        rec["num_params"] = sum(p.numel() for p in model.parameters())
        rec["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        if device.type == "cuda":
            rec["weights_allocated_bytes"] = torch.cuda.memory_allocated(device)
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        if optimizer == "adamw_foreach":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        elif optimizer == "adamw_fused":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        vocab = model.config.vocab_size
        gen = torch.Generator(device="cpu").manual_seed(seq_len)
        ids = torch.randint(0, vocab, (1, seq_len), generator=gen).to(device)

        # Evidence of the form: is the LM head's output (the logits) still alive when backward
        # starts? A weak reference from a forward hook, read by a hook on the loss's gradient.
        logits_ref: list = [None]
        alive: list = []
        head = model.get_output_embeddings()
        hook = head.register_forward_hook(
            lambda mod, args, y: logits_ref.__setitem__(0, weakref.ref(y)))

        def note_backward_start(grad):
            alive.append(logits_ref[0] is not None and logits_ref[0]() is not None)
            return grad

        def step_kept():
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids, labels=ids, use_cache=False)
            out.loss.register_hook(note_backward_start)
            out.loss.backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            return out.loss.detach()

        def step_freed():
            model.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.register_hook(note_backward_start)
            loss.backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            return loss.detach()

        step = step_freed if model_output == "freed" else step_kept

        losses = []

        def before_step(i: int) -> None:
            model.zero_grad(set_to_none=True)
            sync(device)
            if device.type == "cuda":
                rec["before_step_allocated_bytes"] = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)

        def after_warmup(i: int, dt: float) -> None:
            if i == 0:
                rec["warmup_step_time_s"] = dt
                if device.type == "cuda":
                    rec["warmup_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
                    rec["warmup_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)

        times = time_steps(lambda: losses.append(step()), device=device, warmup=1,
                           repeats=num_timed, before_step=before_step, after_step=after_warmup)
        loss = losses[-1]
        hook.remove()
        rec.update(_mem(device))
        rec["logits_alive_at_backward"] = alive[-1]
        rec["loss"] = float(loss)
        rec["step_times_s"] = times
        rec["step_time_s"] = statistics.median(times)
        rec["status"] = "ok"
    except torch.cuda.OutOfMemoryError as err:
        rec["status"] = "oom"
        rec["error"] = str(err).splitlines()[0][:300]
        rec.update(_mem(device))
    except (ValueError, ImportError, NotImplementedError) as err:
        # e.g. a model class without sdpa support in this transformers version
        rec["status"] = "skipped"
        rec["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    except RuntimeError as err:  # keep measuring the other cases; the record says why
        rec["status"] = "error"
        rec["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    finally:
        model = opt = ids = head = hook = None  # drop the references (closure cells too)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    return rec


def summary_lines(records: list[dict]) -> list[str]:
    gib = 1024**3
    lines = [f"{'case':34s} {'S':>6s} ckpt  {'output':6s} {'params':>7s} {'weights':>7s} "
             f"{'peak':>7s} {'reserv':>7s} {'step_s':>7s} status"]
    for r in records:
        def g(key, r=r):
            v = r.get(key)
            return f"{v / gib:7.2f}" if isinstance(v, int) else f"{'-':>7s}"
        step = f"{r['step_time_s']:7.3f}" if "step_time_s" in r else f"{'-':>7s}"
        params = f"{r['num_params'] / 1e9:6.2f}B" if "num_params" in r else f"{'-':>7s}"
        lines.append(f"{r['case']:34s} {r['seq_len']:6d} {'yes ' if r['gradient_checkpointing'] else 'no  '} "
                     f"{r.get('model_output', 'kept'):6s} {params} {g('weights_allocated_bytes')} {g('peak_allocated_bytes')} "
                     f"{g('peak_reserved_bytes')} {step} {r['status']}")
    return lines


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output JSON path")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    ap.add_argument("--cases", default="", help="comma list of case names (default: all)")
    ap.add_argument("--matrix", choices=sorted(MATRICES), default="default",
                    help="which case list to run (see the module docstring)")
    ap.add_argument("--forms", default="kept",
                    help="comma list of training-loop forms: freed, kept (default: kept)")
    args = ap.parse_args(argv)
    forms = [f for f in args.forms.split(",") if f]
    bad = [f for f in forms if f not in FORMS]
    if bad or not forms:
        print(f"--forms: {','.join(bad) or 'empty'} is not a comma list of {', '.join(FORMS)}",
              file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device; use --smoke for a CPU logic check", file=sys.stderr)
        return 2
    import transformers

    torch.manual_seed(0)
    models = load_configs()
    prov = provenance([sys.argv[0], *argv], device)
    prov["transformers"] = transformers.__version__
    wanted = set(filter(None, args.cases.split(",")))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    t_start = time.perf_counter()
    cases = MATRICES[args.matrix]
    unknown = wanted - {c[0] for c in cases}
    if unknown:
        print(f"--cases: {','.join(sorted(unknown))} not in the {args.matrix} matrix",
              file=sys.stderr)
        return 2
    plan: list[tuple[str, str, dict, int, bool, str | None, str]] = []
    for name, key, overrides, seqs, ckpts, optimizer in cases:
        if wanted and name not in wanted:
            continue
        for s in seqs[:1] if args.smoke else seqs:  # one length per case is enough on the CPU
            plan.extend((name, key, overrides, 64 if args.smoke else s, ckpt, optimizer, form)
                        for ckpt in ckpts for form in forms)
    for i, (name, key, overrides, seq, ckpt, optimizer, form) in enumerate(plan, 1):
        cfg = build_config_dict(models[key]["config"], overrides, seq, args.smoke)
        t0 = time.perf_counter()
        rec = run_case(name=name, model_key=key, cfg_dict=cfg, overrides=overrides,
                       seq_len=seq, checkpointing=ckpt, optimizer=optimizer,
                       device=device, num_timed=1 if args.smoke else 3,
                       model_output=form)
        rec["wall_s"] = time.perf_counter() - t0
        records.append(rec)
        print(f"[{i}/{len(plan)} {time.perf_counter() - t_start:6.1f} s]",
              summary_lines([rec])[1], f"({rec['wall_s']:.1f} s)", flush=True)
        prov["wall_s"] = time.perf_counter() - t_start
        out.write_text(StepsFile(provenance=prov, records=records).to_json())
    print("\n".join(summary_lines(records)))
    print(f"[measure_steps] wrote {len(records)} records to {out} "
          f"in {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
