"""The planned arena on the CPU: a recorded step and its planned replays give the same tensors."""

import pytest
import torch

from hwmodels.units import UserInputError
from planners.layout.instance import check_layout
from validate.arena import Arena, ArenaMismatch, span_bytes, span_elements


def toy_step(arena: Arena, *, free_last: bool = True) -> list[tuple]:
    """Buffers with overlapping lifetimes, several dtypes and layouts; every value depends on
    buffers still live, so a planned offset that overlaps a live buffer corrupts the result."""
    out = []
    a = arena.alloc("a", (8, 16), (16, 1), torch.float32)
    a.copy_(torch.arange(128, dtype=torch.float32).view(8, 16))
    b = arena.alloc("b", (16, 8), (1, 16), torch.bfloat16)  # a transposed layout
    b.copy_(a.t())
    c = arena.alloc("c", (5, 3), (4, 1), torch.int64)  # padded rows: span 4*4+3 elements
    c.copy_(torch.arange(15).view(5, 3) * 7)
    arena.free("a")
    d = arena.alloc("d", (4, 32), (32, 1), torch.float16)  # may reuse a's bytes
    d.copy_(b.float().reshape(4, 32) + c.sum())
    out.append((b.float().clone(), b.stride(), b.dtype))
    arena.free("b")
    e = arena.alloc("e", (3, 4, 2), (1, 3, 12), torch.float64)  # permuted strides
    e.copy_(d[:3, :8].double().reshape(3, 4, 2) * 0.5)
    f = arena.alloc("f", (0, 4), (4, 1), torch.float32)  # empty
    out.append((c.clone(), c.stride(), c.dtype))
    out.append((d.clone(), d.stride(), d.dtype))
    out.append((e.clone(), e.stride(), e.dtype))
    out.append((f.clone(), f.stride(), f.shape))
    for key in ("c", "d", "e", "f"):
        arena.free(key)
    g = arena.alloc("g", (64,), (1,), torch.float32)
    g.copy_(torch.linspace(0, 1, 64))
    out.append((g.clone(), g.stride(), g.dtype))
    if free_last:
        arena.free("g")
    return out


def _same(x: list[tuple], y: list[tuple]) -> None:
    assert len(x) == len(y)
    for (tx, sx, kx), (ty, sy, ky) in zip(x, y, strict=True):
        assert sx == sy and kx == ky
        assert torch.equal(tx, ty)


@pytest.fixture
def planned():
    arena = Arena("cpu", time_limit_s=5)
    recorded = toy_step(arena)
    arena.finish_recording()
    return arena, recorded


def test_planned_steps_equal_ordinary_allocation(planned):
    arena, recorded = planned
    ordinary = toy_step(Arena("cpu"))  # a recording arena allocates ordinary tensors
    _same(recorded, ordinary)
    _same(toy_step(arena), recorded)
    _same(toy_step(arena), recorded)  # and again: frees reset the live set


def test_planned_views_live_in_the_one_arena_and_reuse_bytes(planned):
    arena, _ = planned
    base = arena._storage.data_ptr()
    x = arena.alloc("a", (8, 16), (16, 1), torch.float32)
    assert x.untyped_storage().data_ptr() == base
    assert (x.data_ptr() - base) == arena.offset_bytes("a") and arena.offset_bytes("a") % 512 == 0
    arena.free("a")
    inst = arena.instance()
    assert check_layout(inst, arena.layout.offsets).valid
    assert arena.capacity_bytes == arena.planned_peak_bytes >= arena.lower_bound_bytes
    assert arena.capacity_bytes < inst.total_bytes  # some buffers share bytes over time
    assert arena.status in ("optimal", "feasible") and arena.gap >= 0 and arena.solve_time_s >= 0


