"""`tierplan search`: the front on a toy space, backends agree, bad input, skip counts, determinism,
and the cached estimator equal to `estimate_training`."""

from __future__ import annotations

import importlib.util
import itertools
import json

import pytest

from hwmodels.catalog import load_node
from hwmodels.units import UserInputError
from simulator.estimator import TrainingEstimator, estimate_training
from simulator.job import Parallelism, TrainJob
from simulator.model import get_model
from tierplan.cli import main
from tierplan.search import (
    SearchSpace,
    configurations,
    dominates,
    pareto_front,
    parse_space,
    run_search,
    search,
)

# a 2-layer Llama-3.1-8B at 4K tokens: each estimate takes milliseconds
TOY = dict(model="llama-3.1-8b", num_layers=2, seq_len=(4096,), hardware=("8xH200", "8xH100"), gpus=(4, 8, 12),
           tp=(1, 2, 3), cp=(1, 2), zero=(0, 1), checkpointing=("none", "full"))


def _rec(t, m, usd, **kw):
    return {"s_per_million_tokens": t, "peak_allocated_bytes": m, "usd_per_million_tokens": usd, **kw}


def test_front_of_hand_checked_points():
    a = _rec(1.0, 10, 5.0, name="a")  # fastest
    b = _rec(2.0, 5, 5.0, name="b")  # smallest
    c = _rec(2.0, 10, 5.0, name="c")  # dominated by a (same memory and cost, slower) and by b
    d = _rec(3.0, 8, 1.0, name="d")  # cheapest
    e = _rec(3.0, 8, 1.0, name="e")  # ties d exactly: both stay
    f = _rec(1.0, 10, None, name="f")  # a without a price: +inf dollars, dominated by a
    assert dominates((1, 10, 5), (2, 10, 5)) and not dominates((1, 10, 5), (1, 10, 5))
    front = pareto_front([f, e, d, c, b, a])
    assert [r["name"] for r in front] == ["a", "b", "d", "e"]


def test_configurations_list_each_job_once():
    space = SearchSpace(model="m", tp=(1, 2), sp=(False, True), cp=(1, 2), cp_kind=("ring", "ulysses"),
                        checkpointing=("full",), dp=(1, 2))
    cs = configurations(space)
    # tp 1: sp off only; tp 2: off and on. cp 1: ring only; cp 2: both kinds.  (1+2) * (1+2) * 2 dp
    assert len(cs) == 3 * 3 * 2
    assert len({json.dumps(c, sort_keys=True) for c in cs}) == len(cs)


def test_skip_counts_name_the_field():
    space = SearchSpace(**TOY)
    res = search(space, num_workers=1)
    # gpus 4, 8, 12 over tp*cp in 1..6: gpus not a multiple (4 and 8 with tp 3; 4, 8 with tp3*cp2
    # too; 12 with tp 1/2 and cp 1/2 divides), tp 3 never divides the 32 heads, zero with dp 1
    assert set(res.skipped) == {"gpus", "parallelism.tp", "zero", "parallelism"}
    tp3 = [r for r in res.records if r["tp"] == 3 and "skipped" in r]
    assert len(tp3) == sum(1 for c in configurations(space) if c["tp"] == 3)
    assert sum(res.skipped.values()) + res.num_evaluated == len(configurations(space))
    # 12 GPUs do not fill whole 8-GPU nodes: "parallelism"
    assert all(r["skipped"] == "parallelism" for r in res.records
               if r["gpus"] == 12 and r["tp"] != 3 and "skipped" in r and r["zero"] == 0)


def test_front_is_not_dominated_and_meets_the_constraints():
    space = SearchSpace(**TOY)
    res = search(space, num_workers=1)
    ok = [r for r in res.records if "skipped" not in r and r["fits"]]
    assert res.front and all(r["fits"] for r in res.front)
    from tierplan.search import objectives

    for f in res.front:
        assert not any(dominates(objectives(r), objectives(f)) for r in ok)
    for r in ok:  # everything off the front is dominated by something on it
        if r not in res.front:
            assert any(dominates(objectives(f), objectives(r)) or objectives(f) == objectives(r)
                       for f in res.front)
    assert res.fewest_gpus is not None and res.fewest_gpus["num_gpus"] == min(r["num_gpus"] for r in ok)
    slow = SearchSpace(**TOY, max_step_time_s=min(r["step_time_s"] for r in ok) * 1.0001)
    assert [r["step_time_s"] for r in search(slow, num_workers=1).front] == [min(r["step_time_s"] for r in ok)]


