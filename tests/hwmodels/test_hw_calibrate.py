import json

import pytest

from hwmodels.calibrate import (
    fit_fits,
    fit_profile,
    gemm_flops,
    load_points,
    points_from_records,
    profile_json,
    residuals,
    sdpa_fwd_flops,
)
from hwmodels.catalog import PRESET_DIR, REPO_ROOT, get_profile
from hwmodels.units import UserInputError

PROBE = "validate/measurements/reference/h200-probe-2026-11-28.json"
MICRO = "validate/measurements/h200/microbench-h200-2026-11-28.json"


@pytest.fixture(scope="module")
def committed():
    return get_profile("H200-measured")


@pytest.fixture(scope="module")
def refit(committed):
    return fit_profile(
        [REPO_ROOT / p for p in committed.measurements], name=committed.name, gpu=committed.gpu
    )


def test_committed_profile_is_exactly_the_fit(committed, refit):
    assert set(committed.fits) == set(refit.fits)
    for cls, fit in committed.fits.items():
        again = refit.fits[cls]
        assert fit.rate_curve == again.rate_curve, cls
        for field in ("flops_per_s", "bandwidth_bytes_per_s", "latency_s", "max_abs_rel_error"):
            a, b = getattr(fit, field), getattr(again, field)
            assert (a is None) == (b is None), (cls, field)
            assert a is None or a == pytest.approx(b, rel=1e-5, abs=1e-12), (cls, field)
        assert fit.num_points == again.num_points and fit.dtype == again.dtype
    assert committed.measurements == refit.measurements
    # the file on disk is what profile_json writes (same keys, same order)
    stored = json.loads((PRESET_DIR / "profiles" / "H200-measured.json").read_text())
    assert list(stored) == list(json.loads(profile_json(refit)))
    assert list(stored["fits"]) == list(json.loads(profile_json(refit))["fits"])


def test_committed_profile_cites_its_measurements(committed):
    assert PROBE in committed.measurements and MICRO in committed.measurements
    for path in committed.measurements:
        assert (REPO_ROOT / path).exists()


def _by_class(profile, paths):
    res = residuals(profile, load_points([REPO_ROOT / p for p in paths]))
    out: dict[str, list] = {}
    for r in res:
        out.setdefault(r.op_class, []).append(r)
    return out


# Points the fit misses by more than 10%, with the bound each must stay under. All come from
# the two sources disagreeing at small sizes or from GEMM shape effects a FLOP rate cannot see:
# - the reference probe timed each call alone with events around it; the microbenchmarks time
#   50 repetitions. At the smallest sizes the probe is 20-40% slower (1 MiB copies, 4096^3
#   GEMM at 505 vs 698 TFLOP/s, SDPA at 4K tokens), so the joint fit predicts those fast;
# - GEMMs of 4K-8K tokens run at 740-810 TFLOP/s where the 167-GEMM fit says 690, so they are
#   predicted 10-18% slow;
# - the eager embedding backward (index_add) moves bytes at a rate that varies with length.
KNOWN_OUTLIERS = {
    ("copy_h2d", "copy h2d 1 MiB"): 0.25,
    ("copy_d2h", "copy d2h 1 MiB"): 0.20,
    ("gemm", "gemm 4096x4096x4096 bf16"): 0.30,
    ("attention_fwd", "sdpa default(?) b1 s4096 h32/32 d128 fwd"): 0.25,
    ("attention_bwd", "sdpa default(?) b1 s4096 h32/32 d128 bwd (fwdbwd - fwd)"): 0.35,
    ("memory.embedding.eager.fwdbwd", None): 0.20,
    ("gemm", None): 0.20,
    # the burst side's own points: 512 rows x 4096 -> 14336 ran at 695 TFLOP/s where the other
    # 512-row shape ran at 790 (a shape effect, both fit points)
    ("gemm.burst", "gemm 512x14336x4096 bf16 sweep"): 0.11,
    # the rate curve takes the in-step time where a size has one: cuDNN's causal backward at 32K
    # tokens ran at 489 TFLOP/s inside a step and 536-538 alone, so the standalone points are
    # predicted 9-10% slow
    ("attention_bwd.cudnn", "sdpa cudnn b1 s32768 h32/32 d128 bwd"): 0.11,
    ("attention_bwd.cudnn", "sdpa cudnn b1 s32768 h32/8 d128 bwd"): 0.11,
}


