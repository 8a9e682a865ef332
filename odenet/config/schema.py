"""Typed schemas for the configs in ``configs/``, and their validation.

The YAML files give every value; these dataclasses give each key a type, reject unknown
keys and catch values that make no sense (``solver.rtol=-1``) before anything is trained.
``to_config`` turns a composed config (``DictConfig``, dict or a checkpoint's plain dict)
into a validated, read-only structured config, once, at the command layer (odenet/cli/app.py);
everything below receives that and reads attributes only, validating nothing again
(``is_typed``; the trainer builds its network with ``models.build``). The ``model``
node's schema is the chosen model's (odenet/config/model_registry.py); the rules "atol follows rtol"
and "the adjoint follows the model" are applied here, once (``resolve_solver``).

Imports OmegaConf only (no torch, no Hydra), so that a bad command line is rejected
within a second. Composing the YAML files with Hydra is the command layer's (odenet/cli/app.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from odenet.config.errors import ConfigError, need, one_of
from odenet.config.model_registry import (
    ADJOINT,
    BACKPROP,
    CHECKPOINT,
    DENSITY,
    MODELS,
    REVERSIBLE,
    ODENetConfig,
    spec,
)
from odenet.config.schedules import SCHEDULES

GRADIENTS = (ADJOINT, BACKPROP, CHECKPOINT, REVERSIBLE)  # as odenet.solvers.GRADIENTS

__all__ = ["Config", "ConfigError", "SolverConfig", "DataConfig", "OptimConfig",
           "TrainConfig", "to_config", "is_typed", "model_config", "solver_config",
           "resolve_solver", "as_dict", "unknown_key_line", "unused_settings"]

# data.name for density models; odenet.cnf.datasets.DATASETS (checked by tests/cnf) must match
TOY_DATASETS = ("moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16")  # the network's compute dtype (runtime.autocast)
TRAIN_PRECISIONS = PRECISIONS + ("auto",)  # auto: runtime.resolve_precision, per machine
# seeds below this keep the data's generator seeds (seed * 1,000,003 + epoch,
# odenet/data/batches.py) within torch's 64 bits, for a million epochs
SEED_LIMIT = 10**12
FLOAT32_MAX = 3.4028234663852886e38  # parameters are float32: a larger lr cannot step them
# --------------------------------------------------------------------------- schemas
@dataclass
class SolverConfig:
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float | None = None  # None: equal to rtol
    gradient: str | None = None  # adjoint | backprop | checkpoint | reversible; None: the
    # model's default (registry traits)
    adjoint_norm: str = "default"  # default | seminorm (Kidger et al. 2021)
    step_size: float | None = None  # fixed-grid methods only
    max_num_steps: int = 1000  # a training solve needing more fails the run (fail fast)
    last_step: str = "clamp"  # clamp | overshoot (step past t1 and interpolate, as torchdiffeq)
    carry_step: bool = False  # training solves start from the last one's next step


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = "data"
    train_size: int | None = None  # None: all 60,000; N: the first N training images
    test_size: int | None = None  # None: all 10,000 (smoke runs use fewer)
    val_size: int | None = None  # None: no validation split (odenet/data: which samples)
    batch_size: int = 128
    test_batch_size: int = 1000
    augment: bool = True  # RandomCrop(28, padding=crop_padding), as in the recipe
    crop_padding: int = 4
    normalize: bool = False  # the recipe feeds pixels in [0, 1]; True: MNIST mean/std
    on_device: bool | None = None  # None: keep the uint8 dataset on the GPU when using CUDA


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float | None = None  # None: base_lr * batch_size / base_batch_size
    base_lr: float = 0.1
    base_batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 160
    schedule: str = "multistep"  # a name of odenet/config/schedules.py's SCHEDULES
    milestones: list[float] = field(default_factory=lambda: [60.0, 100.0, 140.0])
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from warmup_start * lr
    warmup_start: float = 0.1
    final_lr_fraction: float = 0.0  # cosine/onecycle end at lr * this
    pct_start: float = 0.25  # onecycle: fraction of training spent rising to lr
    ema_decay: float | None = None  # an average of the weights, evaluated too; None: none


@dataclass
class TrainConfig:
    log_every: int = 10  # iterations between history/TensorBoard records
    train_eval_size: int | None = 10000  # train error on N un-augmented training images
    max_iters_per_epoch: int | None = None  # cut epochs short (smoke tests)
    stop_after_iters: int | None = None  # stop like an interrupt after N iterations
    measure_memory: bool = True  # saved-tensor census on the first iteration of each epoch
    tensorboard: bool = True
    progress: str = "auto"  # auto (bars only on a terminal) | always | never


@dataclass
class Config:
    experiment_name: str = "custom"  # set by configs/experiment/*.yaml
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch.set_num_threads; None: torch's default
    # fp32 | bf16 | auto: bf16 autocasts the network's convolutions and linear layers; the
    # ODE state, the solver, the loss and the weights stay fp32 (odenet/training/runtime.py); auto
    # is bf16 where the device has bf16 units (AVX-512/AMX, a bf16 GPU), else fp32; the
    # run records the precision it ran with
    precision: str = "fp32"
    resume: bool = False  # continue the run in the run directory
    overwrite: bool = False  # delete the run in the run directory and start afresh
    # the chosen model's schema (odenet/config/model_registry.py), set by to_config
    model: Any = field(default_factory=ODENetConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- conversion
# the configs to_config made, by identity: they are handed down typed and never validated
# again (a copy or a merge of one is not here: it may hold anything, and is validated)
_TYPED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def to_config(cfg: Any) -> DictConfig:
    """Merge ``cfg`` (DictConfig, dict or dataclass) into ``Config``; validate; freeze.
    A config to_config made is returned as it is (``is_typed``).

    Raises ``ConfigError`` with a one-line message on unknown keys, wrong types or
    values out of range.
    """
    if is_typed(cfg):
        return cfg
    values = _plain(cfg)
    model = model_config(values.pop("model", None) or {}, readonly=False)
    c = _merge(Config, values, "")
    c.model = model
    _validate(c)
    OmegaConf.set_readonly(c, True)
    _TYPED[id(c)] = c
    return c


def is_typed(cfg: Any) -> bool:
    """Whether ``cfg`` is a validated Config made by to_config (not a copy of one)."""
    return _TYPED.get(id(cfg)) is cfg


def model_config(cfg: Any, *, strict: bool = True, readonly: bool = True) -> DictConfig:
    """A validated config of the model ``cfg["name"]`` names (default odenet), from a
    dataclass, DictConfig or a checkpoint's plain dict. ``strict=False`` drops keys the
    model's schema lacks (checkpoints written before a schema lost a key)."""
    values = _plain(cfg)
    s = spec(values.get("name", ODENetConfig.name))
    if not strict:
        values = {k: v for k, v in values.items() if k in s.settings}
    m = _merge(s.schema, values, "model.", model=s.name)
    s.schema.check(m)
    OmegaConf.set_readonly(m, readonly)
    return m


