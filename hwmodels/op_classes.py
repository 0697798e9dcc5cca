"""The op classes that select a kernel's time model: one definition, imported everywhere.

Models: names only. ``hwmodels.specs.OpClass`` adds the copy and collective classes a profile
may fit; ``kernels.cost`` calls ``hbm_copy`` ``copy``. No imports, so ``kernels`` can read these
without pulling in pydantic.
"""

from __future__ import annotations

FLOP_CLASSES: tuple[str, ...] = ("gemm", "attention_fwd", "attention_bwd")
"""Classes whose work is tensor-core FLOPs: the matmul FLOPs that MFU and FlopCounterMode count,
timed against a FLOP rate."""

KERNEL_CLASSES: tuple[str, ...] = FLOP_CLASSES + ("memory", "hbm_copy")
"""Classes of one kernel on one GPU, the ones `hwmodels.compute` times (``memory`` and
``hbm_copy`` against a byte rate)."""

GEMM_BURST_CLASS = "gemm.burst"
"""A GEMM's short-kernel side: a latency plus the rate short kernels reach at the burst clock
(``hwmodels.compute`` takes the slower of it and the sustained ``gemm`` fit; a profile without it
falls back to ``gemm``, which leaves every GEMM as the sustained fit says)."""
