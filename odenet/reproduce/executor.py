"""Where the jobs' children run, behind one interface (`Executor`): this machine's process
pool (executor=local) or submitit (executor=slurm, submitit_local). An executor owns the
signals that stop reproduce while it runs: each is passed on to every running job once."""

from __future__ import annotations

import signal
from typing import Any

from odenet.reproduce.jobs import Job
from odenet.reproduce.plan import ReproduceConfig
from odenet.training.openmp import usable_cores


class Interrupted(Exception):
    """A signal stopped the reproduction (after its running children, if any, stopped)."""

    def __init__(self, signum: int, where: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.where = signum, where


# Signals that stop a reproduction, and what the running children are sent for each:
# `odenet train` checkpoints and exits on SIGINT/SIGTERM; a terminal hang-up becomes SIGTERM.
FORWARD = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM}
if hasattr(signal, "SIGHUP"):
    FORWARD[signal.SIGHUP] = signal.SIGTERM


class Executor:
    """Runs the jobs' commands and owns the signals that stop reproduce: each is passed on
    to every running job once (a second Ctrl-C once more: `odenet train` then stops at
    once, without a checkpoint); reproduce starts no job after one and waits for the
    running ones to checkpoint and exit.

    The handler only notes a signal; the scheduling loop passes it on (`pass_signals`),
    so a signal that comes while a job starts or another signal is being passed on cannot
    reach a job twice. A subclass starts jobs (`start`), reports the ended ones
    (`exited`), sends a running job a signal (`_send`) and stops what still runs when
    reproduce itself fails (`reap`); the base class starts nothing."""

    def __init__(self) -> None:
        self.running: dict[Job, Any] = {}  # each running job, with what runs it
        self.received: list[int] = []      # the signals that came, in order
        self.busy = False  # scheduling: signals are passed on, not raised
        self._sent: dict[Job, int] = {}    # how many of `received` each job has been sent
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Executor:
        for s in FORWARD:
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: signals are not ours to pass on
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        self.reap()
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handler(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if not self.busy:  # no job runs (e.g. writing the report): stop now
            raise Interrupted(self.received[0])

    def pass_signals(self) -> None:
        """Sends every running job the signals it has not been sent yet."""
        for job in list(self.running):
            while self._sent[job] < len(self.received):
                self._sent[job] += 1
                self._send(job, FORWARD[self.received[self._sent[job] - 1]])

    def _add(self, job: Job, handle: Any) -> None:
        self.running[job], self._sent[job] = handle, 0

    def _remove(self, job: Job) -> Any:
        del self._sent[job]
        return self.running.pop(job)

    def start(self, job: Job, cmd: list[str]) -> None:
        """Starts the job's command, its output appended to job.log; OSError if it cannot."""
        raise NotImplementedError

    def exited(self) -> list[tuple[Job, int]]:
        """The jobs that have ended since the last call, with their exit codes."""
        raise NotImplementedError

    def reap(self) -> None:
        """Jobs still running here mean reproduce itself failed: stop them (the base
        class runs none: it only owns the signals, e.g. for a dry run)."""

    def _send(self, job: Job, signum: int) -> None:
        raise NotImplementedError


def job_gpus(cfg: ReproduceConfig) -> list[str | None]:
    """The GPUs this machine hands out to the jobs, one at a time (local.child_gpus);
    none where the jobs run elsewhere (slurm) or submitit picks them (submitit_local)."""
    if cfg.executor != "local":
        return []
    from odenet.reproduce.local import child_gpus

    return child_gpus(cfg)


def job_count(cfg: ReproduceConfig, gpus: list[str | None], planned: int = 1) -> int:
    """Jobs at once: jobs=, else on a cluster every one of the ``planned`` jobs (its queue
    decides), else jobs_per_gpu per GPU on CUDA (several trainings on one GPU contend:
    their seconds per iteration would measure it), else one per core."""
    if cfg.jobs:
        return cfg.jobs
    if cfg.executor == "slurm":
        return max(planned, 1)
    return len(gpus) * cfg.jobs_per_gpu if gpus else usable_cores()


def count_reason(cfg: ReproduceConfig, gpus: list[str | None]) -> str:
    """Why that many jobs at once, for the plan's first lines."""
    if cfg.jobs:
        return f"jobs={cfg.jobs}"
    if cfg.executor == "slurm":
        return "executor=slurm: every job submitted, the cluster's queue runs them"
    why = (f"{cfg.jobs_per_gpu} per GPU: {len(gpus)} GPU(s)" if gpus
           else f"one per core: {usable_cores()} usable")
    if len(gpus) > 1:
        why += "; each child on the GPU running the fewest, by CUDA_VISIBLE_DEVICES"
    return why


def make_executor(cfg: ReproduceConfig, gpus: list[str | None]) -> Executor:
    """The executor cfg.executor names (ConfigError where submitit is missing)."""
    if cfg.executor == "local":
        from odenet.reproduce.local import LocalExecutor

        return LocalExecutor(gpus)
    from odenet.reproduce.submitit_executor import SubmititExecutor

    return SubmititExecutor(cfg)
