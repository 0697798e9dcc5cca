"""`tierplan search`: the Pareto front (time, memory, dollars) of a space of configurations.

tierplan search [SPACE.yaml] [--model NAME] [--mode train|infer] [--hardware 8xH200,8xH100]
                [--gpus 8..512] [--dp N,...] [--tp 1,2,4,8] [--sp off,on] [--cp 1..16]
                [--cp-kind ring,ulysses] [--zero 0,1,2,3] [--micro-batch 1,2]
                [--checkpointing none,selective,full] [--seq-len 1M] [--prompt-len 32K]
                [--gen-len N] [--batch 1,8] [--kv-quant none,int8] [--max-step-time 30s]
                [--max-usd-per-mtok 5] [--include-oom] [--prices CATALOG]
                [--backend pool|ray] [--workers N] [--json] [--csv FILE] [--plot FILE.png]

A flag's list is comma-separated; ``A..B`` doubles from A up to B (``8..64`` is 8,16,32,64).
Flags override the space file's fields (`tierplan.search.SearchSpace`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tierplan.costs import add_prices_arg
from tierplan.flags import integer

_LIST_FLAGS = {  # flag dest -> (space field, kind)
    "hardware": ("hardware", "str"), "gpus": ("gpus", "int"), "dp": ("dp", "int"), "tp": ("tp", "int"),
    "sp": ("sp", "bool"), "cp": ("cp", "int"), "cp_kind": ("cp_kind", "str"), "zero": ("zero", "int"),
    "micro_batch": ("micro_batch", "int"), "checkpointing": ("checkpointing", "str"),
    "seq_len": ("seq_len", "count"), "prompt_len": ("prompt_len", "count"), "batch": ("batch", "int"),
    "kv_quant": ("kv_quant", "str"),
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "search",
        help="Pareto front (time, memory, $) over parallelism, checkpointing, hardware and GPU counts",
        description="Estimate every configuration of a search space (a local process pool or Ray) "
                    "and print the Pareto front of time per token, peak memory per GPU and dollars per token.",
    )
    p.add_argument("space", nargs="?", help="search-space file (YAML or JSON)")
    p.add_argument("--model", help="model preset name or path to a Hugging Face config.json")
    p.add_argument("--layers", help="override the model's number of decoder layers")
    p.add_argument("--mode", choices=("train", "infer"))
    p.add_argument("--hardware", help="node presets or files, comma-separated")
    p.add_argument("--gpus", help="total GPUs (dp = gpus / (tp * cp)), e.g. 8..512")
    p.add_argument("--dp", help="data-parallel degrees (without --gpus)")
    p.add_argument("--tp", help="tensor-parallel degrees, e.g. 1,2,4,8")
    p.add_argument("--sp", help="sequence parallelism: off, on or off,on")
    p.add_argument("--cp", help="context-parallel degrees (train)")
    p.add_argument("--cp-kind", help="ring, ulysses or both (train)")
    p.add_argument("--zero", help="ZeRO stages 0-3")
    p.add_argument("--micro-batch", help="micro-batches (train)")
    p.add_argument("--checkpointing", help="none, selective, full (train)")
    p.add_argument("--seq-len", help="training sequence lengths, e.g. 1M")
    p.add_argument("--prompt-len", help="prompt lengths (infer)")
    p.add_argument("--gen-len", help="generated tokens per sequence (infer)")
    p.add_argument("--batch", help="batches (infer)")
    p.add_argument("--kv-quant", help="KV-cache formats: none, int8, int4, fp8 (infer)")
    p.add_argument("--max-step-time", help="time target: step (train) or decode step (infer) at most this, e.g. 30s")
    p.add_argument("--max-usd-per-mtok", help="cost target: dollars per million tokens at most this")
    p.add_argument("--include-oom", action="store_true", default=None,
                   help="let configurations that do not fit in HBM onto the front")
    add_prices_arg(p)
    p.add_argument("--backend", choices=("pool", "ray"), default="pool",
                   help="local process pool (default) or Ray (the [ray] extra)")
    p.add_argument("--workers", type=integer(minimum=1, maximum=1024),
                   help="worker processes (default: the machine's cores)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--csv", help="write the front as CSV to this file")
    p.add_argument("--plot", help="write a picture of the front (.png, .svg, .pdf)")
    p.set_defaults(run=run)


def parse_list(text: str, *, field: str, kind: str) -> list[Any]:
    """``a,b,c`` or ``A..B`` (doubling) as values of ``kind`` (int, count, bool, str)."""
    from hwmodels.limits import MAX_PARALLEL_DEGREE
    from hwmodels.units import UserInputError, parse_count, parse_int

    def one(word: str) -> Any:
        if kind == "int":
            return parse_int(word, field=field, minimum=0, maximum=MAX_PARALLEL_DEGREE)
        if kind == "count":
            return parse_count(word, field=field)
        if kind == "bool":
            if word not in ("on", "off"):
                raise UserInputError(f"{field}: expected on or off, got {word!r}")
            return word == "on"
        return word

    words = [w.strip() for w in text.split(",")]
    out: list[Any] = []
    for w in words:
        if not w:
            raise UserInputError(f"{field}: empty value in {text!r}")
        if ".." in w and kind in ("int", "count"):
            lo_text, hi_text = w.split("..", 1)
            lo, hi = one(lo_text), one(hi_text)
            if lo < 1 or hi < lo:
                raise UserInputError(f"{field}: range {w!r} must run from at least 1 upwards")
            v = lo
            while v <= hi:
                out.append(v)
                v *= 2
        else:
            out.append(one(w))
    return out


def build_space(args: argparse.Namespace):
    """The `SearchSpace` of a file (or none) with the flags on top."""
    from hwmodels.units import UserInputError, parse_float, parse_seconds
    from tierplan.search import load_space, parse_space

    data: dict[str, Any] = load_space(args.space) if args.space else {}
    where = args.space or "arguments"
    for dest, (field, kind) in _LIST_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            data[field] = parse_list(value, field=f"--{dest.replace('_', '-')}", kind=kind)
    if args.gpus is not None and args.dp is not None:
        raise UserInputError("--dp: give --gpus or --dp, not both")
    if args.model is not None:
        data["model"] = args.model
    if args.mode is not None:
        data["mode"] = args.mode
    if args.layers is not None:
        data["num_layers"] = parse_list(args.layers, field="--layers", kind="int")[0]
    if args.gen_len is not None:
        data["gen_len"] = parse_list(args.gen_len, field="--gen-len", kind="int")[0]
    if args.max_step_time is not None:
        data["max_step_time_s"] = parse_seconds(args.max_step_time, field="--max-step-time")
    if args.max_usd_per_mtok is not None:
        data["max_usd_per_million_tokens"] = parse_float(args.max_usd_per_mtok, field="--max-usd-per-mtok",
                                                         maximum=1e12)
    if args.include_oom:
        data["require_fit"] = False
    if args.prices is not None:
        data["prices"] = args.prices
    if "model" not in data:
        raise UserInputError(f"{where}: model: required (a preset name or a config.json)")
    return parse_space(data, where=where)


def run(args: argparse.Namespace) -> int:
    from hwmodels.outputs import IMAGE_SUFFIXES, OutputSet
    from tierplan.search import search

    space = build_space(args)
    workers = args.workers
    with OutputSet() as out:
        csv_tmp = out.reserve(args.csv, field="--csv", suffixes=(".csv",)) if args.csv else None
        plot_tmp = out.reserve(args.plot, field="--plot", suffixes=IMAGE_SUFFIXES) if args.plot else None
        with _progress() as report:
            result = search(space, backend=args.backend, num_workers=workers, progress=report)
        if csv_tmp is not None:
            out.write(csv_tmp, lambda p: _write_csv(p, result.front))
        if plot_tmp is not None:
            out.write(plot_tmp, lambda p: _plot(p, result))
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True, allow_nan=False))
    else:
        _print(result)
    return 0


class _progress:
    """A rich progress bar on a terminal (stderr); nothing on a pipe."""

    def __enter__(self):
        self._bar = None
        if not sys.stderr.isatty():
            return lambda done, total: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress("configurations", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task("search", total=None)

        def report(done: int, total: int) -> None:
            assert self._bar is not None
            self._bar.update(task, completed=done, total=total)

        return report

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def _write_csv(path, front) -> None:
    import csv

    from tierplan.search import iter_csv_rows

    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(iter_csv_rows(front))


def _plot(path, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwmodels.units import GiB
    from tierplan.search import meets_constraints

    ok = [r for r in result.records if meets_constraints(result.space, r)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["s_per_million_tokens"] for r in ok], [r["usd_per_million_tokens"] or 0 for r in ok],
               s=8, c="0.75", label=f"meets the constraints ({len(ok)})")
    front = result.front
    sc = ax.scatter([r["s_per_million_tokens"] for r in front], [r["usd_per_million_tokens"] or 0 for r in front],
                    s=28, c=[r["peak_allocated_bytes"] / GiB for r in front], cmap="viridis",
                    label=f"Pareto front ({len(front)})")
    fig.colorbar(sc, ax=ax, label="peak allocated per GPU (GiB)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("seconds per million tokens")
    ax.set_ylabel("dollars per million tokens")
    ax.set_title(f"{result.space.model} ({result.space.mode}): {result.num_configurations_text()}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None} if str(path).endswith(".png") else None)
    plt.close(fig)


def _print(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import format_bytes, format_seconds
    from tierplan.costs import format_usd

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=160)
    space = result.space
    train = space.mode == "train"
    t = Table(title=f"{space.model} ({space.mode}): Pareto front of {result.num_configurations_text()}",
              title_justify="left")
    cols = (["hardware", "GPUs", "tp", "sp", "cp", "dp", "zero", "mb", "ckpt", "seq"] if train else
            ["hardware", "GPUs", "tp", "batch", "KV", "prompt"])
    cols += ["peak/GPU", "step" if train else "decode step", "tokens/s", "s/Mtok", "$/Mtok"]
    if train:
        cols.append("MFU")
    for c in cols:
        t.add_column(c, justify="left" if c in ("hardware", "ckpt", "KV") else "right")
    for r in result.front:
        if train:
            row = [r["hardware"], str(r["num_gpus"]), str(r["tp"]), "on" if r["sp"] else "-",
                   f"{r['cp']}{' ' + r['cp_kind'] if r['cp'] > 1 else ''}", str(r["dp"]), str(r["zero"]),
                   str(r["micro_batch"]), r["checkpointing"], f"{r['seq_len']:,}"]
        else:
            row = [r["hardware"], str(r["num_gpus"]), str(r["tp"]), str(r["batch"]), r["kv_quant"],
                   f"{r['prompt_len']:,}"]
        row += [format_bytes(r["peak_allocated_bytes"]), format_seconds(r["step_time_s"]),
                f"{r['tokens_per_s']:,.0f}", f"{r['s_per_million_tokens']:,.1f}",
                format_usd(r["usd_per_million_tokens"])]
        if train:
            row.append(f"{r['mfu']:.1%}")
        t.add_row(*row)
    console.print(t)
    skipped = ", ".join(f"{k} {v}" for k, v in result.skipped.items())
    console.print(f"{result.num_evaluated} evaluated, {result.num_feasible} meet the constraints"
                  f"{', skipped: ' + skipped if skipped else ''}")
    few = result.fewest_gpus
    if few is None:
        console.print("no configuration meets the constraints")
    elif train:
        console.print(f"fewest GPUs that meet the constraints: {few['num_gpus']} x {few['hardware']} (tp {few['tp']}, "
                      f"cp {few['cp']}, dp {few['dp']}, zero {few['zero']}, {few['checkpointing']} checkpointing: "
                      f"{format_seconds(few['step_time_s'])} a step, {format_usd(few['usd_per_million_tokens'])}/Mtok)")
    else:
        console.print(f"fewest GPUs that meet the constraints: {few['num_gpus']} x {few['hardware']} (tp {few['tp']}, "
                      f"batch {few['batch']}, KV {few['kv_quant']})")
