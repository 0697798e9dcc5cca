"""PyTorch's CUDA caching allocator, replayed: reserved memory of an allocation/free sequence.

Models: the native caching allocator of one device. Requests round up to 512 B; requests of
at most 1 MiB go to the small pool, larger ones to the large pool; each pool is per stream.
A request takes the best-fitting cached free block of its pool (smallest size, then lowest
address); when none fits, a new segment is cudaMalloc'ed: 2 MiB for small requests, 20 MiB
for 1-10 MiB requests, the request rounded up to 2 MiB from 10 MiB on. A block larger than the
request is split (the request takes the front) when the rest is at least 512 B (small pool)
or more than 1 MiB (large pool). A freed block merges with its free neighbours in the same
segment and stays cached (reserved). When a new segment would exceed the device capacity, the
allocator frees one cached unsplit segment large enough, then every cached unsplit segment,
and retries (``num_alloc_retries``); if that fails too it is an out-of-memory error.
With ``expandable_segments`` each (stream, pool) has one virtual segment instead of cudaMalloc'ed
ones; physical memory is mapped in pages of 2 MiB (small pool) or 20 MiB (large pool), and
reserved memory is the mapped pages. A request first takes the best-fitting *mapped* free block
(smallest, then lowest address), passing over a block followed by unmapped space when the next
larger one has less room to grow (``get_free_block``'s ``expandable_size``); only when no mapped
block fits does it map pages, at the lowest unmapped range that, with the free mapped block just
before it, is large enough (``find_expandable_block``), mapping the request rounded up to pages
and merging them with that free block. A block larger than the request is split when the rest is
at least 512 B, in both pools (``should_split`` under expandable segments). Freed blocks merge
with free neighbours of the same mapped state; a page stays mapped (cached) until a request would
exceed the device capacity: then the whole pages inside every free block are unmapped
(``release_cached_blocks``) and the request retried. So uncapped, reserved is the high-water mark
of the pages ever mapped; capped, what fits is the pages the live blocks touch.
Assumes: ``max_split_size`` unlimited (the default), no ``roundup_power2_divisions``, no
garbage-collection threshold, frees complete immediately (no cross-stream events pending),
a freshly emptied cache unless the caller pre-allocates; one virtual segment per (stream, pool)
never runs out of address space (PyTorch reserves 1.125x the device memory per segment).
Ignores: CUDA graphs' private pools, ``cudaMallocAsync`` backend. Segment addresses only break
ties between equal-size free blocks: they grow from 0 unless the caller passes the device's (a
snapshot has them; expandable segments ignore them).
Source: PyTorch c10/cuda/CUDACachingAllocator.cpp (kMinBlockSize 512, kSmallSize 1 MiB,
kSmallBuffer 2 MiB, kLargeBuffer 20 MiB, kMinLargeAlloc 10 MiB, kRoundLarge 2 MiB;
``round_size``, ``get_allocation_size``, ``get_free_block`` on a set ordered by (stream, size,
address), ``should_split``, ``free_block`` merging, ``release_available_cached_blocks``,
``try_allocate_expandable_block``, ``find_expandable_block``, ``map_block``, ``unmap_block``).
Checked against the H200 runs with expandable segments under a 47 GiB cap
(validate/measurements/h200/probe48-*-cap-expandable-*), and against the executor's real
allocation sequence of one torch.utils.checkpoint step (Mistral-7B stack, 64K,
validate/measurements/h200/alloc-trace-*): fed that sequence, the replay maps the device's pages
at the device's offsets, one for one (tests/validate/test_checkpoint_alloc_trace.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from hwmodels.units import MiB
from simulator.workload import ALLOCATOR_ROUND_BYTES, Role, Workload, allocator_rounded_bytes

MIN_BLOCK_BYTES = ALLOCATOR_ROUND_BYTES  # kMinBlockSize
SMALL_REQUEST_MAX_BYTES = 1 * MiB  # kSmallSize: largest request served by the small pool
SMALL_SEGMENT_BYTES = 2 * MiB  # kSmallBuffer
LARGE_SEGMENT_BYTES = 20 * MiB  # kLargeBuffer: segment for 1-10 MiB requests
MIN_LARGE_ALLOC_BYTES = 10 * MiB  # kMinLargeAlloc: from here a request gets its own segment
ROUND_LARGE_BYTES = 2 * MiB  # kRoundLarge

CUBLAS_WORKSPACE_BYTES = 32 * MiB
"""One cuBLAS workspace on Hopper, allocated through the caching allocator per (handle, stream)
and kept for the life of the process (see simulator.estimator.RUNTIME_WORKSPACE_BYTES)."""


class AllocEvent(NamedTuple):
    """One request to the allocator: ``action`` is "alloc" or "free"; ``key`` names the block."""

    action: str
    key: Hashable
    num_bytes: int = 0  # requested bytes (alloc only)
    stream: int = 0


class HistoryEntry(NamedTuple):
    """One entry of the allocator's history: ``action`` is a PyTorch TraceEntry action ("alloc",
    "free_requested", "free_completed", "segment_alloc", "segment_free", "segment_map",
    "segment_unmap"); ``key`` names the request (None for segments)."""

    action: str
    addr: int
    num_bytes: int
    stream: int
    key: Hashable = None


class AllocatorOOM(RuntimeError):
    """The sequence does not fit the device capacity even after releasing the cache."""


def _page_bytes(pool: tuple[int, bool]) -> int:
    """Mapping granularity of an expandable segment: kSmallBuffer or kLargeBuffer."""
    return SMALL_SEGMENT_BYTES if pool[1] else LARGE_SEGMENT_BYTES


def allocation_size(num_bytes: int) -> int:
    """Bytes cudaMalloc'ed for a new segment serving a request (``get_allocation_size``)."""
    size = allocator_rounded_bytes(num_bytes)
    if size <= SMALL_REQUEST_MAX_BYTES:
        return SMALL_SEGMENT_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_SEGMENT_BYTES
    return -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES


