"""validate.kv_quant: KIVI quantize / dequantize on the CPU (the torch path; the Triton kernel is
checked against it on the GPU by validate/scripts/kv_quant_check.py): round-trip error bounds,
int4 packing, the store's rows and bytes against kernels.quant.kivi_layout."""

import pytest
import torch

from hwmodels.units import UserInputError
from kernels.quant import kivi_layout
from validate import kv_quant as kq

B, N, K, D, G = 2, 256, 4, 128, 128


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, K, D, generator=g), torch.randn(B, N, K, D, generator=g)


def _bound(x, lo, hi, scale):
    """Per element: half a quantization step, plus the bf16 rounding of the zero point (up to 2^-9
    of |min|) and of the scale (up to 2^-9 of the range at the top code)."""
    return 0.5 * scale + 2.0**-8 * (lo.abs() + (hi - lo)) + 1e-6


@pytest.mark.parametrize("fmt,max_rel", [("int8", 0.01), ("int4", 0.12)])
def test_round_trip_error_is_bounded(fmt, max_rel):
    k, v = _data()
    codes, meta = kq.quantize_keys(k, kv_dtype=fmt, group_size=G)
    assert codes.dtype == torch.uint8 and codes.shape == (B, N, K, D * kq.BITS[fmt] // 8)
    assert meta.shape == (B, N // G, K, D, 2) and meta.dtype == torch.bfloat16
    k2 = kq.dequantize_keys(codes, meta, kv_dtype=fmt, group_size=G, dtype=torch.float32)
    kg = k.view(B, N // G, G, K, D)
    bound = _bound(kg, kg.amin(2, keepdim=True), kg.amax(2, keepdim=True), meta[..., 0].float()[:, :, None])
    assert ((k2.view_as(kg) - kg).abs() <= bound).all()
    assert float((k2 - k).norm() / k.norm()) < max_rel
    vc, vm = kq.quantize_values(v, kv_dtype=fmt, group_size=G)
    assert vm.shape == (B, N, K, D // G, 2)
    v2 = kq.dequantize_values(vc, vm, kv_dtype=fmt, group_size=G, dtype=torch.float32)
    vg = v.view(B, N, K, D // G, G)
    bound = _bound(vg, vg.amin(-1, keepdim=True), vg.amax(-1, keepdim=True), vm[..., 0].float()[..., None])
    assert ((v2.view_as(vg) - vg).abs() <= bound).all()
    assert float((v2 - v).norm() / v.norm()) < max_rel


def test_int4_packs_two_codes_per_byte_exactly():
    codes = torch.arange(16, dtype=torch.uint8).repeat(4).view(1, 2, 2, 16)
    packed = kq._pack(codes, 4)
    assert packed.shape == (1, 2, 2, 8) and int(packed[0, 0, 0, 0]) == 0 | (1 << 4)
    assert torch.equal(kq._unpack(packed, 4), codes)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_store_rows_bytes_and_dequantize_into(fmt):
    """A store of 2 groups per sequence: quantize_into / dequantize_into by chunks equal the
    whole-tensor functions; the rows of n tokens are kivi_layout's quantized bytes."""
    g, n_rows = 8, 16
    store = kq.alloc_store(lambda shape, dt: torch.zeros(shape, dtype=dt), batch=B, num_rows=n_rows,
                           num_kv_heads=K, head_dim=D, kv_dtype=fmt, group_size=g)
    k, v = (t[:, :n_rows] for t in _data(1))
    kq.quantize_into(store, k[1:], v[1:], kv_dtype=fmt, b0=1, t0=0, t1=n_rows)
    out_k, out_v = torch.zeros(B, n_rows + 3, K, D), torch.zeros(B, n_rows + 3, K, D)
    kq.dequantize_into(store, out_k, out_v, kv_dtype=fmt, b0=1, b1=2, n=n_rows)  # CPU: torch
    codes, meta = kq.quantize_keys(k[1:], kv_dtype=fmt, group_size=g)
    assert torch.equal(out_k[1:, :n_rows], kq.dequantize_keys(codes, meta, kv_dtype=fmt, group_size=g,
                                                              dtype=torch.float32))
    vc, vm = kq.quantize_values(v[1:], kv_dtype=fmt, group_size=g)
    assert torch.equal(out_v[1:, :n_rows], kq.dequantize_values(vc, vm, kv_dtype=fmt, group_size=g,
                                                                dtype=torch.float32))
    assert not out_k[0].any() and not out_k[1:, n_rows:].any()  # other sequences and rows untouched
    lay = kivi_layout(num_tokens=n_rows + 3, batch=2, num_kv_heads=K, head_dim=D, kv_dtype=fmt, group_size=g)
    assert store.nbytes(0, 2, 0, lay.num_quantized_tokens) == lay.quantized_bytes


def test_a_value_group_that_does_not_divide_the_head_dim_is_refused():
    with pytest.raises(UserInputError, match="^kv_cache.group_size: 48 channels"):
        kq.check_format("int8", head_dim=128, group_size=48)
    with pytest.raises(UserInputError, match="^kv_cache.dtype: 'fp8' is not executed"):
        kq.check_format("fp8", head_dim=128, group_size=None)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_triton_kernel_equals_torch_under_the_interpreter(fmt, monkeypatch):
    """Where triton is installed without a GPU: the kernel run by triton's interpreter gives the
    torch path's fp32 values bitwise (sequences [1, 2) only, rows of 3 groups of 8). Skipped
    where triton is absent (CI); on the GPU validate/scripts/kv_quant_check.py checks it."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the GPU check is validate/scripts/kv_quant_check.py")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(kq, "_TRITON", {})
    g, rows = 8, 24
    store = kq.alloc_store(lambda shape, dt: torch.zeros(shape, dtype=dt), batch=B, num_rows=rows, num_kv_heads=K,
                           head_dim=16, kv_dtype=fmt, group_size=g)
    k, v = (torch.randn(B, rows, K, 16, generator=torch.Generator().manual_seed(s)) for s in (2, 3))
    kq.quantize_into(store, k, v, kv_dtype=fmt, b0=0, t0=0, t1=rows)
    ref = [torch.zeros(B, rows + 2, K, 16) for _ in range(2)]
    tri = [torch.zeros(B, rows + 2, K, 16) for _ in range(2)]
    kq.dequantize_into(store, *ref, kv_dtype=fmt, b0=1, b1=2, n=rows, use_triton=False)
    kq.dequantize_into(store, *tri, kv_dtype=fmt, b0=1, b1=2, n=rows, use_triton=True)
    assert torch.equal(ref[0], tri[0]) and torch.equal(ref[1], tri[1]) and ref[0][1].abs().sum() > 0
