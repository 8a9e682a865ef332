"""executor=slurm | submitit_local: each job a submitit job (a SLURM job, or a process of
submitit's on this machine) that runs the job's `odenet` command and returns its exit
code; submitit is imported here only (the `launchers` extra)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from odenet.config.errors import ConfigError
from odenet.reproduce.executor import Executor
from odenet.reproduce.jobs import Job
from odenet.reproduce.plan import ReproduceConfig
from odenet.run import directory as rundir

# what a job is sent: SIGTERM (submitit's local controller passes on no other); SLURM's
# notice of the time limit, SIGUSR2, counts as one
NOTICE = getattr(signal, "SIGUSR2", signal.SIGTERM)
# signals a terminal sends its whole foreground group: submitit_local's processes start
# with them ignored, as reproduce passes each signal on once itself
TERMINAL = {signal.SIGINT, signal.SIGHUP} if hasattr(signal, "SIGHUP") else {signal.SIGINT}
REAP_SECONDS = 60  # a stopped job's time to checkpoint before it is cancelled


def run_logged(cmd: list[str], log: str) -> int:
    """On the job's node: ``cmd`` with its output appended to ``log``; its exit code (a
    signal's: negative). The first SIGTERM (or SIGUSR2) to this process reaches the
    command as SIGTERM (`odenet train` checkpoints and exits), any later one as SIGINT
    (it stops at once, as on a second Ctrl-C); the command also stops, checkpointing,
    should this process die unseen."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINAL)  # blocked by terminal_ignored
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        env = {**os.environ, rundir.PARENT_PID: str(os.getpid())}
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        sent: list[int] = []

        def forward(signum: int, frame: Any) -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if sent else signal.SIGTERM)
                sent.append(signum)

        old = {s: signal.signal(s, forward) for s in {signal.SIGTERM, NOTICE}}
        try:
            return proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if proc.poll() is None:  # this process failed: never leave the command behind
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def terminal_ignored() -> Iterator[None]:
    """The processes started within ignore the terminal's signals. Here they are blocked
    meanwhile, not ignored: one that comes is handled after, not lost."""
    signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in TERMINAL}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINAL)


def import_submitit(executor: str) -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"executor={executor} needs submitit, which is not installed: "
                          "pip install 'odenet[launchers]', or executor=local") from None
    return submitit


def submitit_parameters(cfg: ReproduceConfig) -> dict[str, Any]:
    """The settings under slurm: as submitit.AutoExecutor's parameters."""
    s = cfg.slurm
    params: dict[str, Any] = {"timeout_min": s.timeout_min, "gpus_per_node": s.gpus_per_node}
    if cfg.executor == "submitit_local":
        return params
    params["cpus_per_task"] = s.cpus_per_task or cfg.threads or 1
    if s.mem_gb is not None:
        params["mem_gb"] = s.mem_gb
    if s.partition:
        params["slurm_partition"] = s.partition
    if s.additional_parameters:
        params["slurm_additional_parameters"] = dict(s.additional_parameters)
    return params


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class SubmititExecutor(Executor):
    """Jobs submitted through submitit.AutoExecutor (SLURM, or submitit's LocalExecutor),
    its files under slurm.folder (default ROOT/.submitit). A signal that stops reproduce
    reaches each running job once, as SIGTERM (SLURM: scancel --signal; a pending job is
    cancelled): the job's `odenet` command checkpoints and exits; a second signal stops
    it at once."""

    def __init__(self, cfg: ReproduceConfig) -> None:
        super().__init__()
        submitit = import_submitit(cfg.executor)
        self.cluster = "slurm" if cfg.executor == "slurm" else "local"
        folder = Path(cfg.slurm.folder or Path(cfg.root or ".") / ".submitit")
        try:
            self.pool = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster)
            self.pool.update_parameters(**submitit_parameters(cfg))
        except Exception as e:  # e.g. no SLURM on this machine, a parameter it refuses
            raise ConfigError(f"executor={cfg.executor}: submitit refused: "
                              f"{first_line(e)}") from None

    def start(self, job: Job, cmd: list[str]) -> None:
        """Submits the job; OSError if submitit cannot."""
        job.log.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.cluster == "slurm":
                self.pool.update_parameters(name=f"odenet {job.label}")
                handle = self.pool.submit(run_logged, cmd, str(job.log))
            else:
                with terminal_ignored():
                    handle = self.pool.submit(run_logged, cmd, str(job.log))
        except Exception as e:  # sbatch's refusals come as several exception types
            raise OSError(f"submitit: {first_line(e)}") from e
        self._add(job, handle)

    def exited(self) -> list[tuple[Job, int]]:
        done = [job for job, handle in list(self.running.items()) if handle.done()]
        return [(job, self._exit_code(job, self._remove(job))) for job in done]

    def _exit_code(self, job: Job, handle: Any) -> int:
        """The command's exit code; 1, noted in job.log, for a job that returned none
        (cancelled, out of time, its node lost)."""
        try:
            return int(handle.result())
        except Exception as e:
            why = first_line(e)
            with open(job.log, "a", encoding="utf-8") as f:
                f.write(f"\nsubmitit job {handle.job_id} ended without an exit code: {why}; "
                        f"its logs: {handle.paths.stdout}, {handle.paths.stderr}\n")
            return 1

    def _send(self, job: Job, signum: int) -> None:
        """SIGTERM, whatever reproduce received (see run_logged)."""
        handle = self.running[job]
        if self.cluster == "local":  # its controller passes SIGTERM on to the job
            process = getattr(handle, "_process", None)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
            return
        if handle.state in ("PENDING", "REQUEUED"):  # not started: nothing to checkpoint
            handle.cancel(check=False)
            return
        subprocess.run(["scancel", "--signal", "TERM", handle.job_id],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    def reap(self) -> None:
        """Jobs still running mean reproduce itself failed: SIGTERM (time to checkpoint),
        cancelled (submitit_local: killed) after a minute."""
        self.busy = True
        for job in self.running:
            self._send(job, signal.SIGTERM)
        deadline = time.monotonic() + REAP_SECONDS
        while self.running and time.monotonic() < deadline:
            self.exited()
            time.sleep(0.5)
        for handle in self.running.values():
            process = getattr(handle, "_process", None)
            if self.cluster == "local" and process is not None:
                process.kill()  # its controller ignores the SIGINT of submitit's cancel
            else:
                handle.cancel(check=False)
        self.running.clear()
        self._sent.clear()
