"""The caching-allocator model: hand-checked toy sequences, then every committed H200 step record.

Peak reserved memory (``torch.cuda.max_memory_reserved``) of real Hugging Face training steps
is predicted by replaying the analytical Workload (exact for allocated bytes) through the model
the way validate/measure_steps.py ran it: cuBLAS workspaces left by earlier cases, weights, one
warm-up step and three timed steps.
"""

import json
import pathlib

import pytest

from hwmodels.units import MiB
from simulator.allocator import (
    AllocatorOOM,
    AllocEvent,
    CachingAllocator,
    allocation_size,
    predict_workload_reserved,
    replay_caching_allocator,
    workload_events,
)
from simulator.workload import OpSpec, Phase, Role, TensorSpec, Workload

MEAS = pathlib.Path(__file__).resolve().parents[2] / "validate" / "measurements" / "h200"
RESERVED_TOL = 0.05  # issue 7 target; today every record is within 4.4%


def test_allocation_size_follows_the_segment_rules():
    assert allocation_size(1) == 2 * MiB
    assert allocation_size(MiB) == 2 * MiB  # kSmallSize itself is still small
    assert allocation_size(MiB + 1) == 20 * MiB
    assert allocation_size(10 * MiB - 512) == 20 * MiB
    assert allocation_size(10 * MiB) == 10 * MiB
    assert allocation_size(11 * MiB + 1) == 12 * MiB


def test_small_requests_share_one_2mib_segment():
    a = CachingAllocator()
    a.malloc("x", 100)
    a.malloc("y", 1000)
    assert a.reserved_bytes == 2 * MiB
    assert a.allocated_bytes == 512 + 1024
    a.free("x")
    a.malloc("z", 300)  # best fit: the freed 512-B block at the segment start
    assert a.reserved_bytes == 2 * MiB and a.num_segments == 1


def test_large_pool_splits_only_above_1mib_and_merges_on_free():
    a = CachingAllocator()
    a.malloc("a", 4 * MiB)  # 1-10 MiB: a 20 MiB segment, split
    a.malloc("b", 4 * MiB)
    a.malloc("c", 4 * MiB)
    assert a.reserved_bytes == 20 * MiB and a.num_segments == 1
    a.free("b")
    a.free("a")  # merges with b: one free 8 MiB block at the front
    a.malloc("d", 8 * MiB)
    assert a.reserved_bytes == 20 * MiB
    a.malloc("e", 7 * MiB + 512)  # the 8 MiB tail is left; remainder 0.5 MiB <= 1 MiB: no split
    assert a.reserved_bytes == 20 * MiB
    assert a.allocated_bytes == 4 * MiB + 8 * MiB + 8 * MiB


def test_small_and_large_requests_never_share_a_segment():
    a = CachingAllocator()
    a.malloc("big", 4 * MiB)
    a.free("big")
    a.malloc("small", 4096)  # 16 MiB free in the large pool does not serve a small request
    assert a.reserved_bytes == 22 * MiB


def test_per_stream_pools():
    events = [AllocEvent("alloc", 1, 12 * MiB, 0), AllocEvent("free", 1),
              AllocEvent("alloc", 2, 12 * MiB, 7)]
    assert replay_caching_allocator(events).peak_reserved_bytes == 24 * MiB
    events[2] = AllocEvent("alloc", 2, 12 * MiB, 0)
    assert replay_caching_allocator(events).peak_reserved_bytes == 12 * MiB


def test_fragmentation_strands_memory_and_expandable_segments_recover_it():
    # two 12 MiB blocks in separate segments: freeing both does not make room for 24 MiB
    events = [AllocEvent("alloc", "a", 12 * MiB), AllocEvent("alloc", "b", 12 * MiB),
              AllocEvent("free", "a"), AllocEvent("free", "b"), AllocEvent("alloc", "c", 24 * MiB)]
    native = replay_caching_allocator(events)
    assert native.peak_reserved_bytes == 48 * MiB
    assert native.peak_allocated_bytes == 24 * MiB
    assert native.stranded_frac == pytest.approx(0.5)
    grow = replay_caching_allocator(events, expandable_segments=True)
    assert grow.peak_reserved_bytes == 40 * MiB  # 20 MiB pages: 20 + 20, then reused in place


def test_capacity_releases_cached_segments_then_reports_oom():
    events = [AllocEvent("alloc", "a", 12 * MiB), AllocEvent("free", "a"),
              AllocEvent("alloc", "b", 14 * MiB)]
    rep = replay_caching_allocator(events, capacity_bytes=20 * MiB)
    assert rep.num_alloc_retries == 1 and rep.final_reserved_bytes == 14 * MiB
    with pytest.raises(AllocatorOOM):
        replay_caching_allocator(events[:1] + [AllocEvent("alloc", "b", 14 * MiB)],
                                 capacity_bytes=20 * MiB)


