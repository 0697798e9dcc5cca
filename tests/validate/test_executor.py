"""The plan executor on the CPU (the CPU as both sides of every copy): gradients equal the
no-plan baseline, bitwise where nothing is recomputed; bad plans are refused with one line."""

import pytest
import torch
from plan_support import plan_for

from hwmodels.catalog import load_node
from hwmodels.units import UserInputError
from planners.plan import LayerPlan, Plan, Provenance, RoleAction
from simulator.job import TrainJob
from simulator.model import ModelSpec, get_model
from simulator.workload import Role
from validate.executor import PlanExecutor, check_fits
from validate.model import SwiGLUDown, build_model, make_batch
from validate.run_plan import SMOKE_SHAPE

SEQ = 24
ROLES = ("layer_input", "norm_out", "norm_stat", "attn_qkv", "attn_out", "mlp_hidden")


def tiny(preset: str, layers: int = 3) -> ModelSpec:
    s = get_model(preset)
    kv = 2 if s.num_kv_heads != s.num_heads else 4
    return ModelSpec.model_validate(
        {**s.model_dump(), **SMOKE_SHAPE, "num_layers": layers, "num_kv_heads": kv}
    )


def plan_of(layers: list[LayerPlan], lookahead: int = 1) -> Plan:
    return plan_for(layers, prefetch_lookahead_layers=lookahead)


def offload(alpha: float, keep: float = 0.0) -> RoleAction:
    return RoleAction(action="offload", alpha_frac=alpha, keep_frac=keep)


def grads(spec: ModelSpec, plan: Plan | None, dtype=torch.bfloat16, rmsnorm: str = "eager") -> list[torch.Tensor]:
    model = build_model(spec, dtype=dtype, seed=3)
    batch = make_batch(spec, seq_len=SEQ, dtype=dtype, seed=4)
    if plan is None:
        model.set_rmsnorm(rmsnorm)
        model(batch).backward()
    else:
        ex = PlanExecutor(model, plan, device="cpu")
        ex.step(batch)
        assert ex.pool.used_bytes == 0
    out = [p.grad.clone() for p in model.parameters()]
    if batch.requires_grad:
        out.append(batch.grad.clone())
    return out


