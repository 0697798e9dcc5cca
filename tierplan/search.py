"""`tierplan search`: the analytical estimate over a space of configurations, and its Pareto front.

Models: a ``SearchSpace`` (a model, training or inference, and the values each axis takes:
hardware presets, total GPUs or data-parallel degree, tensor / sequence / context parallelism
and its kind, ZeRO stage, micro-batch, checkpointing, sequence length; for inference the
batch, KV quantization and lengths) enumerated in a fixed order; every configuration priced by
`simulator.estimator` (training: `TrainingEstimator`, equal to `estimate_training`;
inference: `estimate_inference`) and `tierplan.costs.job_cost`; the Pareto front of the ones
that meet the constraints (fit in HBM, a step-time or a cost target) over three objectives, all
minimised: time (seconds per million tokens: training tokens of the whole job, or decoded
tokens), peak allocated memory per GPU, and dollars per million tokens.
Assumes: one configuration's result depends on it alone, so the local process pool, Ray and a
serial loop give the same records, assembled in enumeration order; a configuration the model
or the node cannot take (tp not dividing the heads, GPUs not filling whole nodes) is skipped
and counted by the field its error names.
Ignores: pipeline and expert parallelism; KV tiers beyond HBM (`tierplan estimate --mode infer`
lists them for one configuration); inference estimates take 1-3 s each, so an inference
search is bounded (``MAX_INFER_CONFIGS``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hwmodels.limits import MAX_BATCH, MAX_LAYERS, MAX_PARALLEL_DEGREE
from hwmodels.units import UserInputError, validation_error_line
from simulator.job import Length

SCHEMA_VERSION: Final = 1
MAX_CONFIGS = 1_000_000
"""Configurations one search may enumerate (a million takes hours on a small machine)."""
MAX_INFER_CONFIGS = 64
"""Inference configurations one search may enumerate: `estimate_inference` searches the largest
batch and context that fit, 1-3 s per configuration on one core."""
OBJECTIVES = ("s_per_million_tokens", "peak_allocated_bytes", "usd_per_million_tokens")
"""The front's objectives, all minimised (a configuration without a price counts as +inf $)."""

Degree = Annotated[int, Field(ge=1, le=MAX_PARALLEL_DEGREE, strict=True)]
Axis = Annotated[tuple[Degree, ...], Field(min_length=1)]


class SearchSpace(BaseModel):
    """The configurations of one search: every combination of the axes' values."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    """Version of this file format."""
    model: str = Field(min_length=1)
    """A model preset name or a path to a Hugging Face config.json."""
    num_layers: int | None = Field(default=None, ge=1, le=MAX_LAYERS, strict=True)
    """Override the model's number of decoder layers (None: the model's own)."""
    mode: Literal["train", "infer"] = "train"
    """Search training steps or inference requests."""
    hardware: tuple[Annotated[str, Field(min_length=1)], ...] = Field(default=("8xH200",), min_length=1)
    """Node presets (or node files): one GPU kind per configuration."""
    gpus: Axis | None = None
    """Total GPUs of the job; the data-parallel degree is gpus / (tp * cp) (a count tp * cp
    does not divide is skipped). None: the ``dp`` axis instead."""
    dp: Axis = (1,)
    """Data-parallel degrees (when ``gpus`` is None)."""
    tp: Axis = (1,)
    """Tensor-parallel degrees."""
    sp: tuple[bool, ...] = Field(default=(False,), min_length=1)
    """Sequence parallelism off / on (with tp > 1)."""
    cp: Axis = (1,)
    """Context-parallel degrees (training)."""
    cp_kind: tuple[Literal["ring", "ulysses"], ...] = Field(default=("ring",), min_length=1)
    """Context-parallel kinds (only searched where cp > 1)."""
    zero: tuple[Annotated[int, Field(ge=0, le=3, strict=True)], ...] = Field(default=(0,), min_length=1)
    """ZeRO stages (only searched where the data-parallel degree is above 1)."""
    micro_batch: tuple[Annotated[int, Field(ge=1, le=MAX_BATCH, strict=True)], ...] = Field(default=(1,), min_length=1)
    """Sequences per step per replica (training)."""
    checkpointing: tuple[Literal["none", "selective", "full"], ...] = Field(
        default=("none", "selective", "full"), min_length=1)
    """Activation checkpointing strategies (training)."""
    seq_len: tuple[Length, ...] = Field(default=(131072,), min_length=1)
    """Training sequence lengths ("1M" accepted)."""
    prompt_len: tuple[Length, ...] = Field(default=(32768,), min_length=1)
    """Prompt lengths (inference)."""
    gen_len: Annotated[int, Field(ge=0, le=1 << 20, strict=True)] = 128
    """Generated tokens per sequence (inference)."""
    batch: tuple[Annotated[int, Field(ge=1, le=MAX_BATCH, strict=True)], ...] = Field(default=(1,), min_length=1)
    """Sequences served together (inference)."""
    kv_quant: tuple[Literal["none", "int8", "int4", "fp8"], ...] = Field(default=("none",), min_length=1)
    """KV-cache storage formats (inference)."""
    require_fit: bool = True
    """Only configurations whose peak fits the GPU's HBM enter the front."""
    max_step_time_s: float | None = Field(default=None, gt=0)
    """Time target: a training step (or a decode step) at most this long."""
    max_usd_per_million_tokens: float | None = Field(default=None, gt=0)
    """Cost target: dollars per million (training, or decoded) tokens at most this."""
    prices: str | None = None
    """Price catalog: a built-in name or a catalog JSON file (default aws-on-demand-2026)."""


