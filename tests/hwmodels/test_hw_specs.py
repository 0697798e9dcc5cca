import json

import pytest
from pydantic import ValidationError

from hwmodels.catalog import load_node_file
from hwmodels.specs import LinkSpec, NodeSpec
from hwmodels.units import GB, TFLOPS, GiB, UserInputError, parse_rate, parse_seconds


def test_units_in_user_strings_become_base_units(toy_gpu, toy_pcie):
    assert toy_gpu.hbm_capacity_bytes == 80 * GiB
    assert toy_gpu.hbm_bandwidth_bytes_per_s == 1e12
    assert toy_gpu.peak_flops_per_s["bf16"] == 100 * TFLOPS
    assert toy_gpu.kernel_launch_overhead_s == pytest.approx(5e-6)
    assert toy_pcie.per_direction_bandwidth_bytes_per_s == pytest.approx(63.015 * GB)


@pytest.mark.parametrize(
    "text,kind,expected",
    [
        ("55GB/s", "bytes", 55e9),
        ("4.8 TB/s", "bytes", 4.8e12),
        ("1GiB/s", "bytes", 2**30),
        ("989TFLOP/s", "flops", 989e12),
        ("2.25 PFLOPS", "flops", 2.25e15),
        (3e9, "bytes", 3e9),
    ],
)
def test_parse_rate(text, kind, expected):
    assert parse_rate(text, kind=kind) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["-5GB/s", "fast", "5XB/s", True])
def test_parse_rate_rejects_naming_field(bad):
    with pytest.raises(UserInputError, match="link_bw"):
        parse_rate(bad, field="link_bw")


def test_parse_seconds():
    assert parse_seconds("1.5ms") == pytest.approx(1.5e-3)
    assert parse_seconds("120ns") == pytest.approx(1.2e-7)


def test_specs_are_frozen(toy_gpu):
    with pytest.raises(ValidationError):
        toy_gpu.num_sms = 3


def test_link_bidirectional_must_be_between_one_and_two_directions():
    with pytest.raises(ValidationError, match="bidirectional"):
        LinkSpec(
            name="x",
            kind="pcie",
            per_direction_bandwidth_bytes_per_s="10GB/s",
            bidirectional_bandwidth_bytes_per_s="30GB/s",
            latency_s=0,
        )


def test_sources_must_name_fields(toy_pcie):
    with pytest.raises(ValidationError, match="not a field"):
        LinkSpec(**{**toy_pcie.model_dump(), "sources": {"bandwith": "typo"}})


def test_topology_unknown_device_and_unreachable(toy_node):
    data = toy_node.model_dump()
    bad = {**data, "topology": [*data["topology"], {"a": "gpu7", "b": "sw0", "link": "pcie"}]}
    with pytest.raises(ValidationError, match="unknown device 'gpu7'"):
        NodeSpec.model_validate(bad)
    cut = {**data, "topology": data["topology"][:2]}
    with pytest.raises(ValidationError, match="gpu0 has no path to a CPU"):
        NodeSpec.model_validate(cut)


def test_topology_paths_and_sharing(toy_node):
    path = toy_node.host_path(1)
    assert [(e.a, e.b) for e in path] == [("gpu1", "sw0"), ("sw0", "cpu0")]
    assert [toy_node.num_gpus_sharing(e) for e in path] == [1, 2]  # the uplink is shared
    # GPUs are end points: gpu0 -> gpu1 goes through the switch, never "through" a GPU.
    assert [(e.a, e.b) for e in toy_node.path("gpu0", "gpu1")] == [("gpu0", "sw0"), ("gpu1", "sw0")]


def _node_file(tmp_path, **changes):
    data = {
        "schema_version": 1,
        "name": "mine",
        "num_gpus": 1,
        "gpu": "H200-SXM",
        "host_memory": "ddr5-4800-2s-2tb",
        "links": {"pcie": "pcie-gen5-x16"},
        "topology": [{"a": "gpu0", "b": "cpu0", "link": "pcie"}],
    }
    data.update(changes)
    for key, value in list(data.items()):
        if value is None:
            del data[key]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    return path


def test_user_node_file_loads_with_override(tmp_path):
    node = load_node_file(
        _node_file(tmp_path, host_memory={"preset": "ddr5-4800-2s-2tb", "capacity_bytes": "4TB"})
    )
    assert node.host_memory.capacity_bytes == 4 * 10**12
    assert "mine.json" in node.host_memory.sources["capacity_bytes"]


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"num_gpus": None}, "num_gpus: Field required"),
        ({"colour": "blue"}, "colour: Extra inputs"),
        (
            {"gpu": {"preset": "H200-SXM", "hbm_bandwidth_bytes_per_s": "-4TB/s"}},
            "gpu.hbm_bandwidth_bytes_per_s",
        ),
        (
            {"gpu": {"preset": "H200-SXM", "hbm_bandwidth_bytes_per_s": -4}},
            "gpu.hbm_bandwidth_bytes_per_s",
        ),
        ({"links": {"pcie": {"preset": "pcie-gen5-x16", "speed": 1}}}, "links.pcie.speed"),
    ],
)
def test_bad_node_file_names_file_and_field(tmp_path, changes, field):
    with pytest.raises(UserInputError) as err:
        load_node_file(_node_file(tmp_path, **changes))
    msg = str(err.value)
    assert "mine.json" in msg and field in msg and "\n" not in msg


def test_bad_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserInputError, match="bad.json: malformed JSON"):
        load_node_file(bad)
    with pytest.raises(UserInputError, match="file not found"):
        load_node_file(tmp_path / "absent.json")


def test_topology_error_in_a_file_is_one_clean_line(tmp_path):
    path = _node_file(tmp_path, topology=[{"a": "gpu0", "b": "cpu3", "link": "pcie"}])
    with pytest.raises(UserInputError) as err:
        load_node_file(path)
    assert str(err.value).endswith(
        "topology.0: unknown device 'cpu3' (known: ['cpu0', 'cpu1', 'gpu0'])"
    )
    assert "input" not in str(err.value)
