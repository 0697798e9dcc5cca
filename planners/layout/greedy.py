"""Greedy offset assignment: place buffers one by one in a chosen order, each at a gap that fits.

Models: the classic DSA heuristics. An order (largest first = "greedy by size"; longest-lived
first; largest size x lifetime first; earliest start first, which is what an online allocator
sees) and a placement rule: first fit (lowest offset whose gap among the already placed,
time-overlapping buffers holds the buffer) or best fit (the smallest such gap; the space above
everything counts as infinite). ``greedy_layout`` runs every (order, rule) pair and keeps the
lowest peak; ties go to the earlier pair in ``STRATEGIES``, so the result is deterministic.
Those place each buffer against every placed one (O(n) per buffer); above
``SWEEP_MIN_BUFFERS`` buffers ``sweep_best_fit`` runs first: best fit in time order over an
index of free gaps (what an allocator with one arena does), O(n log n).
Assumes: nothing beyond the instance; offsets are sums of sizes (alignment follows sizes).
Ignores: moving a buffer once placed (no compaction).
Source: Sekiyama et al. 2018 (greedy by size for DNN memory), TensorFlow Lite's
"greedy by size" and "greedy by breadth" arena planners, Pisarchyk & Lee 2020.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from planners.layout.instance import LayoutInstance, SortedInts

ORDERS = ("size", "area", "duration", "start")
SWEEP_MIN_BUFFERS = 10_000
SWEEP = "sweep/best_fit"
SWEEP_GRACE_S = 3.0
"""The sweep may run this long past the heuristics' deadline (~1.3 s for 200k buffers on a
loaded 2-core machine): cut short it stacks what is left, which multiplies the peak."""
RULES = ("first_fit", "best_fit")
STRATEGIES: tuple[tuple[str, str], ...] = tuple((o, r) for o in ORDERS for r in RULES)


@dataclass(frozen=True, slots=True)
class GreedyResult:
    offsets: dict[str, int]
    peak_bytes: int
    strategy: str  # "order/rule"


def _order(instance: LayoutInstance, key: str) -> list[int]:
    bufs = instance.buffers
    n = len(bufs)
    k: Callable[[int], tuple[int, ...]]
    if key == "size":
        k = lambda i: (-bufs[i].size_bytes, -(bufs[i].upper - bufs[i].lower), bufs[i].lower, i)  # noqa: E731
    elif key == "area":
        k = lambda i: (-bufs[i].size_bytes * (bufs[i].upper - bufs[i].lower), bufs[i].lower, i)  # noqa: E731
    elif key == "duration":
        k = lambda i: (-(bufs[i].upper - bufs[i].lower), -bufs[i].size_bytes, bufs[i].lower, i)  # noqa: E731
    elif key == "start":
        k = lambda i: (bufs[i].lower, -bufs[i].size_bytes, i)  # noqa: E731
    else:
        raise ValueError(f"unknown greedy order {key!r}")
    return sorted(range(n), key=k)


def _arrays(instance: LayoutInstance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cache = instance.__dict__.get("_greedy_arrays")
    if cache is None:
        bufs = instance.buffers
        n = len(bufs)
        cache = (np.fromiter((b.lower for b in bufs), dtype=np.int64, count=n),
                 np.fromiter((b.upper for b in bufs), dtype=np.int64, count=n),
                 np.fromiter((b.size_bytes for b in bufs), dtype=np.int64, count=n))
        object.__setattr__(instance, "_greedy_arrays", cache)
    return cache


def place_in_order(instance: LayoutInstance, order: list[int], rule: str, *, start: int = 0,
                   prev: np.ndarray | None = None, bound: int | None = None,
                   deadline_s: float | None = None) -> np.ndarray | None:
    """Offsets (int64, indexed like ``instance.buffers``) from placing ``order`` with ``rule``.

    With ``start`` > 0 the first ``start`` buffers of ``order`` keep their offsets in ``prev``
    (they were placed in the same order before). With ``bound``, gives up (None) as soon as a
    buffer would end above it. With ``deadline_s`` (a ``time.perf_counter()`` value), the
    buffers still unplaced when it passes are stacked above everything placed: still a valid
    layout, found in bounded time (each placement scans the placed buffers, O(n) per buffer).
    """
    lo, hi, size = _arrays(instance)
    n = len(size)
    off = np.full(n, -1, dtype=np.int64)
    placed = np.zeros(n, dtype=bool)
    if start:
        assert prev is not None
        head = np.asarray(order[:start], dtype=np.int64)
        off[head] = prev[head]
        placed[head] = True
    best = rule == "best_fit"
    for n_done, i in enumerate(order[start:]):
        if deadline_s is not None and n_done % 64 == 0 and time.perf_counter() > deadline_s:
            rest = np.asarray(order[start + n_done:], dtype=np.int64)
            top = int((off[placed] + size[placed]).max()) if placed.any() else 0
            off[rest] = top + np.concatenate(([0], np.cumsum(size[rest])[:-1]))
            return None if bound is not None and int((off + size).max()) > bound else off
        mask = placed & (lo < hi[i]) & (lo[i] < hi)
        idx = np.nonzero(mask)[0]
        s = size[i]
        if idx.size == 0:
            off[i] = 0
        else:
            starts = off[idx]
            ends = starts + size[idx]
            srt = np.argsort(starts, kind="stable")
            starts, ends = starts[srt], ends[srt]
            # gaps between the running maximum end and the next start
            reach = np.maximum.accumulate(ends)
            gap_lo = np.concatenate(([0], reach))
            gap_hi = np.concatenate((starts, [np.iinfo(np.int64).max]))
            room = gap_hi - gap_lo
            ok = np.nonzero(room >= s)[0]
            if best:
                finite = ok[ok < len(room) - 1]
                if finite.size:
                    pick = finite[np.argmin(room[finite])]  # first of equal gaps: lowest
                else:
                    pick = ok[-1]
            else:
                pick = ok[0]
            off[i] = gap_lo[pick]
        if bound is not None and off[i] + s > bound:
            return None
        placed[i] = True
    return off


def sweep_best_fit(instance: LayoutInstance, *, deadline_s: float | None = None) -> np.ndarray:
    """Offsets (int64, like ``instance.buffers``) by best fit in time order.

    Buffers start in time order (frees first at one time, then larger first); each takes the
    smallest free gap below the arena's top that holds it (the lowest of equal gaps), else the
    free gap at the top, else the top; an ending buffer's range is freed and merged with its
    free neighbours. Gaps live in a sorted index keyed by (size, address): O(n log n). With
    ``deadline_s`` (a ``time.perf_counter()`` value) the buffers not started when it passes are
    stacked above everything placed (still valid).
    """
    lo, hi, size = _arrays(instance)
    n = len(size)
    off = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return off
    sizes = size.tolist()
    shift = max(64, sum(sizes).bit_length() + 1)  # gap key: size << shift | address (below the sum)
    mask = (1 << shift) - 1
    gaps = SortedInts()
    gap_size: dict[int, int] = {}  # address -> size of the free gap starting there
    gap_at_end: dict[int, int] = {}  # end address -> start of the free gap ending there
    top = 0
    # events: (time, kind 0 = end / 1 = start, -size, index)
    order = np.lexsort((np.arange(2 * n) >> 1, -np.repeat(size, 2),
                        np.tile(np.array([0, 1]), n), np.stack((hi, lo), axis=1).ravel()))
    offs = [-1] * n
    for count, e in enumerate(order.tolist()):
        if deadline_s is not None and count % 1024 == 0 and time.perf_counter() > deadline_s:
            break
        i = e >> 1
        s = sizes[i]
        if e & 1:  # the buffer starts
            key = gaps.ceil(s << shift)
            if key is not None:
                a, g = key & mask, key >> shift
                gaps.remove(key)
                del gap_size[a], gap_at_end[a + g]
                if g > s:
                    _add_gap(gaps, gap_size, gap_at_end, a + s, g - s, shift)
            elif top in gap_at_end:  # the free gap at the top, grown
                a = gap_at_end.pop(top)
                gaps.remove(gap_size.pop(a) << shift | a)
                top = a + s
            else:
                a = top
                top += s
            offs[i] = a
        elif offs[i] >= 0:  # the buffer ends: free its range, merged with free neighbours
            a, g = offs[i], s
            b = gap_at_end.pop(a, None)
            if b is not None:
                gaps.remove(gap_size.pop(b) << shift | b)
                g += a - b
                a = b
            nxt = gap_size.pop(a + g, None)
            if nxt is not None:
                gaps.remove(nxt << shift | (a + g))
                del gap_at_end[a + g + nxt]
                g += nxt
            _add_gap(gaps, gap_size, gap_at_end, a, g, shift)
    off[:] = offs
    rest = np.nonzero(off < 0)[0]
    if rest.size:
        placed = off >= 0
        base = int((off[placed] + size[placed]).max()) if placed.any() else 0
        off[rest] = base + np.concatenate(([0], np.cumsum(size[rest])[:-1]))
    return off


def _add_gap(gaps: SortedInts, gap_size: dict[int, int], gap_at_end: dict[int, int], a: int, g: int,
             shift: int) -> None:
    gaps.add(g << shift | a)
    gap_size[a] = g
    gap_at_end[a + g] = a


def greedy_layout(instance: LayoutInstance,
                  strategies: tuple[tuple[str, str], ...] = STRATEGIES, *,
                  deadline_s: float | None = None) -> GreedyResult:
    """The best layout over ``strategies`` (lowest peak; earlier strategy wins ties).

    With ``deadline_s`` (a ``time.perf_counter()`` value) the strategies not started by then
    are skipped, and the first one finishes by stacking what it had not placed.
    """
    bufs = instance.buffers
    if not bufs:
        return GreedyResult({}, 0, "empty")
    size = np.fromiter((b.size_bytes for b in bufs), dtype=np.int64, count=len(bufs))
    best_off, best_peak, best_name = None, None, ""
    if len(bufs) > SWEEP_MIN_BUFFERS:
        sweep_deadline = None if deadline_s is None else deadline_s + SWEEP_GRACE_S
        best_off = sweep_best_fit(instance, deadline_s=sweep_deadline)
        best_peak, best_name = int((best_off + size).max()), SWEEP
    for k, (order_key, rule) in enumerate(strategies):
        if (k or best_off is not None) and deadline_s is not None and time.perf_counter() > deadline_s:
            break
        off = place_in_order(instance, _order(instance, order_key), rule, deadline_s=deadline_s)
        assert off is not None  # no bound given
        peak = int((off + size).max())
        if best_peak is None or peak < best_peak:
            best_off, best_peak, best_name = off, peak, f"{order_key}/{rule}"
    assert best_off is not None and best_peak is not None
    return GreedyResult({b.bid: int(o) for b, o in zip(bufs, best_off, strict=True)}, best_peak,
                        best_name)


def search_order(
    instance: LayoutInstance,
    start: GreedyResult,
    *,
    max_evals: int,
    deadline_s: float | None = None,
    target_bytes: int = 0,
    seed: int = 0,
) -> GreedyResult:
    """Local search over placement orders, from the best greedy strategy's order.

    A move takes a buffer that touches the current peak and moves it earlier in the order
    (or, every other move, swaps two random buffers) and re-places everything with the same
    rule; a move is kept when the peak does not grow. First fit in the right order reaches an
    optimal layout (place an optimal layout's buffers by increasing offset), so searching
    orders loses nothing. Stops at ``target_bytes`` (the lower bound: nothing better exists).
    Deterministic for a given ``seed`` and ``max_evals``; ``deadline_s`` (a
    ``time.perf_counter()`` value) cuts it short on slow machines.
    """
    order_key, rule = start.strategy.split("/")
    bufs = instance.buffers
    n = len(bufs)
    if n < 2 or max_evals <= 0 or order_key not in ORDERS:  # the sweep has no order to search
        return start
    size = np.fromiter((b.size_bytes for b in bufs), dtype=np.int64, count=n)
    rng = np.random.default_rng(seed)
    order = _order(instance, order_key)
    off = np.fromiter((start.offsets[b.bid] for b in bufs), dtype=np.int64, count=n)  # not re-placed
    peak = int((off + size).max())
    best_off, best_peak = off, peak
    for it in range(max_evals):
        if best_peak <= target_bytes or (deadline_s is not None and time.perf_counter() > deadline_s):
            break
        cand = list(order)
        if it % 2 == 0:
            top = np.nonzero(off + size == peak)[0]
            i = int(top[rng.integers(len(top))])
            pos = cand.index(i)
            if pos == 0:
                continue
            first = int(rng.integers(0, pos))
            cand.pop(pos)
            cand.insert(first, i)
        else:
            a, b = sorted(int(x) for x in rng.choice(n, size=2, replace=False))
            cand[a], cand[b] = cand[b], cand[a]
            first = a
        # the order before ``first`` is unchanged, and so are its offsets
        c_off = place_in_order(instance, cand, rule, start=first, prev=off, bound=peak,
                               deadline_s=deadline_s)
        if c_off is None:
            continue
        c_peak = int((c_off + size).max())
        if c_peak <= peak:
            order, off, peak = cand, c_off, c_peak
            if peak < best_peak:
                best_off, best_peak = off, peak
    if best_peak >= start.peak_bytes:
        return start
    return GreedyResult({b.bid: int(o) for b, o in zip(bufs, best_off, strict=True)}, best_peak,
                        f"{start.strategy}+search")
