"""The inference bench: run every mode of every cell of a plans directory, record, tabulate.

Models: nothing; it measures. Reads ``DIR/index.json`` (infer-contract.md: cells, each with its
modes' plan files or null and the reasons for the nulls), and for each cell runs every non-null
mode selected (``hf_resident``, ``hf_offloaded``: validate.infer_hf; ``plan``, ``kv_host`` and
the quantized-KV modes ``kv_host_int8`` / ``kv_host_int4`` / ``plan_int8`` / ``plan_int4``:
validate.infer_executor) once, each in a fresh child process (no memory an earlier mode cached,
leaked or pinned can change a later one; an out-of-memory mode is recorded as ``oom``). Before a
cell's static modes it runs, unless ``--no-reference``, the all-resident static plan of the same
job (every layer's KV and weights in HBM) when its buffers fit, and records whether each static
mode's tokens equal it, and teacher-forces each on it (``teacher_forced``: the logit error of
the quantized modes); where it does not run, the quantized modes are teacher-forced on the
lossless ``plan`` mode's run. Static runs use ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``;
HF runs the allocator the caller's environment names (the native one unless
``--hf-allocator`` gives a value); each record names its allocator. Null modes are recorded as
refused with the index's reason. Writes one ``InferBenchFile`` (validate/records.py) and prints
a table with the plans' predictions beside the measurements.
``validate_plans`` is ``tierplan validate plan`` for inference plans: one run per plan, in this
process.
Assumes: one GPU; the plans' embedded scenarios (nothing is looked up but the plan files).
``--smoke`` runs each plan's job on a tiny copy of its model (validate.run_plan.SMOKE_SHAPE, the
plan's layer count) with a short prompt, on the CPU, in this process: the same code path, for CI.
Source: infer-contract.md; validate/run_plan.py (one child process per case).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pydantic import BaseModel, ConfigDict, Field, ValidationError  # noqa: E402

from hwmodels.units import UserInputError, format_bytes, format_seconds  # noqa: E402
from planners.plan import KvPlacement, LayerPlan, ModelStatePlacement, Plan, load_plan  # noqa: E402
from simulator.job import InferJob  # noqa: E402
from simulator.model import ModelSpec  # noqa: E402
from validate.infer_plans import MODE_SOURCE, MODES, QUANT_MODES  # noqa: E402

STATIC_MODES = tuple(m for m in MODES if MODE_SOURCE[m][0] == "static")
SMOKE_PROMPT_LEN = 24
SMOKE_GEN_LEN = 4
SMOKE_CHUNK_LEN = 8
SMOKE_KV_GROUP = 8
"""Key group of a quantized plan's tiny copy: groups fill during its prompt and decode steps."""
STATIC_ALLOC_CONF = "expandable_segments:True"
ALLOC_VAR = "PYTORCH_CUDA_ALLOC_CONF"


