"""Layout instances: lower bound, overlapping pairs, the independent checker, CSV and Workload input."""

import pytest

from hwmodels.units import UserInputError
from planners.layout.instance import (
    Buffer,
    LayoutInstance,
    check_layout,
    instance_from_workload,
    load_csv_instance,
    lower_bound_bytes,
    overlapping_pairs,
    write_csv_instance,
)
from simulator.workload import OpSpec, Phase, Role, TensorSpec, Workload, walk_memory

# a: [0,4) 10 B, b: [2,6) 20 B, c: [4,8) 30 B, d: [6,7) 5 B
TOY = LayoutInstance((Buffer("a", 0, 4, 10), Buffer("b", 2, 6, 20), Buffer("c", 4, 8, 30),
                      Buffer("d", 6, 7, 5)))


def test_lower_bound_is_max_live_bytes_with_half_open_lifetimes():
    # t=2..3: a+b = 30; t=4..5: b+c = 50 (a ended at 4); t=6: c+d = 35
    assert lower_bound_bytes(TOY.buffers) == 50


def test_overlapping_pairs_respect_half_open_ends():
    assert overlapping_pairs(TOY.buffers) == [(0, 1), (1, 2), (2, 3)]


def test_checker_accepts_a_valid_layout_and_reports_its_peak():
    check = check_layout(TOY, {"a": 0, "b": 10, "c": 30, "d": 0})
    assert check.valid and check.peak_bytes == 60
    # a and c never live together: they may share addresses
    assert check_layout(TOY, {"a": 20, "b": 0, "c": 20, "d": 0}).valid


def test_checker_finds_overlaps_missing_and_bad_offsets():
    bad = check_layout(TOY, {"a": 0, "b": 5, "c": 30, "d": 0})
    assert not bad.valid and bad.first_conflict == ("a", "b")
    assert "no offset" in check_layout(TOY, {"a": 0, "b": 10, "c": 30}).message
    assert not check_layout(TOY, {"a": -1, "b": 10, "c": 30, "d": 0}).valid
    assert not check_layout(TOY, {"a": 0, "b": 10, "c": 30, "d": 0, "zz": 0}).valid


def test_instance_rejects_duplicate_ids_and_empty_lifetimes():
    with pytest.raises(ValueError, match="twice"):
        LayoutInstance((Buffer("a", 0, 1, 1), Buffer("a", 1, 2, 1)))
    with pytest.raises(ValueError, match="lower < upper"):
        LayoutInstance((Buffer("a", 3, 3, 1),))


def test_csv_round_trip(tmp_path):
    path = tmp_path / "toy.csv"
    write_csv_instance(TOY, str(path))
    back = load_csv_instance(str(path))
    assert back.buffers == TOY.buffers


@pytest.mark.parametrize("text,match", [
    ("", "empty file"),
    ("name,lower,upper,size\n", "header must be"),
    ("id,lower,upper,size\n", "no buffers"),
    ("id,lower,upper,size\na,0,4\n", "line 2: expected 4 fields"),
    ("id,lower,upper,size\na,0,x,4\n", "line 2: upper: expected an integer"),
    ("id,lower,upper,size\na,4,4,4\n", "line 2: upper: must be greater"),
    ("id,lower,upper,size\na,0,4,0\n", "line 2: size: must be positive"),
    ("id,lower,upper,size\na,0,4,1\na,1,2,3\n", "line 3: id: 'a' appears twice"),
])
def test_csv_errors_are_one_line_naming_line_and_field(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserInputError, match=match) as err:
        load_csv_instance(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_csv_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="file not found"):
        load_csv_instance(str(tmp_path / "nope.csv"))


