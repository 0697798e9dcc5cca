"""Model states off HBM for the plan executor: streamed parameters, gradients to the host, the
optimizer step on the CPU, optimizer states in files on NVMe.

Models: per decoder layer, what ``LayerPlan.model_states`` says. Parameters on ``host``: the
layer's bf16 parameters live in one pinned host region (page-locked once, the layout of the GPU
slot below); on the GPU they are views of one of ``S = 1 + max(params_prefetch_layers)``
rotating slot buffers (streamed layer q uses slot q mod S, in forward and in backward, so the
tensors autograd saved from the weights point at the right bytes whenever the slot holds that
layer). At the start of streamed layer q's forward the H2D stream, after an event of the compute
stream (the slot's last user has run), copies layers q..q+k into their slots (one memcpy each)
and the compute stream waits for layer q's copy; when backward reaches layer q (a gradient hook
on its output: every kernel that reads layer q+S's weights is queued by then), layers q..q-k
are fetched again where their slot holds another layer. Gradients on ``host``: a
post-accumulate-grad hook copies each gradient D2H into a pinned host region (on the D2H stream
after an event of the compute stream) and drops it from the GPU; once the layer's last gradient
is on its way, the layer's optimizer step is handed to a worker thread. Optimizer step ``cpu``:
``torch.optim.AdamW`` (fused on the CPU where torch has it) steps the layer's fp32 master
weights with fp32 moments, after the worker waits for the layer's D2H event, overlapped with the
rest of the backward; the updated bf16 parameters are written to the host region (parameters on
host) or copied H2D into the resident parameters at the step's end. States on ``nvme``: the
layer's moments (and its master weights when they are on nvme) are one file in the job's state
directory, read into one page-aligned buffer before the layer's step and written after it with
O_DIRECT (one line and buffered IO where the filesystem refuses O_DIRECT, e.g. tmpfs), through a
temporary name, fsync and rename: a failed write leaves the previous file and reports one line.
Everything else (resident layers, embedding, final norm, LM head: kept in HBM in this version)
is stepped on the GPU at the step's end, with the same recipe: fp32 master weights and moments
(torch.optim.AdamW, or SGD), bf16 parameters copied from them.
Assumes: one optimizer recipe (ADAMW_* below; ``job.master_weights`` false: the fp32 copy is
taken again from the rounded bf16 parameters after every step); every parameter of a layer gets
exactly one gradient per step; on the CPU the same code runs with plain copies.
Ignores: ``optimizer_step: gpu`` with states off HBM, CXL, gradients on NVMe (refused by
``validate.executor.executor_unsupported``); pinning of the NVMe staging buffer (the CPU step
reads it).
Source: ZeRO-Offload / ZeRO-Infinity (Ren et al. 2021, Rajbhandari et al. 2021): CPU Adam
overlapped with backward, NVMe states; ALST (arXiv 2506.13996) for the single-GPU recipe.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hwmodels.units import UserInputError, format_bytes
from planners.plan import ModelStatePlacement, Plan

if TYPE_CHECKING:
    from validate.model import Decoder

ADAMW_LR = 1e-3
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
ADAMW_WEIGHT_DECAY = 0.01
SGD_LR = 1e-3
ALIGN_BYTES = 512  # offsets of parameters inside a layer's region
DIRECT_IO_ALIGN_BYTES = 4096  # O_DIRECT: buffer address, length and file offset


def _aligned(nbytes: int, align: int = ALIGN_BYTES) -> int:
    return -(-nbytes // align) * align


def make_optimizer(params: list[torch.Tensor], *, kind: str) -> torch.optim.Optimizer:
    """The job's optimizer over fp32 ``params``: AdamW (fused where torch has it for the device,
    else foreach) or plain SGD."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=SGD_LR)
    kw: dict[str, Any] = dict(lr=ADAMW_LR, betas=ADAMW_BETAS, eps=ADAMW_EPS, weight_decay=ADAMW_WEIGHT_DECAY)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, ValueError):  # a torch without the fused kernel for this device
        return torch.optim.AdamW(params, foreach=True, **kw)


