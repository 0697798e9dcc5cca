"""Fit an `AchievedProfile` from measurement files, and report the residuals of a profile.

Models: each measured record becomes a point ``(op_class, work, num_latency_units, time_s)``
where work is FLOPs (gemm, attention) or bytes (memory, copies, collectives). Each class is fit
to the alpha-beta form ``time_s = latency_s * units + work / rate`` by linear least squares on
RELATIVE error (rows divided by the measured time) with ``latency_s >= 0`` and ``1/rate >= 0``
(`scipy.optimize.lsq_linear`). A class measured at a single size cannot separate latency from
rate: its latency is fixed to its sibling's (``copy_bidir`` takes the mean of ``copy_h2d`` and
``copy_d2h``, ``p2p_bidir`` takes ``p2p_copy``) or to 0.
Record -> work: GEMM ``2*m*n*k`` (or the record's ``flops``); SDPA forward
``4*b*h*s*s*d``, halved when causal (the reference probe's convention, query heads ``h``),
backward ``2.5x`` forward, so fwd+bwd is ``3.5x``; an SDPA ``fwdbwd`` record becomes a backward
point by subtracting the forward record of the same shape; an HBM copy of ``bytes`` moves
``2*bytes`` (read + write) unless the record gives ``hbm_bytes``; bandwidth-bound kernels use
the record's ``hbm_bytes``; a bidirectional copy's ``bytes`` counts both directions (half each
way, ``bytes_each_way``); SDPA ``bwd`` records are used as they are; collectives use NCCL bus bytes
(`hwmodels.collectives.bus_factor`) and algorithm steps as latency units.
Variants: SDPA records forced to a ``backend`` become ``attention_fwd.<backend>`` /
``attention_bwd.<backend>``; unforced ones (``backend`` absent, as in the reference probe, or
``"default"``) are plain ``attention_fwd`` / ``attention_bwd``, i.e. what PyTorch picks (cuDNN
on the H200 with torch 2.11); a head dimension other than 128 adds ``.d<head_dim>``
(``attention_fwd.flash.d64``). Bandwidth-bound records become ``memory.<op>.<impl>.<pass>``,
since one "rmsnorm" is one fused kernel or five eager ones. Lookups fall back to shorter keys.
Accepted files: the record format ``{"provenance": {...}, "records": [...]}`` and the reference
probes (hwprobe.py, hostprobe.py --p2p), which are converted to records first.
Assumes: compute classes are fit on their bf16 records (other dtypes scale by datasheet peaks).
Ignores: pageable copies (the planner pins its buffers), records whose ``status`` is not ok,
records of ops that are not a fitted class such as ``launch_overhead`` (all reported as skipped).
Source: validate/measurements/reference/*.json and validate/measurements/h200/*.json.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import lsq_linear

from hwmodels.catalog import REPO_ROOT, read_json
from hwmodels.collectives import bus_factor, num_steps
from hwmodels.limits import MAX_SECONDS, echo
from hwmodels.op_classes import FLOP_CLASSES, GEMM_BURST_CLASS
from hwmodels.specs import AchievedProfile, OpClassFit
from hwmodels.units import GB, TB, TFLOPS, MiB, UserInputError

MEMORY_OPS = (
    "rmsnorm",
    "layernorm",
    "silu_mul",
    "rotary",
    "cross_entropy",
    "embedding",
    "elementwise",
    "softmax",
    "add",
)
COLLECTIVE_OPS = ("all_reduce", "all_gather", "all_to_all")
_SIBLING_LATENCY = {"copy_bidir": ("copy_h2d", "copy_d2h"), "p2p_bidir": ("p2p_copy",)}
FIT_DTYPE = "bf16"


class CalibrationPoint(NamedTuple):
    """One measured record reduced to what the fit needs."""

    op_class: str
    work: float  # FLOPs or bytes
    num_latency_units: float
    time_s: float
    label: str  # human description of the record
    dtype: str | None
    in_step: bool = False  # timed inside a training step (record "source": "in-step")


class Residual(NamedTuple):
    """Predicted versus measured time of one point."""

    op_class: str
    label: str
    measured_s: float
    predicted_s: float
    rel_error: float  # predicted / measured - 1


def gemm_flops(*, m: int, n: int, k: int) -> float:
    """FLOPs of ``(m x k) @ (k x n)``: one multiply and one add per term."""
    return 2.0 * m * n * k


def sdpa_fwd_flops(
    *,
    batch: int,
    seq_len: int,
    num_heads: int,
    head_dim: int,
    causal: bool,
    kv_len: int | None = None,
) -> float:
    """Forward SDPA FLOPs as the reference probe counts them: ``QK^T`` and ``PV``.

    ``4*b*h*s_q*s_kv*d``, halved when causal. A colleague's `kernels` package owns the exact
    attention cost functions; this is only the record->point conversion of calibration.
    """
    s_kv = seq_len if kv_len is None else kv_len
    flops = 4.0 * batch * num_heads * seq_len * s_kv * head_dim
    return flops / 2 if causal else flops


SDPA_BWD_OVER_FWD = 2.5  # backward = 2.5x forward FLOPs, so fwd+bwd = 3.5x (probe convention)


def _num(value: Any) -> float:
    """A measured number from a probe file; anything else is a malformed file."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def records_from_reference_probe(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Records of the reference probes (hwprobe.py and hostprobe.py --p2p output formats)."""
    out: list[dict[str, Any]] = []
    copies = data.get("copies_GBps", {})
    for key, row in copies.items():
        if not key.isdigit():
            continue
        n = int(key) * MiB
        for direction in ("h2d", "d2h"):
            for pinned in (True, False):
                gbps = row.get(f"{direction}_{'pinned' if pinned else 'pageable'}")
                if gbps:
                    out.append(
                        {
                            "op": "copy",
                            "direction": direction,
                            "pinned": pinned,
                            "bytes": n,
                            "time_s": n / (_num(gbps) * GB),
                        }
                    )
    if "bidir_1GiB_each_total_GBps" in copies:
        n = 1024 * MiB  # each way; a bidir record's "bytes" counts both directions
        out.append(
            {
                "op": "copy",
                "direction": "bidir",
                "pinned": True,
                "bytes": 2 * n,
                "bytes_each_way": n,
                "time_s": 2 * n / (_num(copies["bidir_1GiB_each_total_GBps"]) * GB),
            }
        )
    if "hbm_copy_rw_TBps" in data:
        n = 4 * 1024 * MiB  # hwprobe.py copies a 4 GiB tensor
        out.append(
            {
                "op": "hbm_copy",
                "bytes": n,
                "time_s": 2 * n / (_num(data["hbm_copy_rw_TBps"]) * TB),
            }
        )
    for shape, tflops in data.get("gemm_bf16_TFLOPs", {}).items():
        m, k, n_ = (int(v) for v in shape.split("x"))  # hwprobe.py names them m x k x n
        flops = gemm_flops(m=m, n=n_, k=k)
        out.append(
            {
                "op": "gemm",
                "m": m,
                "n": n_,
                "k": k,
                "dtype": "bf16",
                "time_s": flops / (_num(tflops) * TFLOPS),
            }
        )
    for seq, row in data.get("sdpa_causal", {}).items():
        shape = {
            "batch": 1,
            "seq_len": int(seq),
            "num_heads": 32,
            "num_kv_heads": 32,
            "head_dim": 128,
            "causal": True,
        }  # hwprobe.py: 1 x 32 heads x 128
        out.append({"op": "sdpa", "pass": "fwd", **shape, "time_s": row["fwd_s"]})
        out.append({"op": "sdpa", "pass": "fwdbwd", **shape, "time_s": row["fwdbwd_s"]})
    if "p2p_0to1_GBps" in data:
        n = 1024 * MiB  # hostprobe.py --p2p copies 1 GiB
        out.append({"op": "p2p_copy", "bytes": n, "time_s": n / (_num(data["p2p_0to1_GBps"]) * GB)})
    if "p2p_bidir_total_GBps" in data:
        n = 1024 * MiB
        out.append(
            {
                "op": "p2p_bidir",
                "bytes": 2 * n,
                "bytes_each_way": n,
                "time_s": 2 * n / (_num(data["p2p_bidir_total_GBps"]) * GB),
            }
        )
    nccl = data.get("nccl")
    if isinstance(nccl, dict):
        for key, row in nccl.items():
            op, size = key.rsplit("_", 1)
            n = int(size.removesuffix("MiB")) * MiB  # per-rank input buffer
            # hostprobe.py: all_gather's input is one rank's shard; our num_bytes is the output.
            num_bytes = n * 2 if op == "all_gather" else n
            out.append({"op": op, "bytes": num_bytes, "num_gpus": 2, "time_s": row["time_s"]})
    return out


