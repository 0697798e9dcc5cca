"""Applying a Plan to the analytical Workload and replaying it on the discrete-event simulator:
checked against the estimator where the plan changes nothing, and against hand sums where it
offloads or recomputes."""

import pytest

from hwmodels.catalog import load_node
from hwmodels.transfer import copy_fit
from planners.plan import LayerPlan, RoleAction
from planners.swap import PlanContext, apply_plan, evaluate, replay
from simulator.estimator import estimate_training
from simulator.job import scenario_from_dict
from simulator.workload import ATTN_ROLES, Phase, allocator_rounded_bytes, walk_memory


def _ctx(*, seq="16K", layers=4, hardware="1xH200", par=None, model="llama-3.2-1b", budget=None):
    sc = scenario_from_dict({"model": model, "hardware": hardware,
                             "job": {"mode": "train", "seq_len": seq, "optimizer": "adamw",
                                     "parallelism": par or {}}}, where="test")
    node = load_node(hardware)
    return PlanContext(model=sc.model_spec().with_layers(layers), job=sc.job, node=node,
                       gpu_budget_bytes=budget or node.gpu.hbm_capacity_bytes,
                       host_budget_bytes=node.host_memory.capacity_bytes)


@pytest.fixture(scope="module")
def ctx():
    return _ctx()


def _keep(n):
    return [LayerPlan(layer=i) for i in range(n)]


@pytest.mark.parametrize("checkpoint", ["none", "full", "selective"])
def test_uniform_plans_replay_exactly_like_the_estimator(ctx, checkpoint):
    res = evaluate(ctx, "x", [LayerPlan(layer=i, checkpoint=checkpoint) for i in range(ctx.num_layers)])
    est = estimate_training(ctx.model, ctx.job.model_copy(update={"checkpointing": checkpoint}), ctx.node)
    assert res.peak_hbm_bytes == est.peak_allocated_bytes
    assert res.step_time_s == pytest.approx(est.step_time_s, rel=1e-12)
    assert res.peak_host_bytes == 0 and res.replay.stall_s == 0.0
    assert res.applied.transfers == ()


def test_offloaded_layer_leaves_hbm_between_release_and_prefetch(ctx):
    prof = ctx.profile("none")
    lp0, lp1, lp2 = prof.layers[:3]
    whole = RoleAction(action="offload", alpha_frac=1.0)
    layers = _keep(ctx.num_layers)
    layers[0] = LayerPlan(layer=0, input="offload", roles={r: whole for r in lp0.role_tids})
    applied = apply_plan(prof, layers)
    index = prof.workload._by_id()
    moved = lp0.input_tids + tuple(t for ts in lp0.role_tids.values() for t in ts)
    moved_bytes = sum(allocator_rounded_bytes(index[t].num_bytes) for t in moved)
    base = walk_memory(prof.workload).timeline
    new = walk_memory(applied.workload).timeline
    # no recompute op is inserted, so op k of the base is op k of the plan
    assert len(new) == len(base)
    k = lp2.first_fwd  # after layer 1's forward (the staging buffer's reuse point)
    assert base[k].live_bytes - new[k].live_bytes == moved_bytes
    k = lp1.last_fwd  # the D2H may still be running: layer 0's bytes are still there
    assert base[k].live_bytes == new[k].live_bytes
    k = lp1.first_bwd  # prefetched back when layer 1's backward starts (lookahead 1)
    assert base[k].live_bytes == new[k].live_bytes
    d2h, h2d = applied.transfers
    assert d2h.direction == "d2h" and h2d.direction == "h2d"
    assert d2h.num_bytes == h2d.num_bytes == sum(index[t].num_bytes for t in moved)
    assert applied.offloaded_bytes == d2h.num_bytes == applied.staging_bytes
    rep = replay(applied, ctx.node, num_gpus=1)
    assert rep.peak_host_bytes == d2h.num_bytes


