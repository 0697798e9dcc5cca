"""A reader that goes away (``tierplan simulate --json | head -1``) ends the command quietly:
exit 0, nothing on stderr (no "BrokenPipeError", no "Exception ignored")."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [
    ["simulate", "--json"],          # one print, failing at the final flush
    ["simulate"],                    # a rich table: rich's own broken-pipe exit
    ["estimate", "--mode", "infer"],
])
def test_closed_stdout_exits_0_without_a_message(argv):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    try:
        done = subprocess.run([sys.executable, "-m", "tierplan.cli", *argv], cwd=REPO_ROOT,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


def test_head_reads_one_line_and_the_command_ends_quietly():
    """The shell form: ``head -1`` reads one line and closes its end while output follows."""
    cmd = f"{sys.executable} -m tierplan.cli simulate | head -1; echo rc=${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", cmd], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and "train seq" in lines[0] and lines[1] == "rc=0"
    assert done.stderr == ""
