"""The one trainer all models share: ``run(cfg, out_dir) -> metrics``.

Read top to bottom: ``_run`` sets up (run directory, device, task, data, model, optimizer,
resume), then loops over epochs and iterations (``train_step``), evaluates at each
epoch's end (``_epoch_record``), writes the epoch's record and a checkpoint, and ends with
a status (``_ending``, ``_close``). The records are built from their fields' declarations
(odenet/run/record.py): an iteration's measures (``Step``) go by name into its IterRecord
and, folded as each EpochRecord field declares, into the epoch's (``Progress.reduced``);
the epochs fold into metrics.json as each Metrics field declares. What it writes
(DEVELOPERS.md, Contract 2): metrics.json, history.jsonl and TensorBoard events through
``RunLog`` (odenet/training/progress.py), checkpoint.pt through odenet/training/checkpoint_file.py.

The task (what is learned: data, loss, metric) is the model's trait (odenet/training/tasks.py);
the loop, measurements, checkpoints, resume and failure handling are shared. No Hydra
here: the command layer (odenet/cli/app.py) validates the config once and calls ``run``.
"""

from __future__ import annotations

import contextlib
import errno
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

from odenet.config.model_registry import ADJOINT, spec
from odenet.config.schedules import SCHEDULES
from odenet.config.schema import ConfigError, as_dict, to_config, unused_settings
from odenet.models import (
    build,
    dynamics_penalty,
    measured_blocks,
    reset_solver_stats,
    solver_stats,
)
from odenet.run import directory as rundir
from odenet.run import record
from odenet.run.files import os_reason
from odenet.solvers import FIXED_METHODS, SolverError, release_buffers
from odenet.solvers.device import read_all
from odenet.training import checkpoint_file as checkpoint
from odenet.training import measure, optim
from odenet.training.openmp import threads_warning
from odenet.training.progress import Bars, Heartbeat, RunLog, epoch_records, log_epoch
from odenet.training.runtime import (
    autocast,
    float32_math,
    git_commit,
    has_bf16_units,
    resolve_device,
    resolve_precision,
    rng_state,
    seed_everything,
    set_exact_math,
    set_rng_state,
)
from odenet.training.tasks import TASKS, Task

log = logging.getLogger("odenet.training.trainer")

# config keys a resumed run may change: what does not change the weights' trajectory
# (more epochs extend it, unless the schedule is fitted to them: optim.FITTED_TO_LENGTH;
# threads and device change rounding only). Everything else, train.max_iters_per_epoch
# included, must match the checkpoint.
RESUMABLE_CHANGES = ("optim.epochs", "train.log_every", "train.train_eval_size",
                     "train.stop_after_iters", "train.measure_memory", "train.tensorboard",
                     "train.progress", "threads", "device", "resume", "overwrite")
# a file the run could not write (a full disk or quota, a file too large, a read-only
# mount): its one line says so
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


