"""Where a memory snapshot fragments: the gaps the caching allocator held at its reserved peak
and the allocations that pinned them.

Models: the caching allocator's replay of a snapshot's requests (`simulator.allocator`, with the
device's segment addresses). The reserved peak is set by one request that no cached free block
could serve, so the allocator cudaMalloc'ed (or mapped) more; just before that request, the
free blocks inside reserved segments are memory held but unusable for it: fragmentation. For
the largest of them the report names the live allocations on either side in the same segment
(they keep the gap from merging with its neighbours or its segment from being released) and the
request that grew the cache, each with its stack frames from the snapshot.
Assumes: the replay matches the device (it does to the byte on the four H200 snapshots in
validate/measurements/h200/snapshots-h200-2026-11-28.json); frames are the snapshot's own,
formatted as memory_viz does (``file:line:function``, innermost first).
Ignores: the snapshot's dump-time segments (the state at the end, not at the peak).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from simulator.allocator import AllocEvent, CachingAllocator

NUM_FRAMES = 3
"""Frames kept per allocation in the report (innermost first)."""


def frame_lines(frames: object, *, limit: int = NUM_FRAMES) -> tuple[str, ...]:
    """``file:line:function`` of the first ``limit`` frames of a snapshot's frames list; entries
    that are not plain frames are skipped (the file is user input)."""
    if not isinstance(frames, list):
        return ()
    out: list[str] = []
    for f in frames:
        if len(out) == limit:
            break
        if not isinstance(f, dict):
            continue
        name, filename, line = f.get("name"), f.get("filename"), f.get("line")
        if isinstance(name, str) and isinstance(filename, str) and type(line) is int:
            out.append(f"{filename.rsplit('/', 1)[-1]}:{line}:{name}"[:200])
    return tuple(out)


@dataclass(frozen=True)
class Pin:
    """A live allocation next to a gap."""

    buffer: str  # the layout instance's buffer id ("a<k>")
    size_bytes: int
    frames: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"buffer": self.buffer, "size_bytes": self.size_bytes, "frames": list(self.frames)}


@dataclass(frozen=True)
class Gap:
    """A free block inside a reserved segment at the fragmentation peak."""

    address: int
    size_bytes: int
    segment_address: int
    segment_bytes: int
    stream: int
    small_pool: bool
    num_live_blocks: int  # live allocations in the same segment
    before: Pin | None  # the live block just below it in the segment
    after: Pin | None  # the live block just above it

    def to_dict(self) -> dict:
        return {"address": self.address, "size_bytes": self.size_bytes,
                "segment_address": self.segment_address, "segment_bytes": self.segment_bytes,
                "stream": self.stream, "pool": "small" if self.small_pool else "large",
                "num_live_blocks": self.num_live_blocks,
                "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None}


@dataclass(frozen=True)
class FragmentationPeak:
    """The allocator's state just before the request that set the reserved peak."""

    event_index: int  # of that request in the snapshot's allocator events
    request: Pin  # the request that grew the cache
    peak_reserved_bytes: int  # after it
    reserved_bytes: int  # before it
    allocated_bytes: int  # before it
    gaps: tuple[Gap, ...]  # the largest free blocks in reserved segments, largest first

    @property
    def free_reserved_bytes(self) -> int:
        return self.reserved_bytes - self.allocated_bytes

    def to_dict(self) -> dict:
        return {"event_index": self.event_index, "request": self.request.to_dict(),
                "peak_reserved_bytes": self.peak_reserved_bytes, "reserved_bytes": self.reserved_bytes,
                "allocated_bytes": self.allocated_bytes, "free_reserved_bytes": self.free_reserved_bytes,
                "gaps": [g.to_dict() for g in self.gaps]}


def _pin(key: Hashable, size: int, frames: Sequence[object]) -> Pin:
    k = key if isinstance(key, int) and 0 <= key < len(frames) else None
    return Pin(f"a{key}", size, frame_lines(frames[k]) if k is not None else ())


def fragmentation_peak(events: Sequence[AllocEvent], peak_event: int, *, frames: Sequence[object],
                       expandable_segments: bool = False,
                       segment_addresses: Sequence[tuple[int, int]] = (),
                       num_gaps: int = 5) -> FragmentationPeak | None:
    """Replay ``events`` up to ``peak_event`` (the request that set the reserved peak, as a
    full replay's ``CachingAllocator.peak_reserved_event`` found it) and report the gaps then.
    ``frames``: per event key (buffer number), the snapshot's frames. None when no request
    grew the cache (an empty sequence)."""
    if not 0 <= peak_event < len(events):
        return None
    alloc = CachingAllocator(expandable_segments=expandable_segments, segment_addresses=segment_addresses)
    alloc.replay(events[:peak_event])
    before_reserved, before_allocated = alloc.reserved_bytes, alloc.allocated_bytes
    trigger = events[peak_event]
    found = []
    for (stream, small), blocks in alloc.segments():
        seg_addr, seg_bytes = blocks[0][0], sum(b[1] for b in blocks)
        live = sum(b[2] for b in blocks)
        for i, (addr, size, allocated, _) in enumerate(blocks):
            if allocated:
                continue
            lo = blocks[i - 1] if i > 0 and blocks[i - 1][2] else None
            hi = blocks[i + 1] if i + 1 < len(blocks) and blocks[i + 1][2] else None
            found.append(Gap(addr, size, seg_addr, seg_bytes, stream, small, live,
                             _pin(lo[3], lo[1], frames) if lo else None,
                             _pin(hi[3], hi[1], frames) if hi else None))
    found.sort(key=lambda g: (-g.size_bytes, g.address))
    alloc.replay(events[peak_event:peak_event + 1])
    return FragmentationPeak(event_index=peak_event, request=_pin(trigger.key, trigger.num_bytes, frames),
                             peak_reserved_bytes=alloc.reserved_bytes, reserved_bytes=before_reserved,
                             allocated_bytes=before_allocated, gaps=tuple(found[:num_gaps]))
