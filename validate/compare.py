"""Predicted vs measured: re-predict every committed GPU measurement with the current code.

Models: nothing of its own. It turns a measurement record into the inputs tierplan's models take
(a kernel cost, a transfer, a training job), asks the same public functions users call
(``kernels`` + ``hwmodels`` for operators, ``simulator.estimator`` for whole steps) and reports
predicted, measured and relative error side by side.
Assumes: records in the formats of ``kernels/microbench.py`` (``hwmodels.records.OpRecordsFile``),
``validate/measure_steps.py`` (``validate.records.StepsFile``), both checked on reading, and the
public reference probe (``hwprobe.py``).
Ignores: records whose status is not "ok" and measurements that no model covers
(pageable copies, launch overhead).
Source: validate/measurements/ (each file carries device, torch version, date and command).
"""

from __future__ import annotations

import pathlib
from dataclasses import asdict, dataclass
from typing import Any

from hwmodels.units import GiB, MiB

MEASUREMENTS_DIR = pathlib.Path(__file__).resolve().parent / "measurements"


@dataclass(frozen=True)
class Row:
    """One figure: what was measured, what tierplan predicts, and the relative error."""

    source: str  # measurement file, relative to validate/measurements
    case: str  # human-readable case label
    figure: str  # "time_s" | "peak_allocated_bytes"
    predicted: float
    measured: float

    @property
    def rel_error(self) -> float:
        return self.predicted / self.measured - 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rel_error"] = self.rel_error
        return d


def _rel(path: pathlib.Path) -> str:
    try:
        return str(path.resolve().relative_to(MEASUREMENTS_DIR))
    except ValueError:
        return str(path)


def _load(path: pathlib.Path) -> dict:
    from hwmodels.units import UserInputError
    from hwmodels.userfile import read_user_json

    data = read_user_json(path)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object of measurements")
    return data


def _load_records(path: pathlib.Path, model) -> list[dict]:
    """The records of a measurement file, checked against its model (``model``)."""
    from pydantic import ValidationError

    from hwmodels.records import as_dicts
    from hwmodels.units import UserInputError

    data = _load(path)
    try:
        return as_dicts(model.model_validate(data).records)
    except ValidationError as err:
        first = str(err).splitlines()[0]
        raise UserInputError(f"{path}: not a {model.__name__} ({first}, {err.error_count()} errors)") from None


# ---- operators ---------------------------------------------------------------------------------
def attention_variant(backend: str | None, head_dim: int) -> str:
    """The profile's attention class variant for a measured backend (default = PyTorch's pick)."""
    if backend in ("flash", "cudnn", "masked"):
        return backend if head_dim == 128 else f"{backend}.d{head_dim}"
    return "cudnn" if head_dim == 128 else f"d{head_dim}"


