"""The Hugging Face decode engine: transformers' own model and DynamicCache, greedy, eager.

Models: the baseline the static engine is measured against (infer-contract.md): the family's
``*ForCausalLM`` built from the plan's ModelSpec (``ModelSpec.to_hf_config``; rotary theta
``validate.model.ROPE_THETA``, SDPA attention) in the compute dtype directly on the device, its
weights drawn as ``validate.model.build_model`` draws them (``init_parameter`` in the reference
decoder's parameter order, mapped to transformers' names): equal seeds give the static engine's
weights, so the two engines' logits can be compared. A manual greedy loop equivalent to
``generate``: one prefill forward of the whole batch (or one per ``prefill_chunk_len`` chunk)
with ``logits_to_keep=1``, then one forward per token, with ``DynamicCache(config=...)``, or
``DynamicCache(config=..., offloading=True)`` when the plan puts the KV cache on the host
(transformers moves each layer's keys and values to the CPU after its update and prefetches the
next layer on a side stream; CUDA only).
Measures: what ``validate.infer_executor.InferRun`` holds, timed the same way (``kernels.timing``),
with the pinned host allocator's peak as the host bytes.
Assumes: transformers 5.x (the cache argument is ``cache`` from 5.2x on, ``past_key_values``
before: the forward's signature says which).
Ignores: attention masks (no padding: every prompt has prompt_len tokens), sampling.
Source: transformers 5.x cache_utils.py (DynamicCache, Cache.update's offloading path) and
generation/utils.py (the prefill / decode loop).
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch

from hwmodels.units import UserInputError
from kernels import timing
from planners.plan import Plan
from simulator.model import ModelSpec
from validate.infer_executor import (
    SDPA_BACKENDS,
    InferRun,
    infer_job,
    infer_spec,
    kv_torch_dtype,
    pin_peak_bytes,
    prompt_ids,
    sdpa_backends,
)
from validate.model import ROPE_THETA, Decoder, init_parameter

_HF_BLOCKS = (("q_proj", "self_attn"), ("k_proj", "self_attn"), ("v_proj", "self_attn"),
              ("o_proj", "self_attn"), ("q_norm", "self_attn"), ("k_norm", "self_attn"),
              ("gate_proj", "mlp"), ("up_proj", "mlp"), ("down_proj", "mlp"))


def hf_name(name: str) -> str:
    """transformers' name of a ``validate.model.Decoder`` parameter."""
    for part, block in _HF_BLOCKS:
        name = name.replace(f".{part}.", f".{block}.{part}.")
    return name if name.startswith("lm_head") else "model." + name


def hf_config(spec: ModelSpec) -> Any:
    """The family's transformers config of ``spec`` (SDPA attention, default rotary)."""
    from transformers import AutoConfig

    cfg = {k: v for k, v in spec.to_hf_config().items() if not k.startswith("_") and k != "tierplan"}
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    config.rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    config.rope_theta = ROPE_THETA  # transformers before rope_parameters read this
    config._attn_implementation = "sdpa"
    return config


