"""Multi-process tests on the CPU: torch.multiprocessing over gloo, tiny shapes.

``spawn(fn, world, *args)`` runs ``fn(rank, world, *args)`` in ``world`` processes joined in one
gloo process group; an exception in any rank fails the calling test with that rank's traceback.
The ranks are forked (no process group, no CUDA in the parent), so they start with torch and the
modules under test imported: a spawned rank spends seconds importing them again.
The workers of the parallel executors' tests live here (spawned functions must be importable).
"""

from __future__ import annotations

import copy
import os
import socket
from typing import Any, NamedTuple

import torch
import torch._dynamo  # noqa: F401  fully_shard imports it on first use: once here, not per rank
import torch.distributed as dist
import torch.distributed.fsdp  # noqa: F401
import torch.multiprocessing as mp

import validate.model  # noqa: F401

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# per dtype: (atol, rtol) of the parallel run against one process (fp32: summation order only)
TOL = {"fp32": (2e-5, 1e-4), "bf16": (3e-2, 3e-2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, fn: Any, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn: Any, world: int, *args: Any) -> None:
    mp.start_processes(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True,
                       start_method="fork")


def tiny_layer_spec(preset: str = "llama-3.2-1b", **over: Any):
    from simulator.model import ModelSpec, get_model

    base = get_model(preset).model_dump()
    shape = {"hidden_size": 64, "intermediate_size": 96, "num_heads": 4, "num_kv_heads": 2,
             "head_dim": 16, "vocab_size": 128, "num_layers": 1}
    return ModelSpec.model_validate({**base, **shape, **over})


def close(a: torch.Tensor, b: torch.Tensor, dtype: str, what: str) -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _reference(layer, x, rope, w):
    """One process: a copy of the layer on the whole sequence; its output, the input's gradient
    and the copy (its parameters hold their gradients)."""
    ref = copy.deepcopy(layer)
    xr = x.detach().clone().requires_grad_(True)
    out = ref(xr, rope)
    (out.float() * w).sum().backward()
    return out.detach(), xr.grad, ref


class LayerCase(NamedTuple):
    """One dtype's inputs of a parallel-layer test and the one-process answers to compare with."""

    layer: Any  # the seeded decoder layer (seed 3), whole: the parallel run shards it
    x: torch.Tensor  # [B=2, T, h] input
    w: torch.Tensor  # [B=2, T, h] fp32 weights of the loss sum(out * w)
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin tables for T positions
    out_ref: torch.Tensor  # the reference's output
    gx_ref: torch.Tensor  # the reference's input gradient
    ref: Any  # the reference copy of the layer (its parameters hold their gradients)


def layer_case(spec: Any, name: str, seq_len: int) -> LayerCase:
    """The layer, inputs (generator seed 5) and `_reference` answers of a ``name``-dtype case."""
    from validate.model import build_model, rope_tables

    dtype = DTYPES[name]
    layer = build_model(spec, dtype=dtype, seed=3).layers[0]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, seq_len, spec.hidden_size, generator=gen).to(dtype)
    w = torch.randn(2, seq_len, spec.hidden_size, generator=gen)
    rope = rope_tables(seq_len, spec.head_dim, device="cpu", dtype=dtype)
    return LayerCase(layer, x, w, rope, *_reference(layer, x, rope, w))


# ---- context parallel (validate.context_parallel) --------------------------------------------
def cp_worker(rank: int, world: int, dtypes: list[str], seq_len: int) -> None:
    from validate.context_parallel import cp_layer_forward, zigzag_shard

    spec = tiny_layer_spec()
    for name in dtypes:
        layer, x, w, rope, out_ref, gx_ref, ref = layer_case(spec, name, seq_len)
        gp_ref = {n: p.grad for n, p in ref.named_parameters()}

        def shard(t, dim=1):
            return zigzag_shard(t, dim=dim, cp=world, rank=rank)

        xs = shard(x).requires_grad_(True)
        out = cp_layer_forward(layer, xs, (shard(rope[0], 0), shard(rope[1], 0)))
        (out.float() * shard(w)).sum().backward()
        close(out, shard(out_ref), name, f"cp{world} {name} output")
        close(xs.grad, shard(gx_ref), name, f"cp{world} {name} input grad")
        for n, p in layer.named_parameters():
            g = p.grad.float()
            dist.all_reduce(g)  # each rank holds its rows' share of a weight's gradient
            close(g, gp_ref[n], name, f"cp{world} {name} grad {n}")


