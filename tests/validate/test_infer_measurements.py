"""Every committed inference measurement, re-predicted by today's replay (validate.infer_plans).

For each record of validate/measurements/h200/infer-*.json that ran: prefill time and decode step
time within 10% of the measured, peak allocated HBM within 3%, per engine; a record outside its
band fails unless KNOWN lists it with its reason. The table of all rows is printed (pytest -s).

Hold-out: the host figures (hwmodels.host_overhead) are fitted on the host-overhead microbenchmark
and on the Llama-3.1-8B 32K batch-1 cell at most; the 128K batch 1 / 4 / 8 cells and the 70B-shaped
32K cell (weights streamed) are held out: they check the model, nothing is fitted on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from validate.infer_plans import COMPARED, comparison_rows, format_comparison

REPO = Path(__file__).resolve().parents[2]
FILES = sorted(p for p in (REPO / "validate" / "measurements" / "h200").glob("infer-*.json")
               if p.name.startswith(("infer-bench-", "infer-smoke-")))
"""Inference measurements with records (the infer-diag files hold copy rates and logit traces)."""
FITTED_CELLS = ("llama-3.1-8b-32k-b1",)
"""Cells the host figures may be fitted on; every other cell is held out."""
EAGER = "infer-bench-smoke-eager-h200-2026-12-02.json"
SMOKE = "infer-smoke-h200-2026-12-02.json"
CELL = "llama-3.1-8b-32k-b1"
HF_OFFLOADED = ("DynamicCache offloading: its steady steps ran 115-145 ms where the replay's both directions sharing the link (97 GB/s both ways) and the D2H on the default stream give 100 ms, and the median holds warm-up steps (pinned blocks allocated up to step ~8, from 3.5 s down)")
B32 = "infer-bench-h200-llama-3.1-8b-32k-b1.json"
B128 = "infer-bench-h200-llama-3.1-8b-128k-b1.json"
C128 = "llama-3.1-8b-128k-b1"
HOST_SPEED = ("the same HF resident 32K step took 18.14 ms in infer-exec2's smoke and 22.66 ms in this bench run (the "
              "same engines on another machine instance): the host figures are fitted on the first; the replay has "
              "no per-machine host speed")
HF_OFFLOADED_128K = ("DynamicCache offloading at 128K: medians 780 ms (2026-12-02) and 693 ms (2026-12-03, "
                     "another machine instance) hold steps 2-8 still allocating pinned blocks (0.7-1.7 s); its "
                     "last steps ran 620-650 and 520-570 ms, still 1.4-1.7x the replay's 379 ms (16 GiB each "
                     "way overlapped at 93 GB/s, host_overhead.py's 64 MiB chunks). Its host copies are pinned "
                     "(`.to('cpu', non_blocking=True)` pins its output: 64 GiB pinned peak), so not a pageable "
                     "copy. validate/scripts/hf_offload_diag.py (2026-12-03, a third instance, 24 steps) shows why: "
                     "each step's D2H asks torch's pinned allocator for 512 MiB blocks (a 256 MiB + 2 KiB layer "
                     "rounds up to a power of two) that cudaHostAlloc makes at ~1.9 GB/s (0.29 s a block) until the "
                     "cache holds enough: steps ran 13.8, 1.9, 0.97, 0.74 ... 0.55 s and settled at 0.42-0.47 s from "
                     "the 13th; profiled, H2D and D2H ran 48 and 51.5 GB/s, overlapped for 0.66 of their 0.72 s "
                     "(the replay's 97 GB/s both ways holds), the steady step 438 ms is +16% over the replay's, "
                     "and the allocation transient is not modelled")
B128_0312 = "infer-bench-h200-2026-12-03-llama-3.1-8b-128k-b1.json"
B4 = "infer-bench-h200-llama-3.1-8b-128k-b4.json"
HOLDOUT = "infer-bench-h200-2026-12-03-hf-holdout-resident.json"
HOLDOUT_HOST = ("held out: transformers' decode steps took 33-41 ms at 32K batch 4, 64K batch 1 and 128K batch 2 "
                "alike (the same KV bytes as 128K batch 1, half of them, twice them): a per-step floor of this "
                "machine instance's host (generate's Python and launches), not the cache's bytes; the replay's host "
                "figure is the 18.1 ms fitted on another instance, and 128K batch 2 lands in band (-9.4%) only "
                "because its GPU time nears that floor. Prefill and HBM of these cells are within 2.1% / 0.1%")
KNOWN: dict[tuple[str, str, str, str], str] = {
    (HOLDOUT, "llama-3.1-8b-32k-b4", "hf_resident", "decode_step_time_s"): HOLDOUT_HOST,
    (HOLDOUT, "llama-3.1-8b-64k-b1", "hf_resident", "decode_step_time_s"): HOLDOUT_HOST,
    (B32, CELL, "hf_resident", "decode_step_time_s"): HOST_SPEED,
    (B32, CELL, "hf_offloaded", "decode_step_time_s"): HF_OFFLOADED,
    (B128, C128, "hf_resident", "decode_step_time_s"): HOST_SPEED + "; at 128K its step (28.85 ms) is 16.6 ms over the "
        "static engine's graphed one (12.29 ms, predicted -5.1%) where the replay adds its host cost and DynamicLayer."
        "update's torch.cat (a copy of each layer's whole K and V every step, 1 GiB read and written per layer) at "
        "the profile's HBM copy rate (4.32 TB/s: 8 ms of the 20.1 ms predicted); the cat at ~2.1 TB/s or this "
        "instance's host would close it, and no committed microbenchmark times that cat: the held-out 32K batch-4 "
        "cell (the same KV bytes) is to tell which",
    (B128, C128, "hf_offloaded", "decode_step_time_s"): HF_OFFLOADED_128K,
    (B128_0312, C128, "hf_offloaded", "decode_step_time_s"): HF_OFFLOADED_128K,
    (EAGER, CELL, "plan", "prefill_time_s"):
        "the first run of the smoke on a fresh device (2.25 s; the next static run's prefill, also without a "
        "warm-up, took 1.56 s, +4% on the replay with the host's first-forward cost of a fresh process): 0.62 s "
        "more of one-off costs inside the timed prefill on a device nothing had run on yet, which the engine's "
        "warm-up now runs before the timer (infer-exec2)",
    (EAGER, CELL, "kv_host", "decode_step_time_s"):
        "the static engine's per-layer H2D copies ran at 38.7 GB/s where one pinned 1 GiB copy ran at "
        "55.4 GB/s: an executor issue (fixed in infer-exec2: 55.2 GB/s), the replay prices the link's rate",
    (EAGER, CELL, "hf_offloaded", "decode_step_time_s"): HF_OFFLOADED,
    (SMOKE, CELL, "hf_offloaded", "decode_step_time_s"): HF_OFFLOADED,
}
"""(file, cell, mode, figure) -> why that figure is outside its band."""


def _rows() -> list[dict]:
    return comparison_rows(FILES)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return _rows()


def test_there_are_inference_measurements() -> None:
    assert FILES, "no validate/measurements/h200/infer-*.json"


def test_every_measured_record_within_its_band(rows: list[dict]) -> None:
    print("\n" + "\n".join(format_comparison(rows)))
    misses, stale = [], []
    for r in rows:
        if r.get("status") != "ok":
            continue
        for key, _, band in COMPARED:
            c = r[key]
            known = (r["file"], r["cell"], r["mode"], key) in KNOWN
            if not c["within"] and not known:
                misses.append(f"{r['file']} {r['cell']} {r['mode']} {key}: measured {c['measured']:.4g}, "
                              f"predicted {c['predicted']:.4g} ({c['rel_error']:+.1%}, band {band:.0%})")
            if c["within"] and known:
                stale.append(f"{r['file']} {r['cell']} {r['mode']} {key}: inside its band now, drop it from KNOWN")
    assert not misses, "\n".join(misses)
    assert not stale, "\n".join(stale)


def test_known_gaps_name_measured_figures(rows: list[dict]) -> None:
    present = {(r["file"], r["cell"], r["mode"], key) for r in rows if r.get("status") == "ok" for key, _, _ in COMPARED}
    assert set(KNOWN) <= present
    assert all(len(reason) > 40 for reason in KNOWN.values())


def test_the_comparison_is_predicted_over_measured(rows: list[dict]) -> None:
    """A hand-checkable record: the smoke's hf_resident decode step re-predicted, its error the ratio less one."""
    row = next(r for r in rows if r["file"] == EAGER and r["mode"] == "hf_resident")
    c = row["decode_step_time_s"]
    assert c["rel_error"] == pytest.approx(c["predicted"] / c["measured"] - 1.0)
    assert c["measured"] == pytest.approx(0.05447060775756836)


def test_a_plan_that_ran_out_of_memory_is_predicted_not_to_fit() -> None:
    """Every measured plan run, replayed today: predicted feasible exactly when it ran (an OOM on the
    H200 is a plan the replay must refuse; a run that completed must not be refused)."""
    import json

    from validate.infer_plans import plan_for_record, repredict

    checked = []
    for path in FILES:
        records = json.loads(path.read_text())["records"]
        for r in records if isinstance(records, list) else []:  # the smoke file: runs by name, no plan files
            if r.get("status") not in ("ok", "oom") or not r.get("plan"):
                continue
            plan = plan_for_record(r, REPO / "validate" / "plans" / "infer-bench")
            feasible = repredict(plan, None)["feasible"]
            checked.append((path.name, r["cell"], r["mode"], r["status"], feasible))
    assert any(c[3] == "oom" for c in checked)
    wrong = [c for c in checked if c[4] != (c[3] == "ok")]
    assert not wrong, wrong
