import pytest

from hwmodels.units import GiB, MiB, UserInputError, format_bytes, parse_bytes, parse_count


@pytest.mark.parametrize(
    "text,expected",
    [("60GiB", 60 * GiB), ("2GB", 2 * 10**9), ("512 MiB", 512 * MiB), ("4096", 4096), (1024, 1024),
     ("1.5GiB", 3 * GiB // 2), ("2G", 2 * GiB)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["-1GiB", "banana", "3XB", "0.3B", True])
def test_parse_bytes_rejects(bad):
    with pytest.raises(UserInputError, match="budget"):
        parse_bytes(bad, field="budget")


@pytest.mark.parametrize("text,expected", [("64K", 65536), ("1M", 1048576), ("4096", 4096), (7, 7)])
def test_parse_count(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("bad", ["banana", "0", "1.5", "-4K", "3Q"])
def test_parse_count_rejects(bad):
    with pytest.raises(UserInputError, match="seq_len"):
        parse_count(bad, field="seq_len")


def test_format_bytes():
    assert format_bytes(3 * GiB // 2) == "1.50 GiB"
    assert format_bytes(100) == "100 B"
