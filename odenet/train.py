"""The one trainer all models share: ``run(cfg, out_dir) -> metrics``.

What a run writes (DEVELOPERS.md, Contract 2): ``metrics.json`` (one flat record,
atomic), ``history.jsonl`` (iteration and epoch records), ``checkpoint.pt`` (atomic,
every epoch and on interruption; loads with ``torch.load(weights_only=True)``) and
TensorBoard events under ``tb/``.

Task seam: everything specific to *what* is learned (data, loss, evaluation metric)
lives in a ``Task`` chosen by ``cfg.task`` from ``TASKS``; the loop, logging,
measurements, checkpoints, resume and failure handling are shared. ``classify``
(MNIST, cross-entropy, error rate) is the first task.

``main(argv)`` (``odenet train``) is the Hydra app around ``run``; it is the only place
here that imports Hydra, lazily.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from odenet import measure
from odenet.config import ConfigError, as_dict, to_config
from odenet.data import DataError, mnist_loaders
from odenet.models import (
    build_model,
    count_parameters,
    measured_blocks,
    ode_blocks,
    reset_solver_stats,
    solver_stats,
)
from odenet.solvers import SolverError

log = logging.getLogger("odenet.train")

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
HISTORY = "history.jsonl"
# config keys a resumed run may change (everything else must match the checkpoint)
RESUMABLE_CHANGES = ("optim.epochs", "train", "threads", "device", "resume")


# ============================================================================ task seam
@dataclass
class TaskData:
    """Loaders a task hands the trainer.

    ``train`` has ``len()``, ``set_epoch(e)``, ``batch(i)`` (batch i of the current
    epoch, a pure function of (seed, epoch, i) so that a resumed run sees the same
    batches) and ``num_samples``; each of ``evals`` (``"test"`` required, ``"train"``
    optional) is an iterable of batches covering its whole split.
    """

    train: Any
    evals: dict[str, Any]
    train_size: int


class Task:
    """What a run learns. Subclass, set ``name``/``metric`` and add it to ``TASKS``.

    The trainer writes ``<split>_<metric>`` (e.g. ``test_error``) per epoch and in
    metrics.json, lower is better. ``running_metric`` lets it report the training
    metric from the training batches when ``train.train_eval_size`` is 0.
    """

    name = "task"
    metric = "loss"
    full_test_size: int | None = None  # metrics.json says test_size: null for this many

    def loaders(self, data_cfg: Any, seed: int, device: torch.device,
                train_eval_size: int | None) -> tuple[Any, Any, Any]:
        """(train, test, train_eval or None) loaders of this task's data."""
        raise NotImplementedError

    def data(self, cfg: Any, device: torch.device) -> TaskData:
        train, test, train_eval = self.loaders(cfg.data, cfg.seed, device,
                                               cfg.train.train_eval_size)
        evals = {"test": test}
        if train_eval is not None:
            evals["train"] = train_eval
        return TaskData(train=train, evals=evals, train_size=train.n)

    def model(self, cfg: Any) -> nn.Module:
        return build_model(cfg.model, cfg.solver)

    def train_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to minimize, sums for ``reduce``), in model.train() mode, with grad."""
        raise NotImplementedError

    def eval_batch(self, model: nn.Module, batch: Any) -> dict[str, float]:
        """Sums for ``reduce`` over one batch (no grad, model.eval())."""
        raise NotImplementedError

    def reduce(self, sums: dict[str, float]) -> float | None:
        """The metric from sums accumulated over batches."""
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        return len(batch[0])


class ClassifyTask(Task):
    """MNIST classification: cross-entropy loss, error rate."""

    name = "classify"
    metric = "error"
    full_test_size = 10000  # MNIST's test set

    def loaders(self, data_cfg, seed, device, train_eval_size):
        return mnist_loaders(data_cfg, seed, device, train_eval_size)

    def train_loss(self, model, batch):
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        wrong = (logits.detach().argmax(1) != y).sum()
        return loss, {"wrong": wrong, "count": len(y)}

    def eval_batch(self, model, batch):
        x, y = batch
        return {"wrong": (model(x).argmax(1) != y).sum(), "count": len(y)}

    def reduce(self, sums):
        n = sums.get("count", 0)
        return float(sums["wrong"]) / n if n else None


class DensityTask(Task):
    """2-D toy densities (odenet/cnf): maximum likelihood, NLL in nats per point."""

    name = "density"
    metric = "nll"

    def loaders(self, data_cfg, seed, device, train_eval_size):
        from odenet.cnf.data import toy_loaders

        return toy_loaders(data_cfg, seed, device, train_eval_size)

    def train_loss(self, model, batch):
        log_p = model(batch[0])
        return -log_p.mean(), {"nll": -log_p.detach().sum(), "count": len(log_p)}

    def eval_batch(self, model, batch):
        log_p = model(batch[0])
        return {"nll": -log_p.sum(), "count": len(log_p)}

    def reduce(self, sums):
        n = sums.get("count", 0)
        return float(sums["nll"]) / n if n else None


TASKS: dict[str, Callable[[], Task]] = {"classify": ClassifyTask, "density": DensityTask}


# ============================================================================ the schedule
def lr_factor(step: int, iters_per_epoch: int, o: Any) -> float:
    """Multiplier of the peak lr at iteration ``step`` (0-based) for OptimConfig ``o``."""
    epoch = step / iters_per_epoch
    total = o.epochs * iters_per_epoch
    if o.schedule == "onecycle":
        p = step / max(total, 1)
        if p < o.pct_start:
            return o.warmup_start + (1 - o.warmup_start) * p / o.pct_start
        q = min((p - o.pct_start) / (1 - o.pct_start), 1.0)
        return o.final_lr_fraction + (1 - o.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * q))
    f = 1.0
    if o.schedule == "multistep":
        f = o.gamma ** sum(1 for m in o.milestones if step >= round(m * iters_per_epoch))
    elif o.schedule == "cosine":
        w = o.warmup_epochs
        q = min(max((epoch - w) / max(o.epochs - w, 1e-12), 0.0), 1.0)
        f = o.final_lr_fraction + (1 - o.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * q))
    if o.warmup_epochs > 0 and epoch < o.warmup_epochs:
        f *= o.warmup_start + (1 - o.warmup_start) * epoch / o.warmup_epochs
    return f


def peak_lr(cfg: Any) -> float:
    o = cfg.optim
    return o.lr if o.lr is not None else o.base_lr * cfg.data.batch_size / o.base_batch_size


# ============================================================================ helpers
def write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_atomic(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _finite(x: Any) -> Any:
    """JSON-safe: NaN/Inf become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available (use device=auto or cpu)")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain types only (weights_only-loadable)."""
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