def parse_space(data: dict[str, Any], *, where: str) -> SearchSpace:
    """Validate a search space; a bad value is one line naming ``where`` and the field."""
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as err:
        raise UserInputError(validation_error_line(err, where)) from None


def load_space(path: str) -> dict[str, Any]:
    """A search-space file (YAML or JSON, `hwmodels.userfile`) as a mapping, not yet validated."""
    from hwmodels.userfile import read_user_mapping

    return read_user_mapping(path, what="search space")


# ---- the configurations ---------------------------------------------------------------------
def configurations(space: SearchSpace) -> list[dict[str, Any]]:
    """Every configuration of ``space`` in a fixed order: the step shape outermost, the ZeRO
    stage, the node and the GPU count innermost, so that neighbours share their step (what the
    estimator caches).
    Combinations that mean the same job are listed once: a cp kind only with cp > 1, sequence
    parallelism only with tp > 1 (a ZeRO stage above 0 at dp 1 is listed, and skipped)."""
    out: list[dict[str, Any]] = []
    if space.mode == "infer":
        for prompt in space.prompt_len:
            for kvq in space.kv_quant:
                for batch in space.batch:
                    for tp in space.tp:
                        for hw in space.hardware:
                            out.append({"hardware": hw, "tp": tp, "prompt_len": prompt, "gen_len": space.gen_len,
                                        "batch": batch, "kv_quant": kvq})
        return out
    dps = space.gpus if space.gpus is not None else space.dp
    for seq in space.seq_len:
        for mb in space.micro_batch:
            for ck in space.checkpointing:
                for tp in space.tp:
                    for sp in _unique(space.sp if tp > 1 else (False,)):
                        for cp in space.cp:
                            for kind in _unique(space.cp_kind if cp > 1 else ("ring",)):
                                for zero in space.zero:
                                    for hw in space.hardware:
                                        for n in dps:
                                            out.append({"hardware": hw, "gpus" if space.gpus else "dp": n,
                                                        "tp": tp, "sp": sp, "cp": cp, "cp_kind": kind,
                                                        "zero": zero, "micro_batch": mb, "checkpointing": ck,
                                                        "seq_len": seq})
                if len(out) > MAX_CONFIGS:
                    raise UserInputError(f"search: more than {MAX_CONFIGS:,} configurations; narrow the axes")
    return out


def _unique(values):
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class _Context:
    """What a worker builds once per search: the model, the nodes, the prices, the estimator."""

    space: SearchSpace
    model: Any
    nodes: dict[str, Any]
    catalog: Any
    estimator: Any


_CONTEXT: dict[str, _Context] = {}