def test_token_wise_recompute_costs_its_share_of_the_layer(ctx):
    prof = ctx.profile("none")
    lp = prof.layers[1]
    other = RoleAction(action="recompute", keep_frac=0.25)
    attn = RoleAction(action="offload", alpha_frac=1.0)
    layers = _keep(ctx.num_layers)
    layers[1] = LayerPlan(layer=1, input="offload",
                          roles={r: (attn if r in ATTN_ROLES else other) for r in lp.role_tids})
    res = evaluate(ctx, "x", layers)
    rec = [op for op in res.applied.workload.ops if op.phase == Phase.RECOMPUTE]
    assert [op.name for op in rec] == ["layers.1.token_recompute"]
    # 3/4 of the per-token ops, then every row of those tensors (recomputed and kept) copied
    # into the full-size tensor backward reads
    assert ctx.copy_s_per_byte > 0
    assert rec[0].time_s == pytest.approx(0.75 * (lp.fwd_s - lp.attn_fwd_s)
                                          + ctx.copy_s_per_byte * lp.other_bytes)
    base = evaluate(ctx, "none", _keep(ctx.num_layers))
    # the copies hide under compute: the step grows by the recompute alone
    assert res.replay.stall_s == pytest.approx(0.0, abs=1e-12)
    assert res.step_time_s == pytest.approx(base.step_time_s + rec[0].time_s, rel=1e-9)
    assert res.peak_hbm_bytes < base.peak_hbm_bytes


def test_mixed_full_checkpoint_recomputes_the_whole_forward(ctx):
    prof = ctx.profile("none")
    layers = _keep(ctx.num_layers)
    layers[2] = LayerPlan(layer=2, checkpoint="full")
    res = evaluate(ctx, "x", layers)
    rec = [op for op in res.applied.workload.ops if op.phase == Phase.RECOMPUTE]
    assert {op.layer for op in rec} == {2}
    rec_s = sum(op.time_s for op in rec)
    # the same recompute as the uniformly checkpointed step's layer 2 (non-reentrant checkpoint
    # stops once the last saved tensor is back, so the tail of the forward is not re-run)
    assert rec_s == pytest.approx(ctx.profile("full").layers[2].recompute_s, rel=1e-12)
    assert 0.5 * prof.layers[2].fwd_s < rec_s <= prof.layers[2].fwd_s
    assert 0 < sum(op.executed_flops for op in rec) <= prof.layers[2].fwd_flops
    # the template's own checkpoint region: only the layer's input is saved across the step
    assert ctx.profile_for(["none", "none", "full", "none"]).layers[2].role_tids == {}
    base = evaluate(ctx, "none", _keep(ctx.num_layers))
    assert res.step_time_s == pytest.approx(base.step_time_s + rec_s, rel=1e-9)
    assert res.mfu < base.mfu  # recompute is not model FLOPs


def test_synchronous_offload_exposes_every_copy(ctx):
    prof = ctx.profile("none")
    sync = RoleAction(action="offload", alpha_frac=1.0, stream="compute")
    layers = [LayerPlan(layer=lp.layer, input="offload", input_stream="compute",
                        roles={r: sync for r in lp.role_tids}) for lp in prof.layers]
    res = evaluate(ctx, "offload_all", layers)
    link = ctx.node.host_link(0)
    expected = 0.0
    for tr in res.applied.transfers:
        fit = copy_fit(link=link, direction=tr.direction, profile=ctx.node.profile)
        expected += fit.latency_s + tr.num_bytes / fit.bandwidth_bytes_per_s
    assert res.replay.stall_s == pytest.approx(expected, rel=1e-6)
    base = evaluate(ctx, "none", _keep(ctx.num_layers))
    assert res.step_time_s == pytest.approx(base.step_time_s + expected, rel=1e-6)


def test_copies_of_gpus_behind_one_switch_share_its_uplink():
    one = _ctx(hardware="8xA800", par={"tp": 2, "sequence_parallel": True}, seq="64K", layers=3)
    rates = one.rates
    link = one.node.host_link(0)
    alone = copy_fit(link=link, direction="d2h").bandwidth_bytes_per_s
    assert rates.num_gpus_sharing_host == 2
    assert rates.d2h_bytes_per_s == pytest.approx(alone / 2)


