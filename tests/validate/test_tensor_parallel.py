"""Tensor + sequence parallelism of the decoder layer (validate.tensor_parallel) against one process."""

import pytest
from dist_support import spawn, tp_worker


@pytest.mark.parametrize("world,over", [(2, {}), (4, {"num_heads": 8, "num_kv_heads": 4, "head_dim": 8})])
def test_tp_sp_layer_equals_one_process(world, over):
    """Column/row-parallel projections, all-gather / reduce-scatter along the sequence: each
    rank's output rows, input gradient and weight-slice gradients equal the one-process layer's,
    fp32 and bf16 (GQA: 2 query heads per kv head)."""
    spawn(tp_worker, world, ["fp32", "bf16"], 16, over)