@dataclass(frozen=True, slots=True)
class AllocatorReplay:
    """What ``torch.cuda.memory_stats`` would report after replaying a sequence."""

    peak_reserved_bytes: int  # max_memory_reserved
    peak_allocated_bytes: int  # max_memory_allocated
    final_reserved_bytes: int
    final_allocated_bytes: int
    peak_num_segments: int
    num_segment_allocs: int  # cudaMalloc calls (or page-mapping calls with expandable segments)
    num_alloc_retries: int
    expandable_segments: bool

    @property
    def stranded_frac(self) -> float:
        """Share of peak reserved memory that peak allocated memory never used."""
        if self.peak_reserved_bytes == 0:
            return 0.0
        return 1.0 - self.peak_allocated_bytes / self.peak_reserved_bytes


EXPANDABLE_SEGMENT_SPACING_BYTES = LARGE_SEGMENT_BYTES << 20
"""Virtual addresses between two pools' expandable segments (20 TiB, each segment half of it): far
apart, so that they never touch; a multiple of both page sizes, so that pages counted from address
0 are the segment's; small enough that addresses stay exact in a double (memory_viz's JavaScript)."""


class _Block:
    __slots__ = ("addr", "size", "pool", "allocated", "mapped", "prev", "next")

    def __init__(self, addr: int, size: int, pool: tuple[int, bool], *, mapped: bool = True):
        self.addr = addr
        self.size = size
        self.pool = pool  # (stream, is_small)
        self.allocated = False
        self.mapped = mapped  # backed by physical pages (always, outside expandable segments)
        self.prev: _Block | None = None
        self.next: _Block | None = None


