"""Host time of eager PyTorch execution: what the CPU spends issuing a decode step's kernels.

Models: a decode step of batch 1 is a few hundred kernels, each shorter on the GPU than the
Python, dispatcher and launch work that issues it, so the step is bound by the host. The host
issues a decoder layer's ops in ``per_layer_s`` and the work outside the layers (embedding,
rotary tables, mask, final norm, LM head, argmax) in ``fixed_s``; a CUDA graph replay costs
``graph_launch_s``. Figures per engine: transformers' eager decode (``hf``, its DynamicCache
``offloading=True`` form adds stream switches and two ``.to`` per tensor per layer) and
tierplan's static engine issued eagerly (``static``; also its prefill passes).
Assumes: the host's single-thread speed of the machine measured (the figures are the H200
host's; other GPUs' nodes use them too until they are measured: the host, not the GPU, sets them).
Ignores: Python garbage collection pauses, CPU frequency changes within a run.
Source: validate/measurements/h200/ (the file named in ``EagerHostCosts.source``), made by
validate/scripts/host_overhead.py; until that file exists, the Llama-3.1-8B 32K batch-1 decode
steps of /work infer-smoke (H200, torch 2.11, transformers 5.17).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``ys`` against ``xs`` (at least two distinct xs)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError("fit_line: needs two or more (x, y) points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("fit_line: the xs are all equal")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


@dataclass(frozen=True)
class EngineHostCost:
    """Host seconds of one eager decode step: ``fixed_s + per_layer_s * num_layers``."""

    fixed_s: float
    per_layer_s: float


@dataclass(frozen=True)
class EagerHostCosts:
    """Measured host costs of one machine's eager execution."""

    hf_resident: EngineHostCost
    hf_offloaded: EngineHostCost
    static_eager: EngineHostCost
    static_graphs: EngineHostCost
    """The static engine's decode step through CUDA graphs: per layer two graph replays, the eager
    attention (slices, SDPA, a copy into the next graph's input) and the copies' events."""
    graph_launch_s: float
    source: str


H200_HOST = EagerHostCosts(
    hf_resident=EngineHostCost(fixed_s=0.6e-3, per_layer_s=1.68e-3),
    hf_offloaded=EngineHostCost(fixed_s=0.6e-3, per_layer_s=1.80e-3),
    static_eager=EngineHostCost(fixed_s=0.4e-3, per_layer_s=1.54e-3),
    static_graphs=EngineHostCost(fixed_s=2 * 10e-6 + 50e-6, per_layer_s=2 * 10e-6 + 6 * 12e-6),
    graph_launch_s=10e-6,
    source="fitted on the Llama-3.1-8B 32K batch-1 decode steps of infer-smoke (H200, 2026-12-03): "
           "hf resident 54.47 ms, static resident 49.67 ms over 32 layers",
)


def eager_host_costs(node) -> EagerHostCosts:
    """The host costs of ``node``'s eager execution (the H200 host's figures)."""
    del node  # one measured host so far
    return H200_HOST
