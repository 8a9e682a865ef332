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

Ctrl-C or SIGTERM: every running child gets the signal (once) and checkpoints, reproduce
starts nothing more, waits for them, says how to continue and exits 130 / 143; no child
outlives it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import itertools
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from odenet.config.errors import ConfigError
from odenet.config.model_registry import MODELS, models_of
from odenet.report.claims import measured_claims, paper_family_verdict  # noqa: F401 (its API)
from odenet.report.runs import (
    EVALUATION,
    METRICS,
    ReportError,
    adjoint_model,
    fmt_tol,
)
from odenet.run import directory as rundir
from odenet.run import record
from odenet.run.files import write_atomic, write_csv
from odenet.training.openmp import usable_cores

PLAN_FILE = "reproduce.yaml"


# ---------------------------------------------------------------- configuration
@dataclass
class EvalPlan:
    model: str = field(default_factory=adjoint_model)
    tolerances: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4, 1e-5])
    overrides: list[str] = field(default_factory=list)


@dataclass
class SweepPlan:
    name: str = "sweep"
    figure: str = "fig3c"
    model: str = field(default_factory=adjoint_model)
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    # the seeds it trains: null: the first of the Table 1 seeds; all: every one; or a list
    seeds: Any = None


@dataclass
class VariantPlan:
    """A Table 1 row of a model trained another way (e.g. other gradients)."""

    name: str = "variant"  # its run directories: table/<name>_seed<S>
    model: str = field(default_factory=adjoint_model)
    overrides: list[str] = field(default_factory=list)


@dataclass
class GradientsPlan:
    overrides: list[str] = field(default_factory=list)  # of `odenet gradients`


@dataclass
class Plan:
    seeds: list[int] = field(default_factory=lambda: [0])
    models: list[str] = field(default_factory=lambda: models_of(record.CLASSIFY))
    train_overrides: list[str] = field(default_factory=list)
    variants: list[VariantPlan] = field(default_factory=list)
    evaluate: EvalPlan = field(default_factory=EvalPlan)
    gradients: GradientsPlan | None = None  # None: no gradient-error column
    sweeps: list[SweepPlan] = field(default_factory=list)
    # Table 1 rows (models, variant names) whose trainings start first, the longest first;
    # the other rows follow in the plan's order, then the sweeps. Names of no row are
    # passed over (e.g. after models=[resnet] variants=[])
    order: list[str] = field(default_factory=list)


@dataclass
class ReproduceConfig:
    experiment: str = "quick"
    seeds: list[int] | None = None
    root: str | None = None
    report: str | None = None
    dry_run: bool = False
    sweeps: bool = True
    train_args: list[str] = field(default_factory=list)
    jobs: int | None = None  # children at once; None: per GPU (on CUDA) or per usable core
    jobs_per_gpu: int = 1  # children at once per GPU when the trainings run on CUDA
    threads: int | None = 1  # threads=T of each child; None: the child's own default
    plans: dict[str, Plan] = field(default_factory=dict)


def load_config(argv: list[str], plan_file: str | os.PathLike | None = None) -> ReproduceConfig:
    """configs/reproduce.yaml merged with ``key=value`` overrides, validated."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for a in argv:
        if "=" not in a or a.startswith("-"):
            raise ConfigError(f"bad argument {a!r}: expected key=value overrides such as "
                              "experiment=quick, seeds=[0,1], dry_run=true")
    if plan_file is None:
        text = (resources.files("odenet.configs") / PLAN_FILE).read_text(encoding="utf-8")
        base = OmegaConf.create(text)
    else:
        base = OmegaConf.load(plan_file)
    try:
        schema = OmegaConf.structured(ReproduceConfig)
        cfg = OmegaConf.merge(schema, base, OmegaConf.from_dotlist(argv))
        out: ReproduceConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"bad reproduce setting{f' {key}' if key else ''}: {msg}") from None
    _check(out)
    return out


def _check(out: ReproduceConfig) -> None:
    """ConfigError (one line) for settings or a plan that cannot run."""
    for key in ("jobs", "threads"):
        v = getattr(out, key)
        if v is not None and v < 1:
            raise ConfigError(f"{key}={v}: must be a positive integer or null (jobs: "
                              f"{usable_cores()}, the cores this process may use; threads: "
                              "the child's own default)")
    if out.jobs_per_gpu < 1:
        raise ConfigError(f"jobs_per_gpu={out.jobs_per_gpu}: must be a positive integer "
                          "(children at once on each GPU)")
    if out.experiment not in out.plans:
        raise ConfigError(f"experiment={out.experiment!r} has no plan; accepted: "
                          f"{', '.join(out.plans)} (configs/{PLAN_FILE})")
    seeds = out.seeds if out.seeds is not None else out.plans[out.experiment].seeds
    if not seeds:
        raise ConfigError("seeds=[] trains nothing; give at least one seed, e.g. seeds=[0]")
    plan = out.plans[out.experiment]
    for sw in plan.sweeps:
        if sw.figure not in ("fig3c", "memory"):
            raise ConfigError(f"sweep {sw.name!r}: figure={sw.figure!r}; accepted: fig3c, memory")
        sweep_seeds(sw, seeds)
    names = list(plan.models) + [v.name for v in plan.variants]
    for model in list(plan.models) + [v.model for v in plan.variants]:
        if model not in MODELS:
            raise ConfigError(f"plan {out.experiment!r}: model {model!r} is not a model; "
                              f"accepted: {', '.join(MODELS)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"plan {out.experiment!r}: Table 1 row names must differ; "
                          f"repeated: {', '.join(dup)}")


def training_device(cfg: ReproduceConfig) -> str:
    """The device the trainings ask for: the last device= of the plan's train_overrides
    and train_args, else the trainings' default, auto."""
    plan = cfg.plans[cfg.experiment]
    device = "auto"
    for arg in [*plan.train_overrides, *cfg.train_args]:
        if arg.startswith("device="):
            device = arg.split("=", 1)[1]
    return device


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