class HostRegion:
    """One host buffer allocated once; page-locked with cudaHostRegister when ``pin``."""

    def __init__(self, nbytes: int, *, pin: bool, where: str) -> None:
        self.buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8)
        self._pinned = False
        if pin and nbytes:
            err = torch.cuda.cudart().cudaHostRegister(self.buffer.data_ptr(), nbytes, 0)
            if int(err) != 0:
                raise UserInputError(f"{where}: cannot page-lock {format_bytes(nbytes)} of host "
                                     f"memory (cudaHostRegister error {int(err)})")
            self._pinned = True

    def close(self) -> None:
        if self._pinned:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaHostUnregister(self.buffer.data_ptr())
            self._pinned = False
        self.buffer = torch.empty(0, dtype=torch.uint8)


class DirectFile:
    """A file of fixed size read and written whole with O_DIRECT from page-aligned buffers."""

    warned: set[str] = set()

    def __init__(self, path: Path, nbytes: int) -> None:
        self.path = path
        self.nbytes = _aligned(nbytes, DIRECT_IO_ALIGN_BYTES)

    def _open(self, path: Path, flags: int) -> int:
        direct = getattr(os, "O_DIRECT", 0)
        if direct and str(path.parent) not in DirectFile.warned:
            try:
                return os.open(path, flags | direct, 0o600)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                DirectFile.warned.add(str(path.parent))
                print(f"optimizer states: {path.parent} refuses O_DIRECT; buffered IO there",
                      file=sys.stderr)
        return os.open(path, flags, 0o600)

    def write(self, buf: memoryview, *, where: str) -> None:
        """``buf[:nbytes]`` to the file: a temporary name, fsync, rename. On a failure (a full
        disk) the temporary file is removed and one line names the file."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = -1
        try:
            fd = self._open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            done = 0
            while done < self.nbytes:
                n = os.pwrite(fd, buf[done:self.nbytes], done)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                done += n
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, self.path)
        except OSError as err:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise UserInputError(f"{where}: cannot write {self.path} "
                                 f"({format_bytes(self.nbytes)}): {err.strerror or err}") from None

    def read(self, buf: memoryview, *, where: str) -> None:
        fd = -1
        try:
            fd = self._open(self.path, os.O_RDONLY)
            done = 0
            while done < self.nbytes:
                n = os.preadv(fd, [buf[done:self.nbytes]], done)
                if n <= 0:
                    raise OSError(errno.EIO, "file shorter than its states")
                done += n
        except OSError as err:
            raise UserInputError(f"{where}: cannot read {self.path}: {err.strerror or err}") from None
        finally:
            if fd >= 0:
                os.close(fd)


@dataclass(eq=False)
class _Layer:
    """One decoder layer's parameters and where their states live."""

    index: int
    placement: ModelStatePlacement
    params: list[torch.nn.Parameter]
    offsets: list[int]  # byte offsets of the parameters in the layer's region / slot
    nbytes: int
    stream_pos: int | None = None  # position among the streamed layers
    host_params: list[torch.Tensor] = field(default_factory=list)  # bf16, in ``host_region``
    host_flat: torch.Tensor | None = None  # the layer's parameter region as bytes
    host_grads: list[torch.Tensor] = field(default_factory=list)
    masters: list[torch.Tensor] = field(default_factory=list)  # fp32 master weights held in memory
    states: list[dict[str, Any]] = field(default_factory=list)  # the optimizer's per-parameter states
    state_file: DirectFile | None = None
    pending: int = 0  # gradients still to come this step
    in_flight: list[torch.Tensor] = field(default_factory=list)  # GPU grads read by D2H copies

    @property
    def cpu_step(self) -> bool:
        return self.placement.optimizer_step == "cpu"