@dataclass
class Progress:
    """Where the run stands; saved in checkpoints (plain types only). The epoch so far is
    ``reduced``: each EpochRecord field that its iterations make, folded as the field
    declares (its ``reduce`` of the Step values ``of``, odenet/run/record.py)."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of epoch `epoch` already trained
    step: int = 0  # optimizer steps in total
    wall: float = 0.0  # seconds spent in earlier sessions of this run
    reduced: dict[str, Any] = field(default_factory=record.epoch_state)
    # the task's sums over the epoch's iterations: its train metric without a train_eval split
    sums: dict[str, float] = field(default_factory=dict)
    epoch_seconds: float = 0.0  # the epoch's training in earlier sessions
    history_bytes: int = 0

    def __post_init__(self) -> None:
        # this session's clocks (not state): since its start, since the epoch's start
        self._since = self._epoch_start = time.perf_counter()

    def add(self, step: Step) -> None:
        """One iteration trained: count it and fold its measures into the epoch's."""
        self.batch += 1
        self.step += 1
        record.add_iteration(self.reduced, vars(step))
        for k, v in step.sums.items():
            self.sums[k] = self.sums.get(k, 0) + v

    def at(self) -> dict[str, int]:
        """Where the iteration just trained stands, as IterRecord says it."""
        return {"epoch": self.epoch, "iter": self.batch - 1, "step": self.step}

    def start_epoch(self) -> None:
        self._epoch_start = time.perf_counter() - self.epoch_seconds

    def epoch_elapsed(self) -> float:
        return time.perf_counter() - self._epoch_start

    def wall_now(self) -> float:
        return self.wall + time.perf_counter() - self._since

    def _bank_wall(self) -> None:
        now = time.perf_counter()
        self.wall, self._since = self.wall + now - self._since, now

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch, self.reduced, self.sums, self.epoch_seconds = 0, record.epoch_state(), {}, 0.0
        self._bank_wall()

    def pause(self) -> None:
        """Stopped within an epoch: keep the time this session trained of it."""
        self.epoch_seconds = self.epoch_elapsed() if self.batch else 0.0
        self._bank_wall()

    def state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        """A checkpoint's Progress (what ``state()`` saved). An epoch field the record
        gained since starts empty, as for an epoch that has not measured it."""
        return cls(**{**state, "reduced": {**record.epoch_state(), **state["reduced"]}})


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
    """Train ``cfg`` writing into ``out_dir``: a Config validated by the command layer
    (``config.to_config``; taken as it is), or a DictConfig or dict (tests; validated here).

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
        return _run(cfg, out)
    finally:
        release_buffers()
        rundir.release(out)


def machine_precision(cfg: Any) -> Any:
    """``cfg`` with precision=auto made what this machine runs (runtime.resolve_precision),
    before a run's settings are compared with a checkpoint's or saved."""
    if cfg.precision != "auto":
        return cfg
    resolved = resolve_precision(cfg.precision, resolve_device(cfg.device))
    return to_config({**as_dict(cfg), "precision": resolved})


def _run(cfg: Any, out: Path) -> dict[str, Any]:
    global last_signal
    ck, done = _take_over(cfg, out)  # the checkpoint to continue from; a finished run
    if done is not None:
        return done
    prog = Progress.from_state(ck["progress"]) if ck else Progress()  # its clock starts
    device = _runtime(cfg)
    task: Task = TASKS[spec(cfg.model.name).task]()
    loaders = task.loaders(cfg, device)
    model = build(cfg.model, cfg.solver).to(device)
    ipe = min(len(loaders.train), cfg.train.max_iters_per_epoch or len(loaders.train))
    optimizer, scheduler = optim.build(cfg, model.parameters(), ipe, running_batch(cfg, loaders))
    ema = optim.build_ema(cfg, model)  # None without optim.ema_decay
    _resume(ck, model, optimizer, scheduler, ema)
    runlog, metrics = _open_records(cfg, out, task, model, loaders, device, prog, ck, ipe)
    peaks = measure.DevicePeak(device)  # this run's, not an earlier run's in the process
    save = _Saver(out, cfg, model, optimizer, scheduler, prog, runlog, ema)
    blocks, epochs = measured_blocks(model), cfg.optim.epochs
    status, reason, signum, session_iters = "running", None, None, 0
    try:
        with _Signals() as sig, Bars(cfg.train.progress) as bars:
            heartbeat = Heartbeat(enabled=not bars.shown)
            epoch_bar = bars.epochs(epochs, prog.epoch)
            while prog.epoch < epochs:
                loaders.train.set_epoch(prog.epoch)
                prog.start_epoch()
                batch_bar = bars.batches(ipe, prog.batch, prog.epoch)
                census = cfg.train.measure_memory  # the epoch's first iteration of a session
                peaks.start()
                while prog.batch < ipe:
                    step = train_step(task, model, optimizer, loaders.train.batch(prog.batch),
                                      device, blocks if census else None, cfg.precision)
                    scheduler.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    prog.add(step)
                    census = False
                    if prog.step % cfg.train.log_every == 0 or prog.batch == ipe:
                        runlog.iteration(record.fill(record.IterRecord, vars(step), **prog.at()))
                    batch_bar.update(1)
                    batch_bar.set_postfix(step.postfix(), refresh=False)
                    heartbeat.tick(prog.epoch, epochs, prog.batch, ipe, step.loss,
                                   (step.nfe_forward, step.nfe_backward), step.seconds)
                    session_iters += 1
                    if session_iters == cfg.train.stop_after_iters:
                        raise Stop(f"train.stop_after_iters={session_iters} reached")
                    sig.check("received")
                batch_bar.close()
                # ---- the epoch's end: evaluate, record, checkpoint
                erec = _epoch_record(cfg, task, (model, ema), loaders, optimizer, device,
                                     prog, bars, sig, peaks)
                runlog.epoch(erec, metrics.task, prog.step)
                prog.next_epoch()
                save()
                record.add_epoch(metrics, record.to_json(erec))
                metrics.epochs, metrics.wall_seconds = prog.epoch, prog.wall
                runlog.metrics(metrics)
                epoch_bar.update(1)
                log_epoch(record.to_json(erec), task.metric, epochs)
            epoch_bar.close()
            status = "finished"
    except (KeyboardInterrupt, Exception) as e:  # KeyboardInterrupt: a second Ctrl-C
        status, reason, signum = _ending(e, prog, save, out, ipe)
    finally:
        _close(runlog, metrics, task.metric, (status, reason), save.epoch, prog)
    last_signal = signum  # for the command's exit code
    return record.to_json(metrics)


def _take_over(cfg: Any, out: Path) -> tuple[dict | None, dict | None]:
    """(the checkpoint to continue, the metrics of a run with nothing left to do) for
    ``out``, after the resume/overwrite rules: a run there is refused unless resumed
    (``check_resume``) or overwritten."""
    rundir.remove_orphans(out)
    ck = None
    if cfg.resume:
        if (out / checkpoint.CHECKPOINT_FILE).is_file():
            ck = check_resume(cfg, out)
        done = finished(out, cfg)
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
    elif rundir.holds_run(out):
        if not cfg.overwrite:
            raise ConfigError(f"{out} already holds a run: resume=true continues it, "
                              "overwrite=true deletes it and starts afresh")
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


class _Saver:
    """``save()`` writes checkpoint.pt; ``epoch`` is what it holds (metrics.json never
    claims more epochs than the checkpoint)."""

    def __init__(self, out: Path, cfg: Any, model, optimizer, scheduler, prog: Progress,
                 runlog: RunLog, ema: nn.Module | None = None):
        self.path, self.cfg, self.prog, self.runlog = (out / checkpoint.CHECKPOINT_FILE, cfg,
                                                       prog, runlog)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.ema, self.epoch = ema, prog.epoch

    def __call__(self) -> None:
        prog = self.prog
        prog.history_bytes = self.runlog.history_bytes
        checkpoint.save(self.path, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": prog.epoch,
            "batch": prog.batch, "progress": prog.state(), "rng": rng_state(),
            "config": as_dict(self.cfg), "torch_version": str(torch.__version__),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {})})
        self.epoch = prog.epoch


def _epoch_record(cfg: Any, task: Task, models: tuple[nn.Module, nn.Module | None],
                  loaders: Any, optimizer: Any, device: torch.device, prog: Progress,
                  bars: Bars, sig: _Signals, peaks: measure.DevicePeak) -> record.EpochRecord:
    """The epoch's record: the fields its iterations make (``prog.reduced``), and those
    measured at its end: every split's metric (the train metric from the iterations' sums
    without a train_eval split; the weights' moving average on test and val too, where
    the run keeps one), test NFE and time, memory peaks, the learning rate and the
    epoch's clocks."""
    train_seconds = prog.epoch_elapsed()
    peaks.stop("train")  # the epoch's training ends here; its evaluation starts
    model, ema = models
    splits = {"test": (model, loaders.test), "train": (model, loaders.train_eval),
              "val": (model, loaders.val), "ema_test": (ema, loaders.test),
              "ema_val": (ema, loaders.val)}
    ev = {}
    peaks.start()
    for name, (net, loader) in splits.items():
        if net is not None and loader is not None:
            bar = bars.eval(len(loader), name)
            ev[name] = evaluate_split(
                task, net, loader, device, bar=bar, precision=cfg.precision,
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
        lr=optimizer.param_groups[0]["lr"], train_seconds=train_seconds,
        seconds=prog.epoch_elapsed())


