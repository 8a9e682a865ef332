"""The process a run lives in: its seeds and RNG states (a checkpoint keeps them, so that
a resumed run continues exactly), its device, its float arithmetic and the code's
version."""

from __future__ import annotations

import contextlib
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odenet.config.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain types only (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # a CPU run leaves CUDA be
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.is_initialized():
        # one state per GPU of the machine that saved it: it may have had more than this one
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ConfigError for CUDA without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not one of: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available (use device=auto or cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return dev


def git_commit() -> str | None:
    """The commit odenet runs from, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def has_bf16_units(device: torch.device) -> bool:
    """Whether bf16 layers run on bf16 arithmetic on ``device``: a GPU of compute
    capability 8.0 or more (Ampere and newer; ``cuda:N`` is asked about, not the current
    GPU), or a CPU oneDNN runs bf16 on (AVX-512 or AMX). Without them bf16 is emulated:
    a ResNet iteration measured ~13x slower than fp32 on an AVX2-only CPU (2026-12-02);
    torch.cuda.is_bf16_supported() counts emulation (V100, T4) as support."""
    if device.type == "cuda":
        if torch.version.hip:  # AMD: capabilities are not NVIDIA's; torch's own answer
            return torch.cuda.is_bf16_supported()
        return torch.cuda.get_device_capability(device) >= (8, 0)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the query: assume emulation
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the device has bf16 units (has_bf16_units), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if has_bf16_units(device) else "fp32"


def set_exact_math() -> str:
    """Float32 convolutions (cuDNN) and matmuls (cuBLAS) in IEEE float32, and deterministic
    cuDNN algorithms. torch's default lets cuDNN run float32 convolutions as TF32 on Ampere
    and newer GPUs: fp32 results, and the float32 errors of evaluate and gradients, would
    have a TF32 floor. ``precision=bf16`` runs the layers autocast covers in bf16; all else
    stays IEEE float32. Deterministic algorithms: a resumed run repeats an uninterrupted
    one. Nothing changes on a CPU. Returns ``float32_math()`` (metrics.json records it)."""
    torch.backends.cudnn.allow_tf32 = False  # the older flags: torch 2.1 to today read them
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return float32_math()


def float32_math() -> str:
    """What float32 convolutions and matmuls run as on a GPU: "ieee" or "tf32"."""
    b = torch.backends
    try:
        tf32 = b.cudnn.allow_tf32 or b.cuda.matmul.allow_tf32
    except RuntimeError:  # someone set torch's newer per-operator flags: read those
        tf32 = "tf32" in (b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision)
    return "tf32" if tf32 else "ieee"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The compute dtype of the network's layers (config ``precision``): bf16 autocasts
    convolutions and linear layers on the CPU or CUDA (weights, gradients and the loss stay
    fp32; an ODE block keeps its state and solver in fp32, models/blocks.py); fp32 changes
    nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
