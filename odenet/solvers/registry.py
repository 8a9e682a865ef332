"""The one table of methods: each name says which family solves it.

A family is a stepping core with one entry point
    solve(fn, y0, times, method, rtol, atol, options, tally, norm) -> (len(times), N) tensor
over a flat state (see `rk.solve`), plus the table of options it accepts (`OPTIONS`, in
odeint.py). Today: "rk" (explicit Runge-Kutta, every tableau in tableaus.py, fixed grid or
adaptive), "adams" (explicit Adams-Bashforth on a fixed grid, multistep.py),
"reversible" (the reversible Heun method, fixed grid or adaptive, reversible.py) and
"odepack" (LSODA, ODEPACK's Adams/BDF solver with automatic stiffness switching, the
paper's solver family, run by scipy in float64: odepack.py; the only module of the library
that imports numpy and scipy, lazily, from the `lsoda` extra). A method's `gradients` say
how odeint may differentiate its solves: autograd cannot go through scipy, so lsoda's
gradient is the adjoint only (its forward and backward solves are both LSODA).

To plug in a new family (an implicit multistep method, a reversible method, ...): write
its `solve` in a module of its own, add it to `_FAMILIES` below and its methods to
`REGISTRY`, and give odeint.py's `OPTIONS` its option table. odeint's validation, the
tuple/tolerance/norm handling, the adjoint and the stats then work unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from .tableaus import TABLEAUS, Tableau


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # a key of _FAMILIES
    adaptive: bool  # adaptive step control (else a fixed grid)
    order: int
    tableau: Tableau | None = None  # the Runge-Kutta family's data
    # how odeint may compute its gradients (odeint.GRADIENTS); config validation reads it
    gradients: tuple[str, ...] = ("backprop", "adjoint")
    # takes a callable error norm (options["norm"], adjoint_options["norm"])
    callable_norm: bool = True


REGISTRY: dict[str, Method] = {
    name: Method(name, "rk", tab.adaptive, tab.order, tab,
                 gradients=("backprop", "adjoint", "checkpoint"))
    for name, tab in TABLEAUS.items()
}
REGISTRY["explicit_adams"] = Method("explicit_adams", "adams", False, 4)
# reversible Heun (reversible.py): fixed grid, and adaptive with its Heun-Euler estimate
_REVERSIBLE = ("backprop", "adjoint", "reversible")
REGISTRY["reversible_heun"] = Method("reversible_heun", "reversible", False, 2,
                                     gradients=_REVERSIBLE)
REGISTRY["adaptive_reversible_heun"] = Method("adaptive_reversible_heun", "reversible", True, 2,
                                              gradients=_REVERSIBLE)
# LSODA (odepack.py): variable order, Adams 1-12 while non-stiff, BDF 1-5 while stiff
REGISTRY["lsoda"] = Method("lsoda", "odepack", True, 12, gradients=("adjoint",),
                           callable_norm=False)

# family -> module holding its `solve` (imported on first use)
_FAMILIES = {"rk": ".rk", "adams": ".multistep", "reversible": ".reversible",
             "odepack": ".odepack"}


# family -> (the third-party module it imports when it solves, odenet's extra installing it)
_NEEDS = {"odepack": ("scipy", "lsoda")}


def family_solve(method: Method):
    return importlib.import_module(_FAMILIES[method.family], __package__).solve


def method_unavailable(name: str) -> str | None:
    """Why method `name` cannot solve here (its family's third-party module is not
    installed), as one line naming the extra to install; None when it can. Looks the module
    up without importing it, so config validation can ask before anything trains."""
    needs = _NEEDS.get(REGISTRY[name].family)
    if needs is None or importlib.util.find_spec(needs[0]) is not None:
        return None
    module, extra = needs
    return f"method {name!r} needs {module}, which is not installed: pip install 'odenet[{extra}]'"


FIXED_METHODS = tuple(name for name, m in REGISTRY.items() if not m.adaptive)
ADAPTIVE_METHODS = tuple(name for name, m in REGISTRY.items() if m.adaptive)
METHODS = FIXED_METHODS + ADAPTIVE_METHODS
RK_METHODS = tuple(name for name, m in REGISTRY.items() if m.family == "rk")  # checkpointable
# methods whose steps invert exactly (gradient="reversible")
REVERSIBLE_METHODS = tuple(name for name, m in REGISTRY.items() if m.family == "reversible")
# methods solved outside autograd (scipy): their only gradient is the adjoint
ADJOINT_ONLY_METHODS = tuple(name for name, m in REGISTRY.items()
                             if "backprop" not in m.gradients)


def gradient_refusal(name: str, gradient: str) -> str | None:
    """Why method `name` cannot compute `gradient` (its `Method.gradients`), in one line
    saying what would; None when it can. The one rule odeint and config validation apply."""
    method = REGISTRY[name]
    if gradient in method.gradients:
        return None
    if "backprop" not in method.gradients:  # solved outside autograd (lsoda)
        return (f"method {name!r} solves outside autograd (in scipy), so gradient="
                f"{gradient!r} cannot go through its steps: use gradient="
                + " or ".join(repr(g) for g in method.gradients))
    if gradient == "checkpoint":
        return (f"gradient='checkpoint' replays Runge-Kutta steps; method {name!r} is not "
                f"one: use one of {', '.join(RK_METHODS)}")
    if gradient == "reversible":
        return (f"gradient='reversible' needs a reversible method, got {name!r}: use one of "
                f"{', '.join(REVERSIBLE_METHODS)}")
    return f"method {name!r} takes gradient {' | '.join(method.gradients)}, not {gradient!r}"
