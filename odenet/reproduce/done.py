"""Whether a job's work is done: before it runs (done by an earlier reproduction: skipped)
and after (a child that exited 0 may still not have done it)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from odenet.report.runs import EVALUATION, METRICS
from odenet.reproduce.jobs import EVALUATE, GRADIENTS, TRAIN, Job
from odenet.reproduce.plan import ReproduceConfig
from odenet.run import record


def evaluation_done(ev_path: Path, checkpoint: Path, tolerances: list[float]) -> bool:
    """evaluation.json exists, is newer than the checkpoint and covers every tolerance."""
    try:
        ev = json.loads(ev_path.read_text())
        if ev_path.stat().st_mtime < checkpoint.stat().st_mtime:
            return False
    except (OSError, ValueError):
        return False
    done = {float(r.get("rtol")) for r in ev.get("results", []) if r.get("rtol") is not None}
    return all(any(abs(t - d) <= 1e-12 * max(abs(t), 1.0) for d in done) for t in tolerances)


def gradients_done(run_dir: Path, metrics: dict) -> bool:
    """gradients.json exists, is newer than the checkpoint and measured the run's own
    gradient method at its own solver and tolerance (what Table 1's column reads)."""
    from odenet.report.runs import Run, own_gradient_result, read_evaluation

    path = run_dir / record.GRADIENTS_FILE
    try:
        if path.stat().st_mtime < (run_dir / record.CHECKPOINT_FILE).stat().st_mtime:
            return False
        gradients = read_evaluation(path)
    except (OSError, record.RecordError):
        return False
    return own_gradient_result(Run(run_dir, metrics, gradients=gradients)) is not None


def job_done(job: Job, cfg: ReproduceConfig) -> bool:
    """Done already, by this or an earlier reproduction: nothing to run."""
    training = job.training
    if not training.finished:
        return False
    if job.kind == EVALUATE:
        ev = cfg.plans[cfg.experiment].evaluate
        return evaluation_done(training.dir / EVALUATION,
                               training.dir / record.CHECKPOINT_FILE, ev.tolerances)
    if job.kind == GRADIENTS:
        return gradients_done(training.dir, record.read_metrics(training.dir / METRICS))
    return True


def job_failure(job: Job, rc: int, cfg: ReproduceConfig) -> str | None:
    """Why the job, whose child exited with ``rc``, did not do its work; None if it did."""
    training, ckpt = job.training, job.training.dir / record.CHECKPOINT_FILE
    if job.kind == TRAIN:
        if rc == 0 and training.finished:
            return None
        why = exit_text(rc) if rc else f"status {training.status() or 'unknown'}"
        return f"{training.group}/{training.name} did not finish ({why}, see {job.log})"
    if job.kind == EVALUATE:
        return None if rc == 0 else \
            f"odenet evaluate failed on {ckpt} ({exit_text(rc)}, see {job.log})"
    if rc == 0 and job_done(job, cfg):
        return None
    return (f"odenet gradients did not measure {training.name}'s own gradient ({ckpt}: "
            f"{exit_text(rc)}, see {job.log})")


def exit_text(rc: int) -> str:
    """'exit 1', or 'killed by SIGKILL' for a child a signal ended (e.g. out of memory)."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            pass
    return f"exit {rc}"


def skipped(job: Job) -> str:
    """The failure of work on a checkpoint whose training did not finish."""
    what = "evaluation" if job.kind == EVALUATE else "gradient error"
    return f"{what} skipped: {job.training.name} did not finish"
