"""Progress goes to stderr on a terminal only: a pseudo-terminal sees the spinner, a pipe sees
nothing (what a program reads from stdout and stderr stays as it was)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import pty
import subprocess
import sys
import threading

from tierplan.progress import Progress, wants_progress

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_progress_is_for_terminals_only(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    master, slave = pty.openpty()
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(os.dup(slave), "w") as tty, os.fdopen(os.dup(write_end), "w") as pipe:
            assert wants_progress(tty) and not wants_progress(pipe)
            assert not wants_progress(io.StringIO())
            monkeypatch.setenv("TERM", "dumb")
            assert not wants_progress(tty)
    finally:
        for fd in (master, slave, read_end, write_end):
            os.close(fd)


def test_progress_on_a_pipe_writes_nothing():
    sink = io.StringIO()
    with Progress("working", stream=sink) as p:
        p.update("still working")
    assert sink.getvalue() == ""


def _layout(tmp_path, stderr) -> subprocess.CompletedProcess:
    argv = ["layout", "--model", "llama-3.2-1b", "--layers", "2", "--seq-len", "1K", "--time-limit", "1",
            "--no-mip", "--out", str(tmp_path / "l.json"), "--no-png", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TERM": "xterm", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "tierplan.cli", *argv], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=stderr, timeout=120)


def test_layout_shows_its_solve_on_a_terminal_and_nothing_on_a_pipe(tmp_path):
    master, slave = pty.openpty()
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side closed
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    on_tty = _layout(tmp_path, slave)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    on_pipe = _layout(tmp_path, subprocess.PIPE)
    assert on_tty.returncode == 0 and on_pipe.returncode == 0
    assert b"tierplan layout: laying out" in bytes(seen)
    assert on_pipe.stderr == b""
    # stdout is the same JSON either way (the spinner never touches it)
    a, b = json.loads(on_tty.stdout), json.loads(on_pipe.stdout)
    assert a.keys() == b.keys() and (a["lower_bound_bytes"], a["peak_bytes"]) == (b["lower_bound_bytes"], b["peak_bytes"])