def solver_config(cfg: Any, model: str, *, strict: bool = True) -> DictConfig:
    """A validated SolverConfig for ``model``, with atol and the gradient resolved.
    ``strict=False`` drops keys the schema lacks (a checkpoint's config from another
    version of odenet)."""
    values = _plain(cfg)
    if not strict:
        values = {k: v for k, v in values.items() if k in SolverConfig.__dataclass_fields__}
    s = _merge(SolverConfig, values, "solver.")
    resolve_solver(s, model)
    OmegaConf.set_readonly(s, True)
    return s


def resolve_solver(s: DictConfig, model: str) -> None:
    """Check ``s`` for ``model`` and fill in what follows from other settings: atol follows
    rtol unless set, and the gradient method follows the model unless set."""
    gradient = _validate_solver(s, model)
    with _writable(s):
        if s.atol is None:
            s.atol = s.rtol
        s.gradient = gradient


def peak_lr(cfg: Any, batch: int | None = None) -> float:
    """optim.lr, or the recipe's rule: base_lr scaled linearly with the batch size
    (``batch``: the batch that runs, when the train split is smaller than data.batch_size)."""
    o = cfg.optim
    batch = cfg.data.batch_size if batch is None else batch
    return o.lr if o.lr is not None else o.base_lr * batch / o.base_batch_size


