"""Build a density model (``cnf`` or ``planar``) from the model and solver configs.

``model_cfg`` fields read here (configs/model/cnf*.yaml, planar.yaml; schema in
odenet/config.py): name, dim, base_std; cnf: field (hyper | concat), width, hidden,
depth, activation, t1, trace, noise, eval_trace; planar: layers.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from odenet.cnf.fields import ConcatField, HyperField


def build_field(m: Any) -> nn.Module:
    """The vector field f(t, z) that ``m.field`` names."""
    if m.field == "hyper":  # the paper's: width-M layer from a hypernetwork of t
        return HyperField(m.dim, width=m.width, hidden=m.hidden)
    if m.field == "concat":  # depth hidden layers of `width` units, t appended to each input
        return ConcatField(m.dim, hidden=(m.width,) * m.depth, activation=m.activation)
    raise ValueError(f"unknown CNF field {m.field!r} (hyper | concat)")


def build_density_model(m: Any, s: Any = None) -> nn.Module:
    """A CNF or planar flow from a validated ModelConfig ``m`` and SolverConfig ``s``."""
    if m.name == "planar":
        from odenet.cnf.planar import PlanarFlow

        return PlanarFlow(m.dim, layers=m.layers, base_std=m.base_std)
    if m.name == "cnf":
        from odenet.cnf.cnf import CNF

        solver: dict[str, Any] = {}
        if s is not None:
            solver = dict(method=s.method, rtol=s.rtol,
                          atol=s.atol if s.atol is not None else s.rtol,
                          adjoint=True if s.adjoint is None else bool(s.adjoint),
                          adjoint_norm=s.adjoint_norm, step_size=s.step_size,
                          max_num_steps=s.max_num_steps, last_step=s.last_step)
        return CNF(build_field(m), dim=m.dim, t0=0.0, t1=m.t1, base_std=m.base_std,
                   trace=m.trace, noise=m.noise, eval_trace=m.eval_trace, **solver)
    raise ValueError(f"{m.name!r} is not a density model (cnf | planar)")
