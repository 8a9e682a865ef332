"""Shared by the benchmarks: interleaved timing, a call counter, machine facts, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds of each case. Cases alternate within every round (order flipped each
    round), so a load that comes and goes on the machine hits all of them alike."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            cases[name]()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


class Counted(torch.nn.Module):
    """Wraps an ODE function and counts its calls (the NFE of a solver we don't instrument)."""

    def __init__(self, func: torch.nn.Module):
        super().__init__()
        self.func = func
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.func(t, y)


def sync_of(device) -> Callable[[], None]:
    """Waits for ``device``'s queued work (``cuda:N`` itself, not the current GPU); a
    no-op on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return lambda: None
    return lambda: torch.cuda.synchronize(device)


def cpu_kind() -> str:
    """The CPU's model and the vector units that set training speed, e.g. 'AMD EPYC
    (AVX2, AVX-512, AVX-512 BF16; no AMX)': from /proc/cpuinfo (Linux), else the platform."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    units = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"),
                                     ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX"))
             if flag in flags]
    amx = "" if "AMX" in units else "; no AMX"
    return f"{fields.get('model name', '?')} ({', '.join(units)}{amx})"


def machine(device=None) -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": cpu_kind(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # chosen by odenet/training/openmp.py on import of bench/ (as `odenet train` does)
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
    }
    try:
        import torchdiffeq

        info["torchdiffeq"] = getattr(torchdiffeq, "__version__", "?")
    except ImportError:
        pass
    if torch.cuda.is_available():  # the GPU benched, else the current one
        cuda = device is not None and torch.device(device).type == "cuda"
        info["gpu"] = torch.cuda.get_device_name(torch.device(device) if cuda else None)
    return info


def write_json(name: str, payload: dict, out_dir: str | os.PathLike = "outputs/bench") -> Path:
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def require_torchdiffeq():
    try:
        import torchdiffeq
    except ImportError:
        raise SystemExit("the benchmark compares against torchdiffeq: "
                         "pip install -e '.[dev]' (or make install)") from None
    return torchdiffeq
