"""One pre-allocated arena for an executor's own buffers, at offsets planned by planners.layout.

Models: a step that allocates the same buffers in the same order every time (prefetch targets,
recompute workspaces, staging copies). The first step runs in the *recording* phase: ``alloc``
returns an ordinary tensor (``torch.empty_strided`` on the arena's device) and records the key,
its byte span and the tick; ``free`` records the tick at which the caller drops the buffer. Each
alloc and free is one tick; a buffer lives in [alloc tick, free tick) (to the end of the
recording when never freed). ``finish_recording`` turns the record into a layout instance
(spans rounded up to 512 B), plans it with ``planners.layout.plan_layout`` (greedy heuristics,
an order search, the exact MIP on small instances, under a time limit; the result is checked
again here by the independent overlap checker), allocates ONE uint8 tensor of the planned peak
and switches to the *planned* phase: ``alloc`` then returns a strided view into the arena at the
key's offset, and ``free`` only checks the order. A buffer asked with another byte span than
recorded, an unknown key, or an order in which two buffers that share arena bytes would be live
at once raises ``ArenaMismatch`` (a UserInputError): the caller falls back to ordinary
allocation. A step must free every buffer before the next step allocates it (or a buffer
planned into its bytes) again; a buffer not freed when the recording ends lives to its end.

    arena = Arena(device)
    x = arena.alloc("fetch.3.qkv", shape, stride, dtype)   # step 1: ordinary tensors, recorded
    arena.free("fetch.3.qkv")
    ...
    arena.finish_recording()
    x = arena.alloc("fetch.3.qkv", shape, stride, dtype)   # steps 2..: views at planned offsets

Assumes: the caller orders device work (CUDA): a buffer's bytes are handed to the next key only
after every kernel and copy that used it earlier is ordered before the next user's work (same
stream, or a stream that waits on an event recorded after the last use). The caching allocator
gives this guarantee per stream by itself; an arena does not, so ``free`` must be called only
once the caller has made later users wait for the buffer's last use. Views keep the arena alive;
a view used after its ``free`` is the caller's bug, as with any reused memory.
Ignores: alignment above 512 B (an offset is a multiple of 512 B, enough for every dtype and
for vectorised copies), buffers whose shapes change between steps (they mismatch and fall back).
Source: planners.layout (offset planning, ``check_layout``); MEMO (Zhao et al., 2024) section 4.3
(the executor's buffers placed at offline-planned offsets); PyTorch ``torch.empty_strided``
/ ``Tensor.as_strided`` semantics for the span of a strided tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hwmodels.units import UserInputError
from planners.layout.instance import Buffer, LayoutInstance, check_layout
from planners.layout.plan import LayoutResult, plan_layout
from simulator.workload import ALLOCATOR_ROUND_BYTES, allocator_rounded_bytes


class ArenaMismatch(UserInputError):
    """A planned-phase request that the recording does not cover: fall back to ordinary tensors."""


def span_elements(shape: Sequence[int], stride: Sequence[int]) -> int:
    """Elements a strided tensor spans in its storage: 1 + sum((size - 1) * stride), 0 if empty."""
    if len(shape) != len(stride):
        raise ValueError(f"shape {tuple(shape)} and stride {tuple(stride)} differ in length")
    if any(s < 0 for s in shape) or any(st < 0 for st in stride):
        raise ValueError(f"negative size or stride: shape {tuple(shape)}, stride {tuple(stride)}")
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(shape, stride, strict=True))


def span_bytes(shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes a strided tensor of ``dtype`` spans (what ``torch.empty_strided`` allocates)."""
    itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    return span_elements(shape, stride) * itemsize


@dataclass
class _Record:
    key: str
    num_bytes: int  # exact span asked for
    lower: int  # alloc tick
    upper: int | None  # free tick; None while live


