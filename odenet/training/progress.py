"""What a run shows and leaves while it trains, apart from checkpoints: history.jsonl,
metrics.json, TensorBoard events, tqdm bars and the log lines of train.log.

``RunLog`` is the trainer's one handle on all of them; the records it writes are those
of odenet/run/record.py.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from odenet.run import record
from odenet.run.files import write_json
from odenet.run.record import HISTORY, METRICS

log = logging.getLogger("odenet.train")

TENSORBOARD = "tb"
# metrics.json keys that TensorBoard's hparams view shows beside the results
HPARAMS = ("model", "seed", "solver_method", "solver_rtol", "solver_adjoint",
           "epochs_planned", "batch_size", "lr", "schedule")


class RunLog:
    """history.jsonl (appended, flushed per record), metrics.json (atomic) and TensorBoard.

    ``history_bytes`` is what a checkpoint remembers: resuming truncates the history to
    it, dropping records written after the checkpoint.
    """

    def __init__(self, out: Path, tensorboard: bool, resume: tuple[int, int] | None = None):
        """``resume``: (history bytes, optimizer steps) the checkpoint holds; None: a new run."""
        self.out = out
        path = out / HISTORY
        if resume is None:
            path.write_text("")
        elif path.exists():
            with open(path, "r+b") as f:
                f.truncate(resume[0])
        self._history = open(path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out / TENSORBOARD),
                                     purge_step=None if resume is None else resume[1] + 1)

    @property
    def history_bytes(self) -> int:
        self._history.flush()
        return (self.out / HISTORY).stat().st_size

    def iteration(self, rec: record.IterRecord) -> None:
        self._append(rec)
        if self._tb is not None:
            for k, v in record.to_json(rec).items():
                if k not in ("kind", "epoch", "iter", "step") and _number(v):
                    self._tb.add_scalar(f"iter/{k}", v, rec.step)

    def epoch(self, rec: record.EpochRecord, task: str, step: int) -> None:
        self._append(rec, task)
        if self._tb is not None:
            for k, v in _for(rec, task).items():
                if k not in ("kind", "epoch") and _number(v):
                    self._tb.add_scalar(f"epoch/{k}", v, step)
            self._tb.flush()

    def metrics(self, m: record.Metrics) -> None:
        write_json(self.out / METRICS, record.to_json(m))

    def close(self, m: record.Metrics | None = None, metric: str | None = None) -> None:
        self._history.close()
        if self._tb is None:
            return
        try:
            if m is not None and m.status == "finished":
                rec = record.to_json(m)
                hp = {k: ("null" if rec[k] is None else rec[k]) for k in HPARAMS}
                res = {f"hparam/{k}": rec[k] for k in (f"test_{metric}", "sec_per_iter",
                                                       "nfe_forward_mean")
                       if _number(rec.get(k))}
                self._tb.add_hparams(hp, res, run_name=".")
        finally:
            self._tb.close()

    def _append(self, rec: Any, task: str | None = None) -> None:
        self._history.write(json.dumps(_for(rec, task)) + "\n")
        self._history.flush()


def _for(rec: Any, task: str | None) -> dict:
    """The record as JSON, without the fields of tasks other than ``task``."""
    keep = set(record.for_task(type(rec), task)) if task else None
    return {k: v for k, v in record.to_json(rec).items() if keep is None or k in keep}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def epoch_records(out: Path) -> list[dict]:
    """The epoch records of a run's history.jsonl, in order (on resume)."""
    return [r for r in record.read_history(out / HISTORY) if r["kind"] == "epoch"]


# ------------------------------------------------------------------------- display
def log_epoch(e: dict, metric: str, epochs: int) -> None:
    def fmt(v):
        return "-" if v is None else (f"{100 * v:.2f}%" if metric == "error" else f"{v:.4f}")

    parts = [f"epoch {e['epoch'] + 1}/{epochs}",
             f"train_{metric} {fmt(e.get(f'train_{metric}'))}",
             f"test_{metric} {fmt(e.get(f'test_{metric}'))}"]
    if e.get("nfe_forward_mean") is not None:
        parts.append(f"NFE-F {e['nfe_forward_mean']:.1f} NFE-B {e['nfe_backward_mean']:.1f}")
    if e.get("sec_per_iter") is not None:
        parts.append(f"{e['sec_per_iter']:.3f} s/iter")
    parts.append(f"{e['seconds']:.0f} s")
    log.info(", ".join(parts))


def terminal_columns(stream: Any) -> int | None:
    """The width of the terminal ``stream`` writes to; None when it is not a terminal. A
    terminal may report 0 (e.g. under `script -qc`): tqdm's bars then draw nothing."""
    if not stream.isatty():
        return None
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


class Bars:
    """tqdm bars (epoch, batch, evaluation); progress=auto: only on a terminal that can show
    them (else the Heartbeat logs progress)."""

    def __init__(self, progress: str):
        columns = terminal_columns(sys.stderr)
        self.disable = {"auto": not columns, "always": False, "never": True}[progress]
        self.shown = not self.disable
        # progress=always on a terminal of unknown size: a fixed one (tqdm hides bars
        # beyond the terminal's rows, and every row is beyond 0)
        self.size = (80, 20) if columns == 0 else None

    def __enter__(self) -> Bars:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._redirect.__exit__(*exc)

    def _bar(self, **kw: Any):
        from tqdm.auto import tqdm

        ncols, nrows = self.size or (None, None)
        return tqdm(disable=self.disable, dynamic_ncols=self.size is None, ncols=ncols,
                    nrows=nrows, **kw)

    def epochs(self, total: int, initial: int):
        return self._bar(total=total, initial=initial, desc="epochs", unit="epoch")

    def batches(self, total: int, initial: int, epoch: int):
        return self._bar(total=total, initial=initial, desc=f"epoch {epoch + 1}", unit="it",
                         leave=False)

    def eval(self, total: int, name: str):
        return self._bar(total=total, desc=f"eval {name}", unit="batch", leave=False)

    def count(self, desc: str, unit: str):
        """A bar without a total: a count and its rate (e.g. a solve's evaluations)."""
        return self._bar(desc=desc, unit=unit, leave=False)


class Heartbeat:
    """Without a bar on a terminal, a line in the log (train.log) at most every ``every``
    seconds: where the run is, its loss, NFE, seconds per iteration and the time left
    for the training iterations (evaluations not included)."""

    def __init__(self, enabled: bool, every: float = 60.0):
        self.enabled, self.every = enabled, every
        self.last = time.monotonic()
        self.iters, self.seconds = 0, 0.0

    def due(self) -> bool:
        """Whether a line is due now (enabled, ``every`` seconds since the last)."""
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every:
            return False
        self.last = now
        return True

    def tick(self, epoch: int, epochs: int, batch: int, ipe: int, loss: float,
             nfe: tuple[int | None, int | None], seconds: float) -> None:
        self.iters += 1
        self.seconds += seconds
        if not self.due():
            return
        per_iter = self.seconds / self.iters
        left = ((epochs - epoch - 1) * ipe + ipe - batch) * per_iter
        nfe_text = "" if nfe[0] is None else f", NFE {nfe[0]}/{nfe[1]}"
        log.info("epoch %d/%d, iteration %d/%d, loss %.4f%s, %.3f s/iter, ETA %s",
                 epoch + 1, epochs, batch, ipe, loss, nfe_text, per_iter, _hms(left))


def _hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"
