import pytest

from simulator.workload import (
    OpSpec,
    Phase,
    Role,
    TensorSpec,
    Workload,
    WorkloadError,
    allocator_rounded_bytes,
    saved_bytes_by_layer,
    walk_memory,
)


def test_allocator_rounding():
    assert allocator_rounded_bytes(0) == 0
    assert allocator_rounded_bytes(1) == 512
    assert allocator_rounded_bytes(512) == 512
    assert allocator_rounded_bytes(513) == 1024


def _toy():
    t = (
        TensorSpec(0, "w", 1000, Role.WEIGHT, persistent=True),
        TensorSpec(1, "a", 2048, Role.LAYER_INPUT, layer=0),
        TensorSpec(2, "tmp", 4096, Role.WORKSPACE, layer=0),
        TensorSpec(3, "b", 1024, Role.MLP_HIDDEN, layer=1),
    )
    ops = (
        OpSpec(0, "l0", "linear", Phase.FWD, 0, allocs=(1,), saves=(1,)),
        OpSpec(1, "l0.ws", "x", Phase.FWD, 0, allocs=(2,), frees=(2,)),
        OpSpec(2, "l1", "linear", Phase.FWD, 1, allocs=(3,), saves=(1, 3)),
        OpSpec(3, "bwd", "linear", Phase.BWD, 1, frees=(1, 3)),
    )
    return Workload(t, ops, initial=(0,))


def test_walk_peak_and_breakdown():
    walk = walk_memory(_toy())
    # initial 1024 (rounded weight); op1 peak = 1024 + 2048 + 4096
    assert walk.initial_bytes == 1024
    assert walk.peak_bytes == 1024 + 2048 + 4096
    assert walk.peak_op_name == "l0.ws"
    assert walk.peak_breakdown_bytes == {"layer_input": 2048, "weight": 1024, "workspace": 4096}
    assert walk.final_bytes == 1024
    assert walk_memory(_toy(), rounded=False).peak_bytes == 1000 + 2048 + 4096


def test_saved_bytes_counts_each_storage_once():
    assert saved_bytes_by_layer(_toy()) == {0: 2048, 1: 1024}


def test_double_free_is_an_error():
    w = _toy()
    bad = Workload(w.tensors, w.ops + (OpSpec(4, "again", "x", Phase.BWD, 0, frees=(1,)),), w.initial)
    with pytest.raises(WorkloadError, match="not live"):
        walk_memory(bad)
