"""executor=local: the jobs as child processes of reproduce on this machine, each on the
GPU running the fewest (where the trainings run on CUDA), owned: no child outlives
reproduce (short of SIGKILL)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from typing import Any

from odenet.reproduce.executor import Executor
from odenet.reproduce.jobs import Job
from odenet.reproduce.plan import ReproduceConfig, training_device
from odenet.run import directory as rundir


def child_gpus(cfg: ReproduceConfig) -> list[str | None]:
    """The GPUs the children train on, as each child's CUDA_VISIBLE_DEVICES names them:
    [] on the CPU; [None] for one GPU (the child's own device= picks it); else one name
    per GPU this process sees (its own CUDA_VISIBLE_DEVICES, if set, names them)."""
    device = training_device(cfg)
    if device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():  # auto: the CPU; cuda: each child says it is missing
        return []
    count = torch.cuda.device_count()
    if device.startswith("cuda:") or count == 1:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",")[:count] if visible else [str(i) for i in range(count)]
    return [name.strip() for name in names]


class GpuSlots:
    """Which GPU the next child gets: the one running the fewest children."""

    def __init__(self, gpus: list[str | None]):
        self.running: dict[str | None, int] = {g: 0 for g in gpus}
        self.of: dict[Any, str | None] = {}

    def take(self, job: Any) -> dict[str, str]:
        """The environment the job's child starts with (CUDA_VISIBLE_DEVICES, or none)."""
        if not self.running:
            return {}
        gpu = min(self.running, key=self.running.__getitem__)
        self.running[gpu] += 1
        self.of[job] = gpu
        return {} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu}

    def give_back(self, job: Any) -> None:
        if job in self.of:
            self.running[self.of.pop(job)] -= 1


class LocalExecutor(Executor):
    """The children, each in a process group of its own, so a terminal's Ctrl-C reaches
    only reproduce, which passes it on once: a shared group would deliver it twice."""

    def __init__(self, gpus: list[str | None] = ()) -> None:
        super().__init__()
        self.gpus = GpuSlots(list(gpus))
        self._files: dict[Job, Any] = {}  # the open log of each running child

    def start(self, job: Job, cmd: list[str]) -> None:
        """Starts the job's child, its output appended to job.log, on the GPU running the
        fewest; OSError if it cannot."""
        job.log.parent.mkdir(parents=True, exist_ok=True)
        f = open(job.log, "a", encoding="utf-8")  # noqa: SIM115 (closed in exited/reap)
        try:
            f.write(f"\n$ {shlex.join(cmd)}\n")
            f.flush()
            # start_new_session: its own process group (see the class), portable to 3.10;
            # only when reproduce passes signals on (else the terminal's must reach it)
            # PARENT_PID: the child stops (and checkpoints) should reproduce die unseen
            env = {**os.environ, **self.gpus.take(job), rundir.PARENT_PID: str(os.getpid())}
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=bool(self._old))
        except BaseException:
            self.gpus.give_back(job)
            f.close()
            raise
        self._add(job, proc)
        self._files[job] = f

    def _send(self, job: Job, signum: int) -> None:
        proc = self.running[job]
        if proc.poll() is not None:
            return
        try:
            if self._old:  # its own process group: what it started gets the signal too
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
        except ProcessLookupError:  # it has just exited
            pass

    def exited(self) -> list[tuple[Job, int]]:
        """The children that have exited since the last call, with their exit codes."""
        done = [(j, p.returncode) for j, p in list(self.running.items()) if p.poll() is not None]
        for job, _ in done:
            self._remove(job)
            self._files.pop(job).close()
            self.gpus.give_back(job)
        return done

    def reap(self) -> None:
        """Children still running here mean reproduce itself failed: stop them, never
        orphan them (SIGTERM: time to checkpoint; SIGKILL after a minute)."""
        self.busy = True  # a signal now is noted, not raised: they are being stopped
        for job in self.running:
            self._send(job, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for job, proc in self.running.items():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self._send(job, signal.SIGKILL)
                proc.wait()
        self.exited()
