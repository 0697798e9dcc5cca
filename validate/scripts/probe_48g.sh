#!/usr/bin/env bash
# The 48 GiB cells at 64K and 128K, and why plans that fit by allocated bytes ran out of
# memory there: allocator traces, capped runs with and without expandable segments, the
# executor with and without its arena, kernel profiles. Part A or B (each under 10 minutes).
# Run (GPU, repo root): OUT=dir bash validate/scripts/probe_48g.sh A|B
set -u
B=validate/plans/bench
T=validate/plans/probe48
O=${OUT:-out}
RP="python3 validate/run_plan.py"
case "${1:-A}" in
A)
  # allocator history of whole cases, uncapped (a capped run stops at the first failure)
  $RP --plan $B/probe8-64k-48g-mip.json $B/probe8-128k-full-full_recompute.json $T/t-128k-mip-b43.json \
      --out "$O/trace" --warmup 1 --repeats 1 --memory-trace --no-cap
  # candidates under the 48 GiB cap, default allocator, then expandable segments
  $RP --plan $T/t-64k-mip-b44.json $T/t-64k-mip-b40.json $T/t-128k-mip-b47.json $T/t-128k-mip-b41.json \
      --out "$O/cap48" --warmup 1 --repeats 2
  $RP --plan $B/probe8-64k-48g-mip.json $T/t-128k-mip-b47.json $T/t-128k-mip-b43.json \
      --out "$O/cap48-exp" --warmup 1 --repeats 2 --expandable-segments
  ;;
B)
  # the executor's buffers with and without the arena
  $RP --plan $B/probe8-64k-48g-memo.json $B/probe8-32k-48g-memo.json --out "$O/noarena" --warmup 2 --repeats 3
  $RP --plan $B/probe8-64k-48g-memo.json $B/probe8-32k-48g-memo.json --out "$O/arena" --warmup 2 --repeats 3 --arena
  # where a step's time goes, kernel by kernel
  $RP --plan $B/probe8-32k-full-none.json $B/probe8-32k-full-full_recompute.json \
      --out "$O/prof" --warmup 1 --repeats 1 --kernel-profile
  python3 validate/bench.py run --plans $B --out "$O/bench-f" --lengths 128K --budgets 48GiB \
      --modes checkpoint --no-ideal
  ;;
esac
