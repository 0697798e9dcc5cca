"""In-step calibration records from run_plan's kernel profiles (validate/instep.py)."""

import json
import pathlib

import pytest

from hwmodels.units import UserInputError
from kernels.elementwise import minimal_traffic_bytes
from simulator.job import TrainJob
from simulator.model import get_model
from validate import instep

REPO = pathlib.Path(__file__).resolve().parents[2]
H200 = REPO / "validate" / "measurements" / "h200"
PROFILES = H200 / "instep-h200-2026-11-28"
NONE_CASES = ("probe8-16k-full-none", "probe8-32k-full-none", "probe8-64k-full-none",
              "probe6-128k-full-none", "probe2-256k-full-none")


def test_committed_records_are_the_conversion_of_the_committed_profiles():
    paths = [str(PROFILES / f"{c}.kernels.json") for c in NONE_CASES]
    again = instep.build(paths, str(PROFILES / "measured.json"))
    stored = json.loads((H200 / "instep-h200-2026-11-28.json").read_text())
    assert again["records"] == stored["records"]
    assert stored["provenance"]["device"] == "NVIDIA H200" and stored["provenance"]["torch"]


def test_records_by_hand():
    data = {"ops": [
        ["aten::mm", "[[1024, 4096], [4096, 512]]", 4, 0.004],
        ["aten::_cudnn_attention_forward", "[[1, 32, 2048, 128], [1, 8, 2048, 128], [1, 8, 2048, 128]]", 2, 0.002],
        ["aten::silu", "[[1, 2048, 64]]", 1, 0.001],
        ["aten::silu_backward", "[[1, 2048, 64], [1, 2048, 64]]", 1, 0.002],
        ["aten::mul", "[[1, 2048, 64], [1, 2048, 64]]", 3, 0.003],
        ["aten::mul", "[[1, 2048, 4096], []]", 1, 0.5],  # a scalar multiply: not SwiGLU's
        ["aten::add_", "[[1, 2048, 4096], [1, 2048, 4096], []]", 2, 0.1],
    ]}
    recs = instep.records_from_profile(data, source="t")
    gemm, sdpa, fwd, fwdbwd = recs
    assert (gemm["m"], gemm["n"], gemm["k"], gemm["time_s"]) == (1024, 512, 4096, 0.001)
    assert sdpa["num_heads"] == 32 and sdpa["num_kv_heads"] == 8 and sdpa["pass"] == "fwd"
    assert sdpa["backend"] == "cudnn" and sdpa["time_s"] == 0.001 and sdpa["kv_len"] is None
    f_bytes, fb_bytes = minimal_traffic_bytes("silu_mul", num_tokens=2048, width=64, dtype="bf16")
    assert fwd["impl"] == "eager_chunked" and fwd["hbm_bytes"] == f_bytes
    assert fwd["time_s"] == pytest.approx(0.001 + 0.001)
    assert fwdbwd["hbm_bytes"] == fb_bytes
    assert fwdbwd["time_s"] == pytest.approx(0.002 + 0.002 + 2 * 0.001)


@pytest.mark.parametrize(
    ("ops", "match"),
    [
        (None, "ops: expected"),
        ([["aten::mm", "[[1, 2]]"]], "expected \\[name, shapes, count, seconds\\]"),
        ([["aten::mm", "[[1, 2], [2, 3]]", 0, 1.0]], "count and seconds must be positive"),
        ([["aten::mm", "__import__('os').system('true')", 1, 1.0]], "not a list literal"),
        ([["aten::mm", "[[1, 'x']]", 1, 1.0]], "must be a list of lists of sizes"),
        ([["aten::_cudnn_attention_forward", "[[1, 2]]", 1, 1.0]], "expected query and key shapes"),
    ],
)
def test_malformed_profiles_are_one_line_errors(ops, match):
    with pytest.raises(UserInputError, match=match):
        instep.records_from_profile({"ops": ops} if ops is not None else {}, source="p.json")


def test_cli_writes_the_records(tmp_path, capsys):
    out = tmp_path / "r.json"
    measured = ["--measured", str(PROFILES / "measured.json")]
    code = instep.main(["--profiles", str(PROFILES / "probe8-16k-full-none.kernels.json"), *measured,
                        "--out", str(out)])
    assert code == 0
    recs = json.loads(out.read_text())["records"]
    assert {r["op"] for r in recs} == {"gemm", "sdpa", "silu_mul"}
    assert instep.main(["--profiles", str(tmp_path / "missing.json"), *measured, "--out", str(out)]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err


def test_fused_gate_up_times_swiglu_with_the_in_step_strided_fit():
    """The bench's stack fuses gate and up (strided halves); Hugging Face Llama does not."""
    from hwmodels.catalog import load_node
    from simulator.templates import training_workload

    node = load_node("1xH200")
    job = TrainJob(seq_len=16384, optimizer="none", loss="mean_square_fp32")
    stack = get_model("probe-llama7b-stack").with_layers(1)
    assert stack.gate_up_fused
    silu = next(op for op in training_workload(stack, job, node).ops if op.name == "layers.0.mlp.silu")
    f_bytes, _ = minimal_traffic_bytes("silu_mul", num_tokens=16384, width=stack.intermediate_size, dtype="bf16")
    rate = node.profile.fits["memory.silu_mul.eager_chunked.fwd"].bandwidth_bytes_per_s
    assert silu.time_s == pytest.approx(f_bytes / rate, rel=0.01)
    contiguous = node.profile.fits["memory.silu_mul.eager.fwd"].bandwidth_bytes_per_s
    assert rate < 0.5 * contiguous


@pytest.mark.parametrize("seed", range(24))
def test_hostile_profile_and_measured_files_are_refused_in_one_line(seed, tmp_path, monkeypatch, capsys):
    """Fuzz cases of the fuzz suite's file and tree mutations on the converter's two inputs: exit 2
    with one line naming the file (or, for a mutant that may be valid, no crash), no records file."""
    import random

    from fuzz.generate import File, _tree_mutation, dumps, file_not_what_it_claims
    from fuzz.runner import _materialize

    rng = random.Random(seed)
    monkeypatch.chdir(tmp_path)
    profile = json.loads((PROFILES / "probe8-16k-full-none.kernels.json").read_text())
    measured = (PROFILES / "measured.json").read_bytes()
    which = "in/p.kernels.json" if seed % 3 else "in/measured.json"
    valid = dumps(profile).encode() if which.startswith("in/p") else measured
    if seed % 2:
        files, invalid = file_not_what_it_claims(rng, which, valid)
    else:
        doc, _, invalid, _ = _tree_mutation(rng, profile if which.startswith("in/p") else json.loads(measured))
        files = [File(which, data=dumps(doc).encode())]
    other = {"in/p.kernels.json": dumps(profile).encode(), "in/measured.json": measured}
    _materialize(str(tmp_path), files + [File(p, data=d) for p, d in other.items() if p != which])
    rc = instep.main(["--profiles", "in/p.kernels.json", "--measured", "in/measured.json", "--out", "r.json"])
    err = capsys.readouterr().err
    assert rc in ((2,) if invalid else (0, 2)), err
    if rc:
        assert err.count("\n") == 1 and which in err and "Traceback" not in err
        assert not (tmp_path / "r.json").exists()
