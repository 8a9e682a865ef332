"""The one trainer all models share: ``run(cfg, out_dir) -> metrics``.

Read top to bottom: ``run`` sets up (config, device, task, data, model, optimizer,
resume), then loops over epochs and iterations (``train_step``), evaluates at each
epoch's end (``evaluate_split``), writes the epoch's record and a checkpoint, and ends
with a status. What it writes (DEVELOPERS.md, Contract 2): metrics.json, history.jsonl
and TensorBoard events through ``RunLog`` (odenet/runlog.py, records of
odenet/record.py), checkpoint.pt through odenet/checkpoint.py.

The task (what is learned: data, loss, metric) is the model's trait (odenet/tasks.py);
the loop, measurements, checkpoints, resume and failure handling are shared. No Hydra
here: the command layer (odenet/app.py) composes the config and calls ``run``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from odenet import checkpoint, measure, optim, record, rundir
from odenet.config import ConfigError, as_dict, to_config, unused_settings
from odenet.models import build_model, measured_blocks, reset_solver_stats, solver_stats
from odenet.registry import spec
from odenet.runlog import Bars, Heartbeat, RunLog, last_epoch, log_epoch
from odenet.runtime import (
    autocast,
    git_commit,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from odenet.solvers import FIXED_METHODS, SolverError
from odenet.tasks import TASKS, Task

log = logging.getLogger("odenet.train")

# config keys a resumed run may change: what does not change the weights' trajectory
# (more epochs extend it, unless the schedule is fitted to them: optim.FITTED_TO_LENGTH;
# threads and device change rounding only). Everything else, train.max_iters_per_epoch
# included, must match the checkpoint.
RESUMABLE_CHANGES = ("optim.epochs", "train.log_every", "train.train_eval_size",
                     "train.stop_after_iters", "train.measure_memory", "train.tensorboard",
                     "train.progress", "threads", "device", "resume", "overwrite")


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
    # activations of the epoch's measured iteration: whole model, blocks, its NFE-F
    activation: list[float | None] = field(default_factory=lambda: [None, None, None])
    epoch_seconds: float = 0.0
    history_bytes: int = 0

    def new_epoch(self) -> None:
        self.loss_sum, self.iters, self.nfe_f, self.nfe_b = 0.0, 0, 0, 0
        self.sums, self.times, self.activation = {}, [], [None, None, None]
        self.epoch_seconds = 0.0

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Stop(Exception):
    """Leave the loop at a clean boundary: checkpoint, status "interrupted"."""

    def __init__(self, reason: str, signum: int | None = None):
        super().__init__(reason)
        self.reason, self.signum = reason, signum


class Failure(Exception):
    """The run cannot go on (NaN/Inf loss): status "failed"."""


last_signal: int | None = None  # the signal that stopped the last run() in this process


# ============================================================================ the run
def run(cfg: Any, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Train ``cfg`` (a validated Config, DictConfig or dict) writing into ``out_dir``.

    Returns the metrics record (also in metrics.json). Never raises for a failed or
    interrupted run: ``status`` says what happened and ``reason`` why. Raises
    ConfigError/DataError before anything is written if the run cannot start.
    """
    cfg = to_config(cfg)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"run directory {out}: {e.strerror or e}") from None
    rundir.claim(out)  # one owner: a second training into out is refused here
    try:
        return _run(cfg, out)
    finally:
        rundir.release(out)


