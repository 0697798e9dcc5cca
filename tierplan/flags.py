"""argparse types for every numeric flag of the `tierplan` commands: one set, bounds included.

Each factory returns a ``type=`` callable; a bad value becomes argparse's one-line usage error
(``tierplan: error: argument --tolerance: must be a finite number, got 'nan'``, exit 2), with
the value echoed cut short. The parsing itself is ``hwmodels.units``; the bounds are
``hwmodels.limits`` unless a flag has a tighter one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hwmodels import limits
from hwmodels.units import UserInputError, parse_bytes, parse_count, parse_float, parse_int


def _typed(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UserInputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def integer(*, minimum: int | None = 1, maximum: int) -> Callable[[str], int]:
    """A plain integer in [minimum, maximum]."""
    return _typed("integer", lambda t: parse_int(t, field="", minimum=minimum, maximum=maximum))


def count(*, minimum: int = 1, maximum: int = limits.MAX_SEQ_LEN) -> Callable[[str], int]:
    """A token count with binary suffixes (``128K``) in [minimum, maximum]."""
    return _typed("count", lambda t: parse_count(t, field="", minimum=minimum, maximum=maximum))


def number(*, minimum: float = 0.0, maximum: float, strict_minimum: bool = True) -> Callable[[str], float]:
    """A finite float in (minimum, maximum] (or [minimum, maximum] when not strict)."""
    return _typed("number", lambda t: parse_float(t, field="", minimum=minimum, maximum=maximum,
                                                  strict_minimum=strict_minimum))


def seconds(*, maximum: float = limits.MAX_TIME_LIMIT_S) -> Callable[[str], float]:
    """A positive, finite number of seconds (a time limit): ``inf`` and ``nan`` are refused."""
    return number(minimum=0.0, maximum=maximum)


def size(*, minimum: int = 1, maximum: int = limits.MAX_BYTES) -> Callable[[str], int]:
    """A byte size such as ``60GiB`` or ``2TB`` in [minimum, maximum]; an empty value is refused."""

    def parse(text: str) -> int:
        value = parse_bytes(text, field="", maximum=maximum)
        if value < minimum:
            raise UserInputError(f"must be at least {minimum:,} bytes, got {limits.echo(text)}")
        return value

    return _typed("size", parse)
