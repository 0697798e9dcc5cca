"""The step timer: seconds of each timed call of a training step, after warm-up.

Models: nothing; it measures. On a CUDA device a step is timed with CUDA events recorded around
it on the current stream (the end event is waited for); elsewhere with ``time.perf_counter``.
Assumes: ``step()`` enqueues all of its work on the current stream (or synchronizes itself).
Ignores: what a step does to memory statistics; callers reset or read them in ``before_step`` /
``after_step``, which run outside the timed interval.
Source: the CUDA-event method of kernels/microbench.py; the median of the returned times is the
figure the measurement files report.

Imports only torch and the standard library so that the measurement scripts run on a bare GPU
machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def time_one(step: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one ``step()``: CUDA events on the GPU, wall time elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def time_steps(
    step: Callable[[], Any],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    max_step_s: float | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Seconds of each of ``repeats`` timed steps that follow ``warmup`` untimed ones.

    ``before_step(i)`` and ``after_step(i, seconds)`` run around step ``i`` (0-based, warm-up
    steps first), outside the timed interval. When the last warm-up step took longer than
    ``max_step_s``, one step is timed."""
    times: list[float] = []
    total = warmup + repeats
    i = 0
    while i < total:
        if before_step is not None:
            before_step(i)
        elapsed = time_one(step, device)
        if after_step is not None:
            after_step(i, elapsed)
        if i >= warmup:
            times.append(elapsed)
        elif i == warmup - 1 and max_step_s is not None and elapsed > max_step_s:
            total = warmup + 1
        i += 1
    return times