def job_count(cfg: ReproduceConfig, gpus: list[str | None]) -> int:
    """Children at once: jobs=, else jobs_per_gpu per GPU on CUDA (several trainings on
    one GPU contend: their seconds per iteration would measure it), else one per core."""
    return cfg.jobs or (len(gpus) * cfg.jobs_per_gpu if gpus else usable_cores())


class GpuSlots:
    """Which GPU the next child gets: the one running the fewest children."""

    def __init__(self, gpus: list[str | None]):
        self.running: dict[str | None, int] = {g: 0 for g in gpus}
        self.of: dict[Any, str | None] = {}

    def take(self, task: Any) -> dict[str, str]:
        """The environment the task's child starts with (CUDA_VISIBLE_DEVICES, or none)."""
        if not self.running:
            return {}
        gpu = min(self.running, key=self.running.__getitem__)
        self.running[gpu] += 1
        self.of[task] = gpu
        return {} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu}

    def give_back(self, task: Any) -> None:
        if task in self.of:
            self.running[self.of.pop(task)] -= 1


def sweep_seeds(sw: SweepPlan, seeds: list[int]) -> list[int]:
    """The seeds a sweep trains: null: the first of ``seeds`` (the Table 1 seeds); "all":
    every one of them; a list: its own."""
    given = sw.seeds
    if given is None:
        return list(seeds[:1])
    if given == "all":
        return list(seeds)
    if isinstance(given, int) and not isinstance(given, bool):
        return [given]
    if isinstance(given, list) and given and all(
            isinstance(x, int) and not isinstance(x, bool) for x in given):
        return list(given)
    raise ConfigError(f"sweep {sw.name!r}: seeds={given!r}; accepted: null (the first "
                      "seed), all (every seed), or a list of integers such as [0, 1]")


# ---------------------------------------------------------------- the jobs
@dataclass
class Job:
    """One training run of the plan."""

    name: str          # unique within the reproduction; also its directory name
    group: str         # table | the sweep's name
    overrides: list[str]
    dir: Path
    model: str = ""
    row: str = ""      # its Table 1 row or sweep: runs of one row cost about the same

    def status(self) -> str | None:
        """Its metrics.json's status; None where there is none (or none that validates)."""
        try:
            return record.read_metrics(self.dir / METRICS)["status"]
        except record.RecordError:
            return None

    @property
    def finished(self) -> bool:
        return self.status() == "finished"


def _value(v) -> str:
    if isinstance(v, float):
        return fmt_tol(v) if v < 0.1 else f"{v:g}"
    return str(v)