# GEMM_BURST_CLASS (hwmodels.op_classes): GEMMs short enough to run at the burst clock, after a
# fixed latency: the sweep (validate/scripts/gemm_sweep.py) ran 0.8-500 GFLOP kernels at 785-810
# TFLOP/s after about 6 us, and from 8192^3 (1.1 TFLOP) on at the sustained 686-702 TFLOP/s of the
# gemm class (the training shapes, timed alone and inside steps).
GEMM_BURST_MAX_FLOPS = 1e12
"""Sweep shapes from here on run at the sustained rate: points of the ``gemm`` regime, which its
own fit (training shapes) already covers; they are not burst points."""
GEMM_BURST_MIN_FLOPS_PER_BYTE = 206.0
"""Below this arithmetic intensity (FLOPs per compulsory HBM byte; 989.5 TFLOP/s / 4.8 TB/s, the
H200's datasheet ridge) a GEMM is bound by its bytes (decode's 1-64 rows): the memory side
predicts it, it says nothing about the compute side."""


def _burst_skip(r: dict[str, Any]) -> str | None:
    """Why a GEMM sweep record is not a ``gemm.burst`` point (None: it is one)."""
    if r.get("family") == "probe":
        return "the reference probe's shapes timed again in its order: compared, not fitted"
    if r.get("split") != "fit":
        return f"split {r.get('split')!r}: held out of the fit (tests check it)"
    m, n, k = int(r["m"]), int(r["n"]), int(r["k"])
    flops = gemm_flops(m=m, n=n, k=k)
    if flops >= GEMM_BURST_MAX_FLOPS:
        return "at the sustained rate (the gemm class's regime)"
    if flops / (2 * (m * k + k * n + m * n)) < GEMM_BURST_MIN_FLOPS_PER_BYTE:
        return "bound by its bytes (the memory side predicts it)"
    return None


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        r.get(f)
        for f in (
            "batch",
            "seq_len",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "causal",
            "kv_len",
            "backend",
        )
    )


