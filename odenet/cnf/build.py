"""Builders of the density models (registered in odenet/config/model_registry.py as ``cnf`` and
``planar``): ``f(model_cfg, solver_cfg) -> nn.Module`` from validated configs (schemas
``CNFConfig`` and ``PlanarConfig`` in odenet/config/model_registry.py).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from odenet.cnf.cnf import CNF
from odenet.cnf.fields import ConcatField, HyperField
from odenet.cnf.planar import PlanarFlow
from odenet.models.blocks import ODEBlock


def build_field(m: Any) -> nn.Module:
    """The vector field f(t, z) that ``m.field`` names."""
    if m.field == "hyper":  # the paper's: width-M layer from a hypernetwork of t
        return HyperField(m.dim, width=m.width, hidden=m.hidden)
    if m.field == "concat":  # depth hidden layers of `width` units, t appended to each input
        return ConcatField(m.dim, hidden=(m.width,) * m.depth, activation=m.activation)
    raise ValueError(f"unknown CNF field {m.field!r} (hyper | concat)")


def build_cnf(m: Any, s: Any) -> CNF:
    """A CNF with the solver settings of ``s`` (a validated SolverConfig)."""
    solver = {k: s[k] for k in ODEBlock.SETTINGS}
    return CNF(build_field(m), dim=m.dim, t0=0.0, t1=m.t1, base_std=m.base_std,
               trace=m.trace, noise=m.noise, eval_trace=m.eval_trace, **solver)


def build_planar(m: Any, s: Any = None) -> PlanarFlow:
    return PlanarFlow(m.dim, layers=m.layers, base_std=m.base_std)
