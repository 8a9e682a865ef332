"""A training run's state between its sessions: where it stands (``Progress``: counters,
clocks and the epoch's folds so far), written with the weights, optimizer, schedule, RNG
and moving average to checkpoint.pt by ``CheckpointSaver`` and continued from there by
``restore``. A checkpoint holds tensors and plain types only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from odenet.config.schema import as_dict
from odenet.run import record
from odenet.training import checkpoint_file as checkpoint
from odenet.training.progress import RunLog
from odenet.training.runtime import rng_state, set_rng_state

if TYPE_CHECKING:
    from odenet.training.iteration import IterationMeasures

log = logging.getLogger("odenet.train")  # the run's log lines name the trainer


@dataclass
class Progress:
    """Where the run stands; saved in checkpoints (plain types only). The epoch so far is
    ``reduced``: each EpochRecord field that its iterations make, folded as the field
    declares (its ``reduce`` of the IterationMeasures values ``of``,
    odenet/run/record.py)."""

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

    def add(self, step: IterationMeasures) -> None:
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


class CheckpointSaver:
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


def restore(ck: dict[str, Any] | None, model, optimizer, scheduler, ema=None) -> None:
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