def points_from_records(
    records: list[dict[str, Any]], *, source: str = "", skipped: list[str] | None = None
) -> list[CalibrationPoint]:
    """Reduce measurement records to calibration points (see the module docstring)."""
    pts: list[CalibrationPoint] = []
    skipped = skipped if skipped is not None else []
    fwd_time = {
        _key(r): r["time_s"] for r in records if r.get("op") == "sdpa" and r.get("pass") == "fwd"
    }
    has_bwd = {_key(r) for r in records if r.get("op") == "sdpa" and r.get("pass") == "bwd"}
    for i, r in enumerate(records):
        op, t = r.get("op"), r.get("time_s")
        where = f"{source}: records.{i}"
        if r.get("status", "ok") != "ok":
            skipped.append(f"{where}: status {r.get('status')!r}")
            continue
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= MAX_SECONDS:
            raise UserInputError(f"{where}.time_s: must be a positive number of seconds (at most "
                                 f"{MAX_SECONDS:g}), got {echo(t)}")
        if not isinstance(op, str):
            raise UserInputError(f"{where}.op: expected an operator name, got {echo(op)}")
        num_before = len(pts)
        try:
            if op == "gemm" and r.get("timing") == "isolated":
                # one call after a synchronize: the kernel plus what its launch exposes
                skipped.append(f"{where}: an isolated call, not the kernel's time")
            elif op == "gemm" and "split" in r or r.get("family") == "probe":
                if (why := _burst_skip(r)) is not None:
                    skipped.append(f"{where}: {why}")
                else:
                    flops = gemm_flops(m=r["m"], n=r["n"], k=r["k"])
                    label = f"gemm {r['m']}x{r['n']}x{r['k']} {r.get('dtype', 'bf16')} sweep"
                    pts.append(CalibrationPoint(GEMM_BURST_CLASS, flops, 1, t, label,
                                                r.get("dtype", "bf16")))
            elif op == "gemm":
                flops = r.get("flops") or gemm_flops(m=r["m"], n=r["n"], k=r["k"])
                label = f"gemm {r.get('m')}x{r.get('n')}x{r.get('k')} {r.get('dtype', 'bf16')}"
                pts.append(CalibrationPoint("gemm", flops, 1, t, label, r.get("dtype", "bf16")))
            elif op == "sdpa":
                fwd = r.get("flops_fwd") or sdpa_fwd_flops(
                    batch=r["batch"],
                    seq_len=r["seq_len"],
                    num_heads=r["num_heads"],
                    head_dim=r["head_dim"],
                    causal=bool(r["causal"]),
                    kv_len=r.get("kv_len"),
                )
                backend = r.get("backend")
                # unforced records are the base class, whichever backend PyTorch picked
                forced = backend if backend and backend != "default" else ""
                variant = "".join(
                    f".{part}"
                    for part in (forced, "" if r["head_dim"] == 128 else f"d{r['head_dim']}")
                    if part
                )
                shown = forced or f"default({r.get('default_backend', '?')})"
                label = (
                    f"sdpa {shown} b{r['batch']} s{r['seq_len']} "
                    f"h{r['num_heads']}/{r.get('num_kv_heads', r['num_heads'])} d{r['head_dim']}"
                )
                dtype = r.get("dtype", "bf16")
                in_step = r.get("source") == "in-step"
                if in_step:
                    label += " in-step"
                if r.get("pass") == "fwd":
                    pts.append(
                        CalibrationPoint(
                            "attention_fwd" + variant, fwd, 1, t, label + " fwd", dtype, in_step
                        )
                    )
                elif r.get("pass") == "bwd":
                    pts.append(
                        CalibrationPoint(
                            "attention_bwd" + variant,
                            SDPA_BWD_OVER_FWD * fwd,
                            1,
                            t,
                            label + " bwd",
                            dtype,
                            in_step,
                        )
                    )
                elif r.get("pass") == "fwdbwd":
                    if _key(r) in has_bwd:
                        skipped.append(f"{where}: fwdbwd (the bwd record of that shape is used)")
                        continue
                    t_fwd = fwd_time.get(_key(r))
                    if t_fwd is None or t <= t_fwd:
                        skipped.append(f"{where}: fwdbwd without a usable fwd record of that shape")
                        continue
                    pts.append(
                        CalibrationPoint(
                            "attention_bwd" + variant,
                            SDPA_BWD_OVER_FWD * fwd,
                            1,
                            t - t_fwd,
                            label + " bwd (fwdbwd - fwd)",
                            dtype,
                        )
                    )
                else:
                    raise KeyError("pass")
            elif op == "copy":
                if not r.get("pinned", True):
                    skipped.append(f"{where}: pageable copy (not modelled)")
                    continue
                d = r["direction"]
                if d not in ("h2d", "d2h", "bidir"):
                    raise KeyError("direction")
                n = float(r["bytes"])  # bidir: both directions together
                pts.append(
                    CalibrationPoint(f"copy_{d}", n, 1, t, f"copy {d} {n / MiB:g} MiB", None)
                )
            elif op in ("p2p_copy", "p2p_bidir"):
                n = float(r["bytes"])
                pts.append(CalibrationPoint(op, n, 1, t, f"{op} {n / MiB:g} MiB", None))
            elif op == "hbm_copy":
                work = float(r.get("hbm_bytes") or 2 * r["bytes"])
                pts.append(
                    CalibrationPoint(
                        "hbm_copy", work, 1, t, f"hbm_copy {work / 2 / MiB:g} MiB", None
                    )
                )
            elif op in MEMORY_OPS:
                variant = ".".join(str(r[k]) for k in ("impl", "pass") if r.get(k))
                cls = f"memory.{op}.{variant}" if variant else f"memory.{op}"
                size = f"{r['tokens']} tokens" if "tokens" in r else f"{r['hbm_bytes']} B"
                pts.append(
                    CalibrationPoint(
                        cls, float(r["hbm_bytes"]), 1, t, f"{op} {variant} {size}", r.get("dtype")
                    )
                )
            elif op in COLLECTIVE_OPS:
                n, g = float(r["bytes"]), int(r["num_gpus"])
                pts.append(
                    CalibrationPoint(
                        op,
                        bus_factor(op, g) * n,
                        num_steps(op, g),
                        t,
                        f"{op} n={g} {n / MiB:g} MiB",
                        None,
                    )
                )
            else:
                skipped.append(f"{where}: unknown op {op!r}")
        except KeyError as err:
            raise UserInputError(f"{where}: missing field {err.args[0]!r} for op {op!r}") from None
        except (TypeError, ValueError, ZeroDivisionError) as err:
            raise UserInputError(f"{where}: bad value for op {op!r} ({err})") from None
        for p in pts[num_before:]:
            _check_point(p, where)
    return pts


