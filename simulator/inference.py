"""Replay of an inference placement: prefill time, decode step time and per-tier peaks.

Models: serving ``batch`` sequences of ``prompt_len`` tokens then ``gen_len`` decode steps with,
per decoder layer, its KV cache in HBM or on a host-side tier (host DRAM, a CXL card, an NVMe
drive) and its weights resident or streamed from one, for two decode engines:

* ``static`` (tierplan's executor): KV buffers of the final length allocated once per layer in
  their tier. Prefill runs one sequence at a time (whole prompt, or chunks of
  ``prefill_chunk_len`` whose attention reads the cache written so far); a host layer's K,V
  are copied D2H on a copy stream after the layer, overlapped with the next layers. A decode
  step copies a host layer's cached K,V [:ctx] H2D into one of ``num_staging_buffers``
  rotating staging buffers, started ``prefetch_lookahead_layers`` layers ahead on the H2D
  stream; a buffer is refilled only once the attention that read it and the D2H write-back of
  the new token's k,v (out of that buffer) are done. Streamed weights go H2D into rotating
  weight buffers (as many as the staging buffers, one layer's weights each) the same way.
  Attention off the GPU (``attention_on``): a layer whose KV is on the host may attend on the
  host CPU, one whose KV is in a computational storage drive inside the drive (an unquantized
  KV only: a quantized layer is dequantized and attended on the GPU). Its decode step
  fetches no KV: the layer writes its new k,v into its staging slot as before, sends them and
  its query [B, H, 1, D] out, the CPU (the host thread, which waits for them) or the drive
  streams the layer's K and V out of its own memory (host DRAM shared with the copies, the
  drive's flash at its internal bandwidth) at its attention rate, and the output comes back H2D
  before the rest of the layer: on the critical path, overlapped only with the other layers'
  fetches (before it waits, the host issues the next KV fetch whose buffer is free).
* ``hf`` (transformers ``DynamicCache``): every step grows each layer's K and V by
  ``torch.cat`` (reads the old cache, writes one token longer; the old and the new copy live
  together for a moment). Its ``offloading=True`` form as transformers 5.17 does it
  (cache_utils.py ``DynamicCache.update``): before a layer's update the default stream waits for
  the prefetch stream, then layer l+1 is prefetched whole (``.to(device, non_blocking=True)``)
  on the prefetch stream, which waits for nothing (5.2x added a wait for the default stream),
  the layer is concatenated, and the whole grown layer is copied back to the host
  (``.to("cpu", non_blocking=True)``) on the default stream, i.e. serialized with the compute.
  A non-blocking copy to the CPU pins its destination (ATen ``_to_copy``: ``pin_out``) through
  PyTorch's caching host allocator, which rounds each block up to a power of two and keeps
  freed blocks: the blocks of the prompt length and of the grown length both stay pinned, and a
  block is reused only once its copy's event has completed (``HF_PINNED_EXTRA_BLOCKS_PER_LAYER``).

A layer's KV may be stored quantized (``kv_quant`` int8 / int4, the format the job accepts:
``kernels.quant.kivi_layout``, KIVI's per-channel keys and per-token values with the newest
tokens that do not fill a key group kept in bf16 on the GPU): a host layer's pool and fetch
carry the quantized bytes only; before attention the GPU dequantizes the layer into one bf16
buffer (a memory-bound kernel, ``kernels.quant.kivi_dequantize_cost`` at the profile's fitted dequantize (else memory)
rate; attention then reads bf16 as for an unquantized layer); a resident quantized layer is
dequantized the same way every step. Prefill quantizes each pass's whole groups after the
layer (``kivi_quantize_cost``), and a host layer's D2H carries them quantized. A decode step
writes nothing back for a quantized layer: its new tokens join the residual window, and a
group is quantized and written once every G steps (not in the median step, which is priced).

Execution: two streams in max-plus. The host issues every kernel at its engine's measured host
cost (``hwmodels.host_overhead``: a layer's cost spread over its kernels; HF eager, HF offloaded,
the static engine eager (its prefill) or through CUDA graphs (its decode step), with SDPA kept off
cuDNN as the engines run it, or in torch's default order for older records); the GPU runs each
kernel at its roofline (decode GEMVs and one-token attention at their measured rates, prefill ops
by the node's profile, prefill attention at the flash fit) and no earlier than its issue.
A timed prefill that no warm-up preceded (the HF engine's: it times ``generate``'s first call)
starts with the host's first-forward cost of a fresh process (``hwmodels.host_overhead``:
kernel modules loaded on first launch, cuBLASLt's per-shape setup, the allocator's first
cudaMalloc of each block), the GPU idle meanwhile.
Kernels are folded into per-layer segments (``fold``: exact for a segment the copies do not
interrupt); the DES schedule holds a host stream, the compute stream, and the copies on the H2D /
D2H streams sharing the host link (and the both-ways ceiling) fluidly, with the lookahead and
buffer rotation as dependencies; stalls appear when the link is slower than the compute.
Assumes: one GPU, tp = cp = 1; the executor's buffers are allocated once (no fragmentation:
expandable segments); the batch's sequences decode together; greedy sampling costs nothing.
Ignores: the CPU's attention threads slowing the issuing thread beyond the wait itself; splitting
one layer's attention between the GPU and the CPU (log-sum-exp merge: not modelled yet); the first steps' one-off costs (pinned blocks allocated, cuDNN plans: the measured
median leaves out 2 steps), the CPU side of the copies beyond their issue, NVMe file-system
overhead, host page-cache effects, host speed differences between machines.
Source: transformers 5.x src/transformers/cache_utils.py (DynamicLayer.update,
DynamicCache.update / prefetch / offload); PyTorch aten/src/ATen/native/TensorConversions.cpp
(non-blocking device-to-CPU copies pin their output) and aten/src/ATen/core/CachingHostAllocator.h
(power-of-two rounding); the launch figures of validate/measurements/h200/microbench-h200-2026-11-28.json
(``launch_overhead``: gpu_back_to_back 3.42 us); hwmodels/host_overhead.py's sources; the engines
validate/infer_executor.py and validate/infer_hf.py; InstInfer (Pan et al., arXiv 2409.04992) for
attention inside a computational storage drive (the mechanism: only the query and the output cross
the links, the KV is read at the flash's internal bandwidth; the drive's figures are the preset's).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hwmodels.units import UserInputError

GPU_BACK_TO_BACK_KERNEL_S = 3.42e-6
"""Shortest GPU time of one eager kernel: back-to-back empty kernels on the H200
(validate/measurements/h200/microbench-h200-2026-11-28.json, launch_overhead gpu_back_to_back)."""
HF_PINNED_EXTRA_BLOCKS_PER_LAYER = 1.0
"""Pinned blocks of the grown K,V size the caching host allocator holds beyond one per tensor
under DynamicCache offloading, per layer: a freed block is reusable only once its copy's event
has completed, and the host asks again before that. Fitted on Llama-3.1-8B 32K batch 1 (30 extra
blocks of 32 layers over 16 steps, in both smoke runs); the held-out 128K batch-1 run had 33."""
ENGINE_ATTENTION_OP_CLASS = "attention_fwd.flash"
"""Prefill attention as both engines run it: SDPA kept off cuDNN attention
(validate.infer_executor.SDPA_BACKENDS: flash first), timed by the profile's flash fit."""
CUDA_GRAPHS_EXTRA_BYTES = 64 * 2**20
"""HBM the static engine holds more with its decode graphs captured: measured 0.337 GB more
allocated at the 32K batch-1 cell (graphed against eager, both placements), less the [T, q] copy
of the refactored pass (0.268 GB): 64 MiB, taken as the cuBLAS workspaces of the capture stream
(two handles of 32 MiB: assumed)."""
STATIC_DECODE_GRAPHS = True
"""The static engine's decode step replays CUDA graphs around an eager attention
(validate.infer_executor, graphs on by default); its prefill stays eager."""
KV_TIERS = ("hbm", "host", "cxl", "nvme", "csd")
PARAM_TIERS = ("hbm", "host", "cxl", "nvme")
ATTENTION_ON = {"gpu": KV_TIERS, "cpu": ("host",), "csd": ("csd",)}
"""Where a layer's decode attention may run, by the tiers its KV cache may then live in: the GPU
anywhere (off-HBM KV fetched into a staging buffer), the host CPU over host DRAM, a
computational storage drive over its own flash."""


