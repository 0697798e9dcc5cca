"""The static decode engine: an inference plan run for real (prefill, then greedy decode steps).

Models: serving ``job.batch`` sequences of ``prompt_len`` tokens and ``gen_len`` decode steps of
a Llama-family decoder (validate.model's math and weights, bf16) under an inference
``planners.plan.Plan`` (infer-contract.md). Per layer the KV cache is one K and one V buffer of
the final length (prompt_len + gen_len), laid out [B, L, K, D] and allocated once: in HBM, or in
one pinned host pool (``validate.executor.OffloadPool``). Prefill runs each sequence alone,
whole or in chunks of ``job.prefill_chunk_len`` (a chunk attends to the cache written so far and
causally within itself); decode steps run the whole batch, one token per sequence. A layer whose
KV is on the host runs on one of ``num_staging_buffers`` rotating GPU staging buffers (each one
layer's K and V at the final length): its cached rows [:ctx] are copied H2D into the buffer on an
H2D stream, ``prefetch_lookahead_layers`` layers ahead (at most ``num_staging_buffers - 1``: a
buffer is refilled only once the layer that used it last has queued its attention); the new
rows are written into the buffer by the compute stream, so attention sees ctx + T rows, and
copied D2H into the pool on a D2H stream. CUDA events order it all: a fetch waits until the
attention and the write-back that read its buffer are done, and the write-back of the layer's
previous pass; attention waits for the fetch. A layer whose weights are on the host keeps them
as one flat pinned block, streamed H2D into one of the plan's ``num_staging_buffers`` rotating
flat GPU weight buffers (one copy per layer), ``params_prefetch_layers`` layers ahead once the
layer that last used its buffer has been issued. Each copy
is one large contiguous copy per K and V per layer and sequence (one per layer and direction at
batch 1); nothing synchronizes inside a step but the timer at its end (and the waits of
attention on the CPU). The head computes the last position's logits; the next token is their argmax.
A host layer with ``attention_on`` cpu prefills like any host layer; in a decode step it fetches
nothing: it writes its new k, v into its staging slot (waiting for the slot as a fetch would),
copies them D2H into the pool and its query [B, H, 1, D] D2H after them, the host issues the next
KV fetch whose buffer is free, waits for the query, runs SDPA on the CPU over the pool's rows
[:ctx + 1] (the pool's dtype; torch's CPU kernel accumulates in fp32) with
``cpu_attention_threads`` threads, and copies the output H2D on the compute stream.
On the CPU the same code runs with no streams or events: the "host" pool and the staging
buffers are separate CPU tensors and every copy is still made (CI tests the logic there).
Measures: prefill time (all chunks, all sequences, synchronized), each decode step's time
(``kernels.timing.time_one``: CUDA events, the side streams joined into the compute stream at
the end of the step), the contexts, peak allocated / reserved HBM over the run, the pinned
bytes, the bytes each decode step copies in each direction and, on CUDA, the span of the last
step's H2D copies (the first one's start to the last one's end: their rate when back to back).
A layer whose KV is stored quantized (int8 / int4, the job's ``kv_quant``; validate.kv_quant,
the layout of ``kernels.quant.kivi_layout``) keeps its whole key groups quantized (in the pinned
pool, or resident) and the newest tokens that do not fill a group in a bf16 residual window on
the GPU: before attention a host layer's quantized rows are copied H2D into a staging buffer
(sized for the quantized store) like an unquantized layer's, dequantized on the GPU (Triton on
CUDA when triton imports, else torch) into one bf16 buffer shared by the quantized layers,
the residual window copied after them and the new token written there; attention reads that
buffer as today. After attention the groups the pass filled are quantized (into the staging
buffer and copied D2H into the pool for a host layer) and the rest joins the residual window.
Assumes: every sequence has the same prompt length (the contexts are equal across the batch);
the plan's layers are homogeneous (one weight-buffer size).
Ignores: sampling (greedy only), stop tokens, paged or fp8 KV, KV split within a layer, KV on
CXL / NVMe / a CSD and attention inside a CSD (``Plan.not_executable`` refuses those plans); the
query and output buffers of CPU attention (pinned, B x H x D each) are outside the pool.
Source: infer-contract.md; FlexGen (Sheng et al., 2023) for overlapped layer-wise KV and weight
streaming.

Shapes: B batch, T tokens of a pass, L final length, H query heads, K kv heads, D head_dim.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwmodels.units import UserInputError, format_bytes
from kernels import timing
from planners.plan import Plan
from simulator.job import InferJob
from simulator.model import ModelSpec
from validate.executor import POOL_ALIGN_BYTES, OffloadPool, check_fits, host_memory_bytes
from validate.model import (
    Decoder,
    DecoderLayer,
    check_buildable,
    init_parameter,
    make_batch,
    rope_tables,
)

WARM_DECODE_STEPS = 2
"""Decode steps left out of ``decode_step_time_s`` (the median of the rest): the first steps
carry one-time costs (kernel selection, the allocator's first blocks)."""
WEIGHT_ALIGN_ELEMS = 128
"""Each parameter's offset in a layer's flat weight block is a multiple of this many elements
(GEMM operands stay 256-byte aligned)."""
PROMPT_SEED = 1
KV_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class InferRun:
    """What one run of an engine measured (the runner turns it into an ``InferRecord``)."""

    tokens: list[list[int]]
    """Generated ids per sequence: the prefill's argmax, then one per decode step."""
    prefill_time_s: float
    decode_step_times_s: list[float]
    contexts: list[int]
    """KV length (tokens cached before the step) at each decode step."""
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    host_pinned_bytes: int = 0
    """Pinned host bytes the engine allocated (the static pool; HF: the pinned allocator's peak)."""
    h2d_bytes_per_step: int = 0
    """Bytes the last decode step copied host to device (KV and weights)."""
    d2h_bytes_per_step: int = 0
    setup_s: float = 0.0
    """Seconds to build the weights and buffers (pinning included)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Engine facts worth recording (effective lookahead, buffer counts, allocator)."""
    logits: list[torch.Tensor] = field(default_factory=list)
    """fp32 logits [B, V] of the prefill and of each step (only with ``keep_logits``)."""
    decode_issue_times_s: list[float] = field(default_factory=list)
    """Per decode step, the host's time to issue it (the pass's Python and launches, before the
    synchronize that ends the step's timer)."""
    warmup_s: float | None = None
    """Seconds of the warm-up before the timed prefill (None: none)."""
    teacher_logits: list[torch.Tensor] = field(default_factory=list)
    """fp32 logits [B, V] of the prefill and of each decode step fed a reference run's tokens
    (teacher forcing; only with ``teacher``)."""

    @property
    def decode_step_time_s(self) -> float | None:
        return decode_step_time(self.decode_step_times_s)


SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
"""The SDPA backends both engines let torch pick from on CUDA: all but cuDNN's. torch 2.11 picks
cuDNN attention first on an H200; it builds an execution plan for each new KV length (a decode
step's, every step: ~36 ms of host time per step at 32K), and plans built in different processes
gave different bits. Flash attention, picked next, takes any length at no host cost and is
deterministic."""


def sdpa_backends(device: torch.device) -> Any:
    """A context in which SDPA picks from ``SDPA_BACKENDS`` (CUDA; elsewhere nothing changes)."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name) for name in SDPA_BACKENDS])


def decode_step_time(times: list[float]) -> float | None:
    """Median of the decode steps after the first ``WARM_DECODE_STEPS`` (of all when fewer)."""
    if not times:
        return None
    rest = times[WARM_DECODE_STEPS:] or times
    return statistics.median(rest)


def infer_job(plan: Plan) -> InferJob:
    """The plan's inference job; refuse, in one line, a training plan or one the executor
    cannot carry out (``Plan.not_executable``)."""
    job = plan.scenario.job
    if not isinstance(job, InferJob):
        raise UserInputError("scenario.job.mode: the inference executor runs inference plans")
    why = plan.not_executable()
    if why:
        raise UserInputError(f"plan: {why}")
    return job


def infer_spec(plan: Plan) -> ModelSpec:
    """The plan's model; refuse, in one line, one the reference decoder cannot serve."""
    spec = plan.scenario.model
    check_buildable(spec)
    if not (spec.has_embedding and spec.has_lm_head):
        raise UserInputError("model: inference needs an embedding and an LM head")
    return spec


def kv_torch_dtype(plan: Plan) -> torch.dtype:
    """The KV cache's dtype (every unquantized layer's must agree; bf16 when every layer is
    quantized: the dtype it is dequantized into); the model computes in it."""
    names = {lp.kv_cache.dtype for lp in plan.layers if lp.kv_cache is not None and lp.kv_cache.dtype in KV_DTYPES}
    names = names or {"bf16"}
    if len(names) != 1:
        raise UserInputError("layers.kv_cache.dtype: every layer's KV cache must have one dtype")
    return KV_DTYPES[names.pop()]


def prompt_ids(spec: ModelSpec, job: InferJob, device: torch.device) -> torch.Tensor:
    """The deterministic prompts [B, prompt_len] both engines serve."""
    return make_batch(spec, seq_len=job.prompt_len, batch=job.batch, device=device, seed=PROMPT_SEED)


def pin_peak_bytes() -> int:
    """Peak bytes of torch's pinned host allocator (0 where torch does not report it)."""
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is None or not torch.cuda.is_available():
        return 0
    return int(stats().get("allocated_bytes.peak", 0) or 0)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // POOL_ALIGN_BYTES) * POOL_ALIGN_BYTES


class _Streams:
    """The compute, H2D and D2H streams and their events; on the CPU every call is a no-op."""

    def __init__(self, device: torch.device, *, separate: bool = True) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.compute = torch.cuda.current_stream(device)
            self.h2d = torch.cuda.Stream(device) if separate else self.compute
            self.d2h = torch.cuda.Stream(device) if separate else self.compute

    def record(self, stream: str) -> Any:
        return getattr(self, stream).record_event() if self.cuda else None

    def wait(self, stream: str, *events: Any) -> None:
        if self.cuda:
            for ev in events:
                if ev is not None:
                    getattr(self, stream).wait_event(ev)

    def on(self, stream: str) -> Any:
        import contextlib

        return torch.cuda.stream(getattr(self, stream)) if self.cuda else contextlib.nullcontext()

    def join(self) -> None:
        """The compute stream waits for both copy streams (the end of a pass)."""
        if self.cuda:
            self.compute.wait_stream(self.h2d)
            self.compute.wait_stream(self.d2h)


def _layer_offsets(layer: nn.Module) -> tuple[dict[str, tuple[int, int]], int]:
    """Each parameter's (offset, numel) in the layer's flat weight block, and the block's size
    in elements."""
    offsets: dict[str, tuple[int, int]] = {}
    off = 0
    for name, p in layer.named_parameters():
        offsets[name] = (off, p.numel())
        off += -(-p.numel() // WEIGHT_ALIGN_ELEMS) * WEIGHT_ALIGN_ELEMS
    return offsets, off


def _bind(layer: nn.Module, flat: torch.Tensor, offsets: dict[str, tuple[int, int]]) -> None:
    """Make ``layer``'s parameters views of ``flat`` at ``offsets``."""
    for name, p in list(layer.named_parameters()):
        mod_name, _, pname = name.rpartition(".")
        mod = layer.get_submodule(mod_name) if mod_name else layer
        off, n = offsets[name]
        setattr(mod, pname, nn.Parameter(flat[off : off + n].view(p.shape), requires_grad=False))


@dataclass
class _Sizes:
    """Bytes of the engine's buffers, before any is allocated."""

    resident_weight_bytes: int
    resident_kv_bytes: int
    staging_bytes: int
    weight_buffer_bytes: int
    host_pool_bytes: int

    @property
    def hbm_bytes(self) -> int:
        return self.resident_weight_bytes + self.resident_kv_bytes + self.staging_bytes + self.weight_buffer_bytes


class _Carver:
    """Hands out consecutive tensors of one flat uint8 buffer, each at an aligned offset."""

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat, self.off = flat, 0

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        nbytes = n * dtype.itemsize
        if self.off + nbytes > self.flat.numel():
            raise ValueError(f"_Carver: {nbytes} bytes at {self.off} past the buffer's {self.flat.numel()}")
        t = self.flat[self.off : self.off + nbytes].view(dtype).view(shape)
        self.off = _aligned(self.off + nbytes)
        return t


class StaticDecodeEngine:
    """Builds the model and buffers of ``plan`` on ``device`` (weights from ``seed``), then
    ``run()`` serves the job once. ``dtype`` overrides the KV dtype as the compute dtype (CPU
    tests use fp32); ``check_memory`` refuses a plan whose buffers do not fit before any is
    allocated."""

    def __init__(self, plan: Plan, *, device: Any, seed: int = 0, dtype: torch.dtype | None = None,
                 check_memory: bool = True, graphs: bool = True) -> None:
        job = infer_job(plan)
        spec = infer_spec(plan)
        if job.engine != "static":
            raise UserInputError(f"scenario.job.engine: {job.engine!r} plans run on the HF engine "
                                 "(validate.infer_hf), not the static one")
        t0 = time.perf_counter()
        self.plan, self.job, self.spec = plan, job, spec
        self.device = torch.device(device)
        self.dtype = dtype or kv_torch_dtype(plan)
        self.num_layers = spec.num_layers
        self.B, self.L = job.batch, job.max_seq_len
        self.chunk_len = job.prefill_chunk_len or job.prompt_len
        self.kv_host = [lp.kv_cache is not None and lp.kv_cache.resident_frac == 0.0 for lp in plan.layers]
        self.kv_q = [lp.kv_cache is not None and lp.kv_cache.dtype not in KV_DTYPES for lp in plan.layers]
        self.q_fmt, self.q_group = self._quant_format(plan, job, spec)
        self.attn_cpu = [lp.attention_on == "cpu" for lp in plan.layers]  # host KV, unquantized (Plan.unsupported)
        self.kv_layers = [i for i, h in enumerate(self.kv_host) if h]
        self.w_host = [lp.model_states.params == "host" for lp in plan.layers]
        self.num_staging = plan.num_staging_buffers if any(self.kv_host) else 0
        self.kv_lookahead = min(plan.prefetch_lookahead_layers, max(self.num_staging - 1, 0))
        self.w_lookahead = [lp.model_states.params_prefetch_layers for lp in plan.layers]
        host_w = [k for k, h in zip(self.w_lookahead, self.w_host, strict=True) if h]
        # the plan's rotating buffers, one layer's weights each (the replay's count); a fetch
        # waits until the layer that last used its buffer has been issued (_issue)
        self.num_wbufs = plan.num_staging_buffers if host_w else 0
        self.w_layers = [i for i, h in enumerate(self.w_host) if h]
        self.streams = _Streams(self.device)

        model = Decoder(spec, device="meta", dtype=self.dtype)
        self.offsets, self.layer_numel = _layer_offsets(model.layers[0])
        es = torch.empty(0, dtype=self.dtype).element_size()
        kv_shape = (self.B, self.L, spec.num_kv_heads, spec.head_dim)
        kv_layer_bytes = 2 * self.B * self.L * spec.num_kv_heads * spec.head_dim * es
        n_host_q = sum(1 for h, q in zip(self.kv_host, self.kv_q, strict=True) if h and q)
        n_host_full = self.kv_host.count(True) - n_host_q
        n_hbm_q = sum(self.kv_q) - n_host_q
        n_hbm_full = self.kv_host.count(False) - n_hbm_q
        store_raw, store_bytes, resid_bytes = self._quant_sizes(es)
        need_staging = kv_layer_bytes if n_host_full else store_raw  # one layer's fetch at the final length
        self.sizes = _Sizes(
            resident_weight_bytes=es * (sum(p.numel() for n, p in model.named_parameters()
                                            if not n.startswith("layers."))
                                        + self.layer_numel * self.w_host.count(False)),
            resident_kv_bytes=kv_layer_bytes * n_hbm_full + (store_bytes + resid_bytes) * n_hbm_q
            + resid_bytes * n_host_q + (kv_layer_bytes if any(self.kv_q) else 0),
            staging_bytes=(kv_layer_bytes if n_host_full else store_bytes) * self.num_staging,
            weight_buffer_bytes=self.layer_numel * es * self.num_wbufs,
            host_pool_bytes=2 * _aligned(kv_layer_bytes // 2) * n_host_full + store_bytes * n_host_q
            + _aligned(self.layer_numel * es) * self.w_host.count(True),
        )
        if plan.staging_buffer_bytes and self.num_staging and plan.staging_buffer_bytes < need_staging:
            raise UserInputError(
                f"plan.staging_buffer_bytes: {format_bytes(plan.staging_buffer_bytes)} is less than one "
                f"layer's K and V at the final length, {format_bytes(need_staging)}")
        if check_memory:
            self._check_memory()

        # ---- weights: validate.model's draws in its order, on the device ----------------------
        self.pool = OffloadPool(self.sizes.host_pool_bytes, pin=self.streams.cuda)
        for name, child in model.named_children():
            if name != "layers":
                child.to_empty(device=self.device)
        self.w_host_flat: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(model.layers):
            if self.w_host[i]:
                self.w_host_flat[i] = self.pool.alloc(torch.Size([self.layer_numel]), self.dtype,
                                                      where=f"plan.layers.{i}.model_states")
            else:
                layer.to_empty(device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.is_meta:
                    init_parameter(name, p, gen)
                    continue
                _, idx, local = name.split(".", 2)
                off, n = self.offsets[local]
                t = torch.empty(p.shape, device=self.device, dtype=self.dtype)
                init_parameter(name, t, gen)
                self.w_host_flat[int(idx)][off : off + n].copy_(t.view(-1))
                del t
        model.requires_grad_(False)
        self.model = model
        self.w_slots: list[tuple[torch.Tensor, DecoderLayer]] = []
        for _ in range(self.num_wbufs):
            flat = torch.empty(self.layer_numel, device=self.device, dtype=self.dtype)
            slot = DecoderLayer(spec, probe=False, device="meta", dtype=self.dtype)
            _bind(slot, flat, self.offsets)
            self.w_slots.append((flat, slot))

        # ---- KV: resident buffers, the host pool's, the staging buffers ----------------------
        self.kv: dict[int, Any] = {}  # (K, V) [B, L, K, D], or a KiviStore (quantized layers)
        self.resid: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # quantized layers' residual windows
        for i in range(self.num_layers):
            where = f"plan.layers.{i}.kv_cache"
            if self.kv_q[i]:
                def alloc(shape: tuple[int, ...], dt: torch.dtype, host: bool = self.kv_host[i],
                          where: str = where) -> torch.Tensor:
                    if host:
                        return self.pool.alloc(torch.Size(shape), dt, where=where)
                    return torch.empty(shape, device=self.device, dtype=dt)

                self.kv[i] = self._store(alloc)
                r_shape = (self.B, self.q_group, spec.num_kv_heads, spec.head_dim)
                self.resid[i] = (torch.empty(r_shape, device=self.device, dtype=self.dtype),
                                 torch.empty(r_shape, device=self.device, dtype=self.dtype))
            elif self.kv_host[i]:
                self.kv[i] = (self.pool.alloc(torch.Size(kv_shape), self.dtype, where=where),
                              self.pool.alloc(torch.Size(kv_shape), self.dtype, where=where))
            else:
                self.kv[i] = (torch.empty(kv_shape, device=self.device, dtype=self.dtype),
                              torch.empty(kv_shape, device=self.device, dtype=self.dtype))
        self.staging: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.staging_q: list[Any] = []  # KiviStore views of the staging buffers (quantized host layers)
        if n_host_q:  # one flat buffer per slot, viewed as a store and (mixed plans) as bf16 K, V
            slot_bytes = max(store_bytes, 2 * _aligned(kv_layer_bytes // 2) if n_host_full else 0)
            for _ in range(self.num_staging):
                flat = torch.empty(slot_bytes, device=self.device, dtype=torch.uint8)
                self.staging_q.append(self._store(_Carver(flat)))
                if n_host_full:
                    carve = _Carver(flat)
                    self.staging.append((carve(kv_shape, self.dtype), carve(kv_shape, self.dtype)))
        else:
            self.staging = [(torch.empty(kv_shape, device=self.device, dtype=self.dtype),
                             torch.empty(kv_shape, device=self.device, dtype=self.dtype))
                            for _ in range(self.num_staging)]
        self.work: tuple[torch.Tensor, torch.Tensor] | None = None  # the bf16 K, V quantized layers dequantize into
        if any(self.kv_q):
            self.work = (torch.empty(kv_shape, device=self.device, dtype=self.dtype),
                         torch.empty(kv_shape, device=self.device, dtype=self.dtype))
        from validate.kv_quant import triton_available

        self.triton = any(self.kv_q) and self.streams.cuda and triton_available()
        self.cos, self.sin = rope_tables(self.L, spec.head_dim, device=self.device, dtype=self.dtype)
        self._slot_free: dict[tuple[str, int], list[Any]] = {}  # (kind, slot) -> events to wait for
        self._d2h_done: dict[int, Any] = {}
        self._ready: dict[tuple[str, int], Any] = {}
        self._slot_of: dict[tuple[str, int], int] = {}
        self._ordinal = {(kind, i): n
                         for kind, where in (("w", self.w_host), ("kv", self.kv_host))
                         for n, i in enumerate(i for i in range(self.num_layers) if where[i])}
        self.h2d_bytes = 0
        self._trace_copies = False
        self._h2d_events: list[tuple[Any, Any, int]] = []  # per fetch: timing events after its waits, at its end
        self.graphs = graphs and self.streams.cuda
        self._graphs: dict[str, Any] = {}
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)  # a decode step's position
        self._tok = torch.zeros(self.B, dtype=torch.long, device=self.device)  # its input tokens
        self.trace: list[tuple[str, torch.Tensor]] | None = None  # (name, tensor) per layer, when a list
        self.warmup_s = 0.0
        self.d2h_bytes = 0
        self.cpu_threads = 0
        self.cpu_attention_s = 0.0  # the host's seconds in CPU attention (waits included) this step
        if any(self.attn_cpu):
            self.cpu_threads = cpu_attention_threads()
            torch.set_num_threads(self.cpu_threads)
            q_shape = (self.B, spec.num_heads, 1, spec.head_dim)
            pin = self.streams.cuda
            self.q_host = torch.empty(q_shape, dtype=self.dtype, pin_memory=pin)  # B H 1 D
            self.out_host = torch.empty(q_shape, dtype=self.dtype, pin_memory=pin)
            self.out_dev = torch.empty(q_shape, device=self.device, dtype=self.dtype)
        if self.streams.cuda:
            torch.cuda.synchronize(self.device)
        self.setup_s = time.perf_counter() - t0

    # ---- quantized KV ----------------------------------------------------------------------------

    @staticmethod
    def _quant_format(plan: Plan, job: InferJob, spec: ModelSpec) -> tuple[str, int]:
        """(format, key group tokens) of the plan's quantized layers (("none", 0) without any):
        the job's kv_quant and group size (every quantized layer's must be those)."""
        from validate.kv_quant import check_format

        quant = [lp for lp in plan.layers if lp.kv_cache is not None and lp.kv_cache.dtype not in KV_DTYPES]
        if not quant:
            return "none", 0
        g, _ = check_format(job.kv_quant, head_dim=spec.head_dim, group_size=job.kv_group_size)
        for lp in quant:
            kv = lp.kv_cache
            assert kv is not None  # filtered above
            if kv.dtype != job.kv_quant:
                raise UserInputError(f"layers.{lp.layer}.kv_cache.dtype: {kv.dtype!r}, the job accepts "
                                     f"{job.kv_quant!r}")
            if kv.group_size not in (None, g):
                raise UserInputError(f"layers.{lp.layer}.kv_cache.group_size: {kv.group_size}, the job's is {g}")
        return job.kv_quant, g

    def _store(self, alloc: Any) -> Any:
        """A quantized layer's store of the final length's whole groups, made by ``alloc``."""
        from validate.kv_quant import alloc_store

        s = self.spec
        return alloc_store(alloc, batch=self.B, num_rows=self.L // self.q_group * self.q_group,
                           num_kv_heads=s.num_kv_heads, head_dim=s.head_dim, kv_dtype=self.q_fmt,
                           group_size=self.q_group)

    def _quant_sizes(self, es: int) -> tuple[int, int, int]:
        """A quantized layer's store bytes (exact, and with each tensor aligned as the pool and the
        staging buffers place them) and its residual window's bytes; zeros without one."""
        if self.q_fmt == "none":
            return 0, 0, 0
        store = self._store(lambda shape, dt: torch.empty(shape, dtype=dt, device="meta"))
        sizes = [t.numel() * t.element_size() for t in store.tensors()]
        resid = 2 * self.B * self.q_group * self.spec.num_kv_heads * self.spec.head_dim * es
        return sum(sizes), sum(_aligned(n) for n in sizes), resid

    def _q_store(self, i: int) -> Any:
        """Quantized layer ``i``'s store on the GPU: resident, or its staging buffer (the compute
        stream waits for the fetch)."""
        if self.kv_host[i]:
            self.streams.wait("compute", self._ready[("kv", i)])
            return self.staging_q[self._slot_of[("kv", i)]]
        return self.kv[i]

    def _q_prepare(self, i: int, b0: int, b1: int, p0: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized layer ``i`` before attention: its whole groups cached before ``p0``
        dequantized into the shared bf16 buffer, its residual window after them."""
        from validate.kv_quant import dequantize_into

        assert self.work is not None  # allocated when any layer is quantized
        kw, vw = self.work
        nq0 = p0 // self.q_group * self.q_group
        dequantize_into(self._q_store(i), kw, vw, kv_dtype=self.q_fmt, b0=b0, b1=b1, n=nq0, use_triton=self.triton)
        if p0 > nq0:
            rk, rv = self.resid[i]
            kw[b0:b1, nq0:p0].copy_(rk[b0:b1, : p0 - nq0])
            vw[b0:b1, nq0:p0].copy_(rv[b0:b1, : p0 - nq0])
        return kw, vw

    def _q_commit(self, i: int, b0: int, b1: int, p0: int, end: int) -> None:
        """Quantized layer ``i`` after attention: the groups the pass filled quantized into its
        store (a host layer's: the staging buffer's rows, then D2H into the pool), the rows after
        the last whole group into the residual window."""
        from validate.kv_quant import quantize_into

        assert self.work is not None
        kw, vw = self.work
        g = self.q_group
        nq0, nq1 = p0 // g * g, end // g * g
        if nq1 > nq0:
            store = self.staging_q[self._slot_of[("kv", i)]] if self.kv_host[i] else self.kv[i]
            quantize_into(store, kw[b0:b1], vw[b0:b1], kv_dtype=self.q_fmt, b0=b0, t0=nq0, t1=nq1)
            if self.kv_host[i]:
                st = self.streams
                st.wait("d2h", st.record("compute"))
                with st.on("d2h"):
                    for src, dst in zip(store.rows(b0, b1, nq0, nq1), self.kv[i].rows(b0, b1, nq0, nq1),
                                        strict=True):
                        dst.copy_(src, non_blocking=True)
                        self.d2h_bytes += src.numel() * src.element_size()
                self._d2h_done[i] = st.record("d2h")
        a = max(nq1, p0)
        if end > a:
            rk, rv = self.resid[i]
            rk[b0:b1, a - nq1 : end - nq1].copy_(kw[b0:b1, a:end])
            rv[b0:b1, a - nq1 : end - nq1].copy_(vw[b0:b1, a:end])

    # ---- memory check --------------------------------------------------------------------------

    def _check_memory(self) -> None:
        s = self.sizes
        cuda = self.device.type == "cuda"
        free = torch.cuda.mem_get_info(self.device)[0] if cuda else None
        host_free = host_memory_bytes()
        check_fits(self.plan, num_layers=self.num_layers, gpu_budget_bytes=free,
                   host_pool_bytes=s.host_pool_bytes if cuda else s.host_pool_bytes + s.hbm_bytes,
                   host_available_bytes=host_free)
        if free is not None and s.hbm_bytes > free:
            raise UserInputError(
                f"plan: the static engine's buffers need {format_bytes(s.hbm_bytes)} of HBM (weights "
                f"{format_bytes(s.resident_weight_bytes + s.weight_buffer_bytes)}, KV "
                f"{format_bytes(s.resident_kv_bytes)}, staging {format_bytes(s.staging_bytes)}), "
                f"the GPU has {format_bytes(free)} free")

    def close(self) -> None:
        """Unpin and drop the host pool."""
        self.pool.close()

    # ---- copies ----------------------------------------------------------------------------------

    def _fetch(self, kind: str, layer: int, ordinal: int, b0: int, b1: int, p0: int) -> None:
        """Start the H2D copy of ``layer``'s weights (``kind`` "w") or cached KV rows [:p0] of
        sequences [b0, b1) (``kind`` "kv") into its rotating buffer."""
        n = self.num_wbufs if kind == "w" else self.num_staging
        slot = ordinal % n
        st = self.streams
        st.wait("h2d", *self._slot_free.get((kind, slot), ()))
        if kind == "kv":
            st.wait("h2d", self._d2h_done.get(layer))
        start = self._timing_event("h2d")
        nbytes = 0
        with st.on("h2d"):
            if kind == "w":
                flat, _ = self.w_slots[slot]
                src = self.w_host_flat[layer]
                flat.copy_(src, non_blocking=True)
                nbytes = src.numel() * src.element_size()
            elif p0 and self.kv_q[layer]:  # the whole groups cached before p0
                nq0 = p0 // self.q_group * self.q_group
                for dst, src in zip(self.staging_q[slot].rows(b0, b1, 0, nq0), self.kv[layer].rows(b0, b1, 0, nq0),
                                    strict=True):
                    dst.copy_(src, non_blocking=True)
                    nbytes += src.numel() * src.element_size()
            elif p0:
                for buf, host in zip(self.staging[slot], self.kv[layer], strict=True):
                    for b in range(b0, b1):  # one contiguous copy per sequence (rows [:p0])
                        buf[b, :p0].copy_(host[b, :p0], non_blocking=True)
                    nbytes += (b1 - b0) * host[0, :p0].numel() * host.element_size()
        self.h2d_bytes += nbytes
        self._ready[(kind, layer)] = st.record("h2d")
        if start is not None:
            self._h2d_events.append((start, self._timing_event("h2d"), nbytes))
        self._slot_of[(kind, layer)] = slot

    def _timing_event(self, stream: str) -> Any:
        """A timing event recorded on ``stream`` (CUDA, while the step's copies are traced)."""
        if not (self.streams.cuda and self._trace_copies):
            return None
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(getattr(self.streams, stream))
        return ev

    def _issue(self, upto_layer: int, queues: dict[str, list[int]], b0: int, b1: int, p0: int) -> None:
        """Issue, in layer order, the queued fetches due once layer ``upto_layer`` starts: a
        layer's weights ``params_prefetch_layers`` ahead, its KV ``kv_lookahead`` ahead."""
        for kind, queue in queues.items():
            while queue:
                layer = queue[0]
                ahead = self.w_lookahead[layer] if kind == "w" else self.kv_lookahead
                if layer - ahead > upto_layer:
                    break
                if kind == "w":
                    k = self._ordinal[(kind, layer)]
                    if k >= self.num_wbufs and self.w_layers[k - self.num_wbufs] >= upto_layer:
                        break  # its buffer's last user is not issued yet
                queue.pop(0)
                self._fetch(kind, layer, self._ordinal[(kind, layer)], b0, b1, p0)

    # ---- one pass: a prefill chunk of one sequence or a decode step of the batch -----------------

    def _layer(self, i: int) -> DecoderLayer:
        """Layer ``i``'s module: its resident weights, or the weight buffer it was fetched into
        (the compute stream waits for the fetch)."""
        if self.w_host[i]:
            self.streams.wait("compute", self._ready[("w", i)])
            return self.w_slots[self._slot_of[("w", i)]][1]
        return self.model.layers[i]  # type: ignore[return-value]  # ModuleList items

    def _kv_bufs(self, i: int, b0: int = 0, b1: int = 0, p0: int = 0, *,
                 cpu_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s K and V buffers [B, L, K, D]: resident, or its staging buffer (the
        compute stream waits for the fetch; ``cpu_attention``: nothing is fetched, it waits for
        the buffer to be free, as a fetch into it would); a quantized layer's, the shared bf16
        buffer with its rows before ``p0`` of sequences [b0, b1) in place (``_q_prepare``)."""
        if self.kv_q[i]:
            return self._q_prepare(i, b0, b1, p0)
        if self.kv_host[i] and cpu_attention:
            slot = self._ordinal[("kv", i)] % self.num_staging
            self.streams.wait("compute", *self._slot_free.get(("kv", slot), ()))
            self._slot_of[("kv", i)] = slot
            return self.staging[slot]
        if self.kv_host[i]:
            self.streams.wait("compute", self._ready[("kv", i)])
            return self.staging[self._slot_of[("kv", i)]]
        return self.kv[i]

    def _issue_next_kv(self, i: int, queues: dict[str, list[int]], b0: int, b1: int, p0: int) -> None:
        """Before the host waits for layer ``i``'s CPU attention: issue the next queued KV fetch
        whose buffer's last user has been issued, whatever the lookahead (the replay's rule)."""
        queue = queues["kv"]
        if not queue:
            return
        j = self._ordinal[("kv", queue[0])]
        if j < self.num_staging or self.kv_layers[j - self.num_staging] < i:
            m = queue.pop(0)
            self._fetch("kv", m, j, b0, b1, p0)

    def _attend_cpu(self, i: int, q: torch.Tensor, b0: int, b1: int, end: int) -> torch.Tensor:
        """Layer ``i``'s decode attention on the host CPU over its pool rows [:end] (the new
        token's written back by ``_write_back`` first): q [B, H, 1, D] D2H after the write-back
        (one stream, in order), the host waits for it, SDPA on the CPU in the pool's dtype (its
        CPU kernel accumulates in fp32) with torch's ``cpu_threads`` threads, the output H2D on
        the compute stream (a fetch on the H2D stream must not delay it); [B, H, 1, D] on the
        device."""
        st = self.streams
        t0 = time.perf_counter()
        st.wait("d2h", st.record("compute"))
        with st.on("d2h"):
            self.q_host.copy_(q, non_blocking=True)
        done = st.record("d2h")
        if done is not None:
            done.synchronize()
        kpool, vpool = self.kv[i]
        out = self._attend(self.q_host, kpool, vpool, b0, b1, end - 1, end, None)  # b H 1 D
        self.out_host.copy_(out)
        self.out_dev.copy_(self.out_host, non_blocking=True)
        nbytes = self.q_host.numel() * self.q_host.element_size()
        self.d2h_bytes += nbytes
        self.h2d_bytes += nbytes
        self.cpu_attention_s += time.perf_counter() - t0
        return self.out_dev

    def _attend(self, q: torch.Tensor, kbuf: torch.Tensor, vbuf: torch.Tensor, b0: int, b1: int, p0: int,
                end: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of ``q`` [b, H, T, D] over the cached rows [:end] of sequences [b0, b1)."""
        s = self.spec
        T = q.shape[2]
        kk = kbuf[b0:b1, :end].transpose(1, 2)  # b K ctx D
        vv = vbuf[b0:b1, :end].transpose(1, 2)
        gqa = s.num_kv_heads != s.num_heads
        if mask is not None and gqa:  # the masked kernels take no GQA: expand the kv heads
            rep = s.num_heads // s.num_kv_heads
            kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
            gqa = False
        return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, is_causal=T > 1 and not p0,
                                              enable_gqa=gqa)

    def _post(self, layer: DecoderLayer, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """After attention: o_proj, the residual, the MLP block and its residual."""
        b, _, T, _ = a.shape
        a = a.transpose(1, 2).reshape(b, T, self.spec.q_size)
        x = x + layer.o_proj(a)
        return x + layer._mlp(x)

    def _pre_decode(self, layer: DecoderLayer, x: torch.Tensor, kbuf: torch.Tensor,
                    vbuf: torch.Tensor) -> torch.Tensor:
        """Before attention, one token of every sequence at the position in ``self._pos`` (a
        device tensor, so a captured graph serves every step): norm, q/k/v, rotary, and the new
        k, v written into row pos of ``kbuf``, ``vbuf``; q [B, H, 1, D]."""
        rope = (self.cos.index_select(0, self._pos), self.sin.index_select(0, self._pos))
        q, k, v = layer.qkv(x, rope)
        kbuf.index_copy_(1, self._pos, k.transpose(1, 2))
        vbuf.index_copy_(1, self._pos, v.transpose(1, 2))
        return q

    def _pass(self, ids: torch.Tensor, b0: int, b1: int, p0: int, *, num_layers: int | None = None,
              graphed: bool = False) -> torch.Tensor:
        with sdpa_backends(self.device):
            return self._pass_layers(ids, b0, b1, p0, num_layers=num_layers, graphed=graphed)

    def _pass_layers(self, ids: torch.Tensor, b0: int, b1: int, p0: int, *, num_layers: int | None = None,
                     graphed: bool = False) -> torch.Tensor:
        """Run tokens ``ids`` [b, T] of sequences [b0, b1) at positions [p0, p0 + T) through the
        first ``num_layers`` layers (all), caching their K and V; the last position's logits
        [b, V]. ``graphed``: a decode step of the whole batch replaying the captured graphs
        around eager attention (``_capture``)."""
        st = self.streams
        T = ids.shape[1]
        end = p0 + T
        n_layers = self.num_layers if num_layers is None else num_layers
        decode = T == 1 and b1 - b0 == self.B
        queues = {"w": [i for i in range(n_layers) if self.w_host[i]],
                  "kv": [i for i in range(n_layers) if self.kv_host[i] and not (decode and self.attn_cpu[i])]}
        self.cpu_attention_s = 0.0
        if decode:
            self._pos.fill_(p0)
        if graphed:
            g = self._graphs
            self._tok.copy_(ids[:, 0])
            g["stem"].replay()
        else:
            x = self.model.embed_tokens(ids)  # b T h
            rope = (self.cos[p0:end], self.sin[p0:end])
        mask = None
        if T > 1 and p0:  # a later chunk: every cached row, and causal within the chunk
            mask = torch.ones(T, end, dtype=torch.bool, device=self.device).tril(p0)
        for i in range(n_layers):
            self._issue(i, queues, b0, b1, p0)
            layer = self._layer(i)
            on_cpu = decode and self.attn_cpu[i]
            kbuf, vbuf = self._kv_bufs(i, b0, b1, p0, cpu_attention=on_cpu)
            if graphed:
                g[f"pre.{i}"].replay()
                q = self._g_q[i]
            elif decode:
                q = self._pre_decode(layer, x, kbuf, vbuf)
            else:
                q, k, v = layer.qkv(x, rope)  # b H T D, b K T D
                kbuf[b0:b1, p0:end].copy_(k.transpose(1, 2))
                vbuf[b0:b1, p0:end].copy_(v.transpose(1, 2))
            if self.trace is not None:
                self.trace.append((f"{i}.q", q[:, :, -1].float().clone()))
            if self.kv_host[i] and not self.kv_q[i]:
                self._write_back(i, kbuf, vbuf, b0, b1, p0, end)
            if on_cpu:
                self._issue_next_kv(i, queues, b0, b1, p0)
                a = self._attend_cpu(i, q, b0, b1, end)
            else:
                a = self._attend(q, kbuf, vbuf, b0, b1, p0, end, mask)
            if self.kv_q[i]:
                self._q_commit(i, b0, b1, p0, end)
            if self.kv_host[i]:
                slot = self._slot_of[("kv", i)]
                self._slot_free[("kv", slot)] = [st.record("compute"), self._d2h_done.get(i)]
            if self.trace is not None:
                self.trace.append((f"{i}.attn", a[:, :, -1].float().clone()))
            if graphed:
                self._g_attn.copy_(a)
                g[f"post.{i}"].replay()
            else:
                x = self._post(layer, x, a)
            if self.trace is not None and not graphed:
                self.trace.append((f"{i}.out", x[:, -1].float().clone()))
            if self.w_host[i]:
                self._slot_free[("w", self._slot_of[("w", i)])] = [st.record("compute")]
        if graphed:
            g["head"].replay()
            return self._g_logits
        return self.model.head_logits(x[:, -1:])[:, 0].float()

    def _write_back(self, i: int, kbuf: torch.Tensor, vbuf: torch.Tensor, b0: int, b1: int, p0: int,
                    end: int) -> None:
        """Copy the pass's new rows of layer ``i`` from its staging buffer into the host pool."""
        st = self.streams
        st.wait("d2h", st.record("compute"))
        with st.on("d2h"):
            for buf, host in zip((kbuf, vbuf), self.kv[i], strict=True):
                for b in range(b0, b1):
                    host[b, p0:end].copy_(buf[b, p0:end], non_blocking=True)
                self.d2h_bytes += (b1 - b0) * buf[0, p0:end].numel() * buf.element_size()
        self._d2h_done[i] = st.record("d2h")

    # ---- CUDA graphs of the decode step ----------------------------------------------------------

    def _capture(self) -> None:
        """Capture a decode step's shape-static parts as CUDA graphs sharing one memory pool: the
        embedding of ``self._tok``; per layer the part before attention (``_pre_decode``, into the
        layer's resident KV buffer or its fixed staging buffer, slot = ordinal % n, with the
        weights of its fixed weight buffer) and the part after it (``_post`` of
        ``self._g_attn``); the head. Attention, whose KV length grows, runs eagerly between
        them; the copies stay eager on their streams. Each part runs once eagerly on a side
        stream first (the kernels, cuBLAS's workspace of that stream)."""
        slots = {("kv", i): self._ordinal[("kv", i)] % self.num_staging for i in range(self.num_layers)
                 if self.kv_host[i]}
        slots.update({("w", i): self._ordinal[("w", i)] % self.num_wbufs for i in range(self.num_layers)
                      if self.w_host[i]})

        def layer_of(i: int) -> DecoderLayer:
            return self.w_slots[slots[("w", i)]][1] if self.w_host[i] else self.model.layers[i]  # type: ignore[return-value]

        def kv_of(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            if self.kv_q[i]:
                assert self.work is not None
                return self.work
            return self.staging[slots[("kv", i)]] if self.kv_host[i] else self.kv[i]

        with torch.inference_mode():
            self._capture_all(layer_of, kv_of)

    def _capture_all(self, layer_of: Any, kv_of: Any) -> None:
        B, s = self.B, self.spec
        self._g_attn = torch.zeros(B, s.num_heads, 1, s.head_dim, device=self.device, dtype=self.dtype)
        xs: list[torch.Tensor] = []
        self._g_q = []
        pool = torch.cuda.graph_pool_handle()
        graphs: dict[str, Any] = {}

        side = torch.cuda.Stream(self.device)

        def capture(name: str, fn: Any) -> Any:
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                fn()  # warm: kernels loaded, cuBLAS's workspace for this stream
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = fn()
            graphs[name] = graph
            return out

        xs.append(capture("stem", lambda: self.model.embed_tokens(self._tok[:, None])))
        for i in range(self.num_layers):
            layer, (kbuf, vbuf) = layer_of(i), kv_of(i)
            x_in = xs[-1]
            self._g_q.append(capture(f"pre.{i}", lambda layer=layer, x=x_in, k=kbuf, v=vbuf:
                                     self._pre_decode(layer, x, k, v)))
            xs.append(capture(f"post.{i}", lambda layer=layer, x=x_in: self._post(layer, x, self._g_attn)))
        self._g_logits = capture("head", lambda: self.model.head_logits(xs[-1])[:, 0].float())
        self._g_x = xs
        self._graphs = graphs

    # ---- the run ---------------------------------------------------------------------------------

    def warm_up(self, ids: torch.Tensor) -> None:
        """One-off costs out of the timed run (CUDA): the decode graphs' capture (graphs on), a
        prefill-shaped pass of the first chunk of sequence 0 through layer 0 and the head (its
        kernels, the allocator's blocks of a prefill's activations, the copy paths of layer 0)
        and one whole decode step at the first decode context. The rows they write are written
        again by the run before it reads them."""
        if not self.streams.cuda:
            return
        t0 = time.perf_counter()
        if self.graphs:
            self._capture()  # first: a capture empties the allocator's cache
        with torch.inference_mode():
            self._pass(ids[:1, : self.chunk_len], 0, 1, 0, num_layers=1)
            self.streams.join()
            tok = torch.zeros(self.B, 1, dtype=torch.long, device=self.device)
            self._pass(tok, 0, self.B, self.job.prompt_len, graphed=self.graphs)
            self.streams.join()
        torch.cuda.synchronize(self.device)
        self.warmup_s = time.perf_counter() - t0

    def _decode(self, first: torch.Tensor, *, graphed: bool, forced: torch.Tensor | None = None,
                keep_logits: bool = False) -> dict[str, Any]:
        """``gen_len`` decode steps from token ``first`` [B]: each step's time (synchronized),
        host issue time (the pass's Python and launches, before the synchronize), context,
        argmax and (``keep_logits``) fp32 logits. ``forced`` [B, gen_len] feeds those tokens
        instead of the argmax (teacher forcing)."""
        job, dev = self.job, self.device
        tok = first
        out: dict[str, Any] = {"tokens": [], "times": [], "issue": [], "contexts": [], "logits": [], "cpu_attention": []}
        for step in range(job.gen_len):
            ctx = job.prompt_len + step
            self.h2d_bytes = self.d2h_bytes = 0
            self._h2d_events = []
            res: list[Any] = []

            def one(tok: torch.Tensor = tok, ctx: int = ctx, res: list = res) -> None:
                t0 = time.perf_counter()
                lg = self._pass(tok[:, None], 0, self.B, ctx, graphed=graphed)
                nxt = lg.argmax(-1)
                self.streams.join()
                res[:] = [lg, nxt, time.perf_counter() - t0]

            out["times"].append(timing.time_one(one, dev))
            out["issue"].append(res[2])
            out["cpu_attention"].append(self.cpu_attention_s)
            out["contexts"].append(ctx)
            out["tokens"].append(res[1])
            if keep_logits:
                out["logits"].append(res[0].cpu())
            tok = res[1] if forced is None else forced[:, step]
        return out

    def run(self, ids: torch.Tensor | None = None, *, keep_logits: bool = False,
            teacher: list[list[int]] | None = None, check_eager: bool = False) -> InferRun:
        """Warm up, prefill every sequence, then ``gen_len`` decode steps of the batch; measured.
        ``teacher`` (a reference run's tokens, [B][gen_len + 1]): afterwards the decode steps
        again, fed those tokens (the prefill's cache rows are untouched by decode), their logits
        kept as ``teacher_logits``. ``check_eager`` (graphs on): the decode steps again eagerly,
        fed this run's tokens, their logits against the graphed steps' (notes)."""
        job, dev = self.job, self.device
        if ids is None:
            ids = prompt_ids(self.spec, job, dev)
        cuda = dev.type == "cuda"
        self.warm_up(ids)
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        last: list[torch.Tensor] = []
        graphed = self.graphs and cuda

        def prefill() -> None:
            for b in range(self.B):
                for p0 in range(0, job.prompt_len, self.chunk_len):
                    logits = self._pass(ids[b : b + 1, p0 : p0 + self.chunk_len], b, b + 1, p0)
                last.append(logits)
            self.streams.join()

        with torch.inference_mode():
            prefill_s = timing.time_one(prefill, dev)
            logits = torch.cat(last)
            first = logits.argmax(-1)
            self._trace_copies = True
            dec = self._decode(first, graphed=graphed, keep_logits=keep_logits or check_eager)
            self._trace_copies = False
            copies = self._copy_figures()
            h2d_bytes, d2h_bytes = self.h2d_bytes, self.d2h_bytes
            tokens = torch.stack([first, *dec["tokens"]], dim=1)
            prefill_logits = logits.cpu()
            notes: dict[str, Any] = {}
            teacher_logits: list[torch.Tensor] = []
            if teacher is not None:
                forced = torch.tensor(teacher, dtype=torch.long, device=dev)
                if tuple(forced.shape) != (self.B, job.gen_len + 1):
                    raise UserInputError(f"teacher tokens: shape {tuple(forced.shape)}, the run's is "
                                         f"({self.B}, {job.gen_len + 1})")
                tf = self._decode(forced[:, 0], graphed=graphed, forced=forced[:, 1:], keep_logits=True)
                teacher_logits = [prefill_logits, *tf["logits"]]
            if check_eager and graphed:
                eager = self._decode(first, graphed=False, forced=tokens[:, 1:], keep_logits=True)
                cmp = compare_logits(dec["logits"], eager["logits"])
                notes.update(graphs_equal_eager=cmp["bitwise_equal"],
                             graphs_vs_eager_max_abs_logit_diff=cmp["max_abs_logit_diff"],
                             eager_decode_step_time_s=decode_step_time(eager["times"]),
                             eager_issue_time_s=decode_step_time(eager["issue"]))
        run = InferRun(
            tokens=tokens.cpu().tolist(),
            prefill_time_s=prefill_s,
            decode_step_times_s=dec["times"],
            contexts=dec["contexts"],
            host_pinned_bytes=self.pool.capacity_bytes if cuda else 0,
            h2d_bytes_per_step=h2d_bytes if job.gen_len else 0,
            d2h_bytes_per_step=d2h_bytes if job.gen_len else 0,
            setup_s=self.setup_s,
            decode_issue_times_s=dec["issue"],
            warmup_s=self.warmup_s if cuda else None,
            notes={"kv_lookahead_layers": self.kv_lookahead, "num_staging_buffers": self.num_staging,
                   **copies,
                   "num_weight_buffers": self.num_wbufs, "hbm_buffer_bytes": self.sizes.hbm_bytes,
                   "host_pool_bytes": self.sizes.host_pool_bytes, "cuda_graphs": graphed,
                   "warmup": WARMUP_NOTE if cuda else "none (CPU)",
                   "sdpa_backends": ",".join(SDPA_BACKENDS) if cuda else "torch's default",
                   **({"kv_quant": self.q_fmt, "kv_group_size": self.q_group, "num_kv_quantized_layers": sum(self.kv_q),
                       "kv_dequantize": "triton" if self.triton else "torch"} if any(self.kv_q) else {}),
                   **({"cpu_attention_layers": self.attn_cpu.count(True), "cpu_attention_threads": self.cpu_threads,
                       "cpu_attention_s_per_step": decode_step_time(dec["cpu_attention"])} if any(self.attn_cpu) else {}),
                   **notes},
            logits=[prefill_logits, *dec["logits"]] if keep_logits else [],
            teacher_logits=teacher_logits,
        )
        if cuda:
            run.peak_allocated_bytes = torch.cuda.max_memory_allocated(dev)
            run.peak_reserved_bytes = torch.cuda.max_memory_reserved(dev)
        return run

    def _copy_figures(self) -> dict[str, Any]:
        """The last decode step's H2D copies (CUDA): their span (the first fetch's start to the
        last one's end), the time the copies themselves took (each fetch's start, after its
        waits, to its end) and the longest gap between one fetch's end and the next's start."""
        evs = self._h2d_events
        if not evs:
            return {"h2d_span_s_last_step": None}
        span = evs[0][0].elapsed_time(evs[-1][1]) / 1e3
        busy = sum(a.elapsed_time(b) for a, b, _ in evs) / 1e3
        gaps = [evs[k][1].elapsed_time(evs[k + 1][0]) / 1e3 for k in range(len(evs) - 1)]
        return {"h2d_span_s_last_step": span, "h2d_busy_s_last_step": busy,
                "h2d_max_gap_s_last_step": max(gaps) if gaps else 0.0, "h2d_num_fetches_last_step": len(evs)}


WARMUP_NOTE = ("before the timed prefill: a prefill-shaped pass of sequence 0's first chunk through layer 0 "
               "and the head, after the decode graphs' capture (graphs on), then one decode step at the first decode context")
TEACHER_MARGIN = 0.125
"""Teacher-forced check: a position's argmax must equal the reference's where the reference's
top-1 logit leads its top-2 by more than this (fp32 logits of a bf16 model whose logits are
~1 in size: ~8-16 bf16 rounding steps there); near-ties below it may flip under any rounding
difference."""


def compare_logits(ref: list[torch.Tensor], other: list[torch.Tensor], *,
                   margin: float = TEACHER_MARGIN) -> dict[str, Any]:
    """``other``'s logits (a list of [B, V], one per position) against the reference's: the
    largest absolute difference, whether all are bitwise equal, and the argmax agreement at
    the positions where the reference's top-1 leads its top-2 by more than ``margin``."""
    if len(ref) != len(other):
        raise ValueError(f"compare_logits: {len(ref)} reference positions, {len(other)} others")
    if not ref:
        return {"max_abs_logit_diff": 0.0, "bitwise_equal": True, "argmax_checked": 0,
                "argmax_mismatched": 0, "positions": 0, "margin": margin}
    r = torch.stack([t.float().cpu() for t in ref])  # N B V
    o = torch.stack([t.float().cpu() for t in other])
    top = r.topk(2, dim=-1).values
    checked = (top[..., 0] - top[..., 1]) > margin
    mismatched = (r.argmax(-1) != o.argmax(-1)) & checked
    return {"max_abs_logit_diff": float((r - o).abs().max()), "bitwise_equal": bool(torch.equal(r, o)),
            "argmax_checked": int(checked.sum()), "argmax_mismatched": int(mismatched.sum()),
            "positions": int(checked.numel()), "margin": margin}


def cpu_attention_threads() -> int:
    """Threads for attention on the host CPU: the CPUs this process may run on."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_static(plan: Plan, *, device: Any, seed: int = 0, dtype: torch.dtype | None = None,
               keep_logits: bool = False, check_memory: bool = True, graphs: bool = True,
               teacher: list[list[int]] | None = None, check_eager: bool = False) -> InferRun:
    """Build the static engine for ``plan``, serve its job once, free the pool."""
    engine = StaticDecodeEngine(plan, device=device, seed=seed, dtype=dtype, check_memory=check_memory,
                                graphs=graphs)
    try:
        return engine.run(keep_logits=keep_logits, teacher=teacher, check_eager=check_eager)
    finally:
        engine.close()


def run_plan(plan: Plan, *, device: Any, seed: int = 0, dtype: torch.dtype | None = None,
             keep_logits: bool = False, teacher: list[list[int]] | None = None,
             check_eager: bool = False) -> InferRun:
    """Serve ``plan``'s job on the engine its job names (static or hf)."""
    job = infer_job(plan)
    if job.engine == "hf":
        from validate.infer_hf import run_hf

        return run_hf(plan, device=device, seed=seed, dtype=dtype, keep_logits=keep_logits, teacher=teacher)
    return run_static(plan, device=device, seed=seed, dtype=dtype, keep_logits=keep_logits, teacher=teacher,
                      check_eager=check_eager)

