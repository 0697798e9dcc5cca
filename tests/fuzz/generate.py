"""Seeded generator of hostile command lines and input files for every `tierplan` subcommand.

Models: a fuzz case is an argv list plus the files it names (written into the case's own empty
folder, which is the working directory of the run), whether the input is invalid by
construction (``invalid=True``: it must be refused with exit 2; ``None``: a mutant that may or
may not be valid, where only crashes, hangs, partial outputs and bad error lines count), the
strings of which one must appear in the error line (the field, flag or file), and a time limit.
Every case starts from a valid base input of one channel (a flag, a config.json, a scenario in
YAML or JSON, a node file, a plan file, a layout CSV, a memory-snapshot pickle, a calibration or
measurement file, an output path) and applies one mutation drawn from that channel's kinds:
numbers without limits, files that are not what they claim, wrong types inside valid JSON,
checks that do not check, unwritable outputs and pickles / YAML tags that would run code.
Assumes: ``tierplan plan --out`` on a 2-layer GPT-2 makes the base plan (``base_plan``), so the
plan channel always mutates a plan of the current schema.
Ignores: valid inputs that are slow (the time-limit work keeps plan/layout within their limits).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

MARKER = "PAYLOAD_RAN"
"""A file name a malicious input would create; the runner checks that it never appears."""

BASE_SECONDS = 5.0
"""Time a case may take besides its own --time-limit (the runner kills it 10 s later)."""

RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
"""chmod 000 does not stop root, so an unreadable-file case is invalid only for other users."""


@dataclass(frozen=True)
class File:
    """One thing to put into the case folder before the run."""

    path: str  # relative to the case folder
    kind: str = "bytes"  # bytes | dir | fifo | symlink | sparse | chmod000
    data: bytes = b""
    target: str = ""  # symlink target
    size: int = 0  # sparse file length


@dataclass(frozen=True)
class Case:
    """One run of ``tierplan.cli.main(argv)`` in its own folder."""

    ident: str
    command: str  # "plan", "hw transfer", ... (for the figures)
    channel: str  # flags, config, scenario, node, plan, csv, snapshot, calibration, measurements, output
    kind: str  # the mutation
    argv: tuple[str, ...]
    files: tuple[File, ...] = ()
    invalid: bool | None = True  # True: must exit 2; None: any outcome but a crash
    needles: tuple[str, ...] = ()  # one of these must appear in the error line
    limit_s: float = BASE_SECONDS
    result_codes: tuple[int, ...] = ()  # non-zero exits that report a result, files complete


RESULT_CODES = {"validate plan": (1,), "validate ops": (1,), "validate steps": (1,), "plan": (3, 4)}
"""Exit codes that are answers, not refusals: a plan run refused by the executor or missing its
tolerance (validate), nothing fits or the time limit (plan)."""


# --- hostile values ------------------------------------------------------------------------------

HUGE_DIGITS = "9" * 20_000
FLAG_INT_BAD = ("1e400", "1e30", str(2**80), "-1", "0", "nan", "inf", HUGE_DIGITS, "", "abc",
                "1.5", "-0", " ", "true", "0x10", "--")
FLAG_FLOAT_BAD = ("nan", "inf", "-inf", "1e400", "-1", "", "abc", HUGE_DIGITS, "1e30", "true")
FLAG_FRAC_BAD = ("nan", "inf", "-0.5", "1.5", "1e400", "", "abc", HUGE_DIGITS, "2**80")
FLAG_SIZE_BAD = ("", "-1GiB", "1e400", "nan", "inf", "0", "2**80", HUGE_DIGITS + "GiB", "12XB",
                 "1e30GiB", "abc")


class Raw:
    """JSON text written as is (``1e400``, ``NaN``, 20,000 digits), which ``json.dumps`` cannot make."""

    def __init__(self, text: str) -> None:
        self.text = text


POSITIVE_INT_BAD: tuple[Any, ...] = (
    -1, 0, 2**80, 1e30, Raw("1e400"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw(HUGE_DIGITS),
    "", True, False, [4], {"a": 1}, "abc", 1.5, None, "1e400", -(2**80))
POSITIVE_NUMBER_BAD: tuple[Any, ...] = (
    -1, 0, -1e-9, Raw("1e400"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"),
    Raw(HUGE_DIGITS), "", True, [1.0], {"a": 1}, "abc", None)
STRING_BAD: tuple[Any, ...] = ([], ["a"], {"a": 1}, 7, 1.5, True, None)
GENERIC: tuple[Any, ...] = (*POSITIVE_INT_BAD, *STRING_BAD, "x" * 100_000, [[[[[]]]]],
                            Raw("-0"), Raw("1e-400"), "60GiB", "128K", "yes")


def dumps(value: Any) -> str:
    """JSON text of ``value`` with ``Raw`` pieces spliced in."""
    raws: dict[str, str] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, Raw):
            key = f"@@raw{len(raws)}@@"
            raws[key] = v.text
            return key
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(value), indent=1)
    for key, raw in raws.items():
        text = text.replace(f'"{key}"', raw)
    return text


def yaml_scalar(value: Any) -> str:
    """A YAML spelling of a hostile value (flow style; YAML's own nan/inf spellings)."""
    if isinstance(value, Raw):
        return {"NaN": ".nan", "Infinity": ".inf", "-Infinity": "-.inf"}.get(value.text, value.text)
    return json.dumps(value)


def to_yaml(data: Any, indent: int = 0) -> str:
    """Block YAML for the nested dicts of a base input (leaves in flow style)."""
    pad = " " * indent
    lines = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.append(to_yaml(value, indent + 2))
        else:
            lines.append(f"{pad}{key}: {yaml_scalar(value)}")
    return "\n".join(lines)


# --- valid base inputs ---------------------------------------------------------------------------

SMALL = ("--layers", "2", "--seq-len", "1K")

HF_CONFIG: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}
HF_CONSTRAINED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "vocab_size")

