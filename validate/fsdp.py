"""FSDP2 (``torch.distributed.fsdp.fully_shard``) of validate.model's whole decoder.

Models: ZeRO-3 data parallelism as torch ships it: each decoder layer is one FSDP unit (its
parameters sharded over the data-parallel ranks along dim 0 as DTensors, all-gathered before the
layer's forward and again before its backward, gradients reduce-scattered after it), the root
(embedding, final norm, LM head) one more; every rank runs its own micro-batch and the gradients
are averaged over the ranks (FSDP's default reduction), so the sharded step equals one process
running the ranks' micro-batches as one batch with the losses averaged.
Assumes: torch >= 2.6 (``torch.distributed.fsdp.fully_shard``); a 1-D device mesh over the
default process group (``DeviceMesh.from_group``: no new group; "cpu" with gloo for the tests,
"cuda" with NCCL on GPUs).
Ignores: mixed-precision policies and CPU offload (the FSDP defaults: parameters and reduction in
the model dtype, no offload), hybrid sharding.
Source: PyTorch FSDP2 (torch.distributed.fsdp.fully_shard) documentation; torchtitan's
per-block sharding.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from validate.model import Decoder


def shard_decoder(model: Decoder, *, device_type: str, reshard_after_forward: bool = True) -> Any:
    """``model`` sharded in place over every rank of the default group; returns the mesh."""
    from torch.distributed.fsdp import fully_shard

    world = dist.group.WORLD
    assert world is not None, "torch.distributed is not initialized"
    mesh = DeviceMesh.from_group(world, device_type)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return mesh
