"""The quick subset of the command-line fuzz suite: seeded hostile inputs on every subcommand.

Every generated case must end without a traceback or a hang, leave no file behind when it
fails, run no payload, and refuse input that is invalid by construction with exit 2 and one
stderr line naming the field. The full run (>= 2,000 cases) is ``benchmarks/fuzz_cli.py``.
"""

import os

import pytest

from fuzz.generate import CHANNELS, Case, File, generate, load_bases
from fuzz.runner import (
    FAILURE_CLASSES,
    Outcome,
    classify,
    describe,
    fuzz,
    make_base_plan,
    run_cases,
    summarize,
)

CI_CASES = 240
CI_SEED = 20261202


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    return fuzz(CI_SEED, CI_CASES, jobs=2)


def test_every_channel_and_subcommand_is_exercised(outcomes):
    summary = summarize(outcomes)
    assert set(summary["per_channel"]) == set(CHANNELS)
    assert {"estimate", "simulate", "plan", "layout", "kernels cost gemm", "hw transfer", "hw calibrate",
            "validate ops", "validate steps", "validate plan", "bench report"} <= set(summary["per_command"])
    assert summary["invalid_by_construction"] >= CI_CASES // 2


@pytest.mark.parametrize("failure", FAILURE_CLASSES)
def test_no_failures_of_this_class(outcomes, failure):
    failed = [o for o in outcomes if failure in o.failures]
    assert not failed, f"{len(failed)} cases: " + "\n".join(describe(o) for o in failed[:10])


def test_the_generator_is_seeded(tmp_path):
    bases = load_bases(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       make_base_plan(str(tmp_path)))
    first = list(generate(7, 40, bases, marker_dir="/m"))
    again = list(generate(7, 40, bases, marker_dir="/m"))
    other = list(generate(8, 40, bases, marker_dir="/m"))
    assert first == again
    assert [c.argv for c in first] != [c.argv for c in other]


def test_the_full_run_mutates_the_inference_jobs_newest_fields(tmp_path):
    """The 2,000-case run gives the inference job's chunked prefill and decode engine bad values,
    each invalid by construction and to be refused by name."""
    bases = load_bases(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       make_base_plan(str(tmp_path)))
    cases = [c for c in generate(1, 2000, bases, marker_dir="/m") if c.kind.startswith("scenario")]
    for field in ("prefill_chunk_len", "engine"):
        hit = [c for c in cases if c.kind.endswith(f"infer job.{field}")]
        assert len(hit) >= 5 and all(c.invalid and field in c.needles for c in hit)
        assert {c.command for c in hit} == {"estimate", "layout"}


def _case(**kw) -> Case:
    base = dict(ident="t", command="estimate", channel="flags", kind="k", argv=("estimate",),
                needles=("--tp",))
    return Case(**{**base, **kw})


@pytest.mark.parametrize("rc, stderr, new, invalid, expected", [
    (2, "tierplan estimate: error: --tp: must be between 1 and 8\n", (), True, ()),
    (0, "", (), True, ("accepted_invalid",)),
    (0, "", ("out/x.json",), None, ()),
    (2, "tierplan estimate: error: --tp: bad\n", ("out/x.json",), True, ("partial_output",)),
    (2, "line one\nline two\n", (), True, ("multi_line",)),
    (2, "tierplan estimate: error: something is wrong\n", (), True, ("no_field",)),
    (1, "Traceback (most recent call last):\n  ...\nValueError: x\n", (), None, ("traceback",)),
    (1, "refused\n", (), True, ("wrong_exit",)),
    (None, "", (), None, ("timeout",)),
])
def test_classify(rc, stderr, new, invalid, expected):
    assert classify(_case(invalid=invalid), rc, stderr, new, False) == expected


def _faulty_main(argv):
    """Stands in for ``tierplan.cli.main`` in the forked children: each argv[0] misbehaves."""
    import pathlib
    import sys
    import time

    what = argv[0]
    if what == "hang":
        time.sleep(60)
    if what == "payload":
        pathlib.Path(argv[1]).touch()
        return 0
    if what == "leftover":
        pathlib.Path("out/half.json").write_text("{")
        print("tierplan x: error: --out: disk full", file=sys.stderr)
        return 2
    if what == "crash":
        raise KeyError("boom")
    print("tierplan x: error: --tp: must be at least 1", file=sys.stderr)
    return 2


def test_the_runner_catches_a_hang_a_payload_a_leftover_and_a_crash(tmp_path, monkeypatch):
    import tierplan.cli

    monkeypatch.setattr(tierplan.cli, "main", _faulty_main)  # the forked children inherit it
    marker = str(tmp_path / "PAYLOAD_RAN-p")
    out = (File("out", kind="dir"),)
    cases = [_case(ident="h", argv=("hang",), limit_s=0.5), _case(ident="p", argv=("payload", marker)),
             _case(ident="l", argv=("leftover",), files=out, needles=("--out",)),
             _case(ident="c", argv=("crash",), invalid=None), _case(ident="ok", argv=("fine",))]
    got = {o.case.ident: o.failures for o in run_cases(cases, jobs=2, kill_after_s=1.0)}
    assert got == {"h": ("timeout",), "p": ("accepted_invalid",), "l": ("partial_output",),
                   "c": ("traceback",), "ok": ()}
    assert os.path.exists(marker)  # the runner's marker check (by name) is what fuzz() reports