@dataclass(frozen=True)
class LayerPlacement:
    """Where one decoder layer's KV cache and weights live, and where its decode attention runs."""

    kv_tier: str = "hbm"  # one of KV_TIERS
    params_tier: str = "hbm"  # one of PARAM_TIERS: resident or streamed from this tier
    kv_quant: str = "none"  # "none" (the job's kv_dtype) or the job's kv_quant (KIVI layout)
    attention_on: str = "gpu"  # a key of ATTENTION_ON


@dataclass(frozen=True)
class Placement:
    """Per-layer placements plus the copy machinery of the static engine."""

    layers: tuple[LayerPlacement, ...]
    num_staging_buffers: int = 2
    prefetch_lookahead_layers: int = 1

    def count(self, *, kv: str | None = None, params: str | None = None, attention: str | None = None) -> int:
        return sum(1 for lp in self.layers if (kv is None or lp.kv_tier == kv)
                   and (params is None or lp.params_tier == params)
                   and (attention is None or lp.attention_on == attention))


@dataclass(frozen=True)
class InferReplay:
    """What the replay predicts for one placement."""

    engine: str
    prefill_time_s: float
    decode_step_time_s: float  # at ``context_len``
    context_len: int  # KV length the decode step attends (before its new token)
    step_time_s: float  # prefill + gen_len decode steps at the mean context
    decode_tokens_per_s: float
    tier_peak_bytes: dict[str, int]  # hbm allocated peak (runtime workspace included), host pinned, cxl, nvme
    hbm_prefill_peak_bytes: int
    hbm_decode_peak_bytes: int
    staging_buffer_bytes: int
    decode_compute_s: float  # the decode step's compute alone (no copies)
    decode_stall_s: float  # compute time lost waiting for copies in the decode step
    decode_link_bytes: int  # bytes over the host-side links in one decode step (both ways)
    model_flops: float  # prefill + gen_len decode steps
    feasible: bool
    binding: str  # "" when feasible, else the constraint that does not fit, one line
    replayed_by: str = "simulator.inference (des)"
    breakdown_bytes: dict[str, int] = field(default_factory=dict)  # HBM at the peak, by kind


# ---- sizes -------------------------------------------------------------------------------------


def lossless_job(job):
    """``job`` with its KV unquantized: the job's ``kv_quant`` names the format a placement may
    choose per layer (``LayerPlacement.kv_quant``), not how every layer is stored; the
    workloads the replay prices are those of the unquantized cache."""
    if job.kv_quant == "none":
        return job
    return job.model_copy(update={"kv_quant": "none", "kv_group_size": None})


def kv_quant_layout(model, job, *, num_tokens: int, batch: int, kv_quant: str | None = None):
    """`kernels.quant.KiviLayout` of one layer holding ``num_tokens`` tokens of ``batch``
    sequences in ``kv_quant`` (default the job's), group size the job's."""
    from kernels.quant import kivi_layout

    return kivi_layout(num_tokens=num_tokens, batch=batch, num_kv_heads=model.num_kv_heads, head_dim=model.head_dim,
                       kv_dtype=kv_quant or job.kv_quant, group_size=job.kv_group_size, dtype=job.kv_dtype)


def kv_layer_bytes(model, job, *, num_tokens: int, batch: int, kv_quant: str = "none") -> int:
    """One layer's K and V for ``batch`` sequences of ``num_tokens`` tokens, unquantized (the
    job's kv_dtype) or in ``kv_quant`` (quantized tokens and the residual window)."""
    from simulator.templates import kv_cache_bytes_per_token

    if kv_quant != "none":
        return kv_quant_layout(model, job, num_tokens=num_tokens, batch=batch, kv_quant=kv_quant).total_bytes
    return kv_cache_bytes_per_token(model, lossless_job(job)) // model.num_layers * num_tokens * batch


def kv_residual_buffer_bytes(model, job, *, batch: int) -> int:
    """A quantized layer's residual window buffer on the GPU: K and V of one key group's tokens
    (the window holds up to G - 1 between steps, G while a step appends the token that fills it)."""
    g = kv_quant_layout(model, job, num_tokens=0, batch=batch).group_size
    return kv_layer_bytes(model, job, num_tokens=g, batch=batch)


def kv_quant_time_s(model, job, node, *, num_tokens: int, batch: int, quantize: bool = False,
                    kv_quant: str | None = None) -> float:
    """GPU time to dequantize one quantized layer holding ``num_tokens`` (its whole groups and
    residual window into the bf16 buffer), or (``quantize``) to quantize its whole groups."""
    from hwmodels.compute import compute_time_s
    from kernels.quant import kivi_dequantize_cost, kivi_dequantize_fit_class, kivi_quantize_cost

    lay = kv_quant_layout(model, job, num_tokens=num_tokens, batch=batch, kv_quant=kv_quant)
    if quantize and not lay.num_quantized_tokens:
        return 0.0
    cost = (kivi_quantize_cost if quantize else kivi_dequantize_cost)(lay, dtype=job.kv_dtype)
    op_class = cost.op_class if quantize else kivi_dequantize_fit_class(lay)
    return compute_time_s(flops=cost.flops, hbm_bytes=cost.hbm_bytes, op_class=op_class, dtype=job.kv_dtype,
                          node=node)


def _with_extra_s(seg: Segments, extra_s: list[float]) -> Segments:
    """``seg`` with ``extra_s[i]`` more GPU time in layer i's part from attention on (a
    quantized layer's dequantize before its attention, or its quantize after)."""
    if not any(extra_s):
        return seg
    post = tuple(Seg(gpu_s=p.gpu_s + x, lead_s=p.lead_s, host_s=p.host_s) if x else p
                 for p, x in zip(seg.post, extra_s, strict=True))
    return replace(seg, post=post)  # post_after_attention kept: only unquantized layers leave the GPU


def layer_weight_bytes(model, job) -> int:
    """One decoder layer's parameters in the job's dtype."""
    from simulator.job import dtype_bytes

    return int(model.num_params_per_layer() * dtype_bytes(job.param_dtype))


def other_weight_bytes(model, job) -> int:
    """Parameters outside the decoder layers (embedding, final norm, LM head)."""
    from simulator.job import dtype_bytes

    return int((model.num_params() - model.num_layers * model.num_params_per_layer())
               * dtype_bytes(job.param_dtype))


def pinned_block_bytes(num_bytes: int) -> int:
    """A block of PyTorch's caching host allocator: the request rounded up to a power of two."""
    return 0 if num_bytes <= 0 else 1 << (int(num_bytes) - 1).bit_length()


# ---- compute -----------------------------------------------------------------------------------


def _kernel_gpu_s(op, node, dtype: str) -> float:
    """GPU time of one decode kernel: its roofline without fitted latencies, at least the
    back-to-back kernel time."""
    from hwmodels.compute import kernel_fit
    from hwmodels.host_overhead import decode_rates
    from hwmodels.op_classes import FLOP_CLASSES

    mem = kernel_fit("memory", dtype=dtype, node=node).bandwidth_bytes_per_s
    assert mem is not None  # memory fits are byte rates
    rates = decode_rates(node)
    if op.kind == "linear":
        mem = rates.gemm_bytes_per_s
    t = op.hbm_bytes / mem
    if op.kind == "decode_attention":
        t += rates.attention_latency_s
    if op.op_class in FLOP_CLASSES and op.executed_flops > 0:
        rate = kernel_fit(op.op_class, dtype=dtype, node=node).flops_per_s
        assert rate is not None  # FLOP classes fit a FLOP rate
        t = max(t, op.executed_flops / rate)
    return max(t, GPU_BACK_TO_BACK_KERNEL_S)


def _is_kernel(op) -> bool:
    return op.hbm_bytes > 0 or op.executed_flops > 0


def launch_pipeline_s(kernels_gpu_s: list[float], *, launch_s: float | list[float]) -> list[float]:
    """End time of each kernel when the host issues kernel i in ``launch_s`` (one figure for
    all, or one per kernel) after the one before and the GPU runs them in order, each no earlier
    than its issue: ``start_i = max(H_i, end_{i-1})`` with ``H_i`` the host's cumulative time."""
    costs = launch_s if isinstance(launch_s, list) else [launch_s] * len(kernels_gpu_s)
    ends: list[float] = []
    gpu = host = 0.0
    for dur, h in zip(kernels_gpu_s, costs, strict=True):
        host += h
        gpu = max(host, gpu) + dur
        ends.append(gpu)
    return ends