class IndexCell(BaseModel):
    """One cell of index.json: a model, a prompt length, a batch, and its modes' plan files
    (the planner's other keys, e.g. its predictions and reasons, are kept as they are)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    cell: str = Field(min_length=1, max_length=200)
    model: str
    prompt_len: int = Field(gt=0)
    batch: int = Field(gt=0)
    gen_len: int = Field(ge=0)
    modes: dict[str, str | None]
    refused: dict[str, str] = Field(default_factory=dict)


class IndexFile(BaseModel):
    """validate/plans/infer-bench/index.json."""

    model_config = ConfigDict(frozen=True, extra="allow")

    cells: list[IndexCell]


def load_index(plans_dir: str | Path) -> IndexFile:
    from hwmodels.userfile import read_user_json
    from planners.plan import validation_line

    path = Path(plans_dir) / "index.json"
    if not path.is_file():
        raise UserInputError(f"--plans: no index.json in {plans_dir}")
    try:
        index = IndexFile.model_validate(read_user_json(path))
    except ValidationError as err:
        raise UserInputError(f"{path}: {validation_line(err)}") from None
    for cell in index.cells:
        for mode, name in cell.modes.items():
            if mode not in MODES:
                raise UserInputError(f"{path}: cells.{cell.cell}.modes: unknown mode {mode!r} "
                                     f"(modes: {', '.join(MODES)})")
            if name is not None and (Path(name).name != name or not (Path(plans_dir) / name).is_file()):
                raise UserInputError(f"{path}: cells.{cell.cell}.modes.{mode}: no plan file {name!r} "
                                     f"in {plans_dir}")
    return index


# ---- plans ------------------------------------------------------------------------------------

def infer_plan(scenario: Any, *, kv_host: Any = (), w_host: Any = (), params_prefetch_layers: int = 1,
               planner: str = "rule", kv_quant: Any = (), attention_cpu: Any = (), **fields: Any) -> Plan:
    """A rule plan for an inference ``scenario``: layers in ``kv_host`` keep their KV cache on the
    host (the rest in HBM), layers in ``w_host`` stream their weights from it, layers in
    ``kv_quant`` store their KV in the job's quantized format (its kv_quant and group size),
    layers in ``attention_cpu`` (host KV, unquantized) attend on the host CPU."""
    from kernels.quant import kivi_group_size
    from planners.plan import Provenance, tierplan_version

    kv_set, w_set, q_set, cpu_set = set(kv_host), set(w_host), set(kv_quant), set(attention_cpu)
    job = scenario.job
    quant = {"dtype": job.kv_quant, "group_size": kivi_group_size(head_dim=scenario.model.head_dim,
                                                                  group_size=job.kv_group_size)} if q_set else {}
    layers = [LayerPlan(layer=i, attention_on="cpu" if i in cpu_set else "gpu",
                        kv_cache=KvPlacement(**(quant if i in q_set else {"dtype": job.kv_dtype}),
                                             resident_frac=0.0 if i in kv_set else 1.0),
                        model_states=(ModelStatePlacement(params="host", params_prefetch_layers=params_prefetch_layers)
                                      if i in w_set else ModelStatePlacement()))
              for i in range(scenario.model.num_layers)]
    return Plan.for_scenario(scenario, layers=layers,
                             provenance=Provenance(tierplan_version=tierplan_version(), planner=planner),
                             **fields)


def resident_plan(plan: Plan) -> Plan:
    """The all-resident static plan of ``plan``'s job (the tokens' reference)."""
    sc = plan.scenario
    job = sc.job.model_copy(update={"engine": "static"})
    return infer_plan(sc.with_overrides(job=job), planner="baseline:resident")


def smoke_plan(plan: Plan) -> Plan:
    """``plan``'s decisions for a tiny copy of its model and a short job (CPU checks)."""
    from validate.run_plan import SMOKE_SHAPE

    sc = plan.scenario
    spec = sc.model
    kv = min(spec.num_kv_heads, SMOKE_SHAPE["num_heads"])
    tiny = ModelSpec.model_validate({**spec.model_dump(), **SMOKE_SHAPE, "num_kv_heads": kv,
                                     "max_position_embeddings": 4096})
    job = sc.job
    assert isinstance(job, InferJob)  # infer_job checked the mode
    update: dict[str, Any] = {"prompt_len": SMOKE_PROMPT_LEN, "gen_len": min(job.gen_len, SMOKE_GEN_LEN)}
    if job.prefill_chunk_len is not None:
        update["prefill_chunk_len"] = SMOKE_CHUNK_LEN
    layers = list(plan.layers)
    if job.kv_quant != "none":  # the tiny copy's groups, so that some fill
        update["kv_group_size"] = SMOKE_KV_GROUP
        layers = [lp.model_copy(update={"kv_cache": lp.kv_cache.model_copy(update={"group_size": SMOKE_KV_GROUP})})
                  if lp.kv_cache is not None and lp.kv_cache.group_size is not None else lp for lp in layers]
    tiny_sc = sc.with_overrides(model=tiny, job=job.model_copy(update=update))
    fields = {k: getattr(plan, k) for k in ("prefetch_lookahead_layers", "num_staging_buffers")}
    return Plan.for_scenario(tiny_sc, layers=layers, provenance=plan.provenance, **fields)


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- one mode, in this process ----------------------------------------------------------------

