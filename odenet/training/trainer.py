"""The one trainer all models share: ``run(cfg, out_dir) -> metrics``.

Read top to bottom: ``_run`` takes over the run directory (``_take_over``: resume or
overwrite, odenet/training/resume.py), sets up (``_set_up``: device, task, data, model,
optimizer, the checkpoint's states), then loops over epochs (``_train_epochs``) and
iterations (``train_step``, odenet/training/iteration.py), evaluates at each epoch's end
(``_epoch_record``), writes the epoch's record and a checkpoint, and ends with a status
(``ending``, odenet/training/stopping.py; ``_close``). The records are built from their
fields' declarations (odenet/run/record.py): an iteration's measures
(``IterationMeasures``) go by name into its IterRecord and, folded as each EpochRecord
field declares, into the epoch's (``Progress.reduced``, odenet/training/run_state.py);
the epochs fold into metrics.json as each Metrics field declares. What it writes
(DEVELOPERS.md, Contract 2): metrics.json, history.jsonl and TensorBoard events through
``RunLog`` (odenet/training/progress.py), checkpoint.pt through ``CheckpointSaver``
(odenet/training/run_state.py, odenet/training/checkpoint_file.py).

The task (what is learned: data, loss, metric) is the model's trait (odenet/training/tasks.py);
the loop, measurements, checkpoints, resume and failure handling are shared. No Hydra
here: the command layer (odenet/cli/app.py) validates the config once and calls ``run``.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from odenet.config.model_registry import ADJOINT, spec
from odenet.config.schema import ConfigError, to_config, unused_settings
from odenet.models import build, measured_blocks, reset_solver_stats, solver_stats
from odenet.run import directory as rundir
from odenet.run import record
from odenet.solvers import FIXED_METHODS, release_buffers
from odenet.training import checkpoint_file as checkpoint
from odenet.training import measure, optim
from odenet.training.iteration import train_step
from odenet.training.openmp import threads_warning
from odenet.training.progress import Bars, Heartbeat, RunLog, epoch_records, log_epoch
from odenet.training.resume import TakeOver, machine_precision, take_over
from odenet.training.run_state import CheckpointSaver, Progress, restore
from odenet.training.runtime import (
    autocast,
    float32_math,
    git_commit,
    has_bf16_units,
    resolve_device,
    seed_everything,
    set_exact_math,
)
from odenet.training.stopping import Stop, StopSignals, ending
from odenet.training.tasks import TASKS, Task

log = logging.getLogger("odenet.train")  # the name train.log lines carry

last_signal: int | None = None  # the signal that stopped the last run() in this process


# ============================================================================ the run
def run(cfg: Any, out_dir: str | os.PathLike,
        decided: TakeOver | None = None) -> dict[str, Any]:
    """Train ``cfg`` writing into ``out_dir``: a Config validated by the command layer
    (``config.to_config``; taken as it is), or a DictConfig or dict (tests; validated here).
    ``decided``: ``resume.take_over(cfg, out_dir)`` where the caller has already made it.

    Returns the metrics record (also in metrics.json). Never raises for a failed or
    interrupted run: ``status`` says what happened and ``reason`` why. Raises
    ConfigError/DataError before anything is written if the run cannot start.
    """
    cfg = to_config(cfg)  # a typed Config is returned as it is
    cfg = machine_precision(cfg)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"run directory {out}: {e.strerror or e}") from None
    rundir.claim(out)  # one owner: a second training into out is refused here
    release_buffers()  # the solver's kept buffers are the run's: none inherited, none left
    try:
        return _run(cfg, out, decided)
    finally:
        release_buffers()
        rundir.release(out)


def _run(cfg: Any, out: Path, decided: TakeOver | None) -> dict[str, Any]:
    global last_signal
    ck, done = _take_over(cfg, out, decided)  # the checkpoint to continue from; a finished run
    if done is not None:
        return done
    prog = Progress.from_state(ck["progress"]) if ck else Progress()  # its clock starts
    t = _set_up(cfg, out, ck, prog)
    status, reason, signum = "running", None, None
    try:
        with StopSignals() as sig, Bars(cfg.train.progress) as bars:
            _train_epochs(t, sig, bars)
            status = "finished"
    except (KeyboardInterrupt, Exception) as e:  # KeyboardInterrupt: a second Ctrl-C
        status, reason, signum = ending(e, prog, t.save, out, t.ipe)
    finally:
        _close(t.runlog, t.metrics, t.task.metric, (status, reason), t.save.epoch, prog)
    last_signal = signum  # for the command's exit code
    return record.to_json(t.metrics)


@dataclass
class _Training:
    """What a session of a run trains with and writes to, built once by ``_set_up``."""

    cfg: Any
    task: Task
    device: torch.device
    loaders: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: nn.Module | None  # the weights' moving average; None without optim.ema_decay
    ipe: int  # iterations per epoch
    prog: Progress
    runlog: RunLog
    metrics: record.Metrics
    peaks: measure.DevicePeak
    save: CheckpointSaver
    blocks: list[nn.Module]  # the blocks whose activations are counted
    session_iters: int = 0  # iterations trained in this session (train.stop_after_iters)


def _set_up(cfg: Any, out: Path, ck: dict | None, prog: Progress) -> _Training:
    """Device, task, data, model, optimizer and records of the run, the checkpoint's
    states (``ck``; None: a new run) continued."""
    device = _runtime(cfg)
    task: Task = TASKS[spec(cfg.model.name).task]()
    loaders = task.loaders(cfg, device)
    model = build(cfg.model, cfg.solver).to(device)
    ipe = min(len(loaders.train), cfg.train.max_iters_per_epoch or len(loaders.train))
    optimizer, scheduler = optim.build(cfg, model.parameters(), ipe, running_batch(cfg, loaders))
    ema = optim.build_ema(cfg, model)  # None without optim.ema_decay
    restore(ck, model, optimizer, scheduler, ema)
    runlog, metrics = _open_records(cfg, out, task, model, loaders, device, prog, ck, ipe)
    peaks = measure.DevicePeak(device)  # this run's, not an earlier run's in the process
    save = CheckpointSaver(out, cfg, model, optimizer, scheduler, prog, runlog, ema)
    return _Training(cfg, task, device, loaders, model, optimizer, scheduler, ema, ipe, prog,
                     runlog, metrics, peaks, save, measured_blocks(model))


def _train_epochs(t: _Training, sig: StopSignals, bars: Bars) -> None:
    """Every epoch left: its iterations, then its end (evaluation, records, checkpoint)."""
    prog, epochs = t.prog, t.cfg.optim.epochs
    heartbeat = Heartbeat(enabled=not bars.shown)
    epoch_bar = bars.epochs(epochs, prog.epoch)
    while prog.epoch < epochs:
        t.loaders.train.set_epoch(prog.epoch)
        prog.start_epoch()
        batch_bar = bars.batches(t.ipe, prog.batch, prog.epoch)
        _train_iterations(t, sig, batch_bar, heartbeat)
        batch_bar.close()
        erec = _end_epoch(t, sig, bars)
        epoch_bar.update(1)
        log_epoch(record.to_json(erec), t.task.metric, epochs)
    epoch_bar.close()


def _train_iterations(t: _Training, sig: StopSignals, batch_bar: Any,
                      heartbeat: Heartbeat) -> None:
    """The epoch's iterations left, each logged as the records declare; ``Stop`` between
    two at train.stop_after_iters or a signal."""
    cfg, prog = t.cfg, t.prog
    census = cfg.train.measure_memory  # the epoch's first iteration of a session
    t.peaks.start()
    while prog.batch < t.ipe:
        step = train_step(t.task, t.model, t.optimizer, t.loaders.train.batch(prog.batch),
                          t.device, t.blocks if census else None, cfg.precision)
        t.scheduler.step()
        if t.ema is not None:
            t.ema.update_parameters(t.model)
        prog.add(step)
        census = False
        if prog.step % cfg.train.log_every == 0 or prog.batch == t.ipe:
            t.runlog.iteration(record.fill(record.IterRecord, vars(step), **prog.at()))
        batch_bar.update(1)
        batch_bar.set_postfix(step.postfix(), refresh=False)
        heartbeat.tick(prog.epoch, cfg.optim.epochs, prog.batch, t.ipe, step.loss,
                       (step.nfe_forward, step.nfe_backward), step.seconds)
        t.session_iters += 1
        if t.session_iters == cfg.train.stop_after_iters:
            raise Stop(f"train.stop_after_iters={t.session_iters} reached")
        sig.check("received")


def _end_epoch(t: _Training, sig: StopSignals, bars: Bars) -> record.EpochRecord:
    """The epoch's end: evaluate, record the epoch, checkpoint, fold it into metrics.json."""
    prog, metrics = t.prog, t.metrics
    erec = _epoch_record(t, bars, sig)
    t.runlog.epoch(erec, metrics.task, prog.step)
    prog.next_epoch()
    t.save()
    record.add_epoch(metrics, record.to_json(erec))
    metrics.epochs, metrics.wall_seconds = prog.epoch, prog.wall
    t.runlog.metrics(metrics)
    return erec


