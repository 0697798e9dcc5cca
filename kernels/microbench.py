"""Microbenchmarks: achieved rates of the operator shapes of a Llama-7B layer on one GPU.

Models: nothing; this script measures. It times, with CUDA events, the GEMMs of a Llama-7B
layer (forward, input-grad and weight-grad shapes) and of the LM head, causal
scaled-dot-product attention (fwd, bwd, fwd+bwd; 32 heads and 8-kv-head GQA), the memory-bound
ops of a layer (RMSNorm, SiLU*up, rotary, cross-entropy, embedding) with our count of the
minimal HBM bytes they must move, host<->device copies (pinned, pageable, both ways at once),
device-to-device copies and kernel launch overhead. It writes one JSON file
``{"provenance": {...}, "records": [...]}``; one flat dict per measurement, sizes in bytes and
times in seconds. The calibration fits in ``hwmodels`` read these files.
Assumes: torch with CUDA; bf16 operands from ``torch.randn`` (never zeros: zeros run faster);
a median over repeats after warm-up; inputs smaller than a few L2 sizes are rotated among
several copies so that repeats do not read from L2. Before each timed batch the stream is
held with ``torch.cuda._sleep`` so that the host enqueues all repeats ahead of the GPU and
launch gaps stay out of the per-call times.
Ignores: clocks and power state (measured as found); other processes on the GPU.
Source: METHOD.md-style measurement (CUDA events, warm-up, median); shapes from the Llama-2-7B
config (hidden 4096, intermediate 11008, 32 heads of 128, vocab 32000).

Shape legend: T tokens, H hidden (4096), I intermediate (11008), V vocab (32000),
S sequence length, N heads, D head dim.

Imports torch, pydantic (the record models of ``hwmodels.records``, which check every record
before it is written) and the standard library, so that it runs on a bare GPU machine.
``--smoke`` runs tiny shapes on the CPU (wall-clock timing) to check the logic.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: python3 kernels/microbench.py
    sys.path.insert(0, str(REPO))

from hwmodels.records import OpRecordsFile  # noqa: E402
from hwmodels.units import MiB  # noqa: E402

# Fallback L2 size when the device does not report one (CPU smoke runs).
_DEFAULT_L2_BYTES = 32 * MiB
# Approximate SM clock used only to size the stream hold before a timed batch.
_SLEEP_CYCLES_PER_S = 2.0e9

BF16_BYTES = 2
INT64_BYTES = 8

# Llama-2-7B layer: (name, K, N) of x[T,K] @ W[K,N]; qkv and gate/up are the fused widths.
LLAMA7B_LINEARS = (("qkv", 4096, 12288), ("o", 4096, 4096), ("gate_up", 4096, 22016),
                   ("down", 11008, 4096))
LM_HEAD = ("lm_head", 4096, 32000)
HIDDEN = 4096
INTERMEDIATE = 11008
VOCAB = 32000
NUM_HEADS = 32
HEAD_DIM = 128


# ----------------------------------------------------------------------------- provenance
def _run_text(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(argv: Sequence[str], device: torch.device) -> dict:
    """Where and how a measurement was taken: device, software versions, date, command, commit."""
    commit = os.environ.get("TIERPLAN_GIT_COMMIT") or _run_text(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"])
    prov: dict = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": os.environ.get("TIERPLAN_COMMAND")
        or shlex.join(["python3", *argv]),
        "argv": list(argv),
        "git_commit": commit,
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_type": device.type,
    }
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF") is not None:
        prov["pytorch_cuda_alloc_conf"] = os.environ["PYTORCH_CUDA_ALLOC_CONF"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        prov.update({
            "device": props.name,
            "device_total_memory_bytes": int(props.total_memory),
            "device_multiprocessors": int(props.multi_processor_count),
            "device_l2_bytes": int(getattr(props, "L2_cache_size", 0)) or None,
            "device_capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
        })
        smi = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                         "clocks.max.sm,clocks.max.mem,power.limit,pstate,clocks.sm",
                         "--format=csv,noheader"])
        prov["nvidia_smi"] = smi
        prov["driver"] = smi.split(",")[1].strip() if smi and "," in smi else None
    else:
        prov.update({"device": platform.processor() or platform.machine(), "driver": None,
                     "nvidia_smi": None})
    return prov


# ----------------------------------------------------------------------------- timing
class Timing:
    """Median, min and max of repeated calls, in seconds."""

    __slots__ = ("time_s", "time_min_s", "time_max_s", "num_reps")

    def __init__(self, times_s: list[float]):
        self.time_s = statistics.median(times_s)
        self.time_min_s = min(times_s)
        self.time_max_s = max(times_s)
        self.num_reps = len(times_s)

    def as_dict(self) -> dict:
        return {"time_s": self.time_s, "time_min_s": self.time_min_s,
                "time_max_s": self.time_max_s, "num_reps": self.num_reps}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hold_stream(seconds: float) -> None:
    """Keep the current CUDA stream busy so the host can enqueue a batch ahead of the GPU."""
    if hasattr(torch.cuda, "_sleep") and seconds > 0:
        torch.cuda._sleep(int(min(seconds, 0.2) * _SLEEP_CYCLES_PER_S))


def bench(fn: Callable[[int], object], device: torch.device, *, warmup: int = 3,
          target_s: float = 0.3, min_reps: int = 5, max_reps: int = 50) -> Timing:
    """Time ``fn(i)`` (i selects a rotated input set) per call; median of repeats.

    On CUDA each call sits between two events; the stream is held first so that the host
    queues all repeats before the GPU starts them. On the CPU wall-clock time is used.
    """
    for i in range(warmup):
        fn(i)
    sync(device)
    t0 = time.perf_counter()
    fn(warmup)
    host_call_s = time.perf_counter() - t0
    sync(device)
    one_call_s = time.perf_counter() - t0
    reps = max(min_reps, min(max_reps, math.ceil(target_s / max(one_call_s, 1e-6))))
    if device.type != "cuda":
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        return Timing(times)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    hold_stream(1.5 * reps * host_call_s + 1e-3)
    for i in range(reps):
        starts[i].record()
        fn(i)
        ends[i].record()
    sync(device)
    return Timing([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)])


def num_rotations(input_bytes: int, l2_bytes: int, max_sets: int = 8) -> int:
    """Input copies needed so that the rotated working set is at least 4x the L2."""
    return max(1, min(max_sets, math.ceil(4 * l2_bytes / max(input_bytes, 1))))


def randn(shape: Sequence[int], device: torch.device, dtype=torch.bfloat16,
          requires_grad: bool = False) -> torch.Tensor:
    t = torch.randn(*shape, device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- GEMM
def gemm_records(tokens: Sequence[int], lm_head_tokens: Sequence[int], device: torch.device,
                 l2_bytes: int, linears=LLAMA7B_LINEARS, lm_head=LM_HEAD) -> list[dict]:
    """x[T,K]@W[K,N] forward, dY[T,N]@W^T[N,K] input grad, X^T[K,T]@dY[T,N] weight grad."""
    recs = []
    cases = [(t, lin) for t in tokens for lin in linears]
    cases += [(t, lm_head) for t in lm_head_tokens]
    for t, (name, k, n) in cases:
        # (pass, m, n, k, left shape, right shape, left is a transposed view)
        passes = (("fwd", t, n, k), ("bwd_input", t, k, n), ("bwd_weight", k, n, t))
        for pass_name, m_, n_, k_ in passes:
            in_bytes = (m_ * k_ + k_ * n_) * BF16_BYTES
            sets = []
            for _ in range(num_rotations(in_bytes, l2_bytes)):
                if pass_name == "bwd_weight":
                    a = randn((k_, m_), device).t()  # X^T as autograd sees it: a view of X[T,K]
                else:
                    a = randn((m_, k_), device)
                sets.append((a, randn((k_, n_), device)))

            def matmul(i, s=sets):
                return torch.matmul(*s[i % len(s)])

            timing = bench(matmul, device, target_s=0.2)
            recs.append({"op": "gemm", "layer": name, "pass": pass_name, "m": m_, "n": n_,
                         "k": k_, "dtype": "bf16", "tokens": t, **timing.as_dict()})
            del sets, matmul
        free(device)
    return recs


# ----------------------------------------------------------------------------- SDPA
def _sdpa_backends():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return None, None
    return SDPBackend, sdpa_kernel


def default_sdpa_backend(q, k, v, **kw) -> str:
    """The backend F.scaled_dot_product_attention picks with nothing forced (as HF calls it)."""
    try:
        choice = int(torch._fused_sdp_choice(q, k, v, **kw))
    except (AttributeError, RuntimeError, TypeError) as err:
        return f"unknown ({type(err).__name__})"
    names = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
    return names.get(choice, str(choice))


def sdpa_default_records(seq_lens: Sequence[int], shapes: Sequence[tuple[int, int, int]],
                         device: torch.device) -> list[dict]:
    """Causal SDPA with the default backend choice, for (heads, kv heads, head dim) shapes."""
    recs = []
    for s in seq_lens:
        for num_heads, nkv, head_dim in shapes:
            recs += _sdpa_case(s, nkv, "default", device, num_heads=num_heads,
                               head_dim=head_dim, long_reps_cap=3)
            free(device)
    return recs


def _sdpa_case(s: int, nkv: int, backend: str, device: torch.device, *, num_heads: int,
               head_dim: int, long_reps_cap: int, with_fwdbwd: bool = True) -> list[dict]:
    SDPBackend, sdpa_kernel = _sdpa_backends()
    q = randn((1, num_heads, s, head_dim), device, requires_grad=True)
    k = randn((1, nkv, s, head_dim), device, requires_grad=True)
    v = randn((1, nkv, s, head_dim), device, requires_grad=True)
    do = randn((1, num_heads, s, head_dim), device)
    kw: dict[str, Any] = {"is_causal": True}
    if nkv != num_heads:
        kw["enable_gqa"] = True
    if device.type == "cuda" and sdpa_kernel is not None and backend != "default":
        chosen = {"flash": SDPBackend.FLASH_ATTENTION,
                  "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

        def ctx():
            return sdpa_kernel([chosen])
    else:
        ctx = contextlib.nullcontext
    label = backend if device.type == "cuda" else "cpu_default"
    base = {"op": "sdpa", "batch": 1, "seq_len": s, "num_heads": num_heads,
            "num_kv_heads": nkv, "head_dim": head_dim, "causal": True, "dtype": "bf16",
            "backend": label}
    if backend == "default":
        base["default_backend"] = default_sdpa_backend(q, k, v, **kw)
    max_reps = long_reps_cap if s >= 65536 else 20
    min_reps = min(3, max_reps)
    # bench's sizing call is untimed and runs first, so a long case timed once needs no other warm-up
    warm = 2 if s < 65536 else (1 if long_reps_cap > 1 else 0)

    def fwd(i):
        with ctx(), torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, **kw)

    def fwdbwd(i):
        q.grad = k.grad = v.grad = None
        with ctx():
            o = F.scaled_dot_product_attention(q, k, v, **kw)
        o.backward(do)

    try:
        t_fwd = bench(fwd, device, warmup=warm, max_reps=max_reps, min_reps=min_reps)
        with ctx():
            o_keep: torch.Tensor | None = F.scaled_dot_product_attention(q, k, v, **kw)

        def bwd(i):
            assert o_keep is not None  # dropped after the backward timing
            torch.autograd.grad(o_keep, (q, k, v), do, retain_graph=True)

        t_bwd = bench(bwd, device, warmup=warm, max_reps=max_reps, min_reps=min_reps)
        o_keep = None
        t_fb = bench(fwdbwd, device, warmup=warm, max_reps=max_reps, min_reps=min_reps) if with_fwdbwd else None
    except RuntimeError as err:  # the backend refuses this shape, dtype or GQA
        print(f"  sdpa S={s} kv={nkv} {label}: unsupported ({str(err)[:80]})", flush=True)
        return [{**base, "pass": "fwdbwd", "status": "unsupported",
                 "error": str(err).splitlines()[0][:300]}]
    return [{**base, "pass": p, "status": "ok", **t.as_dict()}
            for p, t in (("fwd", t_fwd), ("bwd", t_bwd), ("fwdbwd", t_fb)) if t is not None]


def sdpa_records(seq_lens: Sequence[int], device: torch.device, *, num_heads: int = NUM_HEADS,
                 head_dim: int = HEAD_DIM, kv_heads: Sequence[int] = (32, 8),
                 backends: Sequence[str] = ("flash", "cudnn"),
                 long_reps_cap: int = 3, with_fwdbwd: bool = True) -> list[dict]:
    """Causal SDPA, batch 1, bf16: fwd, bwd (autograd.grad on a kept graph), fwd+bwd."""
    recs = []
    for s in seq_lens:
        for nkv in kv_heads:
            for backend in backends:
                if device.type != "cuda" and backend != "flash":
                    continue
                recs += _sdpa_case(s, nkv, backend, device, num_heads=num_heads,
                                   head_dim=head_dim, long_reps_cap=long_reps_cap, with_fwdbwd=with_fwdbwd)
                free(device)
    return recs


def sdpa_masked_records(seq_lens: Sequence[int], device: torch.device, *, window: int,
                        num_heads: int = NUM_HEADS, head_dim: int = HEAD_DIM) -> list[dict]:
    """SDPA as Hugging Face calls it when a sliding window is shorter than the sequence.

    transformers then passes an explicit [1, 1, S, S] bool mask (causal band of ``window``) and
    K, V already repeated to every query head (``repeat_kv``); SDPA picks its backend for a
    masked call (recorded). FLOPs convention of the record: the full S x S square (causal False),
    which is what a kernel given an arbitrary mask is asked to cover.
    """
    recs = []
    for s in seq_lens:
        recs += _sdpa_masked_case(s, device, window=window, num_heads=num_heads, head_dim=head_dim)
        free(device)
    return recs


def _sdpa_masked_case(s: int, device: torch.device, *, window: int, num_heads: int,
                      head_dim: int) -> list[dict]:
    q = randn((1, num_heads, s, head_dim), device, requires_grad=True)
    k = randn((1, num_heads, s, head_dim), device, requires_grad=True)
    v = randn((1, num_heads, s, head_dim), device, requires_grad=True)
    do = randn((1, num_heads, s, head_dim), device)
    i = torch.arange(s, device=device)
    mask = ((i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window))[None, None]
    kw: dict[str, Any] = {"attn_mask": mask}
    base = {"op": "sdpa", "batch": 1, "seq_len": s, "num_heads": num_heads,
            "num_kv_heads": num_heads, "head_dim": head_dim, "causal": False, "dtype": "bf16",
            "backend": "masked", "mask": "sliding_window", "window": window,
            "default_backend": default_sdpa_backend(q, k, v, **kw)}

    def fwd(_):
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, **kw)

    def fwdbwd(_):
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, **kw).backward(do)

    t_fwd = bench(fwd, device, warmup=2, max_reps=10, min_reps=3)
    o_keep: torch.Tensor | None = F.scaled_dot_product_attention(q, k, v, **kw)

    def bwd(_):
        assert o_keep is not None  # dropped after the backward timing
        torch.autograd.grad(o_keep, (q, k, v), do, retain_graph=True)

    t_bwd = bench(bwd, device, warmup=2, max_reps=10, min_reps=3)
    o_keep = None  # drop the kept graph before timing forward + backward
    t_fb = bench(fwdbwd, device, warmup=2, max_reps=10, min_reps=3)
    return [{**base, "pass": p, "status": "ok", **t.as_dict()}
            for p, t in (("fwd", t_fwd), ("bwd", t_bwd), ("fwdbwd", t_fb)) if t is not None]


# ----------------------------------------------------------------------------- memory-bound ops
def rmsnorm_hf(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LlamaRMSNorm as Hugging Face writes it (fp32 statistics, eager ops)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    d2 = x.shape[-1] // 2
    return torch.cat((-x[..., d2:], x[..., :d2]), dim=-1)


def rotary_hf(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """apply_rotary_pos_emb as Hugging Face writes it; cos/sin [1,1,T,D]."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def _memop(name: str, impl: str, t: int, fwd_bytes: int, fwdbwd_bytes: int,
           make_inputs: Callable[..., tuple], fn: Callable, grad_shape_of: bool | None,
           device: torch.device, l2_bytes: int, input_bytes: int, extra: dict) -> list[dict]:
    """Time fn fwd (no grad) and fwd+bwd over rotated input sets. ``grad_shape_of`` not None:
    backward from random gradients of fn's outputs (else from a scalar output)."""
    sets = [make_inputs() for _ in range(num_rotations(input_bytes, l2_bytes))]
    recs = []

    def fwd(i):
        with torch.no_grad():
            return fn(*sets[i % len(sets)])

    t_f = bench(fwd, device)
    recs.append({"op": name, "impl": impl, "pass": "fwd", "tokens": t, "dtype": "bf16",
                 "hbm_bytes": fwd_bytes, **extra, **t_f.as_dict()})
    grads = []
    if grad_shape_of is not None:
        with torch.no_grad():
            outs = fn(*sets[0])
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = [randn(o.shape, device, dtype=o.dtype) for o in outs]

    def fwdbwd(i):
        inputs = sets[i % len(sets)]
        for x in inputs:
            if isinstance(x, torch.Tensor) and x.requires_grad:
                x.grad = None
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, grads if grads else None)

    t_fb = bench(fwdbwd, device)
    recs.append({"op": name, "impl": impl, "pass": "fwdbwd", "tokens": t, "dtype": "bf16",
                 "hbm_bytes": fwdbwd_bytes, **extra, **t_fb.as_dict()})
    sets.clear()
    grads.clear()
    free(device)
    return recs


