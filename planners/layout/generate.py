"""Generated offset-assignment instances with a known optimum, for tests and benchmarks.

Models: "perfect packing" instances: a time x address rectangle (``horizon`` steps by
``height_bytes``) cut by random guillotine cuts into ``num_buffers`` pieces; each piece is a
buffer (its time span is its lifetime, its height its size). The pieces tile the rectangle, so
the optimal peak is exactly ``height_bytes`` and equals the live-bytes lower bound at every
time: any gap a planner reports is its own. Random cuts make the pieces of one time step very
unequal, which is what makes greedy heuristics stumble (the same construction as the
zero-waste strip-packing benchmarks).
Assumes: sizes are multiples of ``unit_bytes`` (512 B by default, the caching allocator's
granularity); a seeded ``numpy.random.Generator``, so one seed is one instance everywhere.
Ignores: non-guillotine packings (harder still; not needed to show gaps).
Source: Hopper & Turton 2001 (zero-waste guillotine instances for strip packing); DSA is
strip packing with fixed horizontal positions (Garey & Johnson SR2).
"""

from __future__ import annotations

import numpy as np

from planners.layout.instance import Buffer, LayoutInstance


def perfect_packing_instance(num_buffers: int, *, seed: int, horizon: int = 1000,
                             height_units: int = 4096, unit_bytes: int = 512) -> LayoutInstance:
    """``num_buffers`` buffers that tile a ``horizon`` x ``height_units*unit_bytes`` rectangle."""
    if num_buffers < 1:
        raise ValueError(f"num_buffers: must be at least 1, got {num_buffers}")
    rng = np.random.default_rng(seed)
    pieces = [(0, horizon, 0, height_units)]  # (t0, t1, m0, m1)
    while len(pieces) < num_buffers:
        # cut the piece with the largest area that can still be cut (stable tie-break: first)
        areas = [((t1 - t0) * (m1 - m0) if (t1 - t0 > 1 or m1 - m0 > 1) else -1)
                 for t0, t1, m0, m1 in pieces]
        k = int(np.argmax(areas))
        if areas[k] < 0:
            raise ValueError("num_buffers: more pieces than the rectangle's cells")
        t0, t1, m0, m1 = pieces.pop(k)
        cut_time = (t1 - t0 > 1) and (m1 - m0 <= 1 or rng.random() < 0.5)
        if cut_time:
            c = int(rng.integers(t0 + 1, t1))
            pieces += [(t0, c, m0, m1), (c, t1, m0, m1)]
        else:
            c = int(rng.integers(m0 + 1, m1))
            pieces += [(t0, t1, m0, c), (t0, t1, c, m1)]
    pieces.sort()
    buffers = tuple(Buffer(f"b{i}", t0, t1, (m1 - m0) * unit_bytes)
                    for i, (t0, t1, m0, m1) in enumerate(pieces))
    return LayoutInstance(buffers, name=f"perfect-{num_buffers}-seed{seed}", source="generated")


def random_instance(num_buffers: int, *, seed: int, horizon: int = 1000,
                    max_lifetime: int = 200, max_size_units: int = 2048,
                    unit_bytes: int = 512) -> LayoutInstance:
    """Uniformly random lifetimes and log-uniform sizes (optimum unknown; the bound is the LB)."""
    rng = np.random.default_rng(seed)
    buffers = []
    for i in range(num_buffers):
        lo = int(rng.integers(0, horizon))
        hi = min(horizon, lo + int(rng.integers(1, max_lifetime + 1)))
        units = int(np.exp(rng.uniform(0.0, np.log(max_size_units))))
        buffers.append(Buffer(f"b{i}", lo, max(hi, lo + 1), max(1, units) * unit_bytes))
    return LayoutInstance(tuple(buffers), name=f"random-{num_buffers}-seed{seed}", source="generated")