def test_token_recompute_holds_an_input_the_layer_does_not_save(ctx):
    # Hugging Face layers save an fp32 copy of their input, not the input: recomputing the layer
    # token-wise needs it, so the plan keeps it, as the executor does, until the layer's backward
    # is done (the executor drops the layer's saved state there).
    prof = ctx.profile("none")
    lp, nxt = prof.layers[1], prof.layers[2]
    assert lp.input_tids == () and len(lp.hold_tids) == 1 and lp.hold_bytes > 0
    (x,) = lp.hold_tids
    layers = _keep(ctx.num_layers)
    layers[1] = LayerPlan(layer=1, roles={r: RoleAction(action="recompute")
                                          for r in lp.role_tids if r not in ATTN_ROLES})
    applied = apply_plan(prof, layers)
    index = prof.workload._by_id()
    dropped = sum(allocator_rounded_bytes(index[t].num_bytes)
                  for r, ts in lp.role_tids.items() if r not in ATTN_ROLES for t in ts)
    base = walk_memory(prof.workload).timeline
    new = walk_memory(applied.workload)
    k = nxt.first_fwd  # no op was inserted before layer 1's backward stage
    assert new.timeline[k].live_bytes == base[k].live_bytes - dropped + allocator_rounded_bytes(lp.hold_bytes)
    (rec_op,) = [op for op in applied.workload.ops if op.phase == Phase.RECOMPUTE]
    new_index = applied.workload._by_id()
    assert not [t for t in rec_op.frees if new_index[t].name == index[x].name + ".held"]
    last_bwd = applied.workload.ops[applied.op_index[lp.last_bwd]]
    (held,) = [t for t in last_bwd.frees if new_index[t].name == index[x].name + ".held"]
    assert new_index[held].num_bytes == lp.hold_bytes
    assert new_index[x].num_bytes == 0


def test_a_partial_token_recompute_holds_the_whole_input(ctx):
    prof = ctx.profile("none")
    lp = prof.layers[1]
    layers = _keep(ctx.num_layers)
    layers[1] = LayerPlan(layer=1, input="offload",
                          roles={r: RoleAction(action="offload", alpha_frac=0.75)
                                 for r in lp.role_tids if r not in ATTN_ROLES})
    applied = apply_plan(prof, layers)
    index = applied.workload._by_id()
    (x,) = lp.hold_tids
    names = {index[t].name: index[t].num_bytes for t in index}
    base = index[x].name
    # a quarter of the tokens are recomputed: the executor keeps the whole input to recompute
    # them from (its input entry), here offloaded with the rest
    assert names[base + ".held"] == 0
    assert names[base + ".held.offloaded"] == names[base + ".held.prefetched"] == lp.hold_bytes
    assert index[x].num_bytes == 0
    walk_memory(applied.workload)  # a consistent allocation sequence


def test_prefetch_at_the_attention_block_comes_back_later_and_holds_less():
    """``prefetch_at="attention"``: layer 0's bytes come back when layer 1's backward reaches
    o_proj's backward (the MLP block's activations are free by then), not at its start."""
    from dataclasses import replace

    ctx = _ctx(layers=3)
    prof = ctx.profile("none")
    whole = RoleAction(action="offload", alpha_frac=1.0)
    layers = _keep(3)
    layers[0] = LayerPlan(layer=0, roles={r: whole for r in prof.layers[0].role_tids})
    early = apply_plan(prof, layers)
    late = apply_plan(prof, layers, prefetch_at="attention")
    (h2d_early,) = [t for t in early.transfers if t.direction == "h2d"]
    (h2d_late,) = [t for t in late.transfers if t.direction == "h2d"]
    assert late.workload.ops[h2d_late.ready_op].name == "layers.1.attn.o_proj.backward"
    assert early.workload.ops[h2d_early.ready_op].name.startswith("layers.1.mlp_residual")
    assert h2d_late.ready_op > h2d_early.ready_op
    lp1 = prof.layers[1]
    assert lp1.first_bwd < lp1.first_attn_bwd and lp1.mlp_bwd_s > 0
    assert walk_memory(late.workload).peak_bytes <= walk_memory(early.workload).peak_bytes
    res = evaluate(replace(ctx, prefetch_at="attention"), "x", layers)
    assert res.plan.prefetch_at == "attention" and '"prefetch_at": "attention"' in res.plan.to_json()
    assert '"prefetch_at": "layer"' in evaluate(ctx, "x", layers).plan.to_json()  # v2 writes every field
