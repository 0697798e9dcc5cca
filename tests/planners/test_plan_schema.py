"""The Plan schema (v2): the committed JSON Schema guards the executor contract; plans embed their
scenario with content hashes, validate, round-trip byte-identically, refuse unknown roles, tiers
their node lacks and edited content, migrate from v1, and malformed files fail as one line."""

import hashlib
import json
import pathlib

import pytest
from pydantic import ValidationError

from hwmodels.catalog import load_node
from hwmodels.units import UserInputError
from planners.plan import (
    ACTIVATION_ROLES,
    SCHEMA_PATH,
    KvPlacement,
    LayerPlan,
    ModelStatePlacement,
    Plan,
    Prediction,
    Provenance,
    RoleAction,
    load_plan,
    migrate_v1,
    plan_json_schema,
    write_plan,
)
from simulator.job import TrainJob
from simulator.model import get_model
from simulator.scenario import Scenario
from simulator.workload import NOT_ACTIVATIONS, Role

REPO = pathlib.Path(__file__).resolve().parents[2]


def _provenance(**kw):
    base = dict(tierplan_version="0.1.0", planner="mip", solver="highs", status="optimal", gap=0.0,
                time_limit_s=10.0)
    base.update(kw)
    return Provenance(**base)


def _scenario(hardware="1xH200", **job):
    model = get_model("probe-llama7b-stack").with_layers(3)
    return Scenario.build(model, TrainJob(seq_len=4096, loss="mean_square_fp32", optimizer="none", **job),
                          load_node(hardware), gpu_budget_bytes=80 * 2**30)


def _layers():
    memo = RoleAction(action="offload", alpha_frac=1 / 3)
    return [
        LayerPlan(layer=0, input="offload", roles={"attn_out": RoleAction(action="offload", alpha_frac=1.0),
                                                   "mlp_hidden": memo}),
        LayerPlan(layer=1, checkpoint="full", input="offload"),
        LayerPlan(layer=2),
    ]


def _plan(scenario=None, layers=None, **kw):
    return Plan.for_scenario(
        scenario or _scenario(), layers=layers or _layers(), staging_buffer_bytes=123,
        provenance=_provenance(),
        prediction=Prediction(step_time_s=1.0 / 3, mfu=0.5, peak_hbm_bytes=10, peak_host_bytes=20,
                              stall_s=0.0, recompute_s=0.1, feasible=True, replayed_by="simulator.des"),
        **kw)