def test_residuals_within_10pct_except_documented_outliers(committed):
    res = residuals(committed, load_points([REPO_ROOT / p for p in committed.measurements]))
    assert len(res) == 597  # every point of every committed file is predicted
    misses = []
    for r in res:
        bound = KNOWN_OUTLIERS.get(
            (r.op_class, r.label), KNOWN_OUTLIERS.get((r.op_class, None), 0.10)
        )
        if abs(r.rel_error) > bound:
            misses.append((r.op_class, r.label, round(r.rel_error, 3)))
    assert misses == []
    gemm = sorted(abs(r.rel_error) for r in res if r.op_class == "gemm")
    assert len(gemm) == 222 and gemm[int(0.9 * len(gemm))] < 0.10  # 90% of GEMMs within 10%
    assert committed.fits["attention_bwd.cudnn"].max_abs_rel_error <= 0.11
    for cls in (
        "attention_fwd.cudnn",
        "attention_fwd.flash",
        "attention_bwd.flash",
        "attention_fwd.masked",
        "attention_bwd.masked",
        "copy_bidir",
        "hbm_copy",
        "all_reduce",
        "all_gather",
        "all_to_all",
    ):
        assert committed.fits[cls].max_abs_rel_error <= 0.10, cls


def test_memory_variants_fit_within_20pct(committed):
    res = _by_class(committed, committed.measurements)
    memory = [r for cls, rs in res.items() if cls.startswith("memory.") for r in rs]
    assert len(memory) == 126  # with the KV dequantize (int8 / int4, two sizes each)
    assert max(abs(r.rel_error) for r in memory) < 0.20
    # eager HF RMSNorm (five kernels) is an order of magnitude below the fused kernel
    assert (
        committed.fits["memory.rmsnorm.hf_eager.fwd"].bandwidth_bytes_per_s * 5
        < committed.fits["memory.rmsnorm.torch_rms_norm.fwd"].bandwidth_bytes_per_s
    )


def test_fit_recovers_known_parameters_exactly():
    lat, rate = 20e-6, 500e12
    records = [
        {
            "op": "gemm",
            "m": m,
            "n": 4096,
            "k": 4096,
            "dtype": "bf16",
            "time_s": lat + gemm_flops(m=m, n=4096, k=4096) / rate,
        }
        for m in (1024, 8192, 65536)
    ]
    records += [
        {"op": "copy", "direction": "h2d", "pinned": True, "bytes": n, "time_s": 10e-6 + n / 50e9}
        for n in (2**20, 2**26, 2**31)
    ]
    fits = fit_fits(points_from_records(records))
    assert fits["gemm"].flops_per_s == pytest.approx(rate) and fits[
        "gemm"
    ].latency_s == pytest.approx(lat)
    assert fits["copy_h2d"].bandwidth_bytes_per_s == pytest.approx(50e9)
    assert fits["copy_h2d"].latency_s == pytest.approx(10e-6)
    assert fits["gemm"].max_abs_rel_error < 1e-9


def test_sdpa_conversions():
    shape = {
        "batch": 1,
        "seq_len": 4096,
        "num_heads": 32,
        "num_kv_heads": 8,
        "head_dim": 128,
        "causal": True,
    }
    f = sdpa_fwd_flops(batch=1, seq_len=4096, num_heads=32, head_dim=128, causal=True)
    assert f == 4 * 32 * 4096 * 4096 * 128 / 2
    skipped: list[str] = []
    pts = points_from_records(
        [
            {"op": "sdpa", "pass": "fwd", **shape, "time_s": 1.0},
            {"op": "sdpa", "pass": "fwdbwd", **shape, "time_s": 4.0},
            {"op": "copy", "direction": "h2d", "pinned": False, "bytes": 1, "time_s": 1},
            {"op": "launch_overhead", "time_s": 1e-6},
        ],
        skipped=skipped,
    )
    bwd = [p for p in pts if p.op_class == "attention_bwd"][0]
    assert bwd.work == pytest.approx(2.5 * f) and bwd.time_s == pytest.approx(3.0)
    assert len(skipped) == 2
    flash = points_from_records(
        [{"op": "sdpa", "pass": "bwd", "backend": "flash", **shape, "time_s": 2.0}]
    )
    assert flash[0].op_class == "attention_bwd.flash"


def test_bad_records_name_file_and_field(tmp_path):
    with pytest.raises(UserInputError, match=r"x.json: records.0: missing field 'k'"):
        points_from_records([{"op": "gemm", "m": 1, "n": 1, "time_s": 1.0}], source="x.json")
    with pytest.raises(UserInputError, match="records.0.time_s"):
        points_from_records([{"op": "gemm", "m": 1, "n": 1, "k": 1, "time_s": -1}], source="x.json")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"records": []}))
    with pytest.raises(UserInputError, match="no measurement records"):
        load_points([empty])