class Stop(Exception):
    """Leave the loop at a clean boundary: checkpoint, status "interrupted"."""

    def __init__(self, reason: str, signum: int | None = None):
        super().__init__(reason)
        self.reason, self.signum = reason, signum


class Failure(Exception):
    """The run cannot go on (NaN/Inf loss, SolverError): status "failed"."""


class _Signals:
    """SIGINT/SIGTERM set a flag that the loop checks between iterations (a second
    Ctrl-C interrupts at once). Only in the main thread; elsewhere a no-op."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: stopping at the next iteration boundary "
                    "(Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> _Signals:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread (e.g. a joblib/submitit worker thread)
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def check(self, where: str) -> None:
        if self.signum is not None:
            raise Stop(f"{signal.Signals(self.signum).name} {where}", self.signum)


@dataclass
class Progress:
    """Where the run stands; saved in checkpoints (plain types only)."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of epoch `epoch` already trained
    step: int = 0  # optimizer steps in total
    wall: float = 0.0  # seconds spent in earlier sessions of this run
    # accumulators of the current epoch
    loss_sum: float = 0.0
    iters: int = 0
    nfe_f: int = 0
    nfe_b: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    activation: list[float | None] = field(default_factory=lambda: [None, None])
    epoch_seconds: float = 0.0
    history_bytes: int = 0

    def new_epoch(self) -> None:
        self.loss_sum, self.iters, self.nfe_f, self.nfe_b = 0.0, 0, 0, 0
        self.sums, self.times, self.activation = {}, [], [None, None]
        self.epoch_seconds = 0.0

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ============================================================================ the run
def run(cfg: Any, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Train ``cfg`` (a validated Config, DictConfig or dict) writing into ``out_dir``.

    Returns the metrics record (also in metrics.json). Never raises for a failed or
    interrupted run: ``status`` says what happened and ``reason`` why. Raises
    ConfigError/DataError before anything is written if the run cannot start.
    """
    cfg = to_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    try:
        task = TASKS[cfg.task]()
    except KeyError:
        raise ConfigError(f"task={cfg.task!r} is not one of: {', '.join(TASKS)}") from None
    data = task.data(cfg, device)
    model = task.model(cfg).to(device)
    ipe = len(data.train)
    if cfg.train.max_iters_per_epoch is not None:
        ipe = min(ipe, cfg.train.max_iters_per_epoch)
    o = cfg.optim
    if o.name == "adam":  # configs/optim/adam.yaml (the density experiments)
        optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr(cfg),
                                     weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr(cfg), momentum=o.momentum,
                                    nesterov=o.nesterov, weight_decay=o.weight_decay)

    def schedule(step: int) -> float:
        return lr_factor(step, ipe, o)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    prog = Progress()
    ckpt_path = out / CHECKPOINT
    resumed = False
    if cfg.resume:
        if ckpt_path.is_file():
            prog = _load_checkpoint(ckpt_path, cfg, model, optimizer, scheduler, device)
            resumed = True
        else:
            log.warning("resume=true but there is no %s in %s: starting from scratch",
                        CHECKPOINT, out)
    hist_path = out / HISTORY
    if resumed and hist_path.exists():
        with open(hist_path, "r+b") as f:  # drop records written after the checkpoint
            f.truncate(prog.history_bytes)
    elif not resumed:
        hist_path.write_text("")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measure.reset_rss_peak()  # this run's peak, not an earlier job's in the same process

    has_ode = bool(ode_blocks(model))
    blocks = measured_blocks(model)
    metrics = _base_metrics(cfg, task, model, data, device, has_ode)
    metrics["epochs"] = prog.epoch
    last: dict[str, Any] = {}  # the last finished epoch's numbers
    if resumed:
        last = _last_epoch_record(hist_path) or {}
        _fill_from_epoch(metrics, last, task)
    writer = _tensorboard(out, cfg, prog.step + 1 if resumed else None)
    bars = _bars(cfg)
    log.info("%s: %s, %d parameters, %s, %d x %d iterations -> %s", "resuming" if resumed
             else "training", cfg.model.name, metrics["params"], device, o.epochs, ipe, out)
    log.info("threads %d, OMP_WAIT_POLICY=%s, GOMP_SPINCOUNT=%s (odenet/openmp.py)",
             torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "-"),
             os.environ.get("GOMP_SPINCOUNT", "-"))
    write_json_atomic(out / METRICS, metrics)

    status, reason, signum = "running", None, None
    session_iters = 0
    history = open(hist_path, "a")
    try:
        with _Signals() as sig, bars:
            epoch_bar = bars.epochs(o.epochs, prog.epoch)
            while prog.epoch < o.epochs:
                epoch = prog.epoch
                data.train.set_epoch(epoch)
                t_epoch = time.perf_counter() - prog.epoch_seconds
                batch_bar = bars.batches(ipe, prog.batch, epoch)
                measured_this_epoch = False
                while prog.batch < ipe:
                    i = prog.batch
                    batch = data.train.batch(i)
                    lr = optimizer.param_groups[0]["lr"]
                    measure_now = cfg.train.measure_memory and not measured_this_epoch
                    rec = _train_step(task, model, optimizer, batch, device, blocks,
                                      measure_now)
                    scheduler.step()
                    measured_this_epoch = True
                    prog.batch += 1
                    prog.step += 1
                    prog.iters += 1
                    prog.loss_sum += rec["loss"]
                    prog.nfe_f += rec["nfe_forward"] or 0
                    prog.nfe_b += rec["nfe_backward"] or 0
                    for k, v in rec.pop("sums").items():
                        prog.sums[k] = prog.sums.get(k, 0) + float(v)
                    if measure_now:
                        prog.activation = [rec.pop("activation_mib"),
                                           rec.pop("activation_block_mib")]
                    else:
                        prog.times.append(rec["seconds"])
                    if prog.step % cfg.train.log_every == 0 or prog.batch == ipe:
                        r = {"kind": "iter", "epoch": epoch, "iter": i, "step": prog.step,
                             "loss": rec["loss"], "nfe_forward": rec["nfe_forward"],
                             "nfe_backward": rec["nfe_backward"],
                             "steps_accepted": rec["steps_accepted"],
                             "steps_rejected": rec["steps_rejected"],
                             "seconds": rec["seconds"], "lr": lr}
                        _write_history(history, r)
                        _tb_iter(writer, r)
                    batch_bar.update(1)
                    batch_bar.set_postfix(_postfix(rec), refresh=False)
                    session_iters += 1
                    stop_after = cfg.train.stop_after_iters
                    if stop_after is not None and session_iters >= stop_after:
                        raise Stop(f"train.stop_after_iters={stop_after} reached")
                    sig.check("received")
                batch_bar.close()
                # ---- end of the epoch's training: evaluate
                train_seconds = time.perf_counter() - t_epoch
                ev = _evaluate_all(task, model, data.evals, device, sig, bars)
                train_metric = ev.get("train", {}).get("value")
                if "train" not in ev:
                    train_metric = task.reduce(prog.sums)
                test = ev["test"]
                erec = {
                    "kind": "epoch", "epoch": epoch,
                    f"train_{task.metric}": train_metric,
                    f"test_{task.metric}": test["value"],
                    "nfe_forward_mean": prog.nfe_f / prog.iters if has_ode and prog.iters
                    else None,
                    "nfe_backward_mean": prog.nfe_b / prog.iters if has_ode and prog.iters
                    else None,
                    "test_nfe_forward_mean": test["nfe_forward_mean"],
                    "activation_mib": prog.activation[0],
                    "activation_block_mib": prog.activation[1],
                    "rss_peak_mib": measure.rss_peak_mib(),
                    "cuda_peak_mib": measure.cuda_peak_mib(device),
                    "loss": prog.loss_sum / prog.iters if prog.iters else None,
                    "lr": optimizer.param_groups[0]["lr"],
                    "sec_per_iter": measure.median(prog.times),
                    "sec_per_test_batch": measure.median(test["times"]),
                    "train_seconds": train_seconds,
                    "seconds": time.perf_counter() - t_epoch,
                }
                erec = {k: _finite(v) for k, v in erec.items()}
                _write_history(history, erec)
                _tb_epoch(writer, erec, prog.step)
                last = erec
                prog.epoch += 1
                prog.batch = 0
                prog.new_epoch()
                prog.wall += time.perf_counter() - t_start
                t_start = time.perf_counter()
                history.flush()
                prog.history_bytes = hist_path.stat().st_size
                _save_checkpoint(ckpt_path, cfg, model, optimizer, scheduler, prog)
                _fill_from_epoch(metrics, last, task)
                metrics["epochs"] = prog.epoch
                metrics["wall_seconds"] = prog.wall
                write_json_atomic(out / METRICS, metrics)
                epoch_bar.update(1)
                _log_epoch(erec, task, o.epochs)
            epoch_bar.close()
            status = "finished"
    except Stop as e:
        status, reason, signum = "interrupted", e.reason, e.signum
        prog.epoch_seconds = time.perf_counter() - t_epoch if prog.batch else 0.0
        prog.wall += time.perf_counter() - t_start
        t_start = time.perf_counter()
        history.flush()
        prog.history_bytes = hist_path.stat().st_size
        _save_checkpoint(ckpt_path, cfg, model, optimizer, scheduler, prog)
        where = f"epoch {prog.epoch}, iteration {prog.batch}/{ipe}"
        msg = (f"interrupted ({e.reason}) at {where}: checkpoint saved to {ckpt_path}; "
               f"continue with resume=true hydra.run.dir={out}")
        log.warning(msg)
    except KeyboardInterrupt:
        status, reason, signum = "interrupted", "SIGINT twice: stopped at once", signal.SIGINT
        msg = (f"interrupted at once: the last checkpoint ({ckpt_path}, epoch boundary) "
               "is unchanged")
        log.warning(msg)
    except (Failure, SolverError) as e:
        status = "failed"
        reason = f"{type(e).__name__}: {e}" if isinstance(e, SolverError) else str(e)
        reason = " ".join(reason.split()) + f" (epoch {prog.epoch}, iteration {prog.batch})"
        log.error("run failed: %s", reason)
    except Exception as e:  # a bug or a resource error: record it, let a sweep go on
        status, reason = "failed", " ".join(f"{type(e).__name__}: {e}".split())
        reason += f" (epoch {prog.epoch}, iteration {prog.batch})"
        log.exception("run failed: %s", reason)
    finally:
        history.close()
        metrics.update(status=status, reason=reason, epochs=prog.epoch,
                       wall_seconds=prog.wall + time.perf_counter() - t_start)
        write_json_atomic(out / METRICS, metrics)
        if writer is not None:
            _tb_close(writer, cfg, metrics, task)
    global last_signal
    last_signal = signum  # for main()'s exit code
    return metrics


def _train_step(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any,
                device: torch.device, blocks: list[nn.Module], measure_now: bool) -> dict:
    model.train()
    reset_solver_stats(model)
    rec: dict[str, Any] = {}
    with measure.Timer(device) as timer:
        meter = measure.ActivationMeter(model, blocks) if measure_now else None
        with meter if meter is not None else contextlib.nullcontext():
            loss, sums = task.train_loss(model, batch)
        fwd = solver_stats(model)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise Failure(f"non-finite loss ({loss_value}): lower optim.lr or the tolerance")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bwd = solver_stats(model)
    rec["loss"] = loss_value
    rec["sums"] = {k: float(v) for k, v in sums.items()}
    rec["nfe_forward"] = fwd["nfe_forward"] if fwd else None
    rec["nfe_backward"] = bwd["nfe_backward"] if bwd else None
    rec["steps_accepted"] = fwd["steps_accepted"] if fwd else None
    rec["steps_rejected"] = fwd["steps_rejected"] if fwd else None
    rec["seconds"] = timer.seconds
    if meter is not None:
        rec["activation_mib"] = meter.total_mib
        rec["activation_block_mib"] = meter.block_mib
    return rec


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, loader: Any, device: torch.device,
             check: Callable[[], None] | None = None, bar: Any = None) -> dict[str, Any]:
    """The task's metric over every batch of ``loader``; also test-time NFE and timings."""
    model.eval()
    reset_solver_stats(model)
    sums: dict[str, float] = {}
    times: list[float] = []
    for batch in loader:
        with measure.Timer(device) as t:
            s = task.eval_batch(model, batch)
            s = {k: float(v) for k, v in s.items()}
        times.append(t.seconds)
        for k, v in s.items():
            sums[k] = sums.get(k, 0) + v
        if bar is not None:
            bar.update(1)
        if check is not None:
            check()
    st = solver_stats(model)
    reset_solver_stats(model)  # evaluation never leaks into training NFE counts
    return {"value": task.reduce(sums), "times": times,
            "nfe_forward_mean": st["nfe_forward"] / len(times) if st and times else None}


def _evaluate_all(task, model, evals, device, sig, bars) -> dict[str, Any]:
    out = {}
    for name, loader in evals.items():
        bar = bars.eval(len(loader), name)
        out[name] = evaluate(task, model, loader, device,
                             check=lambda n=name: sig.check(f"received during {n} evaluation"),
                             bar=bar)
        bar.close()
    return out


# ============================================================================ records
def _base_metrics(cfg, task, model, data, device, has_ode) -> dict[str, Any]:
    s = cfg.solver
    ode = has_ode
    m: dict[str, Any] = {
        "model": cfg.model.name, "experiment": cfg.experiment_name, "seed": cfg.seed,
        "status": "running", "reason": None,
        "solver_method": s.method if ode else None,
        "solver_rtol": s.rtol if ode else None,
        "solver_atol": s.atol if ode else None,
        "solver_adjoint": bool(s.adjoint) if ode else None,
        "solver_adjoint_norm": s.adjoint_norm if ode else None,
        "solver_step_size": s.step_size if ode and s.step_size is not None
        and s.method in _fixed_methods() else None,
        "solver_last_step": s.last_step if ode and s.method not in _fixed_methods() else None,
        "test_error": None, "train_error": None,
        "params": count_parameters(model),
        "nfe_forward_mean": None, "nfe_backward_mean": None,
        "activation_mib": None, "activation_block_mib": None,
        "cuda_peak_mib": None, "rss_peak_mib": None,
        "sec_per_iter": None, "sec_per_test_batch": None,
        "epochs": 0, "epochs_planned": cfg.optim.epochs,
        "batch_size": cfg.data.batch_size, "train_size": data.train_size,
        "device": str(device), "torch_version": str(torch.__version__),
        "git_commit": git_commit(), "wall_seconds": 0.0,
        # beyond Contract 2
        "task": cfg.task,
        "test_size": _test_size(task, data),
        "test_nfe_forward_mean": None,
        "lr": peak_lr(cfg), "schedule": cfg.optim.schedule,
        "threads": torch.get_num_threads(), "host": platform.node(),
        "max_iters_per_epoch": cfg.train.max_iters_per_epoch,
    }
    if task.metric != "error":
        m[f"test_{task.metric}"] = None
        m[f"train_{task.metric}"] = None
    return m


def _test_size(task: Task, data: TaskData) -> int | None:
    """Images (points) the test metric covers; None when it is the task's full test set."""
    n = getattr(data.evals["test"], "n", None)
    return None if n is not None and n == task.full_test_size else n


def _fixed_methods() -> tuple[str, ...]:
    from odenet.solvers import FIXED_METHODS

    return tuple(FIXED_METHODS)


def _fill_from_epoch(metrics: dict, e: dict, task: Task) -> None:
    if not e:
        return
    for k in (f"test_{task.metric}", f"train_{task.metric}", "nfe_forward_mean",
              "nfe_backward_mean", "activation_mib", "activation_block_mib", "rss_peak_mib",
              "cuda_peak_mib", "sec_per_iter", "sec_per_test_batch", "test_nfe_forward_mean"):
        if k in e:
            metrics[k] = e[k]


def _write_history(f, rec: dict) -> None:
    f.write(json.dumps({k: _finite(v) for k, v in rec.items()}) + "\n")
    f.flush()


def _last_epoch_record(path: Path) -> dict | None:
    last = None
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get("kind") == "epoch":
                    last = r
    return last


def _log_epoch(e: dict, task: Task, epochs: int) -> None:
    def pct(v):
        return "-" if v is None else (f"{100 * v:.2f}%" if task.metric == "error" else f"{v:.4f}")

    parts = [f"epoch {e['epoch'] + 1}/{epochs}",
             f"train_{task.metric} {pct(e.get(f'train_{task.metric}'))}",
             f"test_{task.metric} {pct(e.get(f'test_{task.metric}'))}"]
    if e.get("nfe_forward_mean") is not None:
        parts.append(f"NFE-F {e['nfe_forward_mean']:.1f} NFE-B {e['nfe_backward_mean']:.1f}")
    if e.get("sec_per_iter") is not None:
        parts.append(f"{e['sec_per_iter']:.3f} s/iter")
    parts.append(f"{e['seconds']:.0f} s")
    log.info(", ".join(parts))


def _postfix(rec: dict) -> dict:
    p = {"loss": f"{rec['loss']:.3f}"}
    if rec["nfe_forward"] is not None:
        p["nfe"] = f"{rec['nfe_forward']}/{rec['nfe_backward']}"
    return p


# ============================================================================ checkpoints
def _save_checkpoint(path: Path, cfg, model, optimizer, scheduler, prog: Progress) -> None:
    save_atomic({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": prog.epoch,
        "batch": prog.batch,
        "progress": prog.state(),
        "rng": rng_state(),
        "config": as_dict(cfg),
        "torch_version": str(torch.__version__),
    }, path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint as plain data; refuses anything that could run code."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ; keys only one side has (a schema that gained a
    setting since the checkpoint was written) are not differences."""
    keys = sorted(set(a) & set(b))
    out = []
    for k in keys:
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


def _load_checkpoint(path: Path, cfg, model, optimizer, scheduler, device) -> Progress:
    try:
        ck = load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - corrupt, foreign or unsafe file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"resume=true: cannot load {path}: {first}") from None
    diff = [k for k in _config_diff(ck["config"], as_dict(cfg))
            if not any(k == a or k.startswith(a + ".") for a in RESUMABLE_CHANGES)]
    if diff:
        raise ConfigError(f"resume=true: {path} was written with other settings for "
                          f"{', '.join(diff)} (only {', '.join(RESUMABLE_CHANGES)} may change)")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    prog = Progress(**ck["progress"])
    log.info("resuming from %s at epoch %d, iteration %d", path, prog.epoch, prog.batch)
    return prog


# ============================================================================ display
class _Bars:
    """tqdm bars (epoch, batch, evaluation); off unless on a terminal (progress=auto)."""

    def __init__(self, enabled: bool | None):
        self.disable = None if enabled is None else not enabled  # None: tqdm checks isatty

    def __enter__(self) -> _Bars:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._redirect.__exit__(*exc)

    def _bar(self, **kw: Any):
        from tqdm.auto import tqdm

        return tqdm(disable=self.disable, dynamic_ncols=True, **kw)

    def epochs(self, total: int, initial: int):
        return self._bar(total=total, initial=initial, desc="epochs", unit="epoch")

    def batches(self, total: int, initial: int, epoch: int):
        return self._bar(total=total, initial=initial, desc=f"epoch {epoch + 1}", unit="it",
                         leave=False)

    def eval(self, total: int, name: str):
        return self._bar(total=total, desc=f"eval {name}", unit="batch", leave=False)


def _bars(cfg) -> _Bars:
    return _Bars({"auto": None, "always": True, "never": False}[cfg.train.progress])


def _tensorboard(out: Path, cfg, purge_step: int | None):
    if not cfg.train.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tb"), purge_step=purge_step)


def _tb_iter(w, r: dict) -> None:
    if w is None:
        return
    for k in ("loss", "nfe_forward", "nfe_backward", "steps_accepted", "steps_rejected",
              "seconds", "lr"):
        if r.get(k) is not None:
            w.add_scalar(f"iter/{k}", r[k], r["step"])


def _tb_epoch(w, e: dict, step: int) -> None:
    if w is None:
        return
    for k, v in e.items():
        if k not in ("kind", "epoch") and isinstance(v, (int, float)) and v is not None:
            w.add_scalar(f"epoch/{k}", v, step)
    w.flush()


def _tb_close(w, cfg, metrics: dict, task: Task) -> None:
    try:
        if metrics["status"] == "finished":
            hp = {k: v for k, v in metrics.items()
                  if k in ("model", "seed", "solver_method", "solver_rtol", "solver_adjoint",
                           "epochs_planned", "batch_size", "lr", "schedule")}
            hp = {k: ("null" if v is None else v) for k, v in hp.items()}
            res = {f"hparam/{k}": metrics[k] for k in (f"test_{task.metric}", "sec_per_iter",
                                                       "nfe_forward_mean")
                   if isinstance(metrics.get(k), (int, float))}
            w.add_hparams(hp, res, run_name=".")
    finally:
        w.close()


# ============================================================================ odenet train
_STATUSES: list[tuple[str, int | None]] = []  # (status, signal) of in-process jobs
last_signal: int | None = None  # the signal that stopped the last run() in this process


def _hydra_task(dcfg: Any) -> float | None:
    """The function Hydra runs per job (also inside joblib/submitit workers)."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = run(dcfg, out_dir)
    except (ConfigError, DataError) as e:
        print(f"odenet train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    _STATUSES.append((metrics["status"], last_signal))
    if last_signal is not None:  # Ctrl-C / SIGTERM also ends a sweep
        raise SystemExit(128 + int(last_signal))
    value = metrics.get("test_error")
    return float(value) if isinstance(value, (int, float)) else None


def preflight(argv: list[str]) -> str | None:
    """Compose and validate every job of the command line; one line per problem, or None.

    Runs before Hydra takes over, so that a bad config or missing data ends with one
    clear line (and exit code 2) instead of Hydra's multi-line report.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from odenet.config import compose, error_line
    from odenet.data import RAW_FILES, raw_dir

    args = get_args_parser().parse_args(argv)
    if (args.help or args.hydra_help or args.info or args.shell_completion
            or args.config_path or args.config_dir or args.experimental_rerun):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
        jobs = ([j for batch in BasicSweeper.split_arguments(parsed, None) for j in batch]
                if args.multirun else [args.overrides])
        roots = set()
        for job in jobs:
            cfg = compose(job, config_name=args.config_name or "config")
            if cfg.data.name == "mnist" and cfg.task == "classify":
                roots.add(cfg.data.root)
    except Exception as e:  # noqa: BLE001 - every composition error becomes one line
        return error_line(e)
    if args.cfg:  # --cfg job|hydra|all only prints
        return None
    for root in sorted(roots):
        if not all((raw_dir(root) / n).is_file() for n in RAW_FILES):
            return (f"MNIST not found in {raw_dir(root)}: run `odenet data` (or `make data`) "
                    "to prepare it, or set data.root")
    return None


def main(argv: list[str] | None = None) -> int:
    """`odenet train [overrides] [-m]`: the Hydra app (config: configs/config.yaml)."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    err = preflight(argv)
    if err:
        print(f"odenet train: error: {err}", file=sys.stderr)
        return 2
    app = hydra.main(version_base="1.3", config_path="pkg://odenet.configs",
                     config_name="config")(_hydra_task)
    _STATUSES.clear()
    saved = sys.argv
    sys.argv = [saved[0] if saved else "odenet", *argv]
    try:
        app()
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    if any(s == "failed" for s, _ in _STATUSES):
        return 1
    if any(s == "interrupted" for s, _ in _STATUSES):
        return 3
    return 0