def _check_point(p: CalibrationPoint, where: str) -> None:
    """A point the fit can use: positive finite work, non-negative finite latency units.

    Zero or negative work (a size of 0 or -4096 in a record) would make the rate infinite or
    negative, and a non-finite value poisons the least-squares fit of the whole class.
    """
    if isinstance(p.work, bool) or not math.isfinite(p.work) or p.work <= 0:
        raise UserInputError(f"{where}: {p.label}: work must be a positive number, got {echo(p.work)}")
    if not math.isfinite(p.num_latency_units) or p.num_latency_units < 0:
        raise UserInputError(f"{where}: {p.label}: latency units must be a non-negative number, "
                             f"got {echo(p.num_latency_units)}")


def points_from_kv_quant_check(data: dict[str, Any], *, source: str) -> list[CalibrationPoint]:
    """The KV dequantize kernel of the executor (``validate/scripts/kv_quant_check.py``): one
    point per format and size, class ``memory.kv_dequantize.<format>``, its work the bytes it
    reads and writes (the quantized layer and the bf16 K and V), its time the Triton kernel's."""
    results = data.get("results")
    if not isinstance(results, dict) or not results:
        raise UserInputError(f"{source}: results: expected an object of kv-quant checks")
    pts = []
    for key, r in sorted(results.items()):
        where = f"{source}: results.{key}"
        try:
            p = CalibrationPoint(f"memory.kv_dequantize.{r['format']}",
                                 float(r["quantized_bytes"]) + float(r["bf16_bytes"]), 1.0,
                                 float(r["dequantize_triton_s"]),
                                 f"kv_dequantize {r['format']} b{r['batch']} {r['tokens']} tokens", None)
        except (KeyError, TypeError, ValueError) as err:
            raise UserInputError(f"{where}: bad or missing field ({err})") from None
        if r.get("dequantize_triton_s") is None or not math.isfinite(p.time_s) or p.time_s <= 0:
            raise UserInputError(f"{where}: dequantize_triton_s: must be a positive time")
        _check_point(p, where)
        pts.append(p)
    return pts


