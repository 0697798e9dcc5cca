"""Our top-level package names also exist on PyPI; they must resolve to this repository."""

import importlib
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["hwmodels", "kernels", "simulator", "planners", "validate", "tierplan"]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_resolves_inside_repo(name):
    module = importlib.import_module(name)
    path = pathlib.Path(module.__file__).resolve()
    assert path.is_relative_to(REPO_ROOT), f"{name} resolved to {path}, outside {REPO_ROOT}"
    assert path.parent.name == name


def test_cli_help_is_instant_and_light():
    """`tierplan --help` must not import torch or pulp (heavy imports live in subcommands)."""
    code = (
        "import sys\n"
        "from tierplan.cli import build_parser\n"
        "build_parser()\n"
        "heavy = [m for m in ('torch', 'pulp', 'simpy', 'matplotlib', 'scipy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"heavy modules imported by --help: {out.stdout.strip()}"
