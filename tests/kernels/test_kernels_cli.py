"""`tierplan kernels ...`: JSON keys, agreement with the library, error paths."""

import json

import pytest

from kernels.attention import (
    attention_bwd_cost,
    attention_bwd_flops,
    attention_fwd_cost,
    attention_fwd_flops,
    flash_attention_tiling,
)
from tierplan.cli import main

ATT = [
    "kernels",
    "cost",
    "attention",
    "--seq-len",
    "64K",
    "--num-heads",
    "32",
    "--num-kv-heads",
    "8",
    "--head-dim",
    "128",
    "--causal",
    "--hardware",
    "1xH200",
]


def _json(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_gemm_json(capsys):
    r = _json(
        capsys,
        [
            "kernels",
            "cost",
            "gemm",
            "--m",
            "64K",
            "--n",
            "4096",
            "--k",
            "4096",
            "--hardware",
            "1xH200",
            "--json",
        ],
    )
    for key in ("flops", "hbm_bytes", "time_s", "achieved_flops_per_s", "bound", "kernels"):
        assert key in r
    assert r["flops"] == 2 * 65536 * 4096 * 4096
    assert r["hbm_bytes"] == (65536 * 4096 + 4096 * 4096 + 65536 * 4096) * 2
    assert r["bound"] == "compute"
    assert r["achieved_flops_per_s"] == pytest.approx(r["flops"] / r["time_s"])


def test_attention_json_passes(capsys):
    shape = dict(
        batch=1, seq_len_q=65536, seq_len_kv=65536, num_heads=32, head_dim=128, causal=True
    )
    fwd = _json(capsys, [*ATT, "--pass", "fwd", "--json"])
    bwd = _json(capsys, [*ATT, "--pass", "bwd", "--json"])
    both = _json(capsys, [*ATT, "--pass", "fwdbwd", "--json"])
    assert fwd["flops"] == attention_fwd_cost(num_kv_heads=8, **shape).flops
    assert bwd["hbm_bytes"] == attention_bwd_cost(num_kv_heads=8, **shape).total.hbm_bytes
    assert [k["name"] for k in bwd["kernels"]] == [
        "attention_bwd_preprocess",
        "attention_bwd",
        "attention_bwd_convert_dq",
        "attention_bwd_reduce_dkv",
    ]
    assert both["time_s"] == pytest.approx(fwd["time_s"] + bwd["time_s"])
    assert both["flops"] == pytest.approx(fwd["flops"] + bwd["flops"])
    assert both["model_flops"] == attention_fwd_flops(**shape) + attention_bwd_flops(**shape)
    assert (fwd["block_q"], fwd["sram_bytes"]) == (228, 228 * 1024)  # the H200's SRAM per SM
    for r in (fwd, bwd, both):
        assert r["bound"] == "compute" and r["achieved_flops_per_s"] > 0


def test_attention_sram_override_and_table(capsys):
    r = _json(capsys, [*ATT, "--pass", "fwd", "--sram", "64KiB", "--json"])
    assert r["block_q"] == 64 and r["sram_bytes"] == 64 * 1024
    assert main([*ATT, "--pass", "fwdbwd"]) == 0
    out = capsys.readouterr().out
    assert "attention_bwd_convert_dq" in out and "compute-bound" in out


def test_attention_pass_is_required(capsys):
    assert main(ATT) == 2  # argparse's usage error comes back as the exit code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--pass" in err


def test_tiling_json_and_table(capsys):
    r = _json(capsys, ["kernels", "tiling", "--seq-len", "64K", "--head-dim", "128", "--json"])
    assert r["sram_bytes"] == 228 * 1024
    traffic = [row["hbm_bytes"] for row in r["sweep"]]
    assert traffic == sorted(traffic, reverse=True) and len(set(traffic)) == len(traffic)
    assert r["sweep"][-1]["hbm_bytes"] == r["minimum_hbm_bytes"]
    assert r["sweep"][-1]["kv_passes"] == 1.0
    expected = flash_attention_tiling(
        seq_len_q=65536, seq_len_kv=65536, head_dim=128, sram_bytes=228 * 1024
    )
    assert r["hbm_bytes"] == expected.hbm_bytes
    assert (
        main(
            [
                "kernels",
                "tiling",
                "--seq-len",
                "4K",
                "--head-dim",
                "64",
                "--causal",
                "--hardware",
                "8xA800",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "K/V passes" in out and "164.00 KiB *" in out


@pytest.mark.parametrize(
    "argv, field",
    [
        (
            [
                "kernels",
                "cost",
                "gemm",
                "--m",
                "abc",
                "--n",
                "1",
                "--k",
                "1",
                "--hardware",
                "1xH200",
            ],
            "--m",
        ),
        (
            [
                "kernels",
                "cost",
                "gemm",
                "--m",
                "8",
                "--n",
                "8",
                "--k",
                "8",
                "--dtype",
                "bf17",
                "--hardware",
                "1xH200",
            ],
            "dtype",
        ),
        (
            ["kernels", "cost", "gemm", "--m", "8", "--n", "8", "--k", "8", "--hardware", "9xH999"],
            "9xH999",
        ),
        ([*ATT[:8], "3", *ATT[9:]], "num_kv_heads"),
        ([*ATT, "--sram", "12XB"], "--sram"),
        ([*ATT[:4], "0", *ATT[5:]], "--seq-len"),
        (
            ["kernels", "tiling", "--seq-len", "4K", "--head-dim", "128", "--sram", "512"],
            "sram_bytes",
        ),
        ([*ATT[:-3], "--window", "128", "--hardware", "1xH200"], "window"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, field):
    """Bad values: one line naming the field on stderr, nothing on stdout, exit 2."""
    if field == "window":  # a window needs a causal mask
        argv = [a for a in argv if a != "--causal"]
    if argv[2] == "attention":
        argv = [*argv, "--pass", "fwd"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and field in err, err
