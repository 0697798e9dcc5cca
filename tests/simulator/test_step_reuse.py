"""What the search's estimator reuses equals what it replaces: decoder layers copied from the
first (`ProgramBuilder.repeat`) against every layer recorded; one step shape's parts at any ZeRO
stage and data-parallel degree (`TrainingStepParts.workload_at`) against the step built for
that job; the resizable walk against `walk_memory`."""

import itertools

import pytest

from hwmodels.catalog import load_node
from simulator.job import Parallelism, TrainJob
from simulator.model import get_model
from simulator.templates import _Program, training_step_parts, training_workload
from simulator.workload import ResizableWalk, Role, WalkPeak, walk_memory


def _step(model, job, node, *, repeat: bool, layer_checkpointing=None, mlp_chunks=None):
    prog = _Program(model, job, job.parallelism, node, grads_persist=job.grads_persist)
    prog.repeat_layers = repeat
    prog.layer_checkpointing = dict(layer_checkpointing or {})
    prog.mlp_chunks = dict(mlp_chunks or {})
    wl = prog.training_step()
    return wl, prog.num_local_params, prog.param_numel


@pytest.mark.parametrize("name", ["llama-3.1-8b", "gpt2", "llama-3-8b-stack", "qwen3-8b", "mistral-7b"])
def test_repeated_layers_equal_recorded_layers(name):
    model = get_model(name).with_layers(3)
    node = load_node("8xH200")
    n = 0
    for ck, tp, sp, cp, persist in itertools.product(("none", "selective", "full"), (1, 2), (False, True), (1, 2),
                                                     (False, True)):
        if sp and tp == 1:
            continue
        job = TrainJob(seq_len=8192, checkpointing=ck, grads_persist=persist,
                       parallelism=Parallelism(tp=tp, sequence_parallel=sp, cp=cp, dp=2, zero_stage=3 if persist else 1))
        a, b = _step(model, job, node, repeat=True), _step(model, job, node, repeat=False)
        assert a == b
        n += 1
    assert n >= 24


def test_repeated_layers_follow_per_layer_overrides():
    model = get_model("llama-3.1-8b").with_layers(5)
    node = load_node("8xH200")
    job = TrainJob(seq_len=16384, checkpointing="selective")
    kw = {"layer_checkpointing": {1: "full", 3: "full", 4: "none"}, "mlp_chunks": {2: 4, 4: 4}}
    a, b = _step(model, job, node, repeat=True, **kw), _step(model, job, node, repeat=False, **kw)
    assert a == b
    names = {op.name.split(".")[1] for op in a[0].ops if op.name.startswith("layers.")}
    assert names == {"0", "1", "2", "3", "4"}


def test_parts_at_any_zero_stage_and_dp_equal_the_built_step():
    model = get_model("llama-3.1-8b").with_layers(2)
    node = load_node("8xH100")
    n = 0
    for (tp, cp), ck, persist, opt, master in itertools.product(((1, 1), (2, 2)), ("none", "selective", "full"),
                                                                (False, True), ("adamw", "sgd"), (False, True)):
        base = TrainJob(seq_len=4096, checkpointing=ck, grads_persist=persist, optimizer=opt,
                        master_weights=master, parallelism=Parallelism(tp=tp, cp=cp))
        parts = training_step_parts(model, base, node)
        for zero, dp in itertools.product((0, 1, 2, 3), (1, 3, 16)):
            job = base.model_copy(update={"parallelism": Parallelism(tp=tp, cp=cp, dp=dp, zero_stage=zero)})
            wl = parts.workload_at(zero if dp > 1 else 0, dp)
            assert wl == training_workload(model, job, node)
            sizes, _ = parts.at(zero, dp)
            walk = ResizableWalk(parts.workload_at(0, 1 if dp == 1 else 2), sizes)
            assert walk.peak(sizes) == WalkPeak.of(walk_memory(wl))
            n += 1
    assert n == 48 * 12


def test_resizable_walk_equals_walk_memory_on_a_toy():
    from simulator.workload import OpSpec, Phase, TensorSpec, Workload

    t = (TensorSpec(0, "w", 1000, Role.WEIGHT, persistent=True), TensorSpec(1, "a", 3000, Role.LAYER_INPUT),
         TensorSpec(2, "g", 1000, Role.GRAD, persistent=True), TensorSpec(3, "tmp", 700, Role.WORKSPACE))
    ops = (OpSpec(0, "fwd", "x", Phase.FWD, None, allocs=(1,)),
           OpSpec(1, "bwd", "x", Phase.BWD, None, allocs=(2, 3), frees=(1, 3)),
           OpSpec(2, "again", "x", Phase.BWD, None, allocs=(3,), frees=(3,)))
    base = Workload(tensors=t, ops=ops, initial=(0,))
    walk = ResizableWalk(base, [0, 2, 3])
    for w, g, tmp in [(1000, 1000, 700), (100000, 10, 1), (1, 1, 900000), (0, 0, 0)]:
        sized = Workload(tensors=(t[0].__class__(0, "w", w, Role.WEIGHT, persistent=True), t[1],
                                  t[2].__class__(2, "g", g, Role.GRAD, persistent=True),
                                  t[3].__class__(3, "tmp", tmp, Role.WORKSPACE)), ops=ops, initial=(0,))
        assert walk.peak({0: w, 2: g, 3: tmp}) == WalkPeak.of(walk_memory(sized))


