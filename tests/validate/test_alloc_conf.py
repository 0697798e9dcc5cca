"""Plans run under the allocator they were certified for: the executor's processes start with
``expandable_segments:True`` unless the user named ``expandable_segments`` already, and every
measurement records the setting."""

import pytest

from validate.diagnostics import ALLOC_CONF_VAR, use_default_allocator


@pytest.mark.parametrize("before,after", [
    (None, "expandable_segments:True"),
    ("max_split_size_mb:128", "max_split_size_mb:128,expandable_segments:True"),
    ("expandable_segments:False", "expandable_segments:False"),  # the user's choice stands
    ("expandable_segments:True", "expandable_segments:True"),
])
def test_the_default_allocator_setting(before, after):
    env = {} if before is None else {ALLOC_CONF_VAR: before}
    assert use_default_allocator(env) == after
    assert env[ALLOC_CONF_VAR] == after


def test_provenance_records_the_allocator_setting(monkeypatch):
    import torch

    from kernels.microbench import provenance

    monkeypatch.setenv(ALLOC_CONF_VAR, "expandable_segments:True")
    prov = provenance(["x"], torch.device("cpu"))
    assert prov["pytorch_cuda_alloc_conf"] == "expandable_segments:True"
    monkeypatch.delenv(ALLOC_CONF_VAR)
    assert "pytorch_cuda_alloc_conf" not in provenance(["x"], torch.device("cpu"))


def test_bench_run_sets_it_before_cuda_starts(monkeypatch, tmp_path):
    """``bench.py run`` (not --smoke, not --dry-run) sets the variable in ``main`` before any
    import that could start CUDA; here the run then stops at the missing plans directory."""
    from validate import bench

    monkeypatch.delenv(ALLOC_CONF_VAR, raising=False)
    assert bench.main(["run", "--plans", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    import os

    assert os.environ[ALLOC_CONF_VAR] == "expandable_segments:True"
    monkeypatch.delenv(ALLOC_CONF_VAR)
    assert bench.main(["run", "--plans", str(tmp_path / "none"), "--out", str(tmp_path), "--smoke"]) == 2
    assert ALLOC_CONF_VAR not in os.environ
