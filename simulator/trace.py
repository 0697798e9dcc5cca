"""Trace one training step of a real torch module on the meta device into a Workload.

Models: forward, loss and backward (no optimizer) of an ``nn.Module`` as the CUDA caching
allocator sees it: every aten op in execution order (a TorchDispatchMode), the storages each op
allocates (outputs that are new storages; views share their base), the storages that die after
it (exact: a ``StorageWeakRef`` per live storage, checked before every op), the tensors autograd
saves for backward (``saved_tensors_hooks``), FLOPs per op (``torch.utils.flop_counter``'s
registry, i.e. FlopCounterMode's convention: causal attention counted in full), the module path
(forward hooks; in backward a pre-hook on every autograd node a module's forward created, which
unlike ``torch.utils.module_tracker.ModuleTracker`` leaves no reference cycle behind when
checkpoint stops a recompute early, so recomputed tensors die when CUDA frees them) and the layer
(``layers.7.``, ``h.7.``, ``blocks.7.`` in the path, or ``layer_of``). Phases: fwd, loss (the
loss function, or the ops a ``*ForCausalLM`` runs after its head), bwd, and recompute (forward
re-run inside backward by non-reentrant ``torch.utils.checkpoint``).
Nothing is computed and no weights are needed: 7B shapes at 128K tokens trace in seconds.

CUDA-faithful substitutions (meta kernels differ from what an H200 runs; details and sources in
``simulator._trace_kernels``):
- ``F.scaled_dot_product_attention`` -> cuDNN attention (torch 2.11 on H200 picks it for MHA,
  GQA with ``enable_gqa=True`` and masks; measured) or FlashAttention-2
  (``attention_backend="flash"``): output stored [B, S, H, D], fp32 logsumexp, RNG scalars;
  backward dQ/dK/dV plus the fp32 dQ accumulator, softmax_d, GQA expansion buffers. The meta
  device would instead run the math path and materialize S x S scores.
  GQA and Hugging Face: transformers 5.x passes ``enable_gqa=True`` when no mask is needed
  (``use_gqa_in_sdpa``), so K/V are not copied; with a mask it calls ``repeat_kv`` (K/V copies)
  and those copies are traced as they happen. Both kernels take GQA natively.
- ``F.rms_norm`` / ``nn.RMSNorm`` -> the fused CUDA kernel (saves input, weight, fp32 rstd).
  Hugging Face ``LlamaRMSNorm`` is composite on CUDA as on meta (fp32 copies) and is traced as is.
- ``F.dropout`` / ``nn.Dropout`` in training -> ``native_dropout`` (bool mask, not bf16).
- ``embedding_dense_backward`` -> plus its fp32 [tokens, hidden] partial-sum workspace.
- cuBLAS workspace: torch sets ``:4096:8`` (32 MiB) per cuBLAS handle and stream on Hopper
  (aten/src/ATen/cuda/CublasHandlePool.cpp ``parseChosenWorkspaceSize``: 32 MiB on sm90+, else
  8.125 MiB; one workspace per handle and stream), allocated through the caching allocator at
  the first matmul; forward runs on the main thread and backward on the autograd device thread,
  each with its own handle, so two workspaces (measured on H200: +32 MiB at the first forward
  matmul, +32 MiB more at the first backward matmul). Recorded as persistent workspace tensors
  live at step start (steady state after a warm-up step).
- Cross-entropy with an fp32 upcast decomposes into the same ``_log_softmax``/``nll_loss`` ops on
  CUDA and meta (measured), so it needs no substitution.

Assumes: the module is on the meta device (build it under ``torch.device("meta")``); it is cast
to ``param_dtype`` in place. One CUDA stream. A model that reads a boolean tensor's value
(transformers asks whether position ids show packed sequences) reads True: one unpadded
sequence per row. ``checkpointing="full"`` wraps every decoder layer (``layers.N``) in
non-reentrant ``torch.utils.checkpoint`` and turns a Hugging Face KV cache off, as
transformers' own gradient checkpointing does. Parameters are not counted as saved tensors.
With ``grads_persist=True`` every leaf that requires grad (parameters and inputs) has its
``.grad`` at step start and backward accumulates into it (the reference probe reuses one input
tensor, so its grad accumulates too); with False grads are allocated during backward
(``zero_grad(set_to_none=True)`` semantics). ``model_output`` says whether the traced loop drops
the module's output once it has the loss ("freed", the default, as Hugging Face Trainer does) or
holds it through backward ("kept").
Ignores: the CUDA reduction scratch of a ``sum`` over leading dims (Hugging Face RMSNorm weight
grads, bias grads): measured on H200 for a bf16 [1, S, H] input, 128 MiB at S=4K, H=4096,
132 MiB at S=8K and 16K, 64 MiB at S=4K, H=2048, 32 MiB at H=1024 (it stops growing with S
once the reduction's grid is full); it was never at the peak of a measured step. Also the
optimizer step, side streams and allocator fragmentation.
Evaluated and not used: ``torch.distributed._tools.mem_tracker.MemTracker`` (per-module
snapshots by category, no ordered per-op allocation/free log, no saved-tensor view, and the
same multi-grad-hook module tracking as ModuleTracker).
Source: measurements on one H200 (torch 2.11.0+cu130, transformers 5.17): the reference
probe's 4-layer Llama-7B-shaped stack (traced peaks equal ``max_memory_allocated`` to the byte
at 8K/32K/64K tokens, with and without checkpointing), the Hugging Face steps in
``validate/measurements/h200/steps-h200-2026-11-28-r2.json`` (all 21 within 0.11%; both checked
in tests/simulator/test_trace.py) and per-op allocation logs; PyTorch sources named in
``simulator._trace_kernels``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from hwmodels.units import MiB, UserInputError
from simulator import _trace_kernels as tk
from simulator.job import MODEL_OUTPUTS
from simulator.workload import (
    OpSpec,
    Phase,
    Role,
    TensorSpec,
    Workload,
    flops_by_phase,
    saved_bytes_by_layer,
)

CUBLAS_WORKSPACE_BYTES = 32 * MiB  # torch default ":4096:8" on Hopper, one per handle and stream
CHECKPOINTING = ("none", "full")
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_HEAD_NAMES = {"lm_head", "embed_out", "output_layer"}
_GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "_scaled_mm"}
_COPY_OPS = {"_to_copy", "copy_", "clone", "contiguous", "cat", "stack"}
_ATTN_TOKENS = {
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv",
    "qkv_proj",
    "query",
    "key",
    "value",
    "c_attn",
    "query_key_value",
    "rotary_emb",
    "wq",
    "wk",
    "wv",
    "in_proj",
}
_ATTN_OUT_PROJ = {"o_proj", "out_proj", "o", "wo", "c_proj", "dense"}
_MLP_TOKENS = {
    "mlp",
    "feed_forward",
    "ffn",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "fc1",
    "w1",
    "w3",
    "c_fc",
    "gu",
    "dense_h_to_4h",
    "act_fn",
    "act",
}
_MLP_OUT_PROJ = {"down_proj", "fc2", "w2", "d", "dense_4h_to_h"}

_ACTIVE = threading.local()
_NODE_KEY = "tierplan.trace.module"  # autograd node metadata: the module whose forward made it


def active_tracer() -> _Tracer | None:
    """The tracer running on this thread, or None (used by the CUDA-faithful stand-ins)."""
    return getattr(_ACTIVE, "tracer", None)


def layer_of_path(path: str) -> int | None:
    """Decoder layer index from a module path (``model.layers.7.mlp`` -> 7), else None."""
    m = _LAYER_RE.search(path)
    return int(m.group(1)) if m else None


@dataclass
class _TensorRec:
    tid: int
    name: str
    num_bytes: int
    role: Role
    layer: int | None
    persistent: bool = False


@dataclass
class _OpRec:
    name: str
    kind: str
    phase: Phase
    layer: int | None
    flops: float = 0.0
    hbm_bytes: int = 0
    op_class: str = "memory"
    allocs: list[int] = field(default_factory=list)
    frees: list[int] = field(default_factory=list)
    saves: list[int] = field(default_factory=list)


class _Kernel:
    """Handle given to a CUDA-faithful stand-in while it allocates inside one traced kernel."""

    def __init__(self, tracer: _Tracer, op: _OpRec):
        self._tracer, self.op = tracer, op

    def role(self, t: torch.Tensor, role: Role) -> None:
        tid = self._tracer.tid_of(t)
        if tid is not None:
            self._tracer.tensors[tid].role = role

    def reads(self, *tensors) -> None:
        self.op.hbm_bytes += sum(_nbytes(t) for t in tensors if isinstance(t, torch.Tensor))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _storage_key(t: torch.Tensor) -> tuple[int, StorageWeakRef]:
    ref = StorageWeakRef(t.untyped_storage())
    return ref.cdata, ref


def _is_view_op(func) -> bool:
    rets = func._schema.returns
    return bool(rets) and all(r.alias_info is not None and not r.alias_info.is_write for r in rets)


class _Tracer(TorchDispatchMode):
    def __init__(self, root: nn.Module, *, layer_of, attention_backend: str):
        super().__init__()
        self.root = root
        self.layer_of = layer_of or layer_of_path
        self.attention_backend = attention_backend
        self.tensors: dict[int, _TensorRec] = {}
        self.ops: list[_OpRec] = []
        self.initial: list[int] = []
        self._live: dict[int, tuple[int, StorageWeakRef]] = {}  # storage cdata -> (tid, ref)
        self._pending_saves: list[int] = []
        self._next_op_saves: list[int] = []
        self._claimed_saves: dict[int, list[_OpRec]] = {}  # tid -> kernel ops saving it
        self._group: _OpRec | None = None
        self._names = {m: n for n, m in root.named_modules()}
        self._stack: list[str] = []
        self._ckpt_paths: list[str] = []
        self.phase = Phase.FWD
        self.after_head = False
        self._bwd_path = ""
        self._boundary: dict[str, list[set[int]]] = {}
        hidden = {
            m.weight.shape[-1]  # type: ignore[index]  # nn.Module.__getattr__ is typed Tensor | Module
            for m in root.modules()
            if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None
        }
        self._hidden_sizes = hidden

    # ---- storages -------------------------------------------------------------------------
    def tid_of(self, t: torch.Tensor) -> int | None:
        key, _ = _storage_key(t)
        entry = self._live.get(key)
        return entry[0] if entry else None

    def register(
        self,
        t: torch.Tensor,
        *,
        name: str,
        role: Role,
        layer: int | None = None,
        persistent: bool = False,
        initial: bool = False,
    ) -> int:
        """Start tracking ``t``'s storage (idempotent); returns its tid."""
        key, ref = _storage_key(t)
        if key in self._live and not self._live[key][1].expired():
            return self._live[key][0]
        nbytes = t.untyped_storage().nbytes()
        tid = len(self.tensors)
        self.tensors[tid] = _TensorRec(tid, name, nbytes, role, layer, persistent)
        self._live[key] = (tid, ref)
        if initial:
            self.initial.append(tid)
        return tid

    def add_synthetic(self, op: _OpRec, *, name: str, num_bytes: int, role: Role) -> None:
        """A buffer a CUDA kernel allocates and frees inside itself, with no meta counterpart."""
        tid = len(self.tensors)
        self.tensors[tid] = _TensorRec(tid, name, num_bytes, role, op.layer)
        op.allocs.append(tid)
        op.frees.append(tid)

    def _sweep(self) -> None:
        dead = [key for key, (_, ref) in self._live.items() if ref.expired()]
        if not dead:
            return
        target = self._group or (self.ops[-1] if self.ops else None)
        for key in dead:
            tid, _ = self._live.pop(key)
            if target is None:  # died before the first op: no longer live at step start
                self.initial.remove(tid)
            else:
                target.frees.append(tid)

    # ---- module context -------------------------------------------------------------------
    def _path(self) -> str:
        if self.phase == Phase.BWD and not self._stack:
            return self._bwd_path
        return self._stack[-1] if self._stack else ""

    def _phase_now(self) -> Phase:
        if self.phase == Phase.BWD and (self._ckpt_paths or self._stack):
            return Phase.RECOMPUTE
        if self.phase == Phase.FWD and self.after_head and self._path() == "":
            return Phase.LOSS
        return self.phase

    def fwd_pre_hook(self, mod, args):
        name = self._names.get(mod)
        if name is None:
            return
        self._stack.append(name)
        if self.phase != Phase.BWD:
            nodes = {
                id(t.grad_fn)
                for t in tree_flatten(args)[0]
                if isinstance(t, torch.Tensor) and t.grad_fn is not None
            }
            self._boundary.setdefault(name, []).append(nodes)

    def fwd_post_hook(self, mod, args, out):
        name = self._names.get(mod)
        if name is None or not self._stack or self._stack[-1] != name:
            return
        self._stack.pop()
        if self.phase == Phase.BWD:
            return
        if name.split(".")[-1] in _HEAD_NAMES:
            self.after_head = True
        boundary = self._boundary[name].pop() if self._boundary.get(name) else set()
        self._label_nodes(
            name,
            [
                t.grad_fn
                for t in tree_flatten(out)[0]
                if isinstance(t, torch.Tensor) and t.grad_fn is not None
            ],
            boundary,
        )

    def _label_nodes(self, name: str, roots: list, boundary: set[int]) -> None:
        """Tag the autograd nodes a module's forward created, so backward ops get its path.

        Walks back from the module's outputs to its inputs' nodes; nodes already tagged by a
        submodule are walked through, nodes of earlier modules end the walk. Each new node
        gets a pre-hook that sets the backward module path when the engine runs it.
        """
        prefix = name + "." if name else ""
        todo, seen = list(roots), set()
        while todo:
            node = todo.pop()
            if node is None or id(node) in seen or id(node) in boundary:
                continue
            seen.add(id(node))
            label = node.metadata.get(_NODE_KEY)  # on the node: no reference that outlives it
            if label is None:
                node.metadata[_NODE_KEY] = name
                node.register_prehook(self._make_bwd_hook(name))
            elif not (label.startswith(prefix) or name == ""):
                continue
            todo.extend(fn for fn, _ in node.next_functions)

    def _make_bwd_hook(self, name: str):
        def hook(grad_outputs):
            self._bwd_path = name

        return hook

    def run_checkpointed(self, fn, path: str, args, kwargs):
        """Run a checkpointed layer's forward with its path on the stack.

        Non-reentrant checkpoint stops a recompute early by raising from inside the forward,
        so inner modules' post-hooks never run: the stack is cut back here. No generator-based
        context manager: its frame would tie the exception's traceback (and the layer's
        locals) into a reference cycle and keep recomputed tensors alive until a GC pass.
        """
        depth = len(self._stack)
        self._ckpt_paths.append(path)
        self._stack.append(path)
        try:
            return fn(*args, **kwargs)
        finally:
            del self._stack[depth:]
            self._ckpt_paths.pop()

    # ---- saved tensors --------------------------------------------------------------------
    def pack(self, t: torch.Tensor):
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            tid = self.tid_of(t)
            if tid is not None and not self.tensors[tid].persistent:
                claims = self._claimed_saves.get(tid)
                if claims:
                    op = claims.pop(0)
                    if op.phase in (Phase.FWD, Phase.LOSS) and tid not in op.saves:
                        op.saves.append(tid)
                elif self.ops and self.ops[-1].name != (self._path() or "<root>"):
                    # saved on entering a new module before its first op (checkpoint keeps a
                    # layer's inputs this way): the save belongs to that module's first op
                    self._next_op_saves.append(tid)
                else:
                    self._pending_saves.append(tid)
        return t

    def note_saves(self, tensors) -> None:
        """A stand-in kernel is about to save ``tensors``: the pack hook gives them to its op.

        Under checkpointing the pack hook never sees them (checkpoint's own hooks drop them),
        so they are not recorded as saved, as is right.
        """
        op = self.ops[-1]
        for t in tensors:
            if isinstance(t, torch.Tensor):
                tid = self.tid_of(t)
                if tid is not None:
                    self._claimed_saves.setdefault(tid, []).append(op)

    def _resolve_saves(self) -> None:
        """Pending saves not taken by the next op's inputs were saved after the last op ran."""
        if not self._pending_saves or not self.ops:
            return
        op = self.ops[-1]
        if op.phase in (Phase.FWD, Phase.LOSS):
            for tid in self._pending_saves:
                if tid not in op.saves:
                    op.saves.append(tid)
        self._pending_saves = []

    # ---- kernels --------------------------------------------------------------------------
    def _new_op(self, kind: str, *, op_class: str, flops: float) -> _OpRec:
        path = self._path()
        return _OpRec(
            name=path or "<root>",
            kind=kind,
            phase=self._phase_now(),
            layer=self.layer_of(path),
            flops=flops,
            op_class=op_class,
        )

    def _append(self, op: _OpRec) -> None:
        if self._next_op_saves:
            if op.phase in (Phase.FWD, Phase.LOSS):
                op.saves.extend(t for t in self._next_op_saves if t not in op.saves)
            self._next_op_saves = []
        self.ops.append(op)

    def _take_input_saves(self, inputs) -> list[int]:
        """Pending saves of tensors the next op reads were made for it (autograd saves inputs
        before running an op); the others were saved after the previous op (its outputs)."""
        if not self._pending_saves:
            return []
        input_tids = {
            tid
            for t in inputs
            if isinstance(t, torch.Tensor) and (tid := self.tid_of(t)) is not None
        }
        mine = [tid for tid in self._pending_saves if tid in input_tids]
        self._pending_saves = [tid for tid in self._pending_saves if tid not in input_tids]
        self._resolve_saves()
        return mine

    @contextlib.contextmanager
    def kernel(self, kind: str, *, op_class: str, flops: float, inputs=()):
        """Record every allocation inside the block as one op (a CUDA kernel and its workspaces)."""
        self._sweep()
        mine = self._take_input_saves(inputs)
        op = self._new_op(kind, op_class=op_class, flops=flops)
        if op.phase in (Phase.FWD, Phase.LOSS):
            op.saves.extend(mine)
        self._append(op)
        self._group = op
        try:
            yield _Kernel(self, op)
        finally:
            self._sweep()
            self._group = None

    # ---- dispatch -------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            return self._read_scalar(args[0])
        self._sweep()
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        mine = self._take_input_saves(flat_in) if self._group is None else []
        out = func(*args, **kwargs)
        flat_out = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        kind = func._overloadpacket.__name__
        flops = 0.0
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            flops = float(counter(*args, **kwargs, out_val=out))
        group = self._group
        op = group or self._new_op(kind, op_class=_op_class(kind), flops=flops)
        if group is not None:
            op.flops += flops
        new = []
        for i, t in enumerate(flat_out):
            if t.device.type != "meta":
                continue
            key, _ = _storage_key(t)
            if key in self._live:
                continue
            role = Role.WORKSPACE if group is not None else self._role(op, kind, t, i)
            tid = self.register(
                t, name=f"{op.name}:{kind}" + (f"[{i}]" if i else ""), role=role, layer=op.layer
            )
            new.append(tid)
        op.allocs.extend(new)
        view = _is_view_op(func)
        if not view:
            op.hbm_bytes += sum(_nbytes(t) for t in flat_in) + sum(_nbytes(t) for t in flat_out)
        if kind == "embedding_dense_backward" and tk.embedding_backward_workspace_bytes(args):
            self.add_synthetic(
                op,
                name=f"{op.name}:embedding_backward_partials",
                num_bytes=tk.embedding_backward_workspace_bytes(args),
                role=Role.WORKSPACE,
            )
        if group is None and (new or flops or mine or op.allocs or not view):
            if op.phase in (Phase.FWD, Phase.LOSS):
                op.saves.extend(mine)
            self._append(op)
        return out

    @staticmethod
    def _read_scalar(t: torch.Tensor):
        """A data-dependent read (``.item()``, ``if t.all()``) of a meta tensor.

        Meta tensors hold no values. Models check flags such as "is this batch packed or
        padded" this way; a boolean reads True, which is the answer for one unpadded
        sequence per row (transformers' ``find_packed_sequence_indices`` asks ``.all()``
        of "no packing"). Anything else cannot be answered.
        """
        if t.dtype == torch.bool:
            return True
        raise UserInputError(
            "trace_training_step: the model reads a value of a tensor (.item() on "
            f"{t.dtype} {tuple(t.shape)}), which the meta device cannot answer"
        )

    def _role(self, op: _OpRec, kind: str, t: torch.Tensor, index: int) -> Role:
        phase = op.phase
        if phase == Phase.BWD:
            return Role.ACTIVATION_GRAD
        path = op.name if op.name != "<root>" else ""
        tokens = set(path.split(".")) if path else set()
        leaf = path.split(".")[-1] if path else ""
        last = t.shape[-1] if t.dim() else 1
        if phase == Phase.LOSS:
            if t.numel() <= 1:
                return Role.LOSS
            return Role.LOGITS_FP32 if t.dtype == torch.float32 else Role.LOGITS
        if leaf in _HEAD_NAMES:
            return Role.LOGITS
        if "embed" in leaf or "wte" in leaf:
            return Role.LAYER_INPUT
        if "norm" in leaf or leaf.startswith("ln") or leaf in {"n1", "n2"}:
            return Role.NORM_STAT if last == 1 else Role.NORM_OUT
        if tokens & _MLP_TOKENS and leaf not in _MLP_OUT_PROJ:
            return Role.MLP_HIDDEN
        if leaf in _MLP_OUT_PROJ or leaf in _ATTN_OUT_PROJ:
            return Role.OTHER
        if tokens & _ATTN_TOKENS or "attn" in path or "attention" in path:
            return Role.ATTN_QKV
        if op.layer is not None:
            if kind == "add" and last in self._hidden_sizes:
                return Role.LAYER_INPUT
            if (
                self._hidden_sizes
                and last not in self._hidden_sizes
                and kind in ("silu", "gelu", "mul", "relu", "tanh", "sigmoid")
            ):
                return Role.MLP_HIDDEN
        return Role.OTHER