SCENARIO: dict[str, Any] = {
    "name": "fuzz", "model": "gpt2",
    "job": {"mode": "train", "seq_len": 1024, "micro_batch": 1, "optimizer": "adamw",
            "parallelism": {"tp": 1, "cp": 1, "dp": 1}},
    "hardware": "1xH200"}
SCENARIO_INTS = (("job", "seq_len"), ("job", "micro_batch"), ("job", "parallelism", "tp"),
                 ("job", "parallelism", "cp"), ("job", "parallelism", "dp"))
SCENARIO_STRINGS = (("model",), ("hardware",), ("job", "mode"), ("job", "optimizer"))
SCENARIO_REQUIRED = (("model",), ("job",), ("hardware",), ("job", "mode"))
INFER_SCENARIO: dict[str, Any] = {
    "name": "fuzz-infer", "model": "gpt2",
    "job": {"mode": "infer", "prompt_len": 512, "gen_len": 4, "batch": 1, "prefill_chunk_len": 256,
            "engine": "hf"},
    "hardware": "1xH200"}
INFER_INTS = (("job", "prompt_len"), ("job", "batch"), ("job", "prefill_chunk_len"))
INFER_STRINGS = (("model",), ("job", "mode"), ("job", "engine"), ("job", "kv_quant"))
INFER_NULLABLE = (("job", "prefill_chunk_len"),)  # None: the whole prompt in one pass
INFER_COMMANDS = ("estimate", "layout")  # simulate and plan take training steps only
INFER_NEW_FIELDS = (("job", "prefill_chunk_len"), ("job", "engine"))

NODE: dict[str, Any] = {
    "schema_version": 1, "name": "fuzz-node", "num_gpus": 1, "gpu": "H200-SXM",
    "host_memory": "h200-vm-host", "links": {"pcie": "pcie-gen5-x16"},
    "topology": [{"a": "gpu0", "b": "cpu0", "link": "pcie"}], "profile": "H200-measured"}
NODE_STRINGS = (("gpu",), ("host_memory",), ("links", "pcie"), ("profile",))
NODE_REQUIRED = (("num_gpus",), ("gpu",), ("host_memory",))

CSV = "id,lower,upper,size\na,0,2,512\nb,1,3,512\nc,2,4,1024\n"

CALIBRATION_OPS = ("gemm", "hbm_copy", "copy", "rmsnorm")


def snapshot_data() -> dict[str, Any]:
    """A plain-data memory snapshot as ``torch.cuda.memory._dump_snapshot`` writes it."""
    trace = []
    for n, (addr, size) in enumerate(((0, 512), (1024, 2048), (4096, 512))):
        trace.append({"action": "alloc", "addr": addr, "size": size, "stream": 0,
                      "time_us": 2 * n, "frames": []})
    for n, (addr, size) in enumerate(((0, 512), (1024, 2048), (4096, 512))):
        trace.append({"action": "free_completed", "addr": addr, "size": size, "stream": 0,
                      "time_us": 10 + n, "frames": []})
    return {"segments": [{"address": 0, "total_size": 2 * 1024**2, "stream": 0, "blocks": []}],
            "device_traces": [trace]}


@dataclass
class Bases:
    """The valid inputs every mutation starts from (read once per run)."""

    repo: str
    plan: dict[str, Any]
    calibration: dict[str, Any]
    steps: dict[str, Any]
    bench_measured: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)


