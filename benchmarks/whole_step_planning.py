"""Wall time of planning the whole training step of Llama-3.1-8B (32 layers) on the reference box.

Measures: wall and CPU seconds of `planners.swap.whole.plan_whole_step` alone (in-process,
imports excluded) and of the whole `tierplan plan` command (a fresh process, imports and every other strategy included) for 128K
and 1M tokens on ``1xH200-box``, each on one core (``taskset`` when the machine has it), with
the predicted step time, the combination chosen and the tiers' peaks. Target: under 10 s for
32 layers on one core (the command's default --time-limit is 10 s of wall time: the search stops
at its deadline, so on a loaded machine read the CPU seconds and whether it returned a plan).
Assumes: the machine's load is printed with the figures (timings on a shared machine are noisy;
run it twice). Ignores: nothing else.

Run: python benchmarks/whole_step_planning.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 10.0
CASES = (("128K", 128 * 1024), ("1M", 1024 * 1024))


def in_process(seq_len: int) -> dict:
    sys.path.insert(0, str(REPO))
    from hwmodels.catalog import load_node
    from hwmodels.units import GiB
    from planners.swap import PlanContext
    from planners.swap.whole import plan_whole_step
    from simulator.job import TrainJob
    from simulator.model import get_model

    node = load_node("1xH200-box")
    ctx = PlanContext(model=get_model("llama-3.1-8b"), job=TrainJob(seq_len=seq_len), node=node,
                      gpu_budget_bytes=node.gpu.hbm_capacity_bytes,
                      host_budget_bytes=node.host_memory.capacity_bytes)
    t0, c0 = time.perf_counter(), time.process_time()
    res = plan_whole_step(ctx, time_limit_s=TARGET_S)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peaks = res.plan.prediction.tier_peak_bytes if res.plan is not None and res.plan.prediction else {}
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "feasible": res.feasible, "step_time_s": res.step_time_s,
            "choice": res.reason, "tier_peak_gib": {k: round(v / GiB, 2) for k, v in peaks.items()}}


def command(label: str) -> dict:
    cmd = [sys.executable, "-m", "tierplan.cli", "plan", "--model", "llama-3.1-8b", "--seq-len", label,
           "--hardware", "1xH200-box", "--json"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, check=False)
    wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    best = json.loads(out.stdout).get("best") if out.returncode == 0 else None
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "exit_code": out.returncode, "best": best}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = {label: {"search": in_process(seq), "command": command(label)} for label, seq in CASES}
    result = {"load_avg": os.getloadavg(), "target_s": TARGET_S, "cases": rows}
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"load average {result['load_avg']}")
    for label, row in rows.items():
        s, c = row["search"], row["command"]
        print(f"{label}: search {s['wall_s']} s wall, {s['cpu_s']} s CPU ({'plan' if s['feasible'] else 'none'}: "
              f"{s['choice']}; {s['step_time_s']} s/step; peaks {s['tier_peak_gib']} GiB); "
              f"tierplan plan {c['wall_s']} s wall, {c['cpu_s']} s CPU, exit {c['exit_code']}, best {c['best']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