def _run(cfg: Any, out: Path) -> dict[str, Any]:
    global last_signal
    rundir.remove_orphans(out)
    ck = None  # the checkpoint to continue from
    if cfg.resume:
        if (out / checkpoint.CHECKPOINT_FILE).is_file():
            ck = check_resume(cfg, out)
        done = finished(out, cfg)
        if done is not None:
            log.info("resume=true: the run in %s has finished its %d epochs; nothing to do",
                     out, done["epochs"])
            return done
    elif rundir.holds_run(out):
        if not cfg.overwrite:
            raise ConfigError(f"{out} already holds a run: resume=true continues it, "
                              "overwrite=true deletes it and starts afresh")
        log.warning("overwrite=true: deleted %s of the run in %s",
                    ", ".join(rundir.clear(out)), out)
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    # ---- what is learned, from what, by which network
    model_spec = spec(cfg.model.name)
    task: Task = TASKS[model_spec.task]()
    loaders = task.loaders(cfg, device)
    train_data, test_data = loaders.train, loaders.test
    evals = {"test": test_data, "train": loaders.train_eval, "val": loaders.val}
    evals = {name: loader for name, loader in evals.items() if loader is not None}
    model = build_model(cfg.model, cfg.solver).to(device)
    ipe = len(train_data)  # iterations per epoch
    if cfg.train.max_iters_per_epoch is not None:
        ipe = min(ipe, cfg.train.max_iters_per_epoch)
    optimizer, scheduler = optim.build(cfg, model.parameters(), ipe)

    # ---- a new run, or the one in out_dir continued
    prog = Progress()
    ckpt_path = out / checkpoint.CHECKPOINT_FILE
    resumed = ck is not None
    if resumed:
        prog = _resume(ck, model, optimizer, scheduler)
    elif cfg.resume:
        log.warning("resume=true but there is no %s in %s: starting from scratch",
                    checkpoint.CHECKPOINT_FILE, out)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measure.reset_rss_peak()  # this run's peak, not an earlier job's in the same process
    runlog = RunLog(out, cfg.train.tensorboard,
                    (prog.history_bytes, prog.step) if resumed else None)
    metrics = _new_metrics(cfg, task, model, loaders, device)
    metrics.epochs = prog.epoch
    if resumed:
        record.copy_epoch(metrics, last_epoch(out) or {})
    blocks = measured_blocks(model)
    has_ode = model_spec.ode_block
    log.info("%s: %s, %d parameters, %s, %d x %d iterations -> %s", "resuming" if resumed
             else "training", cfg.model.name, metrics.params, device, cfg.optim.epochs, ipe, out)
    log.info("threads %d, OMP_WAIT_POLICY=%s, GOMP_SPINCOUNT=%s (odenet/openmp.py)",
             torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "-"),
             os.environ.get("GOMP_SPINCOUNT", "-"))
    _note_settings(cfg, loaders)
    runlog.metrics(metrics)

    saved = {"epoch": prog.epoch}  # what checkpoint.pt holds: metrics.json never claims more

    def save() -> None:
        prog.history_bytes = runlog.history_bytes
        checkpoint.save(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": prog.epoch, "batch": prog.batch,
            "progress": prog.state(), "rng": rng_state(), "config": as_dict(cfg),
            "torch_version": str(torch.__version__)})
        saved["epoch"] = prog.epoch

    # ---- the loop
    status, reason, signum = "running", None, None
    session_iters = 0
    t_epoch = time.perf_counter()
    try:
        with _Signals() as sig, Bars(cfg.train.progress) as bars:
            heartbeat = Heartbeat(enabled=not bars.shown)
            epoch_bar = bars.epochs(cfg.optim.epochs, prog.epoch)
            while prog.epoch < cfg.optim.epochs:
                epoch = prog.epoch
                train_data.set_epoch(epoch)
                t_epoch = time.perf_counter() - prog.epoch_seconds
                batch_bar = bars.batches(ipe, prog.batch, epoch)
                measure_now = cfg.train.measure_memory  # on each epoch's first iteration
                while prog.batch < ipe:
                    i = prog.batch
                    lr = optimizer.param_groups[0]["lr"]
                    step = train_step(task, model, optimizer, train_data.batch(i), device,
                                      blocks if measure_now else None, cfg.precision)
                    scheduler.step()
                    prog.batch += 1
                    prog.step += 1
                    prog.iters += 1
                    prog.loss_sum += step.loss
                    prog.nfe_f += step.nfe_forward or 0
                    prog.nfe_b += step.nfe_backward or 0
                    for k, v in step.sums.items():
                        prog.sums[k] = prog.sums.get(k, 0) + v
                    if measure_now:  # its time includes the census: not a timing sample
                        prog.activation = [step.activation_mib, step.activation_block_mib,
                                           step.nfe_forward]
                        measure_now = False
                    else:
                        prog.times.append(step.seconds)
                    if prog.step % cfg.train.log_every == 0 or prog.batch == ipe:
                        runlog.iteration(record.IterRecord(
                            epoch=epoch, iter=i, step=prog.step, loss=step.loss,
                            nfe_forward=step.nfe_forward, nfe_backward=step.nfe_backward,
                            steps_accepted=step.steps_accepted,
                            steps_rejected=step.steps_rejected, seconds=step.seconds, lr=lr))
                    batch_bar.update(1)
                    batch_bar.set_postfix(step.postfix(), refresh=False)
                    heartbeat.tick(epoch, cfg.optim.epochs, prog.batch, ipe, step.loss,
                                   (step.nfe_forward, step.nfe_backward), step.seconds)
                    session_iters += 1
                    stop_after = cfg.train.stop_after_iters
                    if stop_after is not None and session_iters >= stop_after:
                        raise Stop(f"train.stop_after_iters={stop_after} reached")
                    sig.check("received")
                batch_bar.close()

                # ---- end of the epoch: evaluate, record, checkpoint
                train_seconds = time.perf_counter() - t_epoch
                ev = {}
                for name, loader in evals.items():
                    bar = bars.eval(len(loader), name)
                    ev[name] = evaluate_split(
                        task, model, loader, device, bar=bar, precision=cfg.precision,
                        check=lambda n=name: sig.check(f"received during {n} evaluation"))
                    bar.close()
                test = ev["test"]
                train_metric = ev["train"]["value"] if "train" in ev else task.reduce(prog.sums)
                erec = record.EpochRecord(
                    epoch=epoch,
                    nfe_forward_mean=prog.nfe_f / prog.iters if has_ode and prog.iters else None,
                    nfe_backward_mean=prog.nfe_b / prog.iters if has_ode and prog.iters
                    else None,
                    test_nfe_forward_mean=test["nfe_forward_mean"],
                    activation_mib=prog.activation[0], activation_block_mib=prog.activation[1],
                    activation_nfe_forward=prog.activation[2],
                    rss_peak_mib=measure.rss_peak_mib(),
                    cuda_peak_mib=measure.cuda_peak_mib(device),
                    loss=prog.loss_sum / prog.iters if prog.iters else None,
                    lr=optimizer.param_groups[0]["lr"],
                    sec_per_iter=measure.median(prog.times),
                    sec_per_test_batch=measure.median(test["times"]),
                    train_seconds=train_seconds, seconds=time.perf_counter() - t_epoch)
                setattr(erec, f"train_{task.metric}", train_metric)
                setattr(erec, f"test_{task.metric}", test["value"])
                if "val" in ev:
                    setattr(erec, f"val_{task.metric}", ev["val"]["value"])
                runlog.epoch(erec, metrics.task, prog.step)
                prog.epoch += 1
                prog.batch = 0
                prog.new_epoch()
                prog.wall += time.perf_counter() - t_start
                t_start = time.perf_counter()
                save()
                record.copy_epoch(metrics, record.to_json(erec))
                metrics.epochs, metrics.wall_seconds = prog.epoch, prog.wall
                runlog.metrics(metrics)
                epoch_bar.update(1)
                log_epoch(record.to_json(erec), task.metric, cfg.optim.epochs)
            epoch_bar.close()
            status = "finished"
    except Stop as e:
        status, reason, signum = "interrupted", e.reason, e.signum
        prog.epoch_seconds = time.perf_counter() - t_epoch if prog.batch else 0.0
        prog.wall += time.perf_counter() - t_start
        t_start = time.perf_counter()
        save()
        log.warning("interrupted (%s) at epoch %d, iteration %d/%d: checkpoint saved to %s; "
                    "continue with: %s", e.reason, prog.epoch, prog.batch, ipe, ckpt_path,
                    rundir.resume_command(out))
    except KeyboardInterrupt:
        status, reason, signum = "interrupted", "SIGINT twice: stopped at once", signal.SIGINT
        log.warning("interrupted at once: the last checkpoint (%s, epoch boundary) is "
                    "unchanged", ckpt_path)
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
        metrics.status, metrics.reason, metrics.epochs = status, reason, saved["epoch"]
        metrics.wall_seconds = prog.wall + time.perf_counter() - t_start
        try:
            runlog.metrics(metrics)
        except OSError as e:  # e.g. the disk filled up: say so, keep the last metrics.json
            log.error("cannot write %s: %s", out / record.METRICS, e.strerror or e)
        runlog.close(metrics, task.metric)
    last_signal = signum  # for the command's exit code
    return record.to_json(metrics)