def test_offsets_of_buffers_live_at_once_never_overlap(planned):
    arena, _ = planned
    bufs = arena.instance().buffers
    off = arena.layout.offsets
    for i, p in enumerate(bufs):
        for q in bufs[i + 1:]:
            if p.overlaps(q):
                assert off[p.bid] + p.size_bytes <= off[q.bid] or off[q.bid] + q.size_bytes <= off[p.bid]
    # the toy has a pair that lives at once (a and b) and a pair that does not (a and d)
    by = {b.bid: b for b in bufs}
    assert by["a"].overlaps(by["b"]) and not by["a"].overlaps(by["d"])


def test_size_mismatch_is_one_line_naming_key_and_sizes(planned):
    arena, _ = planned
    with pytest.raises(UserInputError, match=r"key 'a': recorded 512 bytes, asked for 1024") as info:
        arena.alloc("a", (16, 16), (16, 1), torch.float32)
    assert isinstance(info.value, ArenaMismatch) and "\n" not in str(info.value)
    with pytest.raises(ArenaMismatch, match="'zz' was not recorded"):
        arena.alloc("zz", (2,), (1,), torch.float32)


def test_an_order_that_would_share_live_bytes_is_refused(planned):
    arena, _ = planned
    arena.alloc("a", (8, 16), (16, 1), torch.float32)
    with pytest.raises(ArenaMismatch, match="allocated again before its free"):
        arena.alloc("a", (8, 16), (16, 1), torch.float32)
    # d was planned into bytes a held before: with a still live it must not be handed out
    off, d_off = arena.offset_bytes("a"), arena.offset_bytes("d")
    if d_off < off + 512 and off < d_off + 256:
        with pytest.raises(ArenaMismatch, match="would share bytes with live key 'a'"):
            arena.alloc("d", (4, 32), (32, 1), torch.float16)
    else:  # the planner put them apart: then both may be live
        arena.alloc("d", (4, 32), (32, 1), torch.float16)
    with pytest.raises(ArenaMismatch, match="free of 'b', which is not live"):
        arena.free("b")


def test_recording_errors_and_properties_before_planning():
    arena = Arena("cpu")
    assert arena.status == "recording" and not arena.planned
    with pytest.raises(ValueError, match="still recording"):
        arena.capacity_bytes  # noqa: B018
    arena.alloc("x", (4,), (1,), torch.float32)
    with pytest.raises(ValueError, match="allocated twice"):
        arena.alloc("x", (4,), (1,), torch.float32)
    arena.free("x")
    with pytest.raises(ValueError, match="not live"):
        arena.free("x")
    res = arena.finish_recording()
    assert res.peak_bytes == arena.capacity_bytes == 512 and arena.status == "optimal"
    with pytest.raises(ValueError, match="already finished"):
        arena.finish_recording()


def test_a_buffer_not_freed_lives_to_the_end_and_must_be_freed_before_the_next_step():
    arena = Arena("cpu")
    toy_step(arena, free_last=False)
    arena.finish_recording()
    g = next(b for b in arena.instance().buffers if b.bid == "g")
    assert g.upper == max(b.upper for b in arena.instance().buffers)
    toy_step(arena, free_last=False)
    with pytest.raises(ArenaMismatch, match="'g'"):  # g of the step before is still live
        toy_step(arena, free_last=False)


def test_empty_recording_gives_an_empty_arena():
    arena = Arena("cpu")
    arena.finish_recording()
    assert arena.capacity_bytes == 0 and arena.lower_bound_bytes == 0


@pytest.mark.parametrize("shape,stride,dtype", [
    ((3, 5), (5, 1), torch.float32),
    ((3, 5), (1, 3), torch.bfloat16),
    ((2, 3, 4), (24, 1, 6), torch.int8),
    ((4, 1, 7), (7, 100, 1), torch.float64),
    ((5, 2), (0, 1), torch.float16),  # a broadcast dimension
    ((0, 3), (3, 1), torch.float32),
    ((), (), torch.int32),
])
def test_span_matches_what_torch_allocates(shape, stride, dtype):
    t = torch.empty_strided(shape, stride, dtype=dtype)
    assert span_bytes(shape, stride, dtype) == t.untyped_storage().nbytes()
    assert span_elements(shape, stride) * t.element_size() == t.untyped_storage().nbytes()
