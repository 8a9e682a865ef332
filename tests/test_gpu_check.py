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


def test_quick_cpu_check(tmp_path, mnist_root):
    pytest.importorskip("torchdiffeq")
    from bench.bench_training import TRAINING_CASES
    from odenet.registry import CLASSIFY, models_of

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
                                          "quick_epoch/odenet", "bench/setup"]
        + [f"bench/{c}" for c in TRAINING_CASES]
        + [f"bench/fast_{m}" for m in ("odenet", "rknet", "resnet")] + ["bench/solver_alone"])
    assert all(st["ok"] and st["seconds"] > 0 for st in s["steps"])
    assert s["total_seconds"] >= 0.99 * sum(st["seconds"] for st in s["steps"]) > 0
    runs = {st["name"]: st for st in s["steps"] if "run_dir" in st}
    assert len(runs) == len(models) + 3
    for st in runs.values():
        assert st["status"] == "finished" and st["device"] == "cpu"
        m = json.loads((Path(st["run_dir"]) / "metrics.json").read_text())
        assert m["status"] == "finished" and m["test_error"] == st["test_error"]
    assert runs["quick_epoch/odenet"]["nfe_forward_mean"] > 0
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
        n.replace("/", "_") for n in runs)


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
