"""Speed of the discrete-event engine on a large step: events per second and wall time.

Scenario: Llama-2-7B (32 layers), one training step at 1M tokens with context parallelism over
the 8 GPUs of an 8xH200 node and selective recompute, every layer but the top two offloading
its saved activations to host DRAM after its forward and prefetching them one layer ahead in
backward (MEMO's runtime), all eight GPUs simulated with their copies sharing PCIe switches
and DRAM.

Run: .venv/bin/python benchmarks/des_speed.py [--fraction 1] [--checkpointing selective]
     [--repeats 3] [--json]
Timed: `simulate` alone (validation, compilation and the replay), best of ``--repeats``; building
the Workload and the Schedule is reported separately. One Python thread.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-2-7b")
    ap.add_argument("--seq-len", default="1M")
    ap.add_argument("--hardware", default="8xH200")
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="offloaded fraction of each layer's saved activations")
    ap.add_argument("--checkpointing", choices=("none", "selective", "full"), default="selective")
    ap.add_argument("--lookahead", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from hwmodels.catalog import load_node
    from hwmodels.units import GiB, parse_count
    from simulator.des import add_offload, offload_candidates, schedule_from_workload, simulate
    from simulator.job import default_scenario, scenario_from_dict
    from simulator.templates import training_workload

    node = load_node(args.hardware)
    data = default_scenario().model_dump(mode="json")
    data["model"], data["hardware"] = args.model, args.hardware
    data["job"]["seq_len"] = parse_count(args.seq_len, field="--seq-len")
    data["job"]["parallelism"]["cp"] = node.num_gpus
    data["job"]["checkpointing"] = args.checkpointing
    scenario = scenario_from_dict(data, where="benchmark")
    model = scenario.model_spec()

    t0 = time.perf_counter()
    workload = training_workload(model, scenario.job, node)
    t1 = time.perf_counter()
    layers = sorted(offload_candidates(workload))
    keep_top = args.lookahead + 1
    fractions = {L: args.fraction for L in layers[: len(layers) - keep_top]}
    schedule = add_offload(schedule_from_workload(workload, node, num_gpus=node.num_gpus),
                           fraction_by_layer=fractions, lookahead=args.lookahead)
    t2 = time.perf_counter()
    best = best_lean = float("inf")
    result = None
    for _ in range(args.repeats):
        s = time.perf_counter()
        result = simulate(schedule)
        best = min(best, time.perf_counter() - s)
        s = time.perf_counter()
        simulate(schedule, record_timeline=False)
        best_lean = min(best_lean, time.perf_counter() - s)
    assert result is not None
    num_transfers = sum(1 for t in schedule.tasks if type(t).__name__ == "Transfer")
    report = {
        "scenario": f"{model.name} ({model.num_layers} layers), seq {scenario.job.seq_len:,}, "
                    f"cp={node.num_gpus} on {node.name}, checkpointing {args.checkpointing}, "
                    f"offload {args.fraction:g} of layers "
                    f"0..{len(fractions) - 1} to host, lookahead {args.lookahead}",
        "num_gpus": node.num_gpus,
        "num_tasks": len(schedule.tasks),
        "num_transfers": num_transfers,
        "num_events": result.num_events,
        "num_link_reshares": len(result.link_load_log),
        "build_workload_s": t1 - t0,
        "build_schedule_s": t2 - t1,
        "simulate_s": best,
        "events_per_s": result.num_events / best,
        "simulate_no_timeline_s": best_lean,
        "events_per_s_no_timeline": result.num_events / best_lean,
        "step_time_s": result.step_time_s,
        "stall_s": result.stall_s,
        "peak_GiB": {k: v / GiB for k, v in result.peak_bytes_by_tier().items() if v},
        "num_oom": len(result.oom),
        "first_oom": ({"tier": result.oom[0].tier, "tensor": result.oom[0].tensor,
                       "time_s": result.oom[0].time_s} if result.oom else None),
    }
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(report["scenario"])
    print(f"  tasks {report['num_tasks']:,} ({num_transfers:,} copies), events {report['num_events']:,}")
    print(f"  build: workload {report['build_workload_s']:.3f} s, schedule {report['build_schedule_s']:.3f} s")
    print(f"  simulate: {best:.3f} s -> {report['events_per_s']:,.0f} events/s "
          f"(without the memory timeline: {best_lean:.3f} s, {report['events_per_s_no_timeline']:,.0f} events/s)")
    print(f"  simulated step {result.step_time_s:.3f} s, exposed stall {result.stall_s:.3f} s, peaks "
          + ", ".join(f"{k} {v:.1f} GiB" for k, v in report["peak_GiB"].items())
          + f", {len(result.oom)} OOM events"
          + (f" (first: {result.oom[0].tier}, {result.oom[0].tensor} at {result.oom[0].time_s:.3f} s)"
             if result.oom else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
