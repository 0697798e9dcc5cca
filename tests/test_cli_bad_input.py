"""Bad input on the command line: exit 2, one stderr line naming the field, no files left."""

import pytest

from tierplan.cli import main

CSV = "id,lower,upper,size\na,0,2,512\nb,1,3,512\n"


@pytest.mark.parametrize("argv, needle", [
    (["estimate", "--seq-len", "1e400"], "seq_len: must be at most"),
    (["estimate", "--layers", str(2**80)], "--layers: must be between 1 and 4,096"),
    (["estimate", "--batch", str(2**80)], "--batch: must be between"),
    (["estimate", "--tp", "9" * 20_000], "--tp: must be between"),
    (["validate", "ops", "--tolerance", "nan"], "--tolerance: must be a finite number"),
    (["validate", "plan", "x.json", "--repeats", "-3"], "--repeats: must be between 1"),
    (["plan", "--gpu-budget", ""], "--gpu-budget"),
    (["plan", "--time-limit", "inf"], "--time-limit: must be a finite number"),
    (["layout", "--trace", "{dir}/t.csv", "--hardware", "H201"], "unknown node preset 'H201'"),
    (["layout", "--trace", "{dir}/t.csv", "--out", "{dir}/l.json", "--png", "{dir}/l.xyz"],
     "--png: .*unsupported extension"),
    (["layout", "--trace", "{dir}/t.csv", "--out", "/dev/full", "--no-png"],
     "--out: /dev/full: cannot write: not a regular file"),
    (["layout", "--trace", "{dir}/t.csv", "--out", "{dir}", "--no-png"], "--out: .*a directory"),
    (["layout", "--trace", "/dev/zero"], "character device"),
])
def test_bad_input_is_one_line_exit_2_and_no_files(tmp_path, capsys, argv, needle):
    import re

    (tmp_path / "t.csv").write_text(CSV)
    before = sorted(tmp_path.iterdir())
    assert main([a.format(dir=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert re.search(needle, err) and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before


def test_closed_stdout_ends_quietly(monkeypatch, capsys):
    import sys

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["hw", "list", "--json"]) == 0
    assert capsys.readouterr().err == ""