def load_bases(repo: str, plan_path: str) -> Bases:
    """Base inputs from committed files (a few records each, so a valid case runs in ~0.1 s)."""
    def read(rel: str) -> dict[str, Any]:
        with open(os.path.join(repo, rel), encoding="utf-8") as fh:
            return json.load(fh)

    micro = read("validate/measurements/h200/microbench-h200-2026-11-28.json")
    chosen, seen = [], set()
    for rec in micro["records"]:
        if rec.get("op") in CALIBRATION_OPS and seen.add((rec["op"], len(seen) // 8)) is None:
            if sum(r["op"] == rec["op"] for r in chosen) < 3:
                chosen.append(rec)
    steps = read("validate/measurements/h200/steps-h200-2026-11-28.json")
    steps = {**steps, "records": steps["records"][:2]}
    bench = read("validate/measurements/h200/bench-h200-2026-11-28-r2-64k-48g-memo.json")
    with open(plan_path, encoding="utf-8") as fh:
        plan = json.load(fh)
    return Bases(repo=repo, plan=plan, calibration={**micro, "records": chosen}, steps=steps,
                 bench_measured=bench)


# --- tree mutations ------------------------------------------------------------------------------

def leaves(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a leaf (and to each list and dict) of a JSON document."""
    out: list[tuple] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out.append(prefix + (key,))
            out += leaves(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data[:4]):  # a few entries of long lists
            out.append(prefix + (i,))
            out += leaves(value, prefix + (i,))
    return out


def set_path(data: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(data)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def del_path(data: Any, path: tuple) -> Any:
    doc = copy.deepcopy(data)
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


def path_needles(path: tuple) -> tuple[str, ...]:
    """What an error line about ``path`` names: its last key (or the key above a list index)."""
    keys = [str(p) for p in path if not isinstance(p, int)]
    return tuple(keys[-1:]) if keys else ()


def deep_json(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def deep_yaml(depth: int) -> bytes:
    return ("".join(f"{' ' * i}k{i}:\n" for i in range(depth)) + " " * depth + "v: 1\n").encode()


YAML_BOMB = (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
             b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
             b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
             b"g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nmodel: *g\n")


def yaml_payload(marker: str) -> list[bytes]:
    """YAML that would run a command under an unsafe loader (never under ours)."""
    return [
        f"model: !!python/object/apply:os.system ['touch {marker}']\n".encode(),
        f"model: gpt2\njob: !!python/object/apply:subprocess.call [[touch, {marker}]]\n".encode(),
        f"!!python/object/new:os.system ['touch {marker}']\n".encode(),
        f"model: !!python/name:os.system\nhardware: !!python/object/apply:os.system ['touch {marker}']\n"
        .encode(),
    ]


class _Payload:
    """A pickle that calls os.system when loaded by a general unpickler."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_payloads(marker: str) -> list[bytes]:
    import builtins

    class _Eval:
        def __reduce__(self):
            return (builtins.exec, (f"open({marker!r}, 'w').close()",))

    inner = {"segments": [], "device_traces": [[_Payload(marker)]]}
    return [pickle.dumps(_Payload(marker)), pickle.dumps(_Eval()), pickle.dumps(inner),
            pickle.dumps(inner, protocol=0)]


def file_not_what_it_claims(rng: random.Random, name: str, valid: bytes) -> tuple[list[File], bool | None]:
    """The input ``name`` replaced by something that is not a file of its kind."""
    choice = rng.choice(("garbage", "directory", "unreadable", "symlink_loop", "fifo", "huge",
                         "empty", "missing", "truncated", "nul_bytes", "bom", "dangling"))
    if choice == "garbage":
        return [File(name, data=bytes(rng.randrange(256) for _ in range(rng.choice((1, 64, 4096)))))], True
    if choice == "directory":
        return [File(name, kind="dir")], True
    if choice == "unreadable":
        return [File(name, kind="chmod000", data=valid)], None if RUNNING_AS_ROOT else True
    if choice == "symlink_loop":
        return [File(name, kind="symlink", target=os.path.basename(name))], True
    if choice == "dangling":
        return [File(name, kind="symlink", target="nowhere/at/all")], True
    if choice == "fifo":
        return [File(name, kind="fifo")], True
    if choice == "huge":
        return [File(name, kind="sparse", size=(5 << 30) if name.endswith(".pickle") else 300 << 20)], True
    if choice == "empty":
        return [File(name, data=b"")], True
    if choice == "missing":
        return [], True
    if choice == "truncated":
        return [File(name, data=valid[: max(1, len(valid) // 2)])], True
    if choice == "nul_bytes":
        return [File(name, data=valid.replace(b",", b"\x00,", 1) if b"," in valid else b"\x00" + valid)], True
    return [File(name, data=b"\xef\xbb\xbf" + valid)], None  # a UTF-8 BOM: refused or read


# --- per-channel generators -----------------------------------------------------------------------

@dataclass
class Draft:
    command: str
    kind: str
    argv: list[str]
    files: list[File] = field(default_factory=list)
    invalid: bool | None = True
    needles: tuple[str, ...] = ()
    limit_s: float = BASE_SECONDS


FlagSpec = tuple[str, tuple[str, ...]]  # (flag, bad values)

FLAG_TARGETS: dict[str, tuple[list[str], list[FlagSpec]]] = {
    "estimate": (["estimate", "--model", "gpt2", *SMALL, "--json"],
                 [("--seq-len", FLAG_INT_BAD), ("--layers", FLAG_INT_BAD), ("--batch", FLAG_INT_BAD),
                  ("--tp", FLAG_INT_BAD), ("--cp", FLAG_INT_BAD), ("--dp", FLAG_INT_BAD),
                  ("--zero", tuple(v for v in FLAG_INT_BAD if v not in ("0", "-0")) + ("4",))]),
    "estimate infer": (["estimate", "--model", "gpt2", "--mode", "infer", "--layers", "2", "--json"],
                       [("--prompt-len", FLAG_INT_BAD), ("--gen-len", FLAG_INT_BAD),
                        ("--batch", FLAG_INT_BAD)]),
    "simulate": (["simulate", "--model", "gpt2", *SMALL, "--json"],
                 [("--seq-len", FLAG_INT_BAD), ("--gpus", FLAG_INT_BAD), ("--offload", FLAG_FRAC_BAD),
                  ("--lookahead", tuple(v for v in FLAG_INT_BAD if v not in ("0", "-0"))),
                  ("--batch", FLAG_INT_BAD), ("--tp", FLAG_INT_BAD)]),
    "plan": (["plan", "--model", "gpt2", *SMALL, "--hardware", "1xH200", "--time-limit", "2", "--json"],
             [("--gpu-budget", FLAG_SIZE_BAD), ("--host-budget", FLAG_SIZE_BAD),
              ("--time-limit", FLAG_FLOAT_BAD + ("0", "1e9")), ("--layers", FLAG_INT_BAD),
              ("--seq-len", FLAG_INT_BAD), ("--dp", FLAG_INT_BAD)]),
    "layout": (["layout", "--model", "gpt2", *SMALL, "--no-mip", "--time-limit", "2", "--out",
                "out/l.json", "--no-png", "--json"],
               [("--time-limit", FLAG_FLOAT_BAD + ("0",)), ("--seq-len", FLAG_INT_BAD),
                ("--batch", FLAG_INT_BAD), ("--layers", FLAG_INT_BAD)]),
    "kernels cost gemm": (["kernels", "cost", "gemm", "--m", "1K", "--n", "1K", "--k", "1K",
                           "--hardware", "1xH200", "--json"],
                          [("--m", FLAG_INT_BAD), ("--n", FLAG_INT_BAD), ("--k", FLAG_INT_BAD),
                           ("--batch", FLAG_INT_BAD)]),
    "kernels cost attention": (["kernels", "cost", "attention", "--seq-len", "1K", "--num-heads", "8",
                                "--head-dim", "64", "--pass", "fwd", "--hardware", "1xH200", "--json"],
                               [("--seq-len", FLAG_INT_BAD), ("--num-heads", FLAG_INT_BAD),
                                ("--head-dim", FLAG_INT_BAD), ("--batch", FLAG_INT_BAD),
                                ("--seq-len-kv", FLAG_INT_BAD), ("--num-kv-heads", FLAG_INT_BAD),
                                ("--sram", FLAG_SIZE_BAD)]),
    "kernels tiling": (["kernels", "tiling", "--seq-len", "4K", "--head-dim", "64", "--json"],
                       [("--seq-len", FLAG_INT_BAD), ("--head-dim", FLAG_INT_BAD),
                        ("--sram", FLAG_SIZE_BAD)]),
    "hw transfer": (["hw", "transfer", "--bytes", "1GiB", "--direction", "h2d", "--hardware", "1xH200",
                     "--json"],
                    [("--bytes", FLAG_SIZE_BAD), ("--gpu-index", FLAG_INT_BAD[:4] + ("abc", "", "nan"))]),
    "validate ops": (["validate", "ops", "--measurements", "in/micro.json", "--json"],
                     [("--tolerance", FLAG_FLOAT_BAD)]),
    "validate steps": (["validate", "steps", "--measurements", "in/steps.json", "--probe", "--json"],
                       [("--tolerance", FLAG_FLOAT_BAD)]),
    "validate plan": (["validate", "plan", "in/plan.json", "--smoke", "--out", "out/v", "--json"],
                      [("--repeats", FLAG_INT_BAD), ("--check-grads", FLAG_INT_BAD),
                       ("--warmup", tuple(v for v in FLAG_INT_BAD if v not in ("0", "-0")))]),
    "bench make-plans": (["bench", "make-plans", "--out", "out/b", "--lengths", "16K", "--budgets",
                          "full"],
                         [("--time-limit", FLAG_FLOAT_BAD + ("0",)),
                          ("--lengths", ("", "0", "-1K", "abc", "1e400", HUGE_DIGITS, ",")),
                          ("--budgets", ("", "0GiB", "-1GiB", "abc", "nan", HUGE_DIGITS + "GiB"))]),
    "bench run": (["bench", "run", "--plans", "in/plans", "--out", "out/b", "--dry-run"],
                  [("--repeats", FLAG_INT_BAD), ("--warmup", tuple(v for v in FLAG_INT_BAD
                                                                    if v not in ("0", "-0"))),
                   ("--max-step-s", FLAG_FLOAT_BAD + ("0",))]),
}


def gen_flags(rng: random.Random, bases: Bases, marker: str) -> Draft:
    command = rng.choice(sorted(FLAG_TARGETS))
    argv, specs = FLAG_TARGETS[command]
    flag, bad = rng.choice(specs)
    value = rng.choice(bad)
    files = _support_files(command, bases)
    out = _replace_flag(list(argv), flag, value)
    if rng.random() < 0.2:  # the same flag given as --flag=value
        out = [a for a in out]
        i = out.index(flag)
        out[i:i + 2] = [f"{flag}={value}"]
    return Draft(command, f"flag {flag}={value[:12]!r}", out, files,
                 needles=(flag, flag.lstrip("-").replace("-", "_")),
                 limit_s=BASE_SECONDS + _time_limit(out))


def _replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        i = argv.index(flag)
        return argv[:i + 1] + [value] + argv[i + 2:]
    return argv + [flag, value]


def _time_limit(argv: list[str]) -> float:
    for i, a in enumerate(argv[:-1]):
        if a == "--time-limit":
            try:
                v = float(argv[i + 1])
            except ValueError:
                return 0.0
            return v if 0 < v < 60 else 0.0
    return 0.0


def _support_files(command: str, bases: Bases) -> list[File]:
    """The valid files a flag-channel base argv names."""
    if command == "validate ops":
        return [File("in/micro.json", data=dumps(bases.calibration).encode())]
    if command == "validate steps":
        return [File("in/steps.json", data=dumps(bases.steps).encode())]
    if command == "validate plan":
        return [File("in/plan.json", data=dumps(bases.plan).encode())]
    if command == "bench run":
        return [File("in/plans", kind="dir")]
    return []


MODEL_COMMANDS: dict[str, list[str]] = {
    "estimate": ["estimate", "--json"],
    "simulate": ["simulate", "--json"],
    "plan": ["plan", "--hardware", "1xH200", "--time-limit", "2", "--json"],
    "layout": ["layout", "--no-mip", "--time-limit", "2", "--out", "out/l.json", "--no-png", "--json"],
}


def _tree_mutation(rng: random.Random, doc: dict[str, Any], *, ints: tuple = (), strings: tuple = (),
                   required: tuple = (), numbers: tuple = (), nullable: tuple = (),
                   ) -> tuple[Any, str, bool | None, tuple]:
    """One mutation of a JSON document: (new doc, kind, invalid, needles)."""
    choice = rng.choice(("int", "int", "string", "number", "missing", "extra", "leaf", "leaf",
                         "top_list", "top_scalar"))
    if choice == "int" and ints:
        path = rng.choice(ints)
        value = rng.choice(tuple(v for v in POSITIVE_INT_BAD if v is not None or path not in nullable))
        return set_path(doc, path, value), f"int {'.'.join(map(str, path))}", True, path_needles(path)
    if choice == "number" and numbers:
        path = rng.choice(numbers)
        value = rng.choice(POSITIVE_NUMBER_BAD)
        return set_path(doc, path, value), f"number {'.'.join(map(str, path))}", True, path_needles(path)
    if choice == "string" and strings:
        path = rng.choice(strings)
        value = rng.choice(tuple(v for v in STRING_BAD if v is not None or path not in nullable)
                           + ("no-such-thing", ""))
        return set_path(doc, path, value), f"string {'.'.join(map(str, path))}", True, path_needles(path)
    if choice == "missing" and required:
        path = rng.choice(required)
        return del_path(doc, path), f"missing {'.'.join(map(str, path))}", True, path_needles(path)
    if choice == "extra":
        parents = [p for p in ((),) + tuple(leaves(doc)) if isinstance(_get(doc, p), dict)]
        parent = rng.choice(parents)
        key = rng.choice(("unexpected_key", "seq_lenn", "__class__", "Tp"))
        return (set_path(doc, parent + (key,), 1) if parent else {**doc, key: 1}), \
            f"extra {'.'.join(map(str, parent + (key,)))}", None, (key,)
    if choice == "top_list":
        return [doc], "top-level list", True, ()
    if choice == "top_scalar":
        return rng.choice((1, "x", None, 1.5)), "top-level scalar", True, ()
    path = rng.choice(leaves(doc))
    value = rng.choice(GENERIC)
    return set_path(doc, path, value), f"leaf {'.'.join(map(str, path))}", None, path_needles(path)


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def gen_config(rng: random.Random, bases: Bases, marker: str) -> Draft:
    command = rng.choice(sorted(MODEL_COMMANDS))
    argv = MODEL_COMMANDS[command] + ["--model", "in/config.json", "--seq-len", "1K"]
    valid = dumps(HF_CONFIG).encode()
    if rng.random() < 0.3:
        files, invalid = file_not_what_it_claims(rng, "in/config.json", valid)
        return Draft(command, "config file", argv, files, invalid, ("in/config.json", "--model"))
    doc, kind, invalid, needles = _tree_mutation(rng, HF_CONFIG, ints=tuple((k,) for k in HF_CONSTRAINED),
                                                 required=(("model_type",), ("hidden_size",)),
                                                 strings=(("model_type",),))
    if kind.startswith("extra"):
        invalid = None
    return Draft(command, f"config {kind}", argv, [File("in/config.json", data=dumps(doc).encode())],
                 invalid, needles + ("in/config.json",))


def gen_scenario(rng: random.Random, bases: Bases, marker: str) -> Draft:
    command = rng.choice(sorted(MODEL_COMMANDS))
    fmt = rng.choice(("yaml", "json"))
    name = f"in/scenario.{fmt}"
    argv = MODEL_COMMANDS[command] + [name]
    if command in ("plan", "layout"):
        argv += ["--layers", "2"]
    valid = (to_yaml(SCENARIO) + "\n").encode() if fmt == "yaml" else dumps(SCENARIO).encode()
    r = rng.random()
    if r < 0.25:
        files, invalid = file_not_what_it_claims(rng, name, valid)
        return Draft(command, f"scenario {fmt} file", argv, files, invalid, (name,))
    if fmt == "yaml" and r < 0.5:
        choice = rng.choice(("deep", "bomb", "payload", "yes_no", "nan", "tag", "dup_key", "multi_doc",
                             "anchors_ok"))
        data, invalid, needles = {
            "deep": (deep_yaml(3000), True, ("nested",)),
            "bomb": (YAML_BOMB, True, ("alias",)),
            "yes_no": (valid.replace(b"optimizer: \"adamw\"", b"optimizer: yes").replace(
                b"micro_batch: 1", b"micro_batch: yes"), True, ("micro_batch", "optimizer")),
            "nan": (valid.replace(b"seq_len: 1024", b"seq_len: .nan"), True, ("seq_len",)),
            "tag": (valid.replace(b"seq_len: 1024", b"seq_len: !!binary aGVsbG8="), True, ("seq_len",)),
            "dup_key": (valid + b"model: gpt2\nmodel: [1]\n", None, ("model",)),
            "multi_doc": (valid + b"---\nmodel: gpt2\n", True, (name,)),
            "anchors_ok": (valid.replace(b"tp: 1", b"tp: &one 1").replace(b"cp: 1", b"cp: *one"), None, ()),
            "payload": (rng.choice(yaml_payload(marker)), True, (name,)),
        }[choice]
        return Draft(command, f"scenario yaml {choice}", argv, [File(name, data=data)], invalid,
                     needles + (name,))
    if fmt == "json" and r < 0.35:
        data = deep_json(rng.choice((100, 100_000)))
        return Draft(command, "scenario json deep", argv, [File(name, data=data)], True, (name,))
    if command in INFER_COMMANDS and rng.random() < 0.5:  # an inference job: chunked prefill, decode engine
        if rng.random() < 0.5:  # the job's newest fields, which a tree mutation rarely picks
            path = rng.choice(INFER_NEW_FIELDS)
            bad = (tuple(v for v in POSITIVE_INT_BAD if v is not None) if path == ("job", "prefill_chunk_len")
                   else STRING_BAD[:-1] + ("no-such-thing", "", "HF", "dynamic"))
            doc, kind, invalid, needles = (set_path(INFER_SCENARIO, path, rng.choice(bad)), ".".join(path), True,
                                           path_needles(path))
        else:
            doc, kind, invalid, needles = _tree_mutation(rng, INFER_SCENARIO, ints=INFER_INTS,
                                                         strings=INFER_STRINGS, required=SCENARIO_REQUIRED,
                                                         nullable=INFER_NULLABLE)
        kind = f"infer {kind}"
    else:
        doc, kind, invalid, needles = _tree_mutation(rng, SCENARIO, ints=SCENARIO_INTS, strings=SCENARIO_STRINGS,
                                                     required=SCENARIO_REQUIRED)
    if kind.startswith("extra"):
        invalid = True  # scenario models forbid extra keys
    if not isinstance(doc, dict):
        text = dumps(doc)
    elif fmt == "yaml":
        text = to_yaml(doc) + "\n"
    else:
        text = dumps(doc)
    return Draft(command, f"scenario {fmt} {kind}", argv, [File(name, data=text.encode())], invalid,
                 needles + (name,))


NODE_COMMANDS: dict[str, list[str]] = {
    "estimate": ["estimate", "--model", "gpt2", *SMALL, "--json"],
    "simulate": ["simulate", "--model", "gpt2", *SMALL, "--json"],
    "plan": ["plan", "--model", "gpt2", *SMALL, "--time-limit", "2", "--json"],
    "layout": ["layout", "--model", "gpt2", *SMALL, "--no-mip", "--time-limit", "2", "--out",
               "out/l.json", "--no-png", "--json"],
    "kernels cost gemm": ["kernels", "cost", "gemm", "--m", "1K", "--n", "1K", "--k", "1K", "--json"],
    "hw show": ["hw", "show", "--json"],
    "hw transfer": ["hw", "transfer", "--bytes", "1GiB", "--direction", "h2d", "--json"],
}


def gen_node(rng: random.Random, bases: Bases, marker: str) -> Draft:
    command = rng.choice(sorted(NODE_COMMANDS))
    name = "in/node.json"
    argv = NODE_COMMANDS[command] + ([name] if command == "hw show" else ["--hardware", name])
    valid = dumps(NODE).encode()
    if rng.random() < 0.3:
        files, invalid = file_not_what_it_claims(rng, name, valid)
        return Draft(command, "node file", argv, files, invalid, (name,))
    doc, kind, invalid, needles = _tree_mutation(rng, NODE, ints=(("num_gpus",),), strings=NODE_STRINGS,
                                                 required=NODE_REQUIRED, nullable=(("profile",),))
    if kind.startswith("extra"):
        invalid = True
    return Draft(command, f"node {kind}", argv, [File(name, data=dumps(doc).encode())], invalid,
                 needles + (name,))


PLAN_COMMANDS: dict[str, list[str]] = {
    "simulate": ["simulate", "--json", "--plan"],
    "layout": ["layout", "--no-mip", "--time-limit", "2", "--out", "out/l.json", "--no-png", "--json",
               "--plan"],
    "validate plan": ["validate", "plan", "--smoke", "--out", "out/v", "--json"],
}


def gen_plan(rng: random.Random, bases: Bases, marker: str) -> Draft:
    command = rng.choice(sorted(PLAN_COMMANDS))
    name = "in/plan.json"
    argv = PLAN_COMMANDS[command] + [name]
    plan = bases.plan
    valid = dumps(plan).encode()
    r = rng.random()
    if r < 0.25:
        files, invalid = file_not_what_it_claims(rng, name, valid)
        return Draft(command, "plan file", argv, files, invalid, (name,))
    if r < 0.45:
        # a hand edit of the embedded model, job, node or budgets, hashes left alone: the plan
        # no longer matches
        scen_paths = [p for p in leaves(plan) if len(p) > 1 and p[0] == "scenario"
                      and p[1] in ("model", "job", "node", "gpu_budget_bytes", "host_budget_bytes")
                      and isinstance(_get(plan, p), int | float) and not isinstance(_get(plan, p), bool)]
        path = rng.choice(scen_paths)
        old = _get(plan, path)
        doc = set_path(plan, path, old * 2 if old else 1)
        return Draft(command, f"plan hash mismatch {'.'.join(map(str, path))}", argv,
                     [File(name, data=dumps(doc).encode())], True, ("hash", "sha256", name))
    if r < 0.55 and command != "validate plan":
        # a plan replayed with another scenario's flags
        extra = rng.choice((["--seq-len", "2K"], ["--model", "gpt2"], ["--hardware", "8xH200"],
                            ["in/scenario.yaml"], ["--layers", "4"]))
        files = [File(name, data=valid), File("in/scenario.yaml", data=(to_yaml(SCENARIO) + "\n").encode())]
        needle = extra[0] if extra[0].startswith("--") else "scenario"
        return Draft(command, f"plan with {extra[0]}", argv + extra, files, True, (needle,))
    if r < 0.65:
        path = ("schema_version",)
        doc = set_path(plan, path, rng.choice((1, 3, 0, "2", None, 2.5, Raw("NaN"))))
        return Draft(command, "plan schema_version", argv, [File(name, data=dumps(doc).encode())], True,
                     ("schema_version", "version"))
    doc, kind, invalid, needles = _tree_mutation(rng, plan)
    if command == "validate plan" and invalid is None:
        invalid = True if not isinstance(doc, dict) else None
    return Draft(command, f"plan {kind}", argv, [File(name, data=dumps(doc).encode())], invalid,
                 needles + (name,))


def gen_csv(rng: random.Random, bases: Bases, marker: str) -> Draft:
    name = "in/trace.csv"
    argv = ["layout", "--trace", name, "--no-mip", "--time-limit", "2", "--out", "out/l.json", "--no-png",
            "--json"]
    valid = CSV.encode()
    if rng.random() < 0.25:
        files, invalid = file_not_what_it_claims(rng, name, valid)
        return Draft("layout", "csv file", argv, files, invalid, (name,))
    rows = [r.split(",") for r in CSV.strip().split("\n")]
    choice = rng.choice(("cell", "cell", "cell", "header", "dup_id", "short_row", "long_row", "inverted",
                         "no_rows", "empty_id", "quote"))
    needles: tuple[str, ...] = (name,)
    invalid: bool | None = True
    if choice == "cell":
        row = rng.randrange(1, len(rows))
        col = rng.randrange(1, 4)
        value = rng.choice(("-1", "nan", "inf", "", "abc", "1.5", str(2**80), HUGE_DIGITS, "1e400", " ",
                            "0x10", "1_0") + (("0",) if col > 1 else ()))
        rows[row][col] = value
        needles = ("lower", "upper", "size")[col - 1:col] + (name,)
    elif choice == "header":
        rows[0] = rng.choice((["id", "lower", "upper"], ["a", "b", "c", "d"], ["ID", "lo", "hi", "sz"]))
    elif choice == "dup_id":
        rows[2][0] = rows[1][0]
        needles = ("id",)
    elif choice == "short_row":
        rows[1] = rows[1][:2]
    elif choice == "long_row":
        rows[1] = rows[1] + ["9"]
    elif choice == "inverted":
        rows[1][1], rows[1][2] = "5", "5"
        needles = ("upper",)
    elif choice == "no_rows":
        rows = rows[:1]
    elif choice == "empty_id":
        rows[1][0] = " "
        needles = ("id",)
    else:
        rows[1][0] = '"a'
        invalid = None
    text = "\n".join(",".join(r) for r in rows) + "\n"
    return Draft("layout", f"csv {choice}", argv, [File(name, data=text.encode())], invalid, needles)


def gen_snapshot(rng: random.Random, bases: Bases, marker: str) -> Draft:
    name = "in/snap.pickle"
    argv = ["layout", "--snapshot", name, "--no-mip", "--time-limit", "2", "--out", "out/l.json",
            "--no-png", "--json"]
    snap = snapshot_data()
    valid = pickle.dumps(snap)
    r = rng.random()
    if r < 0.25:
        files, invalid = file_not_what_it_claims(rng, name, valid)
        return Draft("layout", "snapshot file", argv, files, invalid, (name,))
    if r < 0.45:
        data = rng.choice(pickle_payloads(marker))
        return Draft("layout", "snapshot payload", argv, [File(name, data=data)], True, (name,))
    if r < 0.55:
        depth = rng.choice((1000, 100_000))
        # EMPTY_LIST pushed depth times, then APPENDs fold them into one list nested depth deep
        data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"." if rng.random() < 0.5 else \
            b"(" * 200_000 + b"."
        return Draft("layout", "snapshot deep", argv, [File(name, data=data)], True, (name,))
    entry_paths = [("device_traces", 0, i, k) for i in range(6) for k in ("addr", "size")]
    choice = rng.choice(("int", "int", "action", "entry", "top", "traces"))
    invalid: bool | None = True
    if choice == "int":
        path = rng.choice(entry_paths)
        value = rng.choice((-1, 2**80, 1.5, float("nan"), float("inf"), "abc", None, True, [1], 2**200))
        doc = set_path(snap, path, value)
        needles = (path[-1], name)
    elif choice == "action":
        doc = set_path(snap, ("device_traces", 0, rng.randrange(6), "action"),
                       rng.choice((1, None, "explode", ["alloc"])))
        invalid, needles = None, ("action", name)
    elif choice == "entry":
        doc = set_path(snap, ("device_traces", 0, rng.randrange(6)), rng.choice((1, "x", None, [])))
        needles = ("entry", name)
    elif choice == "top":
        doc = rng.choice(([snap], "x", 1, None, {"segments": []}))
        needles = (name,)
    else:
        doc = set_path(snap, ("device_traces",), rng.choice(({}, "x", [[]], [1], None, [[], []])))
        needles = ("device_traces", name)
    return Draft("layout", f"snapshot {choice}", argv, [File(name, data=pickle.dumps(doc))], invalid, needles)


def _records_draft(rng: random.Random, command: str, argv: list[str], name: str, base: dict[str, Any],
                   numbers: tuple, required: tuple = (("records",),)) -> Draft:
    valid = dumps(base).encode()
    r = rng.random()
    if r < 0.3:
        files, invalid = file_not_what_it_claims(rng, name, valid)
        return Draft(command, "measurement file", argv, files, invalid, (name, "--measurements", "--measured"))
    doc, kind, invalid, needles = _tree_mutation(rng, base, numbers=numbers, required=required)
    if kind.startswith("extra"):
        invalid = None
    if command == "hw calibrate" and kind.startswith("missing"):
        invalid = True
    return Draft(command, f"measurement {kind}", argv, [File(name, data=dumps(doc).encode())], invalid,
                 needles + (name,))


def gen_calibration(rng: random.Random, bases: Bases, marker: str) -> Draft:
    name = "in/micro.json"
    argv = ["hw", "calibrate", "--measurements", name, "--json"]
    numbers = tuple(("records", i, "time_s") for i in range(min(4, len(bases.calibration["records"]))))
    return _records_draft(rng, "hw calibrate", argv, name, bases.calibration, numbers)


def gen_measurements(rng: random.Random, bases: Bases, marker: str) -> Draft:
    which = rng.choice(("validate ops", "validate steps", "bench report"))
    if which == "validate ops":
        name = "in/micro.json"
        argv = ["validate", "ops", "--measurements", name, "--json"]
        numbers = tuple(("records", i, "time_s") for i in range(3))
        return _records_draft(rng, which, argv, name, bases.calibration, numbers)
    if which == "validate steps":
        name = "in/steps.json"
        argv = ["validate", "steps", "--measurements", name, "--probe", "--json"]
        numbers = tuple(("records", i, k) for i in range(2) for k in ("seq_len", "peak_allocated_bytes",
                                                                       "step_time_s"))
        return _records_draft(rng, which, argv, name, bases.steps, numbers)
    name = "in/measured.json"
    argv = ["bench", "report", "--measured", name, "--json"]
    d = _records_draft(rng, which, argv, name, bases.bench_measured, (), required=(("cells",),))
    d.limit_s = BASE_SECONDS + 5.0  # the report re-predicts every cell
    return d


def gen_output(rng: random.Random, bases: Bases, marker: str) -> Draft:
    """Output paths a command cannot write: all of its outputs, or none, must appear."""
    bad = rng.choice(("existing_dir", "dev_full", "no_parent", "bad_ext", "file_as_dir", "same_twice",
                      "dev_null_dir"))
    files = [File("out/keep.txt", data=b"keep\n"), File("out/adir", kind="dir")]
    target = {"existing_dir": "out/adir", "dev_full": "/dev/full", "no_parent": "out/missing/deeper/x.json",
              "bad_ext": "out/picture.xyz", "file_as_dir": "out/keep.txt/x.json", "same_twice": "out/a.png",
              "dev_null_dir": "/dev/null/x.json"}[bad]
    command = rng.choice(("plan", "layout", "simulate trace", "simulate plot", "hw calibrate", "layout png",
                          "validate plan", "bench report"))
    invalid: bool | None = True
    if command == "plan":
        out = "out/keep.txt" if bad in ("file_as_dir", "bad_ext", "same_twice") else target
        argv = ["plan", "--model", "gpt2", *SMALL, "--hardware", "1xH200", "--time-limit", "2", "--out", out,
                "--json"]
        if bad == "no_parent":
            invalid = None  # --out DIR is created with its parents
        if bad == "existing_dir":
            invalid = None  # an existing folder is where plan writes
        flag = "--out"
    elif command in ("layout", "layout png"):
        argv = ["layout", "--trace", "in/trace.csv", "--no-mip", "--time-limit", "2", "--json"]
        files.append(File("in/trace.csv", data=CSV.encode()))
        if command == "layout":
            argv += ["--out", "out/l.xyz" if bad == "bad_ext" else target, "--no-png"]
            if bad in ("bad_ext", "same_twice"):
                invalid = None  # any name suits the layout JSON
            flag = "--out"
        else:
            png = "out/l.json" if bad == "same_twice" else target
            argv += ["--out", "out/l.json", "--png", png]
            flag = "--png"
    elif command.startswith("simulate"):
        flag = "--trace" if command.endswith("trace") else "--plot"
        path = target
        if flag == "--trace" and bad == "bad_ext":
            invalid = None
        argv = ["simulate", "--model", "gpt2", *SMALL, "--json", flag, path]
        if bad == "same_twice":
            argv = ["simulate", "--model", "gpt2", *SMALL, "--json", "--trace", "out/a.png", "--plot", "out/a.png"]
            flag = "--plot"
    elif command == "hw calibrate":
        flag = "--output"
        argv = ["hw", "calibrate", "--measurements", "in/micro.json", "--json", "--output", target]
        files.append(File("in/micro.json", data=dumps(bases.calibration).encode()))
        if bad in ("bad_ext", "same_twice"):
            invalid = None
    elif command == "validate plan":
        flag = "--out"
        out = "out/keep.txt" if bad in ("bad_ext", "same_twice") else target
        argv = ["validate", "plan", "in/plan.json", "--smoke", "--json", "--out", out]
        files.append(File("in/plan.json", data=dumps(bases.plan).encode()))
        if bad in ("existing_dir", "no_parent"):
            invalid = None
    else:
        flag = "--out"
        argv = ["bench", "report", "--measured", "in/measured.json", "--json", "--out", target]
        files.append(File("in/measured.json", data=dumps(bases.bench_measured).encode()))
        if bad in ("bad_ext", "same_twice"):
            invalid = None
    limit = BASE_SECONDS + (5.0 if command == "bench report" else 0.0)
    if command == "validate plan" and invalid is None:
        limit = 120.0  # a CPU smoke run of the plan
    return Draft(command, f"output {bad}", argv, files, invalid, (flag,), limit_s=limit + _time_limit(argv))


CHANNELS: dict[str, Callable[[random.Random, Bases, str], Draft]] = {
    "flags": gen_flags, "config": gen_config, "scenario": gen_scenario, "node": gen_node,
    "plan": gen_plan, "csv": gen_csv, "snapshot": gen_snapshot, "calibration": gen_calibration,
    "measurements": gen_measurements, "output": gen_output,
}
WEIGHTS = {"flags": 3, "scenario": 2, "plan": 2, "output": 2}


def generate(seed: int, count: int, bases: Bases, *, marker_dir: str) -> Iterator[Case]:
    """``count`` cases from ``seed``: channels in turn (weighted), each mutation drawn at random."""
    rng = random.Random(seed)
    order = [c for c, _ in sorted(CHANNELS.items()) for _ in range(WEIGHTS.get(c, 1))]
    for n in range(count):
        channel = order[n % len(order)]
        ident = f"s{seed}-{n:05d}"
        marker = os.path.join(marker_dir, f"{MARKER}-{ident}")
        d = CHANNELS[channel](random.Random(rng.getrandbits(64)), bases, marker)
        yield Case(ident=ident, command=d.command, channel=channel, kind=d.kind, argv=tuple(d.argv),
                   files=(File("out", kind="dir"), *d.files), invalid=d.invalid,
                   needles=tuple(x for x in d.needles if x), limit_s=d.limit_s,
                   result_codes=RESULT_CODES.get(d.command, ()))
