"""The GPU diagnostics of a plan run, as command-line flags (shared by validate/run_plan.py and
`tierplan validate plan`; importing this module imports neither torch nor the executor).

Models: nothing; flags only. ``--memory-trace`` records each case's allocator history,
``--kernel-profile`` times one extra step under torch.profiler, ``--no-cap`` runs without the
plan's budget cap, ``--expandable-segments`` starts each case's allocator with
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` (validate.run_plan.run).
"""

from __future__ import annotations

import argparse
from collections.abc import MutableMapping
from typing import Any

FLAGS = ("memory_trace", "kernel_profile", "no_cap", "expandable_segments")
ALLOC_CONF_VAR = "PYTORCH_CUDA_ALLOC_CONF"
DEFAULT_ALLOC_CONF = "expandable_segments:True"
"""The executor's allocator: plans are certified against the expandable-segments model
(planners.swap.evaluate, allocator="expandable"); the native caching allocator's fragmentation
under a cap ran plans that fit in allocated bytes out of memory (see the README)."""


def use_default_allocator(env: MutableMapping[str, str] | None = None) -> str:
    """Add ``expandable_segments:True`` to ``PYTORCH_CUDA_ALLOC_CONF`` in ``env`` (default
    ``os.environ``) unless it names ``expandable_segments`` already (the user's choice, e.g.
    ``expandable_segments:False`` for the native caching allocator); the resulting value.
    It must run before CUDA initialises: the allocator reads the variable once."""
    import os

    target: MutableMapping[str, str] = os.environ if env is None else env
    conf = target.get(ALLOC_CONF_VAR, "")
    if "expandable_segments" not in conf:
        conf = ",".join(filter(None, [conf, DEFAULT_ALLOC_CONF]))
        target[ALLOC_CONF_VAR] = conf
    return conf


def add_diagnostic_args(parser: argparse.ArgumentParser) -> None:
    diag = parser.add_argument_group(
        "diagnostics (GPU; they slow what they watch, so time runs without them)"
    )
    diag.add_argument("--memory-trace", action="store_true",
                      help="each case's allocator history, <case>.snapshot.pickle, into --out")
    diag.add_argument("--kernel-profile", action="store_true",
                      help="one extra step under torch.profiler: <case>.kernels.json into --out")
    diag.add_argument("--no-cap", action="store_true", help="run without the plan's GPU budget cap")
    diag.add_argument("--expandable-segments", action="store_true",
                      help="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True for each case (the "
                           "default unless PYTORCH_CUDA_ALLOC_CONF names expandable_segments)")


def diagnostic_kwargs(args: Any) -> dict[str, bool]:
    """The parsed flags as keyword arguments of ``validate.run_plan.run``."""
    return {name: bool(getattr(args, name)) for name in FLAGS}
