"""`tierplan hw`: list and show hardware presets, time a transfer, calibrate a profile.

tierplan hw list [--kind nodes] [--json]
tierplan hw show NAME|FILE.json [--json]
tierplan hw transfer --bytes 2GiB --direction h2d|d2h|bidir --hardware 1xH200 [--json]
tierplan hw calibrate --measurements FILE... [--output PROFILE.json] [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hwmodels.limits import MAX_GPUS, MAX_HW_COUNT
from tierplan import flags

KIND_CHOICES = ("gpus", "memory", "storage", "links", "nodes", "profiles")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "hw",
        help="hardware presets, transfer times, calibration",
        description="Hardware presets, transfer times and calibration.",
    )
    sub = p.add_subparsers(dest="hw_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(run=_missing_action(p))

    ls = sub.add_parser("list", help="all presets by kind")
    ls.add_argument("--kind", choices=KIND_CHOICES, help="only this kind")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(run=run_list)

    show = sub.add_parser("show", help="one preset or node file, with sources")
    show.add_argument("name", help="preset name (see `tierplan hw list`) or a node JSON file")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(run=run_show)

    tr = sub.add_parser("transfer", help="time of a GPU<->host copy on a node")
    tr.add_argument("--bytes", required=True, help="bytes per direction, e.g. 2GiB")
    tr.add_argument("--direction", required=True, choices=("h2d", "d2h", "bidir"))
    tr.add_argument("--hardware", required=True, help="node preset or node JSON file")
    tr.add_argument("--gpu-index", type=flags.integer(minimum=0, maximum=MAX_GPUS), default=0,
                    help="which GPU of the node (default 0)")
    tr.add_argument(
        "--device",
        default="cpu0",
        help="other end: cpu0 (host DRAM, default), cxl0, nvme0, csd0, ... of the node",
    )
    tr.add_argument("--json", action="store_true", help="print one JSON object")
    tr.set_defaults(run=run_transfer)

    cal = sub.add_parser("calibrate", help="fit an achieved profile from measurement files")
    cal.add_argument(
        "--measurements",
        nargs="+",
        required=True,
        metavar="FILE",
        help="measurement JSON files (records format or reference probes)",
    )
    cal.add_argument("--name", default="measured", help="profile name (default: measured)")
    cal.add_argument("--gpu", default="H200-SXM", help="GPU preset measured (default H200-SXM)")
    cal.add_argument("--output", metavar="PROFILE.json", help="write the fitted profile here")
    cal.add_argument(
        "--worst",
        type=flags.integer(minimum=0, maximum=MAX_HW_COUNT),
        default=12,
        metavar="N",
        help="table shows the N largest residuals (default 12; 0 = all); --json has all",
    )
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.set_defaults(run=run_calibrate)
    # `tierplan hw` with no action prints this parser's help.


def _missing_action(parser: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return run


def _console() -> Any:
    from rich.console import Console

    return Console(soft_wrap=False)


def run_list(args: argparse.Namespace) -> int:
    from hwmodels.catalog import KINDS, get_preset, list_presets

    kinds = [args.kind] if args.kind else list(KINDS)
    by_kind = {k: list_presets(k) for k in kinds}
    if args.json:
        print(json.dumps({"presets": by_kind}))
        return 0
    from rich.table import Table

    table = Table(title="tierplan hardware presets")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("summary")
    for kind, names in by_kind.items():
        for name in names:
            table.add_row(kind, name, _summary(get_preset(name)))
    _console().print(table)
    return 0


def _summary(spec: Any) -> str:
    from hwmodels.specs import (
        AchievedProfile,
        CsdSpec,
        CxlMemorySpec,
        GpuSpec,
        HostMemorySpec,
        LinkSpec,
        NodeSpec,
        NvmeSpec,
    )
    from hwmodels.units import TFLOPS, format_bytes, format_rate

    if isinstance(spec, NodeSpec):
        return spec.description or f"{spec.num_gpus}x {spec.gpu.name}"
    if isinstance(spec, GpuSpec):
        return (
            f"{format_bytes(spec.hbm_capacity_bytes)} HBM, "
            f"{format_rate(spec.hbm_bandwidth_bytes_per_s)}, "
            f"{spec.peak_flops_per_s['bf16'] / TFLOPS:.4g} TFLOP/s bf16 dense"
        )
    if isinstance(spec, HostMemorySpec):
        return (
            f"{format_bytes(spec.capacity_bytes)} DRAM, "
            f"{format_rate(spec.bandwidth_bytes_per_s)}, {spec.num_sockets} socket(s)"
        )
    if isinstance(spec, CxlMemorySpec):
        return (
            f"CXL {format_bytes(spec.capacity_bytes)}, "
            f"{format_rate(spec.read_bandwidth_bytes_per_s)} read"
        )
    if isinstance(spec, NvmeSpec):
        return (
            f"NVMe {format_bytes(spec.capacity_bytes)}, "
            f"{format_rate(spec.read_bandwidth_bytes_per_s)} read / "
            f"{format_rate(spec.write_bandwidth_bytes_per_s)} write"
        )
    if isinstance(spec, CsdSpec):
        return (
            f"CSD {format_bytes(spec.capacity_bytes)}, "
            f"{format_rate(spec.internal_flash_bandwidth_bytes_per_s)} internal flash"
        )
    if isinstance(spec, LinkSpec):
        return (
            f"{spec.kind}, {format_rate(spec.per_direction_bandwidth_bytes_per_s)} per "
            f"direction, {format_rate(spec.bidirectional_bandwidth_bytes_per_s)} both"
        )
    if isinstance(spec, AchievedProfile):
        return f"{spec.name} on {spec.gpu}: {', '.join(spec.fits)}"
    return type(spec).__name__


def _load_any(name: str) -> tuple[str, Any]:
    from hwmodels.catalog import get_preset, load_node_file, preset_kind

    if name.endswith(".json") or "/" in name:
        return "nodes", load_node_file(name)
    return preset_kind(name), get_preset(name)


def _fmt(field: str, value: Any) -> str:
    from hwmodels.units import TFLOPS, format_bytes, format_rate, format_seconds

    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if field.endswith("_bytes_per_s"):
        return format_rate(value)
    if field.endswith("flops_per_s") or field.startswith("peak_flops_per_s"):
        return f"{value / TFLOPS:.4g} TFLOP/s"
    if field.endswith("_bytes"):
        return format_bytes(value)
    if field.endswith("_s"):
        return format_seconds(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _rows(spec: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(field, value, source) rows of a spec, recursing into parts."""
    from pydantic import BaseModel

    from hwmodels.specs import AchievedProfile, Connection

    rows: list[tuple[str, str, str]] = []
    sources = getattr(spec, "sources", {})
    if isinstance(spec, AchievedProfile):
        src = ", ".join(spec.measurements)
        rows.append((f"{prefix}name", spec.name, ""))
        for cls, fit in spec.fits.items():
            rate = (
                _fmt("flops_per_s", fit.flops_per_s)
                if fit.flops_per_s
                else _fmt("bandwidth_bytes_per_s", fit.bandwidth_bytes_per_s)
            )
            rows.append(
                (
                    f"{prefix}fits.{cls}",
                    f"{rate} + {_fmt('latency_s', fit.latency_s)} latency, "
                    f"max err {fit.max_abs_rel_error:.1%} ({fit.num_points} pts)",
                    src,
                )
            )
        return rows
    for field in type(spec).model_fields:
        if field in ("sources", "schema_version", "device"):
            continue
        value = getattr(spec, field)
        if isinstance(value, BaseModel):
            rows += _rows(value, f"{prefix}{field}.")
        elif isinstance(value, list) and value and isinstance(value[0], Connection):
            for i, edge in enumerate(value):
                shared = spec.num_gpus_sharing(edge)
                note = f" (host path of {shared} GPUs)" if shared > 1 else ""
                rows.append(
                    (
                        f"{prefix}{field}.{i}",
                        f"{edge.a} <-> {edge.b} via {edge.link}{note}",
                        sources.get(field, ""),
                    )
                )
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    rows += _rows(item, f"{prefix}{field}.{i}.")
                else:
                    rows.append((f"{prefix}{field}.{i}", str(item), sources.get(field, "")))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, BaseModel):
                    rows += _rows(item, f"{prefix}{field}.{key}.")
                else:
                    rows.append(
                        (
                            f"{prefix}{field}.{key}",
                            _fmt(field, item),
                            sources.get(f"{field}.{key}", sources.get(field, "")),
                        )
                    )
        elif value is not None and value != "":
            rows.append((f"{prefix}{field}", _fmt(field, value), sources.get(field, "")))
    return rows