class Arena:
    """Buffers of a repeated step in one planned allocation; see the module docstring."""

    def __init__(self, device: torch.device | str, *, time_limit_s: float = 10.0, use_mip: bool = True,
                 solver: str = "highs", name: str = "arena") -> None:
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s: must be positive, got {time_limit_s}")
        self.device = torch.device(device)
        self.name = name
        self._time_limit_s = time_limit_s
        self._use_mip = use_mip
        self._solver = solver
        self._tick = 0
        self._records: dict[str, _Record] = {}
        self._result: LayoutResult | None = None
        self._storage: torch.Tensor | None = None
        self._live: dict[str, tuple[int, int]] = {}  # planned: key -> [offset, end) in bytes

    # ---- phases ------------------------------------------------------------------------------
    @property
    def planned(self) -> bool:
        return self._result is not None

    def alloc(self, key: str, shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape``/``stride``/``dtype`` for ``key`` (recorded, or at its planned offset)."""
        shape, stride = tuple(int(s) for s in shape), tuple(int(s) for s in stride)
        num_bytes = span_bytes(shape, stride, dtype)
        if not self.planned:
            if key in self._records:
                raise ValueError(f"arena {self.name}: key {key!r} allocated twice while recording")
            self._records[key] = _Record(key, num_bytes, self._tick, None)
            self._tick += 1
            return torch.empty_strided(shape, stride, dtype=dtype, device=self.device)
        rec = self._records.get(key)
        if rec is None:
            raise ArenaMismatch(f"arena {self.name}: key {key!r} was not recorded")
        if rec.num_bytes != num_bytes:
            raise ArenaMismatch(f"arena {self.name}: key {key!r}: recorded {rec.num_bytes} bytes, "
                                f"asked for {num_bytes}")
        if key in self._live:
            raise ArenaMismatch(f"arena {self.name}: key {key!r} allocated again before its free")
        if num_bytes == 0:
            self._live[key] = (0, 0)
            return torch.empty_strided(shape, stride, dtype=dtype, device=self.device)
        assert self._result is not None and self._storage is not None  # planned: finish_recording set both
        lo = self._result.offsets[key]
        hi = lo + allocator_rounded_bytes(num_bytes)
        for other, (olo, ohi) in self._live.items():
            if lo < ohi and olo < hi:
                raise ArenaMismatch(f"arena {self.name}: key {key!r} would share bytes with live key "
                                    f"{other!r} (order differs from the recording)")
        self._live[key] = (lo, hi)
        typed = self._storage[lo:hi].view(dtype)  # offsets are 512-byte aligned: any itemsize divides
        return typed.as_strided(shape, stride)  # storage offset: the slice's own

    def free(self, key: str) -> None:
        """The caller drops ``key``'s buffer (recorded, or checked against the live set)."""
        if not self.planned:
            rec = self._records.get(key)
            if rec is None or rec.upper is not None:
                raise ValueError(f"arena {self.name}: free of {key!r}, which is not live")
            rec.upper = self._tick
            self._tick += 1
            return
        if self._live.pop(key, None) is None:
            raise ArenaMismatch(f"arena {self.name}: free of {key!r}, which is not live")

    def instance(self) -> LayoutInstance:
        """The recorded buffers as a layout instance (sizes rounded to 512 B, times in ticks)."""
        end = self._tick
        bufs = tuple(Buffer(r.key, r.lower, end if r.upper is None else r.upper,
                            allocator_rounded_bytes(r.num_bytes))
                     for r in self._records.values() if r.num_bytes > 0)
        return LayoutInstance(bufs, name=self.name, source="arena")

    def finish_recording(self) -> LayoutResult:
        """Plan the recorded buffers, allocate the arena, switch to the planned phase."""
        if self.planned:
            raise ValueError(f"arena {self.name}: recording already finished")
        instance = self.instance()
        result = plan_layout(instance, time_limit_s=self._time_limit_s, solver=self._solver,
                             use_mip=self._use_mip)
        check = check_layout(instance, result.offsets)
        if not check.valid:  # the planner's promise, checked by code it does not share
            raise AssertionError(f"arena {self.name}: planned layout is invalid: {check.message}")
        assert all(o % ALLOCATOR_ROUND_BYTES == 0 for o in result.offsets.values())
        self._storage = torch.empty(result.peak_bytes, dtype=torch.uint8, device=self.device)
        self._result = result
        self._live.clear()
        return result

    # ---- what was planned ----------------------------------------------------------------------
    def _planned(self) -> LayoutResult:
        if self._result is None:
            raise ValueError(f"arena {self.name}: still recording (call finish_recording)")
        return self._result

    @property
    def layout(self) -> LayoutResult:
        return self._planned()

    @property
    def capacity_bytes(self) -> int:
        """Bytes of the one allocation (the planned peak)."""
        self._planned()
        assert self._storage is not None  # allocated with the plan
        return self._storage.numel()

    @property
    def lower_bound_bytes(self) -> int:
        """Max over ticks of the recorded live bytes: no layout needs less."""
        return self._planned().lower_bound_bytes

    @property
    def planned_peak_bytes(self) -> int:
        return self._planned().peak_bytes

    @property
    def gap(self) -> float:
        """planned peak / best proven bound - 1."""
        return self._planned().gap

    @property
    def solve_time_s(self) -> float:
        return self._planned().solve_time_s

    @property
    def status(self) -> str:
        """recording; or the layout's status (optimal: peak equals a proven bound; feasible)."""
        return self._result.status if self._result is not None else "recording"

    def offset_bytes(self, key: str) -> int | None:
        """Planned byte offset of ``key`` (None for a zero-byte buffer)."""
        return self._planned().offsets.get(key)


__all__ = ["Arena", "ArenaMismatch", "span_bytes", "span_elements"]
