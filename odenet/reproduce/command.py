"""`odenet reproduce experiment=quick|table1|paper`: Table 1 and Figure 3 from one command.

The plan (which models, seeds, tolerances, sweeps, the order) lives in
``configs/reproduce.yaml``. Steps, each skipped when already done, so an interrupted
reproduction continues:

1. Table 1 runs: ``odenet train experiment=E model=M seed=S hydra.run.dir=ROOT/table/M_seedS``
   (a separate process each, the same code path as a user's ``odenet train``), and the
   plan's variants (a model trained another way, e.g. ODE-Net with checkpointed
   gradients: ``ROOT/table/NAME_seedS``). A run whose metrics.json says ``finished`` is
   skipped; one with a checkpoint is resumed (``resume=true``).
2. ``odenet evaluate`` on the ODE-Net checkpoint (Figure 3 a, b), unless its
   evaluation.json already covers the plan's tolerances; ``odenet gradients`` on every
   Table 1 run with an ODE block at its own tolerance (Table 1's gradient error), unless
   its gradients.json already measured it. Each starts once its training has finished.
3. Short tolerance sweeps (Figure 3 c per solver: NFE-F vs NFE-B; memory vs NFE), as
   more runs (with the first seed, or every seed: ``seeds: all``).
4. ``table`` and ``figures`` into ``outputs/report/<stamp>/`` and a ``report.md`` that
   embeds them, once everything else is done.

Each invocation that runs the plan appends its wall time to ``ROOT/wall.csv`` (start,
end, seconds, how it ended), so a reproduction resumed across sessions reports its
parts and their sum.

The children run ``jobs`` at once (default: one per usable core; where the trainings run
on CUDA, ``jobs_per_gpu`` per GPU, each child on the GPU running the fewest), each with
``threads=T`` (default 1), the trainings in the plan's order (the longest first); each
child's output goes to its run directory (train.out, evaluate.out, gradients.out); the
terminal shows a line per child and one progress line with the time left.

Where the children run: ``executor=local`` (default: child processes here, as above),
``executor=slurm`` (each a SLURM job through submitit, sized by the ``slurm.`` settings:
partition, timeout_min, gpus_per_node, cpus_per_task, mem_gb, additional_parameters) or
``executor=submitit_local`` (submitit's processes on this machine): the same lines, the
same resume, the same report.

Ctrl-C or SIGTERM: every running child gets the signal (once) and checkpoints, reproduce
starts nothing more, waits for them, says how to continue and exits 130 / 143; no child
outlives it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import signal
import sys
import time
from pathlib import Path

from odenet.config.errors import ConfigError
from odenet.report.runs import ReportError
from odenet.reproduce.done import job_done
from odenet.reproduce.executor import (
    Executor,
    Interrupted,
    count_reason,
    job_count,
    job_gpus,
    make_executor,
)
from odenet.reproduce.jobs import TRAIN, Job, Training, job_command, plan_jobs, plan_trainings
from odenet.reproduce.plan import PLAN_FILE, ReproduceConfig, load_config
from odenet.reproduce.scheduling import JobQueue
from odenet.reproduce.status import Show
from odenet.reproduce.wall import WALL, parts_line, read_parts, record_part, utc_now
from odenet.run import directory as rundir

# one invocation runs a root at a time: its children's run locks, wall.csv (read at the
# start, written at the end) and the report are its alone (ROOT/.lock, as a run's)
ROOT_IN_USE = ("root={out} is held by another odenet reproduce (pid {pid}): wait for it to "
               "end (tail --pid={pid} -f /dev/null) and run again, or choose another root=")


def machine_line() -> str:
    try:
        import torch

        tv = torch.__version__
        dev = (f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
               else "CPU only")
    except Exception:  # torch missing is not this function's problem
        tv, dev = "?", "?"
    cpu = platform.processor() or platform.machine()
    return (f"{platform.node() or 'this machine'}: {os.cpu_count()} CPU cores ({cpu}), "
            f"{dev}, Python {platform.python_version()}, torch {tv}")


def build_report(cfg: ReproduceConfig, trainings: list[Training], report_dir: Path,
                 command: str, timings: dict[str, float], failures: list[str]) -> Path:
    """table + figures + report.md in report_dir; returns report.md's path."""
    from odenet.report.markdown import Invocation
    from odenet.report.markdown import write_report as write_markdown

    parts = read_parts(Path(cfg.root or "."))
    plan = cfg.plans[cfg.experiment]
    sweeps = [(sw.figure, [t.dir for t in trainings if t.group == sw.name])
              for sw in (plan.sweeps if cfg.sweeps else [])]
    invocation = Invocation(command, cfg.experiment, machine_line(), cfg.root, timings,
                            f"{parts_line(parts)} (`{WALL}` there)" if parts else None,
                            failures)
    return write_markdown([t.dir for t in trainings if t.group == "table"], sweeps,
                          report_dir, invocation)


def reproduce(cfg: ReproduceConfig, command: str, log=print) -> int:
    """Run the plan; 0 when every step completed, 1 otherwise. A signal (SIGINT, SIGTERM,
    SIGHUP) stops the running jobs first, then raises Interrupted. ConfigError when
    another invocation holds the root (a dry run does not hold it) or the executor cannot
    run."""
    cfg.root = str(Path(cfg.root or f"outputs/reproduce/{cfg.experiment}"))
    gpus = job_gpus(cfg)
    if cfg.dry_run:  # holds no root, starts nothing; its signals end it as a run's would
        with Executor():
            return _dry_run(cfg, log, gpus)
    executor = make_executor(cfg, gpus)
    with rundir.held(cfg.root, ROOT_IN_USE), executor:
        return _reproduce(cfg, command, log, executor, gpus)


