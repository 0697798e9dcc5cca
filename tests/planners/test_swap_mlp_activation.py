"""The MIP with SwiGLU's activation recomputed (plan ``mlp_activation``) and the bisection after
a fragmentation back-off, on the H200 bench's 128K / 48 GiB cell under the caching allocator."""

import pytest

import planners.swap as swap
from hwmodels.catalog import load_node
from hwmodels.units import GiB
from planners.plan import load_plan, write_plan
from simulator.job import TrainJob
from simulator.model import get_model

SEQ = 131072


def _ctx(act="saved", point="layer", model="probe-llama7b-stack", output="freed"):
    loss = "mean_square_fp32" if model.startswith("probe") else "cross_entropy"
    return swap.PlanContext(
        model=get_model(model).with_layers(8),
        job=TrainJob(seq_len=SEQ, optimizer="none", loss=loss, mlp_activation=act, model_output=output),
        node=load_node("1xH200"), gpu_budget_bytes=int(48 * GiB * 0.98), host_budget_bytes=96 * GiB,
        allocator="caching", prefetch_at=point)


def test_variants_add_the_recomputed_activation_for_swiglu_only():
    assert swap.mip_variants(_ctx()) == [("layer", "saved"), ("attention", "saved"),
                                         ("layer", "recomputed"), ("attention", "recomputed")]
    assert swap.mip_variants(_ctx("recomputed")) == [("layer", "recomputed"), ("attention", "recomputed")]
    gpt = swap.PlanContext(model=get_model("gpt2"), job=TrainJob(seq_len=1024, optimizer="none"),
                           node=load_node("1xH200"), gpu_budget_bytes=40 * GiB, host_budget_bytes=96 * GiB)
    assert [act for _, act in swap.mip_variants(gpt)] == ["saved", "saved"]


def test_bench_cell_plans_the_recomputed_activation_and_replays_from_its_file(tmp_path):
    ctx = _ctx()
    rep = swap.plan_training(ctx.model, ctx.job, ctx.node, gpu_budget_bytes=ctx.gpu_budget_bytes,
                             host_budget_bytes=ctx.host_budget_bytes, allocator="caching")
    mip, ckpt = rep.result("mip"), rep.result("full_recompute")
    assert rep.best == "mip" and mip.plan.mlp_activation == "recomputed"
    assert mip.step_time_s * 1.2 < ckpt.step_time_s
    write_plan(mip.plan, tmp_path / "p.json")
    plan = load_plan(tmp_path / "p.json")
    again = swap.evaluate(swap.PlanContext.from_plan(plan), "mip", plan.layers)
    assert again.feasible and again.step_time_s == pytest.approx(mip.step_time_s, rel=1e-9)


def test_bisection_after_a_fragmentation_back_off_finds_a_faster_plan(monkeypatch):
    # the stack output held through backward (the reference probe's loop) leaves the cell 1 GiB
    # tighter: tight enough that the first plans fragment and the planner backs off
    ctx = _ctx("recomputed", "attention", output="kept")
    refined, _ = swap.plan_mip(ctx)
    monkeypatch.setattr(swap.mip, "REFINE_SOLVES", 0)
    doubled, _ = swap.plan_mip(swap.PlanContext(**{**ctx.__dict__, "_profiles": {}}))
    assert refined.feasible and doubled.feasible
    assert refined.peak_hbm_bytes > doubled.peak_hbm_bytes
    assert refined.step_time_s < 0.97 * doubled.step_time_s
