"""Read a PyTorch memory snapshot without executing it: allocation events and a layout instance.

Models: ``torch.cuda.memory._dump_snapshot`` writes a pickle of plain dicts, lists, strings and
numbers: ``{"segments": [...], "device_traces": [[{"action", "addr", "size", "stream",
"time_us", "frames"}, ...], ...]}``. The trace's "alloc" and "free_completed" entries (or
"free_requested" when a trace has no completions) are the allocation/free sequence of the
program; an allocation freed in the trace but never allocated in it was live when recording
started, one never freed is live at the end.
Assumes: one device per file (the first device with a trace is read, or ``device``); the
trace's event order is the program's order; time is the event index.
Keeps: each allocation's stack frames (the alloc entry's ``frames``, as the file has them) and
the segments at dump time with their blocks (address, size, state, frames), so that a report
can name the code behind an allocation (``planners.layout.fragmentation``).
Ignores: what the real allocator did (segment_free / segment_map / oom / snapshot entries: the
allocator model predicts that) except the addresses cudaMalloc returned (segment_alloc), which
the model may reuse to break best-fit ties as the device did.
A plain trace is read as numpy columns (``_trace_arrays``); one with an entry the columns cannot
take goes through the entry loop (``_trace_loop``), which gives the same result and names the entry.
Source: PyTorch torch/cuda/memory.py (``_record_memory_history``, ``_snapshot``,
``_dump_snapshot``) and c10/cuda/CUDACachingAllocator.h (TraceEntry actions).
Security: the file is read with an unpickler whose ``find_class`` refuses everything, so a
pickle that names any callable (os.system via __reduce__, a torch class) is refused before
anything runs; only the pickle opcodes for plain containers, strings, bytes and numbers work.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from hwmodels.limits import MAX_BYTES, MAX_LAYOUT_BUFFERS, MAX_SNAPSHOT_BYTES, echo
from hwmodels.units import UserInputError
from hwmodels.userfile import read_user_bytes
from planners.layout.instance import Buffer, LayoutInstance, gc_paused
from simulator.allocator import AllocEvent
from simulator.workload import allocator_rounded_bytes


class _PlainUnpickler(pickle.Unpickler):
    """Admits only plain containers and numbers: any global reference is refused."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"refers to {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("uses a persistent id")


def load_plain_pickle(path: str) -> object:
    """Unpickle ``path`` admitting only plain data; one-line UserInputError otherwise."""
    data = read_user_bytes(path, max_bytes=MAX_SNAPSHOT_BYTES)
    if not data:
        raise UserInputError(f"{path}: empty file; expected a memory snapshot pickle")
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as err:
        msg = str(err)
        if msg.startswith("refers to") or "persistent" in msg:
            raise UserInputError(
                f"{path}: refused: the pickle {msg}; a memory snapshot holds only plain "
                "containers and numbers, so this file could run code and is not read") from None
        raise UserInputError(f"{path}: not a valid memory snapshot pickle ({msg})") from None
    except EOFError:
        raise UserInputError(f"{path}: truncated memory snapshot (pickle ends early)") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            MemoryError, RecursionError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: not a valid memory snapshot pickle "
                             f"({type(err).__name__}: {str(err)[:80]})") from None


@dataclass(frozen=True)
class SnapshotBlock:
    """One block of a segment at dump time."""

    address: int
    size_bytes: int
    state: str  # "active_allocated", "inactive", "active_pending_free"
    frames: object  # the file's frames (a list of {"filename", "line", "name"}), unchecked


@dataclass(frozen=True)
class SnapshotSegment:
    """One segment at dump time, its blocks in address order."""

    address: int
    total_bytes: int
    stream: int
    blocks: tuple[SnapshotBlock, ...]


@dataclass(frozen=True)
class Snapshot:
    """What tierplan takes from a memory snapshot."""

    path: str
    device: int
    events: tuple[AllocEvent, ...]  # allocator requests, in order
    instance: LayoutInstance  # one buffer per allocation, times in event indices
    reserved_bytes: int  # sum of segment sizes at dump time (0 without segments)
    num_trace_entries: int
    segment_addresses: tuple[tuple[int, int], ...] = ()  # (size, addr) of segment_alloc, in order
    frames: tuple[object, ...] = ()  # per buffer number (event key, buffer "a<k>"): its alloc's frames
    segments: tuple[SnapshotSegment, ...] = ()  # at dump time


