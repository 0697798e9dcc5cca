"""The analytical estimator: memory, time and throughput of one step, in a fraction of a second.

Models: training - the peak of allocated GPU memory (what ``torch.cuda.max_memory_allocated``
reports) from the exact walk of the analytical Workload, with the moment it happens and what is
live then; the step time as the sum of kernel times on the compute stream (roofline with the
node's calibrated efficiencies) plus exposed collectives; MFU against the datasheet peak.
Inference - KV-cache bytes per token and per request, prefill time and peak, time per decoded
token (`simulator.inference.decode_segments`: a decode step's small kernels through the host's
launch pipeline, HBM-bandwidth bound at batch 1), and the largest batch and context that fit.
Assumes: one process per GPU; kernels on one stream run back to back; collectives of tensor and
context parallelism are exposed (not overlapped with compute), data-parallel gradient reduction
is exposed too unless ZeRO-3 prefetch hides the parameter gathers (not modelled: exposed).
PyTorch's runtime adds ``RUNTIME_WORKSPACE_BYTES`` of cuBLAS workspaces (one per thread that
runs GEMMs: the main thread for forward, the autograd thread for backward).
Ignores: CPU launch overhead beyond the per-kernel launch latency, allocator fragmentation
(``reserved`` > ``allocated``), stragglers.
Source: PyTorch c10/cuda/CUDACachingAllocator.cpp (512-byte rounding), aten/src/ATen/cuda/
CublasHandlePool.cpp (32 MiB workspace per handle on Hopper), Megatron MFU convention
(Narayanan et al. 2021: 3x forward FLOPs, causal attention counted half).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from hwmodels.units import GiB, MiB, UserInputError
from simulator.allocator import AllocatorOOM, predict_reserved, predict_workload_reserved
from simulator.workload import Phase, ResizableWalk, Role, WalkPeak, Workload, walk_memory

RUNTIME_WORKSPACE_BYTES = 2 * 32 * MiB
"""cuBLAS workspaces allocated through the caching allocator: 32 MiB per handle on Hopper
(CUBLAS_WORKSPACE_CONFIG default :4096:8), one handle for the forward (main thread) and one for
the backward (autograd engine thread). Measured: a constant 64 MiB over the analytical peak in
every H200 run in validate/measurements (tests/simulator/test_estimator_vs_measured.py)."""

NON_ALLOCATABLE_BYTES = 150_755_639_296 - 150_109_880_320 + int(0.74 * GiB)
"""HBM a process cannot hand to PyTorch's allocator: what the driver keeps (the H200's nvidia-smi
memory.total, 143771 MiB, minus torch's total_memory, 150109880320 B) plus the CUDA context's
non-PyTorch memory (0.74 GiB: "this process has 117.86 GiB memory in use" with 117.12 GiB reserved
by PyTorch, in the 8B out-of-memory record of validate/measurements/h200/
steps-loopform-h200-2026-12-02.json). 1.34 GiB: the native allocator's replay is capped at the
HBM capacity less this."""

BREAKDOWN_GROUPS: dict[str, tuple[str, ...]] = {
    "weights": (Role.WEIGHT.value,),
    "grads": (Role.GRAD.value,),
    "optimizer_states": (Role.OPTIMIZER_STATE.value,),
    "master_weights": (Role.MASTER_WEIGHT.value,),
    "inputs": (Role.INPUT.value,),
    "activations_layer_inputs": (Role.LAYER_INPUT.value,),
    "activations_norm": (Role.NORM_OUT.value, Role.NORM_STAT.value),
    "activations_attention": (Role.ATTN_QKV.value, Role.ATTN_OUT.value, Role.ATTN_STAT.value),
    "activations_mlp": (Role.MLP_HIDDEN.value,),
    "logits_and_loss": (Role.LOGITS.value, Role.LOGITS_FP32.value, Role.LOSS.value),
    "activation_grads": (Role.ACTIVATION_GRAD.value,),
    "transient_workspace": (Role.WORKSPACE.value,),
    "kv_cache": (Role.KV_CACHE.value,),
    "other": (Role.OTHER.value,),
}


def group_breakdown(by_role: dict[str, int], runtime_bytes: int = 0) -> dict[str, int]:
    """Fold a per-role byte map into the user-facing breakdown groups."""
    out = {g: sum(by_role.get(r, 0) for r in roles) for g, roles in BREAKDOWN_GROUPS.items()}
    out["runtime_workspace"] = runtime_bytes
    return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class TrainEstimate:
    """Prediction for one training step on one GPU (every GPU of the job does the same)."""

    model: str
    hardware: str
    seq_len: int
    micro_batch: int
    checkpointing: str
    model_output: str  # the loop form modelled: "freed" or "kept" (templates.effective_model_output)
    tp: int
    cp: int
    dp: int
    zero_stage: int
    peak_allocated_bytes: int
    peak_op: str
    peak_phase: str
    peak_at_s: float  # time from step start to the op at the peak
    breakdown_bytes: dict[str, int]
    hbm_capacity_bytes: int
    fits: bool
    step_time_s: float
    compute_time_s: dict[str, float]  # per phase: fwd, loss, bwd, recompute, optim
    comm_time_s: float
    model_flops: float  # per GPU per step (3x forward, causal attention half, no recompute)
    executed_flops: float  # per GPU per step, recompute included
    mfu: float
    tokens_per_s: float  # whole job (all data-parallel replicas)
    num_gpus: int
    num_ops: int
    peak_reserved_bytes: int | None = None
    """What ``torch.cuda.max_memory_reserved`` would report: two steps of the workload through the
    model of the job's allocator (``allocator``; simulator.allocator.predict_reserved), capped at
    the GPU's HBM for expandable segments; for the native allocator with the optimizer's states
    created per parameter by the first step (``caching_allocator_fit``)."""
    allocator: str = "caching"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


_PHASE_VALUES = {p: p.value for p in Phase}


class _StepSums:
    """Running sums of a step's ops in order (the step time's float additions in op order, so a
    step summed in two pieces equals the step summed at once)."""

    __slots__ = ("t", "comm", "phase_time", "peak_at")

    def __init__(self) -> None:
        self.t = 0.0
        self.comm = 0.0
        self.phase_time: dict[str, float] = {}
        self.peak_at = 0.0

    def add(self, ops, peak_oid: int, *, starts_s: list[float] | None = None,
            times_s: tuple[float | None, ...] | None = None) -> _StepSums:
        """Add ``ops``, with the durations ``times_s`` when given (one per op) in place of their
        own; ``starts_s`` (when given) receives each op's start time."""
        t, comm, phase_time, peak_at = self.t, self.comm, self.phase_time, self.peak_at
        if times_s is None:
            times_s = tuple(op.time_s for op in ops)
        for op, time_s in zip(ops, times_s, strict=True):
            if op.oid == peak_oid:
                peak_at = t
            if starts_s is not None:
                starts_s.append(t)
            dt = float(time_s or 0.0)
            t += dt
            if op.op_class == "comm":
                comm += dt
            else:
                phase = _PHASE_VALUES[op.phase]  # a dict lookup: Enum.value is a descriptor call
                phase_time[phase] = phase_time.get(phase, 0.0) + dt
        self.t, self.comm, self.peak_at = t, comm, peak_at
        return self

    def copy(self) -> _StepSums:
        out = _StepSums()
        out.t, out.comm, out.phase_time, out.peak_at = self.t, self.comm, dict(self.phase_time), self.peak_at
        return out


