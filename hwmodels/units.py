"""Unit constants and the parsers that turn user strings into base units.

Models: the one place where unit constants live. Inside tierplan every quantity is
bytes (int), seconds (float), FLOPs (float) or a rate of those; conversion to GiB, GB/s,
ms or TFLOP/s happens only when printing or plotting.
Assumes: vendors quote decimal units (GB, GB/s, TFLOP/s); allocators report bytes and we
print binary units (GiB). Sequence lengths use binary suffixes (64K = 65536 tokens,
1M = 1048576 tokens), as long-context papers and our measurements do.
Ignores: locale formats ("1,024").
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from hwmodels.limits import MAX_BYTES, MAX_SEQ_LEN, echo

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
KB = 10**3
MB = 10**6
GB = 10**9
TB = 10**12
GFLOPS = 1e9
TFLOPS = 1e12
PFLOPS = 1e15
US_PER_S = 1e6
MS_PER_S = 1e3
S_PER_HOUR = 3600.0
HOURS_PER_YEAR = 365 * 24.0  # a 365-day year: amortization lifetimes are quoted in years


class UserInputError(ValueError):
    """A problem with what a user gave us (a file, a flag, a field).

    The CLI prints ``str(err)`` as one line and exits with code 2; it never shows a traceback.
    Messages name the field (and file, where there is one) and the reason.
    """


def validation_error_line(
    err: Any, where: str = "", *, union_tags: Collection[str] = (), whole: str = ""
) -> str:
    """One line from a pydantic ``ValidationError``: ``WHERE: field.path: reason (+N more)``.

    The location is the first failing field, dotted, without the branch names ``union_tags`` that
    pydantic inserts for a union (``job.train.seq_len`` -> ``job.seq_len``); the reason drops
    pydantic's ``"Value error, "`` prefix, and where a validator raised a `UserInputError` that
    already names the field, the field is said once. Checks across fields have no location: the
    line then names ``whole`` (the object as a whole), or nothing. Duck-typed (anything with ``.errors()``), so this module does
    not import pydantic.
    """
    items = err.errors()
    if not items:
        return f"{where}: {err}" if where else str(err)
    first = items[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in union_tags) or whole
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, UserInputError):
        msg, field = str(cause), loc.rsplit(".", 1)[-1]
        if loc and msg.startswith(f"{field}: "):
            msg = msg[len(field) + 2 :]
        else:  # the cause names its own field
            loc = ""
    more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
    return ": ".join(part for part in (where, loc, msg) if part) + more


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
    "kb": KB,
    "mb": MB,
    "gb": GB,
    "tb": TB,
    "k": KiB,
    "m": MiB,
    "g": GiB,
    "t": TiB,
}

_COUNT_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

_NUM_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def _error(field: str, message: str) -> UserInputError:
    """A UserInputError ``"field: message"`` (just ``message`` without a field, as argparse
    types need: argparse names the flag itself)."""
    return UserInputError(f"{field}: {message}" if field else message)


def parse_bytes(value: str | int | float, *, field: str = "size", maximum: int = MAX_BYTES) -> int:
    """Parse ``"60GiB"``, ``"2 GB"``, ``"512MiB"``, ``4096`` into bytes (int).

    Binary suffixes (KiB, MiB, GiB, TiB, and the bare K/M/G/T) are powers of 1024; decimal
    ones (KB, MB, GB, TB) powers of 1000. Negative, non-finite, fractional-byte results and
    results above ``maximum`` are rejected with a message naming ``field``.
    """
    result = _parse_scaled(value, field=field, units=_BYTE_UNITS, example="80GiB or 4096", regex=_NUM_RE)
    if result > maximum:
        raise _error(field, f"must be at most {format_bytes(maximum)}, got {echo(value)}")
    if abs(result - round(result)) > 1e-6 * max(1.0, result):
        raise _error(field, f"{echo(value)} is not a whole number of bytes")
    return int(round(result))


def parse_count(value: str | int, *, field: str = "length", minimum: int = 1,
                maximum: int = MAX_SEQ_LEN) -> int:
    """Parse token counts and lengths: ``"128K"`` -> 131072, ``"1M"`` -> 1048576, ``"4096"``.

    Suffixes are binary (K = 1024). Rejects values outside [``minimum``, ``maximum``] with a
    message naming ``field``.
    """
    if isinstance(value, bool):
        raise _error(field, f"expected a count such as 64K, got {value!r}")
    if isinstance(value, int):
        result: float | int = value
    else:
        m = _NUM_RE.match(str(value)) if isinstance(value, str | float) else None
        if not m:
            raise _error(field, f"expected a count such as 64K or 4096, got {echo(value)}")
        number, unit = float(m.group(1)), m.group(2).lower()
        if unit not in _COUNT_UNITS:
            raise _error(field, f"unknown suffix {echo(m.group(2))} in {echo(value)} (use K, M)")
        result = number * _COUNT_UNITS[unit]
    if not math.isfinite(result) or result > maximum:
        raise _error(field, f"must be at most {maximum:,}, got {echo(value)}")
    if result != int(result):
        raise _error(field, f"{echo(value)} is not a whole number")
    if result < minimum:
        raise _error(field, f"must be at least {minimum}, got {echo(value)}")
    return int(result)


def _range_message(value: object, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"must be between {minimum:,} and {maximum:,}, got {echo(value)}"
    if minimum is not None:
        return f"must be at least {minimum:,}, got {echo(value)}"
    return f"must be at most {maximum:,}, got {echo(value)}"


def parse_int(value: str | int, *, field: str, minimum: int | None = 1, maximum: int) -> int:
    """A plain integer (``"8"``, ``8``) within [``minimum``, ``maximum``]; no suffixes, no bools.

    The bound is checked on the digits' length before converting, so a 20,000-digit value is
    refused at once (and echoed back cut short).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _error(field, f"expected an integer, got {echo(value)}")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,30}", text):
            if re.fullmatch(r"[+-]?[0-9]+", text):  # more digits than any bound has
                raise _error(field, _range_message(value, minimum, maximum))
            raise _error(field, f"expected an integer, got {echo(value)}")
        value = int(text)
    if (minimum is not None and value < minimum) or value > maximum:
        raise _error(field, _range_message(value, minimum, maximum))
    return value