def _take_over(cfg: Any, out: Path, decided: TakeOver | None) -> tuple[dict | None, dict | None]:
    """(the checkpoint to continue, the metrics of a run with nothing left to do) for
    ``out``, by ``resume.take_over`` (``decided``: what the command layer decided before
    Hydra wrote into ``out``), then the directory cleared as that decision says."""
    rundir.remove_orphans(out)
    decided = decided or take_over(cfg, out)
    ck, done = decided.checkpoint, decided.done
    if cfg.resume:
        if done is not None:
            log.info("resume=true: the run in %s has finished its %d epochs; nothing to do",
                     out, done["epochs"])
            return ck, done
        if ck is None:  # what an earlier start left is not this run's (TensorBoard's steps)
            gone = rundir.clear(out)
            log.warning("resume=true but there is no %s in %s: starting from scratch%s",
                        checkpoint.CHECKPOINT_FILE, out,
                        f" (deleted what the earlier start left: {', '.join(gone)})" if gone
                        else "")
    elif rundir.holds_run(out):  # overwrite=true: take_over refused it otherwise
        log.warning("overwrite=true: deleted %s of the run in %s",
                    ", ".join(rundir.clear(out)), out)
    return ck, None


def _runtime(cfg: Any) -> torch.device:
    """Threads, device and seeds of the run; the device's memory peaks start afresh."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
        warning = threads_warning(cfg.threads)
        if warning:
            log.warning(warning)
    device = resolve_device(cfg.device)
    set_exact_math()  # fp32 is IEEE float32, not TF32; a resumed run repeats itself
    if cfg.precision == "bf16" and not has_bf16_units(device):
        log.warning("precision=bf16 on %s, which has no bf16 units: emulated, slower than "
                    "fp32 (precision=auto picks fp32 here)", device)
    seed_everything(cfg.seed)
    return device


def _open_records(cfg: Any, out: Path, task: Task, model: nn.Module, loaders: Any,
                  device: torch.device, prog: Progress, ck: dict | None,
                  ipe: int) -> tuple[RunLog, record.Metrics]:
    """The run's RunLog (history truncated to the checkpoint's) and its first metrics.json
    (a resumed run's: its epochs so far, each folded in as a new one would be)."""
    measure.reset_rss_peak()  # this run's peak, not an earlier job's in the same process
    runlog = RunLog(out, cfg.train.tensorboard, (prog.history_bytes, prog.step) if ck else None)
    metrics = _new_metrics(cfg, task, model, loaders, device)
    metrics.epochs = prog.epoch
    for epoch in (epoch_records(out) if ck else []):
        record.add_epoch(metrics, epoch)
    log.info("%s: %s, %d parameters, %s, %d x %d iterations -> %s",
             "resuming" if ck else "training", cfg.model.name, metrics.params, device,
             cfg.optim.epochs, ipe, out)
    log.info("threads %d, OMP_WAIT_POLICY=%s, GOMP_SPINCOUNT=%s (odenet/training/openmp.py)",
             torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "-"),
             os.environ.get("GOMP_SPINCOUNT", "-"))
    _note_settings(cfg, loaders)
    runlog.metrics(metrics)
    return runlog, metrics