@dataclass(frozen=True)
class Seg:
    """A run of kernels as the two streams of eager execution see it: the host issues it in
    ``host_s``; the GPU runs it in ``gpu_s`` once it may start, which is no earlier than
    ``lead_s`` after the host began issuing it (the max-plus of the pipeline folded: a segment
    started at host time H0 with the GPU free at G0 ends at ``max(G0, H0 + lead_s) + gpu_s``)."""

    gpu_s: float
    lead_s: float = 0.0
    host_s: float = 0.0


def fold(kernels: list[tuple[float, float]]) -> Seg:
    """`Seg` of kernels given as (host issue s, GPU s) in program order: the GPU may start the
    run ``lead_s = max_k (H_k - G_<k)`` after the host began it (``H_k`` the host time through
    kernel k, ``G_<k`` the GPU time of the kernels before it)."""
    host = gpu = lead = 0.0
    for h, g in kernels:
        host += h
        lead = max(lead, host - gpu)
        gpu += g
    return Seg(gpu_s=gpu, lead_s=lead, host_s=host)


@dataclass(frozen=True)
class Segments:
    """Compute of one pass split where the copies join it: before the layers, per layer the
    part before attention (norm, projections, rotary) and from attention on, after the layers."""

    embed: Seg
    pre: tuple[Seg, ...]
    post: tuple[Seg, ...]
    head: Seg
    model_flops: float
    post_after_attention: tuple[Seg, ...] = ()  # post without its attention kernel (attention off the GPU)

    @property
    def order(self) -> list[Seg]:
        return [self.embed, *(s for pair in zip(self.pre, self.post, strict=True) for s in pair), self.head]

    @property
    def total_s(self) -> float:
        """The pass with no copies: host and GPU pipelined."""
        return run_segments(self.order)

    @property
    def gpu_s(self) -> float:
        return sum(s.gpu_s for s in self.order)

    @property
    def host_s(self) -> float:
        return sum(s.host_s for s in self.order)


def run_segments(segs: list[Seg]) -> float:
    """End of ``segs`` run back to back on one host and one GPU stream."""
    host = gpu = 0.0
    for s in segs:
        gpu = max(gpu, host + s.lead_s) + s.gpu_s
        host += s.host_s
    return max(gpu, host)


def _segment_keys(ops) -> list[tuple[str, int | None]]:
    keys: list[tuple[str, int | None]] = []
    seen_layer = False
    attn: set[int] = set()
    for op in ops:
        if op.layer is None:
            keys.append(("head" if seen_layer else "embed", None))
            continue
        seen_layer = True
        if op.kind in ("sdpa", "decode_attention"):
            attn.add(op.layer)
        keys.append(("post" if op.layer in attn else "pre", op.layer))
    return keys


def _segments(ops, gpu_s: list[float], host_s: list[float], num_layers: int, model_flops: float) -> Segments:
    """Segments of kernels ``ops`` (program order) with their GPU and host issue times."""
    runs: dict[tuple[str, int | None], list[tuple[float, float]]] = {}
    for key, g, h in zip(_segment_keys(ops), gpu_s, host_s, strict=True):
        runs.setdefault(key, []).append((h, g))
    empty = Seg(0.0)
    return Segments(
        embed=fold(runs["embed", None]) if ("embed", None) in runs else empty,
        pre=tuple(fold(runs["pre", i]) if ("pre", i) in runs else empty for i in range(num_layers)),
        post=tuple(fold(runs["post", i]) if ("post", i) in runs else empty for i in range(num_layers)),
        head=fold(runs["head", None]) if ("head", None) in runs else empty,
        model_flops=model_flops,
        post_after_attention=tuple(fold(runs["post", i][1:]) if ("post", i) in runs else empty
                                   for i in range(num_layers)),
    )


def host_issue_s(ops, cost) -> list[float]:
    """Host seconds to issue each op of a pass (``cost``: a ``hwmodels.host_overhead.EngineHostCost``):
    a layer's ``per_layer_s`` spread evenly over its kernels, ``fixed_s`` over the others."""
    per_layer: dict[int, int] = {}
    other = 0
    for op in ops:
        if op.layer is None:
            other += 1
        else:
            per_layer[op.layer] = per_layer.get(op.layer, 0) + 1
    return [cost.fixed_s / other if op.layer is None else cost.per_layer_s / per_layer[op.layer] for op in ops]


def engine_host_cost(node, engine: str, *, offloaded: bool = False, graphs: bool = False,
                     sdpa_cudnn: bool = False):
    """The host cost of one pass (``hwmodels.host_overhead.EngineHostCost``) of ``engine`` on
    ``node``'s host: HF resident or offloaded, the static engine eager, or its decode step through
    CUDA graphs; ``sdpa_cudnn``: SDPA in torch's default order (cuDNN attention's plan per KV
    length on the host) instead of kept off cuDNN as the engines run it."""
    from hwmodels.host_overhead import eager_host_costs

    return eager_host_costs(node).engine(engine, offloaded=offloaded, graphs=graphs, sdpa_cudnn=sdpa_cudnn)


def decode_segments(model, job, node, *, context_len: int, batch: int, offloaded: bool = False,
                    graphs: bool = STATIC_DECODE_GRAPHS, sdpa_cudnn: bool = False) -> Segments:
    """Compute of one decode step (``batch`` tokens, attention over ``context_len + 1`` keys):
    each kernel issued at the engine's host cost, run at its roofline (the HF engine's
    ``torch.cat`` of K and V is a task of its own); under tensor parallelism the layers'
    collectives run in program order on the same stream, at ``hwmodels.collectives``' time."""
    from simulator.templates import decode_workload

    wl = decode_workload(model, lossless_job(job), None, context_len=context_len + 1, batch=batch)
    comm_s: dict[int, float] = {}
    if any(op.op_class == "comm" for op in wl.ops):  # tp > 1: the same ops, collectives timed
        timed = decode_workload(model, lossless_job(job), node, context_len=context_len + 1, batch=batch)
        comm_s = {i: float(t.time_s or 0.0) for i, (op, t) in enumerate(zip(wl.ops, timed.ops, strict=True))
                  if op.op_class == "comm"}
    keep = [i for i, op in enumerate(wl.ops) if _is_kernel(op) or i in comm_s]
    ops = [wl.ops[i] for i in keep]
    gpu = [comm_s[i] if i in comm_s else _kernel_gpu_s(wl.ops[i], node, job.param_dtype) for i in keep]
    host = host_issue_s(ops, engine_host_cost(node, job.engine, offloaded=offloaded, graphs=graphs,
                                              sdpa_cudnn=sdpa_cudnn))
    return _segments(ops, gpu, host, model.num_layers, sum(op.model_flops for op in wl.ops))


def _prefill_pass(model, job, node, *, batch: int, prompt_len: int, past_len: int = 0,
                  offloaded: bool = False, sdpa_cudnn: bool = False) -> Segments:
    """One prefill pass of ``prompt_len`` new tokens per sequence (after ``past_len`` cached
    ones: a chunk), its ops timed by the node's profile (attention by the backend the engines
    run: flash with SDPA kept off cuDNN, cuDNN's in torch's default order) and issued eagerly at
    the engine's host cost."""
    from hwmodels.compute import compute_time_s
    from simulator.templates import prefill_workload

    wl = prefill_workload(model, lossless_job(job), node, batch=batch, prompt_len=prompt_len)
    times = [float(op.time_s or 0.0) for op in wl.ops]
    if not sdpa_cudnn:
        variant = f"{ENGINE_ATTENTION_OP_CLASS}.d64" if model.head_dim <= 64 else ENGINE_ATTENTION_OP_CLASS
        times = [compute_time_s(flops=op.executed_flops, hbm_bytes=op.hbm_bytes, op_class=variant,
                                dtype=job.param_dtype, node=node) if op.kind == "sdpa" else t
                 for op, t in zip(wl.ops, times, strict=True)]
    flops = sum(op.model_flops for op in wl.ops)
    if past_len:
        from kernels.attention import attention_fwd_cost

        past = attention_fwd_cost(batch=batch, seq_len_q=prompt_len, seq_len_kv=past_len,
                                  num_heads=model.num_heads, num_kv_heads=model.num_kv_heads,
                                  head_dim=model.head_dim, causal=False, dtype=job.param_dtype)
        extra = compute_time_s(flops=past.flops, hbm_bytes=past.hbm_bytes,
                               op_class=past.op_class if sdpa_cudnn else ENGINE_ATTENTION_OP_CLASS,
                               dtype=job.param_dtype, node=node)
        times = [t + extra if op.kind == "sdpa" else t for op, t in zip(wl.ops, times, strict=True)]
        flops += past.flops * model.num_layers
    host = host_issue_s(wl.ops, engine_host_cost(node, job.engine, offloaded=offloaded, sdpa_cudnn=sdpa_cudnn))
    return _segments(wl.ops, times, host, model.num_layers, flops)


