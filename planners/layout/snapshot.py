"""Read a PyTorch memory snapshot without executing it: allocation events and a layout instance.

Models: ``torch.cuda.memory._dump_snapshot`` writes a pickle of plain dicts, lists, strings and
numbers: ``{"segments": [...], "device_traces": [[{"action", "addr", "size", "stream",
"time_us", "frames"}, ...], ...]}``. The trace's "alloc" and "free_completed" entries (or
"free_requested" when a trace has no completions) are the allocation/free sequence of the
program; an allocation freed in the trace but never allocated in it was live when recording
started, one never freed is live at the end.
Assumes: one device per file (the first device with a trace is read, or ``device``); the
trace's event order is the program's order; time is the event index.
Ignores: what the real allocator did (segment_free / segment_map / oom / snapshot entries: the
allocator model predicts that) except the addresses cudaMalloc returned (segment_alloc), which
the model may reuse to break best-fit ties as the device did; stack frames.
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

from hwmodels.limits import MAX_BYTES, MAX_LAYOUT_BUFFERS, MAX_SNAPSHOT_BYTES, echo
from hwmodels.units import UserInputError
from hwmodels.userfile import read_user_bytes
from planners.layout.instance import Buffer, LayoutInstance
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
class Snapshot:
    """What tierplan takes from a memory snapshot."""

    path: str
    device: int
    events: tuple[AllocEvent, ...]  # allocator requests, in order
    instance: LayoutInstance  # one buffer per allocation, times in event indices
    reserved_bytes: int  # sum of segment sizes at dump time (0 without segments)
    num_trace_entries: int
    segment_addresses: tuple[tuple[int, int], ...] = ()  # (size, addr) of segment_alloc, in order


def _int_field(entry: dict, key: str, path: str, n: int) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"{path}: device_traces entry {n}: {key}: expected an integer, got "
                             f"{type(value).__name__}")
    if not 0 <= value <= MAX_BYTES:
        raise UserInputError(f"{path}: device_traces entry {n}: {key}: must be between 0 and "
                             f"{MAX_BYTES:,}")
    return value


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
    live: dict[int, tuple[int, int, int, int]] = {}  # addr -> (buffer no., start, size, stream)
    events: list[AllocEvent] = []
    before: list[AllocEvent] = []  # allocations live when recording started
    closed: list[tuple[int, Buffer]] = []
    segment_addresses: list[tuple[int, int]] = []
    count = 0
    t = 0
    make_event = AllocEvent._make  # a tuple's own constructor: 10^5 events
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
            count += 1
        else:
            if addr in live:
                k, start, size0, _ = live.pop(addr)
                events.append(make_event(("free", k, 0, 0)))
                closed.append((k, Buffer(f"a{k}", start, t + 1, allocator_rounded_bytes(size0))))
            else:  # allocated before recording started
                k = count
                count += 1
                before.append(make_event(("alloc", k, size, stream)))
                events.append(make_event(("free", k, 0, 0)))
                closed.append((k, Buffer(f"a{k}", 0, t + 1, allocator_rounded_bytes(size))))
        t += 1
    end = t + 1
    for k, start, size, _ in live.values():
        closed.append((k, Buffer(f"a{k}", start, end, allocator_rounded_bytes(size))))
    buffers = [b for _, b in sorted(closed, key=lambda kb: (kb[1].lower, kb[0])) if b.size_bytes > 0]
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
    return Snapshot(path=path, device=device, events=tuple(before + events),
                    instance=LayoutInstance(tuple(buffers), name=path, source="snapshot"),
                    reserved_bytes=reserved, num_trace_entries=len(trace),
                    segment_addresses=tuple(segment_addresses))
