"""`--model org/name`: a Hugging Face hub id, read through huggingface_hub from a cache laid out
as the hub lays it out (no network: HF_HUB_OFFLINE=1, HF_HUB_CACHE pointing at a fixture)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from simulator.model import PRESET_DIR, load_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _config() -> dict:
    cfg = json.loads((PRESET_DIR / "llama-3.2-1b.json").read_text())
    cfg.pop("_source", None)
    cfg.pop("_name_or_path", None)
    cfg["num_hidden_layers"] = 4  # not the preset's 16: the hub's file is the one read
    return cfg


@pytest.fixture
def hub_cache(tmp_path) -> pathlib.Path:
    """``models--acme--tiny-llama`` as ``hf download`` leaves it: the file in blobs/, a
    snapshot folder per revision holding a symlink to it, refs/main naming the revision."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "5f1e").write_text(json.dumps(_config()))
    (snapshot / "config.json").symlink_to("../../blobs/5f1e")
    (repo / "refs" / "main").write_text(REVISION)
    return tmp_path / "hub"


def _tierplan(argv, cache: pathlib.Path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tierplan.cli", *argv], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_hub_id_reads_the_cached_config(hub_cache, tmp_path):
    """The estimate of a hub id equals the estimate of the same config.json given as a path."""
    path = tmp_path / "tiny-llama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_config()))
    small = ["--seq-len", "4K", "--json"]
    by_id = _tierplan(["estimate", "--model", "acme/tiny-llama", *small], hub_cache)
    by_path = _tierplan(["estimate", "--model", str(path), *small], hub_cache)
    assert by_id.returncode == 0 and by_id.stderr == ""
    from_hub, from_path = json.loads(by_id.stdout), json.loads(by_path.stdout)
    assert (from_hub.pop("model"), from_path.pop("model")) == ("acme/tiny-llama", "tiny-llama")
    assert from_hub == from_path


def test_hub_id_not_cached_is_one_line(hub_cache, tmp_path):
    done = _tierplan(["plan", "--model", "acme/not-there", "--seq-len", "4K", "--out", str(tmp_path / "o")],
                     hub_cache)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "model: 'acme/not-there' is not in the Hugging Face cache (offline" in done.stderr
    assert "hf download acme/not-there config.json" in done.stderr
    assert not (tmp_path / "o").exists()


def test_load_model_resolves_hub_ids_in_process(hub_cache, monkeypatch):
    """A preset, a path and a hub id go where they should; the hub model is named by its id."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    spec = load_model("acme/tiny-llama")
    assert (spec.name, spec.num_layers, spec.family) == ("acme/tiny-llama", 4, "llama")
    assert load_model("llama-3.2-1b").num_layers == 16  # a preset never goes to the hub