def _epoch_record(t: _Training, bars: Bars, sig: StopSignals) -> record.EpochRecord:
    """The epoch's record: the fields its iterations make (``prog.reduced``), and those
    measured at its end: every split's metric (the train metric from the iterations' sums
    without a train_eval split; the weights' moving average on test and val too, where
    the run keeps one), test NFE and time, memory peaks, the learning rate and the
    epoch's clocks."""
    task, loaders, prog, peaks = t.task, t.loaders, t.prog, t.peaks
    train_seconds = prog.epoch_elapsed()
    peaks.stop("train")  # the epoch's training ends here; its evaluation starts
    model, ema = t.model, t.ema
    splits = {"test": (model, loaders.test), "train": (model, loaders.train_eval),
              "val": (model, loaders.val), "ema_test": (ema, loaders.test),
              "ema_val": (ema, loaders.val)}
    ev = {}
    peaks.start()
    for name, (net, loader) in splits.items():
        if net is not None and loader is not None:
            bar = bars.eval(len(loader), name)
            ev[name] = evaluate_split(
                task, net, loader, t.device, bar=bar, precision=t.cfg.precision,
                check=lambda n=name: sig.check(f"received during {n} evaluation"))
            bar.close()
    peaks.stop("eval")
    end = {f"{name}_{task.metric}": e["value"] for name, e in ev.items()}
    if "train" not in ev:
        end[f"train_{task.metric}"] = task.reduce(prog.sums)
    return record.EpochRecord(
        epoch=prog.epoch, **record.epoch_values(prog.reduced), **end,
        test_nfe_forward_mean=ev["test"]["nfe_forward_mean"],
        sec_per_test_batch=measure.median(ev["test"]["times"]),
        rss_peak_mib=measure.rss_peak_mib(), cuda_peak_mib=peaks.overall_mib,
        cuda_train_peak_mib=peaks.mib["train"], cuda_eval_peak_mib=peaks.mib["eval"],
        lr=t.optimizer.param_groups[0]["lr"], train_seconds=train_seconds,
        seconds=prog.epoch_elapsed())