def predict_op_record(rec: dict, node) -> float | None:
    """Predicted time of one microbenchmark record on ``node``; None if no model covers it."""
    from hwmodels.compute import compute_time_s
    from hwmodels.transfer import host_transfer_time_s
    from kernels.attention import attention_bwd_cost, attention_fwd_cost
    from kernels.cost import kernel_time_s
    from kernels.elementwise import minimal_traffic_bytes
    from kernels.gemm import gemm_cost

    op = rec["op"]
    if op == "gemm":
        return kernel_time_s(gemm_cost(m=rec["m"], n=rec["n"], k=rec["k"], dtype=rec.get("dtype", "bf16")), node)
    if op == "sdpa":
        kw = dict(batch=rec["batch"], seq_len_q=rec["seq_len"], seq_len_kv=rec["seq_len"],
                  num_heads=rec["num_heads"], num_kv_heads=rec.get("num_kv_heads", rec["num_heads"]),
                  head_dim=rec["head_dim"], causal=bool(rec["causal"]), dtype=rec.get("dtype", "bf16"))
        var = attention_variant(rec.get("backend"), rec["head_dim"])

        def t(cost) -> float:
            cls = f"{cost.op_class}.{var}" if cost.op_class.startswith("attention") else cost.op_class
            return compute_time_s(flops=cost.flops, hbm_bytes=cost.hbm_bytes, op_class=cls,
                                  dtype=cost.dtype, node=node)

        fwd = t(attention_fwd_cost(**kw))
        bwd = sum(t(c) for c in attention_bwd_cost(**kw).kernels)
        return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[rec["pass"]]
    if op == "copy":
        if not rec.get("pinned", True):
            return None  # pageable copies: bounced through a driver buffer, not modelled
        if rec["direction"] == "bidir":
            each = rec["bytes"] / 2
            return max(host_transfer_time_s(node, each, d, concurrent_opposite=True) for d in ("h2d", "d2h"))
        return host_transfer_time_s(node, rec["bytes"], rec["direction"])
    if op == "hbm_copy":
        return compute_time_s(flops=0.0, hbm_bytes=2 * rec["bytes"], op_class="hbm_copy", dtype="bf16", node=node)
    if op in ("rmsnorm", "silu_mul", "rotary", "cross_entropy", "embedding"):
        # a record's field, maybe absent: minimal_traffic_bytes refuses a width that is not an int
        width: Any = {"silu_mul": rec.get("intermediate"), "cross_entropy": rec.get("vocab")}.get(op, rec.get("hidden"))
        extra = {}
        if op == "rotary":
            width, extra = 2 * rec["hidden"], {"head_dim": rec["head_dim"]}
        elif op == "embedding":
            extra = {"head_dim": rec["vocab"]}
        fwd, fwdbwd = minimal_traffic_bytes(op, num_tokens=rec["tokens"], width=width, **extra)
        nbytes = fwd if rec["pass"] == "fwd" else fwdbwd
        variant = f"memory.{op}.{rec['impl']}.{rec['pass']}"
        return compute_time_s(flops=0.0, hbm_bytes=nbytes, op_class=variant, dtype="bf16", node=node)
    return None


def _op_label(rec: dict) -> str:
    op = rec["op"]
    if op == "gemm":
        return f"gemm {rec.get('layer', '')} {rec.get('pass', '')} {rec['m']}x{rec['n']}x{rec['k']}".replace("  ", " ")
    if op == "sdpa":
        return (f"sdpa {rec.get('backend')} {rec['pass']} s={rec['seq_len']} h={rec['num_heads']}/"
                f"{rec.get('num_kv_heads')} d={rec['head_dim']}")
    if op == "copy":
        return f"copy {rec['direction']} {rec['bytes'] / MiB:g} MiB"
    if op == "hbm_copy":
        return f"hbm_copy {rec['bytes'] / MiB:g} MiB"
    return f"{op} {rec.get('impl')} {rec.get('pass')} T={rec.get('tokens')}"


def compare_ops(paths: list[pathlib.Path], hardware: str = "1xH200") -> list[Row]:
    """Predicted vs measured time of every modelled microbenchmark record in ``paths``."""
    from hwmodels.catalog import load_node
    from hwmodels.records import OpRecordsFile

    node = load_node(hardware)
    rows = []
    for path in paths:
        for rec in _load_records(path, OpRecordsFile):
            if rec.get("status", "ok") != "ok":
                continue
            pred = predict_op_record(rec, node)
            if pred is None:
                continue
            rows.append(Row(_rel(path), _op_label(rec), "time_s", pred, rec["time_s"]))
    return rows


# ---- whole training steps ---------------------------------------------------------------------
def job_for_step_record(rec: dict, allocator: str = "caching"):
    """The TrainJob a ``validate/measure_steps.py`` record ran (HF model, batch, loss, optimizer);
    ``allocator``: the one its file's ``provenance.pytorch_cuda_alloc_conf`` names."""
    from simulator.job import TrainJob

    opt = rec.get("optimizer")
    return TrainJob(
        seq_len=rec["seq_len"],
        micro_batch=rec["batch"],
        optimizer="adamw" if opt else "none",
        # torch.optim.AdamW keeps its moments in the parameters' dtype (bf16 here)
        optimizer_state_dtype=rec.get("dtype", "bf16"),
        checkpointing="full" if rec["gradient_checkpointing"] else "none",
        # the loop's form; records made before it was recorded held the output (kept)
        model_output=rec.get("model_output", "kept"),
        allocator=allocator,
    )


