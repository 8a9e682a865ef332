"""What `odenet train` checks before Hydra writes anything (no Hydra import): a job's
data and device, the run directory, and the label of a sweep job's log lines.

Hydra creates the run directory and writes its record (.hydra/) before the job starts, so
a refusal must come first to leave every file as it was. What is decided about the run
directory here (its checkpoint loaded once) is handed to the trainer
(``trainer.run(cfg, out, decided)``); a sweep's jobs decide in the trainer."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odenet.cli.error_lines import Refused
from odenet.config.schema import ConfigError

if TYPE_CHECKING:
    from odenet.training.resume import TakeOver


def check_job(cfg: Any) -> None:
    """Refused where the validated ``cfg`` cannot start on this machine: its MNIST files
    missing or damaged, a device it lacks."""
    from odenet.config.model_registry import CLASSIFY, spec
    from odenet.data import DataError, require_raw

    try:
        if spec(cfg.model.name).task == CLASSIFY:
            require_raw(cfg.data.root)
        if cfg.device not in ("auto", "cpu"):
            from odenet.training.runtime import resolve_device  # torch: only when asked

            resolve_device(cfg.device)
    except (DataError, ConfigError) as e:
        raise Refused(str(e)) from None


def check_run_dir_writable(path: Path) -> None:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise Refused(f"run directory {path}: {p} is a file, not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise Refused(f"run directory {path}: cannot write in {p} (read-only file system "
                      "or no permission)")


def claim_run_dir(cfg: Any, out: Path) -> TakeOver:
    """Claim ``out`` for this process (nobody else starts there before the trainer does)
    and decide what the training does with it (``resume.take_over``, handed to the
    trainer), or Refused: another owner, a resume the checkpoint refuses, a run there
    without resume or overwrite; Refused with status 0 when a resumed run has nothing left."""
    from odenet.config.schedules import SCHEDULES
    from odenet.run import directory as rundir
    from odenet.training.resume import take_over

    check_run_dir_writable(out)
    try:
        if rundir.is_claimed(out):
            rundir.claim(out)  # raises the one line that names the owner
        decided = take_over(cfg, out)
        if decided.done is not None:
            more = " or ".join(s.name for s in SCHEDULES.values() if not s.fitted_to_length)
            raise Refused(f"odenet train: nothing to do: {out} finished (resume=true "
                          "continues only a run that has epochs left; raise optim.epochs "
                          f"for more, with a {more} schedule)", 0)
        rundir.claim(out)
    except ConfigError as e:
        raise Refused(str(e)) from None
    return decided


class JobLabel(logging.Filter):
    """Prefixes every log line of a sweep job with ``[job N: its overrides]``: parallel
    jobs interleave on the console."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text
        self.handlers = list(logging.getLogger().handlers)
        for h in self.handlers:
            h.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(f"[{self.text}]"):
            record.msg = f"[{self.text}] {record.msg}"
        return True

    def remove(self) -> None:
        for h in self.handlers:
            h.removeFilter(self)