def plan_jobs(cfg: ReproduceConfig, root: Path) -> list[Job]:
    """Every training of the plan, in the order they start: the Table 1 rows named by the
    plan's ``order`` first (the longest first), the other rows, then the sweeps."""
    plan = cfg.plans[cfg.experiment]
    seeds = cfg.seeds if cfg.seeds is not None else plan.seeds
    base = [f"experiment={cfg.experiment}"]
    jobs = []
    rows = [VariantPlan(m, m, []) for m in plan.models] + list(plan.variants)
    rank = {name: i for i, name in enumerate(plan.order)}
    rows.sort(key=lambda r: rank.get(r.name, len(rank)))  # stable: the rest keep their order
    for row, seed in itertools.product(rows, seeds):
        name = f"{row.name}_seed{seed}"
        jobs.append(Job(name, "table",
                        base + [f"model={row.model}", f"seed={seed}"]
                        + list(plan.train_overrides) + list(row.overrides)
                        + list(cfg.train_args), root / "table" / name, row.model, row.name))
    if cfg.sweeps:
        for sw in plan.sweeps:
            keys = list(sw.grid)
            for values, seed in itertools.product(
                    itertools.product(*(sw.grid[k] for k in keys)), sweep_seeds(sw, seeds)):
                sets = [f"{k}={_value(v)}" for k, v in zip(keys, values)]
                tag = "_".join(f"{k.rsplit('.', 1)[-1]}{_value(v)}" for k, v in zip(keys, values))
                name = f"{sw.model}_{tag or 'default'}_seed{seed}"
                jobs.append(Job(name, sw.name,
                                base + [f"model={sw.model}", f"seed={seed}"]
                                + list(sw.overrides) + sets + list(cfg.train_args),
                                root / sw.name / name, sw.model, sw.name))
    for job in jobs:
        job.overrides += _threads(cfg, job.overrides)
    return jobs


def _threads(cfg: ReproduceConfig, args: list[str]) -> list[str]:
    """[threads=T] for a child whose arguments do not set its threads already."""
    if cfg.threads is None or any(a.startswith("threads=") for a in args):
        return []
    return [f"threads={cfg.threads}"]


def odenet_command() -> list[str]:
    """How to call the `odenet` CLI in a child process: the venv's console script, else
    the same entry point through this interpreter."""
    exe = Path(sys.executable).with_name("odenet")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from odenet.cli import main; sys.exit(main())"]


def train_command(job: Job) -> list[str]:
    cmd = odenet_command() + ["train", *job.overrides, f"hydra.run.dir={job.dir}"]
    if (job.dir / record.CHECKPOINT_FILE).exists():
        cmd.append("resume=true")
    elif rundir.holds_run(job.dir):  # a run that failed before its first checkpoint
        cmd.append("overwrite=true")
    return cmd


# ---------------------------------------------------------------- the tasks
# What a task runs: its `odenet` command. A training comes first; the evaluation and the
# gradient error work on its checkpoint, so they start once it has finished.
TRAIN, EVALUATE, GRADIENTS = "train", "evaluate", "gradients"


@dataclass(eq=False)
class Task:
    """One child process of the plan: a training, or work on a finished training."""

    kind: str  # TRAIN | EVALUATE | GRADIENTS
    job: Job   # the training it is, or whose checkpoint it works on

    @property
    def label(self) -> str:
        where = f"{self.job.group}/{self.job.name}"
        return where if self.kind == TRAIN else f"{self.kind} {where}"

    @property
    def log(self) -> Path:
        """The child's stdout and stderr: <run directory>/<kind>.out, appended to."""
        return self.job.dir / f"{self.kind}.out"


def plan_tasks(cfg: ReproduceConfig, jobs: list[Job]) -> list[Task]:
    """The trainings, then the evaluation of the plan's ODE-Net (Figure 3 a, b: the first
    seed of its own row) and the gradient error of every Table 1 run with an ODE block."""
    plan = cfg.plans[cfg.experiment]
    tasks = [Task(TRAIN, j) for j in jobs]
    ev = [j for j in jobs if j.group == "table" and j.model == plan.evaluate.model]
    ev = [j for j in ev if j.row == plan.evaluate.model] or ev
    tasks += [Task(EVALUATE, ev[0])] if ev else []
    if plan.gradients is not None:
        tasks += [Task(GRADIENTS, j) for j in jobs
                  if j.group == "table" and MODELS[j.model].ode_block]
    return tasks


def task_command(task: Task, cfg: ReproduceConfig) -> list[str]:
    """The child's command line (a gradients task of an unfinished run: '<its rtol>')."""
    plan, job = cfg.plans[cfg.experiment], task.job
    ckpt = job.dir / record.CHECKPOINT_FILE
    if task.kind == TRAIN:
        return train_command(job)
    if task.kind == EVALUATE:
        ev = plan.evaluate
        tols = "[" + ",".join(f"{t:g}" for t in ev.tolerances) + "]"
        cmd = odenet_command() + ["evaluate", f"checkpoint={ckpt}", f"tolerances={tols}",
                                 *ev.overrides]
    else:
        metrics = record.read_metrics(job.dir / METRICS) if job.finished else None
        cmd = gradients_command(ckpt, metrics, plan.gradients)
    return cmd + _threads(cfg, cmd)


