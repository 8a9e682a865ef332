"""Typed schemas for the Hydra configs in ``configs/``, and their validation.

The YAML files are the single source of every default; these dataclasses give each key
a type, reject unknown keys and catch values that make no sense (``solver.rtol=-1``)
before anything is trained. ``to_config`` turns a composed ``DictConfig`` into a
validated, read-only structured config; everything below ``cli.py``/``train.main``
receives that and reads attributes only.

This module imports OmegaConf only (no torch, no Hydra at import time), so that a bad
command line is rejected within a second. ``compose`` (Hydra's compose API, imported
lazily) is for entry points and tests.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

MODELS = ("mlp", "resnet", "odenet", "rknet", "cnf", "planar")
ODE_MODELS = ("odenet", "rknet")
DENSITY_MODELS = ("cnf", "planar")  # task=density: 2-D toy densities (odenet/cnf)
TASKS = ("classify", "density")  # the trainer's task registry (odenet.train.TASKS) must match
# data.name for task=density; odenet.cnf.datasets.DATASETS (checked by tests/cnf) must match
TOY_DATASETS = ("moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")


class ConfigError(ValueError):
    """A config that cannot be run; its message is one line meant for the user."""


# --------------------------------------------------------------------------- schemas
@dataclass
class ModelConfig:
    name: str = "odenet"  # mlp | resnet | odenet | rknet
    width: int = 64  # channels of the feature map after downsampling
    hidden: int = 300  # MLP hidden units
    num_blocks: int = 6  # ResNet residual blocks
    downsampling: str = "conv"  # conv (the recipe's; fixes the parameter counts) | res
    t1: float = 1.0  # ODE block integrates over [0, t1]
    compile: bool = False  # odenet/rknet: torch.compile the ODE function (README "Speed")
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    # density models (cnf, planar; configs/model/cnf.yaml, planar.yaml). A CNF reuses
    # width (hyper: M units; concat: units per layer), hidden (hypernetwork units), t1.
    dim: int = 2  # data dimension
    base_std: float = 1.0  # base density N(0, base_std^2 I)
    field: str = "hyper"  # cnf: hyper (the paper's hypernetwork) | concat (concat-t MLP)
    depth: int = 3  # cnf concat: hidden layers
    activation: str = "tanh"  # cnf concat: tanh | softplus | elu
    trace: str = "exact"  # cnf training: exact | hutchinson
    noise: str = "rademacher"  # cnf hutchinson: rademacher | gaussian
    eval_trace: str = "exact"  # cnf evaluation (test_nll)
    layers: int = 32  # planar: K layers


@dataclass
class SolverConfig:
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float | None = None  # None: equal to rtol
    adjoint: bool | None = None  # None: the model decides (odenet: True, rknet: False)
    adjoint_norm: str = "default"  # default | seminorm (Kidger et al. 2021)
    step_size: float | None = None  # fixed-grid methods only
    max_num_steps: int = 1000
    last_step: str = "clamp"  # clamp | overshoot (step past t1 and interpolate, as torchdiffeq)


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = "data"
    train_size: int | None = None  # None: all 60,000; N: the first N training images
    test_size: int | None = None  # None: all 10,000 (smoke runs use fewer)
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
    schedule: str = "multistep"  # multistep | cosine | onecycle | constant
    milestones: list[float] = field(default_factory=lambda: [60.0, 100.0, 140.0])
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from warmup_start * lr
    warmup_start: float = 0.1
    final_lr_fraction: float = 0.0  # cosine/onecycle end at lr * this
    pct_start: float = 0.25  # onecycle: fraction of training spent rising to lr


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
    task: str = "classify"
    experiment_name: str = "default"  # set by configs/experiment/*.yaml
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch.set_num_threads; None: torch's default
    resume: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- conversion
def _schema_for(kind: str) -> type:
    return {"model": ModelConfig, "solver": SolverConfig, "config": Config}[kind]


def to_config(cfg: Any, schema: type = Config) -> Any:
    """Merge ``cfg`` (DictConfig, dict or dataclass) into ``schema``; validate; freeze.

    Raises ``ConfigError`` with a one-line message on unknown keys, wrong types or
    values out of range.
    """
    try:
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_line(e, schema)) from None
    if schema is Config:
        _validate(merged)
    elif schema is SolverConfig:
        _validate_solver(merged, model_name=None)
    elif schema is ModelConfig:
        _validate_model(merged)
    OmegaConf.set_readonly(merged, True)
    return merged


def model_config(cfg: Any) -> Any:
    """A validated ModelConfig from a dataclass, DictConfig or a checkpoint's plain dict."""
    return to_config(cfg, ModelConfig)


def solver_config(cfg: Any) -> Any:
    return to_config(cfg, SolverConfig)


