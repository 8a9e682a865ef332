"""scripts/gpu_check.sh (bench/gpu_check.py): run for real on the CPU in its quick mode,
its JSON summary checked; bad devices end in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _check(tmp_path: Path, device: str, *args: str, timeout: float = 300,
           **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "PY": sys.executable, "DEVICE": device, "OUT": str(tmp_path / "out"),
         **env}
    return subprocess.run(["bash", str(SCRIPT), "--runs", str(tmp_path / "runs"), *args],
                          env=e, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # the whole check script on the CPU: ~1.5 min
def test_quick_cpu_check(tmp_path, mnist_root):
    pytest.importorskip("torchdiffeq")
    from bench.bench_training import TRAINING_CASES
    from odenet.config.model_registry import CLASSIFY, models_of

    r = _check(tmp_path, "cpu", QUICK="1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary_path = tmp_path / "out" / "gpu_check.json"
    s = json.loads(summary_path.read_text())
    n = len(s["steps"])
    assert r.stdout.strip().splitlines()[-1].startswith(f"gpu_check: {n}/{n} steps ok on cpu")
    assert s["device"] == "cpu" and s["quick"] is True
    assert s["finished"] is True and s["ok"] is True
    models = models_of(CLASSIFY)
    assert [st["name"] for st in s["steps"]] == (
        [f"smoke/{m}" for m in models] + ["smoke_bf16/odenet", "smoke_bf16/resnet",
                                          "auto/odenet", "cnf/moons", "quick_epoch/odenet",
                                          "resume/odenet", "evaluate/odenet",
                                          "gradients/odenet", "bench/setup"]
        + [f"bench/{c}" for c in TRAINING_CASES]
        + [f"bench/fast_{m}" for m in ("odenet", "rknet", "resnet")] + ["bench/solver_alone"])
    assert all(st["ok"] and st["seconds"] > 0 for st in s["steps"])
    assert s["total_seconds"] >= 0.99 * sum(st["seconds"] for st in s["steps"]) > 0
    runs = {st["name"]: st for st in s["steps"] if "status" in st}
    assert len(runs) == len(models) + 5
    for st in runs.values():
        assert st["status"] == "finished" and st["device"] == "cpu"
        assert st["float32_math"] == "ieee" and st["precision"] in ("fp32", "bf16")
        assert st["activation_mib"] > 0 and st["cuda_train_peak_mib"] is None
        m = json.loads((Path(st["run_dir"]) / "metrics.json").read_text())
        assert m["status"] == "finished" and m["test_error"] == st["test_error"]
    assert runs["quick_epoch/odenet"]["nfe_forward_mean"] > 0
    assert runs["cnf/moons"]["test_nll"] > 0 and runs["cnf/moons"]["test_error"] is None
    steps = {st["name"]: st for st in s["steps"]}
    assert steps["resume/odenet"]["exact"] is True
    for name in ("evaluate/odenet", "gradients/odenet"):
        assert steps[name]["float32_math"] == "ieee" and steps[name]["results"]
    # the verdicts say what ran and what it needed
    out = r.stdout.splitlines()
    line = out[out.index(f"[1/{n}] smoke/{models[0]}") + 1]
    assert line.startswith("    ok (") and "; fp32 (float32 ieee), activations " in line
    for c in TRAINING_CASES:
        case = next(st for st in s["steps"] if st["name"] == f"bench/{c}")
        assert case["odenet_s"] > 0 and case["torchdiffeq_s"] > 0
        assert case["nfe_odenet"][0] > 0 and case["grad_error_odenet"] < 1
    for m in ("odenet", "resnet"):
        run_dir = Path(runs[f"smoke_bf16/{m}"]["run_dir"])
        assert json.loads((run_dir / "metrics.json").read_text())["precision"] == "bf16"
        fast = next(st for st in s["steps"] if st["name"] == f"bench/fast_{m}")
        assert fast["sides"]["fast"] > 0 and fast["ratios"]["fp32"] > 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        [n.replace("/", "_") for n in runs] + ["resume_odenet"])


@pytest.mark.parametrize("device, needle", [
    ("gpu", "DEVICE='gpu' is not one of: cuda, cuda:N, cpu"),
    ("mps", "DEVICE='mps' is not one of: cuda, cuda:N, cpu"),
])
def test_bad_device_one_line(tmp_path, device, needle):
    r = _check(tmp_path, device, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_cuda_missing_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    r = _check(tmp_path, "cuda", timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "DEVICE=cuda but torch" in r.stderr, r.stderr
    assert "DEVICE=cpu" in r.stderr


def test_a_run_is_ok_only_in_the_arithmetic_asked_for(monkeypatch):
    """A verdict checks what ran: the device, IEEE float32 and, on a GPU, bf16 on bf16
    units (torch emulates it on a V100 or T4: slower than fp32, and not what was asked)."""
    import torch

    from bench import gpu_check as G

    cuda = torch.device("cuda:1")
    ran = {"status": "finished", "device": "cuda:1", "precision": "bf16",
           "float32_math": "ieee"}
    monkeypatch.setattr(G, "has_bf16_units", lambda device: device == cuda)
    assert G.problems(ran, cuda) == []
    monkeypatch.setattr(G, "has_bf16_units", lambda device: False)
    assert G.problems(ran, cuda) == ["bf16 ran emulated: cuda:1 has no bf16 units"]
    assert G.problems({**ran, "precision": "fp32"}, cuda) == []
    assert G.problems({**ran, "device": "cpu", "float32_math": "tf32", "precision": "fp32"},
                      cuda) == ["ran on cpu, not cuda:1",
                                "float32 ran as tf32, not IEEE float32"]


def test_without_mnist_the_other_steps_still_run(tmp_path, monkeypatch, capsys):
    """An offline machine without data/: said once, its steps fail with the reason, the
    steps that need no MNIST run."""
    import torch

    from bench import gpu_check as G
    from odenet import data
    def offline(root, **kw):
        raise data.DataError("MNIST not found in data/MNIST/raw and no network")

    monkeypatch.setattr(G, "DATA", str(tmp_path / "nodata"))
    monkeypatch.setattr(data, "prepare_mnist", offline)
    why = G._prepare_mnist()
    assert why == "MNIST not found in data/MNIST/raw and no network"
    assert "bring data/ from a machine that ran `make data`" in capsys.readouterr().err
    monkeypatch.setattr(G, "all_steps", lambda device, quick, runs: [
        (name, lambda: {"ok": True}) for name in ("smoke/mlp", "cnf/moons",
                                                 "bench/solver_alone")])
    s = G.check(torch.device("cpu"), True, tmp_path / "out", tmp_path / "runs",
                log=lambda *a: None, no_mnist=why)
    assert [(st["name"], st["ok"]) for st in s["steps"]] == [
        ("smoke/mlp", False), ("cnf/moons", True), ("bench/solver_alone", True)]
    assert s["steps"][0]["error"].startswith("RuntimeError: no MNIST: MNIST not found")


def test_the_benches_wait_for_the_gpu_they_bench(monkeypatch):
    """cuda:N is honoured: the benches sync that GPU, not the current one, and the
    torchdiffeq reference keeps its times with its network (not on the host)."""
    import torch

    from bench.bench_training import TorchdiffeqBlock
    from bench.common import sync_of
    from odenet.models.blocks import ODEFunc

    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(device))
    sync_of("cuda:1")()
    sync_of("cpu")()
    assert seen == [torch.device("cuda:1")]
    func = ODEFunc(4).to("meta")  # stands in for a GPU: made there, not copied
    assert TorchdiffeqBlock(func, True, "default", None).times.device.type == "meta"