def _ending(e: BaseException, prog: Progress, save: _Saver, out: Path,
            ipe: int) -> tuple[str, str | None, int | None]:
    """(status, reason, signal) of a run the loop left by ``e``; an interrupted run is
    checkpointed where it stopped."""
    if isinstance(e, Stop):
        prog.pause()
        save()
        log.warning("interrupted (%s) at epoch %d, iteration %d/%d: checkpoint saved to %s; "
                    "continue with: %s", e.reason, prog.epoch, prog.batch, ipe, save.path,
                    rundir.resume_command(out))
        return "interrupted", e.reason, e.signum
    if isinstance(e, KeyboardInterrupt):
        log.warning("interrupted at once: the last checkpoint (%s, epoch boundary) is "
                    "unchanged", save.path)
        return "interrupted", "SIGINT twice: stopped at once", signal.SIGINT
    where = f" (epoch {prog.epoch}, iteration {prog.batch})"
    if isinstance(e, (Failure, SolverError)):
        reason = f"{type(e).__name__}: {e}" if isinstance(e, SolverError) else str(e)
        reason = " ".join(reason.split()) + where
        log.error("run failed: %s", reason)
    elif isinstance(e, OSError):  # the machine's, not the code's: no traceback
        verb = "cannot write " if e.errno in WRITE_ERRNOS else ""
        reason = f"{verb}{os_reason(e)}{where}"
        log.error("run failed: %s; kept: %s", reason, _kept(save, out))
    else:  # a bug: record it, let a sweep go on
        reason = " ".join(f"{type(e).__name__}: {e}".split()) + where
        log.exception("run failed: %s", reason)
    return "failed", reason, None