def describe(plan: Plan) -> dict[str, Any]:
    job = plan.scenario.job
    out: dict[str, Any] = {"model": plan.scenario.model.name,
                           "prediction": plan.prediction.model_dump() if plan.prediction else None}
    if isinstance(job, InferJob):
        out.update(engine=job.engine, prompt_len=job.prompt_len, batch=job.batch, gen_len=job.gen_len,
                   prefill_chunk_len=job.prefill_chunk_len)
    return out


def save_reference(run_tokens: list[list[int]], logits: list[Any], where: str | Path) -> None:
    """A reference run's tokens and fp32 logits [positions, B, V] into directory ``where``
    (tokens.json, logits.npy), for a teacher-forced run in another process."""
    import numpy as np
    import torch

    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    (where / "tokens.json").write_text(json.dumps(run_tokens))
    np.save(where / "logits.npy", torch.stack([t.float() for t in logits]).numpy())


def load_reference(where: str | Path) -> tuple[list[list[int]], list[Any]]:
    """``save_reference``'s tokens and logits (no pickles)."""
    import numpy as np
    import torch

    where = Path(where)
    tokens = json.loads((where / "tokens.json").read_text())
    logits = torch.from_numpy(np.load(where / "logits.npy", allow_pickle=False))
    return tokens, list(logits)


def measure(plan: Plan, *, smoke: bool, seed: int = 0, teacher: tuple[list[list[int]], list[Any]] | None = None,
            reference_out: str | Path | None = None, check_eager: bool = False) -> dict[str, Any]:
    """Run ``plan`` once (smoke: its tiny copy on the CPU): the record's measured fields, or a
    refusal / out-of-memory status; never raises for either. ``teacher`` (a reference run's
    tokens and logits): the run's decode steps again fed the reference's tokens, their logits
    against the reference's (``teacher_forced``). ``reference_out``: this run's tokens and logits
    saved there (``save_reference``). ``check_eager``: the static engine's graphed decode steps
    against eager ones (engine notes)."""
    import torch

    from validate.infer_executor import compare_logits, decode_step_time, infer_job, run_plan

    rec: dict[str, Any] = {**describe(plan), "allocator": os.environ.get(ALLOC_VAR, "")}
    try:
        infer_job(plan)
        if smoke:
            plan = smoke_plan(plan)
            device = torch.device("cpu")
        else:
            if not torch.cuda.is_available():
                raise UserInputError("validate plan: no CUDA device here (use --smoke for a CPU check)")
            device = torch.device("cuda", torch.cuda.current_device())
        run = run_plan(plan, device=device, seed=seed, keep_logits=reference_out is not None,
                       teacher=teacher[0] if teacher else None, check_eager=check_eager)
    except UserInputError as err:
        return {**rec, "status": "refused", "message": str(err)}
    except torch.OutOfMemoryError as err:
        first = str(err).splitlines()[0] if str(err) else "out of memory"
        return {**rec, "status": "oom", "message": f"out of memory: {first}"}
    step = run.decode_step_time_s
    batch = len(run.tokens)
    rec.update(
        status="ok", setup_s=run.setup_s, prefill_time_s=run.prefill_time_s,
        decode_step_times_s=run.decode_step_times_s, decode_step_time_s=step, contexts=run.contexts,
        tokens_per_s=batch / step if step else None, peak_allocated_bytes=run.peak_allocated_bytes,
        peak_reserved_bytes=run.peak_reserved_bytes, host_pinned_bytes=run.host_pinned_bytes,
        h2d_bytes_per_step=run.h2d_bytes_per_step, d2h_bytes_per_step=run.d2h_bytes_per_step,
        tokens=run.tokens, engine_notes=run.notes,
    )
    if run.decode_issue_times_s:
        rec.update(decode_issue_times_s=run.decode_issue_times_s,
                   decode_issue_time_s=decode_step_time(run.decode_issue_times_s))
    if run.warmup_s is not None:
        rec["warmup_s"] = run.warmup_s
    if teacher is not None:
        rec["teacher_forced"] = compare_logits(teacher[1], run.teacher_logits)
    if reference_out is not None:
        save_reference(run.tokens, run.logits, reference_out)
    if smoke:
        rec["prediction"] = None  # the tiny copy's figures are not the plan's
    return rec