@pytest.mark.parametrize("ck", ["none", "selective", "full"])
def test_parts_retimed_for_another_node_equal_the_parts_built_there(ck):
    model = get_model("llama-3.1-8b").with_layers(3)
    h200, h100 = load_node("8xH200"), load_node("8xH100")
    for tp, cp in ((1, 1), (2, 4)):
        job = TrainJob(seq_len=16384, checkpointing=ck, parallelism=Parallelism(tp=tp, cp=cp, cp_kind="ulysses"))
        there = training_step_parts(model, job, h100)
        like = training_step_parts(model, job, h200)
        retimed = training_step_parts(model, job, h100, like=like)
        assert retimed.base is like.base and retimed.times_s is not None  # not derived, not made anew
        assert retimed.head == there.head and retimed.bwd_s == there.bwd_s
        assert len(retimed.head.ops) == len(there.head.ops) == len(retimed.times_s)
        for a, b, t in zip(retimed.head.ops, there.head.ops, retimed.times_s, strict=True):
            assert a == b and a.time_s == t
        assert retimed.derivation is like.derivation and retimed.head != like.head
        assert retimed.workload_at(3, 8) == there.workload_at(3, 8)
    other = TrainJob(seq_len=8192, checkpointing=ck)  # another program: derived anew
    assert training_step_parts(model, other, h100, like=like).head == training_step_parts(model, other, h100).head


def test_accumulation_time_once_per_size_equals_the_timer():
    from simulator.templates import _mem

    node = load_node("8xH200")
    job = TrainJob(seq_len=8192)
    prog = _Program(get_model("llama-3.1-8b").with_layers(2), job, job.parallelism, node)
    for n in (512, 3 * 2**20, 512, 7 * 2**20 + 3):
        direct = prog.cost(_mem("grad_accumulate", read_bytes=2 * n, write_bytes=n)).time_s
        assert direct is not None and direct > 0.0
        assert prog.b.accumulate_time_s(n) == direct


def test_a_dropped_step_is_freed_without_the_cyclic_collector():
    import gc
    import weakref

    node = load_node("8xH200")
    job = TrainJob(seq_len=8192, parallelism=Parallelism(dp=2, zero_stage=1))
    was_on = gc.isenabled()
    gc.disable()
    try:
        parts = training_step_parts(get_model("llama-3.1-8b").with_layers(2), job, node)
        program = weakref.ref(parts.model_state_bytes.__self__)
        builder = weakref.ref(parts.model_state_bytes.__self__.b)
        del parts
        assert program() is None and builder() is None
    finally:
        if was_on:
            gc.enable()


def _derived(model, job, node, *, copy: bool, mlp_chunks=None, layer_checkpointing=None, lm_head_chunks=1):
    prog = _Program(model, job, job.parallelism, node, grads_persist=job.grads_persist)
    prog.b.repeat_backward = copy
    prog.mlp_chunks = dict(mlp_chunks or {})
    prog.layer_checkpointing = dict(layer_checkpointing or {})
    prog.lm_head_chunks = lm_head_chunks
    wl = prog.training_step()
    return wl, prog.b


def _assert_same_derivation(model, job, node, **kw):
    (a, ba), (b, bb) = _derived(model, job, node, copy=True, **kw), _derived(model, job, node, copy=False, **kw)
    assert len(a.ops) == len(b.ops) and len(a.tensors) == len(b.tensors)
    for x, y in zip(a.ops, b.ops, strict=True):
        assert x == y, (x.name, y.name)
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert x == y
    assert a == b
    assert ba.leaf_grads == bb.leaf_grads and list(ba.leaf_grads) == list(bb.leaf_grads)
    assert ba.derivation == bb.derivation
    assert bb.num_copied_blocks == 0
    return ba.num_copied_blocks


@pytest.mark.parametrize("name", ["llama-3.1-8b", "gpt2", "llama-3-8b-stack", "qwen3-8b", "mistral-7b"])
def test_copied_backward_equals_the_derived_backward(name):
    model = get_model(name).with_layers(4)
    node = load_node("8xH200")
    copied = 0
    for ck, (tp, sp), (cp, kind), persist in itertools.product(
            ("none", "selective", "full"), ((1, False), (2, False), (2, True)), ((1, "ring"), (2, "ring"), (2, "ulysses")),
            (False, True)):
        job = TrainJob(seq_len=8192, checkpointing=ck, grads_persist=persist,
                       parallelism=Parallelism(tp=tp, sequence_parallel=sp, cp=cp, cp_kind=kind, dp=2,
                                               zero_stage=3 if persist else 1))
        copied += _assert_same_derivation(model, job, node)
    assert copied >= 2 * 54  # the middle layers at least, in every case


def test_copied_backward_follows_per_layer_plans_and_the_head():
    model = get_model("llama-3.1-8b").with_layers(6)
    node = load_node("8xH200")
    job = TrainJob(seq_len=16384, checkpointing="selective")
    n = _assert_same_derivation(model, job, node, mlp_chunks={1: 4, 2: 4, 3: 4, 5: 2},
                                layer_checkpointing={0: "full", 3: "full", 4: "full", 5: "none"})
    assert n >= 1
    assert _assert_same_derivation(model, job, node, mlp_chunks=dict.fromkeys(range(6), 4), lm_head_chunks=4) >= 4