def memory_bound_records(tokens: Sequence[int], ce_tokens: Sequence[int], device: torch.device,
                         l2_bytes: int, *, hidden: int = HIDDEN,
                         intermediate: int = INTERMEDIATE, vocab: int = VOCAB,
                         num_heads: int = NUM_HEADS) -> list[dict]:
    """RMSNorm, SiLU*up, rotary, embedding at T x hidden; cross-entropy at T x vocab.

    hbm_bytes is the minimal traffic: each input read once, each output written once
    (fwd+bwd: the forward's plus the backward's, dy read, inputs re-read, grads written).
    """
    recs = []
    head_dim = hidden // num_heads
    for t in tokens:
        th = t * hidden * BF16_BYTES
        w = randn((hidden,), device, requires_grad=True)
        # rmsnorm: fwd reads x, writes y; bwd reads dy, x, writes dx (+ dw, tiny)
        for impl, fn in (("hf_eager", rmsnorm_hf),
                         ("torch_rms_norm",
                          lambda x, w: F.rms_norm(x, (hidden,), w, 1e-5))):
            if impl == "torch_rms_norm" and not hasattr(F, "rms_norm"):
                continue
            recs += _memop("rmsnorm", impl, t, 2 * th + hidden * BF16_BYTES,
                           5 * th + 2 * hidden * BF16_BYTES,
                           lambda t=t, w=w: (randn((t, hidden), device, requires_grad=True), w),
                           fn, True, device, l2_bytes, th, {"hidden": hidden})
        # silu_mul: fwd reads gate, up, writes y; bwd reads dy, gate, up, writes dgate, dup
        ti = t * intermediate * BF16_BYTES
        recs += _memop("silu_mul", "eager", t, 3 * ti, 3 * ti + 5 * ti,
                       lambda t=t: (randn((t, intermediate), device, requires_grad=True),
                                    randn((t, intermediate), device, requires_grad=True)),
                       lambda g, u: F.silu(g) * u, True, device, l2_bytes, 2 * ti,
                       {"intermediate": intermediate})
        # rotary on q and k [1,N,T,D] (views of [1,T,N,D] as in HF); cos/sin [1,1,T,D]
        cs = t * head_dim * BF16_BYTES

        def rot_inputs(t=t):
            q = randn((1, t, num_heads, head_dim), device).transpose(1, 2).requires_grad_()
            k = randn((1, t, num_heads, head_dim), device).transpose(1, 2).requires_grad_()
            return (q, k, randn((1, 1, t, head_dim), device), randn((1, 1, t, head_dim), device))

        recs += _memop("rotary", "hf_rotate_half", t, 4 * th + 2 * cs, 4 * th + 2 * cs + 4 * th,
                       rot_inputs, rotary_hf, True, device, l2_bytes, 2 * th + 2 * cs,
                       {"hidden": hidden, "num_heads": num_heads, "head_dim": head_dim})
        # embedding: fwd reads ids + T rows, writes y; bwd reads dy, ids, writes dW (whole table)
        vh = vocab * hidden * BF16_BYTES
        table = randn((vocab, hidden), device, requires_grad=True)
        recs += _memop("embedding", "eager", t, t * INT64_BYTES + 2 * th,
                       t * INT64_BYTES + 2 * th + th + t * INT64_BYTES + vh,
                       lambda t=t, tab=table: (torch.randint(0, vocab, (t,), device=device), tab),
                       lambda ids, tab: F.embedding(ids, tab), True, device, l2_bytes,
                       th + t * INT64_BYTES, {"hidden": hidden, "vocab": vocab})
        del w, table
    for t in ce_tokens:
        tv = t * vocab * BF16_BYTES

        def ce(logits, labels):
            return F.cross_entropy(logits.float(), labels)

        # fwd reads bf16 logits + labels; fwd+bwd also writes bf16 dlogits (one fused pass)
        recs += _memop("cross_entropy", "hf_float_upcast", t, tv + t * INT64_BYTES,
                       2 * tv + t * INT64_BYTES,
                       lambda t=t: (randn((t, vocab), device, requires_grad=True),
                                    torch.randint(0, vocab, (t,), device=device)),
                       ce, None, device, l2_bytes, tv, {"vocab": vocab})
    return recs