# ============================================================================ one iteration
@dataclass
class Step:
    """What one training iteration measured."""

    loss: float
    sums: dict[str, float]
    seconds: float
    nfe_forward: int | None = None
    nfe_backward: int | None = None
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    activation_mib: float | None = None
    activation_block_mib: float | None = None

    def postfix(self) -> dict[str, str]:
        p = {"loss": f"{self.loss:.3f}"}
        if self.nfe_forward is not None:
            p["nfe"] = f"{self.nfe_forward}/{self.nfe_backward}"
        return p


def train_step(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any,
               device: torch.device, measure_blocks: list[nn.Module] | None = None,
               precision: str = "fp32") -> Step:
    """One optimizer step; with ``measure_blocks`` also count the activations saved for
    backward (whole model and those blocks). ``precision``: the forward's compute dtype
    (autocast computes the loss in fp32; backward and the step run outside autocast)."""
    model.train()
    reset_solver_stats(model)
    meter = measure.ActivationMeter(model, measure_blocks) if measure_blocks is not None \
        else None
    with measure.Timer(device) as timer:
        with meter if meter is not None else contextlib.nullcontext():
            with autocast(precision, device):
                loss, sums = task.train_loss(model, batch)
        fwd = solver_stats(model)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise Failure(f"non-finite loss ({loss_value}): lower optim.lr or the tolerance")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bwd = solver_stats(model)
    return Step(
        loss=loss_value, sums={k: float(v) for k, v in sums.items()}, seconds=timer.seconds,
        nfe_forward=fwd["nfe_forward"] if fwd else None,
        nfe_backward=bwd["nfe_backward"] if bwd else None,
        steps_accepted=fwd["steps_accepted"] if fwd else None,
        steps_rejected=fwd["steps_rejected"] if fwd else None,
        activation_mib=meter.total_mib if meter else None,
        activation_block_mib=meter.block_mib if meter else None)