def task_done(task: Task, cfg: ReproduceConfig) -> bool:
    """Done already, by this or an earlier reproduction: nothing to run."""
    job = task.job
    if not job.finished:
        return False
    if task.kind == EVALUATE:
        ev = cfg.plans[cfg.experiment].evaluate
        return evaluation_done(job.dir / EVALUATION, job.dir / record.CHECKPOINT_FILE,
                               ev.tolerances)
    if task.kind == GRADIENTS:
        return gradients_done(job.dir, record.read_metrics(job.dir / METRICS))
    return True


def task_failure(task: Task, rc: int, cfg: ReproduceConfig) -> str | None:
    """Why the task, whose child exited with ``rc``, did not do its work; None if it did."""
    job, ckpt = task.job, task.job.dir / record.CHECKPOINT_FILE
    if task.kind == TRAIN:
        if rc == 0 and job.finished:
            return None
        why = exit_text(rc) if rc else f"status {job.status() or 'unknown'}"
        return f"{job.group}/{job.name} did not finish ({why}, see {task.log})"
    if task.kind == EVALUATE:
        return None if rc == 0 else \
            f"odenet evaluate failed on {ckpt} ({exit_text(rc)}, see {task.log})"
    if rc == 0 and task_done(task, cfg):
        return None
    return (f"odenet gradients did not measure {job.name}'s own gradient ({ckpt}: "
            f"{exit_text(rc)}, see {task.log})")