def _refused(tmp_path, data) -> str:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserInputError) as err:
        load_plan(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg


def test_committed_schema_matches_the_model():
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == plan_json_schema(), (
        "planners/schema/plan.schema.json is stale: the executor contract changed; regenerate it "
        "with planners.plan.plan_json_schema() and bump PLAN_SCHEMA_VERSION if it breaks readers")


def test_plan_round_trips_byte_identically_and_embeds_its_scenario(tmp_path):
    plan = _plan()
    write_plan(plan, tmp_path / "a.json")
    again = load_plan(tmp_path / "a.json")
    write_plan(again, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["layers"][0]["roles"]["mlp_hidden"]["alpha_frac"] == 0.333333  # rounded
    assert data["schema_version"] == 2 and data["num_staging_buffers"] == 2
    assert list(data) == sorted(data)
    # self-contained: the resolved model, the typed job and the node with its measured profile
    assert data["scenario"]["model"]["num_layers"] == 3
    assert data["scenario"]["job"]["mode"] == "train"
    assert data["scenario"]["node"]["profile"]["name"] == "H200-measured"
    assert again.scenario == plan.scenario and Scenario.from_plan(again) == plan.scenario
    # the embedded scenario is exact: no rounding of fitted rates
    assert again.scenario.node.profile == load_node("1xH200").profile


def test_activation_roles_are_every_role_but_model_states():
    assert set(ACTIVATION_ROLES) == {r.value for r in Role} - set(NOT_ACTIVATIONS)


def test_an_unknown_role_is_refused(tmp_path):
    data = json.loads(_plan().to_json())
    data["layers"][0]["roles"]["attn_outt"] = data["layers"][0]["roles"].pop("attn_out")
    msg = _refused(tmp_path, data)
    assert "layers.0.roles" in msg and "unknown role 'attn_outt'" in msg
    with pytest.raises(ValidationError, match="unknown role 'weight'"):
        LayerPlan(layer=0, roles={"weight": RoleAction(action="recompute")})


def test_a_tier_the_node_lacks_is_refused(tmp_path):
    layers = _layers()
    layers[2] = LayerPlan(layer=2, roles={"mlp_hidden": RoleAction(action="offload", alpha_frac=0.5,
                                                                   tier="cxl")})
    with pytest.raises(ValidationError, match="tier 'cxl' is not on node 1xH200"):
        _plan(layers=layers)
    tiered = _plan(scenario=_scenario("1xH200-tiered"), layers=layers)  # that node has a CXL card
    data = json.loads(tiered.to_json())
    node = data["scenario"]["node"]
    node["cxl"] = []
    node["topology"] = [e for e in node["topology"] if "cxl0" not in (e["a"], e["b"])]
    data["scenario_sha256"] = Scenario.model_validate(data["scenario"]).hashes().model_dump()
    msg = _refused(tmp_path, data)
    assert "layers.2: tier 'cxl' is not on node" in msg


def test_edited_content_does_not_match_its_hash(tmp_path):
    data = json.loads(_plan().to_json())
    data["scenario"]["node"]["gpu"]["hbm_capacity_bytes"] *= 2
    msg = _refused(tmp_path, data)
    assert "scenario_sha256.node_sha256: does not match the embedded scenario.node" in msg
    data = json.loads(_plan().to_json())
    data["scenario"]["model"]["hidden_size"] = 2048
    data["scenario"]["model"]["head_dim"] = 64
    assert "scenario_sha256.model_sha256" in _refused(tmp_path, data)


def test_layers_must_match_the_model_be_in_order_and_checkpoints_have_no_roles():
    with pytest.raises(ValidationError, match="3 layers"):
        _plan(layers=[LayerPlan(layer=0)])
    with pytest.raises(ValidationError, match="expected 1"):
        _plan(layers=[LayerPlan(layer=0), LayerPlan(layer=2), LayerPlan(layer=2)])
    with pytest.raises(ValidationError, match="only for a layer without a checkpoint"):
        LayerPlan(layer=0, checkpoint="full", roles={"mlp_hidden": RoleAction(action="recompute")})
    with pytest.raises(ValidationError):
        LayerPlan(layer=0, surprise=1)


@pytest.mark.parametrize("kwargs", [
    dict(action="offload", alpha_frac=0.0),
    dict(action="offload", alpha_frac=0.7, keep_frac=0.5),
    dict(action="keep", keep_frac=0.5),
    dict(action="recompute", alpha_frac=0.2),
    dict(action="offload", alpha_frac=1.2),
    dict(action="offload", alpha_frac=0.5, tier="hbm"),
])
def test_role_action_rejects_inconsistent_fractions(kwargs):
    with pytest.raises(ValidationError):
        RoleAction(**kwargs)


def test_role_action_recompute_fraction():
    a = RoleAction(action="offload", alpha_frac=0.25, keep_frac=0.5)
    assert a.recompute_frac == pytest.approx(0.25)
    assert RoleAction(action="recompute", keep_frac=0.4).recompute_frac == pytest.approx(0.6)


def test_model_state_and_kv_placements_are_checked():
    with pytest.raises(ValidationError, match="params_prefetch_layers"):
        ModelStatePlacement(params_prefetch_layers=2)
    with pytest.raises(ValidationError, match="CPU step"):
        ModelStatePlacement(optimizer_step="cpu")
    ModelStatePlacement(params="host", params_prefetch_layers=1, optimizer_states="host",
                        master_weights="host", optimizer_step="cpu")
    with pytest.raises(ValidationError, match="group_size"):
        KvPlacement(dtype="bf16", group_size=32)
    with pytest.raises(ValidationError, match="tier"):
        KvPlacement(resident_frac=0.5, tier="hbm")
    with pytest.raises(ValidationError, match="no KV cache"):
        _plan(layers=[LayerPlan(layer=i, kv_cache=KvPlacement()) for i in range(3)])


def test_a_decision_the_replay_cannot_carry_out_yet_is_named():
    assert _plan().unsupported() == ""
    offloaded = [LayerPlan(layer=i, model_states=ModelStatePlacement(optimizer_states="host"))
                 for i in range(3)]
    assert _plan(layers=offloaded).unsupported().startswith("layers.0.model_states:")
    assert _plan(lm_head_chunks=4).unsupported().startswith("lm_head_chunks:")
    cpu_step = ModelStatePlacement(grads="host", optimizer_states="host", master_weights="host",
                                   optimizer_step="cpu")
    on_host = [LayerPlan(layer=i, model_states=cpu_step) for i in range(3)]
    assert _plan(layers=on_host).unsupported() == ""  # replayed now
    # run by the executor, but not for a job without an optimizer (this one)
    assert _plan(layers=on_host).unexecuted() == ("layers.0.model_states.optimizer_step: cpu, but "
                                                  "scenario.job.optimizer is none")
    mixed = [LayerPlan(layer=i, mlp_chunks=1 + i) for i in range(3)]
    assert _plan(layers=mixed).unsupported().startswith("layers.mlp_chunks:")
    segments = [LayerPlan(layer=0, checkpoint="full"), LayerPlan(layer=1, checkpoint="full", input="recompute"),
                LayerPlan(layer=2, checkpoint="full")]
    assert _plan(layers=segments).unsupported() == ""
    assert _plan(layers=segments).unexecuted() == ""  # run by the executor now
    plain_head = [LayerPlan(layer=0), *segments[1:]]
    assert _plan(layers=plain_head).unexecuted() == ("layers.0.checkpoint: a segment's head is fully "
                                                     "checkpointed in this executor")
    with pytest.raises(ValidationError, match="recompute needs a full checkpoint"):
        LayerPlan(layer=1, input="recompute")


def test_load_plan_reports_file_and_field(tmp_path):
    data = json.loads(_plan().to_json())
    data["layers"][0]["input"] = "teleport"
    assert "layers.0.input" in _refused(tmp_path, data)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(UserInputError, match="junk.json"):
        load_plan(tmp_path / "junk.json")
    assert "schema_version" in _refused(tmp_path, {**json.loads(_plan().to_json()), "schema_version": 7})
    assert "expected a JSON object" in _refused(tmp_path, [1, 2])


def test_mlp_activation_must_agree_with_the_job(tmp_path):
    plan = _plan(scenario=_scenario(mlp_activation="recomputed"), mlp_activation="recomputed")
    assert load_plan_text(tmp_path, plan.to_json()).mlp_activation == "recomputed"
    data = json.loads(_plan().to_json())
    data["mlp_activation"] = "recomputed"  # the embedded job still saves it
    msg = _refused(tmp_path, data)
    assert "mlp_activation" in msg and "scenario.job says 'saved'" in msg


def load_plan_text(tmp_path, text):
    path = tmp_path / "t.json"
    path.write_text(text)
    return load_plan(path)


V1_PLANS = sorted(p for p in (REPO / "validate" / "plans").rglob("*.json")
                  if p.name != "index.json" and json.loads(p.read_text()).get("schema_version") == 1)


def test_there_are_version_1_plans_to_migrate():
    assert len(V1_PLANS) >= 10


@pytest.mark.parametrize("path", V1_PLANS, ids=lambda p: str(p.relative_to(REPO)))
def test_version_1_plans_migrate(path):
    """Every committed v1 plan loads through migrate_v1: the names resolved, the decisions and
    the prediction unchanged, and it round-trips as v2."""
    data = json.loads(path.read_text())
    plan = load_plan(path)
    prov = data["provenance"]
    assert plan.schema_version == 2 and plan.provenance.migrated_from == 1
    assert plan.scenario.model.name == prov["model"]
    assert plan.scenario.model.num_layers == len(data["layers"])
    assert plan.scenario.node.name == prov["hardware"]
    assert plan.scenario.gpu_budget_bytes == prov["gpu_budget_bytes"]
    assert plan.scenario.job.seq_len == prov["job"]["seq_len"]
    assert [lp.model_dump(mode="json", include={"layer", "checkpoint", "input", "roles"})
            for lp in plan.layers] == [
        {k: v for k, v in lp.items() if k in ("layer", "checkpoint", "input", "roles")}
        for lp in data["layers"]]
    assert plan.prediction.model_dump(mode="json") == Prediction.model_validate(data["prediction"]).model_dump(mode="json")
    assert Plan.model_validate_json(plan.to_json()) == plan


def test_migration_names_what_it_cannot_resolve():
    data = json.loads(V1_PLANS[0].read_text())
    data["provenance"]["model"] = "no-such-model"
    with pytest.raises(UserInputError, match="x.json: provenance.model: .*no-such-model"):
        migrate_v1(data, where="x.json")
    del data["provenance"]["hardware"]
    with pytest.raises(UserInputError, match="provenance.hardware"):
        migrate_v1(data, where="x.json")


def test_edited_budgets_do_not_match_their_hash_and_older_plans_without_it_still_load(tmp_path):
    plan = _plan()
    data = json.loads(plan.to_json())
    want = hashlib.sha256(json.dumps({"gpu_budget_bytes": plan.scenario.gpu_budget_bytes,
                                      "host_budget_bytes": plan.scenario.host_budget_bytes},
                                     sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert data["scenario_sha256"]["budgets_sha256"] == want  # every new plan carries it
    for key in ("gpu_budget_bytes", "host_budget_bytes"):
        edited = json.loads(plan.to_json())
        edited["scenario"][key] //= 2
        msg = _refused(tmp_path, edited)
        assert "scenario_sha256.budgets_sha256: does not match the embedded scenario.gpu_budget_bytes" in msg
    # a plan written before the budgets were hashed: no field, no check, the same bytes back
    del data["scenario_sha256"]["budgets_sha256"]
    data["scenario"]["gpu_budget_bytes"] //= 2
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data, indent=1))
    again = load_plan(old)
    assert again.scenario_sha256.budgets_sha256 is None
    assert "budgets_sha256" not in again.to_json()
    write_plan(again, tmp_path / "old2.json")
    write_plan(load_plan(tmp_path / "old2.json"), tmp_path / "old3.json")
    assert (tmp_path / "old2.json").read_bytes() == (tmp_path / "old3.json").read_bytes()
