"""GEMM and Linear costs, checked by hand."""

from kernels.gemm import gemm_cost, linear_bwd_costs, linear_fwd_cost


def test_gemm_hand_counts():
    c = gemm_cost(m=2, n=3, k=4)
    assert c.flops == 2 * 2 * 3 * 4 == 48
    assert c.hbm_read_bytes == (2 * 4 + 4 * 3) * 2 == 40
    assert c.hbm_write_bytes == 2 * 3 * 2 == 12
    assert (c.op_class, c.dtype) == ("gemm", "bf16")
    wide = gemm_cost(m=2, n=3, k=4, out_dtype="fp32", batch=3)
    assert wide.flops == 3 * 48
    assert wide.hbm_read_bytes == 3 * 40 and wide.hbm_write_bytes == 3 * 24
    assert gemm_cost(m=2, n=3, k=4, dtype="fp8").hbm_read_bytes == 20


def test_linear_forward_is_one_gemm_plus_bias_read():
    f = linear_fwd_cost(num_tokens=8, in_features=4, out_features=6)
    assert f.flops == 2 * 8 * 4 * 6
    assert f.hbm_read_bytes == (8 * 4 + 4 * 6) * 2 and f.hbm_write_bytes == 8 * 6 * 2
    fb = linear_fwd_cost(num_tokens=8, in_features=4, out_features=6, bias=True)
    assert fb.flops == f.flops and fb.hbm_read_bytes == f.hbm_read_bytes + 6 * 2


def test_linear_backward_two_gemms_each_equal_to_forward_flops():
    f = linear_fwd_cost(num_tokens=8, in_features=4, out_features=6)
    b = linear_bwd_costs(num_tokens=8, in_features=4, out_features=6)
    assert b.input_grad.flops == b.weight_grad.flops == f.flops
    # dX[8,4] = dY[8,6] @ W[6,4]
    assert b.input_grad.hbm_read_bytes == (8 * 6 + 6 * 4) * 2
    assert b.input_grad.hbm_write_bytes == 8 * 4 * 2
    # dW[6,4] = dY^T[6,8] @ X[8,4]
    assert b.weight_grad.hbm_read_bytes == (6 * 8 + 8 * 4) * 2
    assert b.weight_grad.hbm_write_bytes == 6 * 4 * 2


def test_linear_backward_options():
    b = linear_bwd_costs(
        num_tokens=8,
        in_features=4,
        out_features=6,
        grad_dtype="fp32",
        accumulate_grad=True,
        bias=True,
        input_requires_grad=False,
    )
    assert b.input_grad is None
    # fp32 dW written, old dW and db read for accumulation, db written
    assert b.weight_grad.hbm_write_bytes == 6 * 4 * 4 + 6 * 4
    assert b.weight_grad.hbm_read_bytes == (6 * 8 + 8 * 4) * 2 + 6 * 4 * 4 + 6 * 4