def exit_text(rc: int) -> str:
    """'exit 1', or 'killed by SIGKILL' for a child a signal ended (e.g. out of memory)."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            pass
    return f"exit {rc}"


def skipped(task: Task) -> str:
    """The failure of work on a checkpoint whose training did not finish."""
    what = "evaluation" if task.kind == EVALUATE else "gradient error"
    return f"{what} skipped: {task.job.name} did not finish"


# ---------------------------------------------------------------- the children
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


class Children:
    """The reproduction's running children, owned: each signal that stops reproduce is
    passed on to every running child once (a second Ctrl-C once more: `odenet train` then
    stops at once, without a checkpoint); reproduce starts no child after one and waits
    for the running ones to checkpoint and exit; no child outlives reproduce (short of
    SIGKILL).

    Each child runs in a process group of its own, so a terminal's Ctrl-C reaches only
    reproduce, which passes it on once: a shared group would deliver it twice. The
    handler only notes a signal; the scheduling loop passes it on (`pass_signals`), so a
    signal that comes while a child starts or another signal is being passed on cannot
    reach a child twice."""

    def __init__(self) -> None:
        self.procs: dict[Task, subprocess.Popen] = {}
        self.received: list[int] = []  # the signals that came, in order
        self._sent: dict[int, int] = {}  # pid -> how many of `received` it has been sent
        self._files: dict[Task, Any] = {}  # the open log of each running child
        self.busy = False  # scheduling: signals are passed on, not raised
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Children:
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
        if not self.busy:  # no child runs (e.g. writing the report): stop now
            raise Interrupted(self.received[0])

    def start(self, task: Task, cmd: list[str], env: dict[str, str] | None = None) -> None:
        """Starts the task's child, its output appended to task.log, ``env`` added to its
        environment; OSError if it cannot."""
        task.log.parent.mkdir(parents=True, exist_ok=True)
        f = open(task.log, "a", encoding="utf-8")  # noqa: SIM115 (closed in exited/reap)
        try:
            f.write(f"\n$ {shlex.join(cmd)}\n")
            f.flush()
            # start_new_session: its own process group (see the class), portable to 3.10;
            # only when reproduce passes signals on (else the terminal's must reach it)
            # PARENT_PID: the child stops (and checkpoints) should reproduce die unseen
            env = {**os.environ, **(env or {}), rundir.PARENT_PID: str(os.getpid())}
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=bool(self._old))
        except BaseException:
            f.close()
            raise
        self.procs[task], self._files[task] = proc, f
        self._sent[proc.pid] = 0

    def pass_signals(self) -> None:
        """Sends every running child the signals it has not been sent yet."""
        for proc in list(self.procs.values()):
            while self._sent[proc.pid] < len(self.received):
                self._sent[proc.pid] += 1
                self._send(proc, FORWARD[self.received[self._sent[proc.pid] - 1]])

    def _send(self, proc: subprocess.Popen, signum: int) -> None:
        if proc.poll() is not None:
            return
        try:
            if self._old:  # its own process group: what it started gets the signal too
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
        except ProcessLookupError:  # it has just exited
            pass

    def exited(self) -> list[tuple[Task, int]]:
        """The children that have exited since the last call, with their exit codes."""
        done = [(t, p.returncode) for t, p in list(self.procs.items()) if p.poll() is not None]
        for task, _ in done:
            del self.procs[task]
            self._files.pop(task).close()
        return done

    def reap(self) -> None:
        """Children still running here mean reproduce itself failed: stop them, never
        orphan them (SIGTERM: time to checkpoint; SIGKILL after a minute)."""
        self.busy = True  # a signal now is noted, not raised: they are being stopped
        for proc in self.procs.values():
            self._send(proc, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self._send(proc, signal.SIGKILL)
                proc.wait()
        self.exited()


# ---------------------------------------------------------------- the schedule
# Defaults jobs = the usable cores, threads = 1, from `make bench-threads` on a 2-core AMD
# EPYC VM (docs/benchmarks.md, "Threads against processes"; ODE-Net trainings, images per
# second in all): one training at 2 threads 148, two trainings at 1 thread each 200 when idle; 55
# against 117 when another process keeps a core busy.
TICK = 0.1            # seconds between looks at the children
ESTIMATE_EVERY = 5.0  # seconds between readings of the runs' records for the time left
LEFT, RUNNING, DONE, FAILED = "left", "running", "done", "failed"


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


class Schedule:
    """Runs the tasks' children, at most ``jobs`` at once: the trainings in the plan's
    order, and the work on a checkpoint as soon as its training has finished (before any
    further training: it is short, and the report waits for it). What is done already is
    skipped; a failure is noted and the rest goes on (the next reproduction reruns it); a
    signal starts nothing more and waits for the running children."""

    def __init__(self, cfg: ReproduceConfig, tasks: list[Task], jobs: int,
                 children: Children, show: Show, gpus: list[str | None] = ()) -> None:
        self.cfg, self.tasks, self.jobs, self.children, self.show = cfg, tasks, jobs, children, show
        self.gpus = GpuSlots(list(gpus))
        self.state = {t: LEFT for t in tasks}
        self.training = {t.job.dir: t for t in tasks if t.kind == TRAIN}
        self.failures: list[str] = []
        self.started = 0                     # children started by this invocation
        self.seconds: dict[str, float] = {}  # per kind, summed over its children
        self.where: str | None = None        # what was running when a signal came
        self._started: dict[Task, float] = {}
        self._checked: set[Task] = set()     # looked for as done already
        self._states: dict[Task, tuple[bool, RunState | None]] = {}  # (done?, state)
        self._eta: tuple[float | None, int] = (None, 0)
        self._eta_at, self._t0 = -math.inf, time.monotonic()

    def run(self) -> None:
        ch = self.children
        ch.busy = True
        try:
            while True:
                if ch.received and self.where is None:
                    self.where = ", ".join(t.label for t in ch.procs)
                ch.pass_signals()
                for task, rc in ch.exited():
                    self._ended(task, rc)
                if not ch.received:
                    self._start()
                if not ch.procs and (ch.received or LEFT not in self.state.values()):
                    break
                self.show.progress(self.progress())
                time.sleep(TICK)
        finally:
            ch.busy = False
        self._eta_at = -math.inf  # estimated afresh
        self.show.progress(self.progress(), final=True)

    def _ready(self) -> list[Task]:
        """What may start now: work on finished trainings first, then the trainings."""
        left = [t for t in self.tasks if self.state[t] == LEFT]
        post = [t for t in left if t.kind != TRAIN
                and self.state[self.training[t.job.dir]] in (DONE, FAILED)]
        return post + [t for t in left if t.kind == TRAIN]

    def _start(self) -> None:
        for task in self._ready():
            if task.kind != TRAIN and self.state[self.training[task.job.dir]] == FAILED:
                self._fail(task, skipped(task))
                continue
            if task not in self._checked:
                self._checked.add(task)
                if task_done(task, self.cfg):
                    self.state[task] = DONE
                    self.show.line(f"done already: {task.label}")
                    continue
            if len(self.children.procs) >= self.jobs or self.children.received:
                continue
            cmd = task_command(task, self.cfg)
            try:
                self.children.start(task, cmd, self.gpus.take(task))
            except OSError as e:
                self.gpus.give_back(task)
                self._fail(task, f"{task.label}: cannot start {cmd[0]}: {e}")
                continue
            self.state[task], self._started[task] = RUNNING, time.monotonic()
            self.started += 1
            resuming = " (resuming)" if "resume=true" in cmd else ""
            self.show.line(f"start:  {task.label}{resuming}; output: {task.log}")

    def _fail(self, task: Task, why: str) -> None:
        self.state[task] = FAILED
        self.failures.append(why)
        self.show.line(f"FAILED: {why}")

    def _ended(self, task: Task, rc: int) -> None:
        self.gpus.give_back(task)
        took = time.monotonic() - self._started.pop(task)
        self.seconds[task.kind] = self.seconds.get(task.kind, 0.0) + took
        why = task_failure(task, rc, self.cfg)
        if why is None:
            self.state[task] = DONE
            self.show.line(f"done:   {task.label} in {duration(took)}")
        elif self.children.received:  # stopped by the signal: the next reproduction resumes it
            self.state[task] = LEFT
            self.show.line(f"stopped: {task.label} ({exit_text(rc)}); output: {task.log}")
        else:
            self._fail(task, why)

    def progress(self) -> str:
        """The progress line: tasks done, running, left, and the trainings' time left."""
        n = {s: sum(v == s for v in self.state.values()) for s in (LEFT, RUNNING, DONE, FAILED)}
        failed = f" ({n[FAILED]} failed)" if n[FAILED] else ""
        if time.monotonic() - self._eta_at >= ESTIMATE_EVERY:
            runs = []
            for t in self.tasks:
                if t.kind == TRAIN:
                    done = self.state[t] in (DONE, FAILED)
                    if not self._states.get(t, (False, None))[0]:  # read once when done
                        self._states[t] = (done, run_state(t.job.dir))
                    runs.append((t.job.row, done, self._states[t][1]))
            self._eta, self._eta_at = time_left(runs, self.jobs), time.monotonic()
        return (f"progress after {duration(time.monotonic() - self._t0)}: "
                f"{n[DONE] + n[FAILED]} done{failed}, {n[RUNNING]} running, {n[LEFT]} left; "
                + eta_text(*self._eta))


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


