#!/usr/bin/env bash
# In-step kernel and aten-op times of the benchmark's stack (no checkpointing 16K-64K, the
# 6-layer 128K and 2-layer 256K ideals, checkpoint at 128K), one profiled step each after the
# timed ones, for hwmodels.calibrate's in-step records. Writes $OUT/kernels.tar.gz.
# Run (GPU, repo root): OUT=dir bash validate/scripts/kernel_profiles.sh
set -u
B=validate/plans/bench
O=${OUT:-out}
python3 validate/run_plan.py --plan $B/probe8-16k-full-none.json $B/probe8-32k-full-none.json \
    $B/probe8-64k-full-none.json $B/probe6-128k-full-none.json $B/probe2-256k-full-none.json \
    $B/probe8-128k-full-full_recompute.json --out "$O/prof" --warmup 1 --repeats 1 --kernel-profile
tar -C "$O" -czf "$O/kernels.tar.gz" prof && rm -rf "$O/prof"