def _in_child(plan_path: str | Path, *, env: dict[str, str], teacher: str | Path | None = None,
              reference_out: str | Path | None = None, check_eager: bool = False) -> dict[str, Any]:
    """One plan in a process of its own (``--case``); an exit without a record is an error."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--case", str(plan_path), "--case-out", str(out)]
        if teacher is not None:
            cmd += ["--case-teacher", str(teacher)]
        if reference_out is not None:
            cmd += ["--case-reference-out", str(reference_out)]
        if check_eager:
            cmd += ["--case-check-eager"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.is_file():
            return json.loads(out.read_text())
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return {"status": "error", "allocator": env.get(ALLOC_VAR, ""),
            "message": f"exit {proc.returncode}: {tail[-1] if tail else 'no output'}"}


def _engine(plan: Plan) -> str:
    return getattr(plan.scenario.job, "engine", "static")


def _env_for(engine: str, hf_allocator: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if engine == "static":
        env[ALLOC_VAR] = STATIC_ALLOC_CONF
    elif hf_allocator is not None:
        env[ALLOC_VAR] = hf_allocator
    return env


# ---- the bench --------------------------------------------------------------------------------

def run_bench(plans_dir: str | Path, *, cells: tuple[str, ...] = (), modes: tuple[str, ...] = MODES,
              reference: bool = True, smoke: bool = False, hf_allocator: str | None = None,
              progress: Any = None) -> list[dict[str, Any]]:
    """Every selected (cell, mode) of the index in ``plans_dir``: the records' dicts, in order."""
    index = load_index(plans_dir)
    known = {c.cell for c in index.cells}
    unknown = [c for c in cells if c not in known]
    if unknown:
        raise UserInputError(f"--cells: no cell {unknown[0]!r} in the index ({', '.join(sorted(known))})")
    records: list[dict[str, Any]] = []

    def run_one(path: Path, plan: Plan, *, teacher: Path | None = None, reference_out: Path | None = None
                ) -> dict[str, Any]:
        if smoke:
            return measure(plan, smoke=True, teacher=load_reference(teacher) if teacher else None,
                           reference_out=reference_out)
        return {**describe(plan), **_in_child(path, env=_env_for(_engine(plan), hf_allocator), teacher=teacher,
                                              reference_out=reference_out)}

    for cell in index.cells:
        if cells and cell.cell not in cells:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            records.extend(_run_cell(cell, plans_dir, modes, reference, run_one, Path(tmp), progress))
    return records


def _run_cell(cell: IndexCell, plans_dir: str | Path, modes: tuple[str, ...], reference: bool, run_one: Any,
              tmp: Path, progress: Any) -> list[dict[str, Any]]:
    """One cell's modes: the static modes teacher-forced on the all-resident static run,
    hf_offloaded on hf_resident (when it ran); where the all-resident run did not run (its bf16
    KV does not fit), the quantized modes on the lossless ``plan`` mode's run (whose logits are
    the all-resident engine's)."""
    records: list[dict[str, Any]] = []
    ref_tokens: list[list[int]] | None = None
    ref_message: str | None = None
    teachers: dict[str, Path] = {}  # mode -> the reference directory its run is teacher-forced on
    wanted = [m for m in MODES if m in modes and (m in cell.modes or m in cell.refused)]
    static = [m for m in wanted if m in STATIC_MODES and cell.modes.get(m)]
    if reference and static:
        first = load_plan(Path(plans_dir) / str(cell.modes[static[0]]))
        ref_path = tmp / "resident.json"
        ref_path.write_text(resident_plan(first).to_json())
        ref = run_one(ref_path, resident_plan(first), reference_out=tmp / "ref-static")
        if ref["status"] == "ok":
            ref_tokens = ref["tokens"]
            teachers.update({m: tmp / "ref-static" for m in STATIC_MODES})
        else:
            ref_message = f"all-resident reference {ref['status']}: {ref.get('message')}"
        if progress:
            progress(f"{cell.cell}: reference {ref['status']}")
    quant_ref = (reference and ref_tokens is None and cell.modes.get("plan") is not None
                 and any(m in QUANT_MODES for m in static))
    for mode in wanted:
        name = cell.modes.get(mode)
        rec: dict[str, Any] = {"cell": cell.cell, "mode": mode, "plan": name}
        if name is None:
            rec.update(status="refused", message=cell.refused.get(mode, "no plan for this mode"),
                       model=cell.model, prompt_len=cell.prompt_len, batch=cell.batch, gen_len=cell.gen_len)
        else:
            path = Path(plans_dir) / name
            out = tmp / "ref-hf" if mode == "hf_resident" and "hf_offloaded" in wanted else None
            if quant_ref and mode == "plan":
                out = tmp / "ref-plan"
            rec.update(plan_sha256=sha256_of(path), **run_one(path, load_plan(path), teacher=teachers.get(mode),
                                                              reference_out=out))
            if out is not None and rec["status"] == "ok":
                if mode == "plan":
                    teachers.update({m: out for m in QUANT_MODES})
                    ref_message = (f"{ref_message or 'all-resident reference not run'}; quantized modes' "
                                   "teacher_forced logits against the plan mode's run")
                else:
                    teachers["hf_offloaded"] = out
            if mode in STATIC_MODES and rec["status"] == "ok":
                if ref_tokens is not None:
                    rec["tokens_equal_resident"] = rec["tokens"] == ref_tokens
                else:
                    rec["reference_message"] = ref_message or "all-resident reference not run"
        records.append(rec)
        if progress:
            progress(f"{cell.cell} {mode}: {rec['status']}"
                     + (f" ({rec['message']})" if rec.get("message") else ""))
    return records