def gradients_command(ckpt: Path, metrics: dict | None, plan: GradientsPlan) -> list[str]:
    """`odenet gradients` at the run's own tolerance (rtol; its atol, as odenet gradients
    sets atol = rtol) — '<its rtol>' for a run not trained yet (a dry run)."""
    tol = f"{metrics['solver_rtol']:g}" if metrics else "<its rtol>"
    return odenet_command() + ["gradients", f"checkpoint={ckpt}", f"tolerances=[{tol}]",
                               *plan.overrides]


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


# ---------------------------------------------------------------- the report
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


# ---------------------------------------------------------------- wall time over invocations
WALL = "wall.csv"
WALL_FIELDS = ("started_utc", "ended_utc", "seconds", "children_started", "ended_by")


def record_part(root: Path, parts: list[dict], started: _dt.datetime, seconds: float,
                children: int, ended_by: str) -> None:
    """Writes ROOT/wall.csv anew (atomically): the earlier parts, then this invocation."""
    this = dict(zip(WALL_FIELDS, (started.isoformat(timespec="seconds"),
                                  _utc_now().isoformat(timespec="seconds"),
                                  f"{seconds:.1f}", str(children), ended_by), strict=True))
    write_csv(root / WALL, [*parts, this])


def read_parts(root: Path) -> list[dict]:
    """The invocations recorded in ROOT/wall.csv, oldest first ([] when none)."""
    path = root / WALL
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    bad = f"{path}: not a wall-time record; move it away to start a new one"
    if set(WALL_FIELDS) - set(reader.fieldnames or ()):
        raise ReportError(f"{bad} (expected the columns {', '.join(WALL_FIELDS)})")
    for k, row in enumerate(rows, 2):
        try:
            float(row["seconds"])
        except (TypeError, ValueError):
            raise ReportError(f"{bad} (line {k}: seconds={row['seconds']!r} is not a "
                              "number)") from None
    return rows