def assert_bitwise(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.fixture(scope="module", params=["probe-llama7b-stack", "llama-3.2-1b"])
def spec_and_base(request):
    spec = tiny(request.param)
    return spec, grads(spec, None)


def test_whole_role_offload_is_bitwise(spec_and_base):
    spec, base = spec_and_base
    roles = {r: offload(1.0) for r in ROLES}
    layers = [
        LayerPlan(layer=0, input="offload", roles=roles),
        LayerPlan(layer=1, roles=roles),
        LayerPlan(layer=2),
    ]
    assert_bitwise(grads(spec, plan_of(layers)), base)


def test_token_split_offload_keep_is_bitwise(spec_and_base):
    spec, base = spec_and_base
    roles = {r: offload(0.625, 0.375) for r in ROLES}
    layers = [LayerPlan(layer=i, roles=roles) for i in range(3)]
    assert_bitwise(grads(spec, plan_of(layers, lookahead=2)), base)


def test_recompute_and_partial_offload_match(spec_and_base):
    spec, base = spec_and_base
    layers = [
        LayerPlan(layer=0, roles={r: offload(0.5, 0.25) for r in ROLES}),
        LayerPlan(
            layer=1, input="offload", roles={r: RoleAction(action="recompute") for r in ROLES}
        ),
        LayerPlan(layer=2, roles={"mlp_hidden": RoleAction(action="recompute", keep_frac=0.5)}),
    ]
    got = grads(spec, plan_of(layers))
    for x, y in zip(got, base, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)  # the CPU replays the same kernels


def test_checkpoints_match(spec_and_base):
    spec, base = spec_and_base
    layers = [
        LayerPlan(layer=0, checkpoint="full"),
        LayerPlan(layer=1, checkpoint="full", input="offload"),
        LayerPlan(layer=2, checkpoint="selective", input="offload"),
    ]
    for x, y in zip(grads(spec, plan_of(layers)), base, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_offload_really_leaves_the_layer():
    spec = tiny("probe-llama7b-stack")
    model = build_model(spec, dtype=torch.float32)
    batch = make_batch(spec, seq_len=SEQ, dtype=torch.float32)
    roles = {r: offload(1.0) for r in ROLES}
    ex = PlanExecutor(
        model,
        plan_of([LayerPlan(layer=i, input="offload", roles=roles) for i in range(3)]),
        device="cpu",
    )
    pool_bytes = ex.prepare(batch)
    h, f, T = 64, 96, SEQ
    # per layer, fp32, every token row, each base tensor once: input, mid residual, two norm
    # outputs, the fused qkv (q, k, v are views of it), the attention output (its [T, h]
    # reshape is a view); gate_up, silu, product (each a multiple of the pool's 512-byte
    # alignment). Untagged tensors (rstd, logsumexp) stay.
    per_layer = 4 * T * (h + h + 2 * h + 3 * h + h + 2 * f + f + f)
    assert pool_bytes == 3 * per_layer
    ex.step(batch)
    assert ex.pool.peak_bytes == pool_bytes


def test_wrong_layer_count_is_refused():
    spec = tiny("probe-llama7b-stack")
    model = build_model(spec, dtype=torch.float32)
    with pytest.raises(UserInputError, match=r"^plan.layers: 2 layers, the model has 3$"):
        PlanExecutor(model, plan_of([LayerPlan(layer=0), LayerPlan(layer=1)]), device="cpu")


def test_host_pool_and_gpu_budget_are_checked():
    p = plan_of([LayerPlan(layer=0)])
    with pytest.raises(UserInputError, match="exceeds available host memory"):
        check_fits(p, num_layers=1, host_pool_bytes=2 << 30, host_available_bytes=1 << 30)
    check_fits(p, num_layers=1, host_pool_bytes=1 << 20, host_available_bytes=1 << 30)


def test_small_pool_is_reported_not_overrun():
    spec = tiny("probe-llama7b-stack")
    model = build_model(spec, dtype=torch.float32)
    ex = PlanExecutor(
        model,
        plan_of([LayerPlan(layer=i, input="offload") for i in range(3)]),
        device="cpu",
        host_pool_bytes=4096,
    )
    with pytest.raises(UserInputError, match="offload pool of 4.00 KiB is full"):
        ex.step(make_batch(spec, seq_len=SEQ, dtype=torch.float32))


def test_compute_stream_copies_are_bitwise(spec_and_base):
    spec, base = spec_and_base
    sync = RoleAction(action="offload", alpha_frac=0.5, keep_frac=0.5, stream="compute")
    layers = [
        LayerPlan(layer=0, input="offload", input_stream="compute", roles={r: sync for r in ROLES}),
        LayerPlan(layer=1, roles={"mlp_hidden": sync, "attn_qkv": offload(1.0)}),
        LayerPlan(layer=2),
    ]
    assert_bitwise(grads(spec, plan_of(layers)), base)


def test_token_wise_recompute_runs_only_the_dropped_rows(spec_and_base, monkeypatch):
    """MEMO's layer plan (attention output offloaded, the rest partly kept, partly recomputed)
    recomputes from the input's and attention output's rows: no layer replay, T - r0 rows."""
    spec, base = spec_and_base
    other = RoleAction(action="recompute", keep_frac=0.25)
    roles = {r: other for r in ROLES if r != "attn_out"} | {"attn_out": offload(1.0)}
    layers = [LayerPlan(layer=i, roles=roles) for i in range(3)]

    def no_replay(self, st, layer):
        raise AssertionError("token-wise recompute expected")

    monkeypatch.setattr(PlanExecutor, "_replay_layer", no_replay)
    rows: list[int] = []
    model = build_model(spec, dtype=torch.bfloat16, seed=3)
    for layer in model.layers:
        layer.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[1]))
    batch = make_batch(spec, seq_len=SEQ, dtype=torch.bfloat16, seed=4)
    ex = PlanExecutor(model, plan_of(layers), device="cpu")
    ex.prepare(batch)  # sizing the pool runs one forward
    rows.clear()
    ex.step(batch)
    assert rows == [SEQ] * 3 + [SEQ - round(0.25 * SEQ)] * 3
    got = [p.grad for p in model.parameters()] + ([batch.grad] if batch.requires_grad else [])
    for x, y in zip(got, base, strict=True):
        torch.testing.assert_close(x, y, rtol=2e-2, atol=2e-3)
    stats = ex.last_stats()
    assert stats.d2h_bytes == stats.h2d_bytes > 0
    assert stats.d2h_busy_s is None  # no events on the CPU


