"""Every model odenet trains, in one place: its settings, its builder and its traits.

A model is one ``ModelSpec`` in ``MODELS``:
- ``schema``: the dataclass of its ``model.*`` settings (configs/model/<name>.yaml gives
  the values; unknown keys are rejected against this schema);
- ``builder``: ``"module:function"`` that builds it, ``f(model_cfg, solver_cfg) -> nn.Module``.
  A string, imported only when a network is built, so that this module (and the config
  validation and reports that read the traits) never import torch;
- traits the rest of odenet reads instead of model names: the task it learns, whether it
  holds an ODE block and how that block's gradient may be computed, which setting counts
  its residual blocks, its title and its row of the paper's Table 1.

Adding a model: its schema and spec here, its builder (odenet/models/ or odenet/cnf/), a
configs/model/<name>.yaml and a test (DEVELOPERS.md, "Where a change goes").
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from odenet.config.errors import ConfigError, need, one_of

CLASSIFY, DENSITY = "classify", "density"  # the tasks a model learns (its trait)

# how an ODE block's gradient is computed (odenet.solvers.GRADIENTS): the adjoint's backward
# solve, backprop through the solver's steps, a replay of checkpointed steps, or a
# reversible method reconstructing its steps backwards
ADJOINT, BACKPROP, CHECKPOINT, REVERSIBLE = "adjoint", "backprop", "checkpoint", "reversible"


# ------------------------------------------------------------------------- schemas
def _at_least_one(m, *keys: str) -> None:
    for k in keys:
        need(getattr(m, k) >= 1, f"model.{k} must be >= 1 (got {getattr(m, k)})")


@dataclass
class ImageModelConfig:
    """What every MNIST classifier reads."""

    name: str = "mlp"
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10

    @staticmethod
    def check(m) -> None:
        _at_least_one(m, "in_channels", "image_size", "num_classes")


@dataclass
class MLPConfig(ImageModelConfig):
    name: str = "mlp"
    hidden: int = 300  # hidden units

    @staticmethod
    def check(m) -> None:
        ImageModelConfig.check(m)
        _at_least_one(m, "hidden")


@dataclass
class ResNetConfig(ImageModelConfig):
    name: str = "resnet"
    width: int = 64  # channels of the feature map after downsampling
    num_blocks: int = 6  # residual blocks; 0: the downsampling and the head only (ablation)
    downsampling: str = "conv"  # conv (the recipe's; fixes the parameter counts) | res

    @staticmethod
    def check(m) -> None:
        ImageModelConfig.check(m)
        _at_least_one(m, "width")
        need(m.num_blocks >= 0, f"model.num_blocks must be >= 0 (got {m.num_blocks})")
        one_of("model.downsampling", m.downsampling, ("conv", "res"))


@dataclass
class ODENetConfig(ImageModelConfig):
    name: str = "odenet"
    width: int = 64
    downsampling: str = "conv"
    t1: float = 1.0  # the ODE block integrates over [0, t1]
    compile: bool = False  # torch.compile the ODE function (docs/benchmarks.md)
    # training solves only (odenet/models/dynamics.py): penalties on the learned dynamics
    # and STEER's end time T ~ U(t1 - b, t1 + b)
    kinetic_weight: float = 0.0
    jacobian_weight: float = 0.0
    t1_jitter: float = 0.0

    @staticmethod
    def check(m) -> None:
        ImageModelConfig.check(m)
        _at_least_one(m, "width")
        one_of("model.downsampling", m.downsampling, ("conv", "res"))
        need(m.t1 > 0, f"model.t1 must be > 0 (got {m.t1})")
        for k in ("kinetic_weight", "jacobian_weight"):
            need(m[k] >= 0, f"model.{k} must be >= 0 (got {m[k]})")
        need(0 <= m.t1_jitter < m.t1, f"model.t1_jitter must be in [0, model.t1={m.t1:g}) "
             f"(got {m.t1_jitter})")


@dataclass
class DensityModelConfig:
    """What every 2-D density model reads."""

    name: str = "planar"
    dim: int = 2  # data dimension
    base_std: float = 1.0  # base density N(0, base_std^2 I)

    @staticmethod
    def check(m) -> None:
        _at_least_one(m, "dim")
        need(m.base_std > 0, f"model.base_std must be > 0 (got {m.base_std})")


@dataclass
class CNFConfig(DensityModelConfig):
    name: str = "cnf"
    field: str = "hyper"  # hyper (the paper's hypernetwork) | concat (concat-t MLP)
    width: int = 64  # hyper: M units of the time-dependent layer; concat: units per layer
    hidden: int = 32  # hyper: units of the hypernetwork's hidden layers
    depth: int = 3  # concat: hidden layers
    activation: str = "tanh"  # concat: tanh | softplus | elu
    t1: float = 1.0  # noise at t = 0, data at t = t1
    trace: str = "exact"  # training: exact | hutchinson
    noise: str = "rademacher"  # hutchinson: rademacher | gaussian
    eval_trace: str = "exact"  # evaluation (test_nll)

    @staticmethod
    def check(m) -> None:
        DensityModelConfig.check(m)
        _at_least_one(m, "width", "hidden", "depth")
        need(m.t1 > 0, f"model.t1 must be > 0 (got {m.t1})")
        one_of("model.field", m.field, ("hyper", "concat"))
        one_of("model.activation", m.activation, ("tanh", "softplus", "elu"))
        one_of("model.trace", m.trace, ("exact", "hutchinson"))
        one_of("model.eval_trace", m.eval_trace, ("exact", "hutchinson"))
        one_of("model.noise", m.noise, ("rademacher", "gaussian"))


@dataclass
class PlanarConfig(DensityModelConfig):
    name: str = "planar"
    layers: int = 32  # K planar layers

    @staticmethod
    def check(m) -> None:
        DensityModelConfig.check(m)
        _at_least_one(m, "layers")


# ------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class PaperRow:
    """A row of the paper's Table 1 (Chen et al. 2018; ../shared/docs/paper.md). Memory
    and time as the paper states them: L = ResNet layers, L~ = NFE."""

    test_error: float  # fraction
    params: int  # as rounded in the paper
    memory: str = "-"
    time: str = "-"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str  # in tables and figures
    schema: type
    builder: str  # "module:function", f(model_cfg, solver_cfg) -> nn.Module
    task: str  # CLASSIFY | DENSITY
    gradients: tuple[str, ...] = ()  # of its ODE block, the default first; () = no ODE block
    residual_blocks: str | None = None  # the setting that counts its residual blocks
    paper: PaperRow | None = None

    @property
    def ode_block(self) -> bool:
        return bool(self.gradients)

    @property
    def settings(self) -> list[str]:
        return [f.name for f in fields(self.schema)]

    def gradient(self, wanted: str | None, asked: str = "solver.gradient") -> str:
        """How its ODE block's gradient is computed when ``wanted`` (None: the model's
        default); ConfigError, naming the setting ``asked``, where the model does not allow
        it."""
        if wanted is None:
            return self.gradients[0]
        if wanted not in self.gradients:
            others = [s.name for s in MODELS.values()
                      if s.builder == self.builder and wanted in s.gradients]
            use = f"; for {wanted} use model={others[0]}" if others else ""
            raise ConfigError(f"model={self.name} computes its gradients by "
                              f"{', '.join(self.gradients)}, not {asked}{use}")
        return wanted


MODELS: dict[str, ModelSpec] = {s.name: s for s in (  # Table 1's order
    ModelSpec("mlp", "1-layer MLP", MLPConfig, "odenet.models:build_mlp", CLASSIFY,
              paper=PaperRow(0.0160, 240_000)),
    ModelSpec("resnet", "ResNet", ResNetConfig, "odenet.models:build_resnet", CLASSIFY,
              residual_blocks="num_blocks", paper=PaperRow(0.0041, 600_000, "O(L)", "O(L)")),
    ModelSpec("rknet", "RK-Net", ODENetConfig, "odenet.models:build_odenet", CLASSIFY,
              gradients=(BACKPROP,), paper=PaperRow(0.0047, 220_000, "O(L~)", "O(L~)")),
    ModelSpec("odenet", "ODE-Net", ODENetConfig, "odenet.models:build_odenet", CLASSIFY,
              gradients=(ADJOINT, CHECKPOINT, REVERSIBLE),
              paper=PaperRow(0.0042, 220_000, "O(1)", "O(L~)")),
    ModelSpec("cnf", "CNF", CNFConfig, "odenet.cnf.build:build_cnf", DENSITY,
              gradients=(ADJOINT, BACKPROP, CHECKPOINT, REVERSIBLE)),
    ModelSpec("planar", "planar flow", PlanarConfig, "odenet.cnf.build:build_planar", DENSITY),
)}


def spec(name: str) -> ModelSpec:
    """The model called ``name``; ConfigError naming the known ones otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"model.name={name!r} is not one of: {', '.join(MODELS)}") from None


def models_of(task: str) -> list[str]:
    return [s.name for s in MODELS.values() if s.task == task]