def parts_line(parts: list[dict]) -> str:
    """'2 invocations: 29m (stopped by SIGINT) + 1h24m (ran to the report) = 1h53m'."""
    total = sum(float(p["seconds"]) for p in parts)
    terms = " + ".join(f"{duration(float(p['seconds']))} ({p['ended_by']})" for p in parts)
    n = len(parts)
    return f"{n} invocation{'s' if n > 1 else ''}: {terms} = {duration(total)}"


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def write_report(cfg: ReproduceConfig, jobs: list[Job], report_dir: Path,
                 command: str, timings: dict[str, float], failures: list[str]) -> Path:
    """table + figures + report.md in report_dir; returns report.md's path."""
    from odenet.report.figure_registry import of_task
    from odenet.report.runs import load_runs
    from odenet.report.table import write_table

    table_dirs = [j.dir for j in jobs if j.group == "table" and (j.dir / METRICS).exists()]
    if not table_dirs:
        raise ReportError("no Table 1 run wrote metrics.json; nothing to report")
    root = Path(cfg.root or ".")  # the report's paths are relative to it
    parts = read_parts(root)
    table_runs, invalid = load_runs(table_dirs, base=root)
    res = write_table(table_runs, report_dir, [str(root / "table")], invalid)
    sweep_runs: dict[str, list] = {}
    plan = cfg.plans[cfg.experiment]
    for sw in plan.sweeps if cfg.sweeps else []:
        dirs = [j.dir for j in jobs if j.group == sw.name and (j.dir / METRICS).exists()]
        runs, bad = load_runs(dirs, base=root) if dirs else ([], [])
        sweep_runs.setdefault(sw.figure, []).extend(runs)
        invalid += bad
    # Each figure reads the Table 1 runs and the sweeps made for it; memory reads every
    # run (the fig3c sweep's ODE-Nets show the adjoint's flat memory across NFE beside
    # the growth of backprop through the solver)
    fig_runs = {f.name: table_runs + sweep_runs.get(f.name, []) for f in of_task(record.CLASSIFY)}
    fig_runs["memory"] = table_runs + [r for rs in sweep_runs.values() for r in rs]
    written, skipped = {}, {}
    for f in of_task(record.CLASSIFY):
        w, s = f.make(fig_runs[f.name], report_dir)
        written.update(w)
        skipped.update(s)

    md = ["# odenet: Table 1 and Figure 3 of Chen et al. (2018), reproduced\n",
          f"- Command: `{command}`",
          f"- Scale: `experiment={cfg.experiment}`"
          + (" (the paper's recipe: 160 epochs)" if cfg.experiment == "paper" else
             " (a compressed schedule, not the paper's 160 epochs: see "
             f"configs/experiment/{cfg.experiment}.yaml)"),
          f"- Machine: {machine_line()}",
          f"- Written: {_dt.datetime.now().isoformat(timespec='seconds')}; runs under "
          f"`{cfg.root}` (the paths below are relative to it)",
          "- Wall time of this invocation: " + ", ".join(
              f"{k} {v / 60:.1f} min" for k, v in timings.items()),
          *([f"- Wall time of the plan's runs under `{cfg.root}`, over "
             f"{parts_line(parts)} (`{WALL}` there)"] if parts else []),
          ""]
    if failures:
        md += ["**Incomplete:** " + "; ".join(failures), ""]
    for bad in invalid[len(res["invalid"]):]:  # the table lists its own
        md += [f"- Not read: `{bad.name}`: {bad.reason}"]
    for f in of_task(record.CLASSIFY):  # evaluations of a checkpoint changed since
        md += [f"- {note}" for note in f.notes(fig_runs[f.name])]
    # drop its own title; its sections become subsections of "Table 1"
    table_md = res["md"].read_text().split("\n", 1)[1].replace("\n## ", "\n### ")
    md += ["## Table 1", table_md]
    md += ["## Measured against the paper's claims", ""]
    md += [f"- {line}" for line in measured_claims(table_runs, fig_runs)] or ["- (no data)"]
    md += ["", "## Figures", ""]
    for f in of_task(record.CLASSIFY):
        name = f.name
        if name in written:
            data = f" Data: [{name}.csv]({name}.csv)" if f.csv else ""
            md += [f"![{name}]({name}.png)", "", f"*{f.caption}*{data}", ""]
        else:
            md += [f"*{name}: not drawn — {skipped.get(name, 'no data')}*", ""]
    path = report_dir / "report.md"
    write_atomic(path, "\n".join(md) + "\n")
    return path


# ---------------------------------------------------------------- main
# one invocation runs a root at a time: its children's run locks, wall.csv (read at the
# start, written at the end) and the report are its alone (ROOT/.lock, as a run's)
ROOT_IN_USE = ("root={out} is held by another odenet reproduce (pid {pid}): wait for it to "
               "end (tail --pid={pid} -f /dev/null) and run again, or choose another root=")