def as_dict(cfg: Any) -> dict:
    """The resolved config as plain Python types (what checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True)


def _omegaconf_line(e: OmegaConfBaseException, schema: type) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0].strip() if str(e) else type(e).__name__
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return unknown_key_line(key)
    if key:
        return f"{key}: {msg}"
    return msg


def unknown_key_line(key: str) -> str:
    """'unknown key ...' with the closest valid key, e.g. solver.rtl -> solver.rtol."""
    name, parent = key.rsplit(".", 1)[-1], key.rsplit(".", 1)[0] if "." in key else ""
    hint = difflib.get_close_matches(name, _field_names(Config, parent), n=1)
    if hint:
        hint = [f"{parent}.{hint[0]}" if parent else hint[0]]
    else:  # e.g. rtol=1 for solver.rtol=1
        hint = [k for k in _all_keys(Config) if k.rsplit(".", 1)[-1] == name][:1]
    if hint == [key]:  # a schema key that the chosen group's yaml (e.g. model=mlp) leaves out
        return f"'{key}' is not in the chosen {parent} config; add it with '+{key}=...'"
    tail = f"; did you mean '{hint[0]}'?" if hint else ""
    return f"unknown key '{key}'{tail}"


def _field_names(schema: type, dotted: str) -> list[str]:
    node = OmegaConf.structured(schema)
    for part in filter(None, dotted.split(".")):
        node = node.get(part) if isinstance(node, DictConfig) else None
        if node is None:
            return []
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _all_keys(schema: type) -> list[str]:
    def walk(node: Any, prefix: str) -> list[str]:
        out = []
        for k in node.keys():
            v = node.get(k)
            out += walk(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
        return out
    return walk(OmegaConf.structured(schema), "")


# --------------------------------------------------------------------------- validation
def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _one_of(key: str, value: Any, options: Sequence[str]) -> None:
    _need(value in options, f"{key}={value!r} is not one of: {', '.join(options)}")


def _validate_model(m: Any) -> None:
    _one_of("model.name", m.name, MODELS)
    _one_of("model.downsampling", m.downsampling, ("conv", "res"))
    for k in ("width", "hidden", "num_blocks", "in_channels", "image_size", "num_classes"):
        _need(getattr(m, k) >= 1, f"model.{k} must be >= 1 (got {getattr(m, k)})")
    _need(m.t1 > 0, f"model.t1 must be > 0 (got {m.t1})")
    _need(not m.compile or m.name in ("odenet", "rknet"), "model.compile=true compiles the "
          f"ODE function of model=odenet or rknet; model={m.name} has none")
    if m.name in DENSITY_MODELS:
        for k in ("dim", "depth", "layers"):
            _need(getattr(m, k) >= 1, f"model.{k} must be >= 1 (got {getattr(m, k)})")
        _need(m.base_std > 0, f"model.base_std must be > 0 (got {m.base_std})")
        _one_of("model.field", m.field, ("hyper", "concat"))
        _one_of("model.activation", m.activation, ("tanh", "softplus", "elu"))
        _one_of("model.trace", m.trace, ("exact", "hutchinson"))
        _one_of("model.eval_trace", m.eval_trace, ("exact", "hutchinson"))
        _one_of("model.noise", m.noise, ("rademacher", "gaussian"))


def _validate_solver(s: Any, model_name: str | None) -> None:
    _need(s.rtol > 0, f"solver.rtol must be > 0 (got {s.rtol})")
    if s.atol is not None:
        _need(s.atol > 0, f"solver.atol must be > 0 (got {s.atol})")
    _one_of("solver.adjoint_norm", s.adjoint_norm, ("default", "seminorm"))
    if s.step_size is not None:
        _need(s.step_size > 0, f"solver.step_size must be > 0 (got {s.step_size})")
    _need(s.max_num_steps >= 1, f"solver.max_num_steps must be >= 1 (got {s.max_num_steps})")
    _one_of("solver.last_step", s.last_step, ("clamp", "overshoot"))
    if model_name == "odenet":
        _need(s.adjoint in (None, True), "model=odenet trains with the adjoint; "
              "for backprop through the solver use model=rknet (not solver.adjoint=false)")
    if model_name == "rknet":
        _need(s.adjoint in (None, False), "model=rknet backpropagates through the solver; "
              "for the adjoint use model=odenet (not solver.adjoint=true)")
    if s.adjoint_norm == "seminorm" and model_name == "rknet":
        raise ConfigError("solver.adjoint_norm=seminorm needs the adjoint (model=odenet)")
    methods = _solver_methods()  # last: it imports torch
    if methods is not None:
        _one_of("solver.method", s.method, list(methods))
        from odenet.solvers import FIXED_METHODS

        _need(s.method not in FIXED_METHODS or s.step_size is not None,
              f"solver.method={s.method} is a fixed-grid method: set solver.step_size (e.g. 0.25)")


def _solver_methods() -> Mapping | None:
    """The solver library's method table, or None while it is not importable yet."""
    try:
        from odenet.solvers import METHODS  # imports torch: only reached when validating
    except ImportError:
        return None
    return METHODS


