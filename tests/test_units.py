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


def _validation_error(data):
    from typing import Literal

    from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

    class A(BaseModel):
        kind: Literal["a"] = "a"
        n: int = Field(gt=0)

        @field_validator("n")
        @classmethod
        def _small(cls, v):
            if v > 100:
                raise UserInputError(f"n: {v} is more than 100")
            return v

    class B(BaseModel):
        kind: Literal["b"] = "b"
        s: str

    class Outer(BaseModel):
        job: A | B = Field(discriminator="kind")
        m: int = 1

        @model_validator(mode="after")
        def _whole(self):
            if self.m == 7:
                raise ValueError("m may not be 7")
            return self

    try:
        Outer.model_validate(data)
    except ValidationError as err:
        return err
    raise AssertionError("no error")


def test_validation_error_line():
    from hwmodels.units import validation_error_line

    # union tag dropped from the location, pydantic's message kept, the count of the rest
    err = _validation_error({"job": {"kind": "a", "n": 0}, "m": "x"})
    assert validation_error_line(err, "f.json", union_tags=("a", "b")) == (
        "f.json: job.n: Input should be greater than 0 (+1 more)"
    )
    assert validation_error_line(err).startswith("job.a.n: ")
    # a UserInputError that names its field says the field once, without "Value error, "
    err = _validation_error({"job": {"kind": "a", "n": 101}})
    assert validation_error_line(err, "f.json", union_tags=("a",)) == "f.json: job.n: 101 is more than 100"
    # a check across fields has no location
    err = _validation_error({"job": {"kind": "b", "s": ""}, "m": 7})
    assert validation_error_line(err, "f.json") == "f.json: m may not be 7"
    assert validation_error_line(err, "f.json", whole="outer") == "f.json: outer: m may not be 7"