def _activation_peak_bytes(wl) -> int:
    """Bytes at the walk's peak beyond the weights and the KV cache (the placement decides
    where those live)."""
    from simulator.workload import walk_memory

    walk = walk_memory(wl)
    by_role = walk.peak_breakdown_bytes
    return walk.peak_bytes - by_role.get("weight", 0) - by_role.get("kv_cache", 0)


def static_prefill_activation_bytes(model, job, *, num_tokens: int) -> int:
    """HBM beyond weights and KV buffers at the peak of one static-engine prefill pass of
    ``num_tokens`` tokens of one sequence: inside a layer's MLP (validate.infer_executor
    ``_pass`` / ``_post`` and validate.model ``DecoderLayer._mlp``) the layer input x, its q, k,
    v and SDPA output (held by the pass until the next layer), the output's [T, q] reshaped copy
    (held by ``_post``), the MLP's normed input, gate, up, silu(gate), their product (all held
    until the MLP returns) and the down projection's output; the rotary tables (final length)
    beside them. The norms' fp32 temporaries (two [T, h] fp32) come earlier and are smaller than
    the MLP's four [T, f]. (The engine before its decode graphs held one [T, q] less.)"""
    from simulator.job import dtype_bytes

    e = dtype_bytes(job.param_dtype)
    h, f = model.hidden_size, model.intermediate_size
    per_token = 3 * h + 3 * model.q_size + 2 * model.kv_size + 4 * f  # x, n, down out; q, a, a'; k, v; 4 MLP
    rope = 2 * (job.prompt_len + job.gen_len) * model.head_dim
    return int(e * (num_tokens * per_token + rope))


def hf_prefill_activation_bytes(model, job, *, batch: int, num_tokens: int) -> int:
    """HBM beyond weights and KV at the peak of transformers' prefill forward of ``batch``
    sequences of ``num_tokens``: inside a layer's MLP (``LlamaMLP``: silu(gate) and up live
    with their product, gate freed after the silu) while the model's ``inputs_embeds``, the
    caller's layer input (LlamaModel's loop variable), the post-attention residual and the
    normed MLP input are alive: 4 [T, h] and 3 [T, f] per sequence."""
    from simulator.job import dtype_bytes

    e = dtype_bytes(job.param_dtype)
    return int(e * batch * num_tokens * (4 * model.hidden_size + 3 * model.intermediate_size))


@dataclass(frozen=True)
class StaticMemoryTerms:
    """The static engine's HBM and host bytes as a sum of fixed and per-layer terms: what the
    replay adds up and what the planner's MIP constrains (one formula)."""

    fixed_prefill_bytes: int  # non-layer weights, prefill activations, runtime workspace
    fixed_decode_bytes: int  # non-layer weights, decode activations, runtime workspace
    kv_layer_bytes: int  # one layer's K,V buffers of the final length (whole batch)
    weight_layer_bytes: int  # one layer's weights
    staging_bytes: int  # all KV staging buffers, when any layer's KV is off HBM (prefill writes into them)
    weight_buffer_bytes: int  # all weight buffers, when any layer's weights are streamed
    # layers stored quantized (the job's kv_quant; 0 when it is none)
    kv_q_layer_bytes: int = 0  # a resident quantized layer: its final-length store + residual window
    kv_q_off_layer_bytes: int = 0  # a quantized layer off HBM: its residual window
    staging_q_bytes: int = 0  # all staging buffers sized for a quantized store (no unquantized layer off HBM)
    dequant_bytes: int = 0  # the one bf16 K,V buffer of the final length quantized layers dequantize into

    def hbm_bytes(self, *, num_kv_off: int, num_streamed: int, num_layers: int, num_q_hbm: int = 0,
                  num_q_off: int = 0) -> tuple[int, int]:
        """(prefill, decode) HBM peaks of a placement with these counts (``num_kv_off`` counts
        every layer off HBM, ``num_q_off`` of them quantized; ``num_q_hbm`` resident quantized)."""
        staging = (self.staging_bytes if num_kv_off > num_q_off else self.staging_q_bytes if num_q_off else 0)
        fixed = (self.kv_layer_bytes * (num_layers - num_kv_off - num_q_hbm) + self.kv_q_layer_bytes * num_q_hbm
                 + self.kv_q_off_layer_bytes * num_q_off
                 + self.weight_layer_bytes * (num_layers - num_streamed)
                 + staging + (self.weight_buffer_bytes if num_streamed else 0)
                 + (self.dequant_bytes if num_q_hbm + num_q_off else 0))
        return fixed + self.fixed_prefill_bytes, fixed + self.fixed_decode_bytes


def static_memory_terms(model, job, *, num_staging_buffers: int, graphs: bool = STATIC_DECODE_GRAPHS
                        ) -> StaticMemoryTerms:
    """`StaticMemoryTerms` of ``job``: prefill one sequence at a time (one chunk's activations),
    final-length KV buffers, ``num_staging_buffers`` staging and weight buffers."""
    from simulator.estimator import RUNTIME_WORKSPACE_BYTES
    from simulator.templates import decode_workload

    P, G, B = job.prompt_len, job.gen_len, job.batch
    chunk = min(job.prefill_chunk_len or P, P)
    act_prefill = static_prefill_activation_bytes(model, job, num_tokens=chunk)
    act_decode = _activation_peak_bytes(decode_workload(model, lossless_job(job), context_len=P + G, batch=B)) \
        if G else 0
    other = other_weight_bytes(model, job) + RUNTIME_WORKSPACE_BYTES + (CUDA_GRAPHS_EXTRA_BYTES if graphs and G else 0)
    kv_final = kv_layer_bytes(model, job, num_tokens=P + G, batch=B)
    w = layer_weight_bytes(model, job)
    quant: dict[str, int] = {}
    if job.kv_quant != "none":
        store = kv_quant_layout(model, job, num_tokens=P + G, batch=B).quantized_bytes
        residual = kv_residual_buffer_bytes(model, job, batch=B)
        quant = dict(kv_q_layer_bytes=store + residual, kv_q_off_layer_bytes=residual,
                     staging_q_bytes=num_staging_buffers * store, dequant_bytes=kv_final)
    return StaticMemoryTerms(
        fixed_prefill_bytes=other + act_prefill,
        fixed_decode_bytes=other + act_decode,
        kv_layer_bytes=kv_final,
        weight_layer_bytes=w,
        staging_bytes=num_staging_buffers * kv_final,
        weight_buffer_bytes=num_staging_buffers * w,
        **quant,
    )


# ---- the DES schedule ----------------------------------------------------------------------------


