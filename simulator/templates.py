"""Analytical workload templates: one training step of a decoder LLM, op by op.

Models: the forward program PyTorch eager runs for the supported families, at the granularity
of the tensors that matter for memory (every activation of size tokens x hidden or larger, every
saved tensor, every transient that PyTorch allocates through the caching allocator), with the
FLOPs and HBM bytes of each kernel from ``kernels``. ``simulator.autograd_model`` derives the
backward pass, activation checkpointing and the alloc/free sequence.
Implementations modelled (they differ in what they save, and that is most of the memory):
  * Hugging Face Llama / Mistral / Qwen2 / Qwen3 (``modeling_llama.py`` and its copies):
    RMSNorm upcasts to fp32 in Python (saves the fp32 input and the bf16 normalized tensor),
    separate q/k/v and gate/up projections, rotary via ``rotate_half`` (saves only cos/sin),
    SDPA dispatching to FlashAttention-2 (GQA with ``enable_gqa``), the loss upcasts logits to
    fp32 and runs log_softmax + nll_loss; the model's output object, and with it the bf16
    logits, dies when the forward returns (``loss = model(...).loss``, the job's
    ``model_output="freed"``) or is held by the caller through backward and the optimizer step
    (``out = model(...); out.loss.backward()``, ``"kept"``).
  * A bare stack of decoder layers (``has_embedding = has_lm_head = False``) with ``nn.RMSNorm``
    (``torch.rms_norm``: on CUDA the fused kernel, which saves its input and rstd), fused qkv
    and gate/up projections, no rotary, and the loss ``x.float().pow(2).mean()``; with rope
    positions (the bench's stacks) the reference decoder's (``validate.model``): its rotary
    tables and eager rotate_half op by op, and the tensors its functions hold in variables
    until they return (the norm's output in ``qkv``, q, k, v and the attention output in
    ``_attention``, the MLP's projections and silu in ``_mlp``), which matter where nothing
    saves them (inside ``torch.utils.checkpoint``).
  * GPT-2 / Megatron GPT: LayerNorm (fused, saves input, mean, rstd), GeLU MLP, learned
    positions, fused qkv; the same attention and loss paths.
Parallelism: tensor parallel shards heads, the MLP width and the vocabulary; sequence parallel
shards the norm / residual activations by tp; context parallel shards the sequence; ZeRO shards
model states across dp. Collectives are ops with their cost from ``hwmodels.collectives``.
Assumes: bf16 activations (the job's param dtype), FlashAttention-2 kernels, batch padding free.
Ignores: dropout (LLM pretraining and fine-tuning run without it), the cuBLAS workspace (a
constant handful of MiB), and CPU-side tensors.
Source: transformers 5.x modeling_llama.py / modeling_gpt2.py, integrations/sdpa_attention.py,
loss/loss_utils.py; PyTorch aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp
(backward allocates an fp32 dq accumulator, seq rounded to 128 and head_dim to 32 (hdim <= 128)
or 64, plus dk/dv expanded to all query heads under GQA); Korthikanti et al. 2022 for tp/sp.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property

from hwmodels.units import UserInputError
from kernels.attention import attention_bwd_cost, attention_fwd_cost, attention_fwd_flops
from kernels.cost import MATMUL_OP_CLASSES, KernelCost, combine
from kernels.elementwise import embedding_backward_workspace_bytes, minimal_traffic_bytes
from kernels.gemm import linear_bwd_costs, linear_fwd_cost
from kernels.quant import KIVI_KV_DTYPES
from simulator.autograd_model import (
    ZERO_COST,
    Cost,
    Derivation,
    ProgramBuilder,
    add_costs,
    with_times_s,
)
from simulator.workload import Role, Workload

FP32_BYTES = 4
INT64_BYTES = 8
FLOP_COUNTER_SDPA_BWD = 2.5
"""FlopCounterMode counts a fused SDPA backward (flash, cuDNN, memory-efficient) as 2.5x the
forward's full-square FLOPs (it recomputes the scores); the math path would count 2x."""
PHILOX_STATE_BYTES = 8
"""cuDNN / flash attention return the dropout RNG seed and offset as two int64 scalars and save
them for backward, even with dropout off."""
DP_LAST_BUCKET_FRAC = 0.05
"""Share of the data-parallel gradient reduction that backward cannot hide: the last bucket
(PyTorch DDP buckets are 25 MB; for a 7B model's 13 GB of bf16 gradients that is 0.2%, so 5%
is a deliberately cautious bound until multi-GPU runs calibrate it)."""


def effective_model_output(model, job) -> str:
    """The loop form the templates model for ``model`` under ``job``: the job's ``model_output``
    for a Hugging Face model (its forward returns the logits with the loss) and for a bare layer
    stack (``freed``: the loss is computed inside the forward, as the executor's ``Decoder``
    does, and the stack output dies with it; ``kept``: the caller holds it through backward, as
    the reference probe's ``x.float().pow(2).mean().backward()`` does), "freed" for Megatron GPT
    (its loss never returns the logits)."""
    if code_base(model) == "megatron":
        return "freed"
    return getattr(job, "model_output", "freed")


def code_base(model) -> str:
    """Which code base's ops model ``model``: "megatron" (MEMO's GPT), "hf" (transformers),
    "stack" (a bare layer stack of torch modules, as the H200 probe)."""
    if model.family == "gpt":
        return "megatron"
    return "hf" if (model.has_embedding or model.has_lm_head) else "stack"


def effective_zero_stage(zero_stage: int, dp: int) -> int:
    """The ZeRO stage a job runs: none without data parallelism to shard over."""
    return zero_stage if dp > 1 else 0


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass(frozen=True)
class Shapes:
    """Per-GPU shapes of one training step after parallel sharding."""

    batch: int
    seq_len: int  # local sequence length (after context parallel)
    hidden: int
    q_heads: int  # local query heads (after tp)
    kv_heads: int  # local kv heads (after tp; replicated when fewer than tp)
    head_dim: int
    ffn: int  # local intermediate size (after tp)
    vocab: int  # local vocabulary (after tp)
    act_bytes: int  # bytes per activation element (bf16: 2)
    norm_tokens: int  # tokens held by norm / residual activations (sequence parallel: / tp)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


def _scaled(cost: KernelCost, frac: float) -> KernelCost:
    """``frac`` of a kernel's work (a context-parallel rank's share)."""
    if frac == 1.0:
        return cost
    return KernelCost(name=cost.name, op_class=cost.op_class, flops=cost.flops * frac,
                      hbm_read_bytes=int(cost.hbm_read_bytes * frac),
                      hbm_write_bytes=int(cost.hbm_write_bytes * frac), dtype=cost.dtype)


def _with_time(cost: Cost, time_s: float) -> Cost:
    return Cost(flops=cost.flops, hbm_bytes=cost.hbm_bytes, op_class=cost.op_class,
                exec_flops=cost.exec_flops, time_s=time_s, model_flops=cost.model_flops)


def _times(cost: Cost, n: int) -> Cost:
    """``n`` runs of one kernel sequence (the chunks of a chunked op)."""
    if n == 1:
        return cost
    return Cost(flops=cost.flops * n, hbm_bytes=cost.hbm_bytes * n, op_class=cost.op_class,
                exec_flops=None if cost.exec_flops is None else cost.exec_flops * n,
                time_s=None if cost.time_s is None else cost.time_s * n,
                model_flops=None if cost.model_flops is None else cost.model_flops * n)


def _mem(name: str, *, read_bytes: int, write_bytes: int, dtype: str = "bf16") -> KernelCost:
    """A bandwidth-bound kernel described by the bytes it reads and writes."""
    return KernelCost(name=name, op_class="memory", flops=0.0, hbm_read_bytes=int(read_bytes),
                      hbm_write_bytes=int(write_bytes), dtype=dtype)


class _Timer:
    """Turns KernelCosts into autograd_model Costs, with a time when a node is given."""

    def __init__(self, node, dtype: str):
        self.node = node
        self.dtype = dtype

    def measured(self, variant: str) -> bool:
        """The node's profile holds a fit for exactly this op variant."""
        prof = getattr(self.node, "profile", None)
        return prof is not None and variant in prof.fits

    def composite_times(self, variant: str, fwd_bytes: int, fwdbwd_bytes: int) -> tuple[float, float] | None:
        """(forward, backward) time of an eager op sequence from its measured rate over minimal
        bytes (``kernels.elementwise.minimal_traffic_bytes``); None when the profile lacks it."""
        if not (self.measured(f"{variant}.fwd") and self.measured(f"{variant}.fwdbwd")):
            return None
        from hwmodels.compute import compute_time_s

        f = compute_time_s(flops=0.0, hbm_bytes=fwd_bytes, op_class=f"{variant}.fwd", dtype=self.dtype,
                           node=self.node)
        fb = compute_time_s(flops=0.0, hbm_bytes=fwdbwd_bytes, op_class=f"{variant}.fwdbwd", dtype=self.dtype,
                            node=self.node)
        return f, max(0.0, fb - f)

    def __call__(self, *costs: KernelCost | None, flop_counter_flops: float | None = None,
                 model_flops: float | None = None, variant: str | None = None,
                 time_s: float | None = None) -> Cost:
        """``variant`` refines the op class for timing (``attention_fwd.d64``); ``time_s``
        replaces the roofline time (a share of a measured composite)."""
        items = [c for c in costs if c is not None]
        if not items:
            return ZERO_COST
        if time_s is None and self.node is not None:
            from hwmodels.compute import compute_time_s
            from kernels.cost import kernel_time_s

            if variant is None:
                time_s = sum(kernel_time_s(c, self.node) for c in items)
            else:
                time_s = sum(
                    compute_time_s(flops=c.flops, hbm_bytes=c.hbm_bytes,
                                   op_class=f"{c.op_class}.{variant}" if c.op_class.startswith("attention")
                                   else c.op_class, dtype=c.dtype, node=self.node)
                    for c in items
                )
        total = items[0] if len(items) == 1 else combine(items, name=items[0].name)
        matmul = sum(c.flops for c in items if c.op_class in MATMUL_OP_CLASSES)
        counted = matmul if flop_counter_flops is None else flop_counter_flops
        return Cost(
            flops=counted,
            hbm_bytes=total.hbm_bytes,
            op_class=total.op_class,
            exec_flops=total.flops,
            time_s=time_s,
            model_flops=model_flops if model_flops is not None else matmul,
        )


