"""FSDP2 of the whole small decoder (validate.fsdp) on gloo against one process."""

import pytest
from dist_support import fsdp_worker, spawn


@pytest.mark.parametrize("world", [2, 4])
def test_fsdp2_step_equals_one_process(world):
    """Each layer and the root fully_shard-ed over the ranks, one micro-batch row per rank: the
    loss, every parameter's gradient (averaged by FSDP's reduce-scatter) and the parameters
    after one AdamW step equal one process running the rows as one batch, fp32 and bf16."""
    spawn(fsdp_worker, world, ["fp32", "bf16"], 16)