def load_points(
    paths: list[str | Path], *, skipped: list[str] | None = None
) -> list[CalibrationPoint]:
    """Points from measurement files in either accepted format."""
    pts: list[CalibrationPoint] = []
    all_skipped: list[str] = []
    for path in paths:
        data = read_json(Path(path))
        if not isinstance(data, dict):
            raise UserInputError(f"{path}: expected a JSON object")
        if Path(path).name.startswith("kv-quant-check-") and "results" in data:
            pts += points_from_kv_quant_check(data, source=str(path))
            continue
        if "records" in data:
            records = data["records"]
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise UserInputError(f"{path}: records: expected a list of objects")
        else:
            try:
                records = records_from_reference_probe(data)
            except (TypeError, ValueError, KeyError, AttributeError) as err:
                raise UserInputError(
                    f"{path}: neither a records file nor a reference probe ({err!r})"
                ) from None
        if not records:
            raise UserInputError(f"{path}: no measurement records found")
        pts += points_from_records(records, source=str(path), skipped=all_skipped)
    if skipped is not None:
        skipped += all_skipped
    if paths and not pts:  # fitting nothing would write an empty profile
        why = f" ({len(all_skipped)} skipped, first: {all_skipped[0]})" if all_skipped else ""
        raise UserInputError(f"{paths[0]}: no usable measurement records{why}")
    return pts


