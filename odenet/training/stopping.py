"""How a training run stops before its last epoch: at a clean boundary (``Stop``: a signal
that ``StopSignals`` noted, or train.stop_after_iters), or because it cannot go on
(``Failure``, a solver's error, a file it cannot write, a bug); ``ending`` says which, as
the status and reason metrics.json records, and checkpoints an interrupted run.
"""

from __future__ import annotations

import errno
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odenet.run import directory as rundir
from odenet.run.files import os_reason
from odenet.solvers import SolverError

if TYPE_CHECKING:
    from odenet.training.run_state import CheckpointSaver, Progress

log = logging.getLogger("odenet.train")  # the run's log lines name the trainer

# a file the run could not write (a full disk or quota, a file too large, a read-only
# mount): its one line says so
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class Stop(Exception):
    """Leave the loop at a clean boundary: checkpoint, status "interrupted"."""

    def __init__(self, reason: str, signum: int | None = None):
        super().__init__(reason)
        self.reason, self.signum = reason, signum


class Failure(Exception):
    """The run cannot go on (NaN/Inf loss): status "failed"."""


class StopSignals:
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

    def __enter__(self) -> StopSignals:
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


def ending(e: BaseException, prog: Progress, save: CheckpointSaver, out: Path,
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


def _kept(save: CheckpointSaver, out: Path) -> str:
    """What a run that failed on a file keeps, for its one line."""
    if save.epoch == 0 or not save.path.is_file():
        return "no checkpoint yet (a rerun starts afresh)"
    return (f"{save.path} of epoch {save.epoch}, which continues once there is room: "
            f"{rundir.resume_command(out)}")
