"""Run fuzz cases against ``tierplan.cli.main`` and sort every outcome into a failure class.

Models: a fork server. The parent imports tierplan and its heavy dependencies once, then forks
one child per case (a few ms instead of ~1 s of imports), so a case cannot change the next
one's state and a hang is ended with SIGKILL. The child enters the case's own folder, sends
fd 1 and 2 to files, caps its address space, arms ``faulthandler`` to dump its stack shortly
before the kill, and calls ``main(argv)``; an exception that escapes ``main`` is printed as
Python would print it, so it counts as a traceback. Failure classes, per case:
``traceback`` (a traceback or a fatal error on stderr, or an exception out of ``main``),
``timeout`` (not done by its limit + 10 s), ``accepted_invalid`` (exit 0 on input invalid by
construction), ``wrong_exit`` (invalid input refused with a code other than 2),
``partial_output`` (a file left behind after a non-zero exit), ``payload_executed`` (the marker
file a malicious pickle or YAML tag would create exists), ``multi_line`` (a refusal printed on
more than one stderr line) and ``no_field`` (the line names none of the case's fields or files).
Assumes: Linux (fork, FIFOs, /dev/full). Ignores: stdout content.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fuzz.generate import Bases, Case, File, generate, load_bases

KILL_AFTER_S = 10.0
"""A case is killed (and counted as a timeout) this long after its own limit."""

MEMORY_CAP_BYTES = 6 * 1024**3
"""Address space of one case: a memory bomb becomes a MemoryError, not a stalled machine."""

FAILURE_CLASSES = ("traceback", "timeout", "accepted_invalid", "wrong_exit", "partial_output",
                   "payload_executed", "multi_line", "no_field")

WARM_IMPORTS = ("pydantic", "yaml", "rich.console", "rich.table", "numpy", "simulator.scenario",
                "simulator.templates", "simulator.estimator", "simulator.des", "simulator.allocator",
                "planners.plan", "planners.swap", "planners.layout.plan", "planners.layout.instance",
                "planners.layout.snapshot", "planners.layout.plan_buffers", "planners.layout.plot",
                "hwmodels.calibrate", "validate.compare", "validate.bench", "pulp", "highspy",
                "matplotlib.pyplot", "simulator.des.trace", "torch", "validate.run_plan",
                "validate.diagnostics")


def warm_up() -> None:
    """Import what the cases need in the parent, so each forked child starts warm."""
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional dependency; the case reports it if it matters
            pass


@dataclass(frozen=True)
class Outcome:
    case: Case
    rc: int | None  # None: killed
    stderr: str
    wall_s: float
    failures: tuple[str, ...]
    new_files: tuple[str, ...] = ()
    hang_stack: str = ""


def _materialize(folder: str, files: Iterable[File]) -> None:
    for f in files:
        path = os.path.join(folder, f.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if f.kind == "dir":
            os.makedirs(path, exist_ok=True)
        elif f.kind == "fifo":
            os.mkfifo(path)
        elif f.kind == "symlink":
            os.symlink(f.target, path)
        elif f.kind == "sparse":
            with open(path, "wb") as fh:
                fh.truncate(f.size)
        else:
            with open(path, "wb") as fh:
                fh.write(f.data)
            if f.kind == "chmod000":
                os.chmod(path, 0)


def _listing(folder: str) -> set[str]:
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, onerror=lambda err: None):
        for name in dirs + names:
            seen.add(os.path.relpath(os.path.join(root, name), folder))
    return seen


def _remove(folder: str) -> None:
    def unlock(func, path, _exc):
        try:
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            os.chmod(path, stat.S_IRWXU)
            func(path)
        except OSError:
            pass

    shutil.rmtree(folder, onerror=unlock)


def _child(case: Case, folder: str, err_path: str, hang_path: str, limit_s: float) -> None:
    """In the forked child: run one case and leave with its exit code (never returns)."""
    import faulthandler
    import io
    import resource
    import traceback

    code = 70
    try:
        os.chdir(folder)
        null = os.open(os.devnull, os.O_RDWR)
        out = os.open(os.path.join(os.path.dirname(err_path), "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      line_buffering=True)
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))
        hang = open(hang_path, "w")
        faulthandler.enable(file=sys.stderr)
        faulthandler.dump_traceback_later(limit_s, exit=False, file=hang)
        from tierplan.cli import main

        try:
            code = main(list(case.argv))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the interpreter would print, and exit 1
            traceback.print_exc()
            code = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    finally:
        os._exit(code & 0xFF if isinstance(code, int) else 1)


def classify(case: Case, rc: int | None, stderr: str, new_files: tuple[str, ...], marker_exists: bool,
             ) -> tuple[str, ...]:
    failures = []
    if rc is None:
        failures.append("timeout")
    if "Traceback" in stderr or "Fatal Python error" in stderr or (rc is not None and rc < 0):
        failures.append("traceback")
    if marker_exists:
        failures.append("payload_executed")
    if rc is not None and rc != 0 and rc not in case.result_codes and new_files:
        failures.append("partial_output")
    if case.invalid and rc == 0:
        failures.append("accepted_invalid")
    if case.invalid and rc not in (None, 0, 2) and "traceback" not in failures:
        failures.append("wrong_exit")
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if rc == 2 and "traceback" not in failures:
        if len(lines) != 1:
            failures.append("multi_line")
        elif case.needles and not any(n in lines[0] for n in case.needles):
            failures.append("no_field")
    return tuple(failures)


def run_cases(cases: Iterable[Case], *, jobs: int = 2, work_dir: str | None = None,
              progress=None, kill_after_s: float = KILL_AFTER_S) -> Iterator[Outcome]:
    """Run ``cases`` ``jobs`` at a time; yield one Outcome per case (in completion order)."""
    warm_up()
    root = tempfile.mkdtemp(prefix="tierplan-fuzz-", dir=work_dir)
    markers = os.path.join(root, "markers")
    os.makedirs(markers, exist_ok=True)
    running: dict[int, tuple[Case, str, float, set[str], float]] = {}
    pending = iter(cases)
    exhausted = False
    try:
        while running or not exhausted:
            while not exhausted and len(running) < jobs:
                case = next(pending, None)
                if case is None:
                    exhausted = True
                    break
                base = os.path.join(root, case.ident)
                folder = os.path.join(base, "cwd")
                os.makedirs(folder)
                _materialize(folder, case.files)
                before = _listing(folder)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(case, folder, os.path.join(base, "stderr"), os.path.join(base, "hang"),
                           case.limit_s)
                running[pid] = (case, base, time.monotonic(), before, case.limit_s + kill_after_s)
            done = []
            for pid, (_, _, start, _, deadline) in running.items():
                got, status = os.waitpid(pid, os.WNOHANG)
                if got == 0:
                    if time.monotonic() - start > deadline:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        done.append((pid, None))
                    continue
                done.append((pid, os.waitstatus_to_exitcode(status)))
            for pid, rc in done:
                case, base, start, before, _ = running.pop(pid)
                wall = time.monotonic() - start
                outcome = _collect(case, base, rc, wall, before, markers)
                _remove(base)
                if progress is not None:
                    progress(outcome)
                yield outcome
            if not done:
                time.sleep(0.005)
    finally:
        for pid in list(running):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        _remove(root)


def _read(path: str, limit: int = 20_000) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _collect(case: Case, base: str, rc: int | None, wall: float, before: set[str], markers: str) -> Outcome:
    folder = os.path.join(base, "cwd")
    stderr = _read(os.path.join(base, "stderr"))
    new_files = tuple(sorted(_listing(folder) - before))
    if rc is not None and rc != 0:
        # a folder the command creates for its outputs (--out DIR) is not a file left behind
        new_files = tuple(p for p in new_files if not os.path.isdir(os.path.join(folder, p)))
    marker = any(name.endswith(case.ident) for name in os.listdir(markers)) or \
        any(os.path.basename(p).startswith("PAYLOAD_RAN") for p in _listing(folder))
    failures = classify(case, rc, stderr, new_files, marker)
    hang = _read(os.path.join(base, "hang")) if "timeout" in failures or wall > case.limit_s else ""
    return Outcome(case, rc, stderr, wall, failures, new_files, hang)


def summarize(outcomes: list[Outcome]) -> dict:
    """Counts per failure class, per subcommand and per channel."""
    per_class = Counter(f for o in outcomes for f in o.failures)
    per_command: dict[str, Counter] = {}
    for o in outcomes:
        c = per_command.setdefault(o.case.command, Counter())
        c["cases"] += 1
        c["invalid"] += bool(o.case.invalid)
        c["failed"] += bool(o.failures)
        c["exit2"] += o.rc == 2
        c["exit0"] += o.rc == 0
    per_channel = Counter(o.case.channel for o in outcomes)
    return {"cases": len(outcomes), "invalid_by_construction": sum(bool(o.case.invalid) for o in outcomes),
            "failed_cases": sum(bool(o.failures) for o in outcomes),
            "per_class": {k: per_class.get(k, 0) for k in FAILURE_CLASSES},
            "per_command": {k: dict(v) for k, v in sorted(per_command.items())},
            "per_channel": dict(sorted(per_channel.items())),
            "slowest_s": round(max((o.wall_s for o in outcomes), default=0.0), 2)}


def describe(o: Outcome) -> str:
    """One failure in a few lines, for a test's assertion message or the script's report."""
    err = o.stderr.strip().splitlines()
    tail = " | ".join(err[-3:])[:400]
    return (f"{o.case.ident} [{','.join(o.failures)}] {o.case.command} / {o.case.channel} / {o.case.kind}: "
            f"rc={o.rc} {o.wall_s:.1f}s argv={' '.join(a[:40] for a in o.case.argv)} "
            f"new={list(o.new_files)[:3]} stderr: {tail}")


def make_base_plan(folder: str) -> str:
    """A plan of the current schema (``tierplan plan --out``, 2-layer GPT-2 on 1xH200)."""
    import contextlib
    import io

    from tierplan.cli import main

    out = os.path.join(folder, "base-plan")
    argv = ["plan", "--model", "gpt2", "--layers", "2", "--seq-len", "1K", "--hardware", "1xH200",
            "--time-limit", "5", "--out", out, "--json"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"the base plan failed (exit {code}): {err.getvalue()[-500:]}")
    return os.path.join(out, "plan.json")


def fuzz(seed: int, count: int, *, jobs: int = 2, progress=None) -> list[Outcome]:
    """Generate ``count`` cases from ``seed`` and run them all."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    scratch = tempfile.mkdtemp(prefix="tierplan-fuzz-base-")
    try:
        bases: Bases = load_bases(repo, make_base_plan(scratch))
        markers = os.path.join(scratch, "markers")
        os.makedirs(markers)
        cases = list(generate(seed, count, bases, marker_dir=markers))
        outcomes = list(run_cases(cases, jobs=jobs, progress=progress))
        leaked = os.listdir(markers)
        if leaked:  # a payload ran: mark every case whose marker exists
            outcomes = [o if not any(m.endswith(o.case.ident) for m in leaked) else
                        Outcome(o.case, o.rc, o.stderr, o.wall_s, (*o.failures, "payload_executed"),
                                o.new_files, o.hang_stack) for o in outcomes]
        return outcomes
    finally:
        _remove(scratch)
