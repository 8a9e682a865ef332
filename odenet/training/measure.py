"""Measurements, named for what they are.

- ``ActivationMeter``: bytes of the tensors autograd saves for backward while it is
  active (``torch.autograd.graph.saved_tensors_hooks``), each storage counted once,
  parameters left out; over the whole model and over chosen blocks alone. Device
  independent: the number that shows O(1) (adjoint) vs O(NFE) (backprop through the
  solver) memory.
- ``DevicePeak``: the CUDA allocator's peak over the run, and over each stretch of it
  (an epoch's training, its evaluation) above what was allocated when it began: on a GPU
  the number that shows what backward needs; ``rss_peak_mib``: what the OS saw at peak.
- ``Timer`` and ``median``: wall-clock seconds, synchronized on CUDA.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from odenet.solvers import release_buffers

MIB = float(1 << 20)


class ActivationMeter:
    """Counts what autograd saves for backward inside ``with meter:``.

        with ActivationMeter(model, blocks=measured_blocks(model)) as meter:
            loss = loss_fn(model(x), y)
        loss.backward()          # outside: the backward pass saves nothing we count
        meter.total_mib, meter.block_mib

    A storage is counted once however many tensors view it; parameters (and views of
    them) are not activations and are skipped. ``block_mib`` counts the storages saved
    while one of ``blocks`` runs its forward (a storage saved both inside and outside
    counts in both). Only what a graph still holds when the block exits counts: a graph
    built and dropped inside it (e.g. a vector-Jacobian product taken per evaluation of
    an adjoint's forward solve) is transient, not kept for backward. The pack hook hands
    autograd a detached alias, not the tensor it got: returning the tensor itself can
    make a reference cycle (tensor -> grad_fn -> saved tensor) that keeps whole graphs
    alive; the alias's weak reference tells whether its graph is alive.
    """

    def __init__(self, model: nn.Module | None = None, blocks: Iterable[nn.Module] = ()):
        self.model = model
        self.blocks = list(blocks)
        self.total_bytes = 0
        self.block_bytes = 0
        self.tensors = 0

    # hooks ------------------------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            key, nbytes = (t.device.type, t.device.index, st.data_ptr()), st.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            return t.detach()
        self.tensors += 1
        alias = t.detach()
        if key[2] not in self._params:
            self._saved.append((key, nbytes, self._depth > 0, weakref.ref(alias)))
        return alias

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def _enter_block(self, *args: Any) -> None:
        self._depth += 1

    def _leave_block(self, *args: Any) -> None:
        self._depth -= 1

    # context ------------------------------------------------------------------------
    def __enter__(self) -> ActivationMeter:
        self.total_bytes = self.block_bytes = self.tensors = 0
        self._saved: list = []  # (storage key, bytes, saved inside a block, alias ref)
        self._depth = 0
        params = self.model.parameters() if self.model is not None else ()
        self._params = {p.untyped_storage().data_ptr() for p in params}
        self._handles = []
        for b in self.blocks:
            self._handles.append(b.register_forward_pre_hook(self._enter_block))
            self._handles.append(b.register_forward_hook(self._leave_block, always_call=True))
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles = []
        seen, seen_block = set(), set()
        for key, nbytes, in_block, alias in self._saved:
            if alias() is None:  # its graph is gone: nothing backward will need
                continue
            if key not in seen:
                seen.add(key)
                self.total_bytes += nbytes
            if in_block and key not in seen_block:
                seen_block.add(key)
                self.block_bytes += nbytes
        self._saved = []

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MIB

    @property
    def block_mib(self) -> float | None:
        return self.block_bytes / MIB if self.blocks else None


def activation_mib(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                   blocks: Sequence[nn.Module] = ()) -> tuple[float, float | None]:
    """(whole model, blocks) MiB saved for backward by one forward pass + cross-entropy."""
    with ActivationMeter(model, blocks) as meter:
        out = model(x)
        loss = nn.functional.cross_entropy(out, y) if y is not None else out.sum()
    del loss, out
    return meter.total_mib, meter.block_mib


def rss_peak_mib() -> float:
    """Peak resident set size of this process since start or ``reset_rss_peak()``.

    Linux: VmHWM of /proc/self/status; elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0


def reset_rss_peak() -> bool:
    """Start a new peak at the current RSS (Linux >= 4.0), so that runs sharing a process
    (a sweep's jobs under Hydra's basic launcher) each report their own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class DevicePeak:
    """The CUDA allocator's peaks of one run on ``device`` (every value None elsewhere).

        peaks = DevicePeak(device)     # the run's peak starts here
        peaks.start(); train(); peaks.stop("train")
        peaks.mib["train"]             # the stretch's peak above what it started with
        peaks.overall_mib              # the run's peak so far, all of it

    A stretch starts without the solver's kept buffers (``release_buffers``), so those it
    uses count in it; what was allocated when it started (weights, optimizer state, a
    dataset kept on the device) does not. Host-side calls only: no sync.
    """

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.mib: dict[str, float | None] = {}
        self._overall, self._base = 0, 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def start(self) -> None:
        if self.cuda:
            release_buffers()
            self._fold()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)

    def stop(self, name: str) -> float | None:
        if self.cuda:
            self._fold()
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
        self.mib[name] = peak / MIB if self.cuda else None
        return self.mib[name]

    def _fold(self) -> None:
        self._overall = max(self._overall, torch.cuda.max_memory_allocated(self.device))

    @property
    def overall_mib(self) -> float | None:
        if not self.cuda:
            return None
        self._fold()
        return self._overall / MIB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """``with Timer(device) as t: ...``; then ``t.seconds`` (CUDA work included)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