def reproduce(cfg: ReproduceConfig, command: str, log=print) -> int:
    """Run the plan; 0 when every step completed, 1 otherwise. A signal (SIGINT, SIGTERM,
    SIGHUP) stops the running children first, then raises Interrupted. ConfigError when
    another invocation holds the root (a dry run does not hold it)."""
    cfg.root = str(Path(cfg.root or f"outputs/reproduce/{cfg.experiment}"))
    hold = contextlib.nullcontext() if cfg.dry_run else rundir.held(cfg.root, ROOT_IN_USE)
    with hold, Children() as children:
        return _reproduce(cfg, command, log, children)


def plan_lines(cfg: ReproduceConfig, tasks: list[Task], jobs: int,
               gpus: list[str | None] = ()) -> list[str]:
    """How the plan runs: its jobs and threads, the order, where the children write."""
    plan = cfg.plans[cfg.experiment]
    trainings = [t for t in tasks if t.kind == TRAIN]
    done = sum(t.job.finished for t in trainings)
    why = (f"jobs={cfg.jobs}" if cfg.jobs
           else f"{cfg.jobs_per_gpu} per GPU: {len(gpus)} GPU(s)" if gpus
           else f"one per core: {usable_cores()} usable")
    if len(gpus) > 1:
        why += "; each child on the GPU running the fewest, by CUDA_VISIBLE_DEVICES"
    threads = f"threads={cfg.threads}" if cfg.threads else "the child's own threads"
    rows = list(plan.models) + [v.name for v in plan.variants]
    first = [r for r in plan.order if r in rows]
    order = (f"Table 1 rows {', '.join(first)} (the longest first)"
             + (", then the other rows" if len(first) < len(rows) else "") if first
             else "Table 1 rows in the plan's order")
    return [f"odenet reproduce: experiment={cfg.experiment}, {len(trainings)} runs under "
            f"{cfg.root} ({done} already finished) and {len(tasks) - len(trainings)} "
            "evaluations of their checkpoints",
            f"{jobs} job(s) at once ({why}), {threads} each (unless train_args set threads); "
            f"trainings start in the order below: {order}, then the sweeps; the evaluations "
            "start once their training has finished; the report comes last",
            "each child's output goes to its run directory: train.out, evaluate.out, "
            "gradients.out"]


def dry_run_line(task: Task, cfg: ReproduceConfig) -> str:
    if task_done(task, cfg):
        return f"{task.label}: done, skipped"
    after = "" if task.kind == TRAIN else f" (once {task.job.group}/{task.job.name} is trained)"
    return f"{task.label}{after}: would run: {shlex.join(task_command(task, cfg))}"


def _reproduce(cfg: ReproduceConfig, command: str, log, children: Children) -> int:
    root = Path(cfg.root)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    report_dir = Path(cfg.report or f"outputs/report/{stamp}_{cfg.experiment}")
    jobs = plan_jobs(cfg, root)
    tasks = plan_tasks(cfg, jobs)
    gpus = child_gpus(cfg)
    n = job_count(cfg, gpus)
    for line in plan_lines(cfg, tasks, n, gpus):
        log(line)
    if cfg.dry_run:
        for k, task in enumerate(tasks, 1):
            log(f"[{k}/{len(tasks)}] {dry_run_line(task, cfg)}")
        log(f"dry run: nothing trained; the report would go to {report_dir}")
        return 0

    try:
        parts = read_parts(root)  # a broken record is refused now, not after hours of training
    except ReportError as e:
        log(f"odenet reproduce: error: {e}")
        return 1
    t0, started = time.perf_counter(), _utc_now()
    show = Show(log, tty=log is print and sys.stdout.isatty())
    schedule = Schedule(cfg, tasks, n, children, show, gpus)
    ended_by = "an error"
    try:
        schedule.run()
        ended_by = (f"stopped by {signal.Signals(children.received[0]).name}"
                    if children.received else "ran to the report")
    finally:
        show.close()
        # the report's time (seconds) is left out: the part must be on record before it
        record_part(root, parts, started, time.perf_counter() - t0, schedule.started, ended_by)
    if children.received:
        raise Interrupted(children.received[0], schedule.where or None)
    timings = {f"all steps ({n} jobs at once)": time.perf_counter() - t0}
    timings.update({f"{k} (summed over the children)": v for k, v in schedule.seconds.items()})
    failures = schedule.failures

    try:
        path = write_report(cfg, jobs, report_dir, command, timings, failures)
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


if __name__ == "__main__":
    raise SystemExit(main())
