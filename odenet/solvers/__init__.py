"""odenet.solvers: explicit Runge-Kutta, Adams and reversible Heun ODE solvers, and LSODA
(ODEPACK through scipy, the `lsoda` extra), with four gradient methods (backprop, adjoint,
checkpoint, reversible; `odeint(gradient=...)`), instrumented, and call-compatible with
torchdiffeq (see docs/solvers.md, "Switching from torchdiffeq").

    from odenet.solvers import odeint, SolveStats
    stats = SolveStats()
    ys = odeint(func, y0, t, method="dopri5", rtol=1e-3, atol=1e-3, adjoint=True, stats=stats)

torch only (numpy and scipy in odepack.py alone, imported when lsoda solves): no Hydra, no
files, no datasets. Methods and the family solving each are in registry.py (where a new
family plugs in); step-size controllers in controllers.py.
"""

from .controllers import BoundedController, IController, PIController, StepCarry
from .device import TRAFFIC
from .events import odeint_event
from .odeint import (
    DEFAULT_MAX_NUM_STEPS,
    GRADIENTS,
    dtype_refusal,
    odeint,
    odeint_adjoint,
    tolerance_floor,
    tolerance_refusal,
)
from .registry import (
                       ADAPTIVE_METHODS,
                       ADJOINT_ONLY_METHODS,
                       FIXED_METHODS,
                       METHODS,
                       REGISTRY,
                       REVERSIBLE_METHODS,
                       RK_METHODS,
                       gradient_refusal,
                       method_unavailable,
)
from .rk import release_buffers
from .spec import PreparedSolve, SolveSpec, prepare
from .stats import SolverError, SolveStats
from .tableaus import TABLEAUS

__all__ = ["odeint", "odeint_adjoint", "odeint_event", "SolveStats", "SolverError", "METHODS",
           "FIXED_METHODS", "ADAPTIVE_METHODS", "TABLEAUS", "REGISTRY", "DEFAULT_MAX_NUM_STEPS",
           "IController", "PIController", "BoundedController", "GRADIENTS", "RK_METHODS",
           "REVERSIBLE_METHODS", "ADJOINT_ONLY_METHODS", "gradient_refusal",
           "method_unavailable", "SolveSpec", "PreparedSolve", "prepare", "dtype_refusal",
           "tolerance_floor", "tolerance_refusal", "StepCarry", "release_buffers", "TRAFFIC"]