def plan_lines(cfg: ReproduceConfig, jobs: list[Job], at_once: int,
               gpus: list[str | None] = ()) -> list[str]:
    """How the plan runs: its jobs and threads, the order, where the children write."""
    plan = cfg.plans[cfg.experiment]
    trainings = [j for j in jobs if j.kind == TRAIN]
    done = sum(j.training.finished for j in trainings)
    threads = f"threads={cfg.threads}" if cfg.threads else "the child's own threads"
    rows = list(plan.models) + [v.name for v in plan.variants]
    first = [r for r in plan.order if r in rows]
    order = (f"Table 1 rows {', '.join(first)} (the longest first)"
             + (", then the other rows" if len(first) < len(rows) else "") if first
             else "Table 1 rows in the plan's order")
    return [f"odenet reproduce: experiment={cfg.experiment}, {len(trainings)} runs under "
            f"{cfg.root} ({done} already finished) and {len(jobs) - len(trainings)} "
            "evaluations of their checkpoints",
            f"{at_once} job(s) at once ({count_reason(cfg, list(gpus))}), {threads} each "
            "(unless train_args set threads); trainings start in the order below: "
            f"{order}, then the sweeps; the evaluations start once their training has "
            "finished; the report comes last",
            "each child's output goes to its run directory: train.out, evaluate.out, "
            "gradients.out"]


def dry_run_line(job: Job, cfg: ReproduceConfig) -> str:
    if job_done(job, cfg):
        return f"{job.label}: done, skipped"
    after = "" if job.kind == TRAIN else \
        f" (once {job.training.group}/{job.training.name} is trained)"
    return f"{job.label}{after}: would run: {shlex.join(job_command(job, cfg))}"


def _report_dir(cfg: ReproduceConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return Path(cfg.report or f"outputs/report/{stamp}_{cfg.experiment}")


def _dry_run(cfg: ReproduceConfig, log, gpus: list[str | None]) -> int:
    trainings = plan_trainings(cfg, Path(cfg.root))
    jobs = plan_jobs(cfg, trainings)
    for line in plan_lines(cfg, jobs, job_count(cfg, gpus, len(jobs)), gpus):
        log(line)
    for k, job in enumerate(jobs, 1):
        log(f"[{k}/{len(jobs)}] {dry_run_line(job, cfg)}")
    log(f"dry run: nothing trained; the report would go to {_report_dir(cfg)}")
    return 0


def _reproduce(cfg: ReproduceConfig, command: str, log, executor: Executor,
               gpus: list[str | None]) -> int:
    root = Path(cfg.root)
    report_dir = _report_dir(cfg)
    trainings = plan_trainings(cfg, root)
    jobs = plan_jobs(cfg, trainings)
    n = job_count(cfg, gpus, len(jobs))
    for line in plan_lines(cfg, jobs, n, gpus):
        log(line)
    try:
        parts = read_parts(root)  # a broken record is refused now, not after hours of training
    except ReportError as e:
        log(f"odenet reproduce: error: {e}")
        return 1
    t0, started = time.perf_counter(), utc_now()
    show = Show(log, tty=log is print and sys.stdout.isatty())
    queue = JobQueue(cfg, jobs, n, executor, show)
    ended_by = "an error"
    try:
        queue.run()
        ended_by = (f"stopped by {signal.Signals(executor.received[0]).name}"
                    if executor.received else "ran to the report")
    finally:
        show.close()
        # the report's time (seconds) is left out: the part must be on record before it
        record_part(root, parts, started, time.perf_counter() - t0, queue.started, ended_by)
    if executor.received:
        raise Interrupted(executor.received[0], queue.where or None)
    timings = {f"all steps ({n} jobs at once)": time.perf_counter() - t0}
    timings.update({f"{k} (summed over the children)": v for k, v in queue.seconds.items()})
    return _report(cfg, trainings, report_dir, command, timings, queue.failures, log)


def _report(cfg: ReproduceConfig, trainings: list[Training], report_dir: Path, command: str,
            timings: dict[str, float], failures: list[str], log) -> int:
    try:
        path = build_report(cfg, trainings, report_dir, command, timings, failures)
    except ReportError as e:
        log(f"odenet reproduce: error: {e}")
        return 1
    log(f"odenet reproduce: report -> {path}")
    if failures:
        log(f"odenet reproduce: {len(failures)} step(s) did not complete; rerun the same "
            "command to continue: " + "; ".join(failures))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + f"\n\nSettings: configs/{PLAN_FILE} (key=value overrides).")
        return 0
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"odenet reproduce: error: {e}", file=sys.stderr)
        return 2
    command = shlex.join(["odenet", "reproduce", *argv])
    try:
        return reproduce(cfg, command)
    except ConfigError as e:  # e.g. the root is held by another invocation
        print(f"odenet reproduce: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        during = f" during {e.where}" if e.where else ""
        print(f"odenet reproduce: stopped by {e}{during}; to continue, run the same command "
              f"again (finished runs are skipped, interrupted ones resume): {command}",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # before the signal handlers were set
        print(f"odenet reproduce: interrupted; to continue, run the same command again: "
              f"{command}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # its output closed, e.g. `odenet reproduce dry_run=true | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