class _Program:
    """Builds the forward program of one model on one GPU."""

    def __init__(self, model, job, parallel, node, *, grads_persist: bool = False,
                 inference: bool = False, seq_len: int | None = None, batch: int | None = None,
                 decode_context_len: int | None = None):
        from simulator.job import dtype_bytes

        self.m = model
        self.job = job
        self.p = parallel
        self.inference = inference
        self.decode_context_len = decode_context_len  # decode step: one query token per sequence
        self.layer_checkpointing: dict[int, str] = {}  # per-layer override of job.checkpointing
        self.lm_head_chunks = 1  # token chunks of a fused linear cross-entropy (1: HF's loss)
        self.mlp_chunks: dict[int, int] = {}  # per-layer token chunks of a tiled MLP
        self.b = ProgramBuilder(grads_persist=grads_persist, no_grad=inference)
        self.dtype = job.param_dtype
        self.cost = _Timer(node, self.dtype)
        if node is not None:  # autograd's in-place add of a second gradient contribution
            times_s: dict[int, float] = {}  # by gradient bytes: a step accumulates a few sizes many times
            timer = self.cost  # not self: the builder keeps this function, and a cycle through the
            # program would leave every evicted step of an estimator's cache to the cyclic collector

            def accumulate_time_s(n: int) -> float:
                time_s = times_s.get(n)
                if time_s is None:
                    time_s = timer(_mem("grad_accumulate", read_bytes=2 * n, write_bytes=n)).time_s
                    assert time_s is not None  # the timer has a node
                    times_s[n] = time_s
                return time_s

            self.b.accumulate_time_s = accumulate_time_s
        tp = parallel.tp if parallel is not None else 1
        cp = parallel.cp if parallel is not None else 1
        sp = bool(parallel is not None and parallel.sequence_parallel and tp > 1)
        seq_len = job.seq_len if seq_len is None else seq_len
        batch = job.micro_batch if batch is None else batch
        seq_local = seq_len // cp
        act = int(dtype_bytes(self.dtype))
        grad_dtype = getattr(job, "grad_dtype", None) or job.param_dtype
        self.s = Shapes(
            batch=batch,
            seq_len=seq_local,
            hidden=model.hidden_size,
            q_heads=model.num_heads // tp,
            kv_heads=max(1, model.num_kv_heads // tp),
            head_dim=model.head_dim,
            ffn=model.intermediate_size // tp,
            vocab=-(-model.vocab_size // tp),
            act_bytes=act,
            norm_tokens=(batch * seq_local) // (tp if sp else 1),
        )
        self.tp, self.cp, self.sp = tp, cp, sp
        self.node = node
        self.mask: int | None = None
        self.param_bytes = act  # parameters live in the param dtype
        self.grad_elem_bytes = dtype_bytes(grad_dtype)
        self.num_local_params = 0  # parameters this GPU holds (after tp, before ZeRO-3)
        self.max_param_numel = 0  # elements of the largest of them
        self.dp = parallel.dp if parallel is not None else 1
        self.zero = effective_zero_stage(parallel.zero_stage if parallel is not None else 0, self.dp)
        self.param_numel: dict[int, int] = {}  # weight tid -> its elements on this GPU
        self.state_tids: tuple[int, ...] = ()  # the optimizer's persistent states, in `optimizer_at`'s order
        self.repeat_layers = not inference  # record a layer's program once, copy it to the others (`layers`)

    def param_shard_bytes(self, numel: int, *, zero: int, dp: int) -> tuple[int, int]:
        """(weight bytes, gradient bytes) of a parameter of ``numel`` elements on this GPU under
        ZeRO stage ``zero`` over ``dp`` replicas: ZeRO-2 shards the gradient, ZeRO-3 the weight."""
        w_bytes = numel * self.param_bytes
        g_bytes = int(numel * self.grad_elem_bytes)
        if zero >= 3:
            w_bytes = -(-w_bytes // dp)
        if zero >= 2:
            g_bytes = -(-g_bytes // dp)
        return w_bytes, g_bytes

    def weight(self, name: str, numel: int, layer) -> int:
        """A parameter of ``numel`` elements on this GPU; ZeRO-2 shards its gradient and ZeRO-3
        the weight itself across data-parallel ranks (the walk counts the shard; ZeRO-3's
        gathered copies are the layer's transient all-gather buffer)."""
        self.num_local_params += numel
        self.max_param_numel = max(self.max_param_numel, numel)
        w_bytes, g_bytes = self.param_shard_bytes(numel, zero=self.zero, dp=self.dp)
        tid = self.b.param(name, w_bytes, layer, grad_bytes=g_bytes)
        self.param_numel[tid] = numel
        return tid

    @contextmanager
    def measured_group(self, variant: str, *, op: str, width: int, head_dim: int | None = None,
                       num_tokens: int | None = None):
        """Time the eager ops built inside the block as one measured composite (``variant``, e.g.
        ``memory.rmsnorm.hf_eager``): a dozen small eager kernels run far below HBM bandwidth,
        and the profile measured the sequence as a whole. The first op carries the time."""
        start = len(self.b._ops)
        yield
        if self.node is None:
            return
        tokens = self.s.norm_tokens if num_tokens is None else num_tokens
        fwd_b, fb_b = minimal_traffic_bytes(op, num_tokens=tokens, width=width, dtype=self.dtype,
                                            head_dim=head_dim)
        times = self.cost.composite_times(variant, fwd_b, fb_b)
        if times is None:
            return
        for j, fop in enumerate(self.b._ops[start:]):
            fop.cost = _with_time(fop.cost, times[0] if j == 0 else 0.0)
            fop.bwd_cost = _with_time(fop.bwd_cost, times[1] if j == 0 else 0.0)

    @property
    def attention_variant(self) -> str:
        """Which measured attention kernel: the default SDPA backend on Hopper with torch 2.11 is
        cuDNN for head_dim 128; head_dim 64 runs markedly slower and is fitted on its own."""
        return "d64" if self.s.head_dim <= 64 else "cudnn"

    # ---- communication ----------------------------------------------------------------------
    def comm_time_s(self, op: str, num_bytes: int, num_gpus: int, *, network: bool = False) -> float:
        """Time of one collective over ``num_gpus`` GPUs (``hwmodels.collectives``)."""
        if num_gpus <= 1 or self.node is None:
            return 0.0
        from hwmodels.collectives import collective_time_s

        link = gpu_link(self.node, network=network)
        return collective_time_s(op, num_bytes=num_bytes, num_gpus=num_gpus, link=link,
                                 profile=self.node.profile)

    def tp_enter(self, name: str, x: int, layer) -> tuple[int, int]:
        """Before a column-parallel block (Megatron's f). Returns (tensor the GEMMs read, tensor
        they save). Sequence parallel: all-gather the sequence shards; the GEMMs save the shard
        and gather it again in backward, whose input gradient is reduce-scattered. Plain tensor
        parallel: identity forward, all-reduce of the input gradient in backward."""
        s = self.s
        if self.tp <= 1:
            return x, x
        full = s.tokens * s.hidden * s.act_bytes
        if self.sp:
            y = self.act(f"{name}.gathered", s.tokens * s.hidden, Role.NORM_OUT, layer)
            bwd = self.comm_time_s("reduce_scatter", full, self.tp) + self.comm_time_s("all_gather", full, self.tp)
            self.b.op(f"{name}.all_gather", "all_gather", layer, inputs=[x], outputs=[y],
                      cost=Cost(op_class="comm", time_s=self.comm_time_s("all_gather", full, self.tp)),
                      bwd_cost=Cost(op_class="comm", time_s=bwd))
            return y, x
        alias = self.b.view(f"{name}.tp_f", x, s.tokens * s.hidden * s.act_bytes, Role.NORM_OUT, layer)
        self.b.op(f"{name}.tp_f", "identity", layer, inputs=[x], outputs=[alias], passthrough=[x],
                  bwd_cost=Cost(op_class="comm", time_s=self.comm_time_s("all_reduce", full, self.tp)))
        return alias, alias

    def tp_exit(self, name: str, y: int, layer) -> int:
        """After a row-parallel projection (Megatron's g): reduce-scatter to sequence shards
        (sequence parallel; all-gather in backward) or all-reduce (identity in backward)."""
        s = self.s
        if self.tp <= 1:
            return y
        full = s.tokens * s.hidden * s.act_bytes
        if self.sp:
            out = self.act(f"{name}.scattered", s.norm_tokens * s.hidden, Role.LAYER_INPUT, layer)
            self.b.op(f"{name}.reduce_scatter", "reduce_scatter", layer, inputs=[y], outputs=[out],
                      cost=Cost(op_class="comm", time_s=self.comm_time_s("reduce_scatter", full, self.tp)),
                      bwd_cost=Cost(op_class="comm", time_s=self.comm_time_s("all_gather", full, self.tp)))
            return out
        self.b.op(f"{name}.all_reduce", "all_reduce", layer, inputs=[], outputs=[], has_backward=False,
                  cost=Cost(op_class="comm", time_s=self.comm_time_s("all_reduce", full, self.tp)))
        return y

    # ---- building blocks --------------------------------------------------------------------
    def act(self, name: str, num_elems: int, role: Role, layer: int | None, elem_bytes: int | None = None) -> int:
        return self.b.tensor(name, num_elems * (elem_bytes or self.s.act_bytes), role, layer)

    def linear(self, name: str, x: int, in_f: int, out_f: int, layer, *, tokens: int, role: Role,
               bias: bool = False, weight: int | None = None, save_input: int | None = None,
               input_recompute: tuple[Cost, int] | None = None) -> int:
        """``input_recompute``: (cost, workspace bytes) of recomputing the input in backward
        instead of saving it (``silu_mul_recomputed``)."""
        b = self.b
        w = weight if weight is not None else self.weight(f"{name}.weight", in_f * out_f, layer)
        inputs = [w, x]  # mm's backward computes the weight's gradient before the input's
        if bias:
            inputs.append(self.weight(f"{name}.bias", out_f, layer))
        y = self.act(f"{name}.out", tokens * out_f, role, layer)
        fwd = linear_fwd_cost(num_tokens=tokens, in_features=in_f, out_features=out_f, dtype=self.dtype, bias=bias)
        bwd = linear_bwd_costs(num_tokens=tokens, in_features=in_f, out_features=out_f, dtype=self.dtype, bias=bias,
                               input_requires_grad=True)
        saved_x = x if save_input is None else save_input
        bwd_cost, ws = self.cost(bwd.input_grad, bwd.weight_grad), 0
        saves = [saved_x, w]
        if input_recompute is not None:
            rec, ws = input_recompute
            saves = [w]
            bwd_cost = add_costs(rec, bwd_cost)
        b.op(name, "linear", layer, inputs=inputs + ([saved_x] if saved_x != x else []), outputs=[y],
             saves=saves, grad_inputs=[x], cost=self.cost(fwd), bwd_cost=bwd_cost, bwd_workspace_bytes=ws)
        return y

    def fused_rmsnorm(self, name: str, x: int, layer) -> int:
        """``torch.rms_norm`` on CUDA: one kernel; saves input and rstd (fp32 per row)."""
        with self.measured_group("memory.rmsnorm.torch_rms_norm", op="rmsnorm", width=self.s.hidden):
            return self._fused_rmsnorm_op(name, x, layer)

    def _fused_rmsnorm_op(self, name: str, x: int, layer) -> int:
        b, s = self.b, self.s
        n = s.norm_tokens * s.hidden
        w = self.weight(f"{name}.weight", s.hidden, layer)
        rstd = self.act(f"{name}.rstd", s.norm_tokens, Role.NORM_STAT, layer, FP32_BYTES)
        y = self.act(f"{name}.out", n, Role.NORM_OUT, layer)
        io = n * s.act_bytes
        b.op(name, "rmsnorm", layer, inputs=[x, w], outputs=[y, rstd], saves=[x, w, rstd],
             cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)),
             grad_inputs=[x],
             # measured on the H200: no transient beyond dx and dweight
             bwd_cost=self.cost(_mem(f"{name}.bwd", read_bytes=2 * io, write_bytes=io)))
        return y

    def hf_rmsnorm(self, name: str, x: int, layer) -> int:
        """Hugging Face LlamaRMSNorm: fp32 upcast in Python, one aten op per line."""
        with self.measured_group("memory.rmsnorm.hf_eager", op="rmsnorm", width=self.s.hidden):
            return self._hf_rmsnorm_ops(name, x, layer)

    def _hf_rmsnorm_ops(self, name: str, x: int, layer) -> int:
        b, s = self.b, self.s
        n = s.norm_tokens * s.hidden
        rows = s.norm_tokens
        w = self.weight(f"{name}.weight", s.hidden, layer)
        io16, io32 = n * s.act_bytes, n * FP32_BYTES
        x32 = self.act(f"{name}.x_fp32", n, Role.NORM_OUT, layer, FP32_BYTES)
        b.op(f"{name}.to_fp32", "to_copy", layer, inputs=[x], outputs=[x32],
             cost=self.cost(_mem(name, read_bytes=io16, write_bytes=io32)),
             bwd_cost=self.cost(_mem(name, read_bytes=io32, write_bytes=io16)))
        sq = self.act(f"{name}.pow", n, Role.WORKSPACE, layer, FP32_BYTES)
        b.op(f"{name}.pow", "pow", layer, inputs=[x32], outputs=[sq], saves=[x32],
             cost=self.cost(_mem(name, read_bytes=io32, write_bytes=io32)),
             bwd_cost=self.cost(_mem(name, read_bytes=2 * io32, write_bytes=io32)),
             bwd_workspace_bytes=2 * io32)  # pow_backward: self.pow(1), 2 * that, then * grad
        var = self.act(f"{name}.var", rows, Role.NORM_STAT, layer, FP32_BYTES)
        b.op(f"{name}.mean", "mean", layer, inputs=[sq], outputs=[var],
             cost=self.cost(_mem(name, read_bytes=io32, write_bytes=rows * FP32_BYTES)),
             bwd_cost=self.cost(_mem(name, read_bytes=rows * FP32_BYTES, write_bytes=io32)))
        var_eps = self.act(f"{name}.var_eps", rows, Role.NORM_STAT, layer, FP32_BYTES)
        b.op(f"{name}.add_eps", "add", layer, inputs=[var], outputs=[var_eps], passthrough=[var])
        rstd = self.act(f"{name}.rstd", rows, Role.NORM_STAT, layer, FP32_BYTES)
        b.op(f"{name}.rsqrt", "rsqrt", layer, inputs=[var_eps], outputs=[rstd], saves=[rstd])
        y32 = self.act(f"{name}.normed_fp32", n, Role.WORKSPACE, layer, FP32_BYTES)
        b.op(f"{name}.mul_rstd", "mul", layer, inputs=[x32, rstd], outputs=[y32], saves=[x32, rstd],
             cost=self.cost(_mem(name, read_bytes=io32, write_bytes=io32)),
             bwd_cost=self.cost(_mem(name, read_bytes=3 * io32, write_bytes=io32)),
             bwd_workspace_bytes=io32)  # grad * x32 before the row sum for grad(rstd)
        y16 = self.act(f"{name}.normed", n, Role.NORM_OUT, layer)
        b.op(f"{name}.to_bf16", "to_copy", layer, inputs=[y32], outputs=[y16],
             cost=self.cost(_mem(name, read_bytes=io32, write_bytes=io16)),
             bwd_cost=self.cost(_mem(name, read_bytes=io16, write_bytes=io32)))
        out = self.act(f"{name}.out", n, Role.NORM_OUT, layer)
        b.op(f"{name}.mul_weight", "mul", layer, inputs=[w, y16], outputs=[out], saves=[w, y16],
             cost=self.cost(_mem(name, read_bytes=io16, write_bytes=io16)),
             bwd_cost=self.cost(_mem(name, read_bytes=2 * io16, write_bytes=io16)),
             bwd_workspace_bytes=io16)  # grad * normed before the row reduction for grad(weight)
        return out

    def layernorm(self, name: str, x: int, layer) -> int:
        """``nn.LayerNorm`` (native_layer_norm): saves input, mean and rstd."""
        b, s = self.b, self.s
        n = s.norm_tokens * s.hidden
        w = self.weight(f"{name}.weight", s.hidden, layer)
        bias = self.weight(f"{name}.bias", s.hidden, layer)
        mean = self.act(f"{name}.mean", s.norm_tokens, Role.NORM_STAT, layer, FP32_BYTES)
        rstd = self.act(f"{name}.rstd", s.norm_tokens, Role.NORM_STAT, layer, FP32_BYTES)
        y = self.act(f"{name}.out", n, Role.NORM_OUT, layer)
        io = n * s.act_bytes
        b.op(name, "layernorm", layer, inputs=[x, w, bias], outputs=[y, mean, rstd], saves=[x, w, mean, rstd],
             cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)), grad_inputs=[x],
             bwd_cost=self.cost(_mem(f"{name}.bwd", read_bytes=2 * io, write_bytes=io)))
        return y

    def norm(self, name: str, x: int, layer) -> int:
        if self.m.norm == "layernorm":
            return self.layernorm(name, x, layer)
        if self.hf and getattr(self.job, "rmsnorm", "eager") == "eager":
            return self.hf_rmsnorm(name, x, layer)
        return self.fused_rmsnorm(name, x, layer)

    def _silu_mul_variant(self, chunked: bool) -> str:
        """The measured composite that times SwiGLU's activation (see ``silu_mul``)."""
        variant = "memory.silu_mul.eager"
        if chunked and self.cost.measured(f"{variant}_chunked.fwd"):
            variant += "_chunked"
        return variant

    @staticmethod
    def _silu_mul_kernels(io: int) -> tuple[KernelCost, KernelCost, KernelCost, KernelCost]:
        """silu, mul, silu's backward, mul's backward over ``io`` bytes per operand."""
        return (_mem("silu", read_bytes=io, write_bytes=io), _mem("mul", read_bytes=2 * io, write_bytes=io),
                _mem("silu_bwd", read_bytes=2 * io, write_bytes=io),
                _mem("mul_bwd", read_bytes=3 * io, write_bytes=2 * io))

    def silu_mul(self, name: str, gate: int, up: int, layer, tokens: int, f: int, *,
                 chunked: bool = False, held: list[int] | None = None) -> int:
        """SwiGLU's activation as eager PyTorch runs it: silu(gate) (saves gate), then times up
        (saves both factors); timed as one measured composite. ``chunked``: gate and up are the
        halves of one fused projection, strided views that take the slower non-vectorized
        elementwise kernels (``memory.silu_mul.eager_chunked``, measured inside training steps,
        validate/instep.py; the contiguous ``eager`` fit where the profile lacks it)."""
        silu, mul, silu_bwd, mul_bwd = self._silu_mul_kernels(tokens * f * self.s.act_bytes)
        with self.measured_group(self._silu_mul_variant(chunked), op="silu_mul", width=f, num_tokens=tokens):
            act = self.act(f"{name}.silu", tokens * f, Role.MLP_HIDDEN, layer)
            if held is not None:  # the caller's code keeps silu(gate) in a variable
                held.append(act)
            self.b.op(f"{name}.silu", "silu", layer, inputs=[gate], outputs=[act], saves=[gate],
                      cost=self.cost(silu), bwd_cost=self.cost(silu_bwd))
            prod = self.act(f"{name}.mul", tokens * f, Role.MLP_HIDDEN, layer)
            self.b.op(f"{name}.mul", "mul", layer, inputs=[act, up], outputs=[prod], saves=[act, up],
                      cost=self.cost(mul), bwd_cost=self.cost(mul_bwd))
        return prod

    def silu_mul_recomputed(self, name: str, acts: list[int], layer, tokens: int, f: int, *,
                            chunked: bool) -> tuple[int, Cost, int]:
        """SwiGLU's activation inside ``validate.model.SwiGLUDown`` (``job.mlp_activation:
        recomputed``): one autograd node for silu(gate) * up and the down projection that saves
        only its input (``acts``: the fused gate_up output, or gate and up) and the weight.
        Forward runs the same two eager kernels (silu's output is a transient); backward
        recomputes both, then the down projection's backward, then writes silu's and the
        product's gradients into the input's gradient (no chunk/cat copy). Timed by the same
        measured composite as ``silu_mul``.

        Returns the product (not saved: freed after the down projection's forward), the
        recompute's cost and its workspace (silu(gate) and the product), both charged to the
        down projection's backward; this op's own backward holds silu(gate) until it is done.
        """
        io = tokens * f * self.s.act_bytes
        silu, mul, silu_bwd, mul_bwd = self._silu_mul_kernels(io)
        prod = self.act(f"{name}.mul", tokens * f, Role.MLP_HIDDEN, layer)
        with self.measured_group(self._silu_mul_variant(chunked), op="silu_mul", width=f, num_tokens=tokens):
            self.b.op(f"{name}.silu_mul", "silu_mul", layer, inputs=acts, outputs=[prod], saves=acts,
                      cost=self.cost(silu, mul), bwd_cost=self.cost(silu_bwd, mul_bwd),
                      fwd_workspace_bytes=io, bwd_workspace_bytes=io)
        return prod, self.b._ops[-1].cost, 2 * io

    def dropout(self, name: str, x: int, layer, num_elems: int) -> int:
        """``nn.Dropout`` while training (aten.native_dropout): allocates the output and a bool
        mask, saves the mask; backward multiplies the gradient by it."""
        p = self.m.dropout_frac
        if p <= 0.0 or self.inference:
            return x
        io = num_elems * self.s.act_bytes
        y = self.act(f"{name}.out", num_elems, Role.LAYER_INPUT, layer)
        mask = self.act(f"{name}.mask", num_elems, Role.OTHER, layer, 1)
        self.b.op(name, "dropout", layer, inputs=[x], outputs=[y, mask], saves=[mask], grad_inputs=[x],
                  cost=self.cost(_mem(name, read_bytes=io, write_bytes=io + num_elems)),
                  bwd_cost=self.cost(_mem(name, read_bytes=io + num_elems, write_bytes=io)))
        return y

    def gelu_composite(self, name: str, x: int, layer, num_elems: int) -> int:
        """HF NewGELUActivation, 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))), one aten op per
        term: pow (saves x), mul, add, mul, tanh (saves its output), add, mul(0.5, x), and the
        final mul (saves both factors)."""
        b, io = self.b, num_elems * self.s.act_bytes
        t = {}
        # (name, inputs, saves) in execution order; x is the projection output
        steps: tuple[tuple[str, list[str], list[str]], ...] = (
            ("cube", ["x"], ["x"]),
            ("scaled_cube", ["cube"], []),
            ("inner", ["x", "scaled_cube"], []),
            ("arg", ["inner"], []),
            ("tanh", ["arg"], ["tanh"]),
            ("one_plus", ["tanh"], []),
            ("half_x", ["x"], []),
            ("out", ["half_x", "one_plus"], ["half_x", "one_plus"]),
        )
        t["x"] = x
        for step, ins, saved in steps:
            t[step] = self.act(f"{name}.{step}", num_elems, Role.MLP_HIDDEN, layer)
            inputs = [t[i] for i in ins]
            passthrough = [t["x"]] if step == "inner" else []
            b.op(f"{name}.{step}", step, layer, inputs=inputs, outputs=[t[step]], saves=[t[k] for k in saved],
                 passthrough=passthrough,
                 cost=self.cost(_mem(step, read_bytes=len(ins) * io, write_bytes=io)),
                 bwd_cost=self.cost(_mem(step, read_bytes=(len(ins) + 1) * io, write_bytes=len(ins) * io)),
                 bwd_workspace_bytes=io if step in ("cube", "tanh") else 0)
        return t["out"]

    def split(self, name: str, x: int, widths: list[int], layer, tokens: int, role: Role, *,
              contiguous_grad_copy: bool = False) -> list[int]:
        """chunk / unbind of a fused projection into views. Backward writes the pieces'
        gradients into one buffer (cat / stack); a permuted stack is copied once more by the
        view's reshape when ``contiguous_grad_copy``."""
        eb = self.s.act_bytes
        views = [self.b.view(f"{name}.{j}", x, tokens * w * eb, role, layer) for j, w in enumerate(widths)]
        total = tokens * sum(widths) * eb
        self.b.op(name, "split", layer, inputs=[x], outputs=views, grad_inputs=[x],
                  bwd_cost=self.cost(_mem(name, read_bytes=total, write_bytes=total)),
                  bwd_workspace_bytes=total if contiguous_grad_copy else 0)
        return views

    def add(self, name: str, a: int, c: int, layer, num_elems: int, role: Role = Role.LAYER_INPUT) -> int:
        io = num_elems * self.s.act_bytes
        y = self.act(name, num_elems, role, layer)
        self.b.op(name, "add", layer, inputs=[a, c], outputs=[y], passthrough=[a, c],
                  cost=self.cost(_mem(name, read_bytes=2 * io, write_bytes=io)))
        return y

    def rotary(self, name: str, x: int, cos: int, sin: int, layer, num_elems: int) -> int:
        """HF apply_rotary_pos_emb for one of q / k: x*cos + rotate_half(x)*sin.

        Forward transients: x*cos, cat(-x2, x1), its product with sin (three x-sized buffers at
        the add). Backward: grad*sin, the slice-backward zero buffers and grad*cos.
        """
        io = num_elems * self.s.act_bytes
        y = self.act(f"{name}.out", num_elems, Role.ATTN_QKV, layer)
        if not self.hf:  # one fused kernel each way (Megatron / Transformer Engine apply_rope)
            self.b.op(name, "rotary", layer, inputs=[x, cos, sin], outputs=[y], saves=[cos, sin],
                      grad_inputs=[x], cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)),
                      bwd_cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)))
            return y
        self.b.op(name, "rotary", layer, inputs=[x, cos, sin], outputs=[y], saves=[cos, sin],
                  grad_inputs=[x],
                  cost=self.cost(_mem(name, read_bytes=4 * io, write_bytes=4 * io)),
                  bwd_cost=self.cost(_mem(name, read_bytes=5 * io, write_bytes=4 * io)),
                  fwd_workspace_bytes=2 * io, bwd_workspace_bytes=2 * io)
        return y

    def rotate_half_rotary(self, name: str, x: int, cos: int, sin: int, layer, tokens: int, width: int) -> int:
        """The reference decoder's rotary for q or k (``validate.model.apply_rope``: eager
        ``x * cos + rotate_half(x) * sin`` on the [B,H,T,D] view of the projection ``x`` of
        ``tokens`` x ``width`` elements), op by op as autograd runs it.

        Forward: x*cos, -x2 (half of x), cat(-x2, x1), its product with sin, the sum; -x2 and
        the cat die at their last use, x (the caller's variable) once the sum is assigned.
        Backward: the sum hands its gradient to both products; grad*sin, -grad of its first
        half, the chunk's backward concatenating the halves' gradients, grad*cos added into
        that in place; then the heads view's backward copies the transposed gradient
        (reshape of a non-contiguous tensor) into the projection's layout.
        """
        b, s = self.b, self.s
        n = tokens * width
        io = n * s.act_bytes
        half = width // 2
        xh = b.view(f"{name}.heads", x, io, Role.ATTN_QKV, layer)
        b.op(f"{name}.heads", "view", layer, inputs=[x], outputs=[xh], grad_inputs=[x],
             bwd_cost=self.cost(_mem(f"{name}.heads", read_bytes=io, write_bytes=io)))
        xc = self.act(f"{name}.mul_cos", n, Role.WORKSPACE, layer)
        b.op(f"{name}.mul_cos", "mul", layer, inputs=[xh, cos], outputs=[xc], saves=[cos], grad_inputs=[xh],
             cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)),
             bwd_cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)))
        x1, x2 = self.split(f"{name}.chunk", xh, [half, half], layer, tokens, Role.ATTN_QKV)
        neg = self.act(f"{name}.neg", tokens * half, Role.WORKSPACE, layer)
        b.op(f"{name}.neg", "neg", layer, inputs=[x2], outputs=[neg], grad_inputs=[x2],
             cost=self.cost(_mem(name, read_bytes=io // 2, write_bytes=io // 2)),
             bwd_cost=self.cost(_mem(name, read_bytes=io // 2, write_bytes=io // 2)))
        rot = self.act(f"{name}.rotate_half", n, Role.WORKSPACE, layer)
        b.op(f"{name}.cat", "cat", layer, inputs=[neg, x1], outputs=[rot], passthrough=[neg, x1],
             cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)))
        rs = self.act(f"{name}.mul_sin", n, Role.WORKSPACE, layer)
        b.op(f"{name}.mul_sin", "mul", layer, inputs=[rot, sin], outputs=[rs], saves=[sin], grad_inputs=[rot],
             cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)),
             bwd_cost=self.cost(_mem(name, read_bytes=io, write_bytes=io)))
        y = self.add(f"{name}.out", xc, rs, layer, n, Role.ATTN_QKV)
        self.release(f"{name}.release_input", [xh], layer)
        return y

    def release(self, name: str, tensors: list[int], layer) -> None:
        """Python variables that hold ``tensors`` until here (a function's locals until it
        returns): nothing is freed before this point, whatever its last use."""
        self.b.op(name, "release", layer, inputs=tensors, has_backward=False)

    def attention(self, name: str, q: int, k: int, v: int, layer) -> int:
        """FlashAttention-2 forward / backward, with context parallelism.

        Ring (cp > 1): each rank attends its query shard to every key/value shard as they pass
        around the ring, with the causal load balanced over ranks (zigzag), so each does 1/cp of
        the causal work; the K/V exchange overlaps the attention kernels and only its excess is
        exposed. Ulysses: all-to-alls turn sequence shards of all heads into the whole sequence
        of a head shard before attention and back after it.
        """
        b, s = self.b, self.s
        if self.decode_context_len is not None:
            return self.decode_attention(name, q, layer)
        if self.mask is not None:
            return self.masked_attention(name, q, k, v, layer)
        causal = True
        window = self.m.sliding_window if self.hf and self.m.family in ("mistral",) else None
        cp = self.cp
        ulysses = cp > 1 and self.p is not None and self.p.cp_kind == "ulysses"
        heads, kv_heads = s.q_heads, s.kv_heads
        seq_full = s.seq_len * cp
        kv_bytes_local = 2 * s.tokens * s.kv_heads * s.head_dim * s.act_bytes  # K and V shards
        q_bytes_local = s.tokens * s.q_heads * s.head_dim * s.act_bytes
        if ulysses:
            heads, kv_heads = heads // cp, max(1, kv_heads // cp)
            a2a = [self.comm_time_s("all_to_all", q_bytes_local + kv_bytes_local, cp),
                   self.comm_time_s("all_to_all", q_bytes_local, cp)]
            seq_q = seq_kv = seq_full
            scale = 1.0
        else:
            seq_q = seq_kv = seq_full
            scale = 1.0 / cp
        fwd = _scaled(attention_fwd_cost(batch=s.batch, seq_len_q=seq_q, seq_len_kv=seq_kv, num_heads=heads,
                                         num_kv_heads=kv_heads, head_dim=s.head_dim, causal=causal,
                                         dtype=self.dtype, window=window), scale)
        bwd = [_scaled(c, scale) for c in attention_bwd_cost(
            batch=s.batch, seq_len_q=seq_q, seq_len_kv=seq_kv, num_heads=heads, num_kv_heads=kv_heads,
            head_dim=s.head_dim, causal=causal, dtype=self.dtype, window=window).kernels]
        # FlopCounterMode counts SDPA as full (non-causal) attention: 4*b*h*sq*skv*d forward and,
        # for the fused GPU kernels, 2.5x that backward (torch.utils.flop_counter).
        full_fwd = 4.0 * s.batch * heads * seq_q * seq_kv * s.head_dim * scale
        model_fwd = scale * attention_fwd_flops(batch=s.batch, seq_len_q=seq_q, seq_len_kv=seq_kv, num_heads=heads,
                                                head_dim=s.head_dim, causal=causal, window=window)
        var = self.attention_variant
        fwd_cost = self.cost(fwd, flop_counter_flops=full_fwd, model_flops=model_fwd, variant=var)
        bwd_cost = self.cost(*bwd, flop_counter_flops=FLOP_COUNTER_SDPA_BWD * full_fwd, model_flops=2.0 * model_fwd,
                             variant=var)
        fwd_ws = 0
        if cp > 1 and not ulysses and fwd_cost.time_s is not None:
            ring_fwd = (cp - 1) * self.comm_time_s("send_recv", kv_bytes_local, 2)
            ring_bwd = 2 * ring_fwd  # K, V travel again and dK, dV come back
            assert bwd_cost.time_s is not None  # timed by the same node as fwd_cost
            fwd_cost = _with_time(fwd_cost, max(fwd_cost.time_s, ring_fwd))
            bwd_cost = _with_time(bwd_cost, max(bwd_cost.time_s, ring_bwd))
            fwd_ws = 2 * kv_bytes_local  # double-buffered K/V receive
        if ulysses and fwd_cost.time_s is not None:
            assert bwd_cost.time_s is not None  # timed by the same node as fwd_cost
            fwd_cost = _with_time(fwd_cost, fwd_cost.time_s + sum(a2a))
            bwd_cost = _with_time(bwd_cost, bwd_cost.time_s + sum(a2a))
        out = self.act(f"{name}.out", s.tokens * s.q_heads * s.head_dim, Role.ATTN_OUT, layer)
        lse = self.act(f"{name}.lse", s.batch * s.q_heads * s.seq_len, Role.ATTN_STAT, layer, FP32_BYTES)
        # flash backward workspace: fp32 dq accumulator [b, round128(s), h, round(d)], softmax_d
        # [b, h, round128(s)] fp32, and dk/dv expanded to the query heads under GQA.
        s_round = _round_up(s.seq_len, 128)
        d_round = _round_up(s.head_dim, 32) if s.head_dim <= 128 else _round_up(s.head_dim, 64)
        ws = s.batch * s_round * s.q_heads * d_round * FP32_BYTES + s.batch * s.q_heads * s_round * FP32_BYTES
        if s.q_heads != s.kv_heads:
            ws += 2 * s.tokens * s.q_heads * s.head_dim * s.act_bytes
        if cp > 1 and not ulysses:
            ws += 2 * kv_bytes_local + 2 * kv_bytes_local * FP32_BYTES // s.act_bytes  # K/V + fp32 dK/dV
        rng = [self.act(f"{name}.philox_{j}", 1, Role.ATTN_STAT, layer, PHILOX_STATE_BYTES) for j in ("seed", "offset")]
        qkv = [q, k, v]
        b.op(name, "sdpa", layer, inputs=qkv, outputs=[out, lse, *rng], saves=qkv + [out, lse, *rng],
             cost=fwd_cost, bwd_cost=bwd_cost, grad_inputs=qkv, bwd_workspace_bytes=ws,
             fwd_workspace_bytes=fwd_ws)
        return out

    @property
    def needs_mask(self) -> bool:
        """transformers passes an explicit mask (not is_causal) when a sliding window is shorter
        than the sequence: SDPA then leaves the causal fast path."""
        w = self.m.sliding_window
        return self.hf and w is not None and self.s.seq_len > w and self.decode_context_len is None

    def masked_attention(self, name: str, q: int, k: int, v: int, layer) -> int:
        """SDPA with an explicit mask (Hugging Face sliding window shorter than the sequence).

        With a mask, transformers repeats K and V to every query head (``repeat_kv``: copies),
        SDPA turns the bool mask into an additive mask in the model dtype (a [b, 1, s, s] tensor
        per call, saved for backward) and runs a masked kernel (cuDNN on the H200) over the
        whole s x s square it is given.
        """
        assert self.mask is not None  # attention() comes here only with a mask
        b, s = self.b, self.s
        heads = s.q_heads
        full_kv = s.tokens * heads * s.head_dim
        if s.kv_heads != heads:
            reps = []
            for t, n in ((k, "k"), (v, "v")):
                r = self.act(f"{name}.repeat_{n}", full_kv, Role.ATTN_QKV, layer)
                b.op(f"{name}.repeat_kv_{n}", "repeat_kv", layer, inputs=[t], outputs=[r], grad_inputs=[t],
                     cost=self.cost(_mem("repeat_kv", read_bytes=full_kv * s.act_bytes // (heads // s.kv_heads),
                                         write_bytes=full_kv * s.act_bytes)))
                reps.append(r)
            k, v = reps
        fmask = self.act(f"{name}.float_mask", s.batch * s.seq_len * s.seq_len, Role.ATTN_STAT, layer)
        b.op(f"{name}.mask_to_float", "to_copy", layer, inputs=[self.mask], outputs=[fmask],
             cost=self.cost(_mem("mask", read_bytes=s.batch * s.seq_len * s.seq_len,
                                 write_bytes=s.batch * s.seq_len * s.seq_len * s.act_bytes)))
        out = self.act(f"{name}.out", s.tokens * heads * s.head_dim, Role.ATTN_OUT, layer)
        lse = self.act(f"{name}.lse", s.batch * heads * _round_up(s.seq_len, 32), Role.ATTN_STAT, layer, FP32_BYTES)
        kw = dict(batch=s.batch, seq_len_q=s.seq_len, seq_len_kv=s.seq_len, num_heads=heads, num_kv_heads=heads,
                  head_dim=s.head_dim, causal=False, dtype=self.dtype)
        full_fwd = 4.0 * s.batch * heads * s.seq_len * s.seq_len * s.head_dim
        b.op(name, "sdpa_masked", layer, inputs=[q, k, v, fmask], outputs=[out, lse], saves=[q, k, v, fmask, out, lse],
             grad_inputs=[q, k, v],
             # timed by the masked-SDPA fit (cuDNN with a sliding-window mask, measured as a rate
             # over the full square it is given)
             cost=self.cost(attention_fwd_cost(**kw), flop_counter_flops=full_fwd, variant="masked"),
             bwd_cost=self.cost(*attention_bwd_cost(**kw).kernels, flop_counter_flops=FLOP_COUNTER_SDPA_BWD * full_fwd,
                                variant="masked"),
             bwd_workspace_bytes=s.tokens * heads * s.head_dim * FP32_BYTES)
        return out

    def kv_cache_store(self, i: int, k: int, v: int) -> tuple[int, int]:
        """Prefill writes K and V (after rotary) into the cache, held for the decode steps;
        a quantized cache stores packed values plus scales and frees the bf16 copies."""
        job, s = self.job, self.s
        if job.kv_quant == "none":
            for t in (k, v):
                self.b.set_role(t, Role.KV_CACHE)
                self.b.hold(t)
            return k, v
        if job.kv_quant in KIVI_KV_DTYPES:  # the KIVI layout the replay, planner and executor use
            from kernels.quant import kivi_quantize_cost

            lay = self.kivi_layout(s.seq_len, s.batch)
            # K and V together are exact; the split between them (per-channel key scales,
            # per-token value scales) is an even one
            stored = {"k": lay.total_bytes // 2, "v": lay.total_bytes - lay.total_bytes // 2}
            quantize = kivi_quantize_cost(lay, dtype=self.dtype)
            costs = {"k": _scaled(quantize, 0.5), "v": _scaled(quantize, 0.5)}
        else:
            from kernels.quant import kv_quantize_cost, kv_quantized_bytes

            q_bytes = kv_quantized_bytes(num_tokens=s.tokens, num_kv_heads=s.kv_heads, head_dim=s.head_dim,
                                         kv_dtype=job.kv_quant, group_size=job.kv_group_size)
            stored = {"k": q_bytes, "v": q_bytes}
            cost = kv_quantize_cost(num_tokens=s.tokens, num_kv_heads=s.kv_heads, head_dim=s.head_dim,
                                    kv_dtype=job.kv_quant, dtype=self.dtype, group_size=job.kv_group_size)
            costs = {"k": cost, "v": cost}
        for name, t in (("k", k), ("v", v)):
            kq = self.b.tensor(f"layers.{i}.kv_cache.{name}", stored[name], Role.KV_CACHE, i, requires_grad=False)
            self.b.op(f"layers.{i}.kv_quantize_{name}", "kv_quantize", i, inputs=[t], outputs=[kq],
                      cost=self.cost(costs[name]))
            self.b.hold(kq)
        return k, v

    def decode_attention(self, name: str, q: int, layer) -> int:
        """One decode step: each sequence's single query attends its whole cached context."""
        from kernels.attention import decode_attention_cost

        assert self.decode_context_len is not None  # attention() comes here only for a decode step
        s, job = self.s, self.job
        costs = decode_attention_cost(batch=s.batch, context_len=self.decode_context_len, num_heads=s.q_heads,
                                      num_kv_heads=s.kv_heads, head_dim=s.head_dim, dtype=self.dtype,
                                      kv_dtype=job.kv_storage_dtype, kv_group_size=job.kv_group_size)
        out = self.act(f"{name}.out", s.tokens * s.q_heads * s.head_dim, Role.ATTN_OUT, layer)
        self.b.op(name, "decode_attention", layer, inputs=[q], outputs=[out],
                  cost=self.cost(*[c for c in costs if c is not None]))
        return out

    # ---- layers ---------------------------------------------------------------------------
    @property
    def impl(self) -> str:
        """Which code base's ops (``code_base``)."""
        return code_base(self.m)

    @property
    def hf(self) -> bool:
        return self.impl == "hf"

    def decoder_layer(self, i: int, x: int, cos: int | None, sin: int | None) -> int:
        m, s = self.m, self.s
        T = s.tokens
        h = s.hidden
        q_size, kv_size = s.q_heads * s.head_dim, s.kv_heads * s.head_dim
        nrm = self.norm(f"layers.{i}.input_norm", x, i)
        nrm, nrm_saved = self.tp_enter(f"layers.{i}.attn", nrm, i)
        if m.qkv_fused:
            qkv = self.linear(f"layers.{i}.attn.qkv_proj", nrm, h, q_size + 2 * kv_size, i, tokens=T,
                              role=Role.ATTN_QKV, bias=m.qkv_bias, save_input=nrm_saved)
            q, k, v = self.split(f"layers.{i}.attn.split_qkv", qkv, [q_size, kv_size, kv_size], i, T,
                                 Role.ATTN_QKV, contiguous_grad_copy=self.impl == "stack")
        else:
            q, k, v = (
                self.linear(f"layers.{i}.attn.{n}_proj", nrm, h, size, i, tokens=T, role=Role.ATTN_QKV,
                            bias=m.qkv_bias, save_input=nrm_saved)
                for n, size in (("q", q_size), ("k", kv_size), ("v", kv_size))
            )
        stack = self.impl == "stack"
        if m.position == "rope" and cos is not None:
            assert sin is not None  # embed() makes cos and sin together
            variant = "memory.rotary.hf_rotate_half" if self.hf or stack else "memory.rotary.fused"
            with self.measured_group(variant, op="rotary", width=q_size + kv_size, head_dim=s.head_dim,
                                     num_tokens=T):
                if stack:  # validate.model.DecoderLayer.qkv: q rotated, then k
                    q = self.rotate_half_rotary(f"layers.{i}.attn.rotary_q", q, cos, sin, i, T, q_size)
                    k = self.rotate_half_rotary(f"layers.{i}.attn.rotary_k", k, cos, sin, i, T, kv_size)
                else:
                    q = self.rotary(f"layers.{i}.attn.rotary_q", q, cos, sin, i, T * q_size)
                    k = self.rotary(f"layers.{i}.attn.rotary_k", k, cos, sin, i, T * kv_size)
        if stack:  # the executor's qkv() holds the norm's output until it returns
            self.release(f"layers.{i}.attn.qkv_return", [nrm], i)
        if self.inference:
            k, v = self.kv_cache_store(i, k, v)
        a = self.attention(f"layers.{i}.attn.sdpa", q, k, v, i)
        o = self.linear(f"layers.{i}.attn.o_proj", a, q_size, h, i, tokens=T, role=Role.LAYER_INPUT, bias=m.o_bias)
        if stack:  # _attention()'s locals: q, k, v and the attention output
            self.release(f"layers.{i}.attn.return", [q, k, v, a], i)
        o = self.tp_exit(f"layers.{i}.attn.o_proj", o, i)
        o = self.dropout(f"layers.{i}.attn.resid_dropout", o, i, s.norm_tokens * h)
        x2 = self.add(f"layers.{i}.attn_residual", x, o, i, s.norm_tokens * h)
        selective = self.layer_checkpointing.get(i, getattr(self.job, "checkpointing", "none")) == "selective"
        if selective:
            self.b.begin_checkpoint([x2])
        num_chunks = self.mlp_chunks.get(i, 1)
        if num_chunks == 1:  # a tiled MLP runs the norm inside its chunks
            nrm2 = self.norm(f"layers.{i}.post_attention_norm", x2, i)
            nrm2, nrm2_saved = self.tp_enter(f"layers.{i}.mlp", nrm2, i)
        f = s.ffn
        down_rec = None
        mlp_locals: list[int] = []  # the MLP's tensors its code holds in variables
        if num_chunks > 1:
            down = self.tiled_mlp(i, x2, num_chunks)
        elif m.mlp == "swiglu":
            recompute_act = getattr(self.job, "mlp_activation", "saved") == "recomputed"
            if m.gate_up_fused:
                gu = self.linear(f"layers.{i}.mlp.gate_up_proj", nrm2, h, 2 * f, i, tokens=T,
                                 role=Role.MLP_HIDDEN, bias=m.mlp_bias, save_input=nrm2_saved)
                acts = [gu]
                if not recompute_act:
                    acts = self.split(f"layers.{i}.mlp.chunk", gu, [f, f], i, T, Role.MLP_HIDDEN)
            else:
                acts = [
                    self.linear(f"layers.{i}.mlp.{n}_proj", nrm2, h, f, i, tokens=T, role=Role.MLP_HIDDEN,
                                bias=m.mlp_bias, save_input=nrm2_saved)
                    for n in ("gate", "up")
                ]
            mlp_locals.extend(acts)
            if recompute_act:
                prod, rec_cost, rec_ws = self.silu_mul_recomputed(f"layers.{i}.mlp", acts, i, T, f,
                                                                  chunked=m.gate_up_fused)
                down_rec = (rec_cost, rec_ws)
            else:
                gate, up = acts  # saved: the gate and up projections as two tensors
                prod = self.silu_mul(f"layers.{i}.mlp", gate, up, i, T, f, chunked=m.gate_up_fused,
                                     held=mlp_locals)
        else:
            up = self.linear(f"layers.{i}.mlp.fc_in", nrm2, h, f, i, tokens=T, role=Role.MLP_HIDDEN,
                             bias=m.mlp_bias, save_input=nrm2_saved)
            io = T * f * s.act_bytes
            if m.gelu_composite:
                prod = self.gelu_composite(f"layers.{i}.mlp.gelu", up, i, T * f)
            else:
                prod = self.act(f"layers.{i}.mlp.gelu", T * f, Role.MLP_HIDDEN, i)
                self.b.op(f"layers.{i}.mlp.gelu", "gelu", i, inputs=[up], outputs=[prod], saves=[up],
                          cost=self.cost(_mem("gelu", read_bytes=io, write_bytes=io)),
                          bwd_cost=self.cost(_mem("gelu_bwd", read_bytes=2 * io, write_bytes=io)))
        if num_chunks == 1:
            down = self.linear(f"layers.{i}.mlp.down_proj", prod, f, h, i, tokens=T, role=Role.LAYER_INPUT,
                               bias=m.mlp_bias, input_recompute=down_rec)
            if stack:  # _mlp()'s locals: the norm's output, the projections, silu(gate)
                self.release(f"layers.{i}.mlp.return", [nrm2, *mlp_locals], i)
        down = self.tp_exit(f"layers.{i}.mlp.down_proj", down, i)
        down = self.dropout(f"layers.{i}.mlp.resid_dropout", down, i, s.norm_tokens * h)
        if selective:
            self.b.end_checkpoint()
        return self.add(f"layers.{i}.mlp_residual", x2, down, i, s.norm_tokens * h)

    def tiled_mlp(self, i: int, x: int, num_chunks: int) -> int:
        """The MLP block (post-attention norm and SwiGLU MLP) in ``num_chunks`` token chunks
        (DeepSpeed's TiledMLP, ALST arXiv 2506.13996; ``LayerPlan.mlp_chunks``; as
        ``validate.chunked_ops.TiledMLP`` runs it): one op whose forward runs every chunk under
        no_grad and saves only the block's input ``x`` (the mid-layer residual); its backward
        recomputes each chunk's forward with grad and backpropagates it, one chunk at a time
        (cost: one more forward of the block). Returns the MLP's output (the residual add is
        the caller's).

        Memory, per chunk of ``c`` tokens (``f`` the intermediate width, ``W`` the block's
        weight elements, bf16 ``a`` bytes): forward, gate and up, silu(gate) and the product,
        at most three at once (``3 c f a``), and the chunks' outputs until they are
        concatenated into the op's output (``T h a``); backward, the recomputed gate, up, silu
        and product with the product's, silu's and up's gradients (``6 c f a`` at mul's
        backward), the chunk's weight gradients (``W a``) and their fp32 sums over the chunks
        (``4 W``). The norm's fp32 intermediates (``c h`` rows) are below the MLP's and not
        counted. The input gradient (tokens x hidden) is the op's own, as for any op.
        Times: the norm's and the MLP's kernel costs for one chunk (the GEMM fits decide how
        fast a chunk's shorter GEMMs run), times ``num_chunks``.
        """
        m, s, b = self.m, self.s, self.b
        if m.mlp != "swiglu":
            raise UserInputError(f"mlp_chunks: a tiled MLP is modelled for SwiGLU MLPs; {m.name} has {m.mlp}")
        if self.tp > 1:
            raise UserInputError("mlp_chunks: a tiled MLP is modelled without tensor parallelism")
        T, h, f, a = s.tokens, s.hidden, s.ffn, s.act_bytes
        chunk = -(-T // num_chunks)
        wn = self.weight(f"layers.{i}.post_attention_norm.weight", h, i)
        if m.gate_up_fused:
            wgu = [self.weight(f"layers.{i}.mlp.gate_up_proj.weight", h * 2 * f, i)]
            proj = [(h, 2 * f)]
        else:
            wgu = [self.weight(f"layers.{i}.mlp.{n}_proj.weight", h * f, i) for n in ("gate", "up")]
            proj = [(h, f), (h, f)]
        wd = self.weight(f"layers.{i}.mlp.down_proj.weight", f * h, i)
        proj.append((f, h))
        num_weights = h + sum(x_f * o for x_f, o in proj)
        io = chunk * h * a
        norm_fwd = _mem("rmsnorm", read_bytes=io, write_bytes=io)
        norm_bwd = _mem("rmsnorm_bwd", read_bytes=2 * io, write_bytes=io)
        fwd = [linear_fwd_cost(num_tokens=chunk, in_features=x_f, out_features=o, dtype=self.dtype)
               for x_f, o in proj]
        bwd = [c for x_f, o in proj for c in linear_bwd_costs(num_tokens=chunk, in_features=x_f, out_features=o,
                                                               dtype=self.dtype, input_requires_grad=True)]
        silu, mul, silu_bwd, mul_bwd = self._silu_mul_kernels(chunk * f * a)
        fwd_cost = self.cost(norm_fwd, *fwd, silu, mul)
        bwd_cost = add_costs(fwd_cost, self.cost(*bwd, silu_bwd, mul_bwd, norm_bwd))
        y = self.act(f"layers.{i}.mlp.down_proj.out", T * h, Role.LAYER_INPUT, i)
        b.op(f"layers.{i}.mlp.tiled", "tiled_mlp", i, inputs=[x, wn, *wgu, wd], outputs=[y],
             saves=[x, wn, *wgu, wd], grad_inputs=[x], cost=_times(fwd_cost, num_chunks),
             bwd_cost=_times(bwd_cost, num_chunks),
             fwd_workspace_bytes=3 * chunk * f * a + T * h * a,
             bwd_workspace_bytes=6 * chunk * f * a + num_weights * (a + FP32_BYTES))
        return y

    def fused_linear_cross_entropy(self, x: int, labels: int, weight: int | None) -> int:
        """LM head + cross-entropy in ``lm_head_chunks`` token chunks during the forward (a fused
        linear cross-entropy: Liger's FusedLinearCrossEntropy, arXiv 2410.10989; the contract of
        ``Plan.lm_head_chunks``, as ``validate.chunked_ops.ChunkedLinearCrossEntropy`` runs it).
        Each chunk of ``c`` tokens computes its bf16 logits, their fp32 upcast, the loss and its
        gradient (in place of the fp32 logits, then cast to bf16), then at once its share of
        dh = g @ W (into a tokens x hidden bf16 buffer) and of dW (accumulated in fp32). The
        logits never exist whole; backward scales the saved dh and dW by the loss's gradient.

        Memory: saved from the forward to the backward, dh (``T h`` bf16) and the fp32 dW
        (``4 V h``); the forward's workspace, the larger of (a) at the chunk's logsumexp, its
        fp32 logits, the fp32 ``logits - max`` that ``torch.logsumexp`` makes (and exponentiates
        in place) and, from the second chunk on, the previous chunk's bf16 gradient, which its
        variable holds until the next one replaces it (``10 c V`` bytes; the bf16 logits, the
        bf16 gradient's cast and the upcast peak below it) and (b) the chunk's dW product in
        bf16 with its fp32 copy beside the chunk's bf16 gradient (``2 c V + 6 V h``); the
        backward allocates the input gradient (``T h`` bf16, dh scaled) and the head's
        ``.grad`` through an fp32 product (``4 V h`` of workspace).
        Times: one chunk's head GEMM, its two backward GEMMs and the loss's elementwise passes
        (upcast, softmax, gradient, downcast: ``kernels`` costs), times the chunks. FLOPs: the
        three GEMMs in the forward op; model FLOPs the head's forward only (MFU counts 3x it).
        """
        s, b = self.s, self.b
        T, h, V, a = s.tokens, s.hidden, s.vocab, s.act_bytes
        C = self.lm_head_chunks
        chunk = -(-T // C)
        w = weight if weight is not None else self.weight("lm_head.weight", h * V, None)
        cv = chunk * V
        head = linear_fwd_cost(num_tokens=chunk, in_features=h, out_features=V, dtype=self.dtype)
        head_bwd = linear_bwd_costs(num_tokens=chunk, in_features=h, out_features=V, dtype=self.dtype,
                                    grad_dtype="fp32", input_requires_grad=True)
        loss_kernels = (
            _mem("upcast", read_bytes=cv * a, write_bytes=cv * FP32_BYTES),
            _mem("softmax", read_bytes=cv * FP32_BYTES, write_bytes=cv * FP32_BYTES),
            _mem("softmax_grad", read_bytes=cv * FP32_BYTES, write_bytes=cv * FP32_BYTES),
            _mem("downcast", read_bytes=cv * FP32_BYTES, write_bytes=cv * a),
        )
        one = _times(self.cost(head, head_bwd.input_grad, head_bwd.weight_grad, *loss_kernels), C)
        cost = Cost(flops=one.flops, hbm_bytes=one.hbm_bytes, op_class=one.op_class, exec_flops=one.exec_flops,
                    time_s=one.time_s, model_flops=C * head.flops)
        dh = self.act("loss.fused_ce.dh", T * h, Role.ACTIVATION_GRAD, None)
        dw = self.act("loss.fused_ce.dw_fp32", V * h, Role.ACTIVATION_GRAD, None, FP32_BYTES)
        loss = self.act("loss.value", 1, Role.LOSS, None, FP32_BYTES)
        scale = self.cost(_mem("scale_grads", read_bytes=T * h * a + V * h * FP32_BYTES,
                               write_bytes=T * h * a + V * h * (FP32_BYTES + a)))
        b.op("loss.fused_linear_ce", "loss_fused_linear_ce", None, inputs=[x, w, labels], outputs=[loss, dh, dw],
             saves=[dh, dw], grad_inputs=[x], cost=cost, bwd_cost=scale,
             fwd_workspace_bytes=max(2 * FP32_BYTES * cv + (a * cv if C > 1 else 0), a * cv + (a + FP32_BYTES) * V * h),
             bwd_workspace_bytes=V * h * FP32_BYTES)
        return loss

    def hf_loss(self, logits: int, labels: int, tv: int) -> int:
        """transformers ForCausalLMLoss: logits.float(), log_softmax, nll_loss. The bf16 logits
        live until the forward returns them in its output object; the loop then drops that
        object (``model_output="freed"``: they are gone before backward) or holds it to the
        end of the step (``"kept"``)."""
        with self.measured_group("memory.cross_entropy.hf_float_upcast", op="cross_entropy",
                                 width=self.s.vocab, num_tokens=self.s.tokens):
            loss = self._hf_loss_ops(logits, labels, tv)
        if effective_model_output(self.m, self.job) == "kept":
            self.b.hold(logits)
        else:
            self.b.op("loss.drop_output", "loss_release", None, inputs=[logits], has_backward=False)
        return loss

    def _hf_loss_ops(self, logits: int, labels: int, tv: int) -> int:
        b, s, T = self.b, self.s, self.s.tokens
        l32 = self.act("loss.logits_fp32", tv, Role.LOGITS_FP32, None, FP32_BYTES)
        b.op("loss.to_fp32", "loss_to_copy", None, inputs=[logits], outputs=[l32],
             cost=self.cost(_mem("upcast", read_bytes=tv * s.act_bytes, write_bytes=tv * FP32_BYTES)),
             bwd_cost=self.cost(_mem("downcast", read_bytes=tv * FP32_BYTES, write_bytes=tv * s.act_bytes)))
        lsm = self.act("loss.log_softmax", tv, Role.LOGITS_FP32, None, FP32_BYTES)
        b.op("loss.log_softmax", "loss_log_softmax", None, inputs=[l32], outputs=[lsm], saves=[lsm],
             cost=self.cost(_mem("log_softmax", read_bytes=tv * FP32_BYTES, write_bytes=tv * FP32_BYTES)),
             bwd_cost=self.cost(_mem("log_softmax_bwd", read_bytes=2 * tv * FP32_BYTES, write_bytes=tv * FP32_BYTES)))
        loss = self.act("loss.value", 1, Role.LOSS, None, FP32_BYTES)
        # nll_loss backward materializes a dense [T, V] fp32 gradient (zeros + scatter)
        b.op("loss.nll", "loss_nll", None, inputs=[lsm, labels], outputs=[loss], saves=[lsm, labels],
             cost=self.cost(_mem("nll", read_bytes=T * FP32_BYTES, write_bytes=FP32_BYTES)),
             bwd_cost=self.cost(_mem("nll_bwd", read_bytes=0, write_bytes=tv * FP32_BYTES)),
             grad_inputs=[lsm])
        return loss

    def megatron_loss(self, logits: int, labels: int, tv: int) -> int:
        """Megatron's vocab-parallel cross entropy: an fp32 copy of the logits shard becomes the
        softmax in place and is saved; backward turns it into the gradient in place and casts it
        to the model dtype. Three all-reduces of [T] fp32 (max, sum, target logit) over tp."""
        b, s, T = self.b, self.s, self.s.tokens
        soft = self.act("loss.softmax_fp32", tv, Role.LOGITS_FP32, None, FP32_BYTES)
        reduce_t = 3 * self.comm_time_s("all_reduce", T * FP32_BYTES, self.tp)
        cost = self.cost(_mem("vocab_parallel_ce", read_bytes=tv * (s.act_bytes + 2 * FP32_BYTES),
                              write_bytes=tv * FP32_BYTES))
        b.op("loss.softmax", "loss_softmax", None, inputs=[logits], outputs=[soft], saves=[soft],
             cost=_with_time(cost, (cost.time_s or 0.0) + reduce_t) if cost.time_s is not None else cost,
             bwd_cost=self.cost(_mem("vocab_parallel_ce_bwd", read_bytes=tv * FP32_BYTES,
                                     write_bytes=tv * s.act_bytes)))
        loss = self.act("loss.value", T, Role.LOSS, None, FP32_BYTES)
        # backward writes the gradient into the saved softmax buffer in place: no new storage
        b.op("loss.nll", "loss_nll", None, inputs=[soft, labels], outputs=[loss], saves=[labels],
             passthrough=[soft])
        return loss

    def optimizer(self) -> None:
        """Optimizer states (persistent) and the optimizer step after backward.

        AdamW keeps two moments per parameter in ``optimizer_state_dtype`` (torch.optim.AdamW on
        bf16 weights keeps them in bf16: set the job's dtype accordingly) and, with master
        weights, an fp32 copy; ZeRO-1+ shards both over data-parallel ranks. Its transient, without
        tensor or context parallelism and with moments wider than the parameters (the executor's
        recipe, ``validate.model_states.ModelStates._gpu_step``, one parameter at a time): the
        largest parameter's fp32 gradient and, without master weights, its fp32 copy (of its
        ZeRO shard). Otherwise, as before (no such step was measured): without master weights a
        temporary of every parameter at once in the moments' dtype (torch.optim.AdamW's foreach
        implementation on the parameters themselves: sqrt of the second moment), with them none.
        (Whether it exists does not depend on the ZeRO stage: one step serves every stage.)
        """
        states, step, transient = self.optimizer_at(zero=self.zero, dp=self.dp)
        self.state_tids = tuple(self.b.state(name, num_bytes, role) for name, num_bytes, role in states)
        if step is None:
            return
        ws = self.b.tensor("optimizer.workspace", transient, Role.WORKSPACE, None, requires_grad=False) if transient else None
        self._optimizer_op = (step, self.dp_comm_time_s(self.dp), ws)

    def optimizer_at(self, *, zero: int, dp: int) -> tuple[tuple[tuple[str, int, Role], ...], Cost | None, int]:
        """The optimizer of this GPU under ZeRO stage ``zero`` over ``dp`` replicas: its persistent
        states (name, bytes, role), its step's cost (None: no optimizer) and its transient bytes."""
        from simulator.job import dtype_bytes

        job = self.job
        n = self.num_local_params
        shard = dp if zero >= 1 else 1
        n_opt = -(-n // shard)
        state_b = dtype_bytes(job.optimizer_state_dtype)
        states: list[tuple[str, int, Role]] = []
        reads = writes = 0
        if job.master_weights:
            states.append(("master_weights", int(n_opt * 4), Role.MASTER_WEIGHT))
            reads += n_opt * 4
            writes += n_opt * 4
        transient = 0
        if job.optimizer == "adamw":
            for j in range(2):
                states.append((f"adamw.moment{j + 1}", int(n_opt * state_b), Role.OPTIMIZER_STATE))
            reads += int(n_opt * (2 * state_b + self.grad_elem_bytes + self.param_bytes))
            writes += int(n_opt * (2 * state_b + self.param_bytes))
            whole_layers = self.tp * self.cp == 1  # the executor's: no tensor or context parallelism
            if whole_layers and (state_b != self.param_bytes or job.master_weights):
                transient = -(-self.max_param_numel // shard) * FP32_BYTES * (1 if job.master_weights else 2)
            elif not job.master_weights:
                transient = int(n_opt * state_b)
        elif job.optimizer == "sgd":
            reads += int(n_opt * (self.grad_elem_bytes + self.param_bytes))
            writes += int(n_opt * self.param_bytes)
        if job.optimizer == "none":
            return tuple(states), None, 0
        return tuple(states), self.cost(_mem("optimizer_step", read_bytes=reads, write_bytes=writes)), transient

    def dp_comm_time_s(self, dp: int, *, zero: int | None = None) -> float:
        """The data-parallel gradient reduction before the optimizer step over ``dp`` replicas,
        then (ZeRO-1/2) the all-gather of the updated parameter shards after it, under ZeRO stage
        ``zero`` (None: the job's). Nothing else of the step's ops depends on ``dp`` or the
        stage (they size the model states only, `TrainingStepParts.at`):
        `simulator.estimator.TrainingEstimator` reuses one step for every ``dp`` and stage."""
        n = self.num_local_params
        zero = self.zero if zero is None else effective_zero_stage(zero, dp)
        grad_bytes = int(n * self.grad_elem_bytes)
        multi_node = self.node is not None and self.tp * self.cp * dp > self.node.num_gpus
        if zero == 0:
            return self.comm_time_s("all_reduce", grad_bytes, dp, network=multi_node)
        comm = self.comm_time_s("reduce_scatter", grad_bytes, dp, network=multi_node)
        if zero in (1, 2):
            comm += self.comm_time_s("all_gather", int(n * self.param_bytes), dp, network=multi_node)
        return comm

    # ---- whole step -----------------------------------------------------------------------
    def embed(self):
        """Token embedding (+ rotary tables or learned positions). Returns (x, cos, sin, ids, emb_w)."""
        m, s, b = self.m, self.s, self.b
        T, h = s.tokens, s.hidden
        cos = sin = None
        ids = b.input("input_ids", T * INT64_BYTES)
        emb_w = self.weight("embed_tokens.weight", s.vocab * h, None)
        x = self.act("embed_tokens.out", s.norm_tokens * h, Role.LAYER_INPUT, None)
        io = T * h * s.act_bytes
        b.op("embed_tokens", "embedding", None, inputs=[ids, emb_w], outputs=[x], saves=[ids],
             cost=self.cost(_mem("embedding", read_bytes=io, write_bytes=io)),
             bwd_cost=self.cost(_mem("embedding_bwd", read_bytes=io, write_bytes=s.vocab * h * s.act_bytes)),
             grad_inputs=[emb_w],
             bwd_workspace_bytes=embedding_backward_workspace_bytes(num_indices=T, hidden_size=h))
        if m.position == "rope":
            # LlamaRotaryEmbedding: cos, sin [b, s, d] in the model dtype, shared by all layers.
            cos = self.act("rotary.cos", T * s.head_dim, Role.OTHER, None)
            sin = self.act("rotary.sin", T * s.head_dim, Role.OTHER, None)
            b.op("rotary_emb", "rotary_emb", None, inputs=[ids], outputs=[cos, sin],
                 fwd_workspace_bytes=3 * T * s.head_dim * FP32_BYTES, has_backward=False)
            if self.inference:
                b.hold(cos)
                b.hold(sin)
        elif m.position == "learned":
            pos_w = self.weight("embed_positions.weight", m.max_position_embeddings * h, None)
            pe = self.act("embed_positions.out", s.seq_len * h, Role.OTHER, None)
            b.op("embed_positions", "embedding", None, inputs=[pos_w], outputs=[pe], grad_inputs=[pos_w])
            x = self.add("embed_add_positions", x, pe, None, s.norm_tokens * h)
            x = self.dropout("embed_dropout", x, None, s.norm_tokens * h)
        return x, cos, sin, ids, emb_w

    def rope_tables(self) -> tuple[int, int]:
        """cos and sin [T, D] in the model dtype as the reference decoder's stem builds them
        (``validate.model.rope_tables``): fp32 angles [T, D/2], their concatenation [T, D], and
        for each of cos and sin the fp32 value then its cast; the angles die when it returns."""
        b, s = self.b, self.s
        rows, d = s.seq_len, s.head_dim

        def fp32(name: str, n: int) -> int:
            return b.tensor(name, n * FP32_BYTES, Role.WORKSPACE, None, requires_grad=False)

        angles = fp32("rotary.angles", rows * d // 2)
        b.op("rotary.angles", "outer", None, inputs=[], outputs=[angles])
        emb = fp32("rotary.emb", rows * d)
        b.op("rotary.emb", "cat", None, inputs=[angles], outputs=[emb])
        tables = []
        for name in ("cos", "sin"):
            v32 = fp32(f"rotary.{name}_fp32", rows * d)
            b.op(f"rotary.{name}_fp32", name, None, inputs=[emb], outputs=[v32])
            t = b.tensor(f"rotary.{name}", rows * d * s.act_bytes, Role.OTHER, None, requires_grad=False)
            b.op(f"rotary.{name}", "to_copy", None, inputs=[v32], outputs=[t])
            tables.append(t)
        self.release("rotary.return", [angles, emb], None)
        return tables[0], tables[1]

    def layers(self, x: int, cos, sin, checkpointing: str = "none") -> int:
        self.mask = None
        if self.needs_mask:
            s = self.s
            self.mask = self.b.tensor("sliding_window_mask", s.batch * s.seq_len * s.seq_len, Role.OTHER, None,
                                      requires_grad=False)
            self.b.op("create_mask", "mask", None, inputs=[], outputs=[self.mask], has_backward=False,
                      cost=self.cost(_mem("mask", read_bytes=0, write_bytes=s.batch * s.seq_len * s.seq_len)))
        recorded: dict[tuple, tuple] = {}  # a layer's variant -> (layer, input, output, start, end)
        for i in range(self.m.num_layers):
            ckpt = self.layer_checkpointing.get(i, checkpointing)
            variant = (ckpt, self.mlp_chunks.get(i, 1))
            if self.repeat_layers and variant in recorded:
                copy = self._repeat_layer(i, x, *recorded[variant])
                if copy is not None:
                    x = copy
                    continue
            start, x_in = self.b.mark(), x
            if ckpt == "full":
                self.b.begin_checkpoint([x] + ([cos, sin] if cos is not None else []))
            x = self.decoder_layer(i, x, cos, sin)
            if ckpt == "full":
                self.b.end_checkpoint()
            recorded.setdefault(variant, (i, x_in, x, start, self.b.mark()))
        if self.mask is not None:  # the model's forward drops its mask when it returns
            self.b.op("release_mask", "release", None, inputs=[self.mask], has_backward=False)
        return x

    def _repeat_layer(self, i: int, x: int, j: int, x_in: int, x_out: int, start, end) -> int | None:
        """Decoder layer ``i`` on ``x`` as a copy of layer ``j`` (recorded on ``x_in`` between the
        marks ``start`` and ``end``, returning ``x_out``): every layer of a model runs the same
        program on the same shapes (`_Program.decoder_layer` reads ``i`` only for names, the
        layer index and the per-layer overrides, which the caller matched). Returns layer
        ``i``'s output, or None (nothing recorded) when the block cannot be copied."""
        b, prefix = self.b, f"layers.{j}."
        t0, o0 = start.num_tensors, start.num_ops
        if not all(t.name.startswith(prefix) for t in b._tensors[t0:end.num_tensors]) or \
                not all(op.name.startswith(prefix) for op in b._ops[o0:end.num_ops]):
            return None
        new = f"layers.{i}."
        tmap = b.repeat(start, end, inputs={x_in: x}, rename=lambda name: new + name[len(prefix):], layer=(j, i))
        if tmap is None:
            return None
        for tid in range(t0, end.num_tensors):
            numel = self.param_numel.get(tid)
            if numel is not None:
                self.num_local_params += numel
                self.param_numel[tmap[tid]] = numel
        return tmap.get(x_out, x if x_out == x_in else x_out)

    def training_step(self) -> Workload:
        self.record_training_step()
        wl = self.b.build(meta=self.meta)
        return _append_optimizer(wl, getattr(self, "_optimizer_op", None))

    @property
    def meta(self) -> dict:
        """The training Workload's meta: its producer and model, and the parameters' element bytes
        and master-weight choice (what a CPU optimizer step's fp32 scratch follows from)."""
        return {"producer": "templates", "model": self.m.name, "param_elem_bytes": self.param_bytes,
                "master_weights": bool(getattr(self.job, "master_weights", False))}

    def record_training_step(self) -> None:
        """Record the step's forward program, the optimizer's states and step (not derived)."""
        m, s, b, job = self.m, self.s, self.b, self.job
        T = s.tokens
        h = s.hidden
        cos = sin = None
        if m.has_embedding:
            x, cos, sin, ids, emb_w = self.embed()
            labels = b.input("labels", T * INT64_BYTES)
        else:
            x = b.input("hidden_in", s.norm_tokens * h * s.act_bytes, Role.INPUT, requires_grad=True)
            if m.position == "rope" and self.impl == "stack":
                cos, sin = self.rope_tables()
        x = self.layers(x, cos, sin, job.checkpointing)
        if m.has_lm_head:
            stack_out = x
            x = self.norm("final_norm", x, None)
            tied = m.tie_word_embeddings and m.has_embedding
            if self.lm_head_chunks > 1:
                if self.impl != "hf" or self.tp > 1:
                    raise UserInputError("lm_head_chunks: a fused linear cross-entropy is modelled for "
                                         "Hugging Face models without tensor parallelism")
                loss = self.fused_linear_cross_entropy(x, labels, emb_w if tied else None)
                # the executor's decoder (validate.model.Decoder.forward) holds the last layer's
                # output in its loop variable until the loss returns
                b.op("final_norm.release_input", "release", None, inputs=[stack_out], has_backward=False)
                b.hold(loss)
                self.optimizer()
                return
            logits = self.linear("lm_head", x, h, s.vocab, None, tokens=T, role=Role.LOGITS,
                                 weight=emb_w if tied else None)
            tv = T * s.vocab
            if self.impl == "megatron":
                loss = self.megatron_loss(logits, labels, tv)
            else:
                loss = self.hf_loss(logits, labels, tv)
        else:
            n = s.norm_tokens * h
            x32 = self.act("loss.x_fp32", n, Role.LOGITS_FP32, None, FP32_BYTES)
            if effective_model_output(m, job) == "kept":
                b.hold(x)  # the caller's variable keeps the stack output alive through backward
            b.op("loss.to_fp32", "loss_to_copy", None, inputs=[x], outputs=[x32],
                 cost=self.cost(_mem("upcast", read_bytes=n * s.act_bytes, write_bytes=n * FP32_BYTES)),
                 bwd_cost=self.cost(_mem("downcast", read_bytes=n * FP32_BYTES, write_bytes=n * s.act_bytes)))
            sq = self.act("loss.pow", n, Role.LOGITS_FP32, None, FP32_BYTES)
            b.op("loss.pow", "loss_pow", None, inputs=[x32], outputs=[sq], saves=[x32],
                 cost=self.cost(_mem("pow", read_bytes=n * FP32_BYTES, write_bytes=n * FP32_BYTES)),
                 bwd_cost=self.cost(_mem("pow_bwd", read_bytes=2 * n * FP32_BYTES, write_bytes=n * FP32_BYTES)),
                 bwd_workspace_bytes=2 * n * FP32_BYTES)  # self.pow(1), 2 * that, then * grad
            loss = self.act("loss.value", 1, Role.LOSS, None, FP32_BYTES)
            b.op("loss.mean", "loss_mean", None, inputs=[sq], outputs=[loss],
                 cost=self.cost(_mem("mean", read_bytes=n * FP32_BYTES, write_bytes=FP32_BYTES)),
                 bwd_cost=self.cost(_mem("mean_bwd", read_bytes=0, write_bytes=n * FP32_BYTES)))
        b.hold(loss)
        self.optimizer()

    def training_step_parts(self, like: TrainingStepParts | None = None) -> TrainingStepParts:
        """The step before its optimizer tail, and that tail's pieces (`TrainingStepParts`).
        ``like``: the parts of the same model and job on another node: its derivation is
        reused (`ProgramBuilder.retimed`) when the programs differ in their costs only."""
        self.record_training_step()
        base, times_s = None, None
        if like is not None and like.derivation is not None:
            times_s = self.b.retimed_times_s(like.base, like.derivation)
            if times_s is not None:
                base = like.base
        if base is None:
            base = self.b.build(meta=self.meta)
        spec = getattr(self, "_optimizer_op", None)
        workspace = None if spec is None else spec[2]
        return TrainingStepParts(base, workspace, _bwd_time_s(base.ops, times_s) if spec is not None else 0.0,
                                 self.dp_comm_time_s, self.model_state_bytes, self.b.derivation, times_s)

    def _params_by_numel(self) -> dict[int, tuple[list[int], list[int]]]:
        """numel -> (the weights of that many elements, their gradient-sized tensors), once built."""
        hit = self.__dict__.get("_by_numel")
        if hit is None:
            hit = {}
            for tid, numel in self.param_numel.items():
                weights, grads = hit.setdefault(numel, ([], []))
                weights.append(tid)
                grads.extend(self.b.leaf_grads.get(tid, ()))
            self._by_numel = hit
        return hit

    def model_state_bytes(self, zero_stage: int, dp: int) -> tuple[dict[int, int], Cost | None]:
        """After the step is built: the bytes of every tensor whose size depends on the ZeRO stage
        and the data-parallel degree (weights, their gradients, the optimizer's states and
        transient) under ``zero_stage`` over ``dp`` replicas, by tid, and the optimizer step's
        cost there (None: no optimizer)."""
        zero = effective_zero_stage(zero_stage, dp)
        out: dict[int, int] = {}
        for numel, (weights, grads) in self._params_by_numel().items():  # a few sizes, many tensors
            w_bytes, g_bytes = self.param_shard_bytes(numel, zero=zero, dp=dp)
            out.update(dict.fromkeys(weights, w_bytes))
            out.update(dict.fromkeys(grads, g_bytes))
        states, step, transient = self.optimizer_at(zero=zero, dp=dp)
        for tid, (_, num_bytes, _) in zip(self.state_tids, states, strict=True):
            out[tid] = num_bytes
        spec = getattr(self, "_optimizer_op", None)
        if spec is not None and spec[2] is not None:
            assert transient, "the optimizer's transient exists at every ZeRO stage and dp or at none"
            out[spec[2]] = transient
        return out, step

    def inference_step(self) -> Workload:
        """Prefill (``decode_context_len`` None) or one decode step, under torch.no_grad.

        Prefill keeps K and V of every layer as the KV cache; the LM head runs on the last
        position only (``logits_to_keep=1`` in ``generate``). A decode step starts with the whole
        cache resident (its bytes for ``decode_context_len`` tokens) and computes one token per
        sequence.
        """
        m, s, b = self.m, self.s, self.b
        if not (m.has_embedding and m.has_lm_head):
            raise UserInputError(f"model: inference needs an embedding and an LM head; {m.name} is a bare stack")
        if self.decode_context_len is not None:
            per_layer = self.kv_bytes_per_layer(self.decode_context_len, s.batch)
            for i in range(m.num_layers):
                b.state(f"layers.{i}.kv_cache", per_layer, Role.KV_CACHE)
        x, cos, sin, ids, emb_w = self.embed()
        x = self.layers(x, cos, sin)
        x = self.norm("final_norm", x, None)
        last = self.act("final_norm.last_token", s.batch * s.hidden, Role.LOGITS, None)
        b.op("slice_last_token", "slice", None, inputs=[x], outputs=[last])
        tied = m.tie_word_embeddings
        logits = self.linear("lm_head", last, s.hidden, s.vocab, None, tokens=s.batch, role=Role.LOGITS,
                             weight=emb_w if tied else None)
        l32 = self.act("logits_fp32", s.batch * s.vocab, Role.LOGITS_FP32, None, FP32_BYTES)
        b.op("logits.float", "to_copy", None, inputs=[logits], outputs=[l32],
             cost=self.cost(_mem("upcast", read_bytes=s.batch * s.vocab * s.act_bytes,
                                 write_bytes=s.batch * s.vocab * FP32_BYTES)))
        b.hold(l32)
        return b.build(meta={"producer": "templates", "model": m.name,
                             "phase": "decode" if self.decode_context_len else "prefill"})

    def kivi_layout(self, context_len: int, batch: int):
        """`kernels.quant.KiviLayout` of one layer's cache on this GPU (tensor parallel shards
        the heads)."""
        from kernels.quant import kivi_layout

        return kivi_layout(num_tokens=context_len, batch=batch, num_kv_heads=self.s.kv_heads,
                           head_dim=self.s.head_dim, kv_dtype=self.job.kv_quant,
                           group_size=self.job.kv_group_size, dtype=self.job.kv_dtype)

    def kv_bytes_per_layer(self, context_len: int, batch: int) -> int:
        """Bytes of one layer's K and V cache for ``batch`` sequences of ``context_len`` tokens
        on this GPU; a KIVI cache's quantized groups and its residual window."""
        s, job = self.s, self.job
        if job.kv_quant == "none":
            from simulator.job import dtype_bytes

            return int(2 * context_len * batch * s.kv_heads * s.head_dim * dtype_bytes(job.kv_dtype))
        if job.kv_quant in KIVI_KV_DTYPES:
            return self.kivi_layout(context_len, batch).total_bytes
        from kernels.quant import kv_quantized_bytes

        return 2 * kv_quantized_bytes(num_tokens=context_len * batch, num_kv_heads=s.kv_heads,
                                      head_dim=s.head_dim, kv_dtype=job.kv_quant, group_size=job.kv_group_size)

    def kv_bytes_per_token(self) -> int:
        """One layer's cache bytes per token on this GPU: a KIVI cache's per token of whole
        groups (its residual window, under one group, is bf16), rounded up."""
        if self.job.kv_quant in KIVI_KV_DTYPES:
            lay = self.kivi_layout(self.kivi_layout(1, 1).group_size, 1)
            return -(-lay.quantized_bytes // lay.group_size)
        return self.kv_bytes_per_layer(1, 1)


def _append_optimizer(wl: Workload, spec) -> Workload:
    """Add the data-parallel gradient reduction and the optimizer step after backward."""
    if spec is None:
        return wl
    step, comm_s, ws = spec
    bwd_s = _bwd_time_s(wl.ops) if comm_s else 0.0
    tail = optimizer_tail_ops(len(wl.ops), step=step, workspace=ws, comm_s=comm_s, bwd_s=bwd_s)
    return Workload(tensors=wl.tensors, ops=wl.ops + tail, initial=wl.initial, meta=wl.meta)


def _bwd_time_s(ops, times_s: tuple[float | None, ...] | None = None) -> float:
    """Backward's compute time: the durations of ``ops`` (``times_s``, when given, in their place)."""
    from simulator.workload import Phase

    if times_s is None:
        times_s = tuple(op.time_s for op in ops)
    return sum(t or 0.0 for op, t in zip(ops, times_s, strict=True) if op.phase == Phase.BWD)


def optimizer_tail_ops(first_oid: int, *, step: Cost, workspace: int | None, comm_s: float,
                       bwd_s: float) -> tuple:
    """The ops after backward: the exposed part of the data-parallel gradient reduction (when
    there is one) and the optimizer step, numbered from ``first_oid``."""
    from simulator.workload import OpSpec, Phase

    ops = []
    if comm_s:
        # Gradient buckets are reduced while backward still runs (DDP, ZeRO): only what does not
        # fit under the backward compute, and at least the last bucket's share, is exposed.
        exposed = max(comm_s - bwd_s, comm_s * DP_LAST_BUCKET_FRAC)
        ops.append(OpSpec(first_oid, "dp.grad_reduce", "dp_collective", Phase.OPTIM, None,
                          op_class="comm", time_s=exposed))
    allocs = frees = (workspace,) if workspace is not None else ()
    ops.append(OpSpec(first_oid + len(ops), "optimizer.step", "optimizer", Phase.OPTIM, None,
                      hbm_bytes=step.hbm_bytes, op_class="memory", allocs=allocs, frees=frees,
                      time_s=step.time_s))
    return tuple(ops)


@dataclass(frozen=True)
class TrainingStepParts:
    """One training step split before its optimizer tail: ``head`` (every op up to the end of
    backward), the optimizer's workspace tensor, the backward compute time that hides the
    gradient reduction, the reduction's time as a function of the data-parallel degree and the
    ZeRO stage, and the model states' sizes and the optimizer step's cost as a function of
    both (`_Program.model_state_bytes`). The ops up to the end of backward depend on neither:
    ``workload_at(zero_stage, dp)`` is `training_workload`'s result for the job at that stage
    and ``dp`` (the head's tensors resized, its own tail).

    Parts re-timed for a second node (`_Program.training_step_parts` with ``like``) keep the
    first node's ``base`` and this node's durations of its ops, ``times_s``: the ops differ
    in nothing else (`ProgramBuilder.retimed_times_s` checks it), and ``head``, this node's
    ops, is made from the two only when asked for (a search sums the durations and reads the
    FLOPs and the memory of ``base``, `simulator.estimator.TrainingEstimator`)."""

    base: Workload
    """The head's tensors and ops; their durations are this node's unless ``times_s`` is given."""
    workspace: int | None
    bwd_s: float
    dp_comm_time_s: Callable[..., float]
    model_state_bytes: Callable[[int, int], tuple[dict[int, int], Cost | None]]
    derivation: Derivation | None = None
    times_s: tuple[float | None, ...] | None = None
    """This node's duration of each of ``base``'s ops; None: ``base``'s own."""

    @cached_property
    def head(self) -> Workload:
        """Every op up to the end of backward, with this node's durations."""
        return self.base if self.times_s is None else with_times_s(self.base, self.times_s)

    def at(self, zero_stage: int, dp: int) -> tuple[dict[int, int], tuple]:
        """(the requested bytes of the tensors whose size depends on the ZeRO stage and ``dp``,
        by tid; the ops after backward) of the job at ``zero_stage`` over ``dp`` replicas."""
        sizes, step = self.model_state_bytes(zero_stage, dp)
        if step is None:
            return sizes, ()
        comm_s = self.dp_comm_time_s(dp, zero=zero_stage)
        return sizes, optimizer_tail_ops(len(self.base.ops), step=step, workspace=self.workspace,
                                         comm_s=comm_s, bwd_s=self.bwd_s if comm_s else 0.0)

    def workload_at(self, zero_stage: int, dp: int) -> Workload:
        sizes, tail = self.at(zero_stage, dp)
        h = self.head
        tensors = tuple(t if sizes.get(t.tid, t.num_bytes) == t.num_bytes else replace(t, num_bytes=sizes[t.tid])
                        for t in h.tensors)
        return Workload(tensors=tensors, ops=h.ops + tail, initial=h.initial, meta=h.meta)


def training_workload(model, job, node=None, *, layer_checkpointing=None, lm_head_chunks: int = 1,
                      mlp_chunks=None) -> Workload:
    """The analytical Workload of one training step of ``model`` under ``job`` on one GPU.

    ``node`` (a hwmodels NodeSpec) adds a predicted duration to every op and collective.
    ``layer_checkpointing`` maps a decoder layer index to "none" | "selective" | "full" for
    that layer (a plan's per-layer checkpoints); layers not in it follow ``job.checkpointing``.
    ``lm_head_chunks`` > 1: the LM head and loss as a fused linear cross-entropy in that many
    token chunks; ``mlp_chunks`` maps a layer index to the token chunks of its tiled MLP.
    """
    prog = _Program(model, job, job.parallelism, node, grads_persist=job.grads_persist)
    prog.layer_checkpointing = dict(layer_checkpointing or {})
    prog.lm_head_chunks = int(lm_head_chunks)
    prog.mlp_chunks = {int(k): int(v) for k, v in (mlp_chunks or {}).items() if int(v) > 1}
    return prog.training_step()


def training_step_parts(model, job, node=None, *, like: TrainingStepParts | None = None) -> TrainingStepParts:
    """`training_workload`'s step split before the optimizer tail (`TrainingStepParts`);
    ``like``: the same model and job's parts on another node, to reuse its derivation."""
    return _Program(model, job, job.parallelism, node, grads_persist=job.grads_persist).training_step_parts(like)


def gpu_link(node, *, network: bool = False):
    """The link collectives between GPUs use: NVLink (or C2C) inside a node, PCIe where GPUs have
    no NVLink, the network NIC across nodes (``network=True``)."""
    from hwmodels.catalog import get_link

    if network:
        nics = [link for link in node.links.values() if link.kind == "network"]
        return nics[0] if nics else get_link("ib-ndr-400")
    for kind in ("nvlink", "c2c", "pcie"):
        for link in node.links.values():
            if link.kind == kind:
                return link
    raise UserInputError(f"hardware: {node.name} has no link between GPUs")


def prefill_workload(model, job, node=None, *, batch: int | None = None, prompt_len: int | None = None) -> Workload:
    """Forward-only Workload of the prefill of ``job`` (an InferJob); overrides for sweeps."""
    prog = _Program(model, job, job.parallelism, node, inference=True,
                    seq_len=job.prompt_len if prompt_len is None else prompt_len,
                    batch=job.batch if batch is None else batch)
    return prog.inference_step()


def decode_workload(model, job, node=None, *, context_len: int, batch: int | None = None) -> Workload:
    """One decode step of ``job``'s batch with ``context_len`` tokens already cached."""
    prog = _Program(model, job, job.parallelism, node, inference=True, seq_len=job.parallelism.cp,
                    batch=job.batch if batch is None else batch, decode_context_len=context_len)
    return prog.inference_step()


def kv_cache_bytes_per_token(model, job) -> int:
    """KV-cache bytes one token occupies on one GPU (all layers; tensor parallel shards heads)."""
    prog = _Program(model, job, job.parallelism, None, inference=True, seq_len=job.parallelism.cp, batch=1)
    return prog.kv_bytes_per_token() * model.num_layers