def as_dict(cfg: Any) -> dict:
    """The resolved config as plain Python types (what checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True)


def _plain(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return dict(cfg)


def _merge(schema: type, values: dict, prefix: str, model: str | None = None) -> DictConfig:
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), values)
        OmegaConf.resolve(node)
    except OmegaConfBaseException as e:
        key = prefix + (getattr(e, "full_key", None) or "")
        msg = str(e).splitlines()[0].strip() if str(e) else type(e).__name__
        if "not in struct" in msg or "Key '" in msg and "not" in msg:
            raise ConfigError(unknown_key_line(key, model)) from None
        raise ConfigError(f"{key.rstrip('.')}: {msg}" if key.rstrip(".") else msg) from None
    return node


def unknown_key_line(key: str, model: str | None = None) -> str:
    """'unknown key ...' with the closest valid key, e.g. solver.rtl -> solver.rtol.

    ``model``: the chosen model, when known (its schema holds the valid ``model.*`` keys);
    otherwise every model's keys are candidates.
    """
    parent, _, name = key.rpartition(".")
    candidates = _field_names(parent, model)
    hint = difflib.get_close_matches(name, candidates, n=1)
    if hint:
        hint = [f"{parent}.{hint[0]}" if parent else hint[0]]
    elif not (parent == "model" and model is not None):  # e.g. rtol=1 for solver.rtol=1
        hint = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == name][:1]
    if hint == [key]:
        if parent == "model" and model is None:  # Hydra's: the chosen model's YAML lacks it
            having = [s.name for s in MODELS.values() if name in s.settings]
            return (f"'{key}' is not in the chosen model's config; models that have it: "
                    f"{', '.join(having)} (add it with '+{key}=...')")
        return f"'{key}' is not in the chosen {parent} config; add it with '+{key}=...'"
    if parent == "model" and model is not None:
        return (f"unknown key '{key}' for model={model}"
                + (f"; did you mean '{hint[0]}'?" if hint else
                   f" (its keys: {', '.join(spec(model).settings)})"))
    tail = f"; did you mean '{hint[0]}'?" if hint else ""
    return f"unknown key '{key}'{tail}"


def _field_names(dotted: str, model: str | None = None) -> list[str]:
    if dotted == "model":
        specs = [spec(model)] if model is not None else MODELS.values()
        return list(dict.fromkeys(k for s in specs for k in s.settings))
    node = OmegaConf.structured(Config)
    for part in filter(None, dotted.split(".")):
        node = node.get(part) if isinstance(node, DictConfig) else None
        if node is None:
            return []
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _all_keys() -> list[str]:
    def walk(node: Any, prefix: str) -> list[str]:
        out = []
        for k in node.keys():
            v = node.get(k)
            out += walk(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
        return out
    return walk(OmegaConf.structured(Config), "") + [f"model.{k}" for k in _field_names("model")]


# --------------------------------------------------------------------------- validation
def _check_solver_values(s: Any) -> None:
    """Each solver setting on its own (for every model: a sweep mixing models may give
    solver settings to one without an ODE block, but never a value that means nothing)."""
    need(s.rtol > 0, f"solver.rtol must be > 0 (got {s.rtol})")
    if s.atol is not None:
        need(s.atol > 0, f"solver.atol must be > 0 (got {s.atol})")
    one_of("solver.adjoint_norm", s.adjoint_norm, ("default", "seminorm"))
    if s.step_size is not None:
        need(s.step_size > 0, f"solver.step_size must be > 0 (got {s.step_size})")
    need(s.max_num_steps >= 1, f"solver.max_num_steps must be >= 1 (got {s.max_num_steps})")
    one_of("solver.last_step", s.last_step, ("clamp", "overshoot"))
    if s.gradient is not None:
        one_of("solver.gradient", s.gradient, GRADIENTS)
    from odenet.solvers import METHODS  # torch: only once the rest is valid

    one_of("solver.method", s.method, list(METHODS))


def unused_settings(cfg: Any) -> list[str]:
    """The solver settings ``cfg`` gives (other than the defaults) that its model does not
    use, as key=value: a model without an ODE block takes none."""
    if spec(cfg.model.name).ode_block:
        return []
    default = {**OmegaConf.to_container(OmegaConf.structured(SolverConfig)),
               "atol": cfg.solver.rtol}  # atol follows rtol
    return [f"solver.{k}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in cfg.solver.items() if v != default[k]]


def _validate_solver(s: Any, model: str) -> None:
    _check_solver_values(s)
    gradient = _gradient(s, model)
    if s.adjoint_norm == "seminorm" and gradient != ADJOINT:
        raise ConfigError(f"solver.adjoint_norm=seminorm needs the adjoint; model={model} "
                          f"computes its gradients by {gradient}")
    from odenet.solvers import (
        FIXED_METHODS,
        gradient_refusal,
        method_unavailable,
        tolerance_refusal,
    )

    need(s.method not in FIXED_METHODS or s.step_size is not None,
         f"solver.method={s.method} is a fixed-grid method: set solver.step_size (e.g. 0.25)")
    refusal = gradient_refusal(s.method, gradient)  # the solver library's own rule
    if refusal is not None:
        why = (f" (model={model} computes its gradients by {gradient})"
               if s.gradient is None else "")
        raise ConfigError(f"solver.method={s.method}: {refusal}{why}")
    unavailable = method_unavailable(s.method)  # a method whose extra is not installed
    need(unavailable is None, f"solver.method={s.method}: {unavailable}")
    # the ODE block's state is float32 (precision=bf16 too: only f runs under autocast)
    refusal = tolerance_refusal(s.method, s.rtol, s.rtol if s.atol is None else s.atol,
                                names=("solver.rtol", "solver.atol"))
    need(refusal is None, str(refusal))
    from odenet.solvers import REGISTRY

    m = REGISTRY[s.method]
    need(not s.carry_step or (m.adaptive and m.family != "odepack"),
         f"solver.carry_step=true is for the adaptive Runge-Kutta methods; solver.method="
         f"{s.method} has no step to carry")
    return gradient


def _gradient(s: Any, model: str) -> str:
    """The gradient method ``s`` asks of ``model``: solver.gradient, else the model's own."""
    if s.gradient is None:
        return spec(model).gradient(None)
    one_of("solver.gradient", s.gradient, GRADIENTS)
    return spec(model).gradient(s.gradient, f"solver.gradient={s.gradient}")


