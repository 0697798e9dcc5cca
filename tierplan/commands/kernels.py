"""`tierplan kernels`: cost of one operator on a node, and FlashAttention HBM traffic vs SRAM size.

    tierplan kernels cost gemm --m 65536 --n 4096 --k 4096 --hardware 1xH200 [--json]
    tierplan kernels cost attention --seq-len 64K --num-heads 32 --num-kv-heads 8 --head-dim 128 \
        --causal --pass fwdbwd --hardware 1xH200 [--json]
    tierplan kernels tiling --seq-len 64K --head-dim 128 [--sram 228KiB] [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

PASSES = ("fwd", "bwd", "fwdbwd")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kernels", help="per-operator FLOPs, HBM bytes and time; FlashAttention tiling"
    )
    actions = p.add_subparsers(dest="kernels_action", metavar="ACTION", required=True)

    cost = actions.add_parser("cost", help="FLOPs, HBM bytes and roofline time of one operator")
    ops = cost.add_subparsers(dest="kernels_op", metavar="OP", required=True)

    gemm = ops.add_parser("gemm", help="[m, k] @ [k, n] GEMM")
    gemm.add_argument("--m", required=True, help="rows of A and C (accepts 64K)")
    gemm.add_argument("--n", required=True, help="columns of B and C")
    gemm.add_argument("--k", required=True, help="reduction dimension")
    gemm.add_argument("--batch", default="1", help="independent products (default 1)")
    gemm.add_argument("--dtype", default="bf16", help="operand dtype (default bf16)")
    gemm.add_argument("--hardware", required=True, help="node preset name or node JSON file")
    gemm.add_argument("--json", action="store_true", help="print one JSON object")
    gemm.set_defaults(run=run)

    att = ops.add_parser("attention", help="FlashAttention-2 forward / backward")
    att.add_argument("--seq-len", required=True, help="query length, e.g. 64K")
    att.add_argument("--seq-len-kv", default=None, help="key length (default: --seq-len)")
    att.add_argument("--num-heads", required=True, help="query heads")
    att.add_argument("--num-kv-heads", default=None, help="key/value heads (default: --num-heads)")
    att.add_argument("--head-dim", required=True, help="head dimension")
    att.add_argument("--causal", action="store_true", help="causal mask")
    att.add_argument("--window", default=None, help="causal sliding window, tokens")
    att.add_argument("--batch", default="1", help="batch size (default 1)")
    att.add_argument(
        "--pass", dest="attention_pass", required=True, choices=PASSES, help="fwd, bwd or fwdbwd"
    )
    att.add_argument("--dtype", default="bf16", help="dtype of Q, K, V (default bf16)")
    att.add_argument("--sram", default=None, help="SRAM per SM for tiling (default: the GPU's)")
    att.add_argument("--hardware", required=True, help="node preset name or node JSON file")
    att.add_argument("--json", action="store_true", help="print one JSON object")
    att.set_defaults(run=run)

    tiling = actions.add_parser(
        "tiling", help="FlashAttention forward HBM traffic per head as a function of SRAM size"
    )
    tiling.add_argument("--seq-len", required=True, help="query length, e.g. 64K")
    tiling.add_argument("--seq-len-kv", default=None, help="key length (default: --seq-len)")
    tiling.add_argument("--head-dim", required=True, help="head dimension")
    tiling.add_argument("--sram", default=None, help="SRAM per SM to mark (default 228KiB)")
    tiling.add_argument("--hardware", default=None, help="take --sram from this node's GPU")
    tiling.add_argument("--causal", action="store_true", help="causal mask")
    tiling.add_argument("--dtype", default="bf16", help="dtype of Q, K, V (default bf16)")
    tiling.add_argument("--json", action="store_true", help="print one JSON object")
    tiling.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.kernels_action == "tiling":
        return _run_tiling(args)
    if args.kernels_op == "gemm":
        return _run_gemm(args)
    return _run_attention(args)


def _count(value: str | None, field: str) -> int | None:
    from hwmodels.units import parse_count

    return None if value is None else parse_count(value, field=field)


def _timed(costs: list, node: Any) -> tuple[list[dict], dict]:
    """Per-kernel rows and the totals of a kernel sequence on ``node``."""
    from kernels.cost import combine, kernel_timing

    rows = []
    bound_time = {"compute": 0.0, "memory": 0.0}
    for cost in costs:
        timing = kernel_timing(cost, node)
        bound_time[timing.bound] += timing.time_s
        rows.append(
            {
                "name": cost.name,
                "op_class": cost.op_class,
                "flops": cost.flops,
                "hbm_read_bytes": cost.hbm_read_bytes,
                "hbm_write_bytes": cost.hbm_write_bytes,
                "hbm_bytes": cost.hbm_bytes,
                "time_s": timing.time_s,
                "bound": timing.bound,
            }
        )
    total = combine(costs, name="+".join(c.name for c in costs))
    time_s = sum(r["time_s"] for r in rows)
    totals = {
        "flops": total.flops,
        "hbm_read_bytes": total.hbm_read_bytes,
        "hbm_write_bytes": total.hbm_write_bytes,
        "hbm_bytes": total.hbm_bytes,
        "arithmetic_intensity_flops_per_byte": total.arithmetic_intensity_flops_per_byte,
        "time_s": time_s,
        "achieved_flops_per_s": total.flops / time_s if time_s > 0 else 0.0,
        # The side that accounts for most of the sequence's time.
        "bound": "compute" if bound_time["compute"] >= bound_time["memory"] else "memory",
    }
    return rows, totals


def _emit(args: argparse.Namespace, result: dict, title: str) -> int:
    if args.json:
        print(json.dumps(result))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from hwmodels.units import TFLOPS, format_bytes, format_seconds

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("kernel", "TFLOP", "HBM read", "HBM write", "time", "bound"):
        table.add_column(
            col, justify="left" if col in ("kernel", "bound") else "right", no_wrap=True
        )
    for row in result["kernels"]:
        table.add_row(
            row["name"],
            f"{row['flops'] / TFLOPS:.3f}",
            format_bytes(row["hbm_read_bytes"]),
            format_bytes(row["hbm_write_bytes"]),
            format_seconds(row["time_s"]),
            row["bound"],
        )
    console = Console()
    console.print(table)
    lines = [
        f"total: {result['flops'] / TFLOPS:.3f} TFLOP, {format_bytes(result['hbm_bytes'])} HBM, "
        f"{format_seconds(result['time_s'])} on {result['hardware']} "
        f"({result['achieved_flops_per_s'] / TFLOPS:.1f} TFLOP/s, {result['bound']}-bound)",
    ]
    if "model_flops" in result:
        lines.append(f"model FLOPs (MFU convention): {result['model_flops'] / TFLOPS:.3f} TFLOP")
    for line in lines:
        console.print(line, highlight=False)
    return 0


def _run_gemm(args: argparse.Namespace) -> int:
    from hwmodels.catalog import load_node
    from kernels.gemm import gemm_cost

    m, n, k, batch = (
        _count(args.m, "--m"),
        _count(args.n, "--n"),
        _count(args.k, "--k"),
        _count(args.batch, "--batch"),
    )
    cost = gemm_cost(m=m, n=n, k=k, batch=batch, dtype=args.dtype)
    node = load_node(args.hardware)
    rows, totals = _timed([cost], node)
    result = {
        "op": "gemm",
        "hardware": node.name,
        "m": m,
        "n": n,
        "k": k,
        "batch": batch,
        "dtype": args.dtype,
        **totals,
        "kernels": rows,
    }
    return _emit(args, result, f"GEMM [{m}x{k}] @ [{k}x{n}] x{batch} {args.dtype}")


def _run_attention(args: argparse.Namespace) -> int:
    from hwmodels.catalog import load_node
    from hwmodels.units import parse_bytes
    from kernels.attention import (
        attention_bwd_cost,
        attention_bwd_flops,
        attention_fwd_cost,
        attention_fwd_flops,
        flash_attention_tiling,
    )

    seq_len = _count(args.seq_len, "--seq-len")
    seq_len_kv = _count(args.seq_len_kv, "--seq-len-kv") or seq_len
    num_heads = _count(args.num_heads, "--num-heads")
    num_kv_heads = _count(args.num_kv_heads, "--num-kv-heads") or num_heads
    head_dim = _count(args.head_dim, "--head-dim")
    batch = _count(args.batch, "--batch")
    window = _count(args.window, "--window")
    node = load_node(args.hardware)
    sram_bytes = (parse_bytes(args.sram, field="--sram") if args.sram is not None
                  else node.gpu.sram_per_sm_bytes)
    shape = dict(
        batch=batch,
        seq_len_q=seq_len,
        seq_len_kv=seq_len_kv,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        causal=args.causal,
        dtype=args.dtype,
        sram_bytes=sram_bytes,
        window=window,
    )
    model_shape = {
        k: v for k, v in shape.items() if k not in ("num_kv_heads", "dtype", "sram_bytes")
    }
    costs = []
    model_flops = 0.0
    if args.attention_pass in ("fwd", "fwdbwd"):
        costs.append(attention_fwd_cost(**shape))
        model_flops += attention_fwd_flops(**model_shape)
    if args.attention_pass in ("bwd", "fwdbwd"):
        costs.extend(attention_bwd_cost(**shape).kernels)
        model_flops += attention_bwd_flops(**model_shape)
    tiling = flash_attention_tiling(
        **{k: v for k, v in shape.items() if k not in ("batch", "num_heads", "num_kv_heads")}
    )
    rows, totals = _timed(costs, node)
    result = {
        "op": "attention",
        "pass": args.attention_pass,
        "hardware": node.name,
        "batch": batch,
        "seq_len_q": seq_len,
        "seq_len_kv": seq_len_kv,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "causal": args.causal,
        "window": window,
        "dtype": args.dtype,
        "sram_bytes": sram_bytes,
        "block_q": tiling.block_q,
        "block_kv": tiling.block_kv,
        **totals,
        "model_flops": model_flops,
        "model_flops_per_s": model_flops / totals["time_s"] if totals["time_s"] > 0 else 0.0,
        "kernels": rows,
    }
    mask = "causal" if args.causal else "full"
    title = (
        f"attention {args.attention_pass} B={batch} S={seq_len} H={num_heads} "
        f"KV={num_kv_heads} d={head_dim} {mask} {args.dtype}, tiles {tiling.block_q}x{tiling.block_kv}"
    )
    return _emit(args, result, title)


def _run_tiling(args: argparse.Namespace) -> int:
    from hwmodels.units import KiB, format_bytes, parse_bytes
    from kernels.attention import DEFAULT_SRAM_BYTES, flash_attention_tiling
    from kernels.cost import tensor_bytes

    seq_len = _count(args.seq_len, "--seq-len")
    seq_len_kv = _count(args.seq_len_kv, "--seq-len-kv") or seq_len
    head_dim = _count(args.head_dim, "--head-dim")
    if args.sram is not None:  # an empty --sram is an error, not the default
        sram_bytes = parse_bytes(args.sram, field="--sram")
    elif args.hardware:
        from hwmodels.catalog import load_node

        sram_bytes = load_node(args.hardware).gpu.sram_per_sm_bytes
    else:
        sram_bytes = DEFAULT_SRAM_BYTES

    def at(size: int):
        return flash_attention_tiling(
            seq_len_q=seq_len,
            seq_len_kv=seq_len_kv,
            head_dim=head_dim,
            sram_bytes=size,
            dtype=args.dtype,
            causal=args.causal,
        )

    selected = at(sram_bytes)  # validates the inputs before the sweep
    # Sweep powers of two from 16 KiB until one tile spans both sequences (traffic at minimum).
    whole_bytes = tensor_bytes(4 * head_dim * max(seq_len, seq_len_kv), args.dtype)
    smallest = tensor_bytes(4 * head_dim, args.dtype)
    sizes = {sram_bytes}
    size = 16 * KiB
    while size < whole_bytes:
        if size >= smallest:
            sizes.add(size)
        size *= 2
    sizes.add(size)
    minimum = at(size).hbm_bytes

    def row(size: int) -> dict:
        t = at(size)
        return {
            "sram_bytes": size,
            "block_q": t.block_q,
            "block_kv": t.block_kv,
            "kv_passes": t.kv_passes,
            "hbm_read_bytes": t.hbm_read_bytes,
            "hbm_write_bytes": t.hbm_write_bytes,
            "hbm_bytes": t.hbm_bytes,
            "ratio_to_minimum": t.hbm_bytes / minimum,
        }

    sweep = [row(s) for s in sorted(sizes)]
    result = {
        "seq_len_q": seq_len,
        "seq_len_kv": seq_len_kv,
        "head_dim": head_dim,
        "causal": args.causal,
        "dtype": args.dtype,
        "sram_bytes": sram_bytes,
        "hbm_bytes": selected.hbm_bytes,
        "minimum_hbm_bytes": minimum,
        "sweep": sweep,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    mask = "causal" if args.causal else "full"
    table = Table(
        title=f"FlashAttention fwd HBM traffic per (batch, head): Nq={seq_len} Nkv={seq_len_kv} "
        f"d={head_dim} {mask} {args.dtype}",
        box=box.SIMPLE_HEAD,
    )
    for col in ("SRAM/SM", "Br x Bc", "K/V passes", "HBM bytes", "x minimum"):
        table.add_column(col, justify="right")
    for r in sweep:
        mark = " *" if r["sram_bytes"] == sram_bytes else ""
        table.add_row(
            format_bytes(r["sram_bytes"]) + mark,
            f"{r['block_q']} x {r['block_kv']}",
            f"{r['kv_passes']:.1f}",
            format_bytes(r["hbm_bytes"]),
            f"{r['ratio_to_minimum']:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"* selected SRAM; minimum (read Q, K, V once, write O and LSE): {format_bytes(minimum)}",
        highlight=False,
    )
    return 0