class _Builder:
    """Tasks of one pass on gpu0: the host issuing it, compute segments, H2D fetches, D2H
    write-backs."""

    def __init__(self, node):
        from simulator.des.schedule import Stream, node_links, node_pools

        self.node = node
        self.tasks: list = []
        self.streams = (Stream("gpu0.compute", "compute", "gpu0"), Stream("gpu0.d2h", "d2h", "gpu0"),
                        Stream("gpu0.h2d", "h2d", "gpu0"), Stream(HOST_STREAM, "compute", "gpu0"),
                        *(Stream(f"csd{k}.compute", "csd", f"csd{k}") for k in range(len(node.csd))))
        self.pools = node_pools(node, 1)
        self.links = node_links(node)

    def op(self, name: str, duration_s: float, deps=(), layer=None, stream: str = "gpu0.compute") -> int:
        from simulator.des.schedule import Op

        tid = len(self.tasks)
        self.tasks.append(Op(tid, name, stream, float(duration_s), tuple(d for d in deps if d is not None),
                             layer=layer))
        return tid

    def seg(self, name: str, seg: Seg, deps=(), layer=None) -> tuple[int, int]:
        """``seg`` issued by the host (two host tasks: until the GPU may start it, the rest) and
        run on the compute stream; (its GPU task, its last host task)."""
        lead = self.op(f"issue {name}", seg.lead_s, layer=layer, stream=HOST_STREAM)
        rest = self.op(f"issue {name} (rest)", max(seg.host_s - seg.lead_s, 0.0), layer=layer, stream=HOST_STREAM)
        return self.op(name, seg.gpu_s, deps=(lead, *deps), layer=layer), rest

    def copy(self, name: str, num_bytes: int, tier: str, direction: str, *, deps=(), layer=None,
             stream: str | None = None) -> int:
        from simulator.des.schedule import Transfer, device_route, offload_device

        device = offload_device(self.node, tier, 0)
        route = device_route(self.node, 0, device, direction)
        src, dst = (device, "gpu0.hbm") if direction == "h2d" else ("gpu0.hbm", device)
        tid = len(self.tasks)
        self.tasks.append(Transfer(tid, name, stream or f"gpu0.{direction}", int(num_bytes), src, dst,
                                   route.links, route.latency_s, tuple(d for d in deps if d is not None),
                                   layer=layer))
        return tid

    def flow(self, name: str, num_bytes: int, *, stream: str, link: str, latency_s: float,
             max_rate_bytes_per_s: float, deps=(), layer=None) -> int:
        """Bytes a processor streams out of its own memory (attention off the GPU): ``num_bytes``
        over ``link`` (host DRAM, a drive's flash), shared with the copies that use it, at most at
        ``max_rate_bytes_per_s``, after ``latency_s``, on ``stream``."""
        from simulator.des.schedule import Transfer

        pool = "host" if link == "host_memory" else link.split(".")[0]
        tid = len(self.tasks)
        self.tasks.append(Transfer(tid, name, stream, int(num_bytes), pool, pool, (link,), latency_s,
                                   tuple(d for d in deps if d is not None), layer=layer,
                                   max_rate_bytes_per_s=max_rate_bytes_per_s))
        return tid

    def run(self):
        from simulator.des.engine import simulate
        from simulator.des.schedule import Schedule

        sched = Schedule(streams=self.streams, tasks=tuple(self.tasks), pools=self.pools, links=self.links,
                         node=self.node, meta={"node": self.node.name, "producer": "simulator.inference"})
        return simulate(sched, record_timeline=False)


HOST_STREAM = "gpu0.host"
"""The CPU thread that issues the kernels and copies (a stream of the schedule: its tasks run in
program order, each as long as its issue)."""


def _link_bytes(res) -> int:
    """Bytes the copies moved (attention's reads of its own memory off the GPU left out)."""
    return int(sum(t.num_bytes for t in res.schedule.tasks if hasattr(t, "num_bytes") and t.src != t.dst))


@dataclass(frozen=True)
class AttentionRun:
    """One layer's decode attention off the GPU as the DES runs it: its K and V streamed over
    ``link`` (host DRAM, or the drive's flash) at most at ``max_rate_bytes_per_s`` (its compute
    bound folded in) after ``latency_s``; ``time_s`` alone on the link."""

    kv_bytes: int
    link: str
    latency_s: float
    max_rate_bytes_per_s: float

    @property
    def time_s(self) -> float:
        return self.latency_s + self.kv_bytes / self.max_rate_bytes_per_s


@dataclass(frozen=True)
class OffGpuAttention:
    """What a decode step's attention off the GPU moves and runs, per layer (layers are
    homogeneous): the query out, the output back, the CPU's and the CSD's attention."""

    q_bytes: int
    out_bytes: int
    cpu: AttentionRun
    csd: AttentionRun


def off_gpu_attention(model, job, node, *, context_len: int, batch: int) -> OffGpuAttention:
    """One layer's decode attention over ``context_len`` keys (the new token's included) off the
    GPU: on the host CPU at `hwmodels.host_overhead.cpu_attention_rate` over host DRAM, and in
    the node's first CSD at its internal flash bandwidth and compute rate (InstInfer: attention
    next to the KV, only the query and the output cross the links). Sizes and FLOPs from
    `kernels.attention.decode_attention_cost`."""
    from hwmodels.host_overhead import cpu_attention_rate
    from kernels.attention import decode_attention_cost
    from simulator.job import dtype_bytes

    kv_bytes = kv_layer_bytes(model, job, num_tokens=context_len, batch=batch)
    flops = decode_attention_cost(batch=batch, context_len=context_len, num_heads=model.num_heads,
                                  num_kv_heads=model.num_kv_heads, head_dim=model.head_dim,
                                  dtype=job.param_dtype).total.flops
    act = batch * model.q_size * int(dtype_bytes(job.param_dtype))  # [B, H, 1, D]
    rate = cpu_attention_rate(node)
    cpu_rate = min(rate.kv_bytes_per_s, kv_bytes * rate.flops_per_s / flops) if flops else rate.kv_bytes_per_s
    cpu = AttentionRun(kv_bytes, "host_memory", rate.latency_s, cpu_rate)
    if node.csd:
        d = node.csd[0]
        csd_rate = min(d.internal_flash_bandwidth_bytes_per_s, kv_bytes * d.compute_flops_per_s / flops) \
            if flops else d.internal_flash_bandwidth_bytes_per_s
        csd = AttentionRun(kv_bytes, "csd0.read", 0.0, csd_rate)
    else:
        csd = AttentionRun(kv_bytes, "csd0.read", 0.0, float("inf"))
    return OffGpuAttention(q_bytes=act, out_bytes=act, cpu=cpu, csd=csd)


@dataclass
class _Pass:
    """Task ids of one static-engine pass (GPU tasks) and the host's last task."""

    embed: int
    pre: list[int]
    post: list[int]
    head: int
    host_end: int