def run_show(args: argparse.Namespace) -> int:
    kind, spec = _load_any(args.name)
    if args.json:
        print(json.dumps({"kind": kind, "spec": spec.model_dump(mode="json")}))
        return 0
    from rich.table import Table

    table = Table(title=f"{args.name} ({kind})", show_lines=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value")
    table.add_column("source", overflow="fold")
    for row in _rows(spec):
        table.add_row(*row)
    _console().print(table)
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    from hwmodels.catalog import load_node
    from hwmodels.transfer import copy_fit, transfer_time_s
    from hwmodels.units import (
        UserInputError,
        format_bytes,
        format_rate,
        format_seconds,
        parse_bytes,
    )

    num_bytes = parse_bytes(args.bytes, field="--bytes")
    if num_bytes <= 0:
        raise UserInputError("--bytes: must be > 0")
    node = load_node(args.hardware)
    if not 0 <= args.gpu_index < node.num_gpus:
        raise UserInputError(f"--gpu-index: {node.name} has GPUs 0..{node.num_gpus - 1}")
    if not args.device.startswith("cpu"):
        return _device_transfer(args, node, num_bytes)
    from hwmodels.transfer import device_rate_bytes_per_s

    device_rate_bytes_per_s(node, args.device, "h2d")  # an unknown socket is a one-line error
    link = node.host_link(args.gpu_index)
    both = args.direction == "bidir"
    direction = "h2d" if both else args.direction
    time_s = transfer_time_s(
        num_bytes=num_bytes,
        link=link,
        direction=direction,
        concurrent_opposite=both,
        profile=node.profile,
    )
    if both:  # both directions at once: the slower of the two finishes the transfer
        time_s = max(
            time_s,
            transfer_time_s(
                num_bytes=num_bytes,
                link=link,
                direction="d2h",
                concurrent_opposite=True,
                profile=node.profile,
            ),
        )
    fit = copy_fit(link=link, direction=direction, concurrent_opposite=both, profile=node.profile)
    total_bytes = 2 * num_bytes if both else num_bytes
    used_profile = node.profile is not None and f"copy_{direction}" in node.profile.fits
    out = {
        "hardware": node.name,
        "direction": args.direction,
        "num_bytes": num_bytes,
        "total_bytes": total_bytes,
        "time_s": time_s,
        "bandwidth_bytes_per_s": total_bytes / time_s,
        "latency_s": fit.latency_s,
        "asymptotic_bandwidth_bytes_per_s": fit.bandwidth_bytes_per_s * (2 if both else 1),
        "link": link.name,
        "link_per_direction_bandwidth_bytes_per_s": link.per_direction_bandwidth_bytes_per_s,
        "num_gpus_sharing_host_path": max(
            node.num_gpus_sharing(e) for e in node.host_path(args.gpu_index)
        ),
        "rates_from": (
            f"profile {node.profile.name}"
            if used_profile and node.profile
            else "link datasheet x measured efficiency of its kind"
        ),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    from rich.table import Table

    table = Table(title=f"{args.direction} {format_bytes(num_bytes)} on {node.name}")
    table.add_column("quantity")
    table.add_column("value")
    table.add_row("time", format_seconds(time_s))
    table.add_row("bandwidth (all bytes / time)", format_rate(out["bandwidth_bytes_per_s"]))
    table.add_row("asymptotic bandwidth", format_rate(out["asymptotic_bandwidth_bytes_per_s"]))
    table.add_row("latency per transfer", format_seconds(fit.latency_s))
    table.add_row(
        "link",
        f"{link.name} ({format_rate(link.per_direction_bandwidth_bytes_per_s)} "
        "per direction, datasheet)",
    )
    table.add_row("GPUs sharing the host path", str(out["num_gpus_sharing_host_path"]))
    table.add_row("rates from", out["rates_from"])
    _console().print(table)
    return 0


def _device_transfer(args: argparse.Namespace, node: Any, num_bytes: int) -> int:
    """``hw transfer --device cxl0|nvme0|csd0``: one direction, along the topology path."""
    from hwmodels.transfer import device_rate_bytes_per_s, tier_transfer_time_s
    from hwmodels.units import UserInputError, format_bytes, format_rate, format_seconds

    if args.direction == "bidir":
        raise UserInputError("--direction: bidir is only modelled for host memory (--device cpu0)")
    time_s = tier_transfer_time_s(
        node, num_bytes, args.direction, device=args.device, gpu_index=args.gpu_index
    )
    path = node.path(f"gpu{args.gpu_index}", args.device)
    out = {
        "hardware": node.name,
        "device": args.device,
        "direction": args.direction,
        "num_bytes": num_bytes,
        "total_bytes": num_bytes,
        "time_s": time_s,
        "bandwidth_bytes_per_s": num_bytes / time_s,
        "device_bandwidth_bytes_per_s": device_rate_bytes_per_s(node, args.device, args.direction),
        "path": [f"{e.a}<->{e.b}:{node.links[e.link].name}" for e in path],
    }
    if args.json:
        print(json.dumps(out))
        return 0
    from rich.table import Table

    verb = "to GPU" if args.direction == "h2d" else "from GPU"
    table = Table(title=f"{format_bytes(num_bytes)} {args.device} {verb} on {node.name}")
    table.add_column("quantity")
    table.add_column("value")
    table.add_row("time", format_seconds(time_s))
    table.add_row("bandwidth", format_rate(out["bandwidth_bytes_per_s"]))
    table.add_row("device's own rate", format_rate(out["device_bandwidth_bytes_per_s"]))
    table.add_row("path", ", ".join(out["path"]))
    _console().print(table)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:

    from hwmodels.calibrate import fit_profile, load_points, profile_json, residuals
    from hwmodels.catalog import get_gpu
    from hwmodels.outputs import OutputSet

    get_gpu(args.gpu)  # unknown GPU -> one-line error with close matches
    skipped: list[str] = []
    points = load_points(args.measurements, skipped=skipped)
    profile = fit_profile(args.measurements, name=args.name, gpu=args.gpu)
    res = residuals(profile, points)
    if args.output:
        with OutputSet() as outputs:
            outputs.write_text(args.output, profile_json(profile), field="--output")
    if args.json:
        print(
            json.dumps(
                {
                    "profile": profile.model_dump(mode="json", exclude_none=True),
                    "residuals": [r._asdict() for r in res],
                    "skipped": skipped,
                    "written": args.output,
                }
            )
        )
        return 0
    from rich.table import Table

    from hwmodels.units import format_seconds

    fits = Table(title=f"fitted profile {profile.name!r} ({args.gpu})")
    for col in ("op class", "rate", "latency", "points", "max |rel err|"):
        fits.add_column(col)
    for cls, fit in profile.fits.items():
        rate = (
            _fmt("flops_per_s", fit.flops_per_s)
            if fit.flops_per_s
            else _fmt("bandwidth_bytes_per_s", fit.bandwidth_bytes_per_s)
        )
        fits.add_row(
            cls,
            rate,
            format_seconds(fit.latency_s),
            str(fit.num_points),
            f"{fit.max_abs_rel_error:.1%}",
        )
    shown = sorted(res, key=lambda r: -abs(r.rel_error))[: args.worst or None]
    within = sum(abs(r.rel_error) <= 0.10 for r in res)
    title = (
        f"residuals, {'all' if not args.worst else f'{len(shown)} largest'} of {len(res)} "
        f"(predicted vs measured; {within} within 10%)"
    )
    table = Table(title=title)
    for col in ("op class", "record", "measured", "predicted", "rel err"):
        table.add_column(col)
    for r in shown:
        table.add_row(
            r.op_class,
            r.label,
            format_seconds(r.measured_s),
            format_seconds(r.predicted_s),
            f"{r.rel_error:+.1%}",
        )
    console = _console()
    console.print(fits)
    console.print(table)
    if skipped:
        console.print(f"skipped {len(skipped)} records (e.g. {skipped[0]})")
    if args.output:
        console.print(f"wrote {args.output}")
    return 0
