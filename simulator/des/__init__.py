"""Discrete-event simulation of one step: streams, copy engines, shared links, memory tiers.

``schedule`` builds what is replayed (from a Workload, plus plan edits such as `add_offload`),
``resources`` owns contention (fluid link sharing, memory pools), ``engine`` replays it on
SimPy, ``trace`` writes the Chrome trace and the PNG.
"""

from simulator.des.engine import SimResult, simulate
from simulator.des.schedule import (
    Link,
    MemEvent,
    Op,
    Pool,
    Schedule,
    Stream,
    Transfer,
    add_offload,
    offload_candidates,
    schedule_from_workload,
    validate_schedule,
)

__all__ = [
    "Link",
    "MemEvent",
    "Op",
    "Pool",
    "Schedule",
    "SimResult",
    "Stream",
    "Transfer",
    "add_offload",
    "offload_candidates",
    "schedule_from_workload",
    "simulate",
    "validate_schedule",
]