def _context(space_json: str) -> _Context:
    hit = _CONTEXT.get(space_json)
    if hit is None:
        from hwmodels.catalog import load_node
        from hwmodels.prices import load_price_catalog
        from simulator.estimator import TrainingEstimator
        from simulator.model import load_model

        space = SearchSpace.model_validate_json(space_json)
        nodes = {}
        for hw in space.hardware:
            try:
                nodes[hw] = load_node(hw)
            except UserInputError as err:
                raise UserInputError(f"hardware: {err}") from None
        try:
            model = load_model(space.model)
        except UserInputError as err:
            raise UserInputError(f"model: {err}") from None
        if space.num_layers is not None:
            model = model.with_layers(space.num_layers)
        # configurations come grouped by step shape (`configurations`), its nodes interleaved:
        # a step is not needed again once its shape's run ends, so the cache holds one per node
        # (and is emptied after each chunk, `evaluate_chunk`)
        hit = _Context(space, model, nodes, load_price_catalog(space.prices),
                       TrainingEstimator(replay_over_capacity=False, max_steps=len(nodes)))
        _CONTEXT.clear()  # one search at a time per process
        _CONTEXT[space_json] = hit
    return hit


def check_space(space: SearchSpace) -> None:
    """Resolve the model, nodes and prices once up front: a bad name is one line, before any work."""
    _context(space.model_dump_json())