def _flops(ops) -> tuple[float, float]:
    """(model FLOPs, executed FLOPs) of a step: 3x the forward and loss, recompute excluded."""
    model_flops = 3.0 * sum(op.model_flops for op in ops if op.phase == Phase.FWD)
    model_flops += 3.0 * sum(op.model_flops for op in ops if op.phase == Phase.LOSS)
    return model_flops, sum(op.executed_flops for op in ops)


def _check_training(model, job, node) -> int:
    """The job's number of GPUs, after the checks of a training estimate."""
    if job.mode != "train":
        raise UserInputError("job.mode: estimate_training needs a training job")
    job.check(model)
    par = job.parallelism
    num_gpus = par.tp * par.cp * par.dp
    if num_gpus > node.num_gpus and num_gpus % node.num_gpus:
        raise UserInputError(
            f"job.parallelism: tp*cp*dp = {num_gpus} GPUs does not fill whole {node.name} nodes"
            f" of {node.num_gpus} GPUs"
        )
    return num_gpus


def _allocator_fit(wl: Workload, job, node, *, uncapped_peak_bytes: int | None = None) -> tuple[bool, int]:
    """(whether the job's allocator serves every request, peak reserved bytes)."""
    if job.allocator == "caching":
        return caching_allocator_fit(wl, node.gpu.hbm_capacity_bytes, uncapped_peak_bytes=uncapped_peak_bytes)
    return True, predict_reserved(wl, allocator=job.allocator, capacity_bytes=node.gpu.hbm_capacity_bytes)[0]


