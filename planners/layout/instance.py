"""Offset-assignment (dynamic storage allocation) instances, their lower bound, and the checker.

Models: a set of buffers, each with a size in bytes and a lifetime, the half-open interval
[lower, upper) of integer time steps (op indices of a Workload, event indices of a snapshot,
or whatever a CSV file says). A layout gives every buffer a byte offset in one arena; it is
valid when no two buffers that are live at the same time share a byte. The lower bound on any
layout's peak is the maximum over time of the bytes live at once.
Assumes: sizes are already rounded as the target allocator would round them (a Workload's
requests are rounded to 512 B, like the caching allocator's ``allocated_bytes``), so offsets
that are sums of sizes stay aligned.
Ignores: alignment beyond the sizes' own granularity.
Source: Garey & Johnson's DYNAMIC STORAGE ALLOCATION [SR2]; MEMO (Zhao et al., 2024) for the
Workload view (one buffer per tensor, lifetimes in op indices).
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import gc
import io
import itertools
import operator
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hwmodels.limits import MAX_BYTES, MAX_LAYOUT_BUFFERS
from hwmodels.units import UserInputError, parse_int
from hwmodels.userfile import read_user_text
from simulator.workload import Workload, allocator_rounded_bytes


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while 10^5 objects without cycles are made (buffers,
    events): otherwise each collection walks everything already read, again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class Buffer:
    """One buffer: ``size_bytes`` live during [lower, upper)."""

    bid: str
    lower: int
    upper: int
    size_bytes: int

    def overlaps(self, other: Buffer) -> bool:
        return self.lower < other.upper and other.lower < self.upper


@dataclass(frozen=True)
class LayoutInstance:
    """Buffers in a stable order (ties in every heuristic break by this order)."""

    buffers: tuple[Buffer, ...]
    name: str = "instance"
    source: str = ""  # "workload" | "csv" | "snapshot" | "generated"

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for b in self.buffers:
            if b.bid in seen:
                raise ValueError(f"buffer id {b.bid!r} appears twice")
            seen.add(b.bid)
            if b.upper <= b.lower or b.size_bytes <= 0:
                raise ValueError(f"buffer {b.bid!r}: needs lower < upper and size > 0")

    @property
    def num_buffers(self) -> int:
        return len(self.buffers)

    @property
    def total_bytes(self) -> int:
        return sum(b.size_bytes for b in self.buffers)

    def num_overlapping_pairs(self) -> int:
        """Pairs live at the same time, counted in O(n log n) without listing them."""
        if not self.buffers:
            return 0
        lo = np.fromiter((b.lower for b in self.buffers), dtype=np.int64, count=len(self.buffers))
        hi = np.fromiter((b.upper for b in self.buffers), dtype=np.int64, count=len(self.buffers))
        # buffer k in start order meets every earlier-starting buffer except those already ended
        lo_sorted = np.sort(lo, kind="stable")
        ended = np.searchsorted(np.sort(hi), lo_sorted, side="right")
        return int((np.arange(len(lo_sorted)) - ended).sum())


def live_bytes_profile(buffers: tuple[Buffer, ...] | list[Buffer]) -> list[tuple[int, int]]:
    """(time, bytes live from that time on) at every time where the live set changes."""
    delta: dict[int, int] = {}
    for b in buffers:
        delta[b.lower] = delta.get(b.lower, 0) + b.size_bytes
        delta[b.upper] = delta.get(b.upper, 0) - b.size_bytes
    out, live = [], 0
    for t in sorted(delta):
        live += delta[t]
        out.append((t, live))
    return out


def lower_bound_bytes(buffers: tuple[Buffer, ...] | list[Buffer]) -> int:
    """The maximum of live bytes over time: no layout can peak below it."""
    n = len(buffers)
    if n < 1024:
        return max((live for _, live in live_bytes_profile(buffers)), default=0)
    size = np.fromiter((b.size_bytes for b in buffers), dtype=np.int64, count=n)
    if int(size.max()) * n >= 1 << 63:  # the running sum could leave int64: exact Python ints
        return max((live for _, live in live_bytes_profile(buffers)), default=0)
    # the same profile in numpy: deltas by time, the running sum read after each time's last delta
    times = np.fromiter((t for b in buffers for t in (b.lower, b.upper)), dtype=np.int64, count=2 * n)
    delta = np.stack((size, -size), axis=1).ravel()
    order = np.argsort(times, kind="stable")
    t_sorted = times[order]
    live = np.cumsum(delta[order])
    last = np.append(t_sorted[1:] != t_sorted[:-1], True)
    return max(0, int(live[last].max()))


def overlapping_pairs(buffers: tuple[Buffer, ...] | list[Buffer]) -> list[tuple[int, int]]:
    """Index pairs (i < j) of buffers whose lifetimes intersect, by a sweep over start times."""
    order = sorted(range(len(buffers)), key=lambda i: (buffers[i].lower, i))
    active: list[int] = []
    pairs: list[tuple[int, int]] = []
    for i in order:
        b = buffers[i]
        active = [j for j in active if buffers[j].upper > b.lower]
        pairs.extend((min(i, j), max(i, j)) for j in active)
        active.append(i)
    return sorted(pairs)


class SortedInts:
    """A sorted multiset of ints in blocks of at most ``2 * BLOCK`` (a list of sorted lists):
    add, remove and the neighbours of a value in O(log n + BLOCK), where one sorted list would
    move every element after the insertion point (quadratic for 10^5 live buffers)."""

    BLOCK = 512

    def __init__(self) -> None:
        self.blocks: list[list[int]] = []
        self.lasts: list[int] = []  # each block's largest value

    def add(self, x: int) -> None:
        if not self.blocks:
            self.blocks.append([x])
            self.lasts.append(x)
            return
        k = min(bisect.bisect_left(self.lasts, x), len(self.blocks) - 1)
        blk = self.blocks[k]
        bisect.insort(blk, x)
        self.lasts[k] = blk[-1]
        if len(blk) > 2 * self.BLOCK:
            self.blocks[k:k + 1] = [blk[:self.BLOCK], blk[self.BLOCK:]]
            self.lasts[k:k + 1] = [blk[self.BLOCK - 1], blk[-1]]

    def remove(self, x: int) -> None:
        k = bisect.bisect_left(self.lasts, x)
        blk = self.blocks[k]
        del blk[bisect.bisect_left(blk, x)]
        if blk:
            self.lasts[k] = blk[-1]
        else:
            del self.blocks[k], self.lasts[k]

    def ceil(self, x: int) -> int | None:
        """The smallest value >= ``x``, or None."""
        k = bisect.bisect_left(self.lasts, x)
        if k == len(self.blocks):
            return None
        blk = self.blocks[k]
        return blk[bisect.bisect_left(blk, x)]

    def neighbours(self, x: int) -> list[int]:
        """The largest value below ``x`` and the smallest above it, those that exist."""
        out = []
        k = bisect.bisect_left(self.lasts, x)
        if k < len(self.blocks):  # block k holds the first value >= x
            blk = self.blocks[k]
            p = bisect.bisect_left(blk, x)
            if p:
                out.append(blk[p - 1])
            elif k:
                out.append(self.blocks[k - 1][-1])
            q = bisect.bisect_right(blk, x)
            if q < len(blk):
                out.append(blk[q])
            elif k + 1 < len(self.blocks):
                out.append(self.blocks[k + 1][0])
        elif self.blocks:
            out.append(self.blocks[-1][-1])
        return out


@dataclass(frozen=True, slots=True)
class LayoutCheck:
    """Verdict of the independent checker."""

    valid: bool
    peak_bytes: int  # highest end address of any buffer
    first_conflict: tuple[str, str] | None  # two buffers that share bytes while both live
    message: str


def check_layout(instance: LayoutInstance, offsets: dict[str, int]) -> LayoutCheck:
    """Independent overlap checker: every buffer placed, offsets >= 0, no shared byte in time.

    Sweeps time; at each start, the new buffer is compared with the live buffers next to it in
    address order (while the layout is valid the live ranges are disjoint, so a range that
    shares a byte with any live one shares it with a neighbour): O(n log n). It shares no code
    with the solvers.
    """
    bufs = instance.buffers
    n = len(bufs)
    given = [offsets.get(b.bid) for b in bufs]
    start: list[int] = []
    for b, off in zip(bufs, given, strict=True):
        if type(off) is int and off >= 0:
            start.append(off)
        elif off is None:
            return LayoutCheck(False, 0, None, f"buffer {b.bid!r} has no offset")
        elif not isinstance(off, int) or off < 0:
            return LayoutCheck(False, 0, None, f"buffer {b.bid!r}: offset {off!r} is not a byte offset")
        else:
            start.append(int(off))  # a bool counts as 0 or 1, as it always did
    if len(offsets) != n:  # every buffer has one, so the rest name no buffer
        extra = set(offsets) - {b.bid for b in bufs}
        return LayoutCheck(False, 0, None, f"offset for unknown buffer {sorted(extra)[0]!r}")
    size = [b.size_bytes for b in bufs]
    end = list(map(operator.add, start, size))
    peak = max(end, default=0)
    # live buffers are kept as their rank in (offset, index) order, in a list of sorted blocks
    try:
        by_rank = np.lexsort((np.arange(n), np.array(start, dtype=np.int64))).tolist()
    except OverflowError:
        by_rank = sorted(range(n), key=lambda i: (start[i], i))
    rank = [0] * n
    for r, i in enumerate(by_rank):
        rank[i] = r
    # events by time, frees (kind 0) before starts (kind 1) at one time, starts by index
    times = np.fromiter((t for b in bufs for t in (b.upper, b.lower)), dtype=np.int64, count=2 * n)
    kinds = np.tile(np.array([0, 1], dtype=np.int64), n)
    which = np.repeat(np.arange(n, dtype=np.int64), 2)
    blocks: list[list[int]] = []
    lasts: list[int] = []  # each block's largest rank
    bisect_left = bisect.bisect_left
    limit = 2 * SortedInts.BLOCK
    for e in np.lexsort((which, kinds, times)).tolist():
        i = e >> 1
        key = rank[i]
        k = bisect_left(lasts, key)
        if not e & 1:  # the buffer's end
            blk = blocks[k]
            del blk[bisect_left(blk, key)]
            if blk:
                lasts[k] = blk[-1]
            else:
                del blocks[k], lasts[k]
            continue
        if k < len(blocks):
            blk = blocks[k]
            p = bisect_left(blk, key)
            below = blk[p - 1] if p else blocks[k - 1][-1] if k else -1
            above = blk[p]  # lasts[k] > key: a larger rank is in this block
            blk.insert(p, key)
            if len(blk) > limit:
                blocks[k:k + 1] = [blk[:SortedInts.BLOCK], blk[SortedInts.BLOCK:]]
                lasts[k:k + 1] = [blk[SortedInts.BLOCK - 1], blk[-1]]
        else:
            below = lasts[-1] if blocks else -1
            above = -1
            if blocks and len(blocks[-1]) < limit:
                blocks[-1].append(key)
                lasts[-1] = key
            else:
                blocks.append([key])
                lasts.append(key)
        lo, hi = start[i], end[i]
        for nb in (below, above):
            if nb < 0:
                continue
            j = by_rank[nb]
            if lo < end[j] and start[j] < hi:
                c, b = bufs[j], bufs[i]
                return LayoutCheck(False, peak, (c.bid, b.bid),
                                   f"buffers {c.bid!r} and {b.bid!r} share bytes at time {b.lower}")
    return LayoutCheck(True, peak, None, "ok")


def instance_from_workload(workload: Workload, *, name: str | None = None) -> LayoutInstance:
    """One buffer per tensor of the step, sizes rounded to 512 B, times in op indices.

    A tensor allocated by op i and freed when op j ends lives in [i, j + 1); tensors live at the
    step start begin at 0 and tensors never freed end at len(ops). Zero-byte tensors are left out.
    The lower bound of the result equals ``walk_memory(workload).peak_bytes``.
    """
    index = workload._by_id()
    end = len(workload.ops)
    start: dict[int, int] = {tid: 0 for tid in workload.initial}
    stop: dict[int, int] = {}
    for k, op in enumerate(workload.ops):
        for tid in op.allocs:
            start[tid] = k
        for tid in op.frees:
            stop[tid] = k + 1
    buffers = []
    for tid, lo in sorted(start.items(), key=lambda kv: (kv[1], kv[0])):
        size = allocator_rounded_bytes(index[tid].num_bytes)
        if size == 0:
            continue
        buffers.append(Buffer(f"{tid}:{index[tid].name}", lo, stop.get(tid, end), size))
    return LayoutInstance(tuple(buffers), name=name or str(workload.meta.get("model", "workload")),
                          source="workload")


CSV_FIELDS = ("id", "lower", "upper", "size")


def load_csv_instance(path: str) -> LayoutInstance:
    """Read ``id,lower,upper,size`` rows (a header line first); a buffer lives in [lower, upper)."""
    text = read_user_text(path)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise UserInputError(f"{path}: not a CSV file ({err})") from None
    if len(rows) > MAX_LAYOUT_BUFFERS + 1:
        raise UserInputError(f"{path}: {len(rows) - 1:,} rows, more than the {MAX_LAYOUT_BUFFERS:,} "
                             "buffers a layout takes")
    rows = [r for r in rows if r and (r[0].strip() or any(c.strip() for c in r))]
    if not rows:
        raise UserInputError(f"{path}: empty file; expected a header {','.join(CSV_FIELDS)}")
    header = [c.strip().lower() for c in rows[0]]
    if header != list(CSV_FIELDS):
        raise UserInputError(f"{path}: line 1: header must be {','.join(CSV_FIELDS)}, got {','.join(header)}")
    if text.isascii() and "_" not in text:  # no unicode digits or 1_000 that int() would take
        with gc_paused():  # 10^5 buffers: each collection would walk every row read so far
            fast = _csv_fast(path, rows[1:])
        if fast is not None:
            return fast
    buffers, seen = [], set()
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 4:
            raise UserInputError(f"{path}: line {n}: expected 4 fields, got {len(row)}")
        bid = row[0].strip()
        if not bid:
            raise UserInputError(f"{path}: line {n}: id: empty")
        if bid in seen:
            raise UserInputError(f"{path}: line {n}: id: {bid!r} appears twice")
        seen.add(bid)
        _, a, b, c = row
        # plain digits convert at once; anything else goes through parse_int for its message
        if a.isascii() and a.isdigit() and b.isascii() and b.isdigit() and c.isascii() and c.isdigit() and (
                len(a) < 19 and len(b) < 19 and len(c) < 19):
            lo, hi, size = int(a), int(b), int(c)
            if lo > MAX_BYTES or hi > MAX_BYTES or size > MAX_BYTES:
                lo, hi, size = _csv_ints(path, n, row)
        else:
            lo, hi, size = _csv_ints(path, n, row)
        if hi <= lo:
            raise UserInputError(f"{path}: line {n}: upper: must be greater than lower ({lo}), got {hi}")
        if size <= 0:
            raise UserInputError(f"{path}: line {n}: size: must be positive, got {size}")
        buffers.append(Buffer(bid, lo, hi, size))
    if not buffers:
        raise UserInputError(f"{path}: no buffers after the header")
    return LayoutInstance(tuple(buffers), name=path, source="csv")


def _csv_fast(path: str, body: list[list[str]]) -> LayoutInstance | None:
    """Every row plain and valid: the instance, its numbers converted by numpy at once. None
    sends the file through the row-by-row reader, which names the first bad line."""
    if not body or any(len(r) != 4 for r in body):
        return None
    try:  # int() per field, as numpy's conversion of the strings does, in one pass
        flat = list(map(int, itertools.chain.from_iterable(r[1:] for r in body)))
        vals = np.array(flat, dtype=np.int64).reshape(len(body), 3)
    except (ValueError, OverflowError):
        return None
    lo, hi, size = vals[:, 0], vals[:, 1], vals[:, 2]
    if not (bool((lo >= 0).all()) and bool((hi > lo).all()) and bool((size > 0).all())
            and int(vals.max()) <= MAX_BYTES):
        return None
    ids = [r[0].strip() for r in body]
    if not all(ids) or len(set(ids)) != len(ids):
        return None
    return LayoutInstance(tuple(map(Buffer, ids, lo.tolist(), hi.tolist(), size.tolist())), name=path,
                          source="csv")


def _csv_ints(path: str, n: int, row: list[str]) -> tuple[int, int, int]:
    lo, hi, size = (parse_int(text, field=f"{path}: line {n}: {field}", minimum=0, maximum=MAX_BYTES)
                    for field, text in zip(CSV_FIELDS[1:], row[1:], strict=True))
    return lo, hi, size


def write_csv_instance(instance: LayoutInstance, path: str) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_FIELDS)
        for b in instance.buffers:
            w.writerow((b.bid, b.lower, b.upper, b.size_bytes))
