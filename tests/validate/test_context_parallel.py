"""Ring attention over the zigzag split (validate.context_parallel) against one process."""

import pytest
import torch
import torch.nn.functional as F
from dist_support import cp_worker, spawn

from validate.context_parallel import _pairs, block_bwd, block_fwd, zigzag_positions


def test_zigzag_positions_by_hand():
    assert zigzag_positions(8, 2, 0).tolist() == [0, 1, 6, 7]
    assert zigzag_positions(8, 2, 1).tolist() == [2, 3, 4, 5]
    allpos = torch.cat([zigzag_positions(16, 4, r) for r in range(4)])
    assert sorted(allpos.tolist()) == list(range(16))
    with pytest.raises(ValueError, match="divisible"):
        zigzag_positions(10, 4, 0)


def test_every_rank_does_the_same_causal_work():
    """Chunk pairs per rank over a whole ring: 3 at the rank's own step, 2 at every other; every
    (query chunk, key chunk) pair below the diagonal is computed exactly once."""
    for cp in (2, 4):
        seen = set()
        for r in range(cp):
            per = [len(_pairs(r, (r - s) % cp)) for s in range(cp)]
            assert per == [3] + [2] * (cp - 1)
            chunks = (r, 2 * cp - 1 - r)
            for s in range(cp):
                j = (r - s) % cp
                for i, m, causal in _pairs(r, j):
                    qi, km = chunks[i], (j, 2 * cp - 1 - j)[m]
                    assert km <= qi and causal == (km == qi)
                    seen.add((qi, km))
        assert seen == {(i, m) for i in range(2 * cp) for m in range(i + 1)}


@pytest.mark.parametrize("causal", [False, True])
def test_block_kernel_and_its_backward_match_autograd(causal):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=gen, requires_grad=True) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out, lse, meta = block_fwd(q, k, v, causal=causal)
    assert meta is None
    torch.testing.assert_close(out, ref)
    dout = torch.randn(ref.shape, generator=gen)
    ref.backward(dout)
    dq, dk, dv = block_bwd(dout, q.detach(), k.detach(), v.detach(), out, lse, causal=causal, meta=None)
    for got, t in ((dq, q), (dk, k), (dv, v)):
        torch.testing.assert_close(got, t.grad)


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_layer_equals_one_process(world):
    """The decoder layer on each rank's zigzag rows, attention through the ring: output, input
    gradient and (summed over ranks) parameter gradients equal the one-process run, fp32 and bf16."""
    spawn(cp_worker, world, ["fp32", "bf16"], 16)
