"""The one reader of user files: refusals are one UserInputError line naming the file."""

import os

import pytest

from hwmodels.limits import MAX_NESTING, MAX_YAML_ALIASES, echo
from hwmodels.units import UserInputError, format_bytes, parse_count, parse_float, parse_int
from hwmodels.userfile import read_user_bytes, read_user_data, read_user_json


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: (os.symlink(p.with_name("b"), p), os.symlink(p, p.with_name("b"))), "symlink loop"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00binary"), "not UTF-8"),
    (lambda p: p.write_text("[" * 100_000), f"deeper than {MAX_NESTING}"),
    (lambda p: p.write_text('{"a": '), "malformed JSON at line 1"),
])
def test_json_reader_refuses(tmp_path, make, needle):
    path = tmp_path / "x.json"
    make(path)
    with pytest.raises(UserInputError, match=needle) as info:
        read_user_json(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_device_is_refused_before_reading():
    with pytest.raises(UserInputError, match="character device"):
        read_user_bytes("/dev/zero")


def test_size_cap(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("0" * 2000)
    with pytest.raises(UserInputError, match="larger than"):
        read_user_bytes(path, max_bytes=1000)


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match=f"more than {MAX_YAML_ALIASES} aliases"):
        read_user_data(path)


def test_yaml_few_aliases_and_strict_booleans(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {tp: 2}\njob: *b\nflag: yes\nreal: true\n")
    assert read_user_data(path) == {"base": {"tp": 2}, "job": {"tp": 2}, "flag": "yes", "real": True}


def test_deep_yaml_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 3000 + "]" * 3000)
    with pytest.raises(UserInputError, match=f"deeper than {MAX_NESTING}"):
        read_user_data(path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("a = 1")
    with pytest.raises(UserInputError, match="unknown input format '.toml'"):
        read_user_data(path)


def test_bounded_parsers_state_the_bound_and_cut_the_echo():
    with pytest.raises(UserInputError, match="--tp: must be between 1 and 1,024") as info:
        parse_int("9" * 20_000, field="--tp", maximum=1024)
    assert len(str(info.value)) < 120
    for value in ("1e400", "1e30", str(2**80)):
        with pytest.raises(UserInputError, match="seq_len: must be at most"):
            parse_count(value, field="seq_len")
    for value in ("nan", "inf", "-1"):
        with pytest.raises(UserInputError, match="--tolerance"):
            parse_float(value, field="--tolerance", maximum=10.0)
    assert len(echo("x" * 1000)) <= 60


def test_small_sizes_are_not_shown_as_zero():
    assert format_bytes(1000) == "1000 B" and format_bytes(1536) == "1.50 KiB"
