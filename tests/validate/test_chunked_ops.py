"""The chunked LM head + loss and the tiled MLP (validate.chunked_ops) against the plain ops on
the CPU: the loss and every gradient equal the unchunked Hugging Face-style ones within bf16
rounding (tolerances below), the loss value exactly in fp32."""

import pytest
import torch
import torch.nn.functional as F

from simulator.model import ModelSpec, get_model
from validate.chunked_ops import ChunkedLinearCrossEntropy, TiledMLP, chunk_bounds, shifted_labels
from validate.model import build_model, make_batch
from validate.run_plan import SMOKE_SHAPE

BF16_REL = 2.0**-7  # bf16 has 8 significant bits: one rounding of a value is within 2^-8 of it


def close(a: torch.Tensor, b: torch.Tensor, ulps: float = 2.0) -> None:
    """|a - b| <= ulps x 2^-7 x max|b| elementwise (a bf16 sum reordered rounds within that)."""
    tol = ulps * BF16_REL * float(b.float().abs().max())
    diff = float((a.float() - b.float()).abs().max())
    assert diff <= tol, (diff, tol)


def test_chunk_bounds_cover_every_row_once():
    assert chunk_bounds(10, 3) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(2, 5) == [(0, 1), (1, 2)]
    assert shifted_labels(torch.tensor([[5, 6, 7]])).tolist() == [[6, 7, -100]]


@pytest.mark.parametrize("num_chunks", [1, 3, 7])
def test_chunked_cross_entropy_equals_hf_loss(num_chunks):
    gen = torch.Generator().manual_seed(0)
    B, T, h, V = 2, 13, 32, 101
    x = torch.randn(B, T, h, generator=gen).bfloat16().requires_grad_(True)
    w = (0.1 * torch.randn(V, h, generator=gen)).bfloat16().requires_grad_(True)
    ids = torch.randint(0, V, (B, T), generator=gen)
    # Hugging Face: bf16 logits, upcast, shifted labels, mean over the labelled tokens
    logits = F.linear(x, w).float()
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    ref.backward()
    rx, rw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    got = ChunkedLinearCrossEntropy.apply(x, w, shifted_labels(ids), num_chunks)
    (2.0 * got).backward()  # the incoming gradient scales both gradients
    assert abs(float(got.detach()) - float(ref.detach())) <= 1e-6 * abs(float(ref.detach()))
    close(x.grad, 2.0 * rx)
    close(w.grad, 2.0 * rw)
    assert torch.count_nonzero(x.grad[:, -1]) == 0  # the last position predicts nothing


def tiny(layers: int = 2) -> ModelSpec:
    s = get_model("llama-3.2-1b")
    return ModelSpec.model_validate({**s.model_dump(), **SMOKE_SHAPE, "num_layers": layers, "num_kv_heads": 2})


def test_decoder_loss_with_a_chunked_head_equals_the_whole_head():
    spec = tiny()
    out = []
    for chunks in (1, 4):
        model = build_model(spec, seed=3)
        model.lm_head_chunks = chunks
        batch = make_batch(spec, seq_len=24, seed=4)
        loss = model(batch)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l1, g1), (l4, g4) = out
    assert abs(float(l1) - float(l4)) <= 1e-6 * float(l1)
    for a, b in zip(g4, g1, strict=True):
        close(a, b, ulps=4.0)  # a bf16 gradient passed through the stack: a few roundings


@pytest.mark.parametrize("recompute_act", [False, True])
def test_tiled_mlp_gradients_equal_the_plain_mlp(recompute_act):
    spec = tiny(layers=1)
    res = []
    for chunks in (1, 3):
        model = build_model(spec, seed=5)
        layer = model.layers[0]
        layer.mlp_chunks = chunks
        layer.recompute_mlp_act = recompute_act
        gen = torch.Generator().manual_seed(6)
        x = torch.randn(2, 20, spec.hidden_size, generator=gen).bfloat16().requires_grad_(True)
        y = layer(x)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        res.append((y.detach(), x.grad.clone(), [p.grad.clone() for p in layer.parameters()]))
    (y1, dx1, g1), (y3, dx3, g3) = res
    assert torch.equal(y1, y3)  # the chunks' rows are computed by the same per-token kernels
    close(dx3, dx1)
    for a, b in zip(g3, g1, strict=True):
        close(a, b)


def test_tiled_mlp_fires_a_parameter_hook_once():
    w = torch.randn(4, 4, requires_grad=True)
    calls = []
    w.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    x = torch.randn(1, 6, 4, requires_grad=True)
    TiledMLP.apply(lambda t: t @ w, 3, x, w).sum().backward()
    assert calls == [1]
    assert torch.allclose(w.grad, x.detach().reshape(-1, 4).t() @ torch.ones(6, 4))