def _static_pass(b: _Builder, seg: Segments, placement: Placement, *, kv_fetch_bytes: int, kv_new_bytes: int,
                 weight_bytes: int, after: int | None = None, kv_fetch_bytes_q: int = 0,
                 kv_new_bytes_q: int = 0, off_gpu: OffGpuAttention | None = None) -> _Pass:
    """One static-engine pass (a decode step, or a prefill pass that reads host KV written by
    earlier chunks) as the executor issues it: before layer i's ops the host issues the H2D
    fetches due (layer m's once layer m - k starts, k the lookahead, at most the buffers less
    one), each waiting on the GPU for its buffer slot (free once the layer that used it
    num_buf off-HBM layers earlier has run its attention and written back); the layer's ops wait
    for its fetches; a host layer's new k,v go D2H after its pre-attention part. A quantized
    layer (``kv_quant``) moves ``kv_fetch_bytes_q`` / ``kv_new_bytes_q`` instead.
    ``off_gpu`` (a decode step): a layer whose attention runs on the CPU or in a CSD fetches
    nothing; it writes its new k,v into its staging slot (waiting for the slot as a fetch would),
    sends them and its query out, the CPU (the host thread, which waits for the copies) or the
    drive streams the layer's K and V out of its own memory, and the output comes back H2D
    before the rest of the layer."""
    num_buf = placement.num_staging_buffers
    k = min(placement.prefetch_lookahead_layers, max(num_buf - 1, 0))
    layers = placement.layers
    n = len(layers)
    off_kv = [m for m in range(n) if layers[m].kv_tier != "hbm"]
    kv_ordinal = {m: j for j, m in enumerate(off_kv)}
    w_queue = [m for m in range(n) if layers[m].params_tier != "hbm"]
    def fetch_bytes(m: int) -> int:
        return kv_fetch_bytes if layers[m].kv_quant == "none" else kv_fetch_bytes_q

    kv_queue = [m for m in off_kv if fetch_bytes(m) > 0 and layers[m].attention_on == "gpu"]
    w_users: list[int] = []
    fetched: dict[int, list[int]] = {}
    wb: dict[int, int] = {}
    pre: list[int] = []
    post: list[int] = []

    def kv_slot(m: int) -> tuple[int | None, ...]:
        """The tasks that free layer m's staging slot: the attention and write-back of the
        off-HBM layer num_buf before it."""
        j = kv_ordinal[m]
        if j < num_buf:
            return ()
        u = off_kv[j - num_buf]
        return (post[u], wb.get(u))

    embed, host = b.seg("embed", seg.embed, deps=(after,))
    for i in range(n):
        for queue, kind in ((w_queue, "w"), (kv_queue, "kv")):
            while queue and queue[0] - k <= i:
                m = queue.pop(0)
                slot: tuple[int | None, ...] = ()
                if kind == "kv":
                    slot = kv_slot(m)
                elif len(w_users) >= num_buf:
                    slot = (post[w_users[-num_buf]],)
                nbytes = weight_bytes if kind == "w" else fetch_bytes(m)
                tier = layers[m].params_tier if kind == "w" else layers[m].kv_tier
                fetched.setdefault(m, []).append(
                    b.copy(f"h2d {'weights' if kind == 'w' else 'kv'} {m}", nbytes, tier, "h2d",
                           deps=(host, *slot), layer=m))
                if kind == "w":
                    w_users.append(m)
        where = layers[i].attention_on if off_gpu is not None else "gpu"
        deps = tuple(fetched.get(i, ())) + (kv_slot(i) if where != "gpu" else ())
        g, host = b.seg(f"layer {i} pre-attention", seg.pre[i], deps=deps, layer=i)
        pre.append(g)
        new = kv_new_bytes if layers[i].kv_quant == "none" else kv_new_bytes_q
        if layers[i].kv_tier != "hbm" and new > 0:
            wb[i] = b.copy(f"d2h kv {i}", new, layers[i].kv_tier, "d2h", deps=(g, host), layer=i)
        if where != "gpu" and kv_queue and (kv_ordinal[kv_queue[0]] < num_buf
                                            or off_kv[kv_ordinal[kv_queue[0]] - num_buf] < i):
            # the host will wait for this attention: it first issues the next KV fetch whose
            # buffer's last user has been issued, whatever the lookahead (the executor's rule)
            m = kv_queue.pop(0)
            fetched.setdefault(m, []).append(b.copy(f"h2d kv {m}", fetch_bytes(m), layers[m].kv_tier, "h2d",
                                                    deps=(host, *kv_slot(m)), layer=m))
        if where == "gpu":
            g, host = b.seg(f"layer {i} attention+mlp", seg.post[i], layer=i)
        else:
            assert off_gpu is not None  # where != "gpu" only with it
            tier = layers[i].kv_tier
            q = b.copy(f"d2h q {i}", off_gpu.q_bytes, tier, "d2h", deps=(g, host), layer=i)
            run = off_gpu.cpu if where == "cpu" else off_gpu.csd
            stream = HOST_STREAM if where == "cpu" else "csd0.compute"
            att = b.flow(f"{where} attention {i}", run.kv_bytes, stream=stream, link=run.link,
                         latency_s=run.latency_s, max_rate_bytes_per_s=run.max_rate_bytes_per_s,
                         deps=(q, wb.get(i)), layer=i)
            out = b.copy(f"h2d attention out {i}", off_gpu.out_bytes, tier, "h2d", deps=(att,), layer=i)
            g, host = b.seg(f"layer {i} after attention", seg.post_after_attention[i], deps=(out,), layer=i)
        post.append(g)
    head, host = b.seg("head", seg.head)
    return _Pass(embed, pre, post, head, host)


def _hf_decode(b: _Builder, seg: Segments, *, offloaded: bool, kv_fetch_bytes: int, kv_back_bytes: int,
               cat_s: float) -> None:
    """One HF DynamicCache decode step; offloaded as transformers 5.17's ``DynamicCache.update``
    does it: the default stream waits for the prefetch stream (layer l's fetch), layer l + 1 is
    prefetched whole on the prefetch stream as soon as the host gets there (5.17's prefetch
    stream does not wait for the default stream), the K,V are concatenated, and the whole grown
    layer goes back D2H on the default stream before its attention. Layer 0's fetch was issued at
    the previous step's last layer (it starts with the step here)."""
    n = len(seg.pre)
    fetch: dict[int, int] = {}
    _, host = b.seg("embed", seg.embed)
    if offloaded:
        fetch[0] = b.copy("h2d kv 0", kv_fetch_bytes, "host", "h2d", layer=0)
    for i in range(n):
        _, host = b.seg(f"layer {i} pre-attention", seg.pre[i], layer=i)
        if offloaded and i + 1 < n:
            fetch[i + 1] = b.copy(f"h2d kv {i + 1}", kv_fetch_bytes, "host", "h2d", deps=(host,), layer=i + 1)
        g, host = b.seg(f"layer {i} cat", Seg(cat_s), deps=(fetch.get(i),), layer=i)
        if offloaded:
            b.copy(f"d2h kv {i}", kv_back_bytes, "host", "d2h", deps=(g, host), layer=i, stream="gpu0.compute")
        b.seg(f"layer {i} attention+mlp", seg.post[i], layer=i)
    b.seg("head", seg.head)


def _prefill_static(b: _Builder, segs: list[Segments], placement: Placement, *, kv_out_bytes: list[int],
                    kv_in_bytes: list[int], weight_bytes: int, kv_out_bytes_q: list[int] | None = None,
                    kv_in_bytes_q: list[int] | None = None) -> None:
    """Passes (sequences x chunks) back to back; a host layer's new K,V go D2H after the layer;
    a chunk's attention first fetches the cache written so far; streamed weights as in decode.
    Quantized layers move ``kv_out_bytes_q`` / ``kv_in_bytes_q`` (their quantized groups)."""
    prev = None
    out_q = kv_out_bytes_q or [0] * len(segs)
    in_q = kv_in_bytes_q or [0] * len(segs)
    for p, seg in enumerate(segs):
        ps = _static_pass(b, seg, placement, kv_fetch_bytes=kv_in_bytes[p], kv_new_bytes=0,
                          weight_bytes=weight_bytes, after=prev, kv_fetch_bytes_q=in_q[p])
        prev = ps.head
        for i, lp in enumerate(placement.layers):
            out = kv_out_bytes[p] if lp.kv_quant == "none" else out_q[p]
            if lp.kv_tier != "hbm" and out > 0:
                b.copy(f"d2h kv {i} pass {p}", out, lp.kv_tier, "d2h", deps=(ps.post[i],), layer=i)


def _prefill_hf(b: _Builder, seg: Segments, *, offloaded: bool, kv_bytes: int, cat_s: float) -> None:
    """HF prefill: the whole batch in one forward (``logits_to_keep=1``); each layer's K,V are
    concatenated onto the empty cache and, offloaded, copied D2H on the default stream."""
    n = len(seg.pre)
    b.seg("embed", seg.embed)
    for i in range(n):
        b.seg(f"layer {i} pre-attention", seg.pre[i], layer=i)
        g, host = b.seg(f"layer {i} cat", Seg(cat_s), layer=i)
        if offloaded:
            b.copy(f"d2h kv {i}", kv_bytes, "host", "d2h", deps=(g, host), layer=i, stream="gpu0.compute")
        b.seg(f"layer {i} attention+mlp", seg.post[i], layer=i)
    b.seg("head", seg.head)


# ---- the replay ----------------------------------------------------------------------------------