def _validate(c: Any) -> None:
    _one_of("task", c.task, TASKS)
    _need(c.seed >= 0, f"seed must be >= 0 (got {c.seed})")
    dev = c.device
    _need(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"),
          f"device={dev!r} is not one of: auto, cpu, cuda, cuda:N")
    if c.threads is not None:
        _need(c.threads >= 1, f"threads must be >= 1 (got {c.threads})")
    _validate_model(c.model)
    density = c.model.name in DENSITY_MODELS
    if density and c.task != "density":
        raise ConfigError(f"model={c.model.name} is a density model: train it with "
                          f"experiment=cnf_moons (task=density, data=toy)")
    if c.task == "density" and not density:
        raise ConfigError(f"task=density trains model=cnf or planar, not model={c.model.name}")
    if c.model.name in ODE_MODELS or c.model.name == "cnf":
        _validate_solver(c.solver, c.model.name)
        with _writable(c.solver):
            if c.solver.atol is None:
                c.solver.atol = c.solver.rtol
            if c.model.name == "cnf":  # adjoint by default; false: backprop through the solver
                c.solver.adjoint = c.solver.adjoint is not False
            else:
                c.solver.adjoint = c.model.name == "odenet"
    d = c.data
    _one_of("data.name", d.name, TOY_DATASETS if density else ("mnist",))
    if density:
        _need(d.train_size is not None and d.test_size is not None,
              "toy data need data.train_size and data.test_size (numbers of points)")
    for k in ("train_size", "test_size"):
        v = getattr(d, k)
        _need(v is None or v >= 1, f"data.{k} must be >= 1 or null (got {v})")
    _need(d.batch_size >= 1, f"data.batch_size must be >= 1 (got {d.batch_size})")
    _need(d.crop_padding >= 0, f"data.crop_padding must be >= 0 (got {d.crop_padding})")
    _need(d.test_batch_size >= 1, f"data.test_batch_size must be >= 1 (got {d.test_batch_size})")
    o = c.optim
    _one_of("optim.name", o.name, OPTIMIZERS)
    _one_of("optim.schedule", o.schedule, SCHEDULES)
    if o.lr is not None:
        _need(o.lr > 0, f"optim.lr must be > 0 (got {o.lr})")
    _need(o.base_lr > 0, f"optim.base_lr must be > 0 (got {o.base_lr})")
    _need(o.epochs >= 1, f"optim.epochs must be >= 1 (got {o.epochs})")
    _need(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1) (got {o.momentum})")
    _need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    _need(0 < o.gamma <= 1, f"optim.gamma must be in (0, 1] (got {o.gamma})")
    _need(list(o.milestones) == sorted(o.milestones), "optim.milestones must be increasing")
    _need(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0 (got {o.warmup_epochs})")
    _need(0 < o.pct_start < 1, f"optim.pct_start must be in (0, 1) (got {o.pct_start})")
    _need(0 <= o.final_lr_fraction <= 1, "optim.final_lr_fraction must be in [0, 1]")
    t = c.train
    _need(t.log_every >= 1, f"train.log_every must be >= 1 (got {t.log_every})")
    for k in ("train_eval_size", "max_iters_per_epoch", "stop_after_iters"):
        v = getattr(t, k)
        lo = 0 if k == "train_eval_size" else 1
        _need(v is None or v >= lo, f"train.{k} must be >= {lo} or null (got {v})")
    _one_of("train.progress", t.progress, ("auto", "always", "never"))


class _writable:
    def __init__(self, node: Any):
        self.node = node

    def __enter__(self) -> None:
        self.flag = OmegaConf.is_readonly(self.node)
        OmegaConf.set_readonly(self.node, False)

    def __exit__(self, *exc: Any) -> None:
        OmegaConf.set_readonly(self.node, self.flag)


# --------------------------------------------------------------------------- composition
CONFIG_MODULE = "odenet.configs"


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> Any:
    """Compose ``configs/`` with Hydra's compose API and validate: for tests and tools."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    return to_config(cfg)


def error_line(exc: BaseException) -> str:
    """One line for the user from a ConfigError or an exception of Hydra's composition."""
    if isinstance(exc, ConfigError):
        return str(exc)
    lines = [ln.strip() for ln in str(exc).splitlines()]
    first = lines[0] if lines else type(exc).__name__
    if "Available options in" in str(exc):  # e.g. model=nope
        opts, on = [], False
        for raw in str(exc).splitlines():
            if raw.startswith("Available options in"):
                on = True
                continue
            if on and raw.startswith("\t"):
                opts.append(raw.strip())
            elif on and raw.strip():
                break
        first = first.removeprefix("In 'config': ")
        return f"{first} (available: {', '.join(opts)})" if opts else first
    cause = exc.__cause__
    if cause is not None and "not in struct" in str(cause):
        return unknown_key_line(getattr(cause, "full_key", "") or "")
    if cause is not None and str(cause):
        return f"{first.rstrip('.')}: {str(cause).splitlines()[0].strip()}"
    if first.startswith("Ambiguous value") and len(lines) > 3:
        return f"{first}: sweeping needs -m (--multirun); a list is key=[a,b]"
    return first