def _int_field(entry: dict, key: str, path: str, n: int) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"{path}: device_traces entry {n}: {key}: expected an integer, got "
                             f"{type(value).__name__}")
    if not 0 <= value <= MAX_BYTES:
        raise UserInputError(f"{path}: device_traces entry {n}: {key}: must be between 0 and "
                             f"{MAX_BYTES:,}")
    return value


Parsed = tuple[tuple[AllocEvent, ...], list[Buffer], list[tuple[int, int]], list[object]]
"""A trace's allocator events, its buffers (by start time, then buffer number), its segment
addresses and each buffer number's frames (None for one allocated before recording)."""


def _trace_loop(trace: list, free_action: str, path: str) -> Parsed:
    """The trace entry by entry; the reference reading, and the one that names a bad entry."""
    live: dict[int, tuple[int, int, int, int]] = {}  # addr -> (buffer no., start, size, stream)
    events: list[AllocEvent] = []
    before: list[AllocEvent] = []  # allocations live when recording started
    closed: list[tuple[int, Buffer]] = []
    segment_addresses: list[tuple[int, int]] = []
    frames: list[object] = []
    count = 0
    t = 0
    make_event = AllocEvent._make
    for n, entry in enumerate(trace):
        if not isinstance(entry, dict):
            raise UserInputError(f"{path}: device_traces entry {n}: expected a dict, got "
                                 f"{type(entry).__name__}")
        action = entry.get("action")
        if action == "segment_alloc":
            segment_addresses.append((_int_field(entry, "size", path, n),
                                      _int_field(entry, "addr", path, n)))
            continue
        if action not in ("alloc", free_action):
            continue
        addr, size = entry.get("addr"), entry.get("size")
        # plain ints in range pass at once (type() is int excludes bool); the rest get the message
        if type(addr) is not int or not 0 <= addr <= MAX_BYTES:
            addr = _int_field(entry, "addr", path, n)
        if type(size) is not int or not 0 <= size <= MAX_BYTES:
            size = _int_field(entry, "size", path, n)
        stream = entry.get("stream", 0)
        stream = stream if type(stream) is int else 0
        if action == "alloc":
            if addr in live:
                raise UserInputError(f"{path}: device_traces entry {n}: alloc at {addr:#x}, "
                                     "which is already allocated")
            live[addr] = (count, t, size, stream)
            events.append(make_event(("alloc", count, size, stream)))
            frames.append(entry.get("frames"))
            count += 1
        else:
            if addr in live:
                k, start, size0, _ = live.pop(addr)
                events.append(make_event(("free", k, 0, 0)))
                closed.append((k, Buffer(f"a{k}", start, t + 1, allocator_rounded_bytes(size0))))
            else:  # allocated before recording started
                k = count
                count += 1
                frames.append(None)
                before.append(make_event(("alloc", k, size, stream)))
                events.append(make_event(("free", k, 0, 0)))
                closed.append((k, Buffer(f"a{k}", 0, t + 1, allocator_rounded_bytes(size))))
        t += 1
    end = t + 1
    for k, start, size, _ in live.values():
        closed.append((k, Buffer(f"a{k}", start, end, allocator_rounded_bytes(size))))
    buffers = [b for _, b in sorted(closed, key=lambda kb: (kb[1].lower, kb[0])) if b.size_bytes > 0]
    return tuple(before + events), buffers, segment_addresses, frames


def _plain_byte_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_BYTES  # type() is int excludes bool