def test_pool_equals_serial():
    space = SearchSpace(**TOY)
    assert run_search(space, num_workers=2) == run_search(space, num_workers=1)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (the [ray] extra: pip install 'tierplan[ray]')")
def test_ray_equals_pool():
    import ray

    space = SearchSpace(**{**TOY, "hardware": ("8xH200",), "tp": (1, 2)})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray_res = search(space, backend="ray", num_workers=2)
    finally:
        ray.shutdown()
    pool_res = search(space, num_workers=2)
    assert ray_res.front == pool_res.front and ray_res.records == pool_res.records


def test_missing_ray_is_one_line(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = main(["search", "--model", "llama-3.1-8b", "--layers", "2", "--seq-len", "4K", "--tp", "1", "--checkpointing", "full",
                 "--backend", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'tierplan[ray]'" in err


def test_two_runs_same_bytes(tmp_path, capsys):
    argv = ["search", "--model", "llama-3.1-8b", "--layers", "2", "--seq-len", "4K", "--hardware", "8xH200,8xH100",
            "--gpus", "1..8", "--tp", "1,2", "--zero", "0,1", "--workers", "2"]
    outs = []
    for i in range(2):
        csv, png = tmp_path / f"f{i}.csv", tmp_path / f"f{i}.png"
        assert main([*argv, "--json", "--csv", str(csv), "--plot", str(png)]) == 0
        outs.append((capsys.readouterr().out, csv.read_bytes(), png.read_bytes()))
    assert outs[0] == outs[1]
    data = json.loads(outs[0][0])
    assert data["num_configurations"] == 2 * 4 * 2 * 2 * 3 and data["front"]
    assert outs[0][1].decode().count("\n") == len(data["front"]) + 1


@pytest.mark.parametrize("text, line", [
    ("model: llama-3.1-8b\ntp: [1, 0]\n", "space.yaml: tp.1: Input should be greater than or equal to 1"),
    ("model: llama-3.1-8b\ncheckpointing: [sometimes]\n", "space.yaml: checkpointing.0:"),
    ("model: llama-3.1-8b\ntpp: [1]\n", "space.yaml: tpp: Extra inputs are not permitted"),
    ("tp: [1]\n", "space.yaml: model: required"),
    ("model: llama-3.1-8b\nseq_len: [12Q]\n", "space.yaml: seq_len: unknown suffix"),
])
def test_bad_space_file_is_one_line(tmp_path, monkeypatch, capsys, text, line):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(text)
    csv = tmp_path / "front.csv"
    assert main(["search", "space.yaml", "--csv", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err, err
    assert not csv.exists()


def test_bad_flag_values(capsys):
    assert main(["search", "--model", "llama-3.1-8b", "--gpus", "8..4"]) == 2
    assert "--gpus: range '8..4'" in capsys.readouterr().err
    assert main(["search", "--model", "no-such-model", "--seq-len", "4K"]) == 2
    assert capsys.readouterr().err.startswith("tierplan search: error: model:")
    with pytest.raises(UserInputError, match="mode"):
        parse_space({"model": "m", "mode": "fly"}, where="x")


def _exact_or_refused_by_both(estimator, model, job, node):
    """`estimate_training`'s estimate of ``job``, or None when it refuses the job, in which
    case ``estimator`` must refuse it too."""
    try:
        return estimate_training(model, job, node)
    except UserInputError:
        with pytest.raises(UserInputError):
            estimator.estimate(model, job, node)
        return None


def test_cached_estimator_equals_estimate_training():
    """Over a sample of shapes, nodes and data-parallel degrees (ZeRO-0 steps shared across dp,
    ZeRO-1/3 not), every field equals the uncached estimate, reserved memory included."""
    model = get_model("llama-3.1-8b").with_layers(2)
    nodes = [load_node("8xH200"), load_node("8xH100")]
    cached = TrainingEstimator(max_steps=2)
    n = 0
    for node, tp, cp, dp, zero, ck in itertools.product(nodes, (1, 8), (1, 4), (1, 2, 16), (0, 1, 3),
                                                        ("none", "selective")):
        job = TrainJob(seq_len=8192, checkpointing=ck, micro_batch=1,
                       parallelism=Parallelism(tp=tp, cp=cp, dp=dp, zero_stage=zero))
        exact = _exact_or_refused_by_both(cached, model, job, node)
        if exact is None:
            continue
        assert cached.estimate(model, job, node) == exact
        n += 1
    assert n >= 60


def test_search_estimator_equals_estimate_training_over_a_spread():
    """The search's estimator (every shape's step built once, reused for every ZeRO stage, dp and
    node) against `estimate_training` on each configuration: ZeRO 0-3, tp with and without
    sequence parallelism, cp ring and Ulysses, no / selective / full checkpointing, micro-batch
    1 and 2, configurations that fit and ones that do not (their replay skipped: reserved
    None, the rest equal). Visited in the search's order, shapes interleaved across nodes."""
    model = get_model("llama-3.1-8b").with_layers(3)
    nodes = [load_node("8xH200"), load_node("8xH100")]
    full, fast = TrainingEstimator(), TrainingEstimator(replay_over_capacity=False)
    seen = {"fits": 0, "over": 0, "zero": set(), "ck": set(), "kind": set()}
    axes = itertools.product((65536, 262144), (1, 2), ("none", "selective", "full"), ((1, False), (2, True), (4, False)),
                             ((1, "ring"), (2, "ring"), (4, "ulysses")), (0, 1, 2, 3), nodes, (1, 2, 8))
    for seq, mb, ck, (tp, sp), (cp, kind), zero, node, dp in axes:
        if (seq, mb, zero, dp) not in ((65536, 1, 0, 1), (65536, 1, 1, 2), (65536, 2, 2, 8), (262144, 1, 3, 8),
                                       (262144, 2, 0, 8), (65536, 1, 3, 2)):
            continue  # a spread, not the whole product
        job = TrainJob(seq_len=seq, micro_batch=mb, checkpointing=ck,
                       parallelism=Parallelism(tp=tp, sequence_parallel=sp, cp=cp, cp_kind=kind, dp=dp,
                                               zero_stage=zero))
        exact = _exact_or_refused_by_both(fast, model, job, node)
        if exact is None:
            continue
        assert full.estimate(model, job, node) == exact
        quick = fast.estimate(model, job, node)
        if exact.peak_allocated_bytes <= exact.hbm_capacity_bytes:
            assert quick == exact
            seen["fits"] += exact.fits
        else:
            assert not exact.fits and quick.peak_reserved_bytes is None
            assert quick == exact.__class__(**{**exact.__dict__, "peak_reserved_bytes": None})
            seen["over"] += 1
        seen["zero"].add(exact.zero_stage)
        seen["ck"].add(ck)
        seen["kind"].add((cp, kind))
    assert seen["fits"] >= 20 and seen["over"] >= 20, seen
    assert seen["zero"] == {0, 1, 2, 3} and len(seen["ck"]) == 3 and len(seen["kind"]) == 3


def test_cached_estimator_skips_the_replay_only_over_capacity():
    model = get_model("llama-3.1-8b").with_layers(2)
    node = load_node("1xH200")
    fast = TrainingEstimator(replay_over_capacity=False)
    small = TrainJob(seq_len=4096)
    huge = TrainJob(seq_len=4 * 1024 * 1024)
    assert fast.estimate(model, small, node) == estimate_training(model, small, node)
    exact, quick = estimate_training(model, huge, node), fast.estimate(model, huge, node)
    assert not exact.fits and not quick.fits and quick.peak_reserved_bytes is None
    assert quick == exact.__class__(**{**exact.__dict__, "peak_reserved_bytes": None})


def test_inference_search_reads_estimate_inference():
    from simulator.estimator import estimate_inference
    from simulator.job import InferJob

    space = SearchSpace(model="llama-3.1-8b", num_layers=2, mode="infer", prompt_len=(4096,), gen_len=16,
                        batch=(1, 4), kv_quant=("none", "int8"), hardware=("8xH200",))
    res = search(space, num_workers=1)
    assert res.num_evaluated == 4 and res.front
    r = res.records[-1]  # batch 4, int8
    exact = estimate_inference(get_model("llama-3.1-8b").with_layers(2),
                               InferJob(prompt_len=4096, gen_len=16, batch=4, kv_quant="int8"), load_node("8xH200"))
    assert (r["batch"], r["kv_quant"]) == (4, "int8")
    assert r["step_time_s"] == exact.decode_time_per_token_s and r["max_batch"] == exact.max_batch
    assert r["peak_allocated_bytes"] == max(exact.prefill_peak_allocated_bytes, exact.decode_peak_allocated_bytes)
    big = space.model_copy(update={"batch": tuple(range(1, 40))})
    with pytest.raises(UserInputError, match="inference configurations, more than 64"):
        run_search(big, num_workers=1)
