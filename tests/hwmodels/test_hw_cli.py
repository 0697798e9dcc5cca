import json

import pytest

from hwmodels.catalog import PRESET_DIR, REPO_ROOT, get_node
from hwmodels.transfer import host_transfer_time_s
from hwmodels.units import GiB
from tierplan.cli import main


def _json(capsys):
    out = capsys.readouterr().out
    return json.loads(out)


def test_list_json(capsys):
    assert main(["hw", "list", "--json"]) == 0
    presets = _json(capsys)["presets"]
    assert "8xA800" in presets["nodes"] and "H200-SXM" in presets["gpus"]


def test_list_table(capsys):
    assert main(["hw", "list", "--kind", "links"]) == 0
    out = capsys.readouterr().out
    assert "pcie-gen5-x16" in out and "8xH200" not in out


def test_show_node_json_and_table(capsys):
    assert main(["hw", "show", "1xH200", "--json"]) == 0
    data = _json(capsys)
    assert data["kind"] == "nodes" and data["spec"]["gpu"]["name"] == "H200-SXM"
    assert main(["hw", "show", "H200-SXM"]) == 0
    out = capsys.readouterr().out
    assert "hbm_bandwidth_bytes_per_s" in out and "datasheet" in out


@pytest.mark.parametrize("direction", ["h2d", "d2h", "bidir"])
def test_transfer_json(capsys, direction):
    assert (
        main(
            [
                "hw",
                "transfer",
                "--bytes",
                "2GiB",
                "--direction",
                direction,
                "--hardware",
                "1xH200",
                "--json",
            ]
        )
        == 0
    )
    data = _json(capsys)
    node = get_node("1xH200")
    if direction == "bidir":
        expected = max(
            host_transfer_time_s(node, 2 * GiB, d, concurrent_opposite=True) for d in ("h2d", "d2h")
        )
        assert data["total_bytes"] == 4 * GiB
    else:
        expected = host_transfer_time_s(node, 2 * GiB, direction)
    assert data["time_s"] == pytest.approx(expected)
    assert data["bandwidth_bytes_per_s"] == pytest.approx(data["total_bytes"] / data["time_s"])
    assert data["rates_from"].startswith("profile")


def test_transfer_table(capsys):
    assert (
        main(["hw", "transfer", "--bytes", "64MiB", "--direction", "h2d", "--hardware", "8xA800"])
        == 0
    )
    assert "pcie-gen4-x16" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["hw", "show", "H201"], "close matches"),
        (
            ["hw", "transfer", "--bytes", "lots", "--direction", "h2d", "--hardware", "1xH200"],
            "--bytes",
        ),
        (
            ["hw", "transfer", "--bytes", "1GiB", "--direction", "h2d", "--hardware", "9xH200"],
            "unknown node preset",
        ),
        (
            [
                "hw",
                "transfer",
                "--bytes",
                "1GiB",
                "--direction",
                "h2d",
                "--hardware",
                "8xH200",
                "--gpu-index",
                "8",
            ],
            "--gpu-index",
        ),
        (["hw", "calibrate", "--measurements", "/nonexistent.json"], "file not found"),
        (["hw", "calibrate", "--measurements", "x.json", "--gpu", "H201"], "unknown gpu preset"),
        (
            [
                "hw",
                "calibrate",
                "--worst",
                "-1",
                "--measurements",
                str(REPO_ROOT / "validate/measurements/reference/h200-probe-2026-11-28.json"),
            ],
            "--worst",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_node_file_exit_2_names_file_and_field(capsys, tmp_path):
    path = tmp_path / "node.json"
    data = json.loads((PRESET_DIR / "nodes" / "1xH200.json").read_text())
    data["gpu"] = {"preset": "H200-SXM", "num_sms": -1}
    path.write_text(json.dumps(data))
    assert main(["hw", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert "node.json" in err and "gpu.num_sms" in err and err.count("\n") == 1


def test_argparse_errors_exit_2(capsys):
    argv = ["hw", "transfer", "--bytes", "1GiB", "--direction", "sideways", "--hardware", "1xH200"]
    assert main(argv) == 2
    assert "--direction" in capsys.readouterr().err


def test_calibrate_writes_the_committed_profile(capsys, tmp_path):
    committed = json.loads((PRESET_DIR / "profiles" / "H200-measured.json").read_text())
    out = tmp_path / "profile.json"
    argv = [
        "hw",
        "calibrate",
        "--name",
        committed["name"],
        "--gpu",
        committed["gpu"],
        "--output",
        str(out),
        "--json",
        "--measurements",
        *[str(REPO_ROOT / p) for p in committed["measurements"]],
    ]
    assert main(argv) == 0
    data = _json(capsys)
    written = json.loads(out.read_text())
    assert written["measurements"] == committed["measurements"]
    assert set(written["fits"]) == set(committed["fits"])
    for cls, fit in committed["fits"].items():
        for key, value in fit.items():
            if isinstance(value, str):
                assert written["fits"][cls][key] == value
                continue
            if key == "rate_curve":  # [[work, rate], ...]
                got = [x for point in written["fits"][cls][key] for x in point]
                assert got == pytest.approx([x for point in value for x in point], rel=1e-5), cls
                continue
            assert written["fits"][cls][key] == pytest.approx(value, rel=1e-5, abs=1e-12), (
                cls,
                key,
            )
    assert {"op_class", "label", "measured_s", "predicted_s", "rel_error"} <= set(
        data["residuals"][0]
    )
    assert any("launch_overhead" in s for s in data["skipped"])
    assert (
        main(
            [
                "hw",
                "calibrate",
                "--measurements",
                str(REPO_ROOT / "validate/measurements/reference/h200-probe-2026-11-28.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "largest" in out and "within 10%" in out and "wrote" not in out


def test_transfer_to_a_storage_device(capsys):
    argv = [
        "hw",
        "transfer",
        "--bytes",
        "1GB",
        "--direction",
        "d2h",
        "--hardware",
        "1xH200-tiered",
        "--device",
        "nvme0",
        "--json",
    ]
    assert main(argv) == 0
    data = _json(capsys)
    assert data["path"] == ["gpu0<->cpu0:pcie-gen5-x16", "nvme0<->cpu0:pcie-gen5-x4"]
    assert data["bandwidth_bytes_per_s"] < data["device_bandwidth_bytes_per_s"] == 6.75e9
    assert main(argv[:-3] + ["--device", "csd0"]) == 0
    assert "csd0" in capsys.readouterr().out
    assert main(argv[:-3] + ["--device", "cxl7"]) == 2
    assert "cxl7" in capsys.readouterr().err
    assert main(argv[:-3] + ["--device", "cpu1"]) == 2  # one socket
    assert "cpu1" in capsys.readouterr().err
