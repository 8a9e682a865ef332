"""The process a run lives in: its seeds and RNG states (a checkpoint keeps them, so that
a resumed run continues exactly), its device and the code's version."""

from __future__ import annotations

import contextlib
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odenet.errors import ConfigError


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
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    """Whether bf16 layers run on bf16 arithmetic here: a CUDA GPU that supports bf16, or
    a CPU oneDNN runs bf16 on (AVX-512 or AMX). Without them (e.g. an AVX2-only CPU)
    bf16 is emulated: a ResNet iteration measured ~13x slower than fp32 (2026-12-02)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the query: assume emulation
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the device has bf16 units (has_bf16_units), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if has_bf16_units(device) else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The compute dtype of the network's layers (config ``precision``): bf16 autocasts
    convolutions and linear layers on the CPU or CUDA (weights, gradients and the loss stay
    fp32; an ODE block keeps its state and solver in fp32, models/blocks.py); fp32 changes
    nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