# ----------------------------------------------------------------------------- copies
def copy_records(pinned_mib: Sequence[int], pageable_mib: Sequence[int],
                 bidir_mib: Sequence[int], hbm_mib: Sequence[int],
                 device: torch.device) -> list[dict]:
    """Host<->device copies (copy engine, cudaMemcpyAsync) and device-to-device copies."""
    recs = []
    if device.type == "cuda":
        top = max([*pinned_mib, *bidir_mib]) * MiB
        dev_src = torch.randint(0, 256, (top,), dtype=torch.uint8, device=device)
        dev_dst = torch.empty(top, dtype=torch.uint8, device=device)
        host_a = torch.empty(top, dtype=torch.uint8, pin_memory=True)
        host_a.copy_(dev_src)
        host_b = torch.empty(max(bidir_mib) * MiB, dtype=torch.uint8, pin_memory=True)
        for mib in pinned_mib:
            n = mib * MiB
            for direction, fn in (
                ("h2d", lambda i, n=n: dev_dst[:n].copy_(host_a[:n], non_blocking=True)),
                ("d2h", lambda i, n=n: host_a[:n].copy_(dev_src[:n], non_blocking=True)),
            ):
                t = bench(fn, device, target_s=0.2)
                recs.append({"op": "copy", "direction": direction, "pinned": True, "bytes": n,
                             **t.as_dict()})
        s1, s2 = torch.cuda.Stream(device), torch.cuda.Stream(device)
        for mib in bidir_mib:
            n = mib * MiB

            def bidir(i, n=n):
                cur = torch.cuda.current_stream(device)
                s1.wait_stream(cur)
                s2.wait_stream(cur)
                with torch.cuda.stream(s1):
                    dev_dst[:n].copy_(host_a[:n], non_blocking=True)
                with torch.cuda.stream(s2):
                    host_b[:n].copy_(dev_src[:n], non_blocking=True)
                cur.wait_stream(s1)
                cur.wait_stream(s2)

            t = bench(bidir, device, target_s=0.2)
            recs.append({"op": "copy", "direction": "bidir", "pinned": True, "bytes": 2 * n,
                         "bytes_each_way": n, **t.as_dict()})
        del host_b
        top_pg = max(pageable_mib) * MiB
        host_pg = torch.empty(top_pg, dtype=torch.uint8)
        host_pg.copy_(dev_src[:top_pg])
        for mib in pageable_mib:
            n = mib * MiB
            for direction, fn in (
                ("h2d", lambda i, n=n: dev_dst[:n].copy_(host_pg[:n], non_blocking=True)),
                ("d2h", lambda i, n=n: host_pg[:n].copy_(dev_src[:n], non_blocking=True)),
            ):
                t = bench(fn, device, warmup=1, target_s=0.2, min_reps=3, max_reps=10)
                recs.append({"op": "copy", "direction": direction, "pinned": False,
                             "bytes": n, **t.as_dict()})
        del dev_src, dev_dst, host_a, host_pg
        free(device)
    for mib in hbm_mib:
        n = mib * MiB
        src = torch.randint(0, 256, (n,), dtype=torch.uint8, device=device)
        dst = torch.empty(n, dtype=torch.uint8, device=device)

        def hbm_copy(i, dst=dst, src=src):
            return dst.copy_(src)

        t = bench(hbm_copy, device, target_s=0.2)
        # bytes: copied once; hbm_bytes: read + write
        recs.append({"op": "hbm_copy", "bytes": n, "hbm_bytes": 2 * n, **t.as_dict()})
        del src, dst, hbm_copy
        free(device)
    return recs


