"""The job queue: which job starts next, at most ``jobs`` at once, through an executor.

Defaults jobs = the usable cores, threads = 1, from `make bench-threads` on a 2-core AMD
EPYC VM (docs/benchmarks.md, "Threads against processes"; ODE-Net trainings, images per
second in all): one training at 2 threads 148, two trainings at 1 thread each 200 when
idle; 55 against 117 when another process keeps a core busy."""

from __future__ import annotations

import math
import time

from odenet.reproduce.done import exit_text, job_done, job_failure, skipped
from odenet.reproduce.executor import Executor
from odenet.reproduce.jobs import TRAIN, Job, job_command
from odenet.reproduce.plan import ReproduceConfig
from odenet.reproduce.status import RunState, Show, duration, eta_text, run_state, time_left

TICK = 0.1            # seconds between looks at the jobs
ESTIMATE_EVERY = 5.0  # seconds between readings of the runs' records for the time left
LEFT, RUNNING, DONE, FAILED = "left", "running", "done", "failed"


class JobQueue:
    """Runs the jobs, at most ``jobs`` at once: the trainings in the plan's order, and the
    work on a checkpoint as soon as its training has finished (before any further
    training: it is short, and the report waits for it). What is done already is skipped;
    a failure is noted and the rest goes on (the next reproduction reruns it); a signal
    starts nothing more and waits for the running jobs."""

    def __init__(self, cfg: ReproduceConfig, jobs: list[Job], at_once: int,
                 executor: Executor, show: Show) -> None:
        self.cfg, self.jobs, self.at_once = cfg, jobs, at_once
        self.executor, self.show = executor, show
        self.state = {j: LEFT for j in jobs}
        self.training = {j.training.dir: j for j in jobs if j.kind == TRAIN}
        self.failures: list[str] = []
        self.started = 0                     # jobs started by this invocation
        self.seconds: dict[str, float] = {}  # per kind, summed over its jobs
        self.where: str | None = None        # what was running when a signal came
        self._started: dict[Job, float] = {}
        self._checked: set[Job] = set()      # looked for as done already
        self._states: dict[Job, tuple[bool, RunState | None]] = {}  # (done?, state)
        self._eta: tuple[float | None, int] = (None, 0)
        self._eta_at, self._t0 = -math.inf, time.monotonic()

    def run(self) -> None:
        ex = self.executor
        ex.busy = True
        try:
            while True:
                if ex.received and self.where is None:
                    self.where = ", ".join(j.label for j in ex.running)
                ex.pass_signals()
                for job, rc in ex.exited():
                    self._ended(job, rc)
                if not ex.received:
                    self._start()
                if not ex.running and (ex.received or LEFT not in self.state.values()):
                    break
                self.show.progress(self.progress())
                time.sleep(TICK)
        finally:
            ex.busy = False
        self._eta_at = -math.inf  # estimated afresh
        self.show.progress(self.progress(), final=True)

    def _ready(self) -> list[Job]:
        """What may start now: work on finished trainings first, then the trainings."""
        left = [j for j in self.jobs if self.state[j] == LEFT]
        post = [j for j in left if j.kind != TRAIN
                and self.state[self.training[j.training.dir]] in (DONE, FAILED)]
        return post + [j for j in left if j.kind == TRAIN]

    def _start(self) -> None:
        for job in self._ready():
            if job.kind != TRAIN and self.state[self.training[job.training.dir]] == FAILED:
                self._fail(job, skipped(job))
                continue
            if job not in self._checked:
                self._checked.add(job)
                if job_done(job, self.cfg):
                    self.state[job] = DONE
                    self.show.line(f"done already: {job.label}")
                    continue
            if len(self.executor.running) >= self.at_once or self.executor.received:
                continue
            cmd = job_command(job, self.cfg)
            try:
                self.executor.start(job, cmd)
            except OSError as e:
                self._fail(job, f"{job.label}: cannot start {cmd[0]}: {e}")
                continue
            self.state[job], self._started[job] = RUNNING, time.monotonic()
            self.started += 1
            resuming = " (resuming)" if "resume=true" in cmd else ""
            self.show.line(f"start:  {job.label}{resuming}; output: {job.log}")

    def _fail(self, job: Job, why: str) -> None:
        self.state[job] = FAILED
        self.failures.append(why)
        self.show.line(f"FAILED: {why}")

    def _ended(self, job: Job, rc: int) -> None:
        took = time.monotonic() - self._started.pop(job)
        self.seconds[job.kind] = self.seconds.get(job.kind, 0.0) + took
        why = job_failure(job, rc, self.cfg)
        if why is None:
            self.state[job] = DONE
            self.show.line(f"done:   {job.label} in {duration(took)}")
        elif self.executor.received:  # stopped by the signal: the next reproduction resumes it
            self.state[job] = LEFT
            self.show.line(f"stopped: {job.label} ({exit_text(rc)}); output: {job.log}")
        else:
            self._fail(job, why)

    def progress(self) -> str:
        """The progress line: jobs done, running, left, and the trainings' time left."""
        n = {s: sum(v == s for v in self.state.values()) for s in (LEFT, RUNNING, DONE, FAILED)}
        failed = f" ({n[FAILED]} failed)" if n[FAILED] else ""
        if time.monotonic() - self._eta_at >= ESTIMATE_EVERY:
            runs = []
            for j in self.jobs:
                if j.kind == TRAIN:
                    done = self.state[j] in (DONE, FAILED)
                    if not self._states.get(j, (False, None))[0]:  # read once when done
                        self._states[j] = (done, run_state(j.training.dir))
                    runs.append((j.training.row, done, self._states[j][1]))
            self._eta, self._eta_at = time_left(runs, self.at_once), time.monotonic()
        return (f"progress after {duration(time.monotonic() - self._t0)}: "
                f"{n[DONE] + n[FAILED]} done{failed}, {n[RUNNING]} running, {n[LEFT]} left; "
                + eta_text(*self._eta))
