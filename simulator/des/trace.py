"""Chrome trace (Perfetto) of one simulated step.

Models: the Chrome trace event format: one process per device (each GPU, then "links" and
"memory"), one thread (track) per stream with an "X" slice per task, a counter track ("C") per
memory pool with its live GiB and one per link with its load in GB/s, an instant event ("i")
per OOM, and "M" metadata naming every process and thread. Times are microseconds, the only
place `_us` appears in tierplan.
Assumes: Perfetto's JSON importer (ui.perfetto.dev) and chrome://tracing accept the file.
Ignores: flow arrows between dependent tasks (the dependency graph is in the schedule).
Source: "Trace Event Format" (Google, the JSON Object Format with traceEvents, ph X/C/i/M).
"""

from __future__ import annotations

import json
from pathlib import Path

from hwmodels.units import GB, US_PER_S, GiB
from simulator.des.engine import SimResult
from simulator.des.schedule import Op

TRACE_PHASES = frozenset({"X", "C", "i", "M"})


def _us(t_s: float) -> float:
    return t_s * US_PER_S


def chrome_trace(result: SimResult) -> dict:
    """The trace as a JSON-ready dict ``{"traceEvents": [...], "displayTimeUnit": "ms"}``."""
    sched = result.schedule
    events: list[dict] = []
    pids: dict[str, int] = {}

    def pid_of(device: str) -> int:
        if device not in pids:
            pids[device] = len(pids) + 1
            events.append({"ph": "M", "name": "process_name", "pid": pids[device], "tid": 0,
                           "args": {"name": device}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pids[device], "tid": 0,
                           "args": {"sort_index": pids[device]}})
        return pids[device]

    tid_of: dict[str, tuple[int, int]] = {}
    for k, s in enumerate(sched.streams):
        pid = pid_of(s.device)
        tid_of[s.name] = (pid, k + 1)
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": k + 1,
                       "args": {"name": s.name}})
    for task in sched.tasks:
        pid, tid = tid_of[task.stream]
        start, end = result.task_start_s[task.tid], result.task_end_s[task.tid]
        if isinstance(task, Op):
            cat = task.phase or "op"
            args: dict[str, object] = {"layer": task.layer} if task.layer is not None else {}
            if task.group is not None:
                args["collective"] = task.group
        else:
            cat = "transfer"
            args = {"bytes": task.num_bytes, "src": task.src, "dst": task.dst,
                    "GB_per_s": task.num_bytes / GB / (end - start) if end > start else 0.0}
        events.append({"ph": "X", "name": task.name, "cat": cat, "pid": pid, "tid": tid,
                       "ts": _us(start), "dur": _us(end - start), "args": args})
    mem_pid = pid_of("memory")
    for p in result.pools:
        last: dict[float, int] = {}
        for t, live in p.timeline:  # the last value at each instant is what the pool holds
            last[t] = live
        for t, live in last.items():
            events.append({"ph": "C", "name": f"{p.name} ({p.tier})", "pid": mem_pid, "tid": 0,
                           "ts": _us(t), "args": {"GiB": live / GiB}})
    link_pid = pid_of("links")
    for t, r, load in result.link_load_log:
        events.append({"ph": "C", "name": sched.links[r].name, "pid": link_pid, "tid": 0,
                       "ts": _us(t), "args": {"GB/s": load / GB}})
    for oom in result.oom:
        events.append({"ph": "i", "name": f"OOM {oom.pool}: {oom.tensor}", "s": "g",
                       "pid": mem_pid, "tid": 0, "ts": _us(oom.time_s),
                       "args": {"tier": oom.tier, "task": oom.task, "live_bytes": oom.live_bytes,
                                "capacity_bytes": oom.capacity_bytes}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"step_time_s": result.step_time_s, "num_events": result.num_events}}


def write_chrome_trace(result: SimResult, path: str | Path) -> Path:
    """Write `chrome_trace` to ``path`` (open it at ui.perfetto.dev)."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(result), separators=(",", ":")))
    return path


def plot_step(result: SimResult, path: str | Path, *, max_gpus_shown: int = 2) -> Path:
    """PNG: live memory per pool over time (top) and a Gantt of the streams (bottom).

    With many GPUs only the first ``max_gpus_shown`` GPUs' streams are drawn (every GPU runs
    the same program); every pool that holds bytes is drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sched = result.schedule
    shown = [s for s in sched.streams
             if not s.device.startswith("gpu") or int(s.device[3:]) < max_gpus_shown]
    shown = [s for s in shown if any(t.stream == s.name for t in sched.tasks)]
    fig, (ax_mem, ax_g) = plt.subplots(
        2, 1, figsize=(12, 3.5 + 0.35 * len(shown)), sharex=True,
        gridspec_kw={"height_ratios": [2.2, max(1.0, 0.25 * len(shown))]})
    for p in result.pools:
        if p.peak_bytes == 0 or not p.timeline:
            continue
        if p.tier == "hbm" and int(p.name[3:p.name.index(".")]) >= max_gpus_shown:
            continue
        xs = [t for t, _ in p.timeline] + [result.step_time_s]
        ys = [v / GiB for _, v in p.timeline]
        ys.append(ys[-1])
        ax_mem.step(xs, ys, where="post", label=f"{p.name} (peak {p.peak_bytes / GiB:.1f} GiB)")
        if p.capacity_bytes < 2 * p.peak_bytes:
            ax_mem.axhline(p.capacity_bytes / GiB, linestyle=":", linewidth=0.8,
                           color=ax_mem.lines[-1].get_color())
    ax_mem.set_ylabel("live memory (GiB)")
    ax_mem.set_title(f"simulated step: {result.step_time_s:.3f} s, exposed transfer stall "
                     f"{result.stall_s:.3f} s" + (f", {len(result.oom)} OOM" if result.oom else ""))
    ax_mem.legend(loc="upper left", fontsize=7)
    ax_mem.grid(alpha=0.3)
    colors = {"fwd": "tab:blue", "loss": "tab:purple", "bwd": "tab:orange",
              "recompute": "tab:olive", "optim": "tab:green", "transfer": "tab:red"}
    rows: dict[str, dict[str, list]] = {s.name: {} for s in shown}
    for task in sched.tasks:
        if task.stream not in rows:
            continue
        start, end = result.task_start_s[task.tid], result.task_end_s[task.tid]
        if end <= start:
            continue
        cat = task.phase if isinstance(task, Op) else "transfer"
        rows[task.stream].setdefault(cat, []).append((start, end - start))
    for y, s in enumerate(shown):
        for cat, spans in rows[s.name].items():
            ax_g.broken_barh(spans, (y - 0.4, 0.8), facecolors=colors.get(cat, "tab:gray"),
                             edgecolor="none")
    ax_g.set_yticks(range(len(shown)), [s.name for s in shown], fontsize=7)
    ax_g.set_ylim(len(shown) - 0.5, -0.5)
    ax_g.set_xlabel("time (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax_g.legend(handles, list(colors), loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7,
                ncol=len(colors), frameon=False, borderaxespad=0.1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
