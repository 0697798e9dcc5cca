"""Wall time of `tierplan plan` and `tierplan layout` against their --time-limit (issue targets).

Measures: each case as a fresh `python -m tierplan.cli` process (imports included), its wall
time, exit code, and what it returned: for plan the best strategy and the MIP's status and gap,
for layout the method, the gap and the allocator / picture notes. The target is
``--time-limit + 5 s`` for every case.
Cases: plan on Llama-2-70B at TP 8 on 8xH200 (limits 1 and 3 s) and on MEMO's default scenario
(1 s); layout on 200k random buffers (CSV, `planners.layout.generate.random_instance`) and on a
synthetic 400k-entry snapshot (200k allocs and their frees, the trace format
`torch.cuda.memory._dump_snapshot` writes), both with --time-limit 1.
Assumes: the machine's load is printed with the figures (timings on a shared machine are
noisy; run it twice). Ignores: nothing else.

Run: python benchmarks/time_limits.py [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SLACK_S = 5.0


def write_csv(path: Path, num_buffers: int) -> None:
    sys.path.insert(0, str(REPO))
    from planners.layout.generate import random_instance
    from planners.layout.instance import write_csv_instance

    write_csv_instance(random_instance(num_buffers, seed=0), str(path))


def write_snapshot(path: Path, num_buffers: int) -> None:
    """A snapshot whose trace allocates and frees ``num_buffers`` blocks (2 entries each) with
    the lifetimes of `random_instance`; every block at its own address."""
    sys.path.insert(0, str(REPO))
    from planners.layout.generate import random_instance
    from planners.layout.plan import instance_events

    inst = random_instance(num_buffers, seed=1)
    addr = {b.bid: 0x7F0000000000 + k * (1 << 24) for k, b in enumerate(inst.buffers)}
    size = {b.bid: b.size_bytes for b in inst.buffers}
    trace = [{"action": "alloc" if e.action == "alloc" else "free_completed", "addr": addr[e.key],
              "size": size[e.key], "stream": 0} for e in instance_events(inst)]
    path.write_bytes(pickle.dumps({"segments": [], "device_traces": [trace]}))


def run_case(name: str, argv: list[str], limit_s: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tierplan.cli", *argv, "--time-limit", f"{limit_s:g}", "--json"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    rec = {"case": name, "time_limit_s": limit_s, "wall_s": round(wall, 2), "rc": proc.returncode,
           "within_target": wall <= limit_s + TARGET_SLACK_S}
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        rec["error"] = (proc.stderr or proc.stdout).strip()[-300:]
        return rec
    if "strategies" in out:
        mip = next(r for r in out["strategies"] if r["name"] == "mip")
        rec.update(best=out.get("best"), status=out.get("status"), mip_status=out["mip"]["status"],
                   mip_gap=out["mip"]["gap"], mip_reason=mip["reason"][:120])
    else:
        rec.update(method=out["method"], gap=round(out["gap"], 4), png_note=out.get("png_note", ""),
                   allocator_note=out.get("allocator_note", ""))
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the generated inputs (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="one JSON object")
    args = ap.parse_args(argv)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="time-limits-"))
    work.mkdir(parents=True, exist_ok=True)
    csv_path, snap_path = work / "random-200k.csv", work / "snapshot-400k.pickle"
    if not csv_path.exists():
        write_csv(csv_path, 200_000)
    if not snap_path.exists():
        write_snapshot(snap_path, 200_000)
    plan70 = ["plan", "--model", "llama-2-70b", "--tp", "8", "--hardware", "8xH200"]
    lay = ["--out", str(work / "layout.json")]
    cases = [("plan 70B TP8", plan70, 1.0), ("plan 70B TP8", plan70, 3.0), ("plan MEMO default", ["plan"], 1.0),
             ("layout CSV 200k", ["layout", "--trace", str(csv_path), *lay], 1.0),
             ("layout snapshot 400k entries", ["layout", "--snapshot", str(snap_path), *lay], 1.0)]
    load = os.getloadavg()
    records = []
    for name, cmd, limit in cases:
        rec = run_case(name, cmd, limit)
        records.append(rec)
        if not args.json:
            print(json.dumps(rec), flush=True)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
               "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()],
               "cases": records}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"load average before {summary['load_before']}, after {summary['load_after']} on "
              f"{summary['cpus']} CPUs")
    return 0 if all(r["within_target"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