def check_placement(model, job, node, placement: Placement) -> None:
    """UserInputError for a placement this replay cannot price."""
    if len(placement.layers) != model.num_layers:
        raise UserInputError(f"layers: {len(placement.layers)} placements for {model.num_layers} layers")
    if job.mode != "infer":
        raise UserInputError("job.mode: the inference replay needs an inference job")
    par = job.parallelism
    if (par.tp, par.cp, par.dp) != (1, 1, 1):
        raise UserInputError("job.parallelism: the inference replay models one GPU (tp = cp = dp = 1)")
    tiers = {"hbm", "host"} | {t for t in ("cxl", "nvme", "csd") if getattr(node, t)}
    for i, lp in enumerate(placement.layers):
        for what, tier, allowed in (("kv_cache.tier", lp.kv_tier, KV_TIERS), ("params", lp.params_tier, PARAM_TIERS)):
            if tier not in allowed:
                raise UserInputError(f"layers.{i}.{what}: {tier!r} is not one of {', '.join(allowed)}")
            if tier not in tiers:
                raise UserInputError(f"layers.{i}.{what}: node {node.name} has no {tier}")
        if lp.attention_on not in ATTENTION_ON:
            raise UserInputError(f"layers.{i}.attention_on: {lp.attention_on!r} is not one of {', '.join(ATTENTION_ON)}")
        if lp.kv_tier not in ATTENTION_ON[lp.attention_on]:
            raise UserInputError(f"layers.{i}.attention_on: attention on the {lp.attention_on} needs the layer's KV "
                                 f"on {' or '.join(ATTENTION_ON[lp.attention_on])}, not {lp.kv_tier}")
        if lp.attention_on != "gpu" and lp.kv_quant != "none":
            raise UserInputError(f"layers.{i}.attention_on: attention off the GPU reads an unquantized KV cache")
    for i, lp in enumerate(placement.layers):
        if lp.kv_quant not in ("none", job.kv_quant):
            raise UserInputError(f"layers.{i}.kv_cache.dtype: {lp.kv_quant!r} is not the quantized format the job "
                                 f"accepts (job.kv_quant {job.kv_quant!r})")
        if lp.kv_quant != "none":
            from kernels.quant import KIVI_KV_DTYPES

            if lp.kv_quant not in KIVI_KV_DTYPES:
                raise UserInputError(f"layers.{i}.kv_cache.dtype: a {lp.kv_quant} KV cache is not replayed "
                                     f"(quantized: {', '.join(KIVI_KV_DTYPES)})")
            if job.engine == "hf":
                raise UserInputError(f"layers.{i}.kv_cache.dtype: the hf engine's DynamicCache is unquantized")
    if job.engine == "hf":
        kv = {lp.kv_tier for lp in placement.layers}
        if len(kv) != 1 or not kv <= {"hbm", "host"} or any(lp.params_tier != "hbm" for lp in placement.layers) \
                or any(lp.attention_on != "gpu" for lp in placement.layers):
            raise UserInputError("layers: the hf engine keeps every layer's KV in HBM or every layer's on the "
                                 "host (DynamicCache offloading), every weight in HBM, and attends on the GPU")


def allocatable_hbm_bytes(node) -> int:
    """HBM one process can hand to PyTorch on ``node``'s GPU: a budget of the whole card is capped
    at this (the driver's reserve and the CUDA context are not the allocator's to give out)."""
    from simulator.estimator import NON_ALLOCATABLE_BYTES

    return node.gpu.hbm_capacity_bytes - NON_ALLOCATABLE_BYTES


