"""`tierplan estimate`: memory, time and fit of one training or inference step, in about a second.

tierplan estimate [SCENARIO.yaml] [--model NAME|config.json] [--layers N] [--seq-len 128K]
                  [--batch N] [--mode train|infer] [--checkpointing none|full|selective]
                  [--optimizer none|sgd|adamw] [--model-output freed|kept] [--tp N] [--sp]
                  [--cp N] [--cp-kind ring|ulysses] [--dp N] [--zero N] [--prompt-len N]
                  [--gen-len N] [--kv-quant ...] [--hardware NODE] [--json]

With neither a scenario nor --model, the built-in default scenario is used. Flags override the
scenario's fields; everything is validated by the scenario schema (simulator.job), so a bad
value is reported as one line naming the field.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hwmodels.limits import MAX_BATCH, MAX_LAYERS, MAX_PARALLEL_DEGREE
from tierplan.costs import add_prices_arg


def register(subparsers: Any, *, with_prices: bool = True) -> None:
    """``with_prices=False``: without --prices, for commands that reuse these flags but report no
    cost (`tierplan layout`)."""
    p = subparsers.add_parser(
        "estimate",
        help="peak memory, step time, MFU and fit of one step",
        description="Analytical estimate of one training step or one inference request.",
    )
    add_scenario_args(p)
    if with_prices:
        add_prices_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    """The scenario and override flags shared by every command that takes a model, a job and a
    node (estimate, simulate); `build_scenario` reads them."""
    p.add_argument("scenario", nargs="?", help="scenario file (YAML or JSON); default: built-in")
    p.add_argument("--model", help="model preset name, path to a Hugging Face config.json, or hub id "
                                   "(org/name: its config.json, from the local cache offline)")
    p.add_argument("--layers", help="override the model's number of decoder layers")
    p.add_argument("--mode", choices=("train", "infer"), help="training step or inference")
    p.add_argument("--seq-len", help="training sequence length, e.g. 128K (train)")
    p.add_argument("--batch", help="micro-batch (train) or batch (infer)")
    p.add_argument("--checkpointing", choices=("none", "full", "selective"))
    p.add_argument("--optimizer", choices=("none", "sgd", "adamw"))
    p.add_argument("--optimizer-state-dtype", help="dtype of AdamW moments (default fp32)")
    p.add_argument("--mlp-activation", choices=MLP_ACTIVATIONS, help=MLP_ACTIVATION_HELP)
    p.add_argument("--model-output", choices=MODEL_OUTPUTS, help=MODEL_OUTPUT_HELP)
    p.add_argument("--master-weights", action="store_true", default=None,
                   help="keep an fp32 master copy of the weights")
    p.add_argument("--grads-persist", action="store_true", default=None,
                   help="gradients stay allocated between steps (zero_grad(set_to_none=False))")
    p.add_argument("--dtype", help="parameter / activation dtype (default bf16)")
    p.add_argument("--tp", help="tensor-parallel degree")
    p.add_argument("--sp", action="store_true", default=None, help="sequence parallelism (with --tp)")
    p.add_argument("--cp", help="context-parallel degree")
    p.add_argument("--cp-kind", choices=("ring", "ulysses"))
    p.add_argument("--dp", help="data-parallel degree")
    p.add_argument("--zero", help="ZeRO stage 0-3")
    p.add_argument("--prompt-len", help="prompt tokens per sequence (infer)")
    p.add_argument("--gen-len", help="generated tokens per sequence (infer)")
    p.add_argument("--kv-dtype", help="KV-cache dtype (infer)")
    p.add_argument("--kv-quant", choices=("none", "int8", "int4", "fp8"))
    p.add_argument("--hardware", help="node preset (see `tierplan hw list`) or node JSON file")


def scenario_flag_dests() -> tuple[str, ...]:
    """The argparse destinations `add_scenario_args` defines (the positional scenario first)."""
    probe = argparse.ArgumentParser(add_help=False)
    add_scenario_args(probe)
    return tuple(a.dest for a in probe._actions)


MLP_ACTIVATIONS = ("saved", "recomputed")
MLP_ACTIVATION_HELP = ("SwiGLU's silu(gate) and product: saved for backward (default) or recomputed "
                       "in backward from the gate/up output (train)")

MODEL_OUTPUTS = ("freed", "kept")  # simulator.job.MODEL_OUTPUTS, not imported: --help stays instant
MODEL_OUTPUT_HELP = ("the training loop drops the model's output before backward, `loss = "
                     "model(...).loss` (freed, default: HF Trainer), or holds it and its logits, "
                     "`out = model(...); out.loss.backward()` (kept) (train)")

MODEL_OUTPUT_ROW = {"freed": "freed before backward (loss = model(...).loss)",
                    "kept": "kept through backward (out = model(...))"}

_JOB_FLAGS = {
    "seq_len": "seq_len",
    "checkpointing": "checkpointing",
    "optimizer": "optimizer",
    "optimizer_state_dtype": "optimizer_state_dtype",
    "master_weights": "master_weights",
    "grads_persist": "grads_persist",
    "mlp_activation": "mlp_activation",
    "model_output": "model_output",
    "dtype": "param_dtype",
    "prompt_len": "prompt_len",
    "gen_len": "gen_len",
    "kv_dtype": "kv_dtype",
    "kv_quant": "kv_quant",
}
_PAR_FLAGS = {"tp": "tp", "sp": "sequence_parallel", "cp": "cp", "cp_kind": "cp_kind", "dp": "dp",
              "zero": "zero_stage"}


def int_flag(value: str | None, field: str, *, minimum: int = 1,
             maximum: int = MAX_PARALLEL_DEGREE) -> int | None:
    """An integer flag within [minimum, maximum] (None when not given)."""
    from hwmodels.units import parse_int

    return None if value is None else parse_int(value, field=field, minimum=minimum, maximum=maximum)


def build_scenario(args: argparse.Namespace, *, gpu_budget_bytes: int | None = None,
                   host_budget_bytes: int | None = None):
    """The request's `simulator.scenario.Scenario`: a file (or the default, or --model) with the
    flags applied on top (`simulator.scenario.request_scenario` resolves it)."""
    from hwmodels.units import UserInputError
    from simulator.scenario import request_scenario

    job_fields = {field: getattr(args, flag, None) for flag, field in _JOB_FLAGS.items()}
    par = {field: (getattr(args, flag, None) if flag in ("sp", "cp_kind")
                   else int_flag(getattr(args, flag, None), f"--{flag}", minimum=0 if flag == "zero" else 1,
                                 maximum=3 if flag == "zero" else MAX_PARALLEL_DEGREE))
           for flag, field in _PAR_FLAGS.items()}
    layers = None
    if args.layers is not None:
        layers = int_flag(args.layers, "--layers", maximum=MAX_LAYERS)
        if layers is None or layers < 1:
            raise UserInputError(f"--layers: must be at least 1, got {args.layers!r}")
    return request_scenario(scenario_path=args.scenario, model=args.model, mode=args.mode,
                            job_fields=job_fields, batch=int_flag(args.batch, "--batch", maximum=MAX_BATCH),
                            parallelism=par, hardware=args.hardware,
                            num_layers=layers, gpu_budget_bytes=gpu_budget_bytes,
                            host_budget_bytes=host_budget_bytes,
                            labels={field: f"--{flag.replace('_', '-')}" for flag, field in _JOB_FLAGS.items()})


def run(args: argparse.Namespace) -> int:
    from hwmodels.prices import load_price_catalog
    from tierplan.costs import job_cost

    catalog = load_price_catalog(args.prices)
    scenario = build_scenario(args)
    model, node = scenario.model, scenario.node
    strategies = []
    tiers: list = []
    if scenario.job.mode == "train":
        from simulator.estimator import estimate_training

        est = estimate_training(model, scenario.job, node)
        # the same step under each activation-checkpointing strategy: which ones fit
        for ck in ("none", "selective", "full"):
            alt = est if ck == scenario.job.checkpointing else estimate_training(
                model, scenario.job.model_copy(update={"checkpointing": ck}), node)
            strategies.append({"checkpointing": ck, "peak_allocated_bytes": alt.peak_allocated_bytes,
                               "fits": alt.fits, "step_time_s": alt.step_time_s, "mfu": alt.mfu})
    else:
        from simulator.estimator import estimate_inference

        est = estimate_inference(model, scenario.job, node)
        tiers = _tier_options(scenario)
    num_gpus = scenario.job.parallelism.num_gpus
    if scenario.job.mode == "train":  # a step; tokens per step / step time
        cost = job_cost(catalog, node, num_gpus=num_gpus, step_time_s=est.step_time_s,
                        tokens_per_s=est.tokens_per_s)
    else:  # a decode step; decode tokens per second
        cost = job_cost(catalog, node, num_gpus=num_gpus, step_time_s=est.decode_time_per_token_s,
                        tokens_per_s=est.decode_tokens_per_s)
    if args.json:
        out = est.to_dict()
        if strategies:
            out["strategies"] = strategies
        if tiers:
            out["tiers"] = [o.to_dict() for o in tiers]
        out["cost"] = cost
        print(json.dumps(out, sort_keys=True))
        return 0
    _print(est, scenario, strategies, cost)
    if tiers:
        _print_tiers(tiers, scenario)
    return 0


def _tier_options(scenario) -> list:
    """What host, CXL and NVMe buy for the KV cache (`planners.infer.tier_options`, replayed);
    empty for more than one GPU (the inference replay models one)."""
    par = scenario.job.parallelism
    if (par.tp, par.cp, par.dp) != (1, 1, 1):
        return []
    from planners.infer import tier_options

    return tier_options(scenario)


def _print_tiers(options, scenario) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import format_rate, format_seconds

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=120)
    t = Table(title="what the tiers buy for the KV cache (static engine, weights in HBM; replayed decode step)",
              title_justify="left")
    for col in ("KV may live in", "max batch", "decode step there", "max context", "decode step there"):
        t.add_column(col, justify="left" if col == "KV may live in" else "right")
    for o in options:
        t.add_row(" + ".join(f"{x} (attention in the drive)" if x == "csd" else x for x in o.tiers), str(o.max_batch),
                  format_seconds(o.decode_step_time_s_at_max_batch) if o.decode_step_time_s_at_max_batch else "-",
                  f"{o.max_context_len:,}",
                  format_seconds(o.decode_step_time_s_at_max_context) if o.decode_step_time_s_at_max_context else "-")
    console.print(t)
    node = scenario.node
    lines = []
    if not (node.cxl or node.nvme):
        lines.append(f"{node.name} has no CXL card or NVMe drive: beyond HBM only host memory can hold KV")
    if node.csd:
        lines.append("csd: its layers' decode attention runs inside the drive over its flash "
                     f"({format_rate(node.csd[0].internal_flash_bandwidth_bytes_per_s)}); only the query and "
                     "the output cross its link")
    for line in lines:
        console.print(line)


def _print(est, scenario, strategies=(), cost=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import format_bytes, format_seconds
    from tierplan.costs import describe_rate, format_usd

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=120)
    job = scenario.job
    par = job.parallelism
    layout = f"tp={par.tp}{' +sp' if par.sequence_parallel else ''} cp={par.cp}" \
             f"{'(' + par.cp_kind + ')' if par.cp > 1 else ''} dp={par.dp} zero={par.zero_stage}"
    if job.mode == "train":
        title = (f"{est.model} - train seq {est.seq_len:,} x {est.micro_batch} - "
                 f"checkpointing {est.checkpointing} - {est.hardware} ({layout})")
        peak = est.peak_allocated_bytes
    else:
        title = (f"{est.model} - infer prompt {est.prompt_len:,} + gen {est.gen_len:,} x {est.batch} - "
                 f"KV {est.kv_quant if est.kv_quant != 'none' else est.kv_dtype} - {est.hardware} ({layout})")
        peak = max(est.prefill_peak_allocated_bytes, est.decode_peak_allocated_bytes)
    mem = Table(title=title, title_justify="left")
    mem.add_column("memory at the peak (per GPU)")
    mem.add_column("bytes", justify="right")
    mem.add_column("share", justify="right")
    for name, value in sorted(est.breakdown_bytes.items(), key=lambda kv: -kv[1]):
        mem.add_row(name, format_bytes(value), f"{value / peak:5.1%}")
    mem.add_row("[bold]peak allocated[/bold]", f"[bold]{format_bytes(peak)}[/bold]", "")
    if job.mode == "train" and est.peak_reserved_bytes is not None:
        mem.add_row(f"peak reserved ({est.allocator} allocator)", format_bytes(est.peak_reserved_bytes),
                    f"{est.peak_reserved_bytes / peak:5.1%}")
    cap = est.hbm_capacity_bytes
    verdict = "[green]fits[/green]" if est.fits else "[red]does not fit[/red]"
    mem.add_row("HBM capacity", format_bytes(cap), f"{verdict} ({peak / cap:.0%} used)")
    console.print(mem)
    perf = Table(show_header=False)
    perf.add_column("figure")
    perf.add_column("value", justify="right")
    if job.mode == "train":
        perf.add_row("peak happens at", f"{est.peak_op} ({est.peak_phase}, t={format_seconds(est.peak_at_s)})")
        perf.add_row("step time", format_seconds(est.step_time_s))
        for phase, t in est.compute_time_s.items():
            if t > 0:
                perf.add_row(f"  {phase}", format_seconds(t))
        if est.comm_time_s:
            perf.add_row("  exposed communication", format_seconds(est.comm_time_s))
        perf.add_row("MFU (datasheet peak)", f"{est.mfu:.1%}")
        perf.add_row("model output", MODEL_OUTPUT_ROW[est.model_output])
        perf.add_row("tokens/s (whole job)", f"{est.tokens_per_s:,.0f}")
        perf.add_row("GPUs", str(est.num_gpus))
    else:
        perf.add_row("KV cache per token", format_bytes(est.kv_cache_bytes_per_token))
        perf.add_row("KV cache per request", format_bytes(est.kv_cache_bytes_per_request))
        perf.add_row("prefill time / peak", f"{format_seconds(est.prefill_time_s)} / "
                     f"{format_bytes(est.prefill_peak_allocated_bytes)}")
        perf.add_row("decode time per token / peak", f"{format_seconds(est.decode_time_per_token_s)} / "
                     f"{format_bytes(est.decode_peak_allocated_bytes)}")
        perf.add_row("decode tokens/s", f"{est.decode_tokens_per_s:,.0f}")
        perf.add_row("request time", format_seconds(est.total_time_s))
        perf.add_row("max batch at this length", str(est.max_batch))
        perf.add_row("max context at this batch", f"{est.max_context_len:,}")
    if cost is not None and "unavailable" not in cost:
        step = "step" if job.mode == "train" else "decode step"
        perf.add_row(f"cost per {step} ({cost['catalog']})", format_usd(cost["usd_per_step"]))
        tokens = "tokens" if job.mode == "train" else "decoded tokens"
        perf.add_row(f"cost per million {tokens}", format_usd(cost["usd_per_million_tokens"]))
    console.print(perf)
    if cost is not None:
        console.print(describe_rate(cost))
    if strategies:
        alt = Table(title="activation checkpointing strategies (same job otherwise)", title_justify="left")
        for col in ("checkpointing", "peak allocated", "fits", "step time", "MFU"):
            alt.add_column(col, justify="left" if col == "checkpointing" else "right")
        for row in strategies:
            alt.add_row(row["checkpointing"], format_bytes(row["peak_allocated_bytes"]),
                        "[green]yes[/green]" if row["fits"] else "[red]no[/red]",
                        format_seconds(row["step_time_s"]), f"{row['mfu']:.1%}")
        console.print(alt)