def test_attention_recompute_falls_back_to_a_layer_replay(spec_and_base, monkeypatch):
    spec, base = spec_and_base
    calls: list[int] = []
    replay = PlanExecutor._replay_layer

    def spy(self, st, layer):
        calls.append(st.index)
        replay(self, st, layer)

    monkeypatch.setattr(PlanExecutor, "_replay_layer", spy)
    recompute_attention = {"attn_out": RoleAction(action="recompute")}
    layers = [LayerPlan(layer=0), LayerPlan(layer=1, roles=recompute_attention), LayerPlan(layer=2)]
    got = grads(spec, plan_of(layers))
    assert calls == [1]
    for x, y in zip(got, base, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_buffers_in_a_planned_arena_keep_the_gradients():
    """With ``arena=True`` the first step records the prefetch and assembly buffers, later steps
    take them at planned offsets inside one allocation; gradients equal the plain run's."""
    spec = tiny("probe-llama7b-stack")
    roles = {r: offload(0.5, 0.25) for r in ROLES}
    layers = [LayerPlan(layer=i, roles=roles) for i in range(3)]

    def run(arena: bool):
        model = build_model(spec, dtype=torch.float32, seed=3)
        batch = make_batch(spec, seq_len=SEQ, dtype=torch.float32, seed=4)
        ex = PlanExecutor(model, plan_of(layers), device="cpu", arena=arena)
        out = []
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            batch.grad = None
            ex.step(batch)
            out.append([p.grad.clone() for p in model.parameters()] + [batch.grad.clone()])
        return ex, out

    plain_ex, plain = run(False)
    ex, got = run(True)
    assert plain_ex.arena_stats() is None
    stats = ex.arena_stats()
    assert stats["status"] in ("optimal", "feasible")
    assert 0 < stats["lower_bound_bytes"] <= stats["capacity_bytes"]
    for a, b in zip(got, plain, strict=True):
        assert_bitwise(a, b)
    # a step that asks for other buffers (another length) falls back to ordinary tensors
    model = ex.model
    ex.step(make_batch(spec, seq_len=SEQ - 4, dtype=torch.float32, seed=4))
    assert ex.arena is None and "arena" in ex.arena_stats()["fallback"]
    del model


def test_prefetch_at_the_attention_block_keeps_the_gradients_and_fetches_later(spec_and_base, monkeypatch):
    """``prefetch_at: attention``: layer l's rows come back once layer l+1's backward has left
    its MLP block (a hook on its attention residual), not when it starts; same gradients."""
    spec, base = spec_and_base
    roles = {r: offload(1.0) for r in ROLES}
    layers = [LayerPlan(layer=0, input="offload", roles=roles), LayerPlan(layer=1, roles=roles),
              LayerPlan(layer=2)]
    events = []
    real_prefetch = PlanExecutor._prefetch
    real_reached = PlanExecutor._reached

    def logged_prefetch(self, st):
        events.append(("prefetch", st.index))
        return real_prefetch(self, st)

    def logged_reached(self, m):
        events.append(("reached", m))
        return real_reached(self, m)

    real_attention = PlanExecutor._attention_reached

    def logged_attention(self, m):
        events.append(("attention", m))
        return real_attention(self, m)

    monkeypatch.setattr(PlanExecutor, "_prefetch", logged_prefetch)
    monkeypatch.setattr(PlanExecutor, "_reached", logged_reached)
    monkeypatch.setattr(PlanExecutor, "_attention_reached", logged_attention)
    plan = plan_of(layers).model_copy(update={"prefetch_at": "attention"})
    assert_bitwise(grads(spec, plan), base)
    # layer 0 is fetched when layer 1's backward reaches its attention block, then layer 0 starts
    i = events.index(("prefetch", 0))
    assert events[i - 1] == ("attention", 1) and events[i - 2] == ("reached", 1)
    assert events.index(("reached", 0)) > i
    events.clear()
    assert_bitwise(grads(spec, plan_of(layers)), base)  # the default: when layer 1's starts
    assert not [e for e in events if e[0] == "attention"]
    assert events[events.index(("prefetch", 0)) - 1] == ("reached", 1)


# ---- SwiGLU activation recomputed in backward (plan mlp_activation: recomputed) ----
RECOMPUTED = "recomputed"


def plan_with(layers: list[LayerPlan], mlp_activation: str = RECOMPUTED, **kw) -> Plan:
    return plan_for(layers, mlp_activation=mlp_activation, **kw)


def test_recomputed_mlp_activation_is_bitwise(spec_and_base):
    spec, base = spec_and_base
    layers = [LayerPlan(layer=i) for i in range(spec.num_layers)]
    assert_bitwise(grads(spec, plan_with(layers)), base)


def test_recomputed_mlp_activation_with_offload_recompute_and_checkpoints_is_bitwise(spec_and_base):
    spec, base = spec_and_base
    layers = [
        LayerPlan(layer=0, roles={r: offload(0.5, 0.25) for r in ROLES}),
        LayerPlan(layer=1, input="offload", roles={r: RoleAction(action="recompute") for r in ROLES}),
        LayerPlan(layer=2, checkpoint="selective", input="offload"),
    ]
    assert_bitwise(grads(spec, plan_with(layers, prefetch_at="attention")), base)
    layers[2] = LayerPlan(layer=2, roles={"mlp_hidden": RoleAction(action="recompute", keep_frac=0.5)})
    assert_bitwise(grads(spec, plan_with(layers)), base)


def test_swiglu_down_alone_matches_eager_with_bias():
    torch.manual_seed(0)
    w = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    for fused in (True, False):
        acts = [torch.randn(2, 5, 20 if fused else 10, dtype=torch.float64, requires_grad=True)
                for _ in range(1 if fused else 2)]
        g, u = acts[0].chunk(2, dim=-1) if fused else acts
        ref = torch.nn.functional.linear(torch.nn.functional.silu(g) * u, w, b)
        dy = torch.randn_like(ref)
        want = torch.autograd.grad(ref, [w, b, *acts], dy)
        got = torch.autograd.grad(SwiGLUDown.apply(w, b, *acts), [w, b, *acts], dy)
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y)
    assert torch.autograd.gradcheck(lambda *a: SwiGLUDown.apply(w, b, *a), tuple(acts))


