"""The whole training step: the chunked LM head and tiled MLP in the templates (hand counts), model
states off HBM in the replay (bytes over the link, the CPU step under the backward), and the
whole-step search for Llama-3.1-8B at 128K and 1M tokens on the reference box."""

import pytest

from hwmodels.catalog import load_node
from hwmodels.units import GiB
from planners.plan import LayerPlan, ModelStatePlacement, RoleAction
from planners.swap import PlanContext, evaluate
from planners.swap.whole import Miss, nearest_miss, plan_whole_step
from simulator.job import TrainJob
from simulator.model import get_model
from simulator.templates import training_workload
from simulator.workload import Phase, Role, walk_memory

T = 4096  # tokens of the toy steps
BOX = "1xH200-box"
STREAMED = ModelStatePlacement(params="host", params_prefetch_layers=1, grads="host", optimizer_states="host",
                               master_weights="host", optimizer_step="cpu")
CPU_STEP = ModelStatePlacement(grads="host", optimizer_states="host", master_weights="host", optimizer_step="cpu")


def _toy(num_layers=2):
    return get_model("llama-3.2-1b").with_layers(num_layers)


def _live_at(wl, name: str) -> tuple[int, int]:
    """Live bytes (unrounded) just before op ``name`` and just after it allocated."""
    walk = walk_memory(wl, rounded=False).timeline
    k = next(j for j, p in enumerate(walk) if p.op_name == name)
    before = walk[k - 1].live_bytes - sum(t.num_bytes for t in _frees(wl, k - 1))
    return before, walk[k].live_bytes


def _frees(wl, k):
    index = wl._by_id()
    return [index[t] for t in wl.ops[k].frees]


def test_chunked_loss_holds_one_chunks_logits_dh_and_the_fp32_head_gradient():
    m = _toy()
    h, V, C = m.hidden_size, m.vocab_size, 8
    c = T // C
    wl = training_workload(m, TrainJob(seq_len=T, optimizer="none"), None, lm_head_chunks=C)
    before, during = _live_at(wl, "loss.fused_linear_ce")
    # dh (bf16), dW (fp32), the loss scalar, and the larger of a chunk's fp32 logits with
    # logsumexp's fp32 temporary and the previous chunk's bf16 gradient, and the chunk's bf16
    # gradient beside dW's bf16 product and its fp32 copy
    assert during - before == T * h * 2 + V * h * 4 + 4 + max(10 * c * V, 2 * c * V + 6 * V * h)
    long = training_workload(m, TrainJob(seq_len=16 * T, optimizer="none"), None, lm_head_chunks=C)
    before, during = _live_at(long, "loss.fused_linear_ce")  # chunks of 8K tokens: the logits' term
    assert during - before == 16 * T * h * 2 + V * h * 4 + 4 + 10 * (16 * c) * V
    logits = (Role.LOGITS, Role.LOGITS_FP32)
    assert not any(t.role in logits for t in wl.tensors)  # the logits never exist whole
    whole = training_workload(m, TrainJob(seq_len=T, optimizer="none"), None)
    assert any(t.role in logits and t.num_bytes == T * V * 4 for t in whole.tensors)  # HF's fp32 logits


def test_tiled_mlp_saves_only_the_block_input_and_runs_one_more_mlp_forward():
    m = _toy(num_layers=2)
    h, f = m.hidden_size, m.intermediate_size
    job = TrainJob(seq_len=T, optimizer="none")
    plain = training_workload(m, job, None)
    tiled = training_workload(m, job, None, mlp_chunks={0: 4, 1: 4})
    # eager HF saves the post-attention norm's fp32 input (4), rstd, its bf16 normed (2) and
    # output (2), gate, up, silu and the product (4 x 2 per intermediate element); the tiled
    # block saves its bf16 input (2), per layer
    drop_per_layer = T * h * (4 + 2 + 2 - 2) + T * 4 + 4 * T * f * 2
    live = {name: walk_memory(wl, rounded=False).timeline for name, wl in (("plain", plain), ("tiled", tiled))}
    start = {name: next(p.live_bytes for p in tl if p.op_name == "backward.start") for name, tl in live.items()}
    assert start["plain"] - start["tiled"] == m.num_layers * drop_per_layer
    op = next(o for o in tiled.ops if o.name == "layers.0.mlp.tiled" and o.phase == Phase.FWD)
    back = next(o for o in tiled.ops if o.name == "layers.0.mlp.tiled.backward")
    assert op.flops == 2 * T * 3 * h * f  # gate, up, down
    assert back.flops == 3 * op.flops  # the recomputed forward, then the backward's two GEMMs each


