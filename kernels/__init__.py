"""tierplan kernels: pure per-operator cost functions (FLOPs, HBM bytes, SRAM tiling).

Every function takes shapes (keyword-only) and returns a `KernelCost` (or a small named tuple of
them where an operator is several kernels); `kernel_time_s(cost, node)` turns one into seconds
through the roofline in ``hwmodels.compute``. These functions are the single source of operator
FLOPs and bytes for the simulator and the planners.

- cost.py: KernelCost, combine, dtype sizes, kernel_time_s / kernel_timing
- gemm.py: gemm_cost, linear_fwd_cost, linear_bwd_costs
- attention.py: FlashAttention tiling, forward / backward, model-FLOP conventions, flash-decoding
- elementwise.py: elementwise, RMSNorm, LayerNorm, rotary, SiLU*mul (SwiGLU), GELU, embedding
- lm_head.py: LM head GEMM + fp32 upcast + cross-entropy, with the [T, V] tensor sizes
- quant.py: KV-cache quantize / dequantize and quantized KV bytes
- microbench.py: GPU microbenchmarks that measure these operators (torch only)
"""

from kernels.attention import (
    DEFAULT_SRAM_BYTES,
    AttentionBwdCosts,
    DecodeAttentionCosts,
    FlashTiling,
    attention_bwd_cost,
    attention_bwd_flops,
    attention_fwd_cost,
    attention_fwd_flops,
    decode_attention_cost,
    flash_attention_tiling,
)
from kernels.cost import (
    MATMUL_OP_CLASSES,
    OP_CLASSES,
    FwdBwd,
    KernelCost,
    KernelTiming,
    combine,
    dtype_bits,
    kernel_time_s,
    kernel_timing,
    tensor_bytes,
)
from kernels.elementwise import (
    elementwise_cost,
    embedding_cost,
    gelu_cost,
    layernorm_cost,
    rmsnorm_cost,
    rotary_cost,
    silu_mul_cost,
    swiglu_cost,
)
from kernels.gemm import LinearBwdCosts, gemm_cost, linear_bwd_costs, linear_fwd_cost
from kernels.lm_head import LmHeadLossCosts, lm_head_loss_cost
from kernels.quant import kv_dequantize_cost, kv_quantize_cost, kv_quantized_bytes

__all__ = [
    "DEFAULT_SRAM_BYTES",
    "MATMUL_OP_CLASSES",
    "OP_CLASSES",
    "AttentionBwdCosts",
    "DecodeAttentionCosts",
    "FlashTiling",
    "FwdBwd",
    "KernelCost",
    "KernelTiming",
    "LinearBwdCosts",
    "LmHeadLossCosts",
    "attention_bwd_cost",
    "attention_bwd_flops",
    "attention_fwd_cost",
    "attention_fwd_flops",
    "combine",
    "decode_attention_cost",
    "dtype_bits",
    "elementwise_cost",
    "embedding_cost",
    "flash_attention_tiling",
    "gelu_cost",
    "gemm_cost",
    "kernel_time_s",
    "kernel_timing",
    "kv_dequantize_cost",
    "kv_quantize_cost",
    "kv_quantized_bytes",
    "layernorm_cost",
    "linear_bwd_costs",
    "linear_fwd_cost",
    "lm_head_loss_cost",
    "rmsnorm_cost",
    "rotary_cost",
    "silu_mul_cost",
    "swiglu_cost",
    "tensor_bytes",
]