def replay_placement(model, job, node, placement: Placement, *, gpu_budget_bytes: int, host_budget_bytes: int,
                     context_len: int | None = None, graphs: bool = STATIC_DECODE_GRAPHS,
                     sdpa_cudnn: bool = False, decode_only: bool = False,
                     warmed_up: bool | None = None) -> InferReplay:
    """Replay ``placement`` of ``job`` on ``node``: prefill, one decode step at ``context_len``
    (default the job's mean decode context ``prompt_len + gen_len // 2``), peaks, feasibility.
    ``graphs``: the static engine issues its decode step through CUDA graphs (else eagerly).
    ``sdpa_cudnn``: SDPA in torch's default order (cuDNN attention), not kept off cuDNN as the
    engines run it. ``decode_only``: the decode step alone (prefill and the whole generation's
    time left 0). ``warmed_up``: whether a warm-up ran before the timed prefill (None: the
    engine's own: the static engine warms up, the HF engine does not, as validate/infer_hf.py
    times ``generate``'s first call); without one the prefill pays the host's first-forward
    cost (``hwmodels.host_overhead``: ``first_forward_s``) before its first kernel."""
    from hwmodels.compute import compute_time_s
    from simulator.estimator import RUNTIME_WORKSPACE_BYTES
    from simulator.templates import decode_workload, prefill_workload

    check_placement(model, job, node, placement)
    jq, job = job, lossless_job(job)  # jq: the quantized format's job; job: what is priced unquantized
    B, P, G = job.batch, job.prompt_len, job.gen_len
    final = P + G
    ctx = P + G // 2 if context_len is None else context_len
    hf = job.engine == "hf"
    offloaded = hf and placement.layers[0].kv_tier == "host"
    w_layer = layer_weight_bytes(model, job)
    kv_final = kv_layer_bytes(model, job, num_tokens=final, batch=B)
    off_layers = [i for i, lp in enumerate(placement.layers) if lp.kv_tier != "hbm"]
    stream_layers = [i for i, lp in enumerate(placement.layers) if lp.params_tier != "hbm"]
    num_buf = placement.num_staging_buffers
    quantized = [lp.kv_quant != "none" for lp in placement.layers]
    num_q_off = sum(1 for i in off_layers if quantized[i])
    num_q_hbm = sum(quantized) - num_q_off
    q_store = kv_quant_layout(model, jq, num_tokens=final, batch=B).quantized_bytes if any(quantized) else 0
    staging = 0 if hf or not off_layers else kv_final if len(off_layers) > num_q_off else q_store

    def q_bytes(num_tokens: int, batch: int) -> int:  # a quantized layer's whole groups
        return kv_quant_layout(model, jq, num_tokens=num_tokens, batch=batch).quantized_bytes if any(quantized) else 0

    # -- prefill
    chunk = job.prefill_chunk_len or P
    prefill_s = 0.0
    if hf:
        act_prefill = hf_prefill_activation_bytes(model, job, batch=B, num_tokens=P)
    else:
        act_prefill = static_prefill_activation_bytes(model, job, num_tokens=min(chunk, P))
    if decode_only:
        pass
    elif hf:
        pre_seg = _prefill_pass(model, job, node, batch=B, prompt_len=P, offloaded=offloaded, sdpa_cudnn=sdpa_cudnn)
        kv_prompt = kv_layer_bytes(model, job, num_tokens=P, batch=B)
        cat_s = compute_time_s(flops=0.0, hbm_bytes=2 * kv_prompt, op_class="hbm_copy",  # K and V: read + write
                               dtype=job.param_dtype,
                               node=node)
        b = _Builder(node)
        _prefill_hf(b, pre_seg, offloaded=offloaded, kv_bytes=kv_prompt, cat_s=cat_s)
        prefill_s = b.run().step_time_s
    else:
        # one sequence's passes (its chunks); the sequences run one after another, identical
        seq_segs, seq_out, seq_in, seq_out_q, seq_in_q = [], [], [], [], []
        for start in range(0, P, chunk):
            n_tok = min(chunk, P - start)
            pass_seg = _prefill_pass(model, job, node, batch=1, prompt_len=n_tok, past_len=start,
                                     sdpa_cudnn=sdpa_cudnn)
            if any(quantized):  # dequantize the groups cached so far, quantize the groups this pass fills
                q_s = (kv_quant_time_s(model, jq, node, num_tokens=start, batch=1) if start else 0.0) \
                    + kv_quant_time_s(model, jq, node, num_tokens=start + n_tok, batch=1, quantize=True) \
                    - kv_quant_time_s(model, jq, node, num_tokens=start, batch=1, quantize=True)
                pass_seg = _with_extra_s(pass_seg, [q_s if q else 0.0 for q in quantized])
            seq_segs.append(pass_seg)
            seq_out.append(kv_layer_bytes(model, job, num_tokens=n_tok, batch=1))
            seq_in.append(kv_layer_bytes(model, job, num_tokens=start, batch=1))
            seq_out_q.append(q_bytes(start + n_tok, 1) - q_bytes(start, 1))
            seq_in_q.append(q_bytes(start, 1))
        times = []
        for num_seq in range(1, min(B, 2) + 1):  # the B-sequence prefill is periodic after the first
            b = _Builder(node)
            _prefill_static(b, seq_segs * num_seq, placement, kv_out_bytes=seq_out * num_seq,
                            kv_in_bytes=seq_in * num_seq, weight_bytes=w_layer,
                            kv_out_bytes_q=seq_out_q * num_seq, kv_in_bytes_q=seq_in_q * num_seq)
            times.append(b.run().step_time_s)
        prefill_s = times[0] + (B - 1) * (times[-1] - times[0])
    if not decode_only and not ((not hf) if warmed_up is None else warmed_up):
        from hwmodels.host_overhead import eager_host_costs

        prefill_s += eager_host_costs(node).first_forward_s  # the GPU idles: nothing is queued yet

    # -- decode
    dec_s = stall_s = compute_s = 0.0
    link = 0
    dec_flops = 0.0
    if G:
        seg = decode_segments(model, job, node, context_len=ctx, batch=B, offloaded=offloaded, graphs=graphs,
                              sdpa_cudnn=sdpa_cudnn)
        if any(quantized):  # every quantized layer is dequantized into the bf16 buffer before attention
            dq_s = kv_quant_time_s(model, jq, node, num_tokens=ctx, batch=B)
            seg = _with_extra_s(seg, [dq_s if q else 0.0 for q in quantized])
        compute_s = seg.total_s
        b = _Builder(node)
        if hf:
            kv_ctx = kv_layer_bytes(model, job, num_tokens=ctx, batch=B)
            kv_ctx1 = kv_layer_bytes(model, job, num_tokens=ctx + 1, batch=B)
            cat_s = compute_time_s(flops=0.0, hbm_bytes=kv_ctx + kv_ctx1, op_class="hbm_copy",  # K and V
                                   dtype=job.param_dtype, node=node)
            _hf_decode(b, seg, offloaded=offloaded, kv_fetch_bytes=kv_ctx, kv_back_bytes=kv_ctx1, cat_s=cat_s)
        else:
            off_gpu = (off_gpu_attention(model, job, node, context_len=ctx + 1, batch=B)
                       if any(lp.attention_on != "gpu" for lp in placement.layers) else None)
            _static_pass(b, seg, placement, kv_fetch_bytes=kv_layer_bytes(model, job, num_tokens=ctx, batch=B),
                         kv_new_bytes=kv_layer_bytes(model, job, num_tokens=1, batch=B), weight_bytes=w_layer,
                         kv_fetch_bytes_q=q_bytes(ctx, B), off_gpu=off_gpu)
        res = b.run()
        dec_s, link = res.step_time_s, _link_bytes(res)
        stall_s = max(dec_s - compute_s, 0.0)
        # the whole generation's FLOPs at the mean context
        dec_flops = seg.model_flops * G
    mean_dec = dec_s
    if G and context_len is not None and context_len != P + G // 2 and not decode_only:
        mean_dec = replay_placement(model, jq, node, placement, gpu_budget_bytes=gpu_budget_bytes,
                                    host_budget_bytes=host_budget_bytes, graphs=graphs,
                                    sdpa_cudnn=sdpa_cudnn).decode_step_time_s

    # -- peaks
    resident_w = other_weight_bytes(model, job) + w_layer * (model.num_layers - len(stream_layers))
    act_decode = _activation_peak_bytes(decode_workload(model, job, context_len=final, batch=B)) if G else 0
    n_hbm_kv = model.num_layers - len(off_layers)
    kv_prompt_b = kv_layer_bytes(model, job, num_tokens=P, batch=B)
    host = cxl = nvme = csd = 0
    breakdown: dict[str, int] = {"weights": resident_w, "runtime_workspace": RUNTIME_WORKSPACE_BYTES}
    if hf:
        if offloaded:  # prefill: the layer's K,V until its attention; decode: prefetched l+1, layer l's
            # old copy and its grown copy
            kv_hbm_prefill = kv_prompt_b
            kv_hbm_decode = 3 * kv_final
            # pinned blocks: the prompt's K,V (prefill), then one grown block per tensor plus those still
            # waiting on their copy's event when the host asks again; a prompt block serves the grown
            # tensors when it is as large
            prompt_blk, grown_blk = pinned_block_bytes(kv_prompt_b // 2), pinned_block_bytes(kv_final // 2)
            num_grown = 2 * model.num_layers + round(HF_PINNED_EXTRA_BLOCKS_PER_LAYER * model.num_layers)
            host = num_grown * grown_blk + (2 * model.num_layers * prompt_blk if prompt_blk != grown_blk else 0)
        else:  # every layer's cache (prefill: each concatenated onto an empty one), plus one layer's
            # old copy during its cat in decode
            kv_hbm_prefill = model.num_layers * kv_prompt_b
            kv_hbm_decode = model.num_layers * kv_final + kv_final
        hbm_prefill = resident_w + kv_hbm_prefill + act_prefill + RUNTIME_WORKSPACE_BYTES
        hbm_decode = resident_w + kv_hbm_decode + act_decode + RUNTIME_WORKSPACE_BYTES
        breakdown["kv_cache"] = max(kv_hbm_prefill, kv_hbm_decode)
    else:
        terms = static_memory_terms(model, jq, num_staging_buffers=num_buf, graphs=graphs)
        hbm_prefill, hbm_decode = terms.hbm_bytes(num_kv_off=len(off_layers), num_streamed=len(stream_layers),
                                                  num_layers=model.num_layers, num_q_hbm=num_q_hbm,
                                                  num_q_off=num_q_off)
        breakdown.update(kv_cache=(n_hbm_kv - num_q_hbm) * kv_final + num_q_hbm * terms.kv_q_layer_bytes
                         + num_q_off * terms.kv_q_off_layer_bytes,
                         staging_buffers=num_buf * staging,
                         weight_buffers=terms.weight_buffer_bytes if stream_layers else 0)
        if any(quantized):
            breakdown["dequant_buffer"] = terms.dequant_bytes
        for lp in placement.layers:
            kv_stored = kv_final if lp.kv_quant == "none" else q_store
            for tier, num in ((lp.kv_tier, kv_stored), (lp.params_tier, w_layer)):
                if tier == "host":
                    host += num
                elif tier == "cxl":
                    cxl += num
                elif tier == "nvme":
                    nvme += num
                elif tier == "csd":
                    csd += num
    breakdown["activations"] = max(act_prefill, act_decode)
    hbm_peak = max(hbm_prefill, hbm_decode)
    peaks = {"hbm": hbm_peak}
    if host:
        peaks["host"] = host
    if cxl:
        peaks["cxl"] = cxl
    if nvme:
        peaks["nvme"] = nvme
    if csd:
        peaks["csd"] = csd
    binding = ""
    from hwmodels.units import format_bytes

    allocatable = allocatable_hbm_bytes(node)
    hbm_cap = min(gpu_budget_bytes, allocatable)
    if hbm_peak > hbm_cap:
        phase = "prefill" if hbm_prefill >= hbm_decode else "decode"
        over = (f"the GPU budget of {format_bytes(gpu_budget_bytes)}" if gpu_budget_bytes <= allocatable else
                f"the {format_bytes(allocatable)} a process can allocate on the {format_bytes(node.gpu.hbm_capacity_bytes)} card")
        binding = (f"hbm: the {phase} needs {format_bytes(hbm_peak)} allocated (weights "
                   f"{format_bytes(resident_w)}, KV {format_bytes(breakdown.get('kv_cache', 0))}, activations "
                   f"{format_bytes(breakdown['activations'])}), over {over}")
    elif host > host_budget_bytes:
        binding = (f"host: {format_bytes(host)} of pinned host memory, over the host budget of "
                   f"{format_bytes(host_budget_bytes)}")
    elif cxl and cxl > sum(c.capacity_bytes for c in node.cxl):
        binding = f"cxl: {format_bytes(cxl)} over the CXL capacity of {format_bytes(sum(c.capacity_bytes for c in node.cxl))}"
    elif nvme and nvme > sum(d.capacity_bytes for d in node.nvme):
        binding = f"nvme: {format_bytes(nvme)} over the NVMe capacity of {format_bytes(sum(d.capacity_bytes for d in node.nvme))}"
    elif csd and csd > sum(d.capacity_bytes for d in node.csd):
        binding = f"csd: {format_bytes(csd)} over the CSD capacity of {format_bytes(sum(d.capacity_bytes for d in node.csd))}"
    pre_flops = sum(op.model_flops for op in prefill_workload(model, job, batch=B, prompt_len=P).ops)
    step_s = prefill_s + G * mean_dec
    return InferReplay(
        engine=job.engine,
        prefill_time_s=prefill_s,
        decode_step_time_s=dec_s,
        context_len=ctx,
        step_time_s=step_s,
        decode_tokens_per_s=B / dec_s if dec_s > 0 else 0.0,
        tier_peak_bytes=peaks,
        hbm_prefill_peak_bytes=hbm_prefill,
        hbm_decode_peak_bytes=hbm_decode,
        staging_buffer_bytes=staging,
        decode_compute_s=compute_s,
        decode_stall_s=stall_s,
        decode_link_bytes=link,
        model_flops=pre_flops + dec_flops,
        feasible=not binding,
        binding=binding,
        breakdown_bytes=breakdown,
    )


def mean_context_len(job) -> int:
    """The decode context a plan's prediction is for: ``prompt_len + gen_len // 2``."""
    return job.prompt_len + job.gen_len // 2


def kv_bytes_total(model, job) -> int:
    return kv_layer_bytes(model, job, num_tokens=job.prompt_len + job.gen_len, batch=job.batch) * model.num_layers