def _kept(save: _Saver, out: Path) -> str:
    """What a run that failed on a file keeps, for its one line."""
    if save.epoch == 0 or not save.path.is_file():
        return "no checkpoint yet (a rerun starts afresh)"
    return (f"{save.path} of epoch {save.epoch}, which continues once there is room: "
            f"{rundir.resume_command(out)}")


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


# ============================================================================ one iteration
@dataclass
class Step:
    """What one training iteration measured, by the names the records read: IterRecord's
    fields and the ``of`` of the EpochRecord fields its iterations make (odenet/run/record.py)."""

    loss: float
    sums: dict[str, float]
    seconds: float
    lr: float  # the step's learning rate
    nfe_forward: int | None = None
    nfe_backward: int | None = None
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    # the iteration whose activations were counted; None for the others
    activation_mib: float | None = None
    activation_block_mib: float | None = None
    activation_nfe_forward: int | None = None
    sample_seconds: float | None = None  # seconds, but None when counted: not a timing sample
    # the ODE block's dynamics penalties, unweighted (model.kinetic_weight, jacobian_weight)
    kinetic_energy: float | None = None
    jacobian_frobenius: float | None = None

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
    lr = optimizer.param_groups[0]["lr"]
    counted = measure_blocks is not None
    meter = measure.ActivationMeter(model, measure_blocks) if counted else None
    with measure.Timer(device) as timer:
        with meter if meter is not None else contextlib.nullcontext():
            with autocast(precision, device):
                loss, sums = task.train_loss(model, batch)
        penalty, penalties = dynamics_penalty(model)
        fwd = solver_stats(model) or {}
        optimizer.zero_grad(set_to_none=True)
        _backward(loss if penalty is None else loss + penalty)
        optimizer.step()
        bwd = solver_stats(model) or {}
    # read after the timer's sync, all at once: nothing waits for the device before backward
    loss_value, sums, penalties = _read(loss, sums, penalties)
    if not math.isfinite(loss_value):  # its step is taken, but the run stops unsaved
        raise Failure(_non_finite(loss_value))
    return Step(
        loss=loss_value, sums=sums, seconds=timer.seconds,
        lr=lr, nfe_forward=fwd.get("nfe_forward"), nfe_backward=bwd.get("nfe_backward"),
        steps_accepted=fwd.get("steps_accepted"), steps_rejected=fwd.get("steps_rejected"),
        activation_mib=meter.total_mib if counted else None,
        activation_block_mib=meter.block_mib if counted else None,
        activation_nfe_forward=fwd.get("nfe_forward") if counted else None,
        sample_seconds=None if counted else timer.seconds, **penalties)


