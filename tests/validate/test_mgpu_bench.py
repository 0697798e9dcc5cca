"""validate/scripts/mgpu_bench.py end to end on gloo: every mode's cells run and are recorded."""

import pathlib
import subprocess
import sys

from validate.records import MgpuBenchFile, model_for
from validate.scripts.mgpu_bench import CP_LENS, FSDP_LENS, SMOKE_LENS, TP_LENS
from validate.scripts.nccl_sweep import NVLS_OFF_ENV

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_gpu_cells_are_the_briefed_lengths():
    K = 1024
    assert CP_LENS == (128 * K, 256 * K, 512 * K)
    assert TP_LENS == (32 * K, 64 * K, 128 * K)
    assert FSDP_LENS == (16 * K, 32 * K, 64 * K)


def test_smoke_bench_on_gloo_end_to_end(tmp_path):
    out = tmp_path / "mgpu-bench-smoke.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "validate/scripts/mgpu_bench.py"), "--smoke", "--quiet",
         "--nproc", "2", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert model_for(out) is MgpuBenchFile
    bench = MgpuBenchFile.model_validate_json(out.read_text())
    assert bench.smoke and bench.backend == "gloo" and bench.num_gpus == 2 and bench.env == NVLS_OFF_ENV
    assert [(r.mode, r.seq_len) for r in bench.records] == [
        (m, n) for m in ("cp", "tp_sp", "fsdp2") for n in SMOKE_LENS]
    for r in bench.records:
        assert r.status == "ok" and r.step_times_s and len(r.step_times_s) == 3
        assert r.tokens_per_rank == (r.seq_len if r.mode == "fsdp2" else r.seq_len // 2)
        assert r.num_layers == (4 if r.mode == "fsdp2" else 1)
    assert not list(tmp_path.glob("*.tmp"))