def _fit_class(points: list[CalibrationPoint], fixed_latency_s: float | None) -> OpClassFit:
    work = np.array([p.work for p in points], dtype=float)
    units = np.array([p.num_latency_units for p in points], dtype=float)
    t = np.array([p.time_s for p in points], dtype=float)
    if fixed_latency_s is None:
        a = np.stack([units / t, work / t], axis=1)
        sol = lsq_linear(a, np.ones_like(t), bounds=(0.0, np.inf), method="bvls").x
        latency, inv_rate = float(sol[0]), float(sol[1])
    else:
        latency = fixed_latency_s
        y = 1.0 - latency * units / t
        x = work / t
        inv_rate = float(max(np.dot(x, y) / np.dot(x, x), 0.0))
    if inv_rate <= 0:
        # times do not grow with size: a latency cannot be told apart, fit the rate alone
        latency, x = 0.0, work / t
        inv_rate = float(np.dot(x, np.ones_like(t)) / np.dot(x, x))
    # 6 significant digits: far below measurement noise, and stable across BLAS builds
    latency, inv_rate = _sig(latency), 1.0 / _sig(1.0 / inv_rate)
    pred = latency * units + work * inv_rate
    is_flops = points[0].op_class.split(".")[0] in FLOP_CLASSES
    return OpClassFit(
        flops_per_s=1.0 / inv_rate if is_flops else None,
        bandwidth_bytes_per_s=None if is_flops else 1.0 / inv_rate,
        latency_s=latency,
        dtype=points[0].dtype if is_flops else None,
        num_points=len(points),
        max_abs_rel_error=_sig(float(np.max(np.abs(pred / t - 1.0)))),
    )


CURVE_CLASSES = ("attention_fwd", "attention_bwd")
"""Classes fitted with a rate curve as well: their achieved rate changes with size beyond the
latency ramp (cuDNN's causal attention on the H200: forward 534 TFLOP/s at 4K tokens, 614-657
at 8K-64K, 565 at 128K, 517 at 256K). GEMMs are not: their rate varies with shape, which a
curve over FLOPs would mistake for size."""
CURVE_MIN_SIZES = 3
CURVE_MERGE_FRAC = 0.02
"""Points whose work is within this fraction of each other are one size of the curve (the
median of their rates): shapes of equal work (GQA at equal query heads, repeated runs). Where
a size has points timed inside a training step, only those count: that is the condition the
predictions are for (cuDNN's causal forward at 16K tokens: 657 TFLOP/s alone, 614 in a step)."""


