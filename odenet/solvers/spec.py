"""A solve described once and prepared once: `SolveSpec` (the settings, validated in its
constructor) and `prepare(spec, func, like, t)` -> `PreparedSolve`, whose call solves from
a new y0 without validating again what cannot have changed (method, options, tolerances,
times, parameters, the adjoint's settings). `odeint` validates everything on every call;
a model's ODE block solving the same problem each forward calls a prepared solve.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from .controllers import StepCarry
from .odeint import (
    GRADIENTS,
    LAST_STEPS,
    NORMS,
    _adjoint_params,
    _check_gradient_method,
    _positive,
    _solve_validated,
    _validate_adjoint_options,
    validate,
)
from .registry import METHODS, REGISTRY
from .stats import SolveStats


@dataclass(frozen=True)
class SolveSpec:
    """How to solve: every setting of a solve but the function, the state and the times.
    Bad values raise odeint's one-line ValueErrors on construction."""

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    gradient: str = "adjoint"  # one of GRADIENTS
    adjoint_norm: str = "default"  # the adjoint's error norm: default | seminorm
    step_size: float | None = None  # fixed-grid methods: None = the grid is t
    max_num_steps: int | None = None  # None: odeint's default for the method
    last_step: str = "clamp"  # adaptive methods: clamp | overshoot
    # adaptive Runge-Kutta methods: each solve starts from the step the previous one
    # proposed (a StepCarry per direction: forward, and the adjoint's backward)
    carry_step: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # any other option of odeint

    def __post_init__(self):
        if not isinstance(self.method, str) or self.method not in REGISTRY:
            raise ValueError(f"unknown method {self.method!r}; valid methods: "
                             f"{', '.join(METHODS)}")
        for name in ("rtol", "atol"):
            _positive(name, getattr(self, name))
        if not isinstance(self.gradient, str) or self.gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {self.gradient!r}; valid: {', '.join(GRADIENTS)}")
        _check_gradient_method(self.gradient, REGISTRY[self.method])
        if self.adjoint_norm not in NORMS:
            raise ValueError(f"adjoint_norm must be one of {', '.join(NORMS)}, "
                             f"got {self.adjoint_norm!r}")
        if self.last_step not in LAST_STEPS:
            raise ValueError(f"last_step must be one of {', '.join(LAST_STEPS)}, "
                             f"got {self.last_step!r}")
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict, got {type(self.options).__name__}")
        method = REGISTRY[self.method]
        if self.carry_step and (not method.adaptive or method.family == "odepack"):
            raise ValueError(f"carry_step is for the adaptive Runge-Kutta family, got the "
                             f"method {self.method!r}")
        if self.step_size is not None and method.adaptive:
            raise ValueError(f"step_size is for fixed-grid methods, got step_size="
                             f"{self.step_size!r} with the adaptive method {self.method!r}")
        # the options, as odeint checks them; the state's dtype is prepare()'s to check (a
        # tolerance float32 cannot resolve may suit float64)
        validate(lambda t, y: y, torch.zeros(1, dtype=torch.float64), [0.0, 1.0], self.method,
                 self.rtol, self.atol, self.odeint_options())

    def odeint_options(self) -> dict[str, Any]:
        """The `options` of odeint for these settings."""
        opts = dict(self.options)
        if self.max_num_steps is not None:
            opts["max_num_steps"] = self.max_num_steps
        if REGISTRY[self.method].adaptive:
            opts["last_step"] = self.last_step
        elif self.step_size is not None:
            opts["step_size"] = self.step_size
        return opts

    def adjoint_options(self) -> dict[str, Any] | None:
        return {"norm": self.adjoint_norm} if self.gradient == "adjoint" else None


class PreparedSolve:
    """`solve(y0, stats=None)`: odeint(func, y0, t, ...) with the spec's settings, for any
    y0 of `like`'s shape, dtype and device; returns y at every time of t, (len(t),
    *y0.shape). The parameters differentiated (all but backprop) are those of
    `params` (default: func's parameters that required grad when prepared)."""

    def __init__(self, spec: SolveSpec, func, like: torch.Tensor, t, params=None,
                 carry: tuple[StepCarry, StepCarry] | None = None):
        if not isinstance(spec, SolveSpec):
            raise ValueError(f"spec must be a SolveSpec, got {type(spec).__name__}")
        if not isinstance(like, torch.Tensor):
            raise ValueError(f"like must be a torch.Tensor (the state's shape, dtype and "
                             f"device), got {type(like).__name__}")
        self.spec = spec
        if isinstance(t, torch.Tensor):
            t = t.to(device=like.device)
        if carry is not None and not spec.carry_step:
            raise ValueError("carry is for a SolveSpec with carry_step=True")
        # (forward, backward) steps carried across calls: the caller's, else this solve's own
        self.carry = (carry or (StepCarry(), StepCarry())) if spec.carry_step else None
        options = spec.odeint_options()
        if self.carry is not None:
            options["carry_step"] = self.carry[0]
        self.problem = validate(func, like.detach(), t, spec.method, spec.rtol, spec.atol,
                                options)
        self.shape, self.dtype, self.device = tuple(like.shape), like.dtype, like.device
        self.params: tuple[torch.Tensor, ...] = ()
        self.back = None
        if spec.gradient != "backprop":
            self.params = _adjoint_params(func, params, spec.gradient)
            if spec.gradient == "adjoint":
                back = spec.adjoint_options()
                if self.carry is not None:
                    back["carry_step"] = self.carry[1]
                self.back = _validate_adjoint_options(back, self.problem)

    @property
    def t(self) -> torch.Tensor:
        return self.problem.t

    def __call__(self, y0: torch.Tensor, stats: SolveStats | None = None) -> torch.Tensor:
        if (not isinstance(y0, torch.Tensor) or tuple(y0.shape) != self.shape
                or y0.dtype != self.dtype or y0.device != self.device):
            got = (f"a {y0.dtype} tensor of shape {tuple(y0.shape)} on {y0.device}"
                   if isinstance(y0, torch.Tensor) else type(y0).__name__)
            raise ValueError(f"y0 must be a {self.dtype} tensor of shape {self.shape} on "
                             f"{self.device} (as prepared), got {got}")
        problem = copy.copy(self.problem)
        problem.y0 = y0.reshape(-1)
        return _solve_validated(problem, self.spec.gradient, self.params, self.back, stats)

    solve = __call__


def prepare(spec: SolveSpec, func, like: torch.Tensor, t, params=None,
            carry: tuple[StepCarry, StepCarry] | None = None) -> PreparedSolve:
    """Validate a solve once (see PreparedSolve); `like`: a state of the shape, dtype and
    device every y0 will have, `t` the times (a 1-D tensor or sequence); `carry`: the
    (forward, backward) StepCarry of a spec with carry_step, shared with other prepared
    solves (default: this solve's own)."""
    return PreparedSolve(spec, func, like, t, params, carry)