# ----------------------------------------------------------------------------- launch overhead
def launch_records(device: torch.device, num_launches: int = 2000) -> list[dict]:
    """Per-launch cost of a one-element in-place add, three ways (median of 5 batches)."""
    x = torch.ones(1, device=device)
    recs = []
    # host: time to enqueue one launch (the GPU keeps up, so the queue never fills)
    per = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(num_launches):
            x.add_(1.0)
        per.append((time.perf_counter() - t0) / num_launches)
    sync(device)
    recs.append({"op": "launch_overhead", "mode": "host_enqueue", **Timing(per).as_dict()})
    # roundtrip: launch + synchronize
    per = []
    for _ in range(200):
        t0 = time.perf_counter()
        x.add_(1.0)
        sync(device)
        per.append(time.perf_counter() - t0)
    recs.append({"op": "launch_overhead", "mode": "launch_and_sync", **Timing(per).as_dict()})
    if device.type == "cuda":
        # gpu: back-to-back kernels queued ahead of the GPU (stream held while enqueueing)
        per = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            hold_stream(num_launches * 10e-6)
            start.record()
            for _ in range(num_launches):
                x.add_(1.0)
            end.record()
            sync(device)
            per.append(start.elapsed_time(end) / 1e3 / num_launches)
        recs.append({"op": "launch_overhead", "mode": "gpu_back_to_back",
                     **Timing(per).as_dict()})
        # CUDA graph replay of 100 kernels
        try:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream(device)
            s.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(s):
                x.add_(1.0)
            torch.cuda.current_stream(device).wait_stream(s)
            with torch.cuda.graph(g):
                for _ in range(100):
                    x.add_(1.0)
            t = bench(lambda i: g.replay(), device, target_s=0.1)
            recs.append({"op": "launch_overhead", "mode": "cuda_graph_per_kernel",
                         "time_s": t.time_s / 100, "time_min_s": t.time_min_s / 100,
                         "time_max_s": t.time_max_s / 100, "num_reps": t.num_reps})
        except RuntimeError as err:
            print(f"  cuda graph launch measurement skipped: {err}", flush=True)
    return recs


