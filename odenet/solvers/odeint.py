"""`odeint`: the public entry point. Every input is validated here, in one place."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from . import rk
from .stats import SolveStats
from .tableaus import ADAPTIVE_METHODS, METHODS, TABLEAUS

DEFAULT_MAX_NUM_STEPS = 10_000

# option -> default; one table per family, so unknown keys can be named precisely
FIXED_OPTIONS: dict[str, Any] = {"step_size": None, "max_num_steps": DEFAULT_MAX_NUM_STEPS}
ADAPTIVE_OPTIONS: dict[str, Any] = {
    "first_step": None,  # None: Hairer-Wanner's automatic estimate (costs one evaluation)
    "max_num_steps": DEFAULT_MAX_NUM_STEPS,  # accepted + rejected
    "safety": 0.9,
    "ifactor": 10.0,  # largest growth of the step after an accepted step
    "dfactor": 0.2,  # largest shrink after a rejected step
    "controller": "I",  # "I" (as torchdiffeq) or "PI" (Hairer's PI controller, smoother)
    "min_step": 0.0,  # raise SolverError below this (a floor from float precision always applies)
    # "clamp": the last step is cut to end exactly at t[-1]; "overshoot": steps run past
    # t[-1], which is read from the dense output, as torchdiffeq does (NFE step for step)
    "last_step": "clamp",
}
LAST_STEPS = ("clamp", "overshoot")
ADJOINT_OPTIONS = ("norm", "rtol", "atol", "method", "options")
NORMS = ("default", "seminorm")

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def odeint(func: Func, y0: torch.Tensor, t, method: str = "dopri5", rtol: float = 1e-7,
           atol: float = 1e-9, options: dict | None = None, adjoint: bool = False,
           adjoint_params: Iterable[torch.Tensor] | None = None,
           adjoint_options: dict | None = None,
           stats: SolveStats | None = None) -> torch.Tensor:
    """Solve dy/dt = func(t, y), y(t[0]) = y0; returns y at every time in t.

    Call-compatible with torchdiffeq's odeint (and odeint_adjoint when adjoint=True).
    The output has shape (len(t), *y0.shape). `stats`, if given, accumulates the
    evaluations and steps of this solve, in forward and (adjoint) backward.
    """
    problem = validate(func, y0, t, method, rtol, atol, options)
    if (not adjoint and torch.is_grad_enabled() and isinstance(t, torch.Tensor)
            and t.requires_grad):
        raise ValueError("gradients with respect to t need adjoint=True; "
                         "pass t.detach() to backpropagate through the solver")
    stats = stats if stats is not None else SolveStats()
    if adjoint and torch.is_grad_enabled():
        from .adjoint import adjoint_solve

        params = _adjoint_params(func, adjoint_params)
        back = _validate_adjoint_options(adjoint_options, problem)
        return adjoint_solve(problem, params, back, stats)
    return forward_solve(problem, stats)


class Problem:
    """A validated solve: the flat function, times as floats and the method settings."""

    def __init__(self, func, y0, t, times, tableau, rtol, atol, options):
        self.func, self.y0, self.t, self.times = func, y0, t, times
        self.tableau, self.rtol, self.atol, self.options = tableau, rtol, atol, options
        self.shape = tuple(y0.shape)

    def time(self, t: float) -> torch.Tensor:
        return torch.tensor(t, dtype=self.y0.dtype, device=self.y0.device)

    def flat_func(self) -> rk.FlatFunc:
        func, shape = self.func, self.shape

        def fn(t: float, y: torch.Tensor) -> torch.Tensor:
            f = func(self.time(t), y.view(shape))
            if not isinstance(f, torch.Tensor) or f.shape != shape:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(f"func returned {got}; expected a tensor of shape {shape} "
                                 "(the shape of y0)")
            return f.reshape(-1)

        return fn


def forward_solve(problem: Problem, stats: SolveStats) -> torch.Tensor:
    tally = rk.Tally()
    try:
        ys = rk.solve(problem.flat_func(), problem.y0.reshape(-1), problem.times,
                      problem.tableau, problem.rtol, problem.atol, problem.options, tally)
    finally:
        stats.nfe_forward += tally.nfe
        stats.steps_accepted += tally.accepted
        stats.steps_rejected += tally.rejected
    return ys.view(len(problem.times), *problem.shape)


# --- validation ---------------------------------------------------------------------
def _positive(name: str, value, allow_zero: bool = False) -> float:
    accepted = "a non-negative" if allow_zero else "a positive"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {accepted} finite number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {accepted} finite number, got {value!r}")
    return value


def validate(func, y0, t, method, rtol, atol, options) -> Problem:
    if not callable(func):
        raise ValueError(f"func must be callable as func(t, y), got {type(func).__name__}")
    if not isinstance(y0, torch.Tensor):
        raise ValueError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not y0.is_floating_point():
        raise ValueError(f"y0 must have a floating dtype (float32, float64, ...), got {y0.dtype}")
    if y0.numel() == 0:
        raise ValueError(f"y0 must hold at least one value, got shape {tuple(y0.shape)}")
    if not bool(torch.isfinite(y0).all()):
        raise ValueError("y0 contains NaN or Inf; the initial value must be finite")
    if not isinstance(method, str) or method not in TABLEAUS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    tableau = TABLEAUS[method]

    if isinstance(t, torch.Tensor):
        t_tensor = t
    else:
        try:
            t_tensor = torch.tensor(t, dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"t must be a 1-D sequence of times, got {t!r}") from None
    if t_tensor.dim() != 1 or t_tensor.numel() < 2:
        raise ValueError(f"t must be 1-D with at least 2 times, got shape {tuple(t_tensor.shape)}")
    if t_tensor.is_complex() or t_tensor.dtype == torch.bool:
        raise ValueError(f"t must hold real numbers, got dtype {t_tensor.dtype}")
    times = [float(v) for v in t_tensor.detach().cpu().tolist()]
    if not all(math.isfinite(v) for v in times):
        raise ValueError(f"t must be finite, got {times}")
    steps = [b - a for a, b in zip(times, times[1:])]
    if not (all(s > 0 for s in steps) or all(s < 0 for s in steps)):
        raise ValueError(f"t must be strictly increasing or strictly decreasing, got {times}")

    rtol = _positive("rtol", rtol)
    atol = _positive("atol", atol)
    opts = _validate_options(method, options)
    return Problem(func, y0, t_tensor, times, tableau, rtol, atol, opts)


def _validate_options(method: str, options: dict | None) -> dict:
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict, got {type(options).__name__}")
    adaptive = method in ADAPTIVE_METHODS
    table = ADAPTIVE_OPTIONS if adaptive else FIXED_OPTIONS
    unknown = sorted(set(options) - set(table))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; "
                         f"valid options: {', '.join(table)}")
    opts = {**table, **options}
    if not adaptive:
        if opts["step_size"] is None:
            raise ValueError(f"fixed-grid method {method!r} needs options={{'step_size': h}} "
                             "with h > 0 (or choose an adaptive method: "
                             f"{', '.join(ADAPTIVE_METHODS)})")
        opts["step_size"] = _positive("options['step_size']", opts["step_size"])
    else:
        if opts["first_step"] is not None:
            opts["first_step"] = _positive("options['first_step']", opts["first_step"])
        opts["min_step"] = _positive("options['min_step']", opts["min_step"], allow_zero=True)
        opts["ifactor"] = _positive("options['ifactor']", opts["ifactor"])
        opts["dfactor"] = _positive("options['dfactor']", opts["dfactor"])
        if not (0 < opts["safety"] <= 1) or opts["ifactor"] < 1 or opts["dfactor"] > 1:
            raise ValueError("options need 0 < safety <= 1, ifactor >= 1 and 0 < dfactor <= 1; "
                             f"got safety={opts['safety']}, ifactor={opts['ifactor']}, "
                             f"dfactor={opts['dfactor']}")
        if opts["controller"] not in ("I", "PI"):
            raise ValueError(f"options['controller'] must be 'I' or 'PI', "
                             f"got {opts['controller']!r}")
        if opts["last_step"] not in LAST_STEPS:
            raise ValueError(f"options['last_step'] must be one of {', '.join(LAST_STEPS)}, "
                             f"got {opts['last_step']!r}")
    steps = opts["max_num_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"options['max_num_steps'] must be a positive integer, got {steps!r}")
    return opts


def _adjoint_params(func, adjoint_params) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        if isinstance(func, torch.nn.Module):
            return tuple(p for p in func.parameters() if p.requires_grad)
        return ()
    params = tuple(adjoint_params)
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"adjoint_params must be tensors, got {type(p).__name__}")
    return tuple(p for p in params if p.requires_grad)


def _validate_adjoint_options(adjoint_options: dict | None, problem: Problem) -> dict:
    """The backward solve's settings; each defaults to the forward's."""
    adjoint_options = {} if adjoint_options is None else adjoint_options
    if not isinstance(adjoint_options, dict):
        raise ValueError(f"adjoint_options must be a dict, got {type(adjoint_options).__name__}")
    unknown = sorted(set(adjoint_options) - set(ADJOINT_OPTIONS))
    if unknown:
        raise ValueError(f"unknown adjoint option(s) {unknown}; "
                         f"valid: {', '.join(ADJOINT_OPTIONS)}")
    norm = adjoint_options.get("norm", "default")
    if norm not in NORMS:
        raise ValueError(f"adjoint_options['norm'] must be one of {', '.join(NORMS)}, got {norm!r}")
    method = adjoint_options.get("method", problem.tableau.name)
    if not isinstance(method, str) or method not in TABLEAUS:
        raise ValueError(f"unknown adjoint method {method!r}; valid methods: {', '.join(METHODS)}")
    same = method == problem.tableau.name
    options = adjoint_options.get("options", problem.options if same else None)
    return {
        "norm": norm,
        "tableau": TABLEAUS[method],
        "rtol": _positive("adjoint_options['rtol']", adjoint_options.get("rtol", problem.rtol)),
        "atol": _positive("adjoint_options['atol']", adjoint_options.get("atol", problem.atol)),
        "options": _validate_options(method, options),
    }