def evaluate_chunk(space_json: str, configs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each configuration's record (`evaluate`), in order. The unit of work of every backend.

    The cyclic garbage collector is off over the chunk (`simulator.estimator.collector_paused`)
    and run once on the young generations after it, once the estimator has dropped its steps (a
    chunk holds whole step shapes, `chunks`: none of them serves the next chunk): what the chunk
    made (its steps' programs, walks and allocator replays) is never scanned but for what it left
    in cycles; collecting after every step build instead took a fifth of a search."""
    import gc

    from simulator.estimator import collector_paused

    ctx = _context(space_json)
    with collector_paused():
        records = [evaluate(ctx, c) for c in configs]
        ctx.estimator.clear()
        # the chunk's cycles (an allocator replay's linked blocks), and its survivors to the old
        # generation: before the collector is back on, whose first allocation would scan them first
        gc.collect(1)
    return records


def evaluate(ctx: _Context, config: dict[str, Any]) -> dict[str, Any]:
    """The record of one configuration: its fields plus the estimate's figures and cost, or
    ``{"skipped": FIELD}`` when the model or the node cannot take it (the field its error names)."""
    try:
        job, node = _job(ctx, config)
        if ctx.space.mode == "train":
            return {**config, **_train_figures(ctx, job, node)}
        return {**config, **_infer_figures(ctx, job, node)}
    except UserInputError as err:
        return {**config, "skipped": _skip_reason(str(err))}


def _skip_reason(line: str) -> str:
    head = line.split(": ", 1)[0]
    return head.removeprefix("job.") if " " not in head else "other"


def _job(ctx: _Context, c: dict[str, Any]):
    from simulator.job import InferJob, Parallelism, TrainJob

    node = ctx.nodes[c["hardware"]]
    try:
        if ctx.space.mode == "infer":
            par = Parallelism(tp=c["tp"])
            infer = InferJob(prompt_len=c["prompt_len"], gen_len=c["gen_len"], batch=c["batch"],
                             kv_quant=c["kv_quant"], parallelism=par)
            infer.check(ctx.model)
            return infer, node
        if "gpus" in c:
            if c["gpus"] % (c["tp"] * c["cp"]):
                raise UserInputError("gpus: not a multiple of tp * cp")
            dp = c["gpus"] // (c["tp"] * c["cp"])
        else:
            dp = c["dp"]
        if c["zero"] and dp == 1:
            raise UserInputError("zero: no data parallelism to shard over (dp = 1)")
        par = Parallelism(tp=c["tp"], sequence_parallel=c["sp"], cp=c["cp"], cp_kind=c["cp_kind"], dp=dp,
                          zero_stage=c["zero"])
        loss = "cross_entropy" if ctx.model.has_lm_head else "mean_square_fp32"
        job = TrainJob(seq_len=c["seq_len"], micro_batch=c["micro_batch"], checkpointing=c["checkpointing"],
                       parallelism=par, loss=loss)
        return job, node
    except ValidationError as err:
        raise UserInputError(validation_error_line(err, "job")) from None


def _train_figures(ctx: _Context, job, node) -> dict[str, Any]:
    from tierplan.costs import job_cost

    est = ctx.estimator.estimate(ctx.model, job, node)
    cost = job_cost(ctx.catalog, node, num_gpus=est.num_gpus, step_time_s=est.step_time_s,
                    tokens_per_s=est.tokens_per_s)
    return {"dp": est.dp, "num_gpus": est.num_gpus, "fits": est.fits,
            "peak_allocated_bytes": est.peak_allocated_bytes, "step_time_s": est.step_time_s,
            "tokens_per_s": est.tokens_per_s, "mfu": est.mfu,
            "s_per_million_tokens": 1e6 / est.tokens_per_s if est.tokens_per_s > 0 else math.inf,
            "usd_per_step": cost.get("usd_per_step"), "usd_per_million_tokens": cost.get("usd_per_million_tokens")}


def _infer_figures(ctx: _Context, job, node) -> dict[str, Any]:
    from simulator.estimator import estimate_inference
    from tierplan.costs import job_cost

    est = estimate_inference(ctx.model, job, node)
    num_gpus = job.parallelism.num_gpus
    cost = job_cost(ctx.catalog, node, num_gpus=num_gpus, step_time_s=est.decode_time_per_token_s,
                    tokens_per_s=est.decode_tokens_per_s)
    tps = est.decode_tokens_per_s
    return {"num_gpus": num_gpus, "fits": est.fits,
            "peak_allocated_bytes": max(est.prefill_peak_allocated_bytes, est.decode_peak_allocated_bytes),
            "step_time_s": est.decode_time_per_token_s, "prefill_time_s": est.prefill_time_s,
            "tokens_per_s": tps, "s_per_million_tokens": 1e6 / tps if tps > 0 else math.inf,
            "max_batch": est.max_batch, "usd_per_step": cost.get("usd_per_step"),
            "usd_per_million_tokens": cost.get("usd_per_million_tokens")}


# ---- backends -------------------------------------------------------------------------------
BACKENDS = ("pool", "ray")
RAY_MISSING = ("--backend ray: the ray package is not installed; install the extra: "
               "pip install 'tierplan[ray]'")


def chunks(configs: Sequence[dict[str, Any]], *, num_workers: int) -> list[list[dict[str, Any]]]:
    """Consecutive runs of about ``len / (16 * workers)`` configurations, cut only where the step
    shape changes (neighbours that differ in node, GPU count or ZeRO stage stay in one worker's
    cache: `simulator.estimator.TrainingEstimator` builds a shape's step once for all of them)."""
    target = max(1, math.ceil(len(configs) / (16 * max(1, num_workers))))
    out: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    for c in configs:
        if len(cur) >= target and _shape(c) != _shape(cur[-1]):
            out.append(cur)
            cur = []
        cur.append(c)
    if cur:
        out.append(cur)
    return out


def _shape(c: dict[str, Any]) -> tuple:
    return tuple(v for k, v in c.items() if k not in ("hardware", "gpus", "dp", "zero"))


def run_search(space: SearchSpace, *, backend: str = "pool", num_workers: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Every configuration's record, in enumeration order. ``num_workers`` 1 evaluates in this
    process; ``progress(done, total)`` is called as configurations finish."""
    if backend not in BACKENDS:
        raise UserInputError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    configs = configurations(space)
    if space.mode == "infer" and len(configs) > MAX_INFER_CONFIGS:
        raise UserInputError(f"search: {len(configs)} inference configurations, more than {MAX_INFER_CONFIGS} "
                             "(each takes 1-3 s); narrow the axes")
    check_space(space)
    workers = num_workers or os.cpu_count() or 1
    space_json = space.model_dump_json()
    parts = chunks(configs, num_workers=workers)
    report = progress or (lambda done, total: None)
    if backend == "ray":
        results = _run_ray(space_json, parts, workers, report, len(configs))
    elif workers == 1:
        results = []
        for part in parts:
            results.append(evaluate_chunk(space_json, part))
            report(sum(map(len, results)), len(configs))
    else:
        results = _run_pool(space_json, parts, workers, report, len(configs))
    return [r for part in results for r in part]


def _run_pool(space_json, parts, workers, report, total) -> list[list[dict[str, Any]]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(evaluate_chunk, space_json, part): i for i, part in enumerate(parts)}
        out: list[list[dict[str, Any]] | None] = [None] * len(parts)
        for fut in as_completed(futures):
            i = futures[fut]
            out[i] = fut.result()
            done += len(parts[i])
            report(done, total)
    return [r for r in out if r is not None]


def _run_ray(space_json, parts, workers, report, total) -> list[list[dict[str, Any]]]:
    import importlib

    try:  # an optional extra: imported only here, untyped (Any)
        ray: Any = importlib.import_module("ray")
    except ImportError:
        raise UserInputError(RAY_MISSING) from None
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(evaluate_chunk)
        refs = [remote.remote(space_json, part) for part in parts]
        index = {ref: i for i, ref in enumerate(refs)}
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done += len(parts[index[ready[0]]])
            report(done, total)
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()


# ---- the front ------------------------------------------------------------------------------
def objectives(r: dict[str, Any]) -> tuple[float, float, float]:
    usd = r.get("usd_per_million_tokens")
    return (r["s_per_million_tokens"], float(r["peak_allocated_bytes"]), math.inf if usd is None else usd)


def meets_constraints(space: SearchSpace, r: dict[str, Any]) -> bool:
    if "skipped" in r:
        return False
    if space.require_fit and not r["fits"]:
        return False
    if space.max_step_time_s is not None and r["step_time_s"] > space.max_step_time_s:
        return False
    usd = r.get("usd_per_million_tokens")
    target = space.max_usd_per_million_tokens
    return target is None or (usd is not None and usd <= target)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one (all minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def sort_key(r: dict[str, Any]) -> tuple:
    """Objectives first, then the configuration's fields by name: a total, stable order."""
    return objectives(r) + tuple((k, str(r[k])) for k in sorted(r))


def pareto_front(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records no other record dominates, sorted by ``sort_key`` (equal objectives: all kept).
    Sorted by objectives, a record can only be dominated by one before it, and then by one on the
    front already."""
    front: list[dict[str, Any]] = []
    for r in sorted(records, key=sort_key):
        obj = objectives(r)
        if not any(dominates(objectives(f), obj) for f in front):
            front.append(r)
    return front


@dataclass(frozen=True)
class SearchResult:
    space: SearchSpace
    records: list[dict[str, Any]]
    front: list[dict[str, Any]]

    @property
    def skipped(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            if "skipped" in r:
                out[r["skipped"]] = out.get(r["skipped"], 0) + 1
        return dict(sorted(out.items()))

    @property
    def num_evaluated(self) -> int:
        return sum(1 for r in self.records if "skipped" not in r)

    @property
    def num_feasible(self) -> int:
        return sum(1 for r in self.records if meets_constraints(self.space, r))

    @property
    def fewest_gpus(self) -> dict[str, Any] | None:
        """The configuration meeting the constraints on the fewest GPUs (ties: the front's order)."""
        ok = [r for r in self.records if meets_constraints(self.space, r)]
        return min(ok, key=lambda r: (r["num_gpus"], sort_key(r))) if ok else None

    def num_configurations_text(self) -> str:
        return f"{len(self.records):,} configurations"

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space.model_dump(mode="json"), "num_configurations": len(self.records),
                "num_evaluated": self.num_evaluated, "num_feasible": self.num_feasible,
                "skipped": self.skipped, "objectives": list(OBJECTIVES),
                "front": [_json_record(r) for r in self.front],
                "fewest_gpus": _json_record(self.fewest_gpus) if self.fewest_gpus else None}


def _json_record(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in sorted(r.items())}


def search(space: SearchSpace, **kwargs: Any) -> SearchResult:
    """Run the search (`run_search`) and take the front of the records that meet the constraints."""
    records = run_search(space, **kwargs)
    return SearchResult(space, records, pareto_front([r for r in records if meets_constraints(space, r)]))


def iter_csv_rows(front: Sequence[dict[str, Any]]) -> Iterator[list[str]]:
    """The front as CSV rows: a header of every field (sorted), then one row per configuration."""
    fields = sorted({k for r in front for k in r})
    yield fields
    for r in front:
        yield ["" if r.get(k) is None else repr(r[k]) if isinstance(r.get(k), float) else str(r[k])
               for k in fields]