# ----------------------------------------------------------------------------- report
def gemm_flops(r: dict) -> float:
    return 2.0 * r["m"] * r["n"] * r["k"]


def sdpa_flops(r: dict) -> float:
    """Causal attention matmul FLOPs (half of the S x S square); bwd 2.5x fwd."""
    fwd = 4.0 * r["batch"] * r["num_heads"] * r["seq_len"] ** 2 * r["head_dim"] / 2
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwdbwd": 3.5 * fwd}[r["pass"]]


def summary_lines(records: list[dict]) -> list[str]:
    """A short human table: GEMM/SDPA TFLOP/s, memory-bound GB/s, copy GB/s, launch us."""
    lines = []
    gemm = [r for r in records if r["op"] == "gemm"]
    if gemm:
        lines.append("GEMM bf16 TFLOP/s (fwd/bwd_input/bwd_weight)")
        by: dict[tuple, dict[str, float]] = {}  # a row key -> pass -> FLOP/s
        for r in gemm:
            by.setdefault((r["layer"], r["tokens"]), {})[r["pass"]] = gemm_flops(r) / r["time_s"]
        for (layer, t), d in by.items():
            vals = "/".join(f"{d.get(p, 0) / 1e12:.0f}" for p in ("fwd", "bwd_input", "bwd_weight"))
            lines.append(f"  {layer:8s} T={t:>7d}  {vals}")
    sd = [r for r in records if r["op"] == "sdpa" and r.get("status") == "ok"]
    if sd:
        lines.append("SDPA causal TFLOP/s (fwd/bwd/fwdbwd)")
        by = {}
        for r in sd:
            b = r["backend"] + (f"->{r['default_backend']}" if "default_backend" in r else "")
            key = (b, r["num_heads"], r["num_kv_heads"], r["head_dim"], r["seq_len"])
            by.setdefault(key, {})[r["pass"]] = sdpa_flops(r) / r["time_s"]
        for (b, nh, nkv, hd, s), d in by.items():
            vals = "/".join(f"{d.get(p, 0) / 1e12:.0f}" for p in ("fwd", "bwd", "fwdbwd"))
            lines.append(f"  {b:17s} h={nh:2d} kv={nkv:2d} d={hd:3d} S={s:>7d}  {vals}")
    mem = [r for r in records if "hbm_bytes" in r and r["op"] != "hbm_copy"]
    if mem:
        lines.append("memory-bound ops GB/s of minimal bytes (time us)")
        for r in mem:
            lines.append(f"  {r['op']:13s} {r['impl']:15s} {r['pass']:6s} T={r['tokens']:>6d} "
                         f"{r['hbm_bytes'] / r['time_s'] / 1e9:7.0f} ({r['time_s'] * 1e6:.0f})")
    cp = [r for r in records if r["op"] in ("copy", "hbm_copy")]
    if cp:
        lines.append("copies GB/s (bytes as recorded; hbm_copy counts read+write)")
        for r in cp:
            b = r.get("hbm_bytes", r["bytes"])
            kind = (f"{r['direction']}{'' if r['pinned'] else '-pageable'}" if r["op"] == "copy"
                    else "hbm")
            lines.append(f"  {kind:14s} {r['bytes'] / MiB:8.0f} MiB  {b / r['time_s'] / 1e9:8.1f}")
    for r in records:
        if r["op"] == "launch_overhead":
            lines.append(f"launch {r['mode']:22s} {r['time_s'] * 1e6:.2f} us")
    return lines