def test_malformed_files_are_one_line_errors(tmp_path):
    cases = {
        "strings.json": {"records": ["gemm"]},
        "types.json": {"records": [{"op": "gemm", "m": "big", "n": 1, "k": 1, "time_s": 1.0}]},
        "probe.json": {"copies_GBps": {"64": {"h2d_pinned": "fast"}}},
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(data))
        with pytest.raises(UserInputError, match=name):
            load_points([path])


def test_times_that_do_not_grow_still_give_a_rate():
    records = [
        {"op": "hbm_copy", "bytes": n, "hbm_bytes": 2 * n, "time_s": t}
        for n, t in ((2**20, 2e-3), (2**30, 1e-3))
    ]
    fit = fit_fits(points_from_records(records))["hbm_copy"]
    assert fit.latency_s == 0.0 and fit.bandwidth_bytes_per_s > 0


def test_attention_rate_curve_by_hand():
    """Attention classes get a rate curve: one point per size (median rate, in-step points
    taking precedence), log-linear between sizes, flat beyond the last, alpha-beta below."""
    from hwmodels.calibrate import CalibrationPoint, fit_fits
    from hwmodels.specs import curve_rate

    def pt(work, rate, in_step=False):
        return CalibrationPoint("attention_fwd.cudnn", work, 1, work / rate, "x", "bf16", in_step)

    points = [pt(1e12, 600e12), pt(1e12, 620e12), pt(1e13, 600e12), pt(1e14, 500e12),
              pt(1e14, 560e12, in_step=True)]
    fit = fit_fits(points)["attention_fwd.cudnn"]
    assert fit.rate_curve == ((1e12, 610e12), (1e13, 600e12), (1e14, 560e12))
    assert fit.time_s(1e14) == pytest.approx(1e14 / 560e12)
    mid = 10 ** 13.5  # halfway in log(work) between 1e13 and 1e14
    assert curve_rate(fit.rate_curve, mid) == pytest.approx(580e12)
    assert fit.time_s(1e16) == pytest.approx(1e16 / 560e12)  # held past the last size
    assert fit.time_s(1e9) == pytest.approx(fit.latency_s + 1e9 / fit.flops_per_s)
    # a GEMM class is never curved; two sizes are too few for a curve
    gemm = [CalibrationPoint("gemm", w, 1, w / 700e12, "g", "bf16") for w in (1e12, 1e13, 1e14)]
    assert fit_fits(gemm)["gemm"].rate_curve is None
    assert fit_fits(points[:3])["attention_fwd.cudnn"].rate_curve is None
    # another dtype scales the curve with the datasheet peak
    assert fit.scaled(2.0).rate_curve == ((1e12, 1220e12), (1e13, 1200e12), (1e14, 1120e12))


def test_the_4096_cubed_gemm_probe_point_disagrees_with_every_other_timing_of_that_shape(committed):
    """Why the public probe's 4096^3 GEMM (505 TFLOP/s, one call between two events) stays a
    documented outlier: the six back-to-back microbenchmark timings of the same shape on the same
    H200 (fwd, input and weight grad, two runs) and the four of the warm/cold run (1455-1980 MHz)
    ran it in 182-222 us; the fit predicts 197 us, within 12% of all ten. A fit or a
    small-GEMM model that predicted the probe's 272 us would miss every one of them by 22-50%.
    The GEMM sweep (tests/kernels/test_gemm_sweep.py) timed the shape again both ways on one H200:
    one call after a synchronize 206-236 us, queued 177-186 us: the probe's figure is a call's
    time with its launch exposed, not the kernel's."""
    from hwmodels.catalog import get_node
    from hwmodels.compute import compute_time_s

    node = get_node("1xH200")
    flops = gemm_flops(m=4096, n=4096, k=4096)
    pred = compute_time_s(flops=flops, hbm_bytes=0.0, op_class="gemm", dtype="bf16", node=node)
    times = []
    for name in ("microbench-h200-2026-11-28.json", "microbench-h200-2026-11-28-r2.json",
                 "gemm-warm-cold-h200-2026-11-28.json"):
        recs = json.loads((REPO_ROOT / "validate/measurements/h200" / name).read_text())["records"]
        times += [r["time_s"] for r in recs
                  if r.get("op") == "gemm" and (r["m"], r["n"], r["k"]) == (4096, 4096, 4096)]
    assert len(times) == 10
    for t in times:
        assert pred == pytest.approx(t, rel=0.12)
    probe = json.loads((REPO_ROOT / PROBE).read_text())["gemm_bf16_TFLOPs"]["4096x4096x4096"]
    probe_s = flops / (probe * 1e12)
    assert pred / probe_s - 1 == pytest.approx(-0.28, abs=0.01)
    assert all(probe_s / t - 1 > 0.22 for t in times)