def parse_float(value: str | int | float, *, field: str, minimum: float = 0.0,
                maximum: float, strict_minimum: bool = True) -> float:
    """A finite number within (``minimum``, ``maximum``] (``[minimum, ...`` when not strict).

    NaN and infinities are refused: a tolerance of NaN would pass every check, a time limit of
    inf would remove the limit.
    """
    if isinstance(value, bool):
        raise _error(field, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _error(field, f"expected a number, got {echo(value)}") from None
    if not math.isfinite(number):
        raise _error(field, f"must be a finite number, got {echo(value)}")
    low_ok = number > minimum if strict_minimum else number >= minimum
    if not low_ok or number > maximum:
        side = "greater than" if strict_minimum else "at least"
        raise _error(field, f"must be {side} {minimum:g} and at most {maximum:g}, got {echo(value)}")
    return number


def format_bytes(num_bytes: float) -> str:
    """Human-readable binary size for tables: ``1.50 GiB``, ``1000 B``, ``2.0 EiB``."""
    n = float(num_bytes)
    if not math.isfinite(n):
        return f"{n} B"
    for unit, scale in (("EiB", 1024**6), ("PiB", 1024**5), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB),
                        ("KiB", KiB)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def format_seconds(seconds: float) -> str:
    """Human-readable duration for tables: ``12.3 ms``, ``1.25 s``, ``45.0 us``."""
    s = float(seconds)
    if abs(s) >= 1.0:
        return f"{s:.3f} s"
    if abs(s) >= 1e-3:
        return f"{s * MS_PER_S:.2f} ms"
    return f"{s * US_PER_S:.1f} us"


_RATE_RE = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*(?:/\s*s|ps)?\s*$"
)
_BYTE_RATE_UNITS = {"": 1.0, "b": 1.0, "kb": KB, "mb": MB, "gb": GB, "tb": TB,
                    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB}
_FLOP_RATE_UNITS = {"": 1.0, "flop": 1.0, "flops": 1.0, "gflop": GFLOPS, "gflops": GFLOPS,
                    "tflop": TFLOPS, "tflops": TFLOPS, "pflop": PFLOPS, "pflops": PFLOPS}
_SECOND_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def _parse_scaled(value: str | int | float, *, field: str, units: Mapping[str, float],
                  example: str, regex: re.Pattern[str]) -> float:
    if isinstance(value, bool):
        raise _error(field, f"expected a value such as {example}, got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        m = regex.match(str(value))
        if not m:
            raise _error(field, f"expected a value such as {example}, got {echo(value)}")
        number, unit = float(m.group(1)), m.group(2).lower()
        if unit not in units:
            raise _error(field, f"unknown unit {echo(m.group(2))} in {echo(value)}")
    if not math.isfinite(number) or number < 0:
        raise _error(field, f"must be a finite non-negative number, got {echo(value)}")
    return number * units[unit]


def parse_rate(value: str | int | float, *, field: str = "rate", kind: str = "bytes") -> float:
    """Parse a rate into base units per second.

    ``kind="bytes"``: ``"55GB/s"`` -> 5.5e10 bytes/s (decimal GB, as vendors quote; GiB/s is
    binary). ``kind="flops"``: ``"989TFLOP/s"`` or ``"989 TFLOPS"`` -> 9.89e14 FLOP/s. A bare
    number is already in base units. Negative or non-finite values are rejected naming ``field``.
    """
    if kind == "bytes":
        return _parse_scaled(value, field=field, units=_BYTE_RATE_UNITS, example="55GB/s",
                             regex=_RATE_RE)
    if kind == "flops":
        return _parse_scaled(value, field=field, units=_FLOP_RATE_UNITS, example="989TFLOP/s",
                             regex=_RATE_RE)
    raise ValueError(f"parse_rate: kind must be 'bytes' or 'flops', got {kind!r}")


def parse_seconds(value: str | int | float, *, field: str = "time") -> float:
    """Parse ``"10us"``, ``"1.5ms"``, ``"120ns"``, ``0.002`` into seconds (float)."""
    return _parse_scaled(value, field=field, units=_SECOND_UNITS, example="10us", regex=_NUM_RE)


def format_rate(bytes_per_s: float) -> str:
    """Human-readable decimal rate for tables, as vendors quote it: ``54.8 GB/s``."""
    r = float(bytes_per_s)
    for unit, scale in (("TB/s", TB), ("GB/s", GB), ("MB/s", MB)):
        if abs(r) >= scale:
            return f"{r / scale:.3g} {unit}" if r / scale < 100 else f"{r / scale:.0f} {unit}"
    return f"{r:.0f} B/s"