def _trace_arrays(trace: list, free_action: str) -> Parsed | None:
    """What ``_trace_loop`` returns, computed on whole columns with numpy (a 400k-entry trace in
    a fraction of the loop's time). None when any entry is not plain (not a dict, an address or
    size that is not an int in range, an alloc at a live address): the loop then names it.

    Each free pairs with the alloc before it at its address (sorting by address, then position,
    puts the pair side by side); a free with no alloc before it was live when recording started
    and gets its buffer number where it stands, as in the loop.
    """
    if not all(type(e) is dict for e in trace):
        return None
    actions = [e.get("action") for e in trace]
    segment_addresses = []
    for e, a in zip(trace, actions, strict=True):
        if a == "segment_alloc":
            size, addr = e.get("size"), e.get("addr")
            if not (_plain_byte_count(size) and _plain_byte_count(addr)):
                return None
            segment_addresses.append((size, addr))
    kept = [e for e, a in zip(trace, actions, strict=True) if a == "alloc" or a == free_action]
    m = len(kept)
    addr_list = [e.get("addr") for e in kept]
    size_list = [e.get("size") for e in kept]
    # type() is int excludes bool; values past int64 make numpy raise OverflowError
    if not (all(type(v) is int for v in addr_list) and all(type(v) is int for v in size_list)):
        return None
    if m == 0:
        return (), [], segment_addresses, []
    try:
        addr = np.array(addr_list, dtype=np.int64)
        size = np.array(size_list, dtype=np.int64)
    except OverflowError:
        return None
    if not (0 <= int(addr.min()) and int(addr.max()) <= MAX_BYTES and 0 <= int(size.min())
            and int(size.max()) <= MAX_BYTES):
        return None
    streams = [e.get("stream", 0) for e in kept]
    if not all(type(v) is int for v in streams):
        streams = [v if type(v) is int else 0 for v in streams]
    is_alloc = np.fromiter((e["action"] == "alloc" for e in kept), dtype=bool, count=m)
    # by address, then position: an entry's predecessor in this order is the one before it at its address
    order = np.argsort(addr, kind="stable")
    same = np.zeros(m, dtype=bool)
    same[1:] = addr[order][1:] == addr[order][:-1]
    alloc_sorted = is_alloc[order]
    after_alloc = np.zeros(m, dtype=bool)
    after_alloc[1:] = same[1:] & alloc_sorted[:-1]
    if (alloc_sorted & after_alloc).any():  # an alloc at a live address: the loop names it
        return None
    paired_sorted = ~alloc_sorted & after_alloc  # frees of an allocation made in the trace
    paired = np.zeros(m, dtype=bool)
    paired[order] = paired_sorted
    partner = np.arange(m)  # position of each paired free's alloc (itself otherwise)
    partner[order[paired_sorted]] = order[np.nonzero(paired_sorted)[0] - 1]
    before = ~is_alloc & ~paired  # freed, never allocated in the trace: live at the start
    number = np.cumsum(is_alloc | before) - 1  # buffer numbers in order of appearance
    key = number[partner]
    # buffers: one per alloc (live to its free, or past the end) and one per early free
    upper = np.full(m, m + 1, dtype=np.int64)
    upper[partner[paired]] = np.nonzero(paired)[0] + 1
    born = np.nonzero(is_alloc | before)[0]  # in buffer-number order
    frames = [kept[i].get("frames") if a else None
              for i, a in zip(born.tolist(), is_alloc[born].tolist(), strict=True)]
    b_lower = np.where(before[born], 0, born)
    b_upper = np.where(before[born], born + 1, upper[born])
    uniq, inverse = np.unique(size[born], return_inverse=True)
    rounded = np.array([allocator_rounded_bytes(int(x)) for x in uniq], dtype=np.int64)[inverse]
    pick = np.lexsort((number[born], b_lower))
    pick = pick[rounded[pick] > 0]
    ids = [f"a{k}" for k in number[born][pick].tolist()]
    buffers = list(map(Buffer, ids, b_lower[pick].tolist(), b_upper[pick].tolist(), rounded[pick].tolist()))
    # events: the allocs of early frees first, then the trace (a free names its buffer only)
    action = np.array(["free", "alloc"], dtype=object)[is_alloc.astype(np.int64)].tolist()
    num_bytes = np.where(is_alloc, size, 0).tolist()
    ev_streams = [s if a else 0 for s, a in zip(streams, is_alloc.tolist(), strict=True)]
    first = np.nonzero(before)[0].tolist()
    make = tuple.__new__  # AllocEvent._make without a Python call per event
    head = [make(AllocEvent, ("alloc", k, size_list[p], streams[p]))
            for p, k in zip(first, number[first].tolist(), strict=True)]
    rows = zip(action, key.tolist(), num_bytes, ev_streams, strict=True)
    events = tuple(head) + tuple(map(make, repeat(AllocEvent), rows))
    return events, buffers, segment_addresses, frames


