"""The four MNIST models from one set of blocks, and a registry to build them by name.

    model = build_model(cfg.model, cfg.solver)   # dataclass, DictConfig or plain dict
    ode_blocks(model)          # the ODEBlocks inside (their solver stats and settings)
    measured_blocks(model)     # what activation_block_mib measures (ODE or residual blocks)
    configure_solver(model, rtol=1e-5)   # e.g. at evaluation time
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from odenet.config import ODE_MODELS, model_config, solver_config

from .blocks import ConcatConv2d, ODEBlock, ODEFunc, ResBlock, downsampling, head, norm

__all__ = ["build_model", "register_model", "MODEL_BUILDERS", "Classifier", "ODEBlock",
           "ODEFunc", "ResBlock", "ConcatConv2d", "ode_blocks", "measured_blocks",
           "configure_solver", "reset_solver_stats", "solver_stats", "count_parameters", "norm"]


class Classifier(nn.Module):
    """features -> body -> head; ``body`` is what activation_block_mib measures."""

    def __init__(self, name: str, features: nn.Module, body: nn.Module | None, head: nn.Module):
        super().__init__()
        self.name = name
        self.features, self.body, self.head = features, body, head

    def forward(self, x):
        x = self.features(x)
        if self.body is not None:
            x = self.body(x)
        return self.head(x)


MODEL_BUILDERS: dict[str, Callable[[Any, Any], nn.Module]] = {}


def register_model(name: str):
    """Decorator: ``builder(model_cfg, solver_cfg) -> nn.Module`` becomes buildable by name."""
    def deco(fn):
        MODEL_BUILDERS[name] = fn
        return fn
    return deco


@register_model("mlp")
def _mlp(m, s) -> nn.Module:
    n_in = m.in_channels * m.image_size * m.image_size
    features = nn.Sequential(nn.Flatten(), nn.Linear(n_in, m.hidden), nn.ReLU(inplace=True))
    return Classifier("mlp", features, None, nn.Linear(m.hidden, m.num_classes))


@register_model("resnet")
def _resnet(m, s) -> nn.Module:
    body = nn.Sequential(*[ResBlock(m.width, m.width) for _ in range(m.num_blocks)])
    return Classifier("resnet", downsampling(m.downsampling, m.in_channels, m.width), body,
                      head(m.width, m.num_classes))


def _ode(m, s) -> nn.Module:
    func = ODEFunc(m.width)
    if m.compile:  # in place: parameter names and checkpoints stay those of the eager model
        func.compile()
    block = ODEBlock(func, t1=m.t1, method=s.method, rtol=s.rtol, atol=s.atol,
                     adjoint=bool(s.adjoint), adjoint_norm=s.adjoint_norm,
                     step_size=s.step_size, max_num_steps=s.max_num_steps,
                     last_step=s.last_step)
    return Classifier(m.name, downsampling(m.downsampling, m.in_channels, m.width), block,
                      head(m.width, m.num_classes))


register_model("odenet")(_ode)
register_model("rknet")(_ode)


@register_model("cnf")
@register_model("planar")
def _density(m, s) -> nn.Module:
    """2-D density models (task=density): odenet/cnf builds them."""
    from odenet.cnf.build import build_density_model

    return build_density_model(m, s)


def build_model(model_cfg: Any, solver_cfg: Any = None) -> nn.Module:
    """The network ``model_cfg`` names, with the ODE solver settings of ``solver_cfg``.

    Both may be dataclasses, DictConfigs or plain dicts (a checkpoint's ``config``).
    For odenet/rknet an unset ``solver.adjoint`` follows the model (odenet, cnf: adjoint).
    """
    m = model_config(model_cfg)
    s = None
    if m.name in ODE_MODELS or m.name == "cnf":
        s = solver_config(solver_cfg if solver_cfg is not None else {})
        if s.atol is None or s.adjoint is None:
            s = solver_config({**_plain(s), "atol": s.atol if s.atol is not None else s.rtol,
                               "adjoint": s.adjoint if s.adjoint is not None
                               else m.name in ("odenet", "cnf")})
    try:
        builder = MODEL_BUILDERS[m.name]
    except KeyError:
        raise ValueError(f"unknown model {m.name!r}; known: {', '.join(MODEL_BUILDERS)}") from None
    return builder(m, s)


def _plain(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    return [mod for mod in model.modules() if isinstance(mod, ODEBlock)]


def measured_blocks(model: nn.Module) -> list[nn.Module]:
    """The ODE block(s), or the residual blocks of a Classifier's body; [] for the MLP."""
    blocks = ode_blocks(model)
    if blocks:
        return list(blocks)
    body = getattr(model, "body", None)
    return [body] if body is not None else []


def configure_solver(model: nn.Module, **settings: Any) -> None:
    """Change solver settings (rtol, atol, method, ...) of every ODE block in ``model``."""
    for b in ode_blocks(model):
        b.configure(**settings)


def reset_solver_stats(model: nn.Module) -> None:
    for b in ode_blocks(model):
        b.stats.reset()


def solver_stats(model: nn.Module) -> dict[str, int] | None:
    """The summed SolveStats of all ODE blocks as a dict, or None without an ODE block."""
    blocks = ode_blocks(model)
    if not blocks:
        return None
    total: dict[str, int] = {}
    for b in blocks:
        for k, v in b.stats.as_dict().items():
            total[k] = total.get(k, 0) + v
    return total


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
