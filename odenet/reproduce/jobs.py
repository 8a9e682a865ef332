"""The plan as work: its trainings (one run directory each) and the jobs that run them
and then work on their checkpoints, each as an `odenet` command line."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

from odenet.config.model_registry import MODELS
from odenet.report.runs import METRICS, fmt_tol
from odenet.reproduce.plan import GradientsPlan, ReproduceConfig, VariantPlan, sweep_seeds
from odenet.run import directory as rundir
from odenet.run import record

# What a job runs: its `odenet` command. A training comes first; the evaluation and the
# gradient error work on its checkpoint, so they start once it has finished.
TRAIN, EVALUATE, GRADIENTS = "train", "evaluate", "gradients"


@dataclass
class Training:
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


@dataclass(eq=False)
class Job:
    """One child process of the plan: a training, or work on a finished training."""

    kind: str            # TRAIN | EVALUATE | GRADIENTS
    training: Training   # the training it is, or whose checkpoint it works on

    @property
    def label(self) -> str:
        where = f"{self.training.group}/{self.training.name}"
        return where if self.kind == TRAIN else f"{self.kind} {where}"

    @property
    def log(self) -> Path:
        """The child's stdout and stderr: <run directory>/<kind>.out, appended to."""
        return self.training.dir / f"{self.kind}.out"


def _value(v) -> str:
    if isinstance(v, float):
        return fmt_tol(v) if v < 0.1 else f"{v:g}"
    return str(v)


def plan_trainings(cfg: ReproduceConfig, root: Path) -> list[Training]:
    """Every training of the plan, in the order they start: the Table 1 rows named by the
    plan's ``order`` first (the longest first), the other rows, then the sweeps."""
    plan = cfg.plans[cfg.experiment]
    seeds = cfg.seeds if cfg.seeds is not None else plan.seeds
    base = [f"experiment={cfg.experiment}"]
    out = []
    rows = [VariantPlan(m, m, []) for m in plan.models] + list(plan.variants)
    rank = {name: i for i, name in enumerate(plan.order)}
    rows.sort(key=lambda r: rank.get(r.name, len(rank)))  # stable: the rest keep their order
    for row, seed in itertools.product(rows, seeds):
        name = f"{row.name}_seed{seed}"
        out.append(Training(name, "table",
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
                out.append(Training(name, sw.name,
                                    base + [f"model={sw.model}", f"seed={seed}"]
                                    + list(sw.overrides) + sets + list(cfg.train_args),
                                    root / sw.name / name, sw.model, sw.name))
    for t in out:
        t.overrides += threads_args(cfg, t.overrides)
    return out


def threads_args(cfg: ReproduceConfig, args: list[str]) -> list[str]:
    """[threads=T] for a child whose arguments do not set its threads already."""
    if cfg.threads is None or any(a.startswith("threads=") for a in args):
        return []
    return [f"threads={cfg.threads}"]


def plan_jobs(cfg: ReproduceConfig, trainings: list[Training]) -> list[Job]:
    """The trainings, then the evaluation of the plan's ODE-Net (Figure 3 a, b: the first
    seed of its own row) and the gradient error of every Table 1 run with an ODE block."""
    plan = cfg.plans[cfg.experiment]
    jobs = [Job(TRAIN, t) for t in trainings]
    ev = [t for t in trainings if t.group == "table" and t.model == plan.evaluate.model]
    ev = [t for t in ev if t.row == plan.evaluate.model] or ev
    jobs += [Job(EVALUATE, ev[0])] if ev else []
    if plan.gradients is not None:
        jobs += [Job(GRADIENTS, t) for t in trainings
                 if t.group == "table" and MODELS[t.model].ode_block]
    return jobs


def odenet_command() -> list[str]:
    """How to call the `odenet` CLI in a child process: the venv's console script, else
    the same entry point through this interpreter."""
    exe = Path(sys.executable).with_name("odenet")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from odenet.cli import main; sys.exit(main())"]


def train_command(training: Training) -> list[str]:
    cmd = odenet_command() + ["train", *training.overrides, f"hydra.run.dir={training.dir}"]
    if (training.dir / record.CHECKPOINT_FILE).exists():
        cmd.append("resume=true")
    elif rundir.holds_run(training.dir):  # a run that failed before its first checkpoint
        cmd.append("overwrite=true")
    return cmd


def gradients_command(ckpt: Path, metrics: dict | None, plan: GradientsPlan) -> list[str]:
    """`odenet gradients` at the run's own tolerance (rtol; its atol, as odenet gradients
    sets atol = rtol) — '<its rtol>' for a run not trained yet (a dry run)."""
    tol = f"{metrics['solver_rtol']:g}" if metrics else "<its rtol>"
    return odenet_command() + ["gradients", f"checkpoint={ckpt}", f"tolerances=[{tol}]",
                               *plan.overrides]


def job_command(job: Job, cfg: ReproduceConfig) -> list[str]:
    """The child's command line (a gradients job of an unfinished run: '<its rtol>')."""
    plan, training = cfg.plans[cfg.experiment], job.training
    ckpt = training.dir / record.CHECKPOINT_FILE
    if job.kind == TRAIN:
        return train_command(training)
    if job.kind == EVALUATE:
        ev = plan.evaluate
        tols = "[" + ",".join(f"{t:g}" for t in ev.tolerances) + "]"
        cmd = odenet_command() + ["evaluate", f"checkpoint={ckpt}", f"tolerances={tols}",
                                 *ev.overrides]
    else:
        metrics = record.read_metrics(training.dir / METRICS) if training.finished else None
        cmd = gradients_command(ckpt, metrics, plan.gradients)
    return cmd + threads_args(cfg, cmd)
