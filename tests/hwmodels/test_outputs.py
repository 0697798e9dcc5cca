"""Output sets: every file of a command appears, or none does."""

import pytest

from hwmodels.outputs import OutputSet
from hwmodels.units import UserInputError


def test_all_files_appear_together(tmp_path):
    with OutputSet() as out:
        out.write_text(tmp_path / "a.json", "{}", field="--out")
        out.write_text(tmp_path / "b.json", "[]", field="--out")
        assert not (tmp_path / "a.json").exists()  # nothing visible before the end
    assert (tmp_path / "a.json").read_text() == "{}" and (tmp_path / "b.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_later_failure_leaves_nothing(tmp_path):
    with pytest.raises(UserInputError, match="--png: .*unsupported extension '.xyz'"):
        with OutputSet() as out:
            out.write_text(tmp_path / "plan.json", "{}", field="--out")
            out.reserve(tmp_path / "pic.xyz", field="--png", suffixes=(".png",))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target, needle", [
    ("{dir}", "a directory"),
    ("/dev/full", "not a regular file"),
    ("{dir}/missing/x.json", "does not exist"),
])
def test_bad_targets_are_one_line(tmp_path, target, needle):
    with pytest.raises(UserInputError, match=needle):
        with OutputSet() as out:
            out.reserve(target.format(dir=tmp_path), field="--out")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_is_one_line(tmp_path):
    def fail(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(UserInputError, match="--out: cannot write .*No space left"):
        with OutputSet() as out:
            out.write(out.reserve(tmp_path / "x.json", field="--out"), fail)
    assert list(tmp_path.iterdir()) == []