@torch.no_grad()
def evaluate_split(task: Task, model: nn.Module, loader: Any, device: torch.device,
                   check: Any = None, bar: Any = None,
                   precision: str = "fp32") -> dict[str, Any]:
    """The task's metric over every batch of ``loader``; also test-time NFE and timings."""
    model.eval()
    reset_solver_stats(model)
    sums: dict[str, float] = {}
    times: list[float] = []
    for batch in loader:
        with measure.Timer(device) as t, autocast(precision, device):
            s = {k: float(v) for k, v in task.eval_batch(model, batch).items()}
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


# ============================================================================ setup
def _new_metrics(cfg: Any, task: Task, model: nn.Module, loaders: Any,
                 device: torch.device) -> record.Metrics:
    """The record of a run that has not trained yet: its settings and environment."""
    model_spec, s = spec(cfg.model.name), cfg.solver
    ode, fixed = model_spec.ode_block, cfg.solver.method in FIXED_METHODS
    return record.Metrics(
        model=cfg.model.name, experiment=cfg.experiment_name, seed=cfg.seed,
        task=model_spec.task,
        solver_method=s.method if ode else None,
        solver_rtol=s.rtol if ode else None, solver_atol=s.atol if ode else None,
        solver_gradient=s.gradient if ode else None,
        solver_adjoint=bool(s.adjoint) if ode else None,
        solver_adjoint_norm=s.adjoint_norm if ode else None,
        solver_step_size=s.step_size if ode and fixed else None,
        solver_last_step=s.last_step if ode and not fixed else None,
        params=measure.count_parameters(model),
        residual_blocks=(cfg.model[model_spec.residual_blocks] if model_spec.residual_blocks
                         else None),
        epochs_planned=cfg.optim.epochs, batch_size=cfg.data.batch_size,
        train_size=loaders.train.n,
        # None when it is the task's full test set (the table groups by it)
        test_size=None if loaders.test.n == task.full_test_size else loaders.test.n,
        val_size=loaders.val.n if loaders.val is not None else None,
        max_iters_per_epoch=cfg.train.max_iters_per_epoch, lr=optim.peak_lr(cfg),
        schedule=cfg.optim.schedule, device=str(device), precision=cfg.precision,
        threads=torch.get_num_threads(),
        torch_version=str(torch.__version__), git_commit=git_commit(), host=platform.node())