def _op_class(kind: str) -> str:
    if kind in _GEMM_OPS:
        return "gemm"
    if kind in _COPY_OPS:
        return "copy"
    return "memory"


def _call(module: nn.Module, inputs: Any):
    if isinstance(inputs, dict):
        return module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return module(*inputs)
    return module(inputs)


def _default_loss(output, inputs) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if loss is not None:
        return loss
    if isinstance(output, torch.Tensor):
        return output.float().pow(2).mean()
    raise UserInputError(
        "trace_training_step: loss_fn is required when the module returns neither a tensor "
        "nor an object with .loss"
    )


@contextlib.contextmanager
def _patched_functions():
    """Install the CUDA-faithful stand-ins in ``torch.nn.functional``, and restore them.

    Models look these up as module attributes at call time (``nn.RMSNorm``, ``nn.Dropout`` and
    transformers' ``sdpa_attention_forward`` all call ``torch.nn.functional.<name>``), so
    patching the module covers them.
    """
    patches = {
        "scaled_dot_product_attention": tk.cuda_faithful_sdpa(F.scaled_dot_product_attention),
        "rms_norm": tk.fused_rms_norm(F.rms_norm),
        "dropout": tk.fused_dropout(F.dropout),
    }
    saved = {name: getattr(F, name) for name in patches}
    try:
        for name, new in patches.items():
            setattr(F, name, new)
        yield
    finally:
        for name, old in saved.items():
            setattr(F, name, old)


