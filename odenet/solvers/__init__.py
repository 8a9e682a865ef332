"""odenet.solvers: explicit Runge-Kutta ODE solvers with the adjoint method, instrumented.

    from odenet.solvers import odeint, SolveStats
    stats = SolveStats()
    ys = odeint(func, y0, t, method="dopri5", rtol=1e-3, atol=1e-3, adjoint=True, stats=stats)

torch only: no Hydra, no files, no datasets.
"""

from .odeint import odeint
from .stats import SolverError, SolveStats
from .tableaus import ADAPTIVE_METHODS, FIXED_METHODS, METHODS, TABLEAUS

__all__ = ["odeint", "SolveStats", "SolverError", "METHODS", "FIXED_METHODS",
           "ADAPTIVE_METHODS", "TABLEAUS"]