class ModelStates:
    """The model states of ``model`` as ``plan`` places them, and the optimizer step.

    ``__init__`` only sizes (``host_bytes``, ``disk_bytes``: for ``check_fits``);
    ``allocate()`` makes the regions and slots and binds streamed parameters to their slots;
    each step calls ``begin_step``, ``before_forward(i)`` / ``before_backward(i)`` around the
    layers, and ``finish_step`` after backward."""

    def __init__(self, model: Decoder, plan: Plan, *, device: torch.device,
                 state_dir: Path | None = None) -> None:
        job = plan.scenario.job
        self.model = model
        self.device = device
        self.cuda = device.type == "cuda"
        self.optimizer_kind = getattr(job, "optimizer", "none")
        self.master_weights = bool(getattr(job, "master_weights", False))
        self.state_dir = state_dir
        self.layers: list[_Layer] = []
        for i, (layer, lp) in enumerate(zip(model.layers, plan.layers, strict=True)):
            params = list(layer.parameters())
            offsets, off = [], 0
            for p in params:
                offsets.append(off)
                off = _aligned(off + p.numel() * p.element_size())
            self.layers.append(_Layer(i, lp.model_states, params, offsets, off))
        streamed = [ls for ls in self.layers if ls.placement.params != "hbm"]
        for q, ls in enumerate(streamed):
            ls.stream_pos = q
        self.streamed = streamed
        self.num_slots = 1 + max((ls.placement.params_prefetch_layers for ls in streamed), default=0)
        self.num_slots = min(self.num_slots, max(len(streamed), 1))
        self.lookahead = self.num_slots - 1
        self.slot_bytes = max((ls.nbytes for ls in streamed), default=0)
        cpu = [ls for ls in self.layers if ls.cpu_step]
        self.nvme = [ls for ls in cpu if self._file_bytes(ls)]
        if self.nvme and state_dir is None:
            raise UserInputError("layers.model_states: optimizer states on nvme need a state directory "
                                 "(--state-dir)")
        self.allocated = False
        self._slots: list[torch.Tensor] = []
        self._slot_holds: dict[int, int] = {}
        self._fetched: dict[int, Any] = {}
        self._regions: list[HostRegion] = []
        self._futures: list[Future] = []
        self._worker: ThreadPoolExecutor | None = None
        self._gpu_params: list[torch.nn.Parameter] = []
        self._gpu_masters: list[torch.Tensor] = []
        self._gpu_states: list[dict[str, Any]] = []
        self._gpu_opt: torch.optim.Optimizer | None = None
        self._cpu_opt: torch.optim.Optimizer | None = None
        self._staging: mmap.mmap | None = None
        self._lock = threading.Lock()
        self.cpu_step_s = 0.0

    # ---- sizes -------------------------------------------------------------------------------

    def _masters_on_nvme(self, ls: _Layer) -> bool:
        return self.master_weights and ls.placement.master_weights == "nvme"

    def _file_bytes(self, ls: _Layer) -> int:
        """Bytes of the layer's state file: its fp32 moments on nvme, and its fp32 master weights
        when the job keeps them there (without master weights there are none to keep)."""
        n = sum(p.numel() for p in ls.params) * 4
        per = (2 if self.optimizer_kind == "adamw" else 0) if ls.placement.optimizer_states == "nvme" else 0
        per += self._masters_on_nvme(ls)
        return n * per

    def host_bytes(self) -> int:
        """Host bytes this placement holds: pinned parameter and gradient regions, fp32 master
        weights and moments of CPU-stepped layers (those not on nvme), the NVMe staging buffer,
        and the CPU step's fp32 scratch of one layer (``planners.swap.states.cpu_step_scratch_bytes``:
        the steps run one layer at a time)."""
        from planners.swap.states import cpu_step_scratch_bytes

        total = scratch = 0
        for ls in self.layers:
            if ls.placement.params != "hbm" or ls.cpu_step:
                total += ls.nbytes  # parameters on host, or the CPU step's bf16 result
            if ls.placement.grads != "hbm":
                total += ls.nbytes
            numel = sum(p.numel() for p in ls.params)
            if ls.cpu_step:
                total += 4 * numel * (self.master_weights and ls.placement.master_weights != "nvme")
                moments = 2 if self.optimizer_kind == "adamw" else 0
                total += 4 * numel * moments * (ls.placement.optimizer_states != "nvme")
                meta = {"param_elem_bytes": ls.params[0].element_size(), "master_weights": self.master_weights}
                scratch = max(scratch, cpu_step_scratch_bytes(numel * ls.params[0].element_size(), meta))
        return total + scratch + max((self._file_bytes(ls) for ls in self.nvme), default=0)

    def pinned_bytes(self) -> int:
        """Of ``host_bytes``, the page-locked part (the parameter and gradient regions)."""
        return sum(ls.nbytes * ((ls.placement.params != "hbm" or ls.cpu_step) + (ls.placement.grads != "hbm"))
                   for ls in self.layers) if self.cuda else 0

    def disk_bytes(self) -> int:
        """Bytes of the state files in the state directory."""
        return sum(_aligned(self._file_bytes(ls), DIRECT_IO_ALIGN_BYTES) for ls in self.nvme)

    # ---- setup -------------------------------------------------------------------------------

    def allocate(self) -> None:
        """Host regions, GPU slots, master weights and optimizers; streamed parameters moved to
        the host and bound to their slots."""
        if self.allocated:
            return
        self.allocated = True
        for _ in range(self.num_slots if self.streamed else 0):
            self._slots.append(torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device))
        for ls in self.layers:
            pm = ls.placement
            if pm.params != "hbm" or ls.cpu_step:
                region = self._region(ls.nbytes, f"layers.{ls.index}.model_states.params")
                ls.host_flat = region.buffer[: ls.nbytes]
                ls.host_params = self._views(ls, ls.host_flat)
                for hp, p in zip(ls.host_params, ls.params, strict=True):
                    hp.copy_(p.detach())
            if pm.grads != "hbm":
                region = self._region(ls.nbytes, f"layers.{ls.index}.model_states.grads")
                ls.host_grads = self._views(ls, region.buffer[: ls.nbytes])
                for p in ls.params:
                    p.register_post_accumulate_grad_hook(lambda p, ls=ls: self._grad_ready(ls, p))
            if ls.stream_pos is not None:
                slot = self._slots[ls.stream_pos % self.num_slots]
                for p, view in zip(ls.params, self._views(ls, slot), strict=True):
                    p.data = view  # the layer's weights are its slot's bytes from here on
            if ls.cpu_step:
                if self.master_weights and pm.master_weights != "nvme":
                    ls.masters = [hp.float() for hp in ls.host_params]
                ls.states = [{} for _ in ls.params]
                if ls in self.nvme:
                    assert self.state_dir is not None  # __init__ refused nvme without one
                    ls.state_file = DirectFile(self.state_dir / f"layer{ls.index:04d}.states", self._file_bytes(ls))
                    ls.state_file.path.unlink(missing_ok=True)  # a fresh run starts from zero moments
        if self.nvme:
            size = max(ls.state_file.nbytes for ls in self.nvme if ls.state_file is not None)
            self._staging = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
        if any(ls.cpu_step for ls in self.layers):
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-optimizer")
            self._cpu_opt = make_optimizer([torch.empty(0)], kind=self.optimizer_kind)
        cpu_params = {id(p) for ls in self.layers if ls.cpu_step for p in ls.params}
        if self.optimizer_kind != "none":
            self._gpu_params = [p for p in self.model.parameters() if id(p) not in cpu_params]
            if self.master_weights:  # held between steps only when the job keeps master weights
                self._gpu_masters = [p.detach().float() for p in self._gpu_params]
            self._gpu_states = [{} for _ in self._gpu_params]
            if self._gpu_params:
                self._gpu_opt = make_optimizer([torch.empty(0, device=self.device)], kind=self.optimizer_kind)
        if self.cuda:
            self.h2d = torch.cuda.Stream(self.device)
            self.d2h = torch.cuda.Stream(self.device)
            torch.cuda.synchronize(self.device)

    def _region(self, nbytes: int, where: str) -> HostRegion:
        region = HostRegion(nbytes, pin=self.cuda, where=where)
        self._regions.append(region)
        return region

    @staticmethod
    def _views(ls: _Layer, flat: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for p, off in zip(ls.params, ls.offsets, strict=True):
            n = p.numel() * p.element_size()
            out.append(flat[off : off + n].view(p.dtype).view(p.shape))
        return out

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        for ls in self.layers:  # nothing may hold views of the regions or the staging buffer
            ls.states, ls.masters, ls.host_params, ls.host_grads, ls.host_flat = [], [], [], [], None
        self._cpu_opt = None
        for r in self._regions:
            r.close()
        self._regions.clear()
        if self._staging is not None:
            self._staging.close()
            self._staging = None

    # ---- parameter streaming -----------------------------------------------------------------

    def begin_step(self) -> None:
        self._fetched.clear()
        self._futures.clear()
        self.cpu_step_s = 0.0
        for ls in self.layers:
            ls.pending = len(ls.params) if ls.placement.grads != "hbm" else 0

    def _fetch(self, q: int) -> None:
        """Streamed layer q's parameters into its slot (unless the slot holds them)."""
        if not 0 <= q < len(self.streamed):
            return
        slot = q % self.num_slots
        if self._slot_holds.get(slot) == q:
            return
        ls = self.streamed[q]
        assert ls.host_flat is not None  # allocate() made it
        dst = self._slots[slot][: ls.nbytes]
        if self.cuda:
            self.h2d.wait_event(torch.cuda.current_stream(self.device).record_event())
            with torch.cuda.stream(self.h2d):
                dst.copy_(ls.host_flat, non_blocking=True)
            self._fetched[q] = self.h2d.record_event()
        else:
            dst.copy_(ls.host_flat)
        self._slot_holds[slot] = q

    def _wait(self, q: int) -> None:
        ev = self._fetched.pop(q, None)
        if ev is not None:
            torch.cuda.current_stream(self.device).wait_event(ev)

    def before_forward(self, i: int) -> None:
        q = self.layers[i].stream_pos
        if q is None or not self.allocated:
            return
        for r in range(q, q + self.lookahead + 1):
            self._fetch(r)
        self._wait(q)

    def params_ready(self, i: int) -> None:
        """Layer i's parameters in its slot now, for a forward inside backward (a segment's
        recompute); nothing fetched ahead."""
        q = self.layers[i].stream_pos
        if q is None or not self.allocated:
            return
        self._fetch(q)
        self._wait(q)

    def before_backward(self, i: int) -> None:
        q = self.layers[i].stream_pos
        if q is None or not self.allocated:
            return
        for r in range(q, q - self.lookahead - 1, -1):
            self._fetch(r)
        self._wait(q)

    # ---- gradients and the CPU step ----------------------------------------------------------

    def _grad_ready(self, ls: _Layer, p: torch.nn.Parameter) -> None:
        if not self.allocated or ls.pending <= 0 or p.grad is None:
            return
        idx = next(k for k, q in enumerate(ls.params) if q is p)
        g, p.grad = p.grad, None
        if self.cuda:
            self.d2h.wait_event(torch.cuda.current_stream(self.device).record_event())
            with torch.cuda.stream(self.d2h):
                ls.host_grads[idx].copy_(g, non_blocking=True)
            ls.in_flight.append(g)  # freed by the worker once the copy is done
        else:
            ls.host_grads[idx].copy_(g)
        ls.pending -= 1
        if ls.pending == 0 and ls.cpu_step:
            ev = self.d2h.record_event() if self.cuda else None
            assert self._worker is not None  # allocate() made it for CPU-stepped layers
            self._futures.append(self._worker.submit(self._cpu_step, ls, ev))

    def _cpu_step(self, ls: _Layer, ev: Any) -> None:
        """Layer ``ls``'s optimizer step on the CPU, once its gradients are on the host: its fp32
        master weights (held, in the state file, or without master weights an fp32 copy of the
        bf16 parameters made for this step), fp32 copies of its gradients, its moments (held, or
        read from its file and written back); the bf16 result into the host region."""
        import time

        if ev is not None:
            ev.synchronize()
        t0 = time.perf_counter()
        ls.in_flight.clear()
        opt = self._cpu_opt
        assert opt is not None  # allocate() made it
        where = f"layers.{ls.index}.model_states"
        views = self._load_states(ls, where) if ls.state_file is not None else {}
        if "master" in views:
            masters = views["master"]
        elif ls.masters:
            masters = ls.masters
        else:  # no master weights: this step's fp32 copy of the rounded bf16 parameters
            masters = [hp.float() for hp in ls.host_params]
        for m, g in zip(masters, ls.host_grads, strict=True):
            m.grad = g.float()
        group = opt.param_groups[0]
        group["params"] = list(masters)
        opt.state.clear()
        for m, st in zip(masters, ls.states, strict=True):
            if st:
                opt.state[m] = st
        opt.step()
        ls.states = [opt.state[m] for m in masters]
        opt.state.clear()
        group["params"] = []
        for m, hp in zip(masters, ls.host_params, strict=True):
            m.grad = None
            hp.copy_(m)  # the bf16 parameters (host region)
        del masters
        if views:
            self._store_states(ls, views, where)
        with self._lock:
            self.cpu_step_s += time.perf_counter() - t0

    def _state_views(self, ls: _Layer) -> dict[str, list[torch.Tensor]]:
        """The file's sections in the staging buffer: moments and/or master weights, fp32."""
        assert self._staging is not None
        flat = torch.frombuffer(self._staging, dtype=torch.float32)
        names = []
        if ls.placement.optimizer_states == "nvme" and self.optimizer_kind == "adamw":
            names += ["exp_avg", "exp_avg_sq"]
        if self._masters_on_nvme(ls):
            names.append("master")
        out: dict[str, list[torch.Tensor]] = {}
        off = 0
        for name in names:
            out[name] = []
            for p in ls.params:
                out[name].append(flat[off : off + p.numel()].view(p.shape))
                off += p.numel()
        return out

    def _load_states(self, ls: _Layer, where: str) -> dict[str, list[torch.Tensor]]:
        """The layer's state file read into the staging buffer, its moments bound to their
        sections; on its first step (no file yet) the moments start there as zeros, as AdamW's
        own first step makes them (so that no second copy of them is ever held), and master
        weights on nvme start from the parameters."""
        assert ls.state_file is not None and self._staging is not None
        views = self._state_views(ls)
        first = not ls.state_file.path.exists()
        if not first:
            ls.state_file.read(memoryview(self._staging), where=where)
        for k, st in enumerate(ls.states):
            if "master" in views and first:
                views["master"][k].copy_(ls.host_params[k])
            if "exp_avg" not in views:
                continue
            if not st:  # torch.optim.AdamW's initial state: step 0 (an fp32 scalar), zero moments
                views["exp_avg"][k].zero_()
                views["exp_avg_sq"][k].zero_()
                st["step"] = torch.zeros((), dtype=torch.float32)
            st["exp_avg"], st["exp_avg_sq"] = views["exp_avg"][k], views["exp_avg_sq"][k]
        return views

    def _store_states(self, ls: _Layer, views: dict[str, list[torch.Tensor]], where: str) -> None:
        assert ls.state_file is not None and self._staging is not None
        for k, st in enumerate(ls.states):
            if "exp_avg" in views:
                for name in ("exp_avg", "exp_avg_sq"):
                    if st[name].data_ptr() != views[name][k].data_ptr():
                        views[name][k].copy_(st[name])
                    st[name] = views[name][k]  # the memory copy goes; the file holds them
        ls.state_file.write(memoryview(self._staging), where=where)

    def _gpu_step(self, opt: torch.optim.Optimizer) -> None:
        """The device's step one parameter at a time, so that its fp32 temporaries (the
        parameter's fp32 copy without master weights, its fp32 gradient) are one parameter's,
        not the model's: what the job's states hold (bf16 parameters and gradients, fp32
        moments, fp32 master weights when the job keeps them) plus the largest parameter's
        copies. The same kernel on the same fp32 values as one step over every parameter."""
        group = opt.param_groups[0]
        with torch.no_grad():
            for i, p in enumerate(self._gpu_params):
                if p.grad is None:
                    continue
                m = self._gpu_masters[i] if self.master_weights else p.detach().float()
                m.grad = p.grad.float()
                group["params"] = [m]
                opt.state.clear()
                if self._gpu_states[i]:
                    opt.state[m] = self._gpu_states[i]
                opt.step()
                self._gpu_states[i] = opt.state[m]
                opt.state.clear()
                m.grad = None
                p.copy_(m)
                del m
            group["params"] = []  # else the group holds the last fp32 copy until the next step

    def finish_step(self) -> None:
        """After backward: wait for the CPU steps, step everything else on the device, and move
        the CPU-stepped bf16 parameters of resident layers into HBM."""
        for f in self._futures:
            f.result()
        self._futures.clear()
        if self._gpu_opt is not None:
            self._gpu_step(self._gpu_opt)
        resident = [ls for ls in self.layers if ls.cpu_step and ls.stream_pos is None]
        with torch.no_grad():
            for ls in resident:
                for p, hp in zip(ls.params, ls.host_params, strict=True):
                    p.data.copy_(hp, non_blocking=self.cuda)  # the compute stream: before the next step
        self._slot_holds.clear()  # the host regions hold the updated parameters now
