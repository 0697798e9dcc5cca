"""The linter and the type checker, as tests, so the README's test command runs them too."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_ruff_finds_nothing():
    out = _run("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_finds_nothing():
    """Configured in pyproject.toml ([tool.mypy]: the six packages)."""
    out = _run("mypy")
    assert out.returncode == 0, out.stdout + out.stderr
