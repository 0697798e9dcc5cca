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


def test_torch_is_an_optional_extra():
    """The planner installs without torch (1.5 GB); `tierplan[torch]` and `[test]` bring it."""
    import re
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert "torch" not in names and "transformers" not in names
    assert "huggingface_hub" in names
    extras = project["optional-dependencies"]
    assert any(d.startswith("torch") for d in extras["torch"])
    assert any(d.startswith("torch") for d in extras["test"])


# Runs the planner's commands in one process where importing torch (or transformers, which
# needs it) fails as it does where torch is not installed.
_WITHOUT_TORCH = r"""
import importlib.abc, io, json, sys, contextlib

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
from tierplan.cli import main

out = {}
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    out[argv[0] + " " + argv[1]] = [code, err.getvalue()]
out["torch imported"] = [m for m in sys.modules if m.partition(".")[0] == "torch"]
print(json.dumps(out))
"""


def test_planner_commands_run_without_torch(tmp_path):
    import json

    small = ["--model", "llama-3.2-1b", "--seq-len", "4K", "--hardware", "1xH200"]
    argvs = [
        ["estimate", *small],
        ["simulate", *small, "--offload", "0.5"],
        ["plan", *small, "--time-limit", "5", "--out", str(tmp_path / "plan")],
        ["layout", "--plan", str(tmp_path / "plan" / "plan.json"), "--time-limit", "2",
         "--out", str(tmp_path / "layout.json"), "--no-png"],
        ["validate", "plan", str(tmp_path / "plan" / "plan.json"), "--out", str(tmp_path / "v")],
    ]
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, json.dumps(argvs)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for cmd in ("estimate --model", "simulate --model", "plan --model", "layout --plan"):
        assert out[cmd] == [0, ""], cmd
    assert (tmp_path / "plan" / "plan.json").is_file() and (tmp_path / "layout.json").is_file()
    # the executor needs torch: one line naming the extra that installs it, nothing written
    code, err = out["validate plan"]
    assert code == 1 and err.count("\n") == 1 and "pip install 'tierplan[torch]'" in err
    assert not (tmp_path / "v").exists()
    assert out["torch imported"] == []
