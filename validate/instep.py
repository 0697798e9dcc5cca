"""Calibration records from kernels timed inside real training steps (``run_plan --kernel-profile``).

Models: nothing; this converts. A kernel profile (``<case>.kernels.json``) lists every aten op of
one profiled step with its input shapes, its number of calls and the device time of the kernels
it launched. Each shape becomes one record of ``hwmodels.calibrate``'s format, timed per call:
* ``aten::mm`` ``[[m, k], [k, n]]`` -> ``gemm`` m, n, k;
* ``aten::_cudnn_attention_forward`` / ``_backward`` with query ``[b, h, s, d]`` and key
  ``[b, h_kv, s, d]`` -> ``sdpa`` causal, backend ``cudnn`` (the kernel PyTorch picked: its
  fits are the ``.cudnn`` variants the templates use), pass ``fwd`` / ``bwd``;
* SwiGLU's eager ops on the halves of a fused gate_up projection (strided views:
  ``aten::silu``, ``aten::silu_backward`` and the three ``aten::mul`` of ``[b, s, f]`` by
  ``[b, s, f]`` per layer, one forward and two backward) -> ``silu_mul`` impl ``eager_chunked``,
  ``fwd`` = silu + one mul and ``fwdbwd`` = that + silu_backward + two muls, over the minimal
  traffic ``kernels.elementwise.minimal_traffic_bytes`` counts (as the templates time it).
Standalone microbenchmarks feed the same fits contiguous tensors in a loop; in a step the
kernels meet strided views, other kernels' cache state and sustained clocks, which is what the
step-time prediction has to match.
Assumes: profiles of steps without checkpointing (``torch.utils.checkpoint`` stops a layer's
recompute once the tensors backward needs exist, so its calls of one shape are not all alike:
pass only the ``none`` plans' profiles); bf16, causal, one micro-batch; the three
``[b, s, f]`` muls of a layer take equal time (same shapes and bytes).
Ignores: aten ops of other shapes (norms, residual adds, copies: the templates time them from
their own fits).
Source: run_plan.profile_kernels (torch.profiler, ``key_averages(group_by_input_shape=True)``).

Inputs are read through hwmodels.userfile (regular files, size and depth caps, one-line errors);
the records file is written whole or not at all (hwmodels.outputs.OutputSet).

Run (CPU): python3 validate/instep.py --profiles DIR/*.kernels.json --measured DIR/measured.json --out FILE.json
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from hwmodels.limits import echo  # noqa: E402
from hwmodels.outputs import OutputSet  # noqa: E402
from hwmodels.records import OpRecordsFile  # noqa: E402
from hwmodels.units import UserInputError  # noqa: E402
from hwmodels.userfile import read_user_json  # noqa: E402
from validate.records import PlanRunFile, load_record_file  # noqa: E402

SDPA_OPS = {"aten::_cudnn_attention_forward": "fwd", "aten::_cudnn_attention_backward": "bwd"}


def _shapes(text: str, where: str) -> list[list[int]]:
    if not isinstance(text, str):
        raise UserInputError(f"{where}: input shapes: expected the profiler's text, got {echo(text)}")
    try:
        shapes = ast.literal_eval(text)  # a literal list of lists of ints, never code
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise UserInputError(f"{where}: input shapes {echo(text)} are not a list literal") from None
    if not isinstance(shapes, list) or not all(
        isinstance(sh, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in sh)
        for sh in shapes
    ):
        raise UserInputError(f"{where}: input shapes must be a list of lists of sizes")
    return shapes


def records_from_profile(data: dict[str, Any], *, source: str, dtype: str = "bf16") -> list[dict[str, Any]]:
    """The records of one kernel profile (see the module docstring)."""
    from kernels.elementwise import minimal_traffic_bytes

    ops = data.get("ops")
    if not isinstance(ops, list):
        raise UserInputError(f"{source}: ops: expected the per-op list of run_plan --kernel-profile")
    records: list[dict[str, Any]] = []
    silu: dict[tuple[int, ...], dict[str, float]] = {}  # [b, s, f] -> op name -> seconds per call
    for i, row in enumerate(ops):
        where = f"{source}: ops.{i}"
        try:
            name, shape_text, count, total_s = row
        except (TypeError, ValueError):
            raise UserInputError(f"{where}: expected [name, shapes, count, seconds]") from None
        if not (type(count) is int and count > 0 and type(total_s) in (int, float)
                and 0 < total_s < math.inf):
            raise UserInputError(f"{where}: count and seconds must be positive")
        per_call_s = total_s / count
        base = {"dtype": dtype, "time_s": per_call_s, "num_calls": count, "source": "in-step"}
        if name == "aten::mm":
            shapes = _shapes(shape_text, where)
            if len(shapes) == 2 and len(shapes[0]) == 2 and len(shapes[1]) == 2:
                (m, k), (k2, n) = shapes
                if k == k2:
                    records.append({"op": "gemm", "m": m, "n": n, "k": k, **base})
        elif name in SDPA_OPS:
            shapes = _shapes(shape_text, where)
            if len(shapes) < 2 or len(shapes[0]) != 4 or len(shapes[1]) != 4:
                raise UserInputError(f"{where}: {name}: expected query and key shapes [b, h, s, d]")
            (b, h, s, d), (_, h_kv, s_kv, _) = shapes[0], shapes[1]
            records.append({"op": "sdpa", "batch": b, "seq_len": s, "num_heads": h,
                            "num_kv_heads": h_kv, "head_dim": d, "causal": True,
                            "kv_len": None if s_kv == s else s_kv, "backend": "cudnn",
                            "pass": SDPA_OPS[name], **base})
        elif name in ("aten::silu", "aten::silu_backward", "aten::mul"):
            shapes = _shapes(shape_text, where)
            if not shapes or len(shapes[0]) != 3 or 0 in shapes[0]:
                continue
            if name == "aten::mul" and (len(shapes) != 2 or shapes[1] != shapes[0]):
                continue
            key = tuple(shapes[0])
            silu.setdefault(key, {})[name] = per_call_s
    for (b, s, f), t in sorted(silu.items()):
        if not {"aten::silu", "aten::silu_backward", "aten::mul"} <= set(t):
            continue
        fwd_bytes, fwdbwd_bytes = minimal_traffic_bytes("silu_mul", num_tokens=b * s, width=f, dtype=dtype)
        fwd_s = t["aten::silu"] + t["aten::mul"]
        for pass_, hbm, secs in (("fwd", fwd_bytes, fwd_s),
                                 ("fwdbwd", fwdbwd_bytes, fwd_s + t["aten::silu_backward"] + 2 * t["aten::mul"])):
            records.append({"op": "silu_mul", "impl": "eager_chunked", "pass": pass_, "tokens": b * s,
                            "width": f, "hbm_bytes": hbm, "dtype": dtype, "time_s": secs,
                            "source": "in-step"})
    return records


def build(profile_paths: list[str], measured_path: str) -> dict[str, Any]:
    """One records file from kernel profiles (and the run's measured.json for provenance)."""
    records: list[dict[str, Any]] = []
    for p in sorted(profile_paths):
        try:
            data = read_user_json(p)
        except UserInputError as err:
            raise UserInputError(f"--profiles: {err}") from None
        if not isinstance(data, dict):
            raise UserInputError(f"--profiles: {p}: expected a kernel profile object, got {type(data).__name__}")
        case = Path(p).name.removesuffix(".kernels.json")
        for r in records_from_profile(data, source=p):
            records.append({**r, "case": case})
    run = load_record_file(measured_path, PlanRunFile, field="--measured", what="a run_plan measured.json")
    prov = run.provenance.model_dump(mode="json", exclude_unset=True)
    return {"provenance": {**prov, "converted_by": "python3 validate/instep.py"}, "records": records}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", required=True, help="<case>.kernels.json files")
    ap.add_argument("--measured", required=True,
                    help="the run's measured.json (its provenance is copied)")
    ap.add_argument("--out", required=True, help="records file to write")
    args = ap.parse_args(argv)
    try:
        out = build(args.profiles, args.measured)
        with OutputSet() as outputs:  # the records file whole, or nothing
            outputs.write_text(args.out, OpRecordsFile.model_validate(out).to_json(sort_keys=True), field="--out")
    except UserInputError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{len(out['records'])} records -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