def _saved_bytes(spec, recompute: bool) -> int:
    model = build_model(spec, seed=3)
    for layer in model.layers:
        layer.recompute_mlp_act = recompute
    batch = make_batch(spec, seq_len=SEQ, seed=4)
    seen: dict[int, int] = {}
    params = {p.data_ptr() for p in model.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch)
    loss.backward()
    return sum(seen.values())


@pytest.mark.parametrize("preset", ["probe-llama7b-stack", "llama-3.2-1b"])
def test_two_activations_per_layer_fewer_are_saved(preset):
    spec = tiny(preset)
    saved, recomputed = _saved_bytes(spec, False), _saved_bytes(spec, True)
    per_layer = 2 * SEQ * spec.intermediate_size * 2  # silu(gate) and the product, bf16
    assert saved - recomputed == spec.num_layers * per_layer


def test_token_wise_recompute_finds_the_rows_of_a_recomputed_mlp_activation(spec_and_base):
    """The recompute's tags line up with the forward's: only the projection output is tagged."""
    spec, base = spec_and_base
    layers = [LayerPlan(layer=i, roles={Role.MLP_HIDDEN.value: RoleAction(action="recompute")})
              for i in range(spec.num_layers)]
    model = build_model(spec, seed=3)
    ex = PlanExecutor(model, plan_with(layers), device="cpu")
    batch = make_batch(spec, seq_len=SEQ, seed=4)
    ex.step(batch)
    got = [p.grad.clone() for p in model.parameters()] + ([batch.grad] if batch.requires_grad else [])
    assert_bitwise(got, base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rmsnorm_gradients_equal_the_eager_norms_to_rounding(dtype):
    spec = tiny("llama-3.2-1b")
    eager, fused = grads(spec, None, dtype), grads(spec, None, dtype, rmsnorm="fused")
    assert not all(torch.equal(a, b) for a, b in zip(eager, fused, strict=True))  # another kernel
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=0.02, atol=2e-3)
    for a, b in zip(fused, eager, strict=True):
        torch.testing.assert_close(a.float(), b.float(), **tol)


def test_fused_rmsnorm_under_a_plan_is_bitwise_and_its_rstd_is_tagged():
    """The plan's job says fused: the executor runs the fused norm (whose rstd it offloads as
    norm_stat) and the gradients are the plain fused model's."""
    spec = tiny("llama-3.2-1b")
    base = grads(spec, None, rmsnorm="fused")
    roles = {r: offload(1.0) for r in ROLES}
    layers = [
        LayerPlan(layer=0, input="offload", roles=roles),
        LayerPlan(layer=1, roles={"norm_stat": offload(0.5, 0.5), "mlp_hidden": RoleAction(action="recompute")}),
        LayerPlan(layer=2, checkpoint="full", input="offload"),
    ]
    plan = plan_for(layers, rmsnorm="fused")
    assert plan.unexecuted() == ""
    assert_bitwise(grads(spec, plan), base)
    # only the rstd of layer 1's two norms leaves: fp32, one per token
    only = [LayerPlan(layer=0), LayerPlan(layer=1, roles={"norm_stat": offload(1.0)}), LayerPlan(layer=2)]
    model = build_model(spec, seed=3)
    ex = PlanExecutor(model, plan_for(only, rmsnorm="fused"), device="cpu")
    ex.step(make_batch(spec, seq_len=SEQ, seed=4))
    assert all(m.fused for m in model.modules() if hasattr(m, "fused"))
    assert ex.last_stats().d2h_bytes == 2 * SEQ * 4


