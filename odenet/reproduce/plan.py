"""What `odenet reproduce` runs: the plan schema (configs/reproduce.yaml), its settings
and their validation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from odenet.config.errors import ConfigError
from odenet.config.model_registry import MODELS, models_of
from odenet.config.schema import load_settings
from odenet.report.runs import adjoint_model
from odenet.run import record
from odenet.training.openmp import usable_cores

PLAN_FILE = "reproduce.yaml"
# where the jobs run: this machine's process pool (signals forwarded), a SLURM cluster
# through submitit, or submitit's own processes on this machine
EXECUTORS = ("local", "slurm", "submitit_local")
SWEEP_FIGURES = ("fig3c", "memory")


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
class SlurmSettings:
    """What each job asks submitit for (executor=slurm; submitit_local: the time limit and
    the GPUs only)."""

    partition: str | None = None       # null: the cluster's default partition
    timeout_min: int = 1440            # a paper-scale training (160 epochs) fits in it
    gpus_per_node: int = 1
    cpus_per_task: int | None = None   # null: the children's threads (threads=T, else 1)
    mem_gb: float | None = None        # null: the cluster's default
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # e.g. {account: x}
    folder: str | None = None          # submitit's files; null: ROOT/.submitit


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
    executor: str = "local"  # one of EXECUTORS
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    plans: dict[str, Plan] = field(default_factory=dict)


def load_config(argv: list[str], plan_file: str | os.PathLike | None = None) -> ReproduceConfig:
    """configs/reproduce.yaml (or ``plan_file``) merged with ``key=value`` overrides,
    validated."""
    out = load_settings(ReproduceConfig, PLAN_FILE, argv, "reproduce", path=plan_file,
                        examples="experiment=quick, seeds=[0,1], dry_run=true")
    check(out)
    return out


def check(out: ReproduceConfig) -> None:
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
    if out.executor not in EXECUTORS:
        raise ConfigError(f"executor={out.executor!r}; accepted: {', '.join(EXECUTORS)}")
    _check_slurm(out.slurm)
    if out.experiment not in out.plans:
        raise ConfigError(f"experiment={out.experiment!r} has no plan; accepted: "
                          f"{', '.join(out.plans)} (configs/{PLAN_FILE})")
    seeds = out.seeds if out.seeds is not None else out.plans[out.experiment].seeds
    if not seeds:
        raise ConfigError("seeds=[] trains nothing; give at least one seed, e.g. seeds=[0]")
    _check_plan(out.experiment, out.plans[out.experiment], seeds)


def _check_slurm(s: SlurmSettings) -> None:
    for key in ("timeout_min", "cpus_per_task", "mem_gb"):
        v = getattr(s, key)
        if v is not None and v <= 0:
            raise ConfigError(f"slurm.{key}={v}: must be positive"
                              + (" or null" if key != "timeout_min" else ""))
    if s.gpus_per_node < 0:
        raise ConfigError(f"slurm.gpus_per_node={s.gpus_per_node}: must be 0 or more")


def _check_plan(name: str, plan: Plan, seeds: list[int]) -> None:
    for sw in plan.sweeps:
        if sw.figure not in SWEEP_FIGURES:
            raise ConfigError(f"sweep {sw.name!r}: figure={sw.figure!r}; accepted: "
                              f"{', '.join(SWEEP_FIGURES)}")
        sweep_seeds(sw, seeds)
    names = list(plan.models) + [v.name for v in plan.variants]
    for model in list(plan.models) + [v.model for v in plan.variants]:
        if model not in MODELS:
            raise ConfigError(f"plan {name!r}: model {model!r} is not a model; "
                              f"accepted: {', '.join(MODELS)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"plan {name!r}: Table 1 row names must differ; "
                          f"repeated: {', '.join(dup)}")


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


def training_device(cfg: ReproduceConfig) -> str:
    """The device the trainings ask for: the last device= of the plan's train_overrides
    and train_args, else the trainings' default, auto."""
    plan = cfg.plans[cfg.experiment]
    device = "auto"
    for arg in [*plan.train_overrides, *cfg.train_args]:
        if arg.startswith("device="):
            device = arg.split("=", 1)[1]
    return device