# ----------------------------------------------------------------------------- main
K = 1024


def _tokens(text: str) -> int:
    """A positive count with an optional K (1024) or M (1024K) suffix."""
    t = text.strip().upper()
    mult = {"K": K, "M": K * K}.get(t[-1:], 1)
    digits = t[:-1] if mult > 1 else t
    if not digits.isdigit() or int(digits) <= 0:
        raise ValueError(f"{text!r}: give a positive count like 512K or 1M")
    return int(digits) * mult


def plan(smoke: bool) -> dict:
    """Sizes for a full GPU run and for the tiny CPU smoke run."""
    if smoke:
        return {"gemm_tokens": [64, 128], "lm_tokens": [64], "sdpa_seq": [64, 128],
                "sdpa_default_seq": [64], "sdpa_default_shapes": [(4, 4, 8), (4, 1, 8)],
                "sdpa_masked_seq": [64], "sdpa_masked_window": 16,
                "mem_tokens": [64, 128], "ce_tokens": [64],
                "pinned_mib": [1], "pageable_mib": [1], "bidir_mib": [1], "hbm_mib": [1, 2],
                "dims": {"linears": (("qkv", 32, 96), ("o", 32, 32), ("gate_up", 32, 176),
                                     ("down", 88, 32)),
                         "lm_head": ("lm_head", 32, 256), "hidden": 32, "intermediate": 88,
                         "vocab": 256, "num_heads": 4, "head_dim": 8}}
    return {"gemm_tokens": [4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K],
            "lm_tokens": [4 * K, 8 * K, 16 * K],
            "sdpa_seq": [4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K],
            "sdpa_default_seq": [4 * K, 16 * K, 32 * K],
            # Mistral-7B v0.1: sliding window 4096
            "sdpa_masked_seq": [8 * K, 16 * K, 32 * K], "sdpa_masked_window": 4 * K,
            # Llama-2-7B, Mistral-7B, Llama-3.2-1B, Qwen2-7B, GPT-2 medium attention shapes
            "sdpa_default_shapes": [(32, 32, 128), (32, 8, 128), (32, 8, 64), (28, 4, 128),
                                    (16, 16, 64)],
            "mem_tokens": [4 * K, 8 * K, 16 * K, 32 * K, 64 * K],
            "ce_tokens": [4 * K, 8 * K, 16 * K],
            "pinned_mib": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
            "pageable_mib": [8, 64, 256], "bidir_mib": [64, 256, 1024],
            "hbm_mib": [64, 256, 1024, 4096],
            "dims": {"linears": LLAMA7B_LINEARS, "lm_head": LM_HEAD, "hidden": HIDDEN,
                     "intermediate": INTERMEDIATE, "vocab": VOCAB, "num_heads": NUM_HEADS,
                     "head_dim": HEAD_DIM}}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output JSON path")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--only", default="launch,gemm,sdpa,sdpa_default,mem,copy",
                    help="comma list of sections to run "
                         "(launch,gemm,sdpa,sdpa_default,sdpa_masked,mem,copy)")
    ap.add_argument("--sdpa-seq", default=None,
                    help="the sdpa section's sequence lengths instead of 4K..128K (comma list, K = 1024, M = 1024K)")
    ap.add_argument("--sdpa-kv-heads", default=None, help="the sdpa section's kv head counts instead of 32,8")
    ap.add_argument("--sdpa-backends", default="flash,cudnn", help="the sdpa section's backends")
    ap.add_argument("--long-reps", type=int, default=3,
                    help="timed calls of an sdpa case of 64K tokens or more (1: one call after the untimed one)")
    ap.add_argument("--sdpa-no-fwdbwd", action="store_true",
                    help="time the sdpa section's forward and backward only (not the two in one call)")
    args = ap.parse_args(argv)
    if args.long_reps < 1:
        print(f"error: --long-reps: {args.long_reps} (give 1 or more)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device; use --smoke for a CPU logic check", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    p = plan(args.smoke)
    d = p["dims"]
    try:
        if args.sdpa_seq is not None:
            p["sdpa_seq"] = [_tokens(x) for x in args.sdpa_seq.split(",")]
        kv_heads = ((d["num_heads"], d["num_heads"] // 4) if args.sdpa_kv_heads is None
                    else tuple(_tokens(x) for x in args.sdpa_kv_heads.split(",")))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    backends = tuple(args.sdpa_backends.split(","))
    if bad := [b for b in backends if b not in ("flash", "cudnn")]:
        print(f"error: --sdpa-backends: {bad[0]!r} (give flash, cudnn or both)", file=sys.stderr)
        return 2
    l2 = _DEFAULT_L2_BYTES
    if device.type == "cuda":
        l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or l2
    prov = provenance([sys.argv[0], *argv], device)
    prov["l2_bytes_used_for_rotation"] = l2
    sections = set(args.only.split(","))
    records: list[dict] = []
    t_start = time.perf_counter()
    steps = [
        ("launch", lambda: launch_records(device, 200 if args.smoke else 2000)),
        ("gemm", lambda: gemm_records(p["gemm_tokens"], p["lm_tokens"], device, l2,
                                      d["linears"], d["lm_head"])),
        ("sdpa", lambda: sdpa_records(p["sdpa_seq"], device, num_heads=d["num_heads"],
                                      head_dim=d["head_dim"], kv_heads=kv_heads, backends=backends,
                                      long_reps_cap=args.long_reps, with_fwdbwd=not args.sdpa_no_fwdbwd)),
        ("sdpa_default", lambda: sdpa_default_records(p["sdpa_default_seq"],
                                                      p["sdpa_default_shapes"], device)),
        ("sdpa_masked", lambda: sdpa_masked_records(p["sdpa_masked_seq"], device,
                                                    window=p["sdpa_masked_window"],
                                                    num_heads=d["num_heads"], head_dim=d["head_dim"])),
        ("mem", lambda: memory_bound_records(p["mem_tokens"], p["ce_tokens"], device, l2,
                                             hidden=d["hidden"], intermediate=d["intermediate"],
                                             vocab=d["vocab"], num_heads=d["num_heads"])),
        ("copy", lambda: copy_records(p["pinned_mib"], p["pageable_mib"], p["bidir_mib"],
                                      p["hbm_mib"], device)),
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, fn in steps:
        if name not in sections:
            continue
        t0 = time.perf_counter()
        try:
            records += fn()
        except RuntimeError as err:  # keep the other sections; provenance says what failed
            prov.setdefault("section_errors", {})[name] = str(err).splitlines()[0][:300]
            print(f"[microbench] {name} FAILED: {err}", flush=True)
            free(device)
        print(f"[microbench] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        # write after every section so that a later failure keeps what was measured
        prov["wall_s"] = time.perf_counter() - t_start
        out.write_text(OpRecordsFile(provenance=prov, records=records).to_json())
    print("\n".join(summary_lines(records)))
    print(f"[microbench] wrote {len(records)} records to {out} "
          f"in {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