def estimate_training(model, job, node, *, workload: Workload | None = None) -> TrainEstimate:
    """Peak memory, step time and MFU of one training step of ``model`` under ``job`` on ``node``."""
    from simulator.templates import training_workload

    num_gpus = _check_training(model, job, node)
    wl = workload if workload is not None else training_workload(model, job, node=node)
    walk = WalkPeak.of(walk_memory(wl))
    sums = _StepSums().add(wl.ops, walk.peak_oid)
    return _train_estimate(model, job, node, num_gpus=num_gpus, walk=walk, sums=sums,
                           flops=_flops(wl.ops), num_ops=len(wl.ops), fit=_allocator_fit(wl, job, node))


def _train_estimate(model, job, node, *, num_gpus: int, walk: WalkPeak, sums: _StepSums,
                    flops: tuple[float, float], num_ops: int, fit: tuple[bool, int] | None) -> TrainEstimate:
    """The estimate from a step's walk, its sums and its allocator fit (None: not replayed, the
    step's allocated peak is over the HBM already)."""
    from hwmodels.compute import mfu_frac
    from simulator.templates import effective_model_output

    par = job.parallelism
    peak = walk.peak_bytes + RUNTIME_WORKSPACE_BYTES
    step = sums.t
    model_flops, executed = flops
    mfu = mfu_frac(model_flops=model_flops, step_time_s=step, node=node, dtype=job.param_dtype)
    tokens = job.seq_len * job.micro_batch * par.dp
    notes = []
    if job.checkpointing == "selective":
        notes.append("selective recompute is modelled as Megatron's: attention internals recomputed")
    native_fits, reserved = fit if fit is not None else (False, None)
    return TrainEstimate(
        model=model.name,
        hardware=node.name,
        seq_len=job.seq_len,
        micro_batch=job.micro_batch,
        checkpointing=job.checkpointing,
        model_output=effective_model_output(model, job),
        tp=par.tp,
        cp=par.cp,
        dp=par.dp,
        zero_stage=par.zero_stage,
        peak_allocated_bytes=peak,
        peak_op=walk.peak_op_name,
        peak_phase=walk.peak_phase.value if walk.peak_phase else "start",
        peak_at_s=sums.peak_at,
        breakdown_bytes=group_breakdown(walk.peak_breakdown_bytes, RUNTIME_WORKSPACE_BYTES),
        hbm_capacity_bytes=node.gpu.hbm_capacity_bytes,
        fits=peak <= node.gpu.hbm_capacity_bytes and (job.allocator != "caching" or native_fits),
        step_time_s=step,
        compute_time_s=sums.phase_time,
        comm_time_s=sums.comm,
        model_flops=model_flops,
        executed_flops=executed,
        mfu=mfu,
        tokens_per_s=tokens / step if step > 0 else 0.0,
        num_gpus=num_gpus,
        num_ops=num_ops,
        peak_reserved_bytes=reserved,
        allocator=job.allocator,
        notes=tuple(notes),
    )