def _segments(segments: list, device: int) -> tuple[SnapshotSegment, ...]:
    """The dump-time segments of ``device`` whose fields are plain; any other is left out (the
    reserved total above is checked on its own)."""
    out = []
    for seg in segments:
        if not isinstance(seg, dict) or seg.get("device", device) != device:
            continue
        addr, total, blocks = seg.get("address"), seg.get("total_size"), seg.get("blocks")
        stream = seg.get("stream", 0)
        if not (isinstance(addr, int) and isinstance(total, int) and _plain_byte_count(addr)
                and _plain_byte_count(total) and isinstance(blocks, list)):
            continue
        kept = []
        at = addr
        for b in blocks:
            size = b.get("size") if isinstance(b, dict) else None
            if not (isinstance(b, dict) and isinstance(size, int) and _plain_byte_count(size)):
                break
            state = b.get("state")
            kept.append(SnapshotBlock(at, size, state if isinstance(state, str) else "unknown",
                                      b.get("frames")))
            at += size
        else:
            out.append(SnapshotSegment(addr, total, stream if type(stream) is int else 0, tuple(kept)))
    return tuple(out)


def load_snapshot(path: str, *, device: int | None = None) -> Snapshot:
    """Parse a ``_dump_snapshot`` file into allocator events and a layout instance."""
    data = load_plain_pickle(path)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a dict with 'segments' and 'device_traces', got "
                             f"{type(data).__name__}")
    traces = data.get("device_traces")
    if not isinstance(traces, list) or not all(isinstance(t, list) for t in traces):
        raise UserInputError(f"{path}: device_traces: expected a list of per-device lists "
                             "(record with torch.cuda.memory._record_memory_history())")
    if device is None:
        device = next((d for d, t in enumerate(traces) if t), 0)
    if not 0 <= device < len(traces) or not traces[device]:
        raise UserInputError(f"{path}: device_traces: no allocation trace for device {device}")
    trace = traces[device]
    if len(trace) > 2 * MAX_LAYOUT_BUFFERS:
        raise UserInputError(f"{path}: device_traces: {len(trace):,} entries, more than the "
                             f"{2 * MAX_LAYOUT_BUFFERS:,} a layout takes")
    has_completed = any(isinstance(e, dict) and e.get("action") == "free_completed" for e in trace)
    free_action = "free_completed" if has_completed else "free_requested"
    with gc_paused():  # 10^5 new tuples and buffers: each collection would walk the whole trace
        parsed = _trace_arrays(trace, free_action) or _trace_loop(trace, free_action, path)
    events, buffers, segment_addresses, frames = parsed
    if not buffers:
        raise UserInputError(f"{path}: device_traces: no alloc/free entries for device {device}")
    reserved = 0
    segments = data.get("segments", [])
    if isinstance(segments, list):
        for seg in segments:
            if isinstance(seg, dict) and seg.get("device", device) == device:
                size = seg.get("total_size", 0)
                if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_BYTES:
                    raise UserInputError(f"{path}: segments: total_size: expected a byte count "
                                         f"between 0 and {MAX_BYTES:,}, got {echo(size)}")
                reserved += size
    return Snapshot(path=path, device=device, events=events,
                    instance=LayoutInstance(tuple(buffers), name=path, source="snapshot"),
                    reserved_bytes=reserved, num_trace_entries=len(trace),
                    segment_addresses=tuple(segment_addresses), frames=tuple(frames),
                    segments=_segments(segments, device) if isinstance(segments, list) else ())
