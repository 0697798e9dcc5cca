"""Memory layout planning: offsets of buffers in one arena (dynamic storage allocation).

Modules: ``instance`` (buffers, lower bound, overlap checker, CSV and Workload input),
``greedy`` (heuristics), ``mip`` (exact pairwise MIP through planners.solvers), ``plan``
(the planning entry points and MEMO's bi-level decomposition), ``snapshot`` (PyTorch memory
snapshots read without executing them), ``plot`` (address-over-time PNG).
"""

from planners.layout.instance import (
    Buffer,
    LayoutCheck,
    LayoutInstance,
    check_layout,
    instance_from_workload,
    load_csv_instance,
    lower_bound_bytes,
)
from planners.layout.plan import LayoutResult, plan_layout, plan_workload_layout

__all__ = [
    "Buffer",
    "LayoutCheck",
    "LayoutInstance",
    "LayoutResult",
    "check_layout",
    "instance_from_workload",
    "load_csv_instance",
    "lower_bound_bytes",
    "plan_layout",
    "plan_workload_layout",
]