class TrainingEstimator:
    """`estimate_training` over the many configurations of a search, with what does not change
    between them computed once: equal results, field for field.

    Per step shape (model and job, the data-parallel degree and the ZeRO stage left out: they
    only size the model states and set the ops after backward, `simulator.templates.
    TrainingStepParts`): the memory walk's live intervals (`simulator.workload.ResizableWalk`:
    a configuration walks them with its own model-state sizes). Per shape and node: the step's
    ops up to the end of backward, their time sums and start times; a configuration then adds
    its own optimizer tail (a second node reuses the first's derivation of backward and its
    ops, with its own durations: `simulator.autograd_model.ProgramBuilder.retimed_times_s`).
    Per shape, stage and ``dp`` (ZeRO-0: any ``dp``): the native allocator's uncapped replay;
    per HBM capacity, its capped one
    where the uncapped peak is over it. ``replay_over_capacity=False`` skips the replays of a
    step whose allocated peak is already over the HBM (it cannot fit): its
    ``peak_reserved_bytes`` is then None. ``max_steps``: step shapes kept (least recently used
    dropped); a search visits its configurations grouped by shape."""

    def __init__(self, *, replay_over_capacity: bool = True, max_steps: int = 8) -> None:
        self.replay_over_capacity = replay_over_capacity
        self.max_steps = max_steps
        self._keys: dict[int, tuple[object, str]] = {}  # id -> (object kept alive, content key)
        self._walks: dict[tuple, ResizableWalk] = {}  # (shape, ops after backward)
        self._fits: dict[tuple, tuple[bool, int]] = {}
        self._uncapped: dict[tuple, int] = {}  # the native allocator's uncapped peak reserved
        self._steps: dict[tuple, tuple] = {}  # (shape, node) -> (parts, head sums, head op starts, flops)

    def clear(self) -> None:
        """Forget every step, walk and replay kept (a search's chunk holds whole step shapes:
        nothing it kept serves the next, `tierplan.search.evaluate_chunk`)."""
        for cache in (self._keys, self._walks, self._fits, self._uncapped, self._steps):
            cache.clear()

    def _key(self, obj) -> str:
        hit = self._keys.get(id(obj))
        if hit is None or hit[0] is not obj:
            hit = (obj, obj.model_dump_json())
            self._keys[id(obj)] = hit
        return hit[1]

    @staticmethod
    def shape_job(job):
        """The job as its step's ops up to the end of backward see it: ``dp`` 1, ZeRO-0."""
        par = job.parallelism
        if par.dp == 1 and par.zero_stage == 0:
            return job
        return job.model_copy(update={"parallelism": par.model_copy(update={"dp": 1, "zero_stage": 0})})

    @staticmethod
    def _lru_put(cache: dict, key, value, limit: int) -> None:
        cache.pop(key, None)
        while len(cache) >= limit:
            cache.pop(next(iter(cache)))
        cache[key] = value  # most recently used last

    def estimate(self, model, job, node) -> TrainEstimate:
        from simulator.templates import effective_zero_stage, training_step_parts

        num_gpus = _check_training(model, job, node)
        par = job.parallelism
        shape = (self._key(model), self.shape_job(job))
        step_key = (shape, self._key(node))
        hit = self._steps.get(step_key)
        if hit is None:  # the derivation of the same shape on another node serves this node's ops
            like = next((v[0] for k, v in self._steps.items() if k[0] == shape), None)
            with collector_paused():
                parts = training_step_parts(model, shape[1], node, like=like)
            starts: list[float] = []
            base = parts.base.ops  # this node's ops but for their durations, parts.times_s (`TrainingStepParts`)
            hit = (parts, _StepSums().add(base, -2, starts_s=starts, times_s=parts.times_s), starts, _flops(base))
        self._lru_put(self._steps, step_key, hit, self.max_steps)
        parts, head_sums, head_starts, flops = hit
        zero = effective_zero_stage(par.zero_stage, par.dp)
        sizes, tail = parts.at(zero, par.dp)
        walk_key = (shape, len(tail))
        rw = self._walks.get(walk_key)
        if rw is None:
            with collector_paused():
                rw = ResizableWalk(parts.workload_at(zero, par.dp), sizes)
        self._lru_put(self._walks, walk_key, rw, 2 * self.max_steps)
        walk = rw.peak(sizes)
        sums = head_sums.copy()
        if 0 <= walk.peak_oid < len(head_starts):
            sums.peak_at = head_starts[walk.peak_oid]
        sums.add(tail, walk.peak_oid)
        capacity = node.gpu.hbm_capacity_bytes
        fit: tuple[bool, int] | None = None
        if self.replay_over_capacity or walk.peak_bytes + RUNTIME_WORKSPACE_BYTES <= capacity:
            states_key = (shape, zero, par.dp if zero else None)  # what the allocator's requests depend on
            fit = self._fits.get((states_key, capacity))
            if fit is None:
                wl = parts.workload_at(zero, par.dp)
                uncapped = None
                with collector_paused():
                    if job.allocator == "caching":  # shared by every capacity
                        uncapped = self._uncapped.get(states_key)
                        if uncapped is None:
                            uncapped = self._uncapped[states_key] = uncapped_reserved_bytes(wl)
                    fit = _allocator_fit(wl, job, node, uncapped_peak_bytes=uncapped)
                self._fits[(states_key, capacity)] = fit
        return _train_estimate(model, job, node, num_gpus=num_gpus, walk=walk, sums=sums, flops=flops,
                               num_ops=len(parts.base.ops) + len(tail), fit=fit)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a step is built, walked or replayed, as it
    was before after: each of those makes tens of thousands of objects (ops, tensors, allocator
    blocks), and every few hundred the collector would scan the steps already cached (it took
    40% of a search's time). What they leave in cycles is collected once it is back on. A
    search's worker pauses it over a whole chunk of configurations (`tierplan.search.
    evaluate_chunk`): the pauses nested in it then change nothing."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def caching_allocator_fit(wl: Workload, hbm_capacity_bytes: int, *,
                          uncapped_peak_bytes: int | None = None) -> tuple[bool, int]:
    """Whether PyTorch's native caching allocator serves every request of two steps of ``wl``
    on a GPU of ``hbm_capacity_bytes``, and the peak reserved bytes.

    The replay (simulator.allocator) is capped at what a process can allocate
    (``NON_ALLOCATABLE_BYTES`` less): over the cap it frees its unsplit cached segments and
    retries, as PyTorch does, so what does not fit is fragmentation, not a high-water mark. The
    optimizer's states are created lazily, one tensor per parameter, at the first step's
    ``optimizer.step``, as torch.optim does: they land in the blocks the first step's
    activations left cached and split them, which is what made the whole Llama-3.1-8B + fused
    AdamW + checkpointing at 48K run out of memory on the H200 in its second step (23.5 GiB of
    fp32 logits asked, 23.4 GiB cached in fragments) while 128.9 GiB allocated fit. The peak
    reported is the uncapped replay's (``uncapped_peak_bytes``, when the caller has it): a
    capped replay runs as the uncapped one until it would pass the cap, so it is needed only
    when the uncapped peak is over the cap (and then it retries or runs out of memory)."""
    cap = hbm_capacity_bytes - NON_ALLOCATABLE_BYTES
    peak = uncapped_peak_bytes if uncapped_peak_bytes is not None else uncapped_reserved_bytes(wl)
    if peak <= cap:
        return True, peak
    try:
        predict_workload_reserved(wl, num_steps=2, capacity_bytes=cap, lazy_optimizer_states=True)
    except AllocatorOOM:
        return False, peak
    return True, peak


def uncapped_reserved_bytes(wl: Workload) -> int:
    """Peak reserved bytes of two steps of ``wl`` under the native caching allocator, uncapped."""
    return predict_workload_reserved(wl, num_steps=2, lazy_optimizer_states=True).peak_reserved_bytes


@dataclass(frozen=True)
class InferEstimate:
    """Prediction for serving one batch: a prefill, then ``gen_len`` decode steps."""

    model: str
    hardware: str
    prompt_len: int
    gen_len: int
    batch: int
    kv_dtype: str
    kv_quant: str
    tp: int
    kv_cache_bytes_per_token: int  # per GPU, all layers
    kv_cache_bytes_per_request: int  # per GPU, prompt + generated tokens
    weights_bytes: int  # per GPU
    prefill_peak_allocated_bytes: int
    prefill_time_s: float
    decode_peak_allocated_bytes: int  # at the last decode step (full cache)
    decode_time_per_token_s: float  # at the mean context length of the generation
    total_time_s: float
    decode_tokens_per_s: float  # batch / time per decode step
    hbm_capacity_bytes: int
    fits: bool
    max_batch: int  # largest batch whose prefill and decode fit, at this prompt and gen length
    max_context_len: int  # longest prompt + gen that fits at this batch
    breakdown_bytes: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def _peak(workload: Workload) -> tuple[int, dict[str, int]]:
    walk = walk_memory(workload)
    return walk.peak_bytes + RUNTIME_WORKSPACE_BYTES, walk.peak_breakdown_bytes


def estimate_inference(model, job, node) -> InferEstimate:
    """KV cache, prefill and decode time and memory, and what fits, for an InferJob."""
    from simulator.inference import decode_segments
    from simulator.templates import decode_workload, kv_cache_bytes_per_token, prefill_workload

    if job.mode != "infer":
        raise UserInputError("job.mode: estimate_inference needs an inference job")
    job.check(model)
    capacity = node.gpu.hbm_capacity_bytes
    per_token = kv_cache_bytes_per_token(model, job)
    total_len = job.prompt_len + job.gen_len

    def peaks(batch: int, prompt: int, gen: int) -> tuple[int, int]:
        pre, _ = _peak(prefill_workload(model, job, batch=batch, prompt_len=prompt))
        if gen == 0:
            return pre, pre
        dec, _ = _peak(decode_workload(model, job, context_len=prompt + gen, batch=batch))
        return pre, dec

    pre_wl = prefill_workload(model, job, node)
    pre_peak, pre_roles = _peak(pre_wl)
    prefill_s = sum(op.time_s or 0.0 for op in pre_wl.ops)
    if job.gen_len:
        mean_ctx = job.prompt_len + max(1, job.gen_len // 2)
        # one token per sequence: ~30 small eager kernels per layer, timed by the launch pipeline
        # of simulator.inference (not the eager composites the profile fitted on training shapes)
        decode_s = decode_segments(model, job, node, context_len=mean_ctx, batch=job.batch).total_s
        dec_peak, dec_roles = _peak(decode_workload(model, job, context_len=total_len))
    else:
        decode_s, dec_peak, dec_roles = 0.0, pre_peak, pre_roles
    weights = walk_memory(pre_wl).initial_bytes

    def fits(batch: int, prompt: int, gen: int) -> bool:
        return max(peaks(batch, prompt, gen)) <= capacity

    max_batch = _largest(lambda b: fits(b, job.prompt_len, job.gen_len), hi_start=job.batch)
    frac = job.prompt_len / total_len

    def fits_len(n: int) -> bool:
        prompt = max(job.parallelism.cp, int(n * frac) // job.parallelism.cp * job.parallelism.cp)
        return fits(job.batch, prompt, n - prompt)

    max_ctx = _largest(fits_len, hi_start=total_len)
    breakdown = group_breakdown(dec_roles if dec_peak >= pre_peak else pre_roles, RUNTIME_WORKSPACE_BYTES)
    total_s = prefill_s + decode_s * job.gen_len
    return InferEstimate(
        model=model.name,
        hardware=node.name,
        prompt_len=job.prompt_len,
        gen_len=job.gen_len,
        batch=job.batch,
        kv_dtype=job.kv_dtype,
        kv_quant=job.kv_quant,
        tp=job.parallelism.tp,
        kv_cache_bytes_per_token=per_token,
        kv_cache_bytes_per_request=per_token * total_len,
        weights_bytes=weights,
        prefill_peak_allocated_bytes=pre_peak,
        prefill_time_s=prefill_s,
        decode_peak_allocated_bytes=dec_peak,
        decode_time_per_token_s=decode_s,
        total_time_s=total_s,
        decode_tokens_per_s=job.batch / decode_s if decode_s > 0 else 0.0,
        hbm_capacity_bytes=capacity,
        fits=max(pre_peak, dec_peak) <= capacity,
        max_batch=max_batch,
        max_context_len=max_ctx,
        breakdown_bytes=breakdown,
    )


def _largest(ok, *, hi_start: int, limit: int = 1 << 24) -> int:
    """Largest n >= 1 with ok(n) (ok monotone decreasing in n); 0 when even n = 1 fails."""
    if not ok(1):
        return 0
    lo, hi = 1, max(2, hi_start)
    while hi < limit and ok(hi):
        lo, hi = hi, hi * 2
    if hi >= limit and ok(limit):
        return limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo
