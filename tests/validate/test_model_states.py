"""Whole-model plans on the CPU (the CPU as both sides of every copy, the same code as on the
GPU): one and two training steps with streamed parameters, gradients to the host, the CPU AdamW
step, optimizer states in O_DIRECT files, the chunked LM head and the tiled MLP give the
parameters of the plain recipe (the reference decoder, unchunked, and torch.optim.AdamW over
fp32 copies of the parameters); bad placements and machines too small are refused in one line."""

import pytest
import torch

from hwmodels.catalog import load_node
from hwmodels.units import UserInputError
from planners.plan import LayerPlan, ModelStatePlacement, Plan, Provenance, RoleAction
from simulator.job import TrainJob
from simulator.model import ModelSpec, get_model
from simulator.scenario import Scenario
from validate.executor import PlanExecutor, check_fits, executor_unsupported
from validate.model import build_model, make_batch
from validate.model_states import ADAMW_LR, DirectFile, ModelStates, make_optimizer

SEQ = 24
HOST_CPU = ModelStatePlacement(params="host", params_prefetch_layers=1, grads="host",
                               optimizer_states="host", master_weights="host", optimizer_step="cpu")
NVME_CPU = ModelStatePlacement(params="host", params_prefetch_layers=1, grads="host",
                               optimizer_states="nvme", master_weights="nvme", optimizer_step="cpu")
RESIDENT_CPU = ModelStatePlacement(grads="host", optimizer_states="nvme", master_weights="host",
                                   optimizer_step="cpu")


def tiny_spec(layers: int = 4) -> ModelSpec:
    s = get_model("llama-3.2-1b")
    return ModelSpec.model_validate({**s.model_dump(), "num_layers": layers, "hidden_size": 64,
                                     "intermediate_size": 160, "num_heads": 4, "num_kv_heads": 2,
                                     "head_dim": 16, "vocab_size": 1000, "tie_word_embeddings": False})


def whole_plan(spec: ModelSpec, layers: list[LayerPlan], *, master_weights: bool = True,
               optimizer: str = "adamw", lm_head_chunks: int = 1, rmsnorm: str = "eager") -> Plan:
    job = TrainJob(seq_len=SEQ, optimizer=optimizer, master_weights=master_weights, rmsnorm=rmsnorm)
    scenario = Scenario.build(spec, job, load_node("1xH200-tiered"), gpu_budget_bytes=1 << 30,
                              host_budget_bytes=1 << 30)
    return Plan.for_scenario(scenario, layers=layers, lm_head_chunks=lm_head_chunks,
                             provenance=Provenance(tierplan_version="test", planner="test"))


def every_mechanism(spec: ModelSpec) -> list[LayerPlan]:
    off = RoleAction(action="offload", alpha_frac=0.5, keep_frac=0.25)
    return [LayerPlan(layer=0, model_states=HOST_CPU, mlp_chunks=3, roles={"mlp_hidden": off}),
            LayerPlan(layer=1, model_states=NVME_CPU, mlp_chunks=2, input="offload"),
            LayerPlan(layer=2),  # resident, stepped on the device
            LayerPlan(layer=3, model_states=RESIDENT_CPU, checkpoint="full")][: spec.num_layers]


def reference(spec: ModelSpec, *, steps: int, master_weights: bool, rmsnorm: str = "eager") -> list[torch.Tensor]:
    """The plain recipe: the unchunked decoder, torch.optim.AdamW over fp32 copies."""
    model = build_model(spec, seed=3)
    model.set_rmsnorm(rmsnorm)
    batch = make_batch(spec, seq_len=SEQ, seed=4)
    params = list(model.parameters())
    masters = [p.detach().float() for p in params]
    opt = make_optimizer(masters, kind="adamw")
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        model(batch).backward()
        for m, p in zip(masters, params, strict=True):
            m.grad = p.grad.float()
        opt.step()
        with torch.no_grad():
            for m, p in zip(masters, params, strict=True):
                p.copy_(m)
                if not master_weights:
                    m.copy_(p)
    return [p.detach().clone() for p in params]


def executed(spec, plan, *, steps, state_dir) -> tuple[list[torch.Tensor], PlanExecutor]:
    model = build_model(spec, seed=3)
    batch = make_batch(spec, seq_len=SEQ, seed=4)
    ex = PlanExecutor(model, plan, device="cpu", state_dir=state_dir)
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        ex.step(batch)
    out = []  # parameters streamed from the host are read where they live between steps
    for ls in ex.states.layers:
        if ls.host_params and ls.stream_pos is not None:
            with torch.no_grad():
                for p, hp in zip(ls.params, ls.host_params, strict=True):
                    p.data = hp.clone()
    out = [p.detach().clone() for p in model.parameters()]
    ex.close()
    return out, ex


def assert_step_close(got, ref, init, *, steps):
    """bf16 tolerance of the step: each parameter moves by about lr per step (Adam's first step
    is lr x sign(g)); a gradient within bf16 rounding of zero may take the other sign, so an
    element may differ by up to 2 lr per step plus two bf16 roundings of the parameter; the
    rest (at least 97% of the elements) within two bf16 roundings."""
    for g, r, p0 in zip(got, ref, init, strict=True):
        ulp = 2.0**-7 * r.float().abs().clamp_min(1e-3)
        diff = (g.float() - r.float()).abs()
        assert float((diff - 2 * ulp - 2 * ADAMW_LR * steps).max()) <= 0
        assert float((diff <= 2 * ulp).float().mean()) >= 0.97
        if float(p0.float().abs().max()) < 0.5:  # (a norm weight at 1 moves under one bf16 step)
            assert float((r.float() - p0.float()).abs().max()) > 0.5 * ADAMW_LR  # the step moved it


@pytest.mark.parametrize(("master_weights", "steps"), [(True, 2), (False, 1)])
def test_every_mechanism_gives_the_plain_recipes_parameters(tmp_path, master_weights, steps):
    spec = tiny_spec()
    init = [p.detach().clone() for p in build_model(spec, seed=3).parameters()]
    plan = whole_plan(spec, every_mechanism(spec), master_weights=master_weights, lm_head_chunks=3)
    assert executor_unsupported(plan) == ""
    got, ex = executed(spec, plan, steps=steps, state_dir=tmp_path)
    ref = reference(spec, steps=steps, master_weights=master_weights)
    assert_step_close(got, ref, init, steps=steps)
    # layers 1 and 3 keep their moments in files, layer 1 its master weights too when the job
    # keeps master weights (without them there are none to keep): 2 (+ 1) fp32 copies
    n1 = sum(p.numel() for p in build_model(spec, seed=3).layers[1].parameters())
    copies = 2 + master_weights
    assert (tmp_path / "layer0001.states").stat().st_size == -(-copies * 4 * n1 // 4096) * 4096
    assert sorted(f.name for f in tmp_path.iterdir()) == ["layer0001.states", "layer0003.states"]


def test_segments_with_streamed_parameters_and_the_fused_norm_give_the_recipes_parameters(tmp_path):
    """The whole-step planner's 1M combination, small: segment checkpoints (a kept and an
    offloaded head), parameters streamed through two slots (the segment's recompute runs
    layers whose slot holds the last layer's weights, fetched again after it), CPU AdamW with
    states on the host and in files, the tiled MLP, the chunked head, the fused norm."""
    spec = tiny_spec(layers=5)
    init = [p.detach().clone() for p in build_model(spec, seed=3).parameters()]
    full = dict(checkpoint="full", mlp_chunks=2)
    layers = [LayerPlan(layer=0, model_states=HOST_CPU, **full),
              LayerPlan(layer=1, model_states=NVME_CPU, input="recompute", **full),
              LayerPlan(layer=2, model_states=NVME_CPU, input="recompute", **full),
              LayerPlan(layer=3, model_states=NVME_CPU, input="offload", **full),
              LayerPlan(layer=4, model_states=HOST_CPU, input="recompute", **full)]
    plan = whole_plan(spec, layers, lm_head_chunks=3, rmsnorm="fused")
    assert executor_unsupported(plan) == "" and plan.unexecuted() == ""
    # the recomputed inputs are the forward's, bitwise (the step's tolerance would not tell:
    # Adam moves a parameter by about lr whatever its gradient)
    model = build_model(spec, seed=3)
    ex = PlanExecutor(model, plan, device="cpu", state_dir=tmp_path / "check")
    (tmp_path / "check").mkdir()
    seen: dict[int, torch.Tensor] = {}
    same: list[tuple[int, bool]] = []
    layer_fn, seg = ex._layer, ex._segment_inputs

    def spy_layer(i, layer, x, rope):
        seen[i] = x.detach().clone()
        return layer_fn(i, layer, x, rope)

    def spy_seg(last):
        seg(last)
        same.extend((j, torch.equal(x, seen[j])) for j, x in ex._seg_inputs.items())

    ex._layer, ex._segment_inputs = spy_layer, spy_seg
    ex.step(make_batch(spec, seq_len=SEQ, seed=4))
    ex.close()
    assert same == [(4, True), (1, True), (2, True)]
    got, ex = executed(spec, plan, steps=2, state_dir=tmp_path)
    assert ex.states.num_slots == 2
    ref = reference(spec, steps=2, master_weights=True, rmsnorm="fused")
    assert_step_close(got, ref, init, steps=2)


def test_resident_plan_with_adamw_equals_the_recipe_exactly():
    spec = tiny_spec(layers=2)
    init = [p.detach().clone() for p in build_model(spec, seed=3).parameters()]
    plan = whole_plan(spec, [LayerPlan(layer=0), LayerPlan(layer=1)])
    got, _ = executed(spec, plan, steps=1, state_dir=None)
    ref = reference(spec, steps=1, master_weights=True)
    for g, r in zip(got, ref, strict=True):
        assert torch.equal(g, r)
    assert any(not torch.equal(r, p0) for r, p0 in zip(ref, init, strict=True))


def test_the_device_step_keeps_no_fp32_copy_between_steps():
    # without master weights the step makes one parameter's fp32 copy at a time; none may outlive
    # it (the optimizer's group held the last one, the head's 1.96 GiB at 8B, into the next step)
    spec = tiny_spec(layers=2)
    plan = whole_plan(spec, [LayerPlan(layer=0), LayerPlan(layer=1)], master_weights=False)
    _, ex = executed(spec, plan, steps=1, state_dir=None)
    assert ex.states is not None and ex.states._gpu_opt is not None
    kept = [t for g in ex.states._gpu_opt.param_groups for t in g["params"]]
    assert not [t for t in kept if t.dtype == torch.float32 and t.numel()]


def test_streamed_parameters_live_in_rotating_slots():
    spec = tiny_spec()
    layers = [LayerPlan(layer=i, model_states=HOST_CPU) for i in range(4)]
    model = build_model(spec, seed=3)
    ex = PlanExecutor(model, whole_plan(spec, layers), device="cpu")
    ex.prepare(make_batch(spec, seq_len=SEQ, seed=4))
    st = ex.states
    assert st.num_slots == 2  # one layer running, one ahead
    ptrs = [model.layers[i].o_proj.weight.data_ptr() for i in range(4)]
    assert ptrs[0] == ptrs[2] and ptrs[1] == ptrs[3] and ptrs[0] != ptrs[1]
    ex.close()


def test_direct_file_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    import mmap
    import os

    f = DirectFile(tmp_path / "layer0000.states", 5000)
    assert f.nbytes == 8192
    buf = mmap.mmap(-1, 8192)
    buf[:4] = b"abcd"
    f.write(memoryview(buf), where="layers.0")
    back = mmap.mmap(-1, 8192)
    f.read(memoryview(back), where="layers.0")
    assert back[:4] == b"abcd"

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(UserInputError, match="cannot write .*No space left on device"):
        f.write(memoryview(buf), where="layers.0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer0000.states"]  # the old file stays


def test_unsupported_placements_are_refused_in_one_line():
    spec = tiny_spec(layers=1)
    gpu_off = ModelStatePlacement(params="host", params_prefetch_layers=1)
    assert executor_unsupported(whole_plan(spec, [LayerPlan(layer=0, model_states=gpu_off)])).startswith(
        "layers.0.model_states.optimizer_step: a GPU step with model states off HBM")
    cxl = ModelStatePlacement(grads="host", optimizer_states="cxl", master_weights="host", optimizer_step="cpu")
    assert "optimizer_states: cxl is not executed yet" in executor_unsupported(
        whole_plan(spec, [LayerPlan(layer=0, model_states=cxl)]))
    none = whole_plan(spec, [LayerPlan(layer=0, model_states=HOST_CPU)], optimizer="none")
    with pytest.raises(UserInputError, match="optimizer is none"):
        PlanExecutor(build_model(spec), none, device="cpu")
    with pytest.raises(UserInputError, match="need a state directory"):
        PlanExecutor(build_model(spec), whole_plan(spec, [LayerPlan(layer=0, model_states=NVME_CPU)]),
                     device="cpu")


def test_a_machine_too_small_is_refused_before_a_step(tmp_path):
    spec = tiny_spec(layers=2)
    plan = whole_plan(spec, [LayerPlan(layer=0, model_states=HOST_CPU), LayerPlan(layer=1, model_states=NVME_CPU)])
    st = ModelStates(build_model(spec), plan, device=torch.device("cpu"), state_dir=tmp_path)
    n = sum(p.numel() for p in build_model(spec).layers[0].parameters())
    assert st.disk_bytes() == -(-3 * 4 * n // 4096) * 4096  # moments and master weights of layer 1
    host = st.host_bytes()
    check_fits(plan, num_layers=2, model_state_host_bytes=host, host_available_bytes=host)
    with pytest.raises(UserInputError, match="model states on the host .* exceeds available host memory"):
        check_fits(plan, num_layers=2, model_state_host_bytes=host, host_available_bytes=host - 1)
    with pytest.raises(UserInputError, match="state files .* exceed the free space"):
        check_fits(plan, num_layers=2, disk_bytes=st.disk_bytes(), disk_free_bytes=4096)


def test_run_plan_refuses_a_host_too_small_before_a_step(tmp_path, monkeypatch):
    import validate.run_plan as rp

    spec = tiny_spec(layers=2)
    plan = whole_plan(spec, [LayerPlan(layer=0, model_states=HOST_CPU), LayerPlan(layer=1, model_states=NVME_CPU)])
    monkeypatch.setattr(rp, "host_memory_bytes", lambda: 1 << 20)
    steps = []
    monkeypatch.setattr(rp, "time_steps", lambda *a, **k: steps.append(1) or [1.0])
    case = rp.run_case("small-host", plan, device=torch.device("cpu"), warmup=1, repeats=1, smoke=True,
                       state_dir=tmp_path / "states")
    assert case["status"] == "refused" and not steps
    assert "model states on the host" in case["message"] and "exceeds available host memory 1.00 MiB" in case["message"]
    assert case["model_states"]["disk_bytes"] > 0


@pytest.mark.parametrize("master_weights", [True, False])
def test_the_executors_state_bytes_are_what_the_planner_counts(tmp_path, master_weights):
    """The host and disk bytes the executor holds for CPU-stepped layers (its sizing, which
    check_fits certifies) are the planner's (planners.swap.states): fp32 master weights only when
    the job keeps them, one staging buffer, one layer's fp32 scratch."""
    from planners.swap.states import apply_model_states
    from simulator.templates import training_workload

    spec = tiny_spec(layers=3)
    layers = [LayerPlan(layer=0, model_states=HOST_CPU), LayerPlan(layer=1, model_states=NVME_CPU),
              LayerPlan(layer=2, model_states=NVME_CPU)]
    plan = whole_plan(spec, layers, master_weights=master_weights)
    st = ModelStates(build_model(spec), plan, device=torch.device("cpu"), state_dir=tmp_path)
    sc = plan.scenario
    applied = apply_model_states(training_workload(sc.model, sc.job, sc.node), [lp.model_states for lp in layers])
    want_host = applied.tier_bytes["host"]
    slack = 512 * sum(1 for _ in build_model(spec).layers[0].parameters()) * 3 * 2  # executor's alignment
    assert abs(st.host_bytes() - want_host) <= slack
    assert abs(st.disk_bytes() - applied.tier_bytes["nvme"]) <= 2 * 4096
    n = sum(p.numel() for p in build_model(spec).layers[1].parameters())
    assert st.disk_bytes() == 2 * (-(-(2 + master_weights) * 4 * n // 4096) * 4096)


def test_the_first_cpu_step_makes_its_moments_in_the_staging_buffer(tmp_path, monkeypatch):
    """The one staging buffer the planner counts is all a layer's states on nvme ever take on the
    host: on the first step too, AdamW steps moments that already live there (zeros) rather
    than making its own and copying them in."""
    spec = tiny_spec(layers=2)
    plan = whole_plan(spec, [LayerPlan(layer=0, model_states=NVME_CPU), LayerPlan(layer=1, model_states=NVME_CPU)])
    seen: list[bool] = []
    store = ModelStates._store_states

    def checked(self, ls, views, where):
        seen.extend(st[name].data_ptr() == views[name][k].data_ptr()
                    for k, st in enumerate(ls.states) for name in ("exp_avg", "exp_avg_sq"))
        return store(self, ls, views, where)

    monkeypatch.setattr(ModelStates, "_store_states", checked)
    executed(spec, plan, steps=2, state_dir=tmp_path)
    n = sum(1 for _ in build_model(spec).layers[0].parameters())
    assert len(seen) == 2 * 2 * 2 * n and all(seen)  # two steps, two layers, two moments each