def test_workload_instance_lower_bound_equals_the_memory_walk():
    t = (TensorSpec(0, "w", 1000, Role.WEIGHT, persistent=True),
         TensorSpec(1, "x", 5000, Role.NORM_OUT),
         TensorSpec(2, "y", 700, Role.MLP_HIDDEN),
         TensorSpec(3, "g", 1000, Role.GRAD))
    ops = (OpSpec(0, "f1", "linear", Phase.FWD, 0, allocs=(1,)),
           OpSpec(1, "f2", "linear", Phase.FWD, 0, allocs=(2,), frees=(1,)),
           OpSpec(2, "b1", "linear", Phase.BWD, 0, allocs=(3,), frees=(2,)))
    wl = Workload(tensors=t, ops=ops, initial=(0,))
    inst = instance_from_workload(wl)
    by_id = {b.bid: b for b in inst.buffers}
    assert by_id["1:x"] == Buffer("1:x", 0, 2, 5120)  # rounded to 512 B; freed after op 1
    assert by_id["0:w"] == Buffer("0:w", 0, 3, 1024)  # initial, never freed
    assert by_id["3:g"] == Buffer("3:g", 2, 3, 1024)
    assert lower_bound_bytes(inst.buffers) == walk_memory(wl).peak_bytes == 1024 + 5120 + 1024


def _shares_bytes(a, b, oa: int, ob: int) -> bool:
    return a.overlaps(b) and oa < ob + b.size_bytes and ob < oa + a.size_bytes


@pytest.mark.parametrize("seed", range(6))
def test_checker_and_lower_bound_agree_with_brute_force(seed, monkeypatch):
    """Random small layouts (most with overlaps, past the numpy lower bound's 1,024-buffer cut):
    the checker is valid exactly when no pair shares a byte, and the bound is the profile's max."""
    import numpy as np

    from planners.layout.instance import SortedInts, live_bytes_profile

    monkeypatch.setattr(SortedInts, "BLOCK", 2)  # the checker's live list splits its blocks often

    rng = np.random.default_rng(seed)
    bufs = []
    for k in range(1500 if seed < 2 else 60):
        lo = int(rng.integers(0, 40))
        bufs.append(Buffer(f"b{k}", lo, lo + int(rng.integers(1, 8)), 512 * int(rng.integers(1, 6))))
    inst = LayoutInstance(tuple(bufs))
    assert lower_bound_bytes(inst.buffers) == max(live for _, live in live_bytes_profile(inst.buffers))
    if seed >= 2:  # pairwise verdict on small instances: random, then stacked (valid), then one moved
        stacked = dict(zip((b.bid for b in bufs), np.cumsum([0] + [b.size_bytes for b in bufs[:-1]]).tolist(), strict=True))
        rand = {b.bid: 512 * int(rng.integers(0, 40)) for b in bufs}
        moved = {**stacked, bufs[7].bid: stacked[bufs[3].bid]}
        for offsets in (rand, stacked, moved):
            clash = any(_shares_bytes(a, b, offsets[a.bid], offsets[b.bid])
                        for i, a in enumerate(bufs) for b in bufs[i + 1:])
            check = check_layout(inst, offsets)
            assert check.valid == (not clash)
            if not check.valid:
                x, y = (next(b for b in bufs if b.bid == name) for name in check.first_conflict)
                assert _shares_bytes(x, y, offsets[x.bid], offsets[y.bid])


def test_checker_compares_a_new_buffer_with_the_live_ones_above_and_below():
    inst = LayoutInstance((Buffer("a", 0, 4, 10), Buffer("b", 1, 3, 10), Buffer("c", 2, 5, 4)))
    assert check_layout(inst, {"a": 10, "b": 0, "c": 20}).valid
    assert check_layout(inst, {"a": 10, "b": 5, "c": 20}).first_conflict == ("a", "b")  # b below a
    assert check_layout(inst, {"a": 10, "b": 0, "c": 8}).first_conflict == ("b", "c")  # between: below first
    assert check_layout(inst, {"a": 10, "b": 0, "c": 18}).first_conflict == ("a", "c")  # c above a
