"""Tensor + sequence parallelism of the decoder layer (validate.tensor_parallel) against one process."""

import pytest
from dist_support import spawn, tp_worker


@pytest.mark.parametrize("world,over", [
    (2, {}),
    (4, {"num_heads": 8, "num_kv_heads": 4, "head_dim": 8}),
    (2, {"preset": "qwen2-7b", "sliding_window": None}),  # q/k/v biases
    (2, {"preset": "qwen3-8b"}),  # per-head q/k norms
    (2, {"preset": "probe-llama7b-stack"}),  # the probe form: fused q/k/v and gate/up, nn.RMSNorm
])
def test_tp_sp_layer_equals_one_process(world, over):
    """Column/row-parallel projections, all-gather / reduce-scatter along the sequence: each
    rank's output rows, input gradient and weight-slice gradients equal the one-process layer's,
    fp32 and bf16 (GQA: 2 query heads per kv head; Qwen2's biases, Qwen3's q/k norms)."""
    spawn(tp_worker, world, ["fp32", "bf16"], 16, over)