def _ctx(model, seq_len, states, *, node=BOX, **kw):
    n = load_node(node)
    return PlanContext(model=model, job=TrainJob(seq_len=seq_len), node=n, gpu_budget_bytes=n.gpu.hbm_capacity_bytes,
                       host_budget_bytes=n.host_memory.capacity_bytes, states=(states,) * model.num_layers, **kw)


def _layer_weight_bytes(ctx) -> int:
    wl = ctx.template(("none",) * ctx.num_layers)
    return sum(t.num_bytes for t in wl.tensors if t.role == Role.WEIGHT and t.persistent and t.layer is not None)


def test_streamed_parameters_cross_the_link_twice_per_step():
    ctx = _ctx(_toy(4), T, STREAMED)
    res = evaluate(ctx, "x", [LayerPlan(layer=i) for i in range(4)])
    sim = res.replay.sim
    fetched = sum(t.num_bytes for t in sim.schedule.tasks if t.stream == "gpu0.params")
    assert fetched == 2 * _layer_weight_bytes(ctx)  # forward and backward, no activation copies here
    h2d = next(lk for lk in sim.links if lk.name == "cpu0>gpu0")
    assert h2d.bytes_moved == pytest.approx(fetched, rel=1e-9)
    assert res.plan.prediction.tier_peak_bytes["host"] >= _layer_weight_bytes(ctx)  # the host pool
    assert not res.plan.unsupported()


def test_cpu_step_runs_under_the_backward():
    ctx = _ctx(_toy(4), 32768, CPU_STEP)
    res = evaluate(ctx, "x", [LayerPlan(layer=i, checkpoint="full") for i in range(4)])
    sim = res.replay.sim
    tasks = sim.schedule.tasks
    steps = [t.tid for t in tasks if t.name.startswith("cpu_adamw")]
    compute_end = max(sim.task_end_s[t.tid] for t in tasks if t.stream == "gpu0.compute")
    assert len(steps) == 4
    assert sum(sim.task_end_s[s] < compute_end for s in steps) == 3  # all but layer 0's under backward
    last = max(steps, key=lambda s: sim.task_end_s[s])
    assert tasks[last].layer == 0
    def took(name):
        return next(sim.task_end_s[t.tid] - sim.task_start_s[t.tid] for t in tasks if t.name == name)

    # after the compute stream, at most layer 0's gradient copy, its CPU step and its parameters'
    # copy back are left, not the four steps
    tail = sim.step_time_s - compute_end
    chain = took("grads layers.0") + took("cpu_adamw layers.0") + took("updated_params layers.0")
    assert 0 < tail <= chain + 1e-9
    assert chain < sum(sim.task_end_s[s] - sim.task_start_s[s] for s in steps)


def test_segment_checkpoint_recomputes_the_inputs_from_the_head():
    ctx = _ctx(_toy(4), T, CPU_STEP)
    layers = [LayerPlan(layer=0, checkpoint="full"), *(LayerPlan(layer=i, checkpoint="full", input="recompute")
                                                        for i in range(1, 4))]
    res = evaluate(ctx, "x", layers)
    op = next(o for o in res.applied.workload.ops if o.name == "layers.0-2.segment_recompute")
    prof = ctx.profile("full")
    assert op.time_s == pytest.approx(sum(lp.fwd_s for lp in prof.layers[:3]))
    index = res.applied.workload._by_id()
    assert sum(index[t].num_bytes for t in op.allocs) == sum(lp.input_bytes for lp in prof.layers[1:])
    every = evaluate(ctx, "y", [LayerPlan(layer=i, checkpoint="full") for i in range(4)])
    assert res.feasible and res.replay.recompute_s == pytest.approx(every.replay.recompute_s + op.time_s)
    assert res.peak_hbm_bytes < every.peak_hbm_bytes


