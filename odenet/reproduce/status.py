"""How far the plan is: each training's state from its records, the time left of the
trainings, and what reproduce prints while it runs (a line per job, one progress line)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odenet.report.runs import METRICS
from odenet.run import record


@dataclass
class RunState:
    """How far a training is, from its records (metrics.json, history.jsonl)."""

    total: int | None           # iterations planned: epochs x iterations per epoch
    done: int                   # iterations done: the last logged optimizer step
    # after an epoch: its wall time per iteration (the evaluations included); before, the
    # median of its last logged iterations (else metrics.json's)
    sec_per_iter: float | None


def run_state(run_dir: Path) -> RunState | None:
    """None before its metrics.json (which a training writes as it starts)."""
    try:
        m = record.read_metrics(run_dir / METRICS)
    except record.RecordError:
        return None
    # the trainer drops a last partial batch (a set smaller than a batch: one batch)
    ipe = max((m.get("train_size") or 0) // (m.get("batch_size") or 1), 1)
    if m.get("max_iters_per_epoch"):
        ipe = min(ipe, m["max_iters_per_epoch"])
    total = ipe * m["epochs_planned"] if m.get("epochs_planned") else None
    iters = _last_iters(run_dir / record.HISTORY)
    done = total if m["status"] == "finished" and total else (iters[-1]["step"] if iters else 0)
    if m.get("epochs") and m.get("wall_seconds"):  # whole epochs, their evaluations included
        return RunState(total, done, m["wall_seconds"] / (m["epochs"] * ipe))
    secs = sorted(r["seconds"] for r in iters if isinstance(r.get("seconds"), (int, float)))
    spi = secs[len(secs) // 2] if secs else m.get("sec_per_iter")
    return RunState(total, done, spi)


def _last_iters(path: Path, n: int = 20, tail: int = 32768) -> list[dict]:
    """The last ``n`` iteration records of a history.jsonl, read from its end only."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - tail, 0))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines[1:] if size > tail else lines:  # the first may be cut
        try:
            rec = json.loads(line)
        except ValueError:  # e.g. a line being written
            continue
        if isinstance(rec, dict) and rec.get("kind") == "iter" and isinstance(rec.get("step"), int):
            out.append(rec)
    return out[-n:]


def time_left(runs: list[tuple[str, bool, RunState | None]],
              jobs: int) -> tuple[float | None, int]:
    """The time left of the trainings, and how many of them it leaves out (unmeasured).

    ``runs``: every training as (its row, done?, its state). A training not done whose
    planned iterations and seconds per iteration are measured has (planned - done) x
    seconds per iteration left; one not measured yet, the whole of a measured training of
    its row (done or running); the others are not measured. Spread over the jobs: their
    sum / jobs, never less than the longest of them. None: nothing left is measured."""
    def whole(st: RunState | None) -> float | None:
        return st.total * st.sec_per_iter if st and st.total and st.sec_per_iter else None

    row_cost: dict[str, float] = {}
    for row, _, st in runs:
        if whole(st) is not None:
            row_cost.setdefault(row, whole(st))
    costs, unmeasured = [], 0
    for row, done, st in runs:
        if done:
            continue
        if whole(st) is not None:
            costs.append(max(st.total - st.done, 0) * st.sec_per_iter)
        elif row in row_cost:
            costs.append(row_cost[row])
        else:
            unmeasured += 1
    if not costs:
        return (None if unmeasured else 0.0), unmeasured
    return max(sum(costs) / jobs, max(costs)), unmeasured


def duration(seconds: float) -> str:
    """'1h05m', '12m', '40s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def eta_text(seconds: float | None, unmeasured: int) -> str:
    if seconds is None:
        return "time left: not measured yet" + (f" ({unmeasured} training(s))"
                                                 if unmeasured else "")
    more = f" + {unmeasured} training(s) not measured yet" if unmeasured else ""
    return f"time left ~{duration(seconds)}{more} (trainings)"


class Show:
    """What reproduce prints while it schedules: one line per child started, done, failed
    or stopped, and one progress line for the whole plan: on a terminal redrawn in place
    (tqdm), else printed every ``every`` seconds and at the end."""

    def __init__(self, log: Any = print, tty: bool = False, every: float = 60.0) -> None:
        self.log, self.every = log, every
        self.bar = None
        self._last, self._at = "", -math.inf
        if tty:
            from tqdm import tqdm

            from odenet.training.progress import terminal_columns

            cols = terminal_columns(sys.stdout)  # 0: a terminal of unknown size (nrows
            # given too: tqdm hides a bar beyond a height it cannot read)
            self.bar = tqdm(bar_format="{desc}", file=sys.stdout, ncols=cols or 120,
                            nrows=24, dynamic_ncols=bool(cols))

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            self.log(text)

    def progress(self, text: str, final: bool = False) -> None:
        if self.bar is not None:
            if text != self._last:
                self.bar.set_description_str(text)
        elif final or time.monotonic() - self._at >= self.every:
            self.log(text)
            self._at = time.monotonic()
        self._last = text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
