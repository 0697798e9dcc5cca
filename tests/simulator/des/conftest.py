"""Scenario builder shared by the discrete-event tests."""

from __future__ import annotations

import pytest

from hwmodels.catalog import load_node
from simulator.job import default_scenario, scenario_from_dict


def build_scenario(model: str, seq_len: int, hardware: str = "1xH200", *, layers: int | None = None,
                   **job):
    """(ModelSpec, TrainJob, NodeSpec) of the default scenario with these overrides."""
    data = default_scenario().model_dump(mode="json")
    data["model"], data["hardware"] = model, hardware
    data["job"]["seq_len"] = seq_len
    data["job"]["parallelism"].update(job.pop("parallelism", {}))
    data["job"].update(job)
    sc = scenario_from_dict(data, where="test")
    model_spec = sc.model_spec()
    if layers is not None:
        model_spec = model_spec.with_layers(layers)
    return model_spec, sc.job, load_node(sc.hardware)


@pytest.fixture(scope="session")
def scenario():
    return build_scenario
