import json
import shutil

import pytest

from hwmodels import catalog
from hwmodels.catalog import get_cluster, get_gpu, get_node, get_preset, list_presets
from hwmodels.specs import NodeSpec, missing_sources
from hwmodels.units import GB, TB, UserInputError

REQUIRED = {
    "gpus": ["H200-SXM", "H100-SXM", "A100-80GB-SXM", "A800-80GB-SXM", "B200", "GH200", "MI300X"],
    "nodes": ["1xH200", "8xH200", "8xA800", "8xH100", "1xGH200"],
    "profiles": ["H200-measured"],
}


def test_required_presets_exist():
    for kind, names in REQUIRED.items():
        assert set(names) <= set(list_presets(kind)), kind
    kinds = {type(get_preset(n)).__name__ for n in list_presets("memory") + list_presets("storage")}
    assert {"HostMemorySpec", "CxlMemorySpec", "NvmeSpec", "CsdSpec"} <= kinds


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_every_number_has_a_source(name):
    spec = get_preset(name)
    assert missing_sources(spec) == []


def test_missing_sources_finds_unsourced_numbers(toy_node):
    missing = missing_sources(toy_node)
    assert (
        "num_gpus" in missing
        and "gpu.num_sms" in missing
        and "gpu.peak_flops_per_s.bf16" in missing
    )


def test_a800_node_matches_memo_setup():
    node = get_node("8xA800")
    assert node.host_memory.capacity_bytes == 2 * TB
    assert node.gpu_peer_link().bidirectional_bandwidth_bytes_per_s == 400 * GB
    assert node.host_link(0).kind == "pcie" and node.host_link(0).generation == "4"


def test_gh200_uses_c2c_and_h200_nodes_use_nvlink_between_gpus():
    gh = get_node("1xGH200")
    assert gh.host_link().kind == "c2c"
    assert gh.host_link().bidirectional_bandwidth_bytes_per_s == 900 * GB
    assert get_node("8xH200").gpu_peer_link().kind == "nvlink"
    # two GPUs share each PCIe switch uplink in the HGX layout
    node = get_node("8xH200")
    assert max(node.num_gpus_sharing(e) for e in node.host_path(5)) == 2


def test_profile_only_with_its_gpu():
    data = get_node("1xH200").model_dump()
    data["gpu"] = get_gpu("H100-SXM").model_dump()
    with pytest.raises(ValueError, match="measured on 'H200-SXM'"):
        NodeSpec.model_validate(data)


def test_unknown_preset_lists_close_matches():
    with pytest.raises(UserInputError, match="close matches: .*1xH200"):
        get_node("1xH20")
    with pytest.raises(UserInputError, match="unknown gpu preset 'H300'"):
        get_gpu("H300")
    with pytest.raises(UserInputError, match="unknown preset kind"):
        list_presets("cpus")


def test_cluster():
    cluster = get_cluster("8xH200", num_nodes=4)
    assert cluster.num_gpus == 32 and cluster.network.kind == "network"
    with pytest.raises(UserInputError, match="num_nodes"):
        get_cluster("8xH200", num_nodes=0)


@pytest.fixture
def scratch_presets(tmp_path, monkeypatch):
    root = tmp_path / "presets"
    shutil.copytree(catalog.PRESET_DIR, root)
    monkeypatch.setattr(catalog, "PRESET_DIR", root)
    for fn in (catalog._index, catalog._raw_cached, catalog.get_preset):
        fn.cache_clear()
    yield root
    for fn in (catalog._index, catalog._raw_cached, catalog.get_preset):
        fn.cache_clear()


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda d: d.pop("num_sms"), "num_sms: Field required"),
        (lambda d: d.update(colour="green"), "colour: Extra inputs"),
        (lambda d: d.update(hbm_bandwidth_bytes_per_s="-4.8TB/s"), "hbm_bandwidth_bytes_per_s"),
    ],
)
def test_bad_preset_file_names_that_file_and_field(scratch_presets, edit, field):
    path = scratch_presets / "gpus" / "H200-SXM.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(UserInputError) as err:
        get_node("1xH200")  # the error names the GPU preset file, not the node
    assert "gpus/H200-SXM.json" in str(err.value) and field in str(err.value)
