"""Preset catalog: hardware described as JSON data files, loaded into `hwmodels.specs` models.

Models: ``hwmodels/presets/<kind>/<name>.json`` for kind in gpus, memory, storage, links, nodes,
profiles. A preset's name is its file name without ``.json``; names are unique across kinds.
A node file (preset or user file) names its parts by preset (``"gpu": "H200-SXM"``) or writes
them inline; ``{"preset": NAME, field: value, ...}`` takes a preset and overrides fields (an
overridden number's source becomes the override's own ``sources`` entry, or the file that set it).
Assumes: files are small and read once per process (cached).
Ignores: YAML (JSON only, to keep one text format for data).
Source: every number inside the preset files carries its own ``sources`` entry.
"""

from __future__ import annotations

import difflib
import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hwmodels.limits import echo
from hwmodels.specs import (
    AchievedProfile,
    ClusterSpec,
    CsdSpec,
    CxlMemorySpec,
    GpuSpec,
    HostMemorySpec,
    LinkSpec,
    NodeSpec,
    NvmeSpec,
)
from hwmodels.units import UserInputError, validation_error_line
from hwmodels.userfile import read_user_json

PRESET_DIR = Path(__file__).resolve().parent / "presets"
KINDS: tuple[str, ...] = ("gpus", "memory", "storage", "links", "nodes", "profiles")
REPO_ROOT = Path(__file__).resolve().parent.parent

_DEVICE_MODELS: dict[str, type[BaseModel]] = {
    "gpu": GpuSpec,
    "host_dram": HostMemorySpec,
    "cxl_memory": CxlMemorySpec,
    "nvme": NvmeSpec,
    "csd": CsdSpec,
    "link": LinkSpec,
}
# Fields that may name a preset, by the kind of the file holding them.
_CHILD_FIELDS: dict[str, dict[str, str]] = {
    "nodes": {
        "gpu": "gpus",
        "host_memory": "memory",
        "cxl": "memory",
        "nvme": "storage",
        "csd": "storage",
        "links": "links",
        "profile": "profiles",
    },
    "storage": {"host_link": "links"},
}


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def validate_file_data(model: type[BaseModel], data: Any, path: Path) -> Any:
    """``model.model_validate(data)`` with errors as one-line `UserInputError` naming the file."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserInputError(validation_error_line(err, _display(path))) from None


def read_json(path: Path) -> Any:
    """Parse a JSON file; missing or malformed files raise `UserInputError` naming the file."""
    return read_user_json(path)


@lru_cache(maxsize=1)
def _index() -> dict[str, tuple[str, Path]]:
    out: dict[str, tuple[str, Path]] = {}
    for kind in KINDS:
        for path in sorted((PRESET_DIR / kind).glob("*.json")):
            if path.stem in out:
                raise RuntimeError(
                    f"preset name {path.stem!r} appears twice: {out[path.stem][1]}, {path}"
                )
            out[path.stem] = (kind, path)
    return out


def list_presets(kind: str | None = None) -> list[str]:
    """Preset names, sorted; only those of ``kind`` (gpus, memory, ...) when given."""
    if kind is not None and kind not in KINDS:
        raise UserInputError(f"kind: unknown preset kind {kind!r} (use one of {', '.join(KINDS)})")
    return sorted(n for n, (k, _) in _index().items() if kind is None or k == kind)


def preset_kind(name: str) -> str:
    """Kind of a preset (``gpus``, ``nodes``, ...); unknown names raise with close matches."""
    return _lookup(name, None)[0]


def _lookup(name: str, kind: str | None) -> tuple[str, Path]:
    index = _index()
    if name in index and (kind is None or index[name][0] == kind):
        return index[name]
    pool = list_presets(kind)
    close = difflib.get_close_matches(name, pool, n=4, cutoff=0.4)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    what = f"{kind.rstrip('s')} preset" if kind else "preset"
    raise UserInputError(f"unknown {what} {echo(name)}{hint} (`tierplan hw list` shows all)")


def _resolve(value: Any, kind: str, where: Path, field: str) -> Any:
    """Replace a preset reference (string, or dict with ``preset``) by the preset's data."""
    if isinstance(value, str):
        return _raw_named(value, kind, where, field)
    if isinstance(value, dict) and "preset" in value:
        overrides = dict(value)
        base = dict(_raw_named(str(overrides.pop("preset")), kind, where, f"{field}.preset"))
        sources = dict(base.get("sources", {}))
        own_sources = overrides.pop("sources", {})
        if not isinstance(own_sources, dict):
            raise UserInputError(f"{_display(where)}: {field}.sources: expected a mapping of field "
                                 f"names to sources, got {type(own_sources).__name__}")
        for key in overrides:
            sources[key] = own_sources.get(key, f"override in {_display(where)} ({field})")
        sources.update(own_sources)
        base.update(overrides)
        base["sources"] = sources
        return _resolve_children(base, where, kind)
    if isinstance(value, dict):
        return _resolve_children(value, where, kind)
    return value