def _read(loss: torch.Tensor, sums: dict, penalties: dict
          ) -> tuple[float, dict[str, float], dict[str, float | None]]:
    """The loss, the task's sums and the dynamics penalties (None: not computed) as
    numbers, read from the device at once (one sync)."""
    names = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
    measured = [k for k, v in penalties.items() if v is not None]
    loss_value, *values = read_all([loss, *(sums[k] for k in names),
                                    *(penalties[k] for k in measured)])
    read = dict(zip(names + measured, values))
    sums = {k: float(read.get(k, v)) for k, v in sums.items()}
    return loss_value, sums, {k: read.get(k) for k in penalties}


def _backward(loss: torch.Tensor) -> None:
    """loss.backward(); a backward solve that fails on a non-finite loss says so."""
    try:
        loss.backward()
    except SolverError:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise Failure(_non_finite(value)) from None
        raise


def _non_finite(loss_value: float) -> str:
    return f"non-finite loss ({loss_value}): lower optim.lr or the tolerance"


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
        schedule=cfg.optim.schedule, device=str(device), precision=cfg.precision,
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
    cfg = machine_precision(cfg)  # the checkpoint holds what ran, never auto
    path = out / checkpoint.CHECKPOINT_FILE
    try:
        ck = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"resume=true: {e}; overwrite=true starts the run afresh (its "
                          "records deleted)") from None
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
    _check_state_kept(ck, cfg, path)
    hist = out / record.HISTORY
    need = ck["progress"].get("history_bytes", 0)
    have = hist.stat().st_size if hist.exists() else None
    if have is None or have < need:
        what = "is missing" if have is None else f"has {have} of the {need} bytes it had"
        raise ConfigError(f"resume=true: {hist} {what} when {path} was saved; the run's "
                          "history cannot continue (overwrite=true starts afresh)")
    return ck


def _check_state_kept(ck: dict[str, Any], cfg: Any, path: Path) -> None:
    """A setting that keeps state in the checkpoint cannot be turned on when resuming a run
    written without it (its config predates the setting, so the settings compare equal)."""
    kept = (("optim.ema_decay", cfg.optim.ema_decay is not None, "ema" in ck,
             "a moving average of the weights"),
            ("solver.carry_step", bool(cfg.solver.get("carry_step")),
             any(k.endswith("carried_steps") for k in ck["model"]), "a carried step"))
    for key, wanted, has, what in kept:
        if wanted and not has:
            raise ConfigError(f"resume=true: {path} holds no {what}, so {key} cannot be "
                              "turned on for this run (train afresh: overwrite=true, or "
                              "another hydra.run.dir)")


def _check_epochs_change(was: int, o: Any) -> None:
    """More (or fewer) epochs extend a run only where the schedule does not depend on them:
    a cosine or one-cycle schedule is fitted to optim.epochs, so changing them would
    splice two schedules into one run."""
    if o.epochs != was and o.schedule in optim.FITTED_TO_LENGTH:
        free = " and ".join(s.name for s in SCHEDULES.values() if not s.fitted_to_length)
        raise ConfigError(
            f"resume=true: optim.epochs={o.epochs} but the run has optim.epochs={was}, and "
            f"its {o.schedule} schedule is fitted to them (every step's learning rate would "
            f"change); only {free} runs can be extended: train {o.epochs} "
            "epochs afresh (overwrite=true, or another hydra.run.dir)")


def _resume(ck: dict[str, Any] | None, model, optimizer, scheduler, ema=None) -> None:
    """The states of the checkpoint continued (None: a new run)."""
    if ck is None:
        return
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if ema is not None:
        ema.load_state_dict(ck["ema"])
    set_rng_state(ck["rng"])
    log.info("resuming at epoch %d, iteration %d", ck["progress"]["epoch"],
             ck["progress"]["batch"])


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