SEGMENTS = [  # head 0 (kept) with 1, 2; head 3 (offloaded) with 4
    LayerPlan(layer=0, checkpoint="full"),
    LayerPlan(layer=1, checkpoint="full", input="recompute"),
    LayerPlan(layer=2, checkpoint="full", input="recompute"),
    LayerPlan(layer=3, checkpoint="full", input="offload"),
    LayerPlan(layer=4, checkpoint="full", input="recompute"),
]


@pytest.mark.parametrize("preset", ["probe-llama7b-stack", "llama-3.2-1b"])
def test_segment_checkpoints_are_bitwise(preset):
    spec = tiny(preset, layers=5)
    base = grads(spec, None)
    assert_bitwise(grads(spec, plan_of(SEGMENTS)), base)
    after_a_plain_layer = [LayerPlan(layer=0), LayerPlan(layer=1, checkpoint="full", input="offload"),
                           *(LayerPlan(layer=i, checkpoint="full", input="recompute") for i in (2, 3, 4))]
    assert_bitwise(grads(spec, plan_of(after_a_plain_layer, lookahead=2)), base)


def test_segment_inputs_live_where_the_replay_has_them():
    """Forward: a layer of a segment holds no input (the replay drops it at the layer's end);
    backward: at the first need of a segment's last layer the inputs of all its layers come
    back at once (the replay's segment_recompute op allocates exactly those bytes) and each is
    gone once its layer's backward is done (where the replay frees it)."""
    import weakref

    from planners.swap.context import PlanContext
    from planners.swap.evaluate import evaluate
    from simulator.scenario import Scenario

    spec = tiny("llama-3.2-1b", layers=5)
    node = load_node("1xH200")
    scenario = Scenario.build(spec, TrainJob(seq_len=SEQ, optimizer="none"), node, gpu_budget_bytes=1 << 30,
                              host_budget_bytes=1 << 30)
    plan = Plan.for_scenario(scenario, layers=SEGMENTS, provenance=Provenance(tierplan_version="t", planner="t"))
    res = evaluate(PlanContext.from_plan(plan), "segments", SEGMENTS)
    wl = res.applied.workload
    index = wl._by_id()
    frees = {t: op.layer for op in wl.ops for t in op.frees}
    replay = {}  # segment's last layer -> {layer whose input is recomputed: bytes}
    for op in wl.ops:
        if op.name.endswith("segment_recompute"):
            replay[op.layer] = {frees[t]: index[t].num_bytes for t in op.allocs}
    assert replay == {2: {1: SEQ * spec.hidden_size * 2, 2: SEQ * spec.hidden_size * 2},
                      4: {4: SEQ * spec.hidden_size * 2}}

    model = build_model(spec, seed=3)
    ex = PlanExecutor(model, plan, device="cpu")
    inputs: dict[int, weakref.ref] = {}
    layer_fn, reached, seg = ex._layer, ex._reached, ex._segment_inputs
    live_at: dict[int, set[int]] = {}  # backward reaches layer m (m+1's is done): inputs alive
    made: dict[int, dict[int, int]] = {}

    def spy_layer(i, layer, x, rope):
        inputs[i] = weakref.ref(x)
        return layer_fn(i, layer, x, rope)

    def spy_reached(m):  # layer m+1's tensors are let go here
        reached(m)
        live_at[m] = {i for i, r in inputs.items() if r() is not None}

    def spy_seg(last):
        seg(last)
        made[last] = {j: x.untyped_storage().nbytes() for j, x in ex._seg_inputs.items()}
        inputs.update({j: weakref.ref(x) for j, x in ex._seg_inputs.items()})

    ex._layer, ex._reached, ex._segment_inputs = spy_layer, spy_reached, spy_seg
    ex.step(make_batch(spec, seq_len=SEQ, seed=4))
    assert made == replay
    # start of backward: only the kept head's input (the offloaded one is on the host)
    assert live_at[4] == {0}
    assert live_at[3] == {0}  # layer 4's recomputed input went with its backward
    assert live_at[2] == {0}
    assert live_at[1] == {0, 1}  # layer 2's gone, layer 1's until its own backward
    assert live_at[0] == {0}
