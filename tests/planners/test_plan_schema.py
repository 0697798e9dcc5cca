"""The Plan schema: the committed JSON Schema guards the executor contract; plans validate,
round-trip byte-identically, and malformed files fail as one line."""

import json

import pytest
from pydantic import ValidationError

from hwmodels.units import UserInputError
from planners.plan import (
    SCHEMA_PATH,
    LayerPlan,
    Plan,
    Prediction,
    Provenance,
    RoleAction,
    load_plan,
    plan_json_schema,
    write_plan,
)


def _provenance(**kw):
    base = dict(tierplan_version="0.1.0", model="m", job={"mode": "train"}, hardware="1xH200",
                planner="mip", solver="highs", status="optimal", gap=0.0, time_limit_s=10.0,
                gpu_budget_bytes=80 * 2**30, host_budget_bytes=2**40)
    base.update(kw)
    return Provenance(**base)


def _plan():
    memo = RoleAction(action="offload", alpha_frac=1 / 3)
    return Plan(
        layers=[
            LayerPlan(layer=0, input="offload", roles={"attn_out": RoleAction(action="offload", alpha_frac=1.0),
                                                       "mlp_hidden": memo}),
            LayerPlan(layer=1, checkpoint="full", input="offload"),
            LayerPlan(layer=2),
        ],
        staging_buffer_bytes=123,
        provenance=_provenance(),
        prediction=Prediction(step_time_s=1.0 / 3, mfu=0.5, peak_hbm_bytes=10, peak_host_bytes=20,
                              stall_s=0.0, recompute_s=0.1, feasible=True, replayed_by="simulator.des"),
    )


def test_committed_schema_matches_the_model():
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == plan_json_schema(), (
        "planners/schema/plan.schema.json is stale: the executor contract changed; regenerate it "
        "with planners.plan.plan_json_schema() and bump PLAN_SCHEMA_VERSION if it breaks readers")


def test_plan_round_trips_byte_identically(tmp_path):
    plan = _plan()
    write_plan(plan, tmp_path / "a.json")
    again = load_plan(tmp_path / "a.json")
    write_plan(again, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["layers"][0]["roles"]["mlp_hidden"]["alpha_frac"] == 0.333333  # rounded
    assert data["schema_version"] == 1 and data["num_staging_buffers"] == 2
    assert list(data) == sorted(data)


@pytest.mark.parametrize("kwargs", [
    dict(action="offload", alpha_frac=0.0),
    dict(action="offload", alpha_frac=0.7, keep_frac=0.5),
    dict(action="keep", keep_frac=0.5),
    dict(action="recompute", alpha_frac=0.2),
    dict(action="offload", alpha_frac=1.2),
])
def test_role_action_rejects_inconsistent_fractions(kwargs):
    with pytest.raises(ValidationError):
        RoleAction(**kwargs)


def test_role_action_recompute_fraction():
    a = RoleAction(action="offload", alpha_frac=0.25, keep_frac=0.5)
    assert a.recompute_frac == pytest.approx(0.25)
    assert RoleAction(action="recompute", keep_frac=0.4).recompute_frac == pytest.approx(0.6)


def test_layers_must_be_in_order_and_checkpoints_have_no_roles():
    with pytest.raises(ValidationError, match="expected 0"):
        Plan(layers=[LayerPlan(layer=1)], provenance=_provenance())
    with pytest.raises(ValidationError, match="only for a layer without a checkpoint"):
        LayerPlan(layer=0, checkpoint="full", roles={"mlp_hidden": RoleAction(action="recompute")})
    with pytest.raises(ValidationError):
        LayerPlan(layer=0, surprise=1)


def test_load_plan_reports_file_and_field(tmp_path):
    data = json.loads(_plan().to_json())
    data["layers"][0]["input"] = "teleport"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(UserInputError) as err:
        load_plan(bad)
    msg = str(err.value)
    assert "bad.json" in msg and "layers.0.input" in msg and "\n" not in msg
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(UserInputError, match="junk.json"):
        load_plan(tmp_path / "junk.json")


def test_mlp_activation_is_written_only_when_recomputed(tmp_path):
    saved = json.loads(_plan().to_json())
    assert "mlp_activation" not in saved and "mlp_activation" not in saved["provenance"]["job"]
    plan = _plan().model_copy(update={
        "mlp_activation": "recomputed",
        "provenance": _provenance(job={"mode": "train", "mlp_activation": "recomputed"})})
    write_plan(plan, tmp_path / "a.json")
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["mlp_activation"] == "recomputed" == data["provenance"]["job"]["mlp_activation"]
    assert load_plan(tmp_path / "a.json").to_json() == plan.to_json()


def test_mlp_activation_must_agree_with_the_job(tmp_path):
    data = json.loads(_plan().to_json())
    data["mlp_activation"] = "recomputed"  # the job (provenance) still saves it
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(UserInputError) as err:
        load_plan(tmp_path / "p.json")
    assert "mlp_activation" in str(err.value) and "\n" not in str(err.value)
