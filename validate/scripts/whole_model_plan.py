"""A whole-model training plan of a few Llama-3.1-8B layers that uses every model-state
mechanism the executor runs, for ``tierplan validate plan`` on one GPU.

Models: nothing; it writes a plan (``planners.plan.Plan``, made here by rule, not by a planner,
and not replayed: it carries no prediction). Llama-3.1-8B (vocab 128256, untied head) with
``--layers`` decoder layers (4 by default), one sequence of ``--seq-len`` tokens, AdamW with fp32
master weights; per layer, in turn (layer i takes row i mod 4):
  0. parameters streamed from the host (one layer ahead), gradients to the host, the CPU AdamW
     step, moments and master weights in host memory, the MLP in 4 token chunks;
  1. the same with the moments in a file on NVMe (O_DIRECT);
  2. parameters resident, gradients to the host, the CPU step (moments on the host), the whole
     layer checkpointed;
  3. everything resident, stepped on the GPU, the MLP hidden tensors half offloaded.
The LM head + loss run in ``--lm-head-chunks`` token chunks (8). The node embedded is
``1xH200-tiered`` (the H200 with an NVMe drive, so that a tier ``nvme`` exists in the plan);
the GPU that runs it needs none of it.
Run on the GPU machine (about 2 minutes on the H200, most of it the CPU steps and the disk):
    python3 validate/scripts/whole_model_plan.py --out $OUT/whole-8b-4l.json
    python3 -m tierplan.cli validate plan $OUT/whole-8b-4l.json --out $OUT/whole-8b-4l \\
        --warmup 1 --repeats 2 --state-dir $OUT/states --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from hwmodels.catalog import load_node  # noqa: E402
from hwmodels.units import GiB  # noqa: E402
from planners.plan import (  # noqa: E402
    LayerPlan,
    ModelStatePlacement,
    Plan,
    Provenance,
    RoleAction,
    tierplan_version,
)
from simulator.job import TrainJob  # noqa: E402
from simulator.model import get_model  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402

GPU_BUDGET_BYTES = 120 * GiB


def layer_plan(i: int) -> LayerPlan:
    streamed = dict(params="host", params_prefetch_layers=1, grads="host", optimizer_step="cpu")
    row = i % 4
    if row == 0:
        ms = ModelStatePlacement(**streamed, optimizer_states="host", master_weights="host")
        return LayerPlan(layer=i, model_states=ms, mlp_chunks=4)
    if row == 1:
        ms = ModelStatePlacement(**streamed, optimizer_states="nvme", master_weights="host")
        return LayerPlan(layer=i, model_states=ms, mlp_chunks=4)
    if row == 2:
        ms = ModelStatePlacement(grads="host", optimizer_states="host", master_weights="host", optimizer_step="cpu")
        return LayerPlan(layer=i, model_states=ms, checkpoint="full", mlp_chunks=4)
    half = RoleAction(action="offload", alpha_frac=0.5, keep_frac=0.5)
    return LayerPlan(layer=i, roles={"mlp_hidden": half}, mlp_chunks=4)  # the replay takes one count


def whole_model_plan(*, num_layers: int, seq_len: int, lm_head_chunks: int) -> Plan:
    model = get_model("llama-3.1-8b").with_layers(num_layers)
    job = TrainJob(seq_len=seq_len, optimizer="adamw", master_weights=True)
    scenario = Scenario.build(model, job, load_node("1xH200-tiered"), gpu_budget_bytes=GPU_BUDGET_BYTES)
    return Plan.for_scenario(scenario, layers=[layer_plan(i) for i in range(num_layers)],
                             lm_head_chunks=lm_head_chunks,
                             provenance=Provenance(tierplan_version=tierplan_version(), planner="rule:whole-model"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="plan JSON to write")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--lm-head-chunks", type=int, default=8)
    args = ap.parse_args(argv)
    plan = whole_model_plan(num_layers=args.layers, seq_len=args.seq_len, lm_head_chunks=args.lm_head_chunks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(plan.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