@contextlib.contextmanager
def _checkpoint_layers(root: nn.Module, tracer: _Tracer, layer_of):
    """Wrap every decoder layer's forward in non-reentrant torch.utils.checkpoint."""
    from torch.utils.checkpoint import checkpoint

    wrapped = []
    config = getattr(root, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache:  # transformers turns the KV cache off under gradient checkpointing, too
        assert config is not None  # use_cache was read from it
        config.use_cache = False
    for name, mod in root.named_modules():
        if not name or layer_of(name) is None or layer_of(name.rsplit(".", 1)[0]) is not None:
            continue
        if not name.split(".")[-1].isdigit():
            continue
        orig = mod.forward

        def run(*args, _orig=orig, _name=name, **kwargs):
            return tracer.run_checkpointed(_orig, _name, args, kwargs)

        def fwd(*args, _run=run, **kwargs):
            return checkpoint(_run, *args, use_reentrant=False, **kwargs)

        mod.forward = fwd
        wrapped.append(mod)
    if not wrapped:
        raise UserInputError(
            "trace_training_step: checkpointing='full' found no decoder layers "
            "(module names like 'layers.0'); pass layer_of"
        )
    try:
        yield
    finally:
        for mod in wrapped:
            del mod.forward
        if use_cache:
            assert config is not None  # use_cache was read from it
            config.use_cache = use_cache


def trace_training_step(
    module: nn.Module,
    make_inputs: Callable[[], Any],
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    grads_persist: bool = False,
    checkpointing: str = "none",
    param_dtype: torch.dtype = torch.bfloat16,
    layer_of: Callable[[str], int | None] | None = None,
    attention_backend: str = "cudnn",
    cublas_workspace_bytes: int = CUBLAS_WORKSPACE_BYTES,
    model_output: str = "freed",
) -> Workload:
    """Run one training step (forward, loss, backward) of ``module`` on meta and record it.

    ``make_inputs()`` is called under ``torch.device("meta")`` and returns a tensor, a tuple of
    positional arguments or a dict of keyword arguments. ``loss_fn(output, inputs)`` defaults to
    ``output.loss`` (Hugging Face models given labels) or ``output.float().pow(2).mean()``.
    ``checkpointing``: "none" or "full" (non-reentrant checkpoint around every decoder layer).
    ``attention_backend``: "cudnn" (what torch 2.11 runs on H200) or "flash".
    ``cublas_workspace_bytes``: per cuBLAS handle; 0 leaves the workspaces out.
    ``model_output``: the traced loop's form (``simulator.job.TrainJob.model_output``): "freed"
    keeps only the loss and drops the module's output before backward (``loss =
    model(**batch).loss; loss.backward()``; a Hugging Face output's logits die there), "kept"
    holds the output through backward (``out = model(**batch); out.loss.backward()``, as the
    reference probe holds its stack output).
    """
    if model_output not in MODEL_OUTPUTS:
        raise UserInputError(
            f"trace_training_step: model_output must be one of {MODEL_OUTPUTS}, got {model_output!r}"
        )
    if checkpointing not in CHECKPOINTING:
        raise UserInputError(
            f"trace_training_step: checkpointing must be one of {CHECKPOINTING}, got {checkpointing!r}"
        )
    if attention_backend not in tk.ATTENTION_BACKENDS:
        raise UserInputError(
            f"trace_training_step: attention_backend must be one of {tk.ATTENTION_BACKENDS}, "
            f"got {attention_backend!r}"
        )
    if cublas_workspace_bytes < 0:
        raise UserInputError("trace_training_step: cublas_workspace_bytes must be >= 0")
    if any(p.device.type != "meta" for p in module.parameters()):
        raise UserInputError(
            "trace_training_step: module parameters must be on the meta device "
            "(build the model under `with torch.device('meta'):`)"
        )
    module.to(dtype=param_dtype)
    module.train()
    layer_of = layer_of or layer_of_path
    tracer = _Tracer(module, layer_of=layer_of, attention_backend=attention_backend)
    with torch.device("meta"):
        inputs = make_inputs()
    leaves: list[tuple[str, torch.Tensor]] = []
    for name, p in module.named_parameters():
        p.grad = None
        tracer.register(
            p, name=name, role=Role.WEIGHT, layer=layer_of(name), persistent=True, initial=True
        )
        if p.requires_grad:
            leaves.append((name, p))
    for name, b in module.named_buffers():
        tracer.register(
            b, name=name, role=Role.OTHER, layer=layer_of(name), persistent=True, initial=True
        )
    flat_inputs = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
    for i, t in enumerate(flat_inputs):
        tracer.register(t, name=f"input[{i}]", role=Role.INPUT, initial=True)
        if t.is_leaf and t.requires_grad:
            leaves.append((f"input[{i}]", t))
    if grads_persist:
        for name, t in leaves:
            t.grad = torch.zeros_like(t)
            tracer.register(
                t.grad,
                name=f"grad:{name}",
                role=Role.GRAD,
                layer=layer_of(name),
                persistent=True,
                initial=True,
            )

    hooks = [
        nn.modules.module.register_module_forward_pre_hook(tracer.fwd_pre_hook),
        nn.modules.module.register_module_forward_hook(tracer.fwd_post_hook),
    ]
    ckpt = (
        _checkpoint_layers(module, tracer, layer_of)
        if checkpointing == "full"
        else (contextlib.nullcontext())
    )
    _ACTIVE.tracer = tracer
    try:
        with (
            _patched_functions(),
            ckpt,
            torch.autograd.graph.saved_tensors_hooks(tracer.pack, lambda t: t),
            tracer,
        ):
            output = _call(module, inputs)
            tracer.phase = Phase.LOSS
            loss = (loss_fn or _default_loss)(output, inputs)
            if model_output == "freed":
                output = None  # the loop keeps only the loss
            tracer._sweep()
            tracer._resolve_saves()
            tracer.phase = Phase.BWD
            tracer._bwd_path = ""
            loss.backward()
            tracer._sweep()
            tracer._resolve_saves()
    finally:
        _ACTIVE.tracer = None
        for h in hooks:
            h.remove()
    # grads: the storages left in .grad are parameter (and input) gradients
    for name, t in leaves:
        if t.grad is not None:
            tid = tracer.tid_of(t.grad)
            if tid is not None:
                rec = tracer.tensors[tid]
                rec.role, rec.name, rec.persistent = Role.GRAD, f"grad:{name}", grads_persist
                rec.layer = layer_of(name)
    ops_fwd = any(o.op_class == "gemm" and o.phase != Phase.BWD for o in tracer.ops)
    ops_bwd = any(o.op_class == "gemm" and o.phase == Phase.BWD for o in tracer.ops)
    if cublas_workspace_bytes:
        for label, used in (("main thread", ops_fwd), ("autograd thread", ops_bwd)):
            if used:
                tid = len(tracer.tensors)
                tracer.tensors[tid] = _TensorRec(
                    tid,
                    f"cublas_workspace[{label}]",
                    cublas_workspace_bytes,
                    Role.WORKSPACE,
                    None,
                    persistent=True,
                )
                tracer.initial.append(tid)
    del loss, output
    return _freeze(
        tracer,
        meta={
            "producer": "simulator.trace",
            "module": type(module).__name__,
            "torch": torch.__version__,
            "attention_backend": attention_backend,
            "checkpointing": checkpointing,
            "grads_persist": grads_persist,
            "param_dtype": str(param_dtype).replace("torch.", ""),
            "cublas_workspace_bytes": cublas_workspace_bytes,
            "model_output": model_output,
        },
    )


def _freeze(tracer: _Tracer, *, meta: dict) -> Workload:
    tensors = tuple(
        TensorSpec(
            tid=r.tid,
            name=r.name,
            num_bytes=r.num_bytes,
            role=r.role,
            layer=r.layer,
            persistent=r.persistent,
        )
        for r in tracer.tensors.values()
    )
    ops = tuple(
        OpSpec(
            oid=i,
            name=o.name,
            kind=o.kind,
            phase=o.phase,
            layer=o.layer,
            flops=o.flops,
            hbm_bytes=o.hbm_bytes,
            op_class=o.op_class,
            allocs=tuple(o.allocs),
            frees=tuple(o.frees),
            saves=tuple(o.saves),
        )
        for i, o in enumerate(tracer.ops)
    )
    return Workload(tensors=tensors, ops=ops, initial=tuple(tracer.initial), meta=meta)


def trace_flops(module: nn.Module, make_inputs: Callable[[], Any], **kwargs) -> dict[str, float]:
    """FLOPs per phase of one traced training step (FlopCounterMode's convention)."""
    return flops_by_phase(trace_training_step(module, make_inputs, **kwargs))


def traced_saved_bytes_by_layer(
    module: nn.Module, make_inputs: Callable[[], Any], **kwargs
) -> dict[int | None, int]:
    """Bytes of distinct storages each layer saves for backward in the forward pass."""
    return saved_bytes_by_layer(trace_training_step(module, make_inputs, **kwargs))