def _finite(node: Any, prefix: str = "") -> None:
    """Every number of the config is finite (optim.lr=inf, 1e400 or nan: ConfigError)."""
    for k, v in node.items():
        if isinstance(v, DictConfig):
            _finite(v, f"{prefix}{k}.")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{prefix}{k}={v} is not a finite number")
        elif OmegaConf.is_list(v) and any(isinstance(x, float) and not math.isfinite(x)
                                          for x in v):
            raise ConfigError(f"{prefix}{k}={list(v)} holds a number that is not finite")


def _validate(c: Any) -> None:
    _finite(c)
    need(0 <= c.seed < SEED_LIMIT, f"seed must be in [0, {SEED_LIMIT:.0e}) (got {c.seed})")
    need(not (c.resume and c.overwrite), "resume=true and overwrite=true contradict each "
         "other: continue the run in the directory, or delete it and start afresh")
    dev = c.device
    need(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"),
         f"device={dev!r} is not one of: auto, cpu, cuda, cuda:N")
    if c.threads is not None:
        need(c.threads >= 1, f"threads must be >= 1 (got {c.threads})")
    one_of("precision", c.precision, TRAIN_PRECISIONS)
    model = spec(c.model.name)
    if model.ode_block:
        resolve_solver(c.solver, model.name)
    else:
        _check_solver_values(c.solver)
    density = model.task == DENSITY
    d = c.data
    if density:
        need(d.name in TOY_DATASETS, f"model={model.name} learns a 2-D toy density: "
             f"data.name={d.name!r} is not one of: {', '.join(TOY_DATASETS)} (train it with "
             "experiment=cnf_moons, or another cnf_* experiment)")
        need(d.train_size is not None and d.test_size is not None,
             "toy data need data.train_size and data.test_size (numbers of points)")
    else:
        need(d.name == "mnist", f"data.name={d.name!r}: model={model.name} learns MNIST "
             f"(data=mnist); the toy datasets are for {', '.join(_density_models())}")
    for k in ("train_size", "test_size"):
        v = getattr(d, k)
        need(v is None or v >= 1, f"data.{k} must be >= 1 or null (got {v})")
    need(d.val_size is None or d.val_size >= 0, f"data.val_size must be >= 0 or null (got "
         f"{d.val_size})")
    need(d.batch_size >= 1, f"data.batch_size must be >= 1 (got {d.batch_size})")
    need(d.crop_padding >= 0, f"data.crop_padding must be >= 0 (got {d.crop_padding})")
    need(d.test_batch_size >= 1, f"data.test_batch_size must be >= 1 (got {d.test_batch_size})")
    _validate_optim(c)
    t = c.train
    need(t.log_every >= 1, f"train.log_every must be >= 1 (got {t.log_every})")
    for k in ("train_eval_size", "max_iters_per_epoch", "stop_after_iters"):
        v = getattr(t, k)
        lo = 0 if k == "train_eval_size" else 1
        need(v is None or v >= lo, f"train.{k} must be >= {lo} or null (got {v})")
    one_of("train.progress", t.progress, ("auto", "always", "never"))