class CachingAllocator:
    """Stateful replay of the caching allocator; feed it with ``malloc``/``free`` or ``replay``."""

    def __init__(self, *, capacity_bytes: int | None = None, expandable_segments: bool = False,
                 segment_addresses: Sequence[tuple[int, int]] = (), record_history: bool = False):
        """``segment_addresses``: (size, address) of the segments cudaMalloc returned, in order
        (a snapshot's segment_alloc entries); the n-th new segment takes the n-th address when
        its size matches, so best-fit ties break as they did on the device.
        ``record_history``: keep ``history``, one ``HistoryEntry`` per request and per segment
        (or page) mapped and released, as ``torch.cuda.memory._record_memory_history`` does."""
        self.history: list[HistoryEntry] | None = [] if record_history else None
        self.num_events = 0  # events ``replay`` has taken
        self.peak_reserved_event = -1  # index of the event (of ``replay``) that set the reserved peak
        self.requested_bytes: dict[Hashable, int] = {}  # live key -> bytes asked for (with history)
        self.capacity_bytes = capacity_bytes
        self._segment_addresses = list(segment_addresses)
        self._num_new_segments = 0
        self.expandable_segments = expandable_segments
        self._free: dict[tuple[int, bool], list[tuple[int, int]]] = {}  # pool -> sorted (size, addr), mapped
        self._unmapped: dict[tuple[int, bool], list[int]] = {}  # pool -> sorted addrs of unmapped blocks
        self._blocks: dict[int, _Block] = {}  # addr -> block (every block, free or not)
        self._live: dict[Hashable, _Block] = {}
        self._next_addr = 0
        self.reserved_bytes = 0
        self.allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self.peak_allocated_bytes = 0
        self.num_segments = 0
        self.peak_num_segments = 0
        self.num_segment_allocs = 0
        self.num_alloc_retries = 0
        self._zero_keys: set[Hashable] = set()  # zero-byte requests: nothing allocated

    # --- free-list bookkeeping (a sorted list per pool stands in for the std::set) ---
    def _insert_free(self, b: _Block) -> None:
        bisect.insort(self._free.setdefault(b.pool, []), (b.size, b.addr))

    def _remove_free(self, b: _Block) -> None:
        lst = self._free[b.pool]
        i = bisect.bisect_left(lst, (b.size, b.addr))
        del lst[i]

    def _best_fit(self, pool: tuple[int, bool], size: int) -> _Block | None:
        lst = self._free.get(pool)
        if not lst:
            return None
        i = bisect.bisect_left(lst, (size, -1))
        if i == len(lst):
            return None
        _, addr = lst.pop(i)
        return self._blocks[addr]

    # --- segments ---
    def _fits_device(self, num_bytes: int) -> bool:
        return self.capacity_bytes is None or self.reserved_bytes + num_bytes <= self.capacity_bytes

    def _new_segment(self, pool: tuple[int, bool], size: int) -> _Block | None:
        if not self._fits_device(size):
            return None
        k = self._num_new_segments
        self._num_new_segments += 1
        if k < len(self._segment_addresses) and self._segment_addresses[k][0] == size:
            b = _Block(self._segment_addresses[k][1], size, pool)
        else:
            b = _Block(self._next_addr, size, pool)
            self._next_addr += size
        self._blocks[b.addr] = b
        self.reserved_bytes += size
        self.num_segments += 1
        self.num_segment_allocs += 1
        if self.history is not None:
            self.history.append(HistoryEntry("segment_alloc", b.addr, size, pool[0]))
        return b

    def _release_segment(self, b: _Block) -> None:
        self._remove_free(b)
        del self._blocks[b.addr]
        self.reserved_bytes -= b.size
        self.num_segments -= 1
        if self.history is not None:
            self.history.append(HistoryEntry("segment_free", b.addr, b.size, b.pool[0]))

    def _release_cached(self, size: int | None) -> bool:
        """Free one unsplit cached segment >= size (or, with size None, all of them)."""
        whole = [self._blocks[a] for lst in self._free.values() for _, a in lst]
        whole = [b for b in whole if b.prev is None and b.next is None]
        if size is not None:
            fitting = sorted((b for b in whole if b.size >= size), key=lambda b: (b.size, b.addr))
            if not fitting:
                return False
            whole = fitting[:1]
        for b in whole:
            self._release_segment(b)
        return bool(whole)

    # --- expandable segments ---
    def _absorb(self, dst: _Block, src: _Block | None) -> None:
        """``dst`` (in no list) takes over its neighbour ``src`` when that is free and mapped as
        ``dst`` is (``try_merge_blocks``)."""
        if src is None or src.allocated or src.mapped != dst.mapped:
            return
        if src.mapped:
            self._remove_free(src)
        else:
            self._unmapped[src.pool].remove(src.addr)
        del self._blocks[src.addr]
        if src is dst.prev:
            del self._blocks[dst.addr]
            dst.addr = src.addr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
            self._blocks[dst.addr] = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size

    def _expandable_best_fit(self, pool: tuple[int, bool], size: int) -> _Block | None:
        """The smallest mapped free block >= size, passing over one followed by unmapped space
        while the next larger one can grow less (``get_free_block``)."""
        lst = self._free.get(pool)
        if not lst:
            return None
        i = bisect.bisect_left(lst, (size, -1))
        if i == len(lst):
            return None

        def growable(b: _Block) -> int:
            return b.size + (b.next.size if b.next is not None and not b.next.mapped else 0)

        while i + 1 < len(lst) and growable(self._blocks[lst[i + 1][1]]) < growable(self._blocks[lst[i][1]]):
            i += 1
        _, addr = lst.pop(i)
        return self._blocks[addr]

    def _find_expandable(self, pool: tuple[int, bool], size: int) -> _Block:
        """The lowest unmapped range (or the free mapped block just before it) that starts a run
        of free blocks of at least ``size`` (``find_expandable_block``); the pool's segment is
        reserved (address space only) on its first request."""
        if pool not in self._unmapped:
            base = (len(self._unmapped) + 1) * EXPANDABLE_SEGMENT_SPACING_BYTES
            seg = _Block(base, EXPANDABLE_SEGMENT_SPACING_BYTES // 2, pool, mapped=False)
            self._blocks[base] = seg
            self._unmapped[pool] = [base]
            self.num_segments += 1
        for addr in self._unmapped[pool]:
            c = self._blocks[addr]
            if c.prev is not None and not c.prev.allocated:
                c = c.prev
            room = 0
            run: _Block | None = c
            while room < size and run is not None and not run.allocated:
                room, run = room + run.size, run.next
            if room >= size:
                return c
        raise AssertionError("an expandable segment ran out of address space")

    def _map_block(self, b: _Block, size: int) -> _Block | None:
        """Map whole pages from the start of unmapped block ``b`` to cover ``size``; the mapped
        part merges with free mapped neighbours and is returned (``map_block``). None when the
        pages do not fit the device capacity."""
        page = _page_bytes(b.pool)
        need = -(-size // page) * page
        if not self._fits_device(need):
            return None
        self._unmapped[b.pool].remove(b.addr)
        b.mapped = True
        if need < b.size:
            rest = _Block(b.addr + need, b.size - need, b.pool, mapped=False)
            rest.prev, rest.next = b, b.next
            if b.next is not None:
                b.next.prev = rest
            b.next = rest
            b.size = need
            self._blocks[rest.addr] = rest
            bisect.insort(self._unmapped[b.pool], rest.addr)
        self.reserved_bytes += need
        self.num_segment_allocs += 1
        if self.history is not None:
            self.history.append(HistoryEntry("segment_map", b.addr, need, b.pool[0]))
        if self.reserved_bytes > self.peak_reserved_bytes:
            self.peak_reserved_bytes = self.reserved_bytes
            self.peak_reserved_event = self.num_events
        self._absorb(b, b.prev)
        self._absorb(b, b.next)
        self._insert_free(b)
        return b

    def _allocate_expandable(self, pool: tuple[int, bool], size: int) -> _Block | None:
        """Map pages for a request no mapped free block serves (``try_allocate_expandable_block``);
        pages mapped before the capacity stopped it stay mapped, as on the device."""
        c: _Block | None = self._find_expandable(pool, size)
        assert c is not None
        if not c.mapped:
            c = self._map_block(c, min(c.size, size))
        while c is not None and c.size < size:
            nxt = c.next
            assert nxt is not None and not nxt.mapped
            c = self._map_block(nxt, min(size - c.size, nxt.size))
        if c is not None:
            self._remove_free(c)
        return c

    def _unmap_free_pages(self) -> None:
        """Unmap the whole pages inside every free block (``release_cached_blocks``)."""
        for pool, lst in self._free.items():
            page = _page_bytes(pool)
            for _, addr in list(lst):
                b = self._blocks[addr]
                lo = -(-b.addr // page) * page
                hi = (b.addr + b.size) // page * page
                if hi <= lo:
                    continue
                self._remove_free(b)
                del self._blocks[b.addr]
                if lo > b.addr:  # the partly used page before stays mapped, a free block
                    before = _Block(b.addr, lo - b.addr, pool)
                    before.prev, before.next = b.prev, b
                    if b.prev is not None:
                        b.prev.next = before
                    b.prev = before
                    self._blocks[before.addr] = before
                    self._insert_free(before)
                if hi < b.addr + b.size:  # and the one after
                    after = _Block(hi, b.addr + b.size - hi, pool)
                    after.prev, after.next = b, b.next
                    if b.next is not None:
                        b.next.prev = after
                    b.next = after
                    self._blocks[after.addr] = after
                    self._insert_free(after)
                b.addr, b.size, b.mapped = lo, hi - lo, False
                self._blocks[lo] = b
                self.reserved_bytes -= hi - lo
                if self.history is not None:
                    self.history.append(HistoryEntry("segment_unmap", lo, hi - lo, pool[0]))
                self._absorb(b, b.prev)
                self._absorb(b, b.next)
                bisect.insort(self._unmapped[pool], b.addr)

    # --- the two calls ---
    def malloc(self, key: Hashable, num_bytes: int, stream: int = 0) -> None:
        if key in self._live:
            raise ValueError(f"allocation {key!r} is already live")
        size = allocator_rounded_bytes(num_bytes)
        if size == 0:
            return  # PyTorch returns a null pointer for an empty tensor
        small = size <= SMALL_REQUEST_MAX_BYTES
        pool = (stream, small)
        if self.expandable_segments:
            block = self._expandable_best_fit(pool, size)
            if block is None:
                block = self._allocate_expandable(pool, size)
            if block is None:
                self.num_alloc_retries += 1
                self._unmap_free_pages()
                block = self._allocate_expandable(pool, size)
            if block is None:
                raise AllocatorOOM(
                    f"cannot allocate {size} B: {self.reserved_bytes} B reserved of "
                    f"{self.capacity_bytes} B (expandable segments)")
        else:
            block = self._best_fit(pool, size)
            if block is None:
                seg = allocation_size(size)
                block = self._new_segment(pool, seg)
                if block is None and self._release_cached(seg):
                    self.num_alloc_retries += 1
                    block = self._new_segment(pool, seg)
                if block is None and self._release_cached(None):
                    self.num_alloc_retries += 1
                    block = self._new_segment(pool, seg)
            if block is None:
                raise AllocatorOOM(
                    f"cannot allocate {size} B: {self.reserved_bytes} B reserved of "
                    f"{self.capacity_bytes} B")
        remaining = block.size - size
        if small or self.expandable_segments:
            split = remaining >= MIN_BLOCK_BYTES
        else:
            split = remaining > SMALL_REQUEST_MAX_BYTES
        if split:
            rest = _Block(block.addr + size, remaining, pool)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._blocks[rest.addr] = rest
            self._insert_free(rest)
        block.allocated = True
        self._live[key] = block
        if self.history is not None:
            self.history.append(HistoryEntry("alloc", block.addr, num_bytes, stream, key))
            self.requested_bytes[key] = num_bytes
        self.allocated_bytes += block.size
        if self.allocated_bytes > self.peak_allocated_bytes:
            self.peak_allocated_bytes = self.allocated_bytes
        if self.reserved_bytes > self.peak_reserved_bytes:
            self.peak_reserved_bytes = self.reserved_bytes
            self.peak_reserved_event = self.num_events
        if self.num_segments > self.peak_num_segments:
            self.peak_num_segments = self.num_segments

    def free(self, key: Hashable) -> None:
        block = self._live.pop(key, None)
        if block is None:
            if key in self._zero_keys:
                self._zero_keys.discard(key)
                return
            raise ValueError(f"free of {key!r}, which is not live")
        if self.history is not None:  # no events pending: the free completes at once
            asked = self.requested_bytes.pop(key)
            self.history.append(HistoryEntry("free_requested", block.addr, asked, block.pool[0], key))
            self.history.append(HistoryEntry("free_completed", block.addr, asked, block.pool[0], key))
        block.allocated = False
        self.allocated_bytes -= block.size
        prev, nxt = block.prev, block.next
        if prev is not None and not prev.allocated:  # (_absorb checks the rest; most neighbours are in use)
            self._absorb(block, prev)
        if nxt is not None and not nxt.allocated:
            self._absorb(block, nxt)
        self._insert_free(block)

    def replay(self, events: Iterable[AllocEvent]) -> AllocatorReplay:
        malloc, free, zero_keys = self.malloc, self.free, self._zero_keys
        for action, key, num_bytes, stream in events:
            if action == "alloc":
                if allocator_rounded_bytes(num_bytes) == 0:
                    zero_keys.add(key)
                else:
                    malloc(key, num_bytes, stream)
            elif action == "free":
                free(key)
            else:
                raise ValueError(f"unknown allocator action {action!r}")
            self.num_events += 1
        return self.result()

    def segments(self) -> list[tuple[tuple[int, bool], list[tuple[int, int, bool, Hashable]]]]:
        """Every segment now, by address: its pool (stream, small) and its blocks in address
        order as (address, size, allocated, key of the live request or None). Of an expandable
        segment, each run of mapped blocks is one segment, as in ``torch.cuda.memory_snapshot``."""
        keys = {id(b): k for k, b in self._live.items()}
        heads = sorted((b for b in self._blocks.values() if b.prev is None), key=lambda b: b.addr)
        out = []
        for head in heads:
            blocks: list[tuple[int, int, bool, Hashable]] = []
            b: _Block | None = head
            while b is not None:
                if b.mapped:
                    blocks.append((b.addr, b.size, b.allocated, keys.get(id(b))))
                elif blocks:
                    out.append((head.pool, blocks))
                    blocks = []
                b = b.next
            if blocks:
                out.append((head.pool, blocks))
        return out

    def result(self) -> AllocatorReplay:
        return AllocatorReplay(
            peak_reserved_bytes=self.peak_reserved_bytes,
            peak_allocated_bytes=self.peak_allocated_bytes,
            final_reserved_bytes=self.reserved_bytes,
            final_allocated_bytes=self.allocated_bytes,
            peak_num_segments=self.peak_num_segments,
            num_segment_allocs=self.num_segment_allocs,
            num_alloc_retries=self.num_alloc_retries,
            expandable_segments=self.expandable_segments,
        )


def replay_caching_allocator(
    events: Iterable[AllocEvent],
    *,
    capacity_bytes: int | None = None,
    expandable_segments: bool = False,
    segment_addresses: Sequence[tuple[int, int]] = (),
) -> AllocatorReplay:
    """Peak reserved / allocated memory of ``events`` under the caching allocator."""
    alloc = CachingAllocator(capacity_bytes=capacity_bytes, expandable_segments=expandable_segments,
                             segment_addresses=segment_addresses)
    return alloc.replay(events)


def workload_events(
    workload: Workload,
    *,
    num_steps: int = 1,
    preallocated_bytes: Sequence[int] = (),
    lazy_optimizer_states: bool = False,
) -> list[AllocEvent]:
    """The allocation/free sequence of running ``workload`` ``num_steps`` times in one process.

    ``lazy_optimizer_states``: as torch.optim creates them, the optimizer's states do not
    exist before the first ``optimizer.step`` (the first step's end, when the cache holds that
    step's freed activations) and are one tensor per parameter (``_lazy_state_events``), not
    one block per state: where they land in the cache is what fragments the next steps.

    ``preallocated_bytes`` are blocks allocated before anything else and never freed (cuBLAS
    workspaces left by earlier work). The step's initial tensors (weights, inputs) are
    allocated once, in order; every step then replays the ops' allocs and frees. Tensors still
    live at the end of a step that were not initial (gradients, a kept loss) are freed at the
    start of the next step, as ``zero_grad(set_to_none=True)`` and dropping the outputs do.
    Keys: ("pre", i), ("t", tid) for initial tensors, ("t", tid, step) for the others.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps: must be at least 1, got {num_steps}")
    index = workload._by_id()
    events = [AllocEvent("alloc", ("pre", i), n) for i, n in enumerate(preallocated_bytes)]
    initial = set(workload.initial)
    states = [tid for tid in workload.initial if index[tid].role == Role.OPTIMIZER_STATE]
    first_step_op = next((op.oid for op in workload.ops if op.kind == "optimizer"), None)
    lazy = lazy_optimizer_states and bool(states) and first_step_op is not None
    events += [AllocEvent("alloc", ("t", tid), index[tid].num_bytes) for tid in workload.initial
               if not (lazy and tid in states)]
    leftover: list[tuple] = []
    append = events.append
    for step in range(num_steps):
        events += [AllocEvent("free", key) for key in leftover]
        live: dict[int, tuple] = {}
        pop = live.pop
        for op in workload.ops:
            if lazy and step == 0 and op.oid == first_step_op:
                events += _lazy_state_events(workload, states)
            for tid in op.allocs:
                key = ("t", tid) if tid in initial else ("t", tid, step)
                live[tid] = key
                append(AllocEvent("alloc", key, index[tid].num_bytes))
            for tid in op.frees:
                append(AllocEvent("free", pop(tid, ("t", tid))))
        leftover = [key for tid, key in live.items() if tid not in initial]
    return events


def _lazy_state_events(workload: Workload, states: Sequence[int]) -> list[AllocEvent]:
    """torch.optim's first step: for each parameter in order, one tensor per state the size of
    the parameter in the state's dtype (AdamW's ``exp_avg`` then ``exp_avg_sq``; the 4-byte step
    counters of the fused kernel are left out: 512 B in the small pool)."""
    index = workload._by_id()
    weights = [tid for tid in workload.initial if index[tid].role == Role.WEIGHT]
    total = sum(index[w].num_bytes for w in weights)
    if total == 0:
        return [AllocEvent("alloc", ("t", s), index[s].num_bytes) for s in states]
    return [AllocEvent("alloc", ("t", s, "param", w), index[w].num_bytes * index[s].num_bytes // total)
            for w in weights for s in states]


def predict_workload_reserved(
    workload: Workload,
    *,
    num_steps: int = 2,
    preallocated_bytes: Sequence[int] = (CUBLAS_WORKSPACE_BYTES, CUBLAS_WORKSPACE_BYTES),
    capacity_bytes: int | None = None,
    expandable_segments: bool = False,
    lazy_optimizer_states: bool = False,
) -> AllocatorReplay:
    """Peak reserved memory of ``num_steps`` steps of ``workload`` (the steady state from 2 on)."""
    events = workload_events(workload, num_steps=num_steps, preallocated_bytes=preallocated_bytes,
                             lazy_optimizer_states=lazy_optimizer_states)
    return replay_caching_allocator(events, capacity_bytes=capacity_bytes,
                                    expandable_segments=expandable_segments)


ALLOCATORS = ("caching", "expandable")
"""The allocator configurations a job may name (``TrainJob.allocator``)."""


def predict_reserved(workload: Workload, *, allocator: str, capacity_bytes: int | None,
                     num_steps: int = 2) -> tuple[int, bool]:
    """Peak reserved bytes of ``num_steps`` steps of ``workload`` under ``allocator``, and
    whether the expandable replay capped at ``capacity_bytes`` ran out of memory.

    caching: uncapped (under a cap it would free its cache and retry; whether it then serves
    every request is a separate check, ``planners.swap.capped_replay_failure``). expandable:
    capped at ``capacity_bytes``, as a run capped there sees it (over the cap PyTorch unmaps the
    pages no block uses and retries); when that runs out, the uncapped peak and True."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator: {allocator!r} is not one of {', '.join(ALLOCATORS)}")
    if allocator == "expandable":
        try:
            return predict_workload_reserved(workload, num_steps=num_steps, capacity_bytes=capacity_bytes,
                                             expandable_segments=True).peak_reserved_bytes, False
        except AllocatorOOM:
            return predict_workload_reserved(workload, num_steps=num_steps,
                                             expandable_segments=True).peak_reserved_bytes, True
    return predict_workload_reserved(workload, num_steps=num_steps).peak_reserved_bytes, False
