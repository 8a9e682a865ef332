"""The one table of methods: each name says which family solves it.

A family is a stepping core with one entry point
    solve(fn, y0, times, method, rtol, atol, options, tally, norm) -> (len(times), N) tensor
over a flat state (see `rk.solve`), plus the table of options it accepts (`OPTIONS`, in
odeint.py). Today: "rk" (explicit Runge-Kutta, every tableau in tableaus.py, fixed grid or
adaptive), "adams" (explicit Adams-Bashforth on a fixed grid, multistep.py) and
"reversible" (the reversible Heun method, fixed grid or adaptive, reversible.py).

To plug in a new family (an implicit multistep method, a reversible method, ...): write
its `solve` in a module of its own, add it to `_FAMILIES` below and its methods to
`REGISTRY`, and give odeint.py's `OPTIONS` its option table. odeint's validation, the
tuple/tolerance/norm handling, the adjoint and the stats then work unchanged.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .tableaus import TABLEAUS, Tableau


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # a key of _FAMILIES
    adaptive: bool  # adaptive step control (else a fixed grid)
    order: int
    tableau: Tableau | None = None  # the Runge-Kutta family's data


REGISTRY: dict[str, Method] = {
    name: Method(name, "rk", tab.adaptive, tab.order, tab) for name, tab in TABLEAUS.items()
}
REGISTRY["explicit_adams"] = Method("explicit_adams", "adams", False, 4)
# reversible Heun (reversible.py): fixed grid, and adaptive with its Heun-Euler estimate
REGISTRY["reversible_heun"] = Method("reversible_heun", "reversible", False, 2)
REGISTRY["adaptive_reversible_heun"] = Method("adaptive_reversible_heun", "reversible", True, 2)

# family -> module holding its `solve` (imported on first use)
_FAMILIES = {"rk": ".rk", "adams": ".multistep", "reversible": ".reversible"}


def family_solve(method: Method):
    return importlib.import_module(_FAMILIES[method.family], __package__).solve


FIXED_METHODS = tuple(name for name, m in REGISTRY.items() if not m.adaptive)
ADAPTIVE_METHODS = tuple(name for name, m in REGISTRY.items() if m.adaptive)
METHODS = FIXED_METHODS + ADAPTIVE_METHODS
RK_METHODS = tuple(name for name, m in REGISTRY.items() if m.family == "rk")  # checkpointable
# methods whose steps invert exactly (gradient="reversible")
REVERSIBLE_METHODS = tuple(name for name, m in REGISTRY.items() if m.family == "reversible")
