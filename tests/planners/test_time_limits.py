"""`plan` and `layout` keep to --time-limit on large inputs, and what makes them fast is exact.

Wall-clock bounds here are generous (limit + 10 s on a loaded 2-core machine); the figures
against the issue's limit + 5 s are in benchmarks/time_limits.py and the README.
"""

import json
import random
import time

import pytest

from planners import baselines
from planners.layout.generate import perfect_packing_instance, random_instance
from planners.layout.greedy import sweep_best_fit
from planners.layout.instance import (
    Buffer,
    LayoutInstance,
    SortedInts,
    check_layout,
    lower_bound_bytes,
    write_csv_instance,
)
from planners.swap import PlanContext, apply_plan, replay
from planners.swap.evaluate import evaluate, host_peak_lower_bound
from tierplan.cli import main


def _brute_valid(bufs, offs) -> bool:
    return not any(a.overlaps(b) and offs[a.bid] < offs[b.bid] + b.size_bytes
                   and offs[b.bid] < offs[a.bid] + a.size_bytes
                   for k, a in enumerate(bufs) for b in bufs[k + 1:])


def test_check_layout_agrees_with_every_pair_compared():
    rng = random.Random(7)
    verdicts = set()
    for _ in range(600):
        bufs = tuple(Buffer(f"b{i}", lo, lo + rng.randint(1, 5), rng.randint(1, 4))
                     for i in range(rng.randint(1, 10)) for lo in [rng.randint(0, 8)])
        offs = {b.bid: rng.randint(0, 8) for b in bufs}
        valid = check_layout(LayoutInstance(bufs, name="t", source="generated"), offs).valid
        assert valid == _brute_valid(bufs, offs)
        verdicts.add(valid)
    assert verdicts == {True, False}


def test_sorted_ints_neighbours_and_ceil_match_a_sorted_list():
    rng = random.Random(3)
    s, vals = SortedInts(), set()
    s.BLOCK = 4  # small blocks: splits and empty blocks happen
    for _ in range(3000):
        x = rng.randint(0, 300)
        srt = sorted(vals)
        assert s.ceil(x) == next((v for v in srt if v >= x), None)
        if x in vals:
            s.remove(x)
            vals.discard(x)
            continue
        below, above = [v for v in srt if v < x], [v for v in srt if v > x]
        assert s.neighbours(x) == below[-1:] + above[:1]
        s.add(x)
        vals.add(x)


def test_sweep_best_fit_is_valid_and_near_the_bound():
    rng = random.Random(5)
    for _ in range(300):
        bufs = tuple(Buffer(f"b{i}", lo, lo + rng.randint(1, 6), rng.randint(1, 5))
                     for i in range(rng.randint(1, 25)) for lo in [rng.randint(0, 10)])
        off = sweep_best_fit(LayoutInstance(bufs, name="t", source="generated"))
        assert _brute_valid(bufs, {b.bid: int(o) for b, o in zip(bufs, off, strict=True)})
    inst = random_instance(20_000, seed=3)
    off = sweep_best_fit(inst)
    check = check_layout(inst, {b.bid: int(o) for b, o in zip(inst.buffers, off, strict=True)})
    assert check.valid and check.peak_bytes <= 1.15 * lower_bound_bytes(inst.buffers)
    # a deadline already passed: everything stacked, still valid
    small = perfect_packing_instance(200, seed=1)
    off = sweep_best_fit(small, deadline_s=time.perf_counter() - 1)
    assert int((off + [b.size_bytes for b in small.buffers]).max()) == sum(b.size_bytes for b in small.buffers)


def test_layout_of_50k_buffers_keeps_to_its_time_limit(tmp_path, capsys):
    inst = random_instance(50_000, seed=2)
    path = tmp_path / "trace.csv"
    write_csv_instance(inst, str(path))
    t0 = time.perf_counter()
    code = main(["layout", "--trace", str(path), "--time-limit", "1", "--json",
                 "--out", str(tmp_path / "layout.json")])
    wall = time.perf_counter() - t0
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    assert wall < 1 + 10, wall
    assert d["num_buffers"] == 50_000 and d["gap"] < 0.2  # not stacked leftovers
    assert d["png_note"].startswith("50,000 buffers painted on a")  # drawn, as pixels
    assert (tmp_path / "layout.png").read_bytes()[:4] == b"\x89PNG"
    assert check_layout(inst, d["offsets"]).valid


def _ctx(model: str, *, layers: int, tp: int, hardware: str, seq_len: int) -> PlanContext:
    from hwmodels.catalog import load_node
    from simulator.job import TrainJob
    from simulator.model import get_model

    node = load_node(hardware)
    return PlanContext(model=get_model(model).with_layers(layers),
                       job=TrainJob(seq_len=seq_len, parallelism={"tp": tp}), node=node,
                       gpu_budget_bytes=node.gpu.hbm_capacity_bytes,
                       host_budget_bytes=node.host_memory.capacity_bytes)


def test_a_plan_without_copies_replays_on_one_gpu_exactly():
    ctx = _ctx("llama-2-70b", layers=3, tp=8, hardware="8xH200", seq_len=16384)
    for name in ("none", "full_recompute", "selective"):
        layers, _ = baselines.BASELINES[name](ctx)
        prof = ctx.profile_for([lp.checkpoint for lp in layers])
        applied = apply_plan(prof, layers, copy_s_per_byte=ctx.copy_s_per_byte)
        rep = replay(applied, ctx.node, num_gpus=8)
        sim = rep.sim  # the node's replay, run on demand
        assert len({s.name for s in sim.streams if s.kind == "compute"}) == 8
        hbm = sim.pool("gpu0.hbm")
        assert (rep.step_time_s, rep.stall_s, rep.peak_hbm_bytes, rep.peak_op, rep.peak_host_bytes) == (
            sim.step_time_s, sim.stall_s, hbm.peak_bytes, hbm.peak_task, sim.pool("host").peak_bytes)


@pytest.mark.parametrize(("model", "tp", "hardware"), [("llama-2-70b", 8, "8xH200"), ("llama-2-7b", 1, "1xH200")])
def test_host_lower_bound_never_exceeds_the_replayed_peak(model, tp, hardware):
    ctx = _ctx(model, layers=4, tp=tp, hardware=hardware, seq_len=16384)
    exact = []
    for name in ("offload_all", "memo"):
        layers, _ = baselines.BASELINES[name](ctx)
        res = evaluate(ctx, name, layers)
        bound = host_peak_lower_bound(res.applied, num_gpus=ctx.rates.num_gpus_sharing_host)
        assert bound is not None and 0 < bound <= res.peak_host_bytes
        exact.append(bound == res.peak_host_bytes)
    assert any(exact)


def test_plan_70b_tp8_keeps_to_its_time_limit(capsys):
    t0 = time.perf_counter()
    code = main(["plan", "--model", "llama-2-70b", "--tp", "8", "--hardware", "8xH200", "--time-limit", "2",
                 "--json"])
    wall = time.perf_counter() - t0
    out = capsys.readouterr()
    assert wall < 2 + 10, wall
    d = json.loads(out.out)
    mip = next(r for r in d["strategies"] if r["name"] == "mip")
    if code == 0:  # the MIP's plan, or a baseline as its fallback, with its status and gap
        assert d["best"] is not None and mip["feasible"] and d["mip"]["status"]
        assert d["mip"]["status"].startswith("time_limit:fallback:") or d["mip"]["gap"] is not None
    else:  # stopped by the limit: said so, never "infeasible"
        assert code == 4 and d["status"] == "time_limit" and mip["reason"].startswith("time limit")
        assert "infeasible" not in out.err