def build_hf_model(spec: ModelSpec, *, device: Any, dtype: torch.dtype, seed: int = 0) -> Any:
    """transformers' causal LM of ``spec`` in ``dtype`` on ``device``, weights from ``seed`` as
    ``validate.model.build_model`` draws them."""
    from transformers import AutoModelForCausalLM

    config = hf_config(spec)
    device = torch.device(device)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # older transformers spell it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype, attn_implementation="sdpa")
    model.eval().requires_grad_(False)
    params = dict(model.named_parameters())
    ours = Decoder(spec, device="meta", dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    drawn = set()
    with torch.no_grad():
        for name, _ in ours.named_parameters():
            target = params.get(hf_name(name))
            if target is None:
                raise UserInputError(f"model: transformers' {type(model).__name__} has no parameter "
                                     f"{hf_name(name)!r} for {name!r}")
            init_parameter(name, target, gen)
            drawn.add(hf_name(name))
    left = sorted(set(params) - drawn - ({"lm_head.weight"} if spec.tie_word_embeddings else set()))
    if left:
        raise UserInputError(f"model: transformers' parameter {left[0]!r} has no counterpart in the reference decoder")
    return model


def _cache_kwarg(model: Any) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFDecodeEngine:
    """transformers' model for ``plan`` on ``device``; ``run()`` serves the job once."""

    def __init__(self, plan: Plan, *, device: Any, seed: int = 0, dtype: torch.dtype | None = None) -> None:
        job = infer_job(plan)
        spec = infer_spec(plan)
        if job.engine != "hf":
            raise UserInputError(f"scenario.job.engine: {job.engine!r} plans run on the static engine")
        self.plan, self.job, self.spec = plan, job, spec
        self.device = torch.device(device)
        self.offloading = any(lp.kv_cache is not None and lp.kv_cache.resident_frac < 1.0 for lp in plan.layers)
        if self.offloading and not all(lp.kv_cache is not None and lp.kv_cache.resident_frac == 0.0
                                       for lp in plan.layers):
            raise UserInputError("layers.kv_cache: the HF engine offloads every layer's KV cache or none")
        if any(lp.model_states.params != "hbm" for lp in plan.layers):
            raise UserInputError("layers.model_states.params: the HF engine keeps its weights in HBM")
        if self.offloading and self.device.type != "cuda":
            raise UserInputError("layers.kv_cache: DynamicCache offloading needs a CUDA device")
        t0 = time.perf_counter()
        self.dtype = dtype or kv_torch_dtype(plan)
        self.model = build_hf_model(spec, device=self.device, dtype=self.dtype, seed=seed)
        self.cache_kwarg = _cache_kwarg(self.model)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.setup_s = time.perf_counter() - t0

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        if self.offloading:
            return DynamicCache(config=self.model.config, offloading=True)
        return DynamicCache(config=self.model.config)

    def _forward(self, ids: torch.Tensor, cache: Any, *, keep: int) -> torch.Tensor:
        with sdpa_backends(self.device):  # as the static engine's: no cuDNN plan per KV length
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=keep, **{self.cache_kwarg: cache})
        return out.logits[:, -1, :].float()

    def teacher_forced(self, ids: torch.Tensor, teacher: list[list[int]]) -> list[torch.Tensor]:
        """fp32 logits [B, V] of a fresh cache's prefill of ``ids`` and of each decode step fed
        ``teacher``'s tokens ([B][gen_len + 1], a reference run's) instead of the argmax."""
        job = self.job
        forced = torch.tensor(teacher, dtype=torch.long, device=self.device)
        if tuple(forced.shape) != (ids.shape[0], job.gen_len + 1):
            raise UserInputError(f"teacher tokens: shape {tuple(forced.shape)}, the run's is "
                                 f"({ids.shape[0]}, {job.gen_len + 1})")
        chunk = job.prefill_chunk_len or job.prompt_len
        cache = self.new_cache()
        with torch.inference_mode():
            for p0 in range(0, job.prompt_len, chunk):
                lg = self._forward(ids[:, p0 : p0 + chunk], cache, keep=1)
            kept = [lg.cpu()]
            for step in range(job.gen_len):
                kept.append(self._forward(forced[:, step : step + 1], cache, keep=1).cpu())
        return kept

    def run(self, ids: torch.Tensor | None = None, *, keep_logits: bool = False,
            teacher: list[list[int]] | None = None) -> InferRun:
        job, dev = self.job, self.device
        if ids is None:
            ids = prompt_ids(self.spec, job, dev)
        cuda = dev.type == "cuda"
        chunk = job.prefill_chunk_len or job.prompt_len
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            if hasattr(torch.cuda, "reset_peak_host_memory_stats"):
                torch.cuda.reset_peak_host_memory_stats()
        cache = self.new_cache()
        out: list[torch.Tensor] = []
        kept: list[torch.Tensor] = []

        def prefill() -> None:
            for p0 in range(0, job.prompt_len, chunk):
                out[:] = [self._forward(ids[:, p0 : p0 + chunk], cache, keep=1)]

        with torch.inference_mode():
            prefill_s = timing.time_one(prefill, dev)
            tok = out[0].argmax(-1)
            tokens = [tok]
            if keep_logits:
                kept.append(out[0].cpu())
            times: list[float] = []
            contexts: list[int] = []
            for step in range(job.gen_len):

                def decode(tok: torch.Tensor = tok) -> None:
                    lg = self._forward(tok[:, None], cache, keep=1)
                    out[:] = [lg, lg.argmax(-1)]

                times.append(timing.time_one(decode, dev))
                contexts.append(job.prompt_len + step)
                tok = out[1]
                tokens.append(tok)
                if keep_logits:
                    kept.append(out[0].cpu())
        if cuda:
            torch.cuda.synchronize(dev)  # the offloading copies on transformers' side stream
        run = InferRun(
            tokens=torch.stack(tokens, dim=1).cpu().tolist(),
            prefill_time_s=prefill_s,
            decode_step_times_s=times,
            contexts=contexts,
            host_pinned_bytes=pin_peak_bytes() if cuda else 0,
            setup_s=self.setup_s,
            notes={"offloading": self.offloading, "cache_kwarg": self.cache_kwarg,
                   "sdpa_backends": ",".join(SDPA_BACKENDS) if cuda else "torch's default"},
            logits=kept,
        )
        if cuda:
            run.peak_allocated_bytes = torch.cuda.max_memory_allocated(dev)
            run.peak_reserved_bytes = torch.cuda.max_memory_reserved(dev)
        if teacher is not None:  # after the peaks: a second cache is no part of the measured run
            del cache
            run.teacher_logits = self.teacher_forced(ids, teacher)
        return run


def run_hf(plan: Plan, *, device: Any, seed: int = 0, dtype: torch.dtype | None = None,
           keep_logits: bool = False, teacher: list[list[int]] | None = None) -> InferRun:
    """Build the HF engine for ``plan`` and serve its job once (``teacher``: then its prefill and
    decode steps again, fed those tokens; ``InferRun.teacher_logits``)."""
    return HFDecodeEngine(plan, device=device, seed=seed, dtype=dtype).run(keep_logits=keep_logits,
                                                                           teacher=teacher)