def _rate_curve(points: list[CalibrationPoint]) -> tuple[tuple[float, float], ...] | None:
    """(work, median rate) per distinct size, or None below ``CURVE_MIN_SIZES`` sizes."""
    groups: list[list[CalibrationPoint]] = []
    for p in sorted(points, key=lambda p: p.work):
        if groups and p.work <= groups[-1][0].work * (1.0 + CURVE_MERGE_FRAC):
            groups[-1].append(p)
        else:
            groups.append([p])
    if len(groups) < CURVE_MIN_SIZES:
        return None
    groups = [[p for p in g if p.in_step] or g for g in groups]
    return tuple(
        (_sig(float(np.median([p.work for p in g]))), _sig(float(np.median([p.work / p.time_s for p in g]))))
        for g in groups
    )


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def fit_fits(points: list[CalibrationPoint]) -> dict[str, OpClassFit]:
    """Fit every op class present in ``points`` (compute classes on their bf16 points)."""
    by_class: dict[str, list[CalibrationPoint]] = defaultdict(list)
    for p in points:
        if p.op_class.split(".")[0] in FLOP_CLASSES and p.dtype != FIT_DTYPE:
            continue
        by_class[p.op_class].append(p)
    fits: dict[str, OpClassFit] = {}
    order = sorted(by_class, key=lambda c: c in _SIBLING_LATENCY)  # siblings first
    for cls in order:
        pts = by_class[cls]
        fixed = None
        if len({(p.work, p.num_latency_units) for p in pts}) < 2:
            sib = [fits[s].latency_s for s in _SIBLING_LATENCY.get(cls, ()) if s in fits]
            fixed = float(np.mean(sib)) if sib else 0.0
        fit = _fit_class(pts, fixed)
        if cls.split(".")[0] in CURVE_CLASSES and (curve := _rate_curve(pts)) is not None:
            fit = fit.model_copy(update={"rate_curve": curve})
            worst = max(abs(fit.time_s(p.work) / p.time_s - 1.0) for p in pts)
            fit = fit.model_copy(update={"max_abs_rel_error": _sig(worst)})
        fits[cls] = fit
    return dict(sorted(fits.items()))


def _repo_path(path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def fit_profile(paths: list[str | Path], *, name: str, gpu: str) -> AchievedProfile:
    """Fit an `AchievedProfile` for ``gpu`` from measurement files (order does not matter)."""
    ordered = sorted(paths, key=_repo_path)
    points = load_points(ordered)
    return AchievedProfile(
        name=name, gpu=gpu, fits=fit_fits(points), measurements=[_repo_path(p) for p in ordered]
    )


def residuals(profile: AchievedProfile, points: list[CalibrationPoint]) -> list[Residual]:
    """Per point: measured time, the profile's prediction, and the relative error."""
    out = []
    for p in points:
        fit = profile.fits.get(p.op_class)
        if fit is None or (fit.dtype is not None and p.dtype != fit.dtype):
            continue
        pred = fit.time_s(p.work, num_latency_units=p.num_latency_units)
        out.append(Residual(p.op_class, p.label, p.time_s, pred, pred / p.time_s - 1.0))
    return out


def profile_json(profile: AchievedProfile) -> str:
    """The profile as committed: indented JSON with a trailing newline."""
    return json.dumps(profile.model_dump(mode="json", exclude_none=True), indent=2) + "\n"


def fit_cpu_adamw_rate(path: str | Path, *, bytes_per_param: float = 22.0) -> float:
    """The host CPUs' AdamW rate, in bytes of optimizer traffic per second as `simulator.templates`
    counts a step's (``bytes_per_param``: 22 for bf16 parameters and gradients with fp32 moments,
    no master weights: 12 read, 10 written), from ``validate/scripts/cpu_adam.py``'s file: its
    ``adamw`` rows of form ``layer_step`` (the executor's whole per-layer CPU step: gradient in,
    update, bf16 parameters out), the largest size at the most threads. Set it as
    ``host_memory.cpu_adamw_rate_bytes_per_s`` of a node."""
    from hwmodels.units import UserInputError
    from hwmodels.userfile import read_user_mapping

    data = read_user_mapping(path, what="measurement file")
    rows = [r for r in data.get("adamw") or () if isinstance(r, dict) and r.get("form") == "layer_step"]
    try:
        best = max(rows, key=lambda r: (_num(r.get("numel")), _num(r.get("threads"))))
        numel, step_s = _num(best.get("numel")), _num(best.get("step_s"))
    except (TypeError, ValueError):
        raise UserInputError(f"{path}: adamw: no layer_step row with numel, threads and step_s") from None
    if not (numel > 0 and step_s > 0 and math.isfinite(numel) and math.isfinite(step_s)):
        raise UserInputError(f"{path}: adamw: numel and step_s must be positive numbers")
    return bytes_per_param * numel / step_s