def step_records(paths: list[pathlib.Path]) -> list[tuple[pathlib.Path, dict]]:
    from validate.records import StepsFile

    out = []
    for path in paths:
        for rec in _load_records(path, StepsFile):
            if rec.get("status") == "ok":
                out.append((path, rec))
    return out


def predict_step_record(rec: dict, hardware: str = "1xH200", *, allocator: str = "caching"):
    """TrainEstimate for one measured Hugging Face training step."""
    from hwmodels.catalog import load_node
    from simulator.estimator import estimate_training
    from simulator.model import ModelSpec

    model = ModelSpec.from_hf_config(rec["config"], name=rec["case"])
    return estimate_training(model, job_for_step_record(rec, allocator), load_node(hardware))


def probe_cases(path: pathlib.Path) -> list[tuple[str, int, str, dict]]:
    """(key, seq_len, mode, record) of the reference probe's layer-stack baselines (estimable ones)."""
    data = _load(path)
    out = []
    for key, rec in data.get("baseline_4x_llama7b_layers", {}).items():
        seq, mode = key.split("_", 1)
        if mode in ("none", "checkpoint") and isinstance(rec, dict):
            out.append((key, int(seq), mode, rec))
    return out


def predict_probe_case(seq_len: int, mode: str, hardware: str = "1xH200"):
    """hwprobe.py's stack: 4 Llama-7B-shaped layers, input requires grad, grads accumulate."""
    from hwmodels.catalog import load_node
    from simulator.estimator import estimate_training
    from simulator.job import TrainJob
    from simulator.model import get_model

    job = TrainJob(seq_len=seq_len, optimizer="none", loss="mean_square_fp32", grads_persist=True,
                   checkpointing="full" if mode == "checkpoint" else "none",
                   model_output="kept")  # its step function's x holds the stack output
    return estimate_training(get_model("probe-llama7b-stack"), job, load_node(hardware))


def compare_steps(step_paths: list[pathlib.Path], probe_paths: list[pathlib.Path]) -> list[Row]:
    """Peak allocated and step time of every measured training step, predicted vs measured."""
    rows = []
    for path, rec in step_records(step_paths):
        est = predict_step_record(rec)
        case = (f"{rec['case']} S={rec['seq_len']} ckpt={'yes' if rec['gradient_checkpointing'] else 'no'}"
                + (f" {rec['optimizer']}" if rec.get("optimizer") else "")
                + f" output={rec.get('model_output', 'kept')}")
        rows.append(Row(_rel(path), case, "peak_allocated_bytes", est.peak_allocated_bytes,
                        rec["peak_allocated_bytes"]))
        rows.append(Row(_rel(path), case, "time_s", est.step_time_s, rec["step_time_s"]))
    for path in probe_paths:
        for key, seq, mode, rec in probe_cases(path):
            est = predict_probe_case(seq, mode)
            rows.append(Row(_rel(path), f"probe-stack {key}", "peak_allocated_bytes",
                            est.peak_allocated_bytes, rec["peak_GiB"] * GiB))
            rows.append(Row(_rel(path), f"probe-stack {key}", "time_s", est.step_time_s, rec["step_s"]))
    return rows


def default_files(kind: str) -> list[pathlib.Path]:
    """Committed measurement files of one kind: "microbench", "steps" or "probe"."""
    pattern = {"microbench": "h200/microbench-*.json", "steps": "h200/steps-*.json",
               "probe": "reference/h200-probe-*.json"}[kind]
    return sorted(MEASUREMENTS_DIR.glob(pattern))
