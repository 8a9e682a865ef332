"""The four MNIST models from one set of blocks; ``build_model`` builds any registered model.

    model = build_model(cfg.model, cfg.solver)   # DictConfig or plain dict
    model = build(cfg.model, cfg.solver)         # a validated config's nodes, as they are
    ode_blocks(model)          # the ODEBlocks inside (their solver stats and settings)
    measured_blocks(model)     # what activation_block_mib measures (ODE or residual blocks)
    model.ode_output(model.ode_block(model.ode_input(x)))   # = model(x): the ODE block's
                               # input, the block, the rest (also a CNF's; None: no block)
    configure_solver(model, rtol=1e-5)   # e.g. at evaluation time
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from torch import nn

from odenet.config.model_registry import spec
from odenet.config.schema import model_config, solver_config

from .blocks import ConcatConv2d, ODEBlock, ODEFunc, ResBlock, downsampling, head, norm

log = logging.getLogger("odenet.models")

__all__ = ["build", "build_model", "build_mlp", "build_resnet", "build_odenet", "Classifier",
           "ODEBlock", "ODEFunc", "ResBlock", "ConcatConv2d", "ode_blocks", "measured_blocks",
           "configure_solver", "reset_solver_stats", "solver_stats", "dynamics_penalty", "norm"]


class Classifier(nn.Module):
    """features -> body -> head; ``body`` is what activation_block_mib measures.

    ``ode_input``, ``ode_block``, ``ode_output``: the network around its ODE block, the
    interface by which evaluate and gradients re-solve that block (odenet.cnf.CNF has it
    too); ``ode_block`` is None for a model without one."""

    def __init__(self, name: str, features: nn.Module, body: nn.Module | None, head: nn.Module):
        super().__init__()
        self.name = name
        self.features, self.body, self.head = features, body, head

    def forward(self, x):
        x = self.features(x)
        if self.body is not None:
            x = self.body(x)
        return self.head(x)

    @property
    def ode_block(self) -> ODEBlock | None:
        return self.body if isinstance(self.body, ODEBlock) else None

    def ode_input(self, x):
        """h(0), the ODE block's input, for a batch of images."""
        return self.features(x)

    def ode_output(self, h):
        """The logits from the ODE block's output h(t1)."""
        return self.head(h)

    def ode_refusal(self) -> str | None:
        """Why its ODE block cannot be re-solved against a reference (None: it can)."""
        return None


def build_mlp(m, s=None) -> nn.Module:
    n_in = m.in_channels * m.image_size * m.image_size
    features = nn.Sequential(nn.Flatten(), nn.Linear(n_in, m.hidden), nn.ReLU(inplace=True))
    return Classifier(m.name, features, None, nn.Linear(m.hidden, m.num_classes))


def build_resnet(m, s=None) -> nn.Module:
    body = nn.Sequential(*[ResBlock(m.width, m.width) for _ in range(m.num_blocks)])
    return Classifier(m.name, downsampling(m.downsampling, m.in_channels, m.width), body,
                      head(m.width, m.num_classes))


def build_odenet(m, s) -> nn.Module:
    """ODE-Net and RK-Net: the same network; ``s.gradient`` says how gradients are computed."""
    func = ODEFunc(m.width)
    if m.compile:
        compile_in_place(func)
    block = ODEBlock.from_config(func, m.t1, s).regularize(
        m.kinetic_weight, m.jacobian_weight, m.t1_jitter)
    return Classifier(m.name, downsampling(m.downsampling, m.in_channels, m.width), block,
                      head(m.width, m.num_classes))


def compile_in_place(module: nn.Module) -> bool:
    """torch.compile ``module`` in place (parameter names and checkpoints stay the eager
    model's). Shapes: the first batch size compiles a static graph, a second one (the test
    batch, the last partial batch) one dynamic in the batch, reused by every later size;
    inductor's on-disk cache serves later processes. Without a C++ compiler (inductor's
    CPU code needs one): one line and eager execution. Returns whether it compiled."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:  # torch's InvalidCxxCompiler, or anything the search raised
        log.warning("model.compile=true needs a C++ compiler for torch.compile (%s): "
                    "running eager", str(e).strip().splitlines()[0] if str(e).strip()
                    else type(e).__name__)
        return False
    module.compile()
    return True


def build(model_cfg: Any, solver_cfg: Any = None) -> nn.Module:
    """The network of a validated config's ``model`` and ``solver`` nodes (what
    ``config.to_config`` returns; the trainer's): nothing is validated again."""
    model = spec(model_cfg.name)
    module, _, func = model.builder.partition(":")
    return getattr(importlib.import_module(module), func)(
        model_cfg, solver_cfg if model.ode_block else None)


def build_model(model_cfg: Any, solver_cfg: Any = None, *, strict: bool = True) -> nn.Module:
    """The network ``model_cfg`` names (odenet/config/model_registry.py), with the solver
    settings of ``solver_cfg`` where it has an ODE block, both validated first.

    Both may be validated configs, DictConfigs or plain dicts (a checkpoint's ``config``);
    ``strict=False`` drops keys the schemas do not have (a checkpoint of another version).
    """
    m = model_config(model_cfg, strict=strict)
    s = solver_config(solver_cfg or {}, m.name, strict=strict) if spec(m.name).ode_block \
        else None
    return build(m, s)


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


def dynamics_penalty(model: nn.Module) -> tuple[Any, dict[str, Any]]:
    """(the weighted penalties of the ODE blocks' last training solves, to add to the loss:
    None without any; their unweighted integrals by name, batch means as detached tensors:
    None where not computed), each block's then
    cleared so that a solve without them (evaluation) adds nothing."""
    total, values = None, {}
    for b in ode_blocks(model):
        if b.penalty is not None:
            total = b.penalty if total is None else total + b.penalty
            values.update(b.penalties)
        b.penalty, b.penalties = None, {}
    return total, values


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