def test_freeing_what_is_not_live_is_an_error():
    a = CachingAllocator()
    with pytest.raises(ValueError, match="not live"):
        a.free("nope")


def _toy_workload() -> Workload:
    t = (TensorSpec(0, "w", 3 * MiB, Role.WEIGHT, persistent=True),
         TensorSpec(1, "act", 12 * MiB, Role.NORM_OUT),
         TensorSpec(2, "grad", 3 * MiB, Role.GRAD))
    ops = (OpSpec(0, "fwd", "linear", Phase.FWD, None, allocs=(1,)),
           OpSpec(1, "bwd", "linear", Phase.BWD, None, allocs=(2,), frees=(1,)))
    return Workload(tensors=t, ops=ops, initial=(0,))


def test_workload_events_free_leftover_grads_at_the_next_step():
    ev = workload_events(_toy_workload(), num_steps=2, preallocated_bytes=(32 * MiB,))
    assert [e.action for e in ev] == ["alloc", "alloc", "alloc", "alloc", "free",
                                      "free", "alloc", "alloc", "free"]
    assert ev[4].key == ("t", 1, 0) and ev[5].key == ("t", 2, 0)
    rep = predict_workload_reserved(_toy_workload(), num_steps=2, preallocated_bytes=())
    # the weight's 3 MiB opens a 20 MiB segment; the 12 MiB activation and the 3 MiB grad are
    # carved out of its 17 MiB remainder, in both steps
    assert rep.peak_reserved_bytes == 20 * MiB
    assert rep.peak_allocated_bytes == 18 * MiB and rep.num_segment_allocs == 1


def _records():
    out = []
    for path in sorted(MEAS.glob("steps-h200-*.json")):
        for rec in json.loads(path.read_text())["records"]:
            if rec["status"] == "ok":
                out.append(pytest.param(rec, id=f"{path.stem}:{rec['case']}:{rec['seq_len']}:"
                                                f"ckpt={rec['gradient_checkpointing']}"))
    return out


@pytest.mark.parametrize("rec", _records())
def test_predicted_reserved_matches_h200(rec):
    from simulator.model import ModelSpec
    from simulator.templates import training_workload
    from validate.compare import job_for_step_record

    wl = training_workload(ModelSpec.from_hf_config(rec["config"]), job_for_step_record(rec))
    rep = predict_workload_reserved(wl, num_steps=4)  # measure_steps: 1 warm-up + 3 timed
    err = rep.peak_reserved_bytes / rec["peak_reserved_bytes"] - 1
    assert abs(err) <= RESERVED_TOL, f"reserved {err:+.2%}"
    # the replay is exact for allocated bytes: the 64 MiB of workspaces are the only addition
    assert rep.peak_allocated_bytes == pytest.approx(rec["peak_allocated_bytes"], rel=0.005)


def test_expandable_segments_unmap_unused_pages_when_the_cap_is_reached():
    # a and b map 20 MiB pages 0 and 1; a is freed (its page stays mapped, cached); c does not fit
    # a's hole and grows the segment by two pages: 80 MiB mapped uncapped, but under a 60 MiB
    # cap PyTorch unmaps page 0 (no live block on it) and retries
    events = [AllocEvent("alloc", "a", 20 * MiB), AllocEvent("alloc", "b", 20 * MiB),
              AllocEvent("free", "a"), AllocEvent("alloc", "c", 30 * MiB)]
    free = replay_caching_allocator(events, expandable_segments=True)
    assert free.peak_reserved_bytes == 80 * MiB and free.num_alloc_retries == 0
    capped = replay_caching_allocator(events, expandable_segments=True, capacity_bytes=60 * MiB)
    assert capped.peak_reserved_bytes == 60 * MiB and capped.num_alloc_retries == 1
    assert capped.final_allocated_bytes == 50 * MiB
    with pytest.raises(AllocatorOOM, match="expandable segments"):
        replay_caching_allocator(events, expandable_segments=True, capacity_bytes=59 * MiB)


def test_expandable_small_requests_map_2mib_pages_of_their_own_pool():
    events = [AllocEvent("alloc", "s", 4096), AllocEvent("alloc", "l", 12 * MiB)]
    rep = replay_caching_allocator(events, expandable_segments=True)
    assert rep.peak_reserved_bytes == 2 * MiB + 20 * MiB


def test_predict_reserved_names_the_allocator():
    from simulator.allocator import predict_reserved

    with pytest.raises(ValueError, match="allocator: 'slab'"):
        predict_reserved(_toy_workload(), allocator="slab", capacity_bytes=None)
    caching, _ = predict_reserved(_toy_workload(), allocator="caching", capacity_bytes=None)
    grow, oom = predict_reserved(_toy_workload(), allocator="expandable", capacity_bytes=None)
    assert not oom and 0 < grow and 0 < caching