@pytest.mark.slow
def test_llama_8b_at_128k_on_one_h200_has_a_plan():
    node = load_node(BOX)
    ctx = PlanContext(model=get_model("llama-3.1-8b"), job=TrainJob(seq_len=128 * 1024), node=node,
                      gpu_budget_bytes=node.gpu.hbm_capacity_bytes, host_budget_bytes=node.host_memory.capacity_bytes)
    res = plan_whole_step(ctx, time_limit_s=60)
    assert res.feasible, res.reason
    pred = res.plan.prediction
    assert pred.feasible and pred.peak_hbm_bytes <= node.gpu.hbm_capacity_bytes
    assert res.plan.lm_head_chunks > 1 and not res.plan.unsupported()


@pytest.mark.slow
def test_llama_8b_at_1m_fits_the_host_and_the_disk():
    node = load_node(BOX)
    ctx = PlanContext(model=get_model("llama-3.1-8b"), job=TrainJob(seq_len=1024 * 1024), node=node,
                      gpu_budget_bytes=node.gpu.hbm_capacity_bytes, host_budget_bytes=node.host_memory.capacity_bytes)
    res = plan_whole_step(ctx, time_limit_s=60)
    assert res.feasible, res.reason
    peaks = res.plan.prediction.tier_peak_bytes
    assert peaks["host"] <= 125 * GiB and peaks["nvme"] <= 64 * GiB and peaks["hbm"] <= node.gpu.hbm_capacity_bytes
    assert any(lp.input == "recompute" for lp in res.plan.layers)  # segment checkpoints
    assert not res.plan.unsupported()


def test_activations_offloaded_to_nvme_cross_the_drive_and_share_it_with_the_states():
    ctx = _ctx(_toy(4), T, ModelStatePlacement(grads="host", optimizer_states="nvme", master_weights="nvme",
                                               optimizer_step="cpu"))
    prof = ctx.profile("none")
    to_disk = RoleAction(action="offload", alpha_frac=1.0, tier="nvme")
    layers = [LayerPlan(layer=i, roles={"mlp_hidden": to_disk} if i < 2 else {}) for i in range(4)]
    res = evaluate(ctx, "x", layers)
    sim = res.replay.sim
    off = sum(prof.layers[i].role_tids and sum(prof.workload.tensor(t).num_bytes
                                                for t in prof.layers[i].role_tids["mlp_hidden"]) for i in range(2))
    write = next(lk for lk in sim.links if lk.name == "nvme0.write")
    states = res.plan.prediction.tier_peak_bytes["nvme"] - off
    # the activations' D2H copies and the states' write-back share the drive's write rate
    assert write.bytes_moved == pytest.approx(off + states, rel=1e-6)
    assert res.plan.prediction.tier_peak_bytes["nvme"] == off + ctx.states_applied(["none"] * 4).tier_bytes["nvme"]
    assert not res.plan.unsupported() and res.plan.unexecuted().startswith("layers.0.")


def test_nothing_fits_names_the_nearest_miss_and_its_constraint_in_one_line():
    misses = [Miss("a", "HBM at least 90 GiB > 80 GiB gpu budget", 0.125),
              Miss("b", "host 101 GiB > 100 GiB host budget", 0.01), Miss("c", "not replayed")]
    assert nearest_miss(misses) == ("nearest miss b: host 101 GiB > 100 GiB host budget, 1.0% over "
                                    "(2 other combinations further off)")
    node = load_node(BOX)
    ctx = PlanContext(model=_toy(), job=TrainJob(seq_len=T), node=node, gpu_budget_bytes=2 * GiB,
                      host_budget_bytes=node.host_memory.capacity_bytes)
    res = plan_whole_step(ctx, time_limit_s=30)
    assert not res.feasible
    assert "no combination fits: nearest miss " in res.reason and "over" in res.reason
    assert "\n" not in res.reason


def test_the_search_places_the_states_on_a_cxl_card_where_the_node_has_one():
    from planners.swap.whole import placements

    def names(node):
        ctx = PlanContext(model=_toy(), job=TrainJob(seq_len=T), node=node, gpu_budget_bytes=80 * GiB,
                          host_budget_bytes=100 * GiB)
        return [n for n, _ in placements(ctx)]

    tiered = names(load_node("1xH200-tiered"))
    assert tiered.index("streamed_params_states_host") < tiered.index("streamed_params_states_cxl") \
        < tiered.index("streamed_params_states_nvme")
    assert "cpu_step_states_cxl" in tiered
    assert not any("cxl" in n for n in names(load_node(BOX)))
