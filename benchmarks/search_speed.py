"""Configurations per second of `tierplan search`'s training estimate: the uncached path
(`estimate_training` per configuration, as `tierplan estimate` runs it) against the search's
(`TrainingEstimator`, configurations in the search's order), on one core, in the same run; and,
with ``--search``, the wall time of the whole search on the process pool.

    PYTHONPATH=. python benchmarks/search_speed.py [--model llama-3.1-70b] [--seq-len 1M]
        [--sample 20] [--search] [--workers N] [SPACE.yaml]

The old path is timed on ``--sample`` configurations spread evenly over the space (it takes
0.1-0.6 s each); the new path on every configuration as a search's worker evaluates them
(`tierplan.search.evaluate_chunk` over the search's chunks for ``--workers``, in this process:
each configuration's record and cost included, per estimated configuration), and on the sample
again to check that it gives the same estimates. Prints one JSON object. Timing depends on the machine's load: the
1-minute load average is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwmodels.units import UserInputError  # noqa: E402
from simulator.estimator import TrainingEstimator, estimate_training  # noqa: E402
from tierplan import search as S  # noqa: E402

DEFAULT_SPACE = {  # how many H200s (or H100s) for this model at this length: 9,984 configurations
    "hardware": ["8xH200", "8xH100"], "gpus": [8, 16, 32, 64, 128, 256, 512, 1024], "tp": [1, 2, 4, 8],
    "cp": [1, 2, 4, 8, 16, 32, 64], "cp_kind": ["ring", "ulysses"], "zero": [0, 1, 2, 3],
    "checkpointing": ["none", "selective", "full"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("space", nargs="?", help="search-space file (default: the built-in GPU-count sweep)")
    ap.add_argument("--model", default="llama-3.1-70b")
    ap.add_argument("--seq-len", default="1M")
    ap.add_argument("--sample", type=int, default=20, help="configurations timed on the old path")
    ap.add_argument("--limit", type=int, default=0, help="time the new path on the first N only (0: all)")
    ap.add_argument("--search", action="store_true", help="also run the whole search on the pool")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    data = S.load_space(args.space) if args.space else {**DEFAULT_SPACE, "model": args.model, "seq_len": [args.seq_len]}
    space = S.parse_space(data, where=args.space or "built-in space")
    configs = S.configurations(space)
    if args.limit:
        configs = configs[:args.limit]
    ctx = S._context(space.model_dump_json())
    jobs = []
    for c in configs:
        try:
            jobs.append(S._job(ctx, c))
        except UserInputError:
            jobs.append(None)
    step = max(1, len(configs) // max(1, args.sample))
    sample = [i for i in range(0, len(configs), step) if jobs[i] is not None][:args.sample]

    def timed(fn, indices):
        out, t0 = {}, time.process_time()
        for i in indices:
            job, node = jobs[i]
            try:
                out[i] = fn(ctx.model, job, node)
            except UserInputError:
                out[i] = None
        return out, time.process_time() - t0

    old, old_s = timed(estimate_training, sample)
    est = TrainingEstimator()  # with every replay, to compare with the old path field for field
    new_sample, _ = timed(est.estimate, sample)
    same = all(old[i] == new_sample[i] for i in sample)
    every = [i for i, j in enumerate(jobs) if j is not None]
    t0 = time.process_time()  # the new path as a search's worker runs it: chunk by chunk, records and costs
    for part in S.chunks(configs, num_workers=args.workers):
        S.evaluate_chunk(space.model_dump_json(), part)
    new_s = time.process_time() - t0
    shapes = {(TrainingEstimator.shape_job(jobs[i][0]), jobs[i][1].name) for i in every}
    report = {
        "model": space.model, "num_configurations": len(configs), "num_estimated": len(every),
        "num_step_shapes_x_nodes": len(shapes),
        "old_ms_per_configuration": 1e3 * old_s / max(1, len(sample)), "old_sample": len(sample),
        "new_ms_per_configuration": 1e3 * new_s / max(1, len(every)),
        "new_configurations_per_s": len(every) / new_s if new_s else None,
        "old_configurations_per_s": len(sample) / old_s if old_s else None,
        "sample_equal_to_old_path": same, "load_average_1min": os.getloadavg()[0],
    }
    if args.search:
        t0 = time.perf_counter()
        res = S.search(space, num_workers=args.workers)
        report.update(search_wall_s=time.perf_counter() - t0, search_workers=args.workers,
                      front_size=len(res.front))
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
