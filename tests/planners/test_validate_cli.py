import json

from tierplan.cli import main


def test_validate_steps_json(capsys):
    code = main(["validate", "steps", "--json"])
    d = json.loads(capsys.readouterr().out)
    peaks = [r for r in d["rows"] if r["figure"] == "peak_allocated_bytes"]
    assert len(peaks) >= 40
    assert all(abs(r["rel_error"]) <= 0.01 for r in peaks)
    # known step-time gaps (sliding-window mask, a launch-bound GPT-2) make the exit code 1
    assert code == (0 if d["num_within"] == d["num_rows"] else 1)


def test_validate_ops_table_lists_misses_and_summary(capsys):
    code = main(["validate", "ops", "--tolerance", "0.25"])
    out = capsys.readouterr().out
    assert "time_s:" in out and "within 25%" in out
    assert code == 0  # every modelled operator record is within 25%


def test_validate_missing_file_is_one_line(capsys, tmp_path):
    code = main(["validate", "ops", "--measurements", str(tmp_path / "nope.json")])
    err = capsys.readouterr().err
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1


def test_validate_malformed_file(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code = main(["validate", "ops", "--measurements", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "bad.json" in err and len(err.strip().splitlines()) == 1