# ---- tensor + sequence parallel (validate.tensor_parallel) -----------------------------------
def tp_worker(rank: int, world: int, dtypes: list[str], seq_len: int, over: dict) -> None:
    from validate.tensor_parallel import TensorParallelLayer, seq_shard

    spec = tiny_layer_spec(**over)
    for name in dtypes:
        layer, x, w, rope, out_ref, gx_ref, ref = layer_case(spec, name, seq_len)

        tpl = TensorParallelLayer(layer)
        xs = seq_shard(x, dim=1, tp=world, rank=rank).detach().requires_grad_(True)
        out = tpl(xs, rope)
        (out.float() * seq_shard(w, dim=1, tp=world, rank=rank)).sum().backward()
        tpl.allreduce_replicated_grads()
        close(out, seq_shard(out_ref, dim=1, tp=world, rank=rank), name, f"tp{world} {name} output")
        close(xs.grad, seq_shard(gx_ref, dim=1, tp=world, rank=rank), name, f"tp{world} {name} input grad")
        for n, p in tpl.weights.items():
            want = TensorParallelLayer.weight_slice(ref, n, rank, world, grad=True)
            close(p.grad, want, name, f"tp{world} {name} grad {n}")
        from validate.tensor_parallel import COLUMN, _linear_parts

        ref_grads = _linear_parts(ref, grads=True)
        for n, p in tpl.biases.items():
            g = ref_grads[n][1]
            assert g is not None, n
            want = g.chunk(world)[rank] if n in COLUMN else g
            close(p.grad, want, name, f"tp{world} {name} bias grad {n}")
        for mod in ("input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"):
            if hasattr(layer, mod):  # replicated: partial sums completed over the group
                close(getattr(layer, mod).weight.grad, getattr(ref, mod).weight.grad, name,
                      f"tp{world} {name} {mod} grad")


# ---- FSDP2 (validate.fsdp) -------------------------------------------------------------------
def fsdp_worker(rank: int, world: int, dtypes: list[str], seq_len: int) -> None:
    from validate.fsdp import shard_decoder
    from validate.model import build_model, make_batch

    spec = tiny_layer_spec(num_layers=2)
    for name in dtypes:
        dtype = DTYPES[name]
        batch = make_batch(spec, seq_len=seq_len, batch=world, seed=9)  # one row per rank
        ref = build_model(spec, dtype=dtype, seed=3)
        losses = [ref(batch[i:i + 1]) for i in range(world)]
        (sum(losses) / world).backward()
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
        ref_opt.step()

        model = build_model(spec, dtype=dtype, seed=3)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        shard_decoder(model, device_type="cpu")
        loss = model(batch[rank:rank + 1])
        close(loss.detach(), losses[rank].detach(), name, f"fsdp{world} {name} loss")
        loss.backward()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for n, p in model.named_parameters():
            assert p.grad is not None and p.to_local().shape[0] <= -(-start[n].shape[0] // world), n
        ref_grads = {n: p.grad for n, p in ref.named_parameters()}
        for n, p in model.named_parameters():
            close(p.grad.full_tensor(), ref_grads[n], name, f"fsdp{world} {name} grad {n}")
        opt.step()
        ref_params = dict(ref.named_parameters())
        for n, p in model.named_parameters():
            close(p.detach().full_tensor(), ref_params[n].detach(), name, f"fsdp{world} {name} step {n}")