def bench_file(records: list[dict[str, Any]], *, plans_dir: str | Path, smoke: bool, argv: list[str]) -> Any:
    """The records as a validated ``InferBenchFile``."""
    import torch

    from kernels.microbench import provenance
    from validate.records import InferBenchFile

    device = torch.device("cpu") if smoke or not torch.cuda.is_available() else torch.device("cuda", 0)
    prov = provenance(argv, device)
    try:
        import transformers

        prov["transformers"] = transformers.__version__
    except ImportError:
        pass
    prov.pop("pytorch_cuda_alloc_conf", None)  # each record names its own allocator
    return InferBenchFile.model_validate({"provenance": prov, "plans_dir": str(plans_dir), "records": records})


def _fmt(value: Any, how: Any) -> str:
    return "-" if value is None else how(value)


def table_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of the printed table: measured next to predicted."""
    rows = []
    for r in records:
        pred = r.get("prediction") or {}
        tiers = pred.get("tier_peak_bytes") or {}
        eq = r.get("tokens_equal_resident")
        rows.append([
            r["cell"], r["mode"], r["status"],
            _fmt(r.get("prefill_time_s"), format_seconds), _fmt(pred.get("prefill_time_s"), format_seconds),
            _fmt(r.get("decode_step_time_s"), format_seconds), _fmt(pred.get("decode_step_time_s"), format_seconds),
            _fmt(r.get("tokens_per_s"), lambda v: f"{v:.1f}"),
            _fmt(r.get("peak_allocated_bytes"), format_bytes), _fmt(pred.get("peak_hbm_bytes"), format_bytes),
            _fmt(r.get("host_pinned_bytes"), format_bytes), _fmt(tiers.get("host"), format_bytes),
            "-" if eq is None else ("yes" if eq else "NO"),
        ])
    return rows


TABLE_COLUMNS = ("cell", "mode", "status", "prefill", "pred", "decode step", "pred", "tok/s",
                 "HBM peak", "pred", "pinned", "pred", "tokens = resident")


def print_table(records: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False, width=None if Console().is_terminal else 160)
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(TABLE_COLUMNS):
        table.add_column(col, justify="left" if i < 3 else "right")
    for row in table_rows(records):
        table.add_row(*row)
    console.print(table)
    for r in records:
        if r["status"] != "ok":
            console.print(f"{r['cell']} {r['mode']}: {r['status']}: {r.get('message')}")


def validate_plans(paths: list[str], *, smoke: bool, out: str | None, as_json: bool, argv: list[str]) -> int:
    """``tierplan validate plan`` for inference plans: each run once (on the GPU in a child
    process under its engine's allocator, ``smoke``: here on the CPU); exit 0 when every plan
    ran."""
    from hwmodels.outputs import OutputSet

    records = []
    for path in paths:
        plan = load_plan(path)
        rec = {"cell": Path(path).stem, "mode": "run", "plan": Path(path).name,
               "plan_sha256": sha256_of(path), **describe(plan)}
        if smoke:
            rec.update(measure(plan, smoke=True))
        else:
            rec.update(_in_child(path, env=_env_for(_engine(plan), None)))
        records.append(rec)
    data = bench_file(records, plans_dir=str(Path(paths[0]).parent), smoke=smoke, argv=argv)
    if out:
        with OutputSet() as outputs:
            outputs.write_text(out, data.to_json(sort_keys=True), field="--out")
    if as_json:
        print(json.dumps(data.to_dict(), sort_keys=True))
    else:
        print_table([r.model_dump(mode="json") for r in data.records],
                    "inference plans run: measured vs predicted")
        if out:
            print(f"wrote {out}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from validate.bench import _Parser  # its errors are one-line UserInputErrors

    ap = _Parser(prog=prog or "validate/infer_bench.py", description=__doc__.splitlines()[0])
    ap.add_argument("--plans", help="plans directory with index.json (tierplan bench make-plans --mode infer)")
    ap.add_argument("--out", help="measurement file to write (e.g. validate/measurements/h200/infer-bench-h200-DATE.json)")
    ap.add_argument("--cells", default="", help="comma list of cells to run (default: all)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of modes (default: {','.join(MODES)})")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the all-resident static run whose tokens the static modes are checked against")
    ap.add_argument("--hf-allocator", default=None, metavar="CONF",
                    help="PYTORCH_CUDA_ALLOC_CONF for the HF modes (default: the environment's)")
    ap.add_argument("--smoke", action="store_true", help="tiny copies of the models on the CPU, in this process")
    ap.add_argument("--json", action="store_true", help="print the measurement file's JSON")
    ap.add_argument("--report", nargs="+", metavar="FILE",
                    help="instead of running: measurement files re-predicted with today's replay, a table of "
                         "measured / predicted prefill, decode step, HBM peak and pinned bytes (--plans: the plans "
                         "directory, default each file's own)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one plan, in a child process
    ap.add_argument("--case-out", help=argparse.SUPPRESS)
    ap.add_argument("--case-teacher", help=argparse.SUPPRESS)  # a reference's tokens and logits (directory)
    ap.add_argument("--case-reference-out", help=argparse.SUPPRESS)  # save this run's there
    ap.add_argument("--case-check-eager", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None, *, prog: str | None = None, command: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(prog).parse_args(args_list)
        if args.case:
            teacher = load_reference(args.case_teacher) if args.case_teacher else None
            rec = measure(load_plan(args.case), smoke=False, teacher=teacher,
                          reference_out=args.case_reference_out, check_eager=args.case_check_eager)
            Path(args.case_out).write_text(json.dumps(rec))
            return 0
        if args.report:
            from validate.infer_plans import comparison_rows, format_comparison

            rows = comparison_rows(args.report, plans_dir=args.plans)
            if args.json:
                print(json.dumps(rows, sort_keys=True))
            else:
                print("\n".join(format_comparison(rows)))
            return 0
        if not args.plans or not args.out:
            raise UserInputError("--plans and --out: both are required")
        modes = tuple(m for m in args.modes.split(",") if m)
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise UserInputError(f"--modes: unknown {bad[0]!r} (modes: {', '.join(MODES)})")
        cells = tuple(c for c in args.cells.split(",") if c)
        from hwmodels.outputs import OutputSet

        with OutputSet() as outputs:
            tmp = outputs.reserve(args.out, field="--out", suffixes=(".json",))
            records = run_bench(args.plans, cells=cells, modes=modes, reference=not args.no_reference,
                                smoke=args.smoke, hf_allocator=args.hf_allocator,
                                progress=lambda line: print(line, file=sys.stderr, flush=True))
            data = bench_file(records, plans_dir=args.plans, smoke=args.smoke,
                              argv=command or [sys.argv[0], *args_list])
            outputs.write(tmp, lambda p: p.write_text(data.to_json(sort_keys=True)))
    except UserInputError as err:
        print(err, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data.to_dict(), sort_keys=True))
    else:
        print_table([r.model_dump(mode="json") for r in data.records], f"inference bench: {args.plans}")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