def _validate_optim(c: Any) -> None:
    o = c.optim
    one_of("optim.name", o.name, OPTIMIZERS)
    one_of("optim.schedule", o.schedule, list(SCHEDULES))
    if o.lr is not None:
        need(o.lr > 0, f"optim.lr must be > 0 (got {o.lr})")
    need(o.base_lr > 0, f"optim.base_lr must be > 0 (got {o.base_lr})")
    need(o.epochs >= 1, f"optim.epochs must be >= 1 (got {o.epochs})")
    need(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (got {o.momentum})")
    need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    lr = f"optim.lr={o.lr:g}" if o.lr is not None else (
        f"optim.base_lr={o.base_lr:g} scaled to data.batch_size={c.data.batch_size} = "
        f"{peak_lr(c):g}")
    for what, v in (lr, peak_lr(c)), (f"optim.weight_decay={o.weight_decay:g}", o.weight_decay):
        need(v <= FLOAT32_MAX, f"{what} is too large: float32 parameters take at most "
             f"{FLOAT32_MAX:.3g}")
    need(0 < o.gamma <= 1, f"optim.gamma must be in (0, 1] (got {o.gamma})")
    need(list(o.milestones) == sorted(o.milestones), "optim.milestones must be increasing")
    need(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0 (got {o.warmup_epochs})")
    need(0 < o.pct_start < 1, f"optim.pct_start must be in (0, 1) (got {o.pct_start})")
    need(0 <= o.final_lr_fraction <= 1, "optim.final_lr_fraction must be in [0, 1]")
    need(o.ema_decay is None or 0 < o.ema_decay < 1,
         f"optim.ema_decay must be in (0, 1) or null (got {o.ema_decay})")


def _density_models() -> list[str]:
    return [s.name for s in MODELS.values() if s.task == DENSITY]


class _writable:
    def __init__(self, node: Any):
        self.node = node

    def __enter__(self) -> None:
        self.flag = OmegaConf.is_readonly(self.node)
        OmegaConf.set_readonly(self.node, False)

    def __exit__(self, *exc: Any) -> None:
        OmegaConf.set_readonly(self.node, self.flag)


# --------------------------------------------------------------------------- other commands
def load_settings(schema: type, yaml_name: str, argv: list[str], what: str, *,
                  path: str | os.PathLike | None = None, examples: str | None = None) -> Any:
    """The settings of a command that is not a Hydra app (evaluate, gradients, reproduce):
    the shipped configs/<yaml_name> (or the file at ``path``) merged with ``key=value``
    overrides into the dataclass ``schema``. ConfigError (one line) for a bad argument
    (``examples``: overrides it names, e.g. "experiment=quick, dry_run=true") or an unknown
    key, each naming the accepted keys, a missing required key or a bad value."""
    from importlib import resources

    keys = [f.name for f in dataclasses.fields(schema)]
    accepted = f"(keys: {', '.join(keys)})"
    for a in argv:
        if "=" not in a or a.startswith("-"):
            hint = f"such as {examples}" if examples else f"(see configs/{yaml_name})"
            raise ConfigError(f"bad argument {a!r}: expected key=value overrides {hint} "
                              f"{accepted}")
        key = a.split("=", 1)[0].split(".", 1)[0]
        if key not in keys:
            raise ConfigError(f"unknown key {key!r} in {a!r} {accepted}")
    if path is None:
        text = (resources.files("odenet.configs") / yaml_name).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(text),
                              OmegaConf.from_dotlist(argv))
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} is required, e.g. {e.full_key}=...") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"bad {what} setting{f' {key}' if key else ''}: {msg}") from None