def _raw_named(name: str, kind: str, where: Path, field: str) -> dict[str, Any]:
    """``_raw`` for a preset a file names: an unknown name is reported with the file and field."""
    try:
        _lookup(name, kind)
    except UserInputError as err:
        raise UserInputError(f"{_display(where)}: {field}: {err}") from None
    return _raw(name, kind)


def _resolve_children(data: dict[str, Any], where: Path, parent_kind: str) -> dict[str, Any]:
    out = dict(data)
    for field, kind in _CHILD_FIELDS.get(parent_kind, {}).items():
        if field not in out:
            continue
        value = out[field]
        if field in ("cxl", "nvme", "csd") and isinstance(value, list):
            out[field] = [_resolve(v, kind, where, f"{field}.{i}") for i, v in enumerate(value)]
        elif field == "links" and isinstance(value, dict):
            out[field] = {k: _resolve(v, kind, where, f"links.{k}") for k, v in value.items()}
        else:
            out[field] = _resolve(value, kind, where, field)
    return out


@cache
def _raw_cached(name: str, kind: str) -> str:
    _, path = _lookup(name, kind)
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserInputError(f"{_display(path)}: expected a JSON object")
    data = _resolve_children(data, path, kind)
    _validate_preset(kind, data, path)  # errors name the preset's own file
    return json.dumps(data)


def _raw(name: str, kind: str) -> dict[str, Any]:
    return json.loads(_raw_cached(name, kind))


def _model_for(kind: str, data: dict[str, Any], path: Path) -> type[BaseModel]:
    if kind == "nodes":
        return NodeSpec
    if kind == "profiles":
        return AchievedProfile
    device = data.get("device")
    model = _DEVICE_MODELS.get(str(device))
    allowed = {
        "gpus": ("gpu",),
        "memory": ("host_dram", "cxl_memory"),
        "storage": ("nvme", "csd"),
        "links": ("link",),
    }[kind]
    if model is None or device not in allowed:
        raise UserInputError(
            f"{_display(path)}: device: expected one of {', '.join(allowed)}, got {device!r}"
        )
    return model


def _validate_preset(kind: str, data: dict[str, Any], path: Path) -> Any:
    return validate_file_data(_model_for(kind, data, path), data, path)


@cache
def get_preset(name: str) -> Any:
    """Any preset by name, as its spec model (GpuSpec, NodeSpec, LinkSpec, ...)."""
    kind, path = _lookup(name, None)
    data = _raw(name, kind)
    return _validate_preset(kind, data, path)


def _get(name: str, kind: str) -> Any:
    _lookup(name, kind)
    return get_preset(name)


def get_gpu(name: str) -> GpuSpec:
    """A GPU preset, e.g. ``get_gpu("H200-SXM")``."""
    return _get(name, "gpus")


def get_link(name: str) -> LinkSpec:
    """A link preset, e.g. ``get_link("pcie-gen5-x16")``."""
    return _get(name, "links")


def get_memory(name: str) -> HostMemorySpec | CxlMemorySpec:
    """A host DRAM or CXL memory preset."""
    return _get(name, "memory")


def get_storage(name: str) -> NvmeSpec | CsdSpec:
    """An NVMe or computational-storage preset."""
    return _get(name, "storage")


def get_profile(name: str) -> AchievedProfile:
    """A measured profile preset, e.g. ``get_profile("H200-measured")``."""
    return _get(name, "profiles")


def get_node(name: str) -> NodeSpec:
    """A node preset, e.g. ``get_node("8xH200")``."""
    return _get(name, "nodes")


def load_node_file(path: str | Path) -> NodeSpec:
    """A user node file (JSON). Parts may name presets; errors name this file and the field."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserInputError(f"{_display(path)}: expected a JSON object")
    return validate_file_data(NodeSpec, _resolve_children(data, path, "nodes"), path)


def load_node(name_or_path: str) -> NodeSpec:
    """``--hardware`` argument: a node preset name or a path to a node JSON file."""
    if name_or_path.endswith(".json") or "/" in name_or_path:
        return load_node_file(name_or_path)
    return get_node(name_or_path)


def get_cluster(
    node: str | NodeSpec, *, num_nodes: int, network: str = "ib-ndr-400"
) -> ClusterSpec:
    """``num_nodes`` copies of a node joined by one ``network`` port per GPU."""
    node_spec = load_node(node) if isinstance(node, str) else node
    if num_nodes < 1:
        raise UserInputError(f"num_nodes: must be at least 1, got {num_nodes}")
    return ClusterSpec(
        name=f"{num_nodes}x {node_spec.name} ({network})",
        num_nodes=num_nodes,
        node=node_spec,
        network=get_link(network),
    )