def _note_settings(cfg: Any, loaders: Any) -> None:
    """Say which settings the run does not use as given: solver settings of a model without
    an ODE block (a sweep may mix models; metrics.json records no solver for it), and more
    training or test images than the data hold."""
    unused = unused_settings(cfg)
    if unused:
        log.warning("model=%s has no ODE block: %s not applied (metrics.json records no "
                    "solver)", cfg.model.name, ", ".join(unused))
    for split, loader in ("train", loaders.train), ("test", loaders.test):
        asked = cfg.data[f"{split}_size"]
        if asked is not None and asked > loader.n:
            log.warning("data.%s_size=%d but the %s split holds %d images: using %d", split,
                        asked, split, loader.n, loader.n)


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ; keys only one side has (a schema that gained a
    setting since the checkpoint was written) are not differences."""
    out = []
    for k in sorted(set(a) & set(b)):
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


def finished(out: Path, cfg: Any) -> dict | None:
    """The metrics of the run in ``out`` if it has finished ``cfg``'s epochs, else None."""
    try:
        m = record.read_metrics(out / record.METRICS)
    except record.RecordError:
        return None
    return m if m["status"] == "finished" and m["epochs"] >= cfg.optim.epochs else None


def check_resume(cfg: Any, out: Path) -> dict[str, Any]:
    """The checkpoint in ``out`` if ``cfg`` may continue it: a training checkpoint, the
    same settings but RESUMABLE_CHANGES, its history intact. ConfigError otherwise."""
    path = out / checkpoint.CHECKPOINT_FILE
    try:
        ck = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"resume=true: {e}") from None
    missing = [k for k in ("optimizer", "scheduler", "rng", "progress") if k not in ck]
    if missing:
        raise ConfigError(f"resume=true: {path} is not a training checkpoint "
                          f"(no {', '.join(missing)})")
    diff = [k for k in _config_diff(ck["config"], as_dict(cfg))
            if not any(k == a or k.startswith(a + ".") for a in RESUMABLE_CHANGES)]
    if diff:
        raise ConfigError(f"resume=true: {path} was written with other settings for "
                          f"{', '.join(diff)} (only {', '.join(RESUMABLE_CHANGES)} may change)")
    _check_epochs_change(ck["config"]["optim"]["epochs"], cfg.optim)
    hist = out / record.HISTORY
    need = ck["progress"].get("history_bytes", 0)
    have = hist.stat().st_size if hist.exists() else None
    if have is None or have < need:
        what = "is missing" if have is None else f"has {have} of the {need} bytes it had"
        raise ConfigError(f"resume=true: {hist} {what} when {path} was saved; the run's "
                          "history cannot continue (overwrite=true starts afresh)")
    return ck


def _check_epochs_change(was: int, o: Any) -> None:
    """More (or fewer) epochs extend a run only where the schedule does not depend on them:
    a cosine or one-cycle schedule is fitted to optim.epochs, so changing them would
    splice two schedules into one run."""
    if o.epochs != was and o.schedule in optim.FITTED_TO_LENGTH:
        raise ConfigError(
            f"resume=true: optim.epochs={o.epochs} but the run has optim.epochs={was}, and "
            f"its {o.schedule} schedule is fitted to them (every step's learning rate would "
            f"change); only multistep and constant runs can be extended: train {o.epochs} "
            "epochs afresh (overwrite=true, or another hydra.run.dir)")


def _resume(ck: dict[str, Any], model, optimizer, scheduler) -> Progress:
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    prog = Progress(**ck["progress"])
    prog.activation = [*prog.activation, None][:3]  # checkpoints before activation NFE had 2
    log.info("resuming at epoch %d, iteration %d", prog.epoch, prog.batch)
    return prog


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
        self.signum = rundir.pending_signal()  # one that came during the setup: stop soon
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
        if self.signum is None and rundir.parent_gone():  # odenet reproduce was killed
            self.signum = signal.SIGTERM
        if self.signum is not None:
            raise Stop(f"{signal.Signals(self.signum).name} {where}", self.signum)