def _close(runlog: RunLog, metrics: record.Metrics, metric: str,
           outcome: tuple[str, str | None], epochs: int, prog: Progress) -> None:
    """The run's last metrics.json (its status and reason, the checkpoint's epochs, all its
    wall time), then the history and TensorBoard closed."""
    (metrics.status, metrics.reason), metrics.epochs = outcome, epochs
    metrics.wall_seconds = prog.wall_now()
    try:
        runlog.metrics(metrics)
    except OSError as e:  # e.g. the disk filled up: say so, keep the last metrics.json
        log.error("cannot write %s: %s", runlog.out / record.METRICS, e.strerror or e)
    runlog.close(metrics, metric)


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
    sgd = cfg.optim.name == "sgd"
    return record.Metrics(
        model=cfg.model.name, experiment=cfg.experiment_name, seed=cfg.seed,
        task=model_spec.task,
        solver_method=s.method if ode else None,
        solver_rtol=s.rtol if ode else None, solver_atol=s.atol if ode else None,
        solver_gradient=s.gradient if ode else None,
        solver_adjoint=s.gradient == ADJOINT if ode else None,
        solver_adjoint_norm=s.adjoint_norm if ode else None,
        solver_step_size=s.step_size if ode and fixed else None,
        solver_last_step=s.last_step if ode and not fixed else None,
        solver_carry_step=s.carry_step if ode else None,
        # the image models' ODE block (a CNF has none of these)
        kinetic_weight=cfg.model.get("kinetic_weight"),
        jacobian_weight=cfg.model.get("jacobian_weight"), t1_jitter=cfg.model.get("t1_jitter"),
        params=measure.count_parameters(model),
        residual_blocks=(cfg.model[model_spec.residual_blocks] if model_spec.residual_blocks
                         else None),
        epochs_planned=cfg.optim.epochs, batch_size=running_batch(cfg, loaders),
        train_size=loaders.train.n,
        # None when it is the task's full test set (the table groups by it)
        test_size=None if loaders.test.n == task.full_test_size else loaders.test.n,
        val_size=loaders.val.n if loaders.val is not None else None,
        max_iters_per_epoch=cfg.train.max_iters_per_epoch,
        lr=optim.peak_lr(cfg, running_batch(cfg, loaders)), ema_decay=cfg.optim.ema_decay,
        schedule=cfg.optim.schedule, optimizer=cfg.optim.name,
        # SGD's; Adam has neither (optim.build)
        momentum=cfg.optim.momentum if sgd else None, nesterov=cfg.optim.nesterov if sgd else None,
        weight_decay=cfg.optim.weight_decay, device=str(device), precision=cfg.precision,
        float32_math=float32_math(), threads=torch.get_num_threads(),
        torch_version=str(torch.__version__), git_commit=git_commit(), host=platform.node())


def running_batch(cfg: Any, loaders: Any) -> int:
    """The training batch that runs: data.batch_size, or the whole train split when it
    holds fewer samples (one batch per epoch; the recipe's lr is scaled by this one)."""
    return min(cfg.data.batch_size, loaders.train.n)


def _note_settings(cfg: Any, loaders: Any) -> None:
    """Say which settings the run does not use as given: solver settings of a model without
    an ODE block (a sweep may mix models; metrics.json records no solver for it), and more
    training or test images than the data hold, a batch larger than the train split."""
    unused = unused_settings(cfg)
    if unused:
        log.warning("model=%s has no ODE block: %s not applied (metrics.json records no "
                    "solver)", cfg.model.name, ", ".join(unused))
    for split, loader in ("train", loaders.train), ("test", loaders.test):
        asked = cfg.data[f"{split}_size"]
        if asked is not None and asked > loader.n:
            log.warning("data.%s_size=%d but the %s split holds %d images: using %d", split,
                        asked, split, loader.n, loader.n)
    batch = running_batch(cfg, loaders)
    if batch < cfg.data.batch_size:
        scaled = ", optim.base_lr scaled by it" if cfg.optim.lr is None else ""
        log.warning("data.batch_size=%d but the train split holds %d samples: batches of %d, "
                    "lr %g%s", cfg.data.batch_size, batch, batch, optim.peak_lr(cfg, batch),
                    scaled)
