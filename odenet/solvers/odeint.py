"""`odeint` and `odeint_adjoint`: the public entry points. Every input is validated here,
in one place, and turned into a `Problem` over one flat state: a tuple y0 is flattened
once, tolerances and the error norm are prepared once, so the stepping cores never see
tuples, tensors of tolerances or user norms on their hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .controllers import CONTROLLERS, DFACTOR, IFACTOR, SAFETY, StepCarry
from .registry import METHODS, REGISTRY, Method, family_solve, gradient_refusal
from .rk import Tally
from .stats import SolveStats

DEFAULT_MAX_NUM_STEPS = 10_000  # adaptive solves: accepted + rejected steps
DEFAULT_METHOD = "dopri5"
# how odeint computes gradients (its `gradient` keyword; see odeint's docstring)
GRADIENTS = ("backprop", "adjoint", "checkpoint", "reversible")

# option -> default, one table per kind of method, so unknown keys can be named precisely
FIXED_OPTIONS: dict[str, Any] = {
    "step_size": None,  # None: the grid is t itself
    "max_num_steps": None,  # None: no limit (as torchdiffeq); a number: refuse longer grids
}
ADAMS_OPTIONS: dict[str, Any] = {**FIXED_OPTIONS, "max_order": 12}  # Adams order <= max_order - 1
ADAPTIVE_OPTIONS: dict[str, Any] = {
    "first_step": None,  # None: Hairer-Wanner's automatic estimate (costs one evaluation)
    # a StepCarry: start from the step the last solve with it proposed (where it has one:
    # else first_step), and leave this solve's next step in it; the adjoint's backward
    # solve takes its own (adjoint_options["carry_step"]), never the forward's
    "carry_step": None,
    "max_num_steps": DEFAULT_MAX_NUM_STEPS,  # accepted + rejected
    "safety": SAFETY,
    "ifactor": IFACTOR,  # largest growth of the step after an accepted step
    "dfactor": DFACTOR,  # largest shrink after a rejected step
    "controller": "I",  # "I" (as torchdiffeq) or "PI" (Hairer's PI controller, smoother)
    # torchdiffeq's bounds: steps are clamped to [min_step, max_step], and a step of at
    # most min_step is accepted whatever its error
    "min_step": 0.0,
    "max_step": math.inf,
    # odenet's underflow guard: raise SolverError below this step (a floor from float
    # precision always applies)
    "fail_below_step": 0.0,
    # "clamp": the last step is cut to end exactly at t[-1]; "overshoot": steps run past
    # t[-1], which is read from the dense output, as torchdiffeq does (NFE step for step)
    "last_step": "clamp",
    "norm": None,  # None: RMS (max over a tuple's tensors); a callable: as torchdiffeq
    # times where func is discontinuous (torchdiffeq's): steps end on them, and f is
    # evaluated again just past each (Runge-Kutta family only)
    "jump_t": None,
}
LAST_STEPS = ("clamp", "overshoot")
# the "odepack" family (LSODA in scipy, odepack.py): ODEPACK's own step control, error
# norm (a weighted max norm) and first step, so only the options that map onto its inputs
ODEPACK_OPTIONS: dict[str, Any] = {
    "first_step": None,  # None: LSODA's own estimate (ODEPACK's h0 = 0)
    "max_num_steps": DEFAULT_MAX_NUM_STEPS,  # accepted steps (LSODA reports no rejected ones)
    "max_step": math.inf,  # ODEPACK's hmax
    # no min_step: ODEPACK's hmin has no effect through scipy's LSODA (scipy 1.17, measured)
    "last_step": "clamp",  # steps never pass t[-1] (ODEPACK's tcrit); "overshoot" is refused
}
ADJOINT_OPTIONS = ("norm", "rtol", "atol", "method", "options", "carry_step")
# the dtypes an adaptive step control runs in: it works in the state's dtype (the odepack
# family excepted: scipy's LSODA runs in float64 whatever the state)
STEP_CONTROL_DTYPES = (torch.float32, torch.float64)
NORMS = ("default", "seminorm")

Func = Callable[[torch.Tensor, Any], Any]


def option_table(method: Method) -> dict[str, Any]:
    if method.family == "odepack":
        return ODEPACK_OPTIONS
    if method.adaptive:
        return ADAPTIVE_OPTIONS
    return ADAMS_OPTIONS if method.family == "adams" else FIXED_OPTIONS


def odeint(func: Func, y0, t, method: str | None = DEFAULT_METHOD, rtol=1e-7, atol=1e-9,
           options: dict | None = None, adjoint: bool | None = None,
           adjoint_params: Iterable[torch.Tensor] | None = None,
           adjoint_options: dict | None = None, stats: SolveStats | None = None,
           gradient: str | None = None):
    """Solve dy/dt = func(t, y), y(t[0]) = y0; returns y at every time in t.

    Call-compatible with torchdiffeq's odeint (and, with adjoint=True, odeint_adjoint;
    `odeint_adjoint` below takes torchdiffeq's keywords). y0 is a tensor (output shape
    (len(t), *y0.shape)) or a tuple of tensors (output: a tuple of such). `stats`, if
    given, accumulates the evaluations and steps of this solve, forward and backward.

    `gradient` (one of GRADIENTS) is how gradients are computed; the outputs are the same:
    - "backprop" (default): autograd through the solver's arithmetic, O(NFE) memory;
    - "adjoint": the paper's backward solve, O(1) memory, not the discrete gradient;
    - "checkpoint": the exact discrete gradient by replaying each accepted step in
      reverse (Zhuang et al. 2020), O(steps x state) memory; Runge-Kutta methods;
    - "reversible": the exact discrete gradient of a reversible method (REVERSIBLE_METHODS,
      e.g. reversible_heun), its trajectory reconstructed backwards, O(1) memory.
    `adjoint=True` is `gradient="adjoint"` and `adjoint=False` is "backprop"; given both,
    they must agree. `adjoint_params` (default: func's parameters, func then a Module) are
    the parameters differentiated by adjoint, checkpoint and reversible; `adjoint_options`
    is used by the adjoint only.
    """
    gradient = _gradient(gradient, adjoint)
    problem = validate(func, y0, t, method, rtol, atol, options)
    back, params = None, ()
    if gradient != "backprop":
        if gradient == "adjoint":
            back = _validate_adjoint_options(adjoint_options, problem)
        _check_gradient_method(gradient, problem.method)
        params = _adjoint_params(func, adjoint_params, gradient)
    return _solve_validated(problem, gradient, params, back, stats)


def _solve_validated(problem: Problem, gradient: str, params: tuple, back: dict | None,
                     stats: SolveStats | None):
    """The validated solve: `gradient` checked against the method, `params` the tensors
    differentiated (adjoint, checkpoint, reversible), `back` the adjoint's settings."""
    if gradient == "backprop" and "backprop" not in problem.method.gradients:
        _check_nothing_to_backprop(problem.func, problem)
    stats = stats if stats is not None else SolveStats()
    if len(problem.times) == 1:
        return problem.unflatten(problem.y0[None].clone())
    if gradient != "backprop" and torch.is_grad_enabled():
        if gradient == "adjoint":
            from .adjoint import adjoint_solve

            return problem.unflatten(adjoint_solve(problem, params, back, stats))
        if gradient == "checkpoint":
            from .checkpoint import checkpoint_solve

            return problem.unflatten(checkpoint_solve(problem, params, stats))
        from .reversible import reversible_solve

        return problem.unflatten(reversible_solve(problem, params, stats))
    if torch.is_grad_enabled() and problem.t.requires_grad:
        return problem.unflatten(_solve_with_time_gradient(problem, stats))
    return problem.unflatten(forward_solve(problem, stats))


def odeint_adjoint(func: Func, y0, t, *, rtol=1e-7, atol=1e-9, method: str | None = None,
                   options: dict | None = None, adjoint_rtol=None, adjoint_atol=None,
                   adjoint_method: str | None = None, adjoint_options: dict | None = None,
                   adjoint_params: Iterable[torch.Tensor] | None = None,
                   stats: SolveStats | None = None):
    """torchdiffeq's `odeint_adjoint`, keyword for keyword: `adjoint_options` are the
    backward solve's options (its "norm": "seminorm" or a callable); each adjoint_*
    defaults to the forward's."""
    method = DEFAULT_METHOD if method is None else method
    if (adjoint_method is not None and adjoint_method != method and options is not None
            and adjoint_options is None):
        raise ValueError(f"adjoint_method={adjoint_method!r} differs from method={method!r}, "
                         "so options cannot be reused: pass adjoint_options too")
    back: dict[str, Any] = {}
    for key, value in (("rtol", adjoint_rtol), ("atol", adjoint_atol), ("method", adjoint_method)):
        if value is not None:
            back[key] = value
    if adjoint_options is not None:
        if not isinstance(adjoint_options, dict):
            raise ValueError("adjoint_options must be a dict, got "
                             f"{type(adjoint_options).__name__}")
        opts = dict(adjoint_options)
        if "norm" in opts:
            back["norm"] = opts.pop("norm")
        back["options"] = opts
    return odeint(func, y0, t, method=method, rtol=rtol, atol=atol, options=options,
                  adjoint=True, adjoint_params=adjoint_params, adjoint_options=back, stats=stats)


class Problem:
    """A validated solve over one flat state: the function as flat -> flat, the times as
    floats, the method, tolerances (numbers or flat tensors), options and error norm."""

    def __init__(self, func, y0, t, times, method, rtol, atol, options, shapes, is_tuple):
        self.func, self.t, self.times = func, t, times
        self.method, self.rtol, self.atol, self.options = method, rtol, atol, options
        self.shapes, self.is_tuple = shapes, is_tuple
        self.sizes = [math.prod(s) for s in shapes]
        self.y0 = torch.cat([y.reshape(-1) for y in y0]) if is_tuple else y0.reshape(-1)
        self.shape = None if is_tuple else shapes[0]
        self.dtype, self.device = self.y0.dtype, self.y0.device
        self.norm = self._norm(options.get("norm"))

    @property
    def tableau(self):
        return self.method.tableau

    def time(self, t: float) -> torch.Tensor:
        """t as func sees it: a 0-dim tensor of the state's dtype, made on its device by a
        fill (no copy, so no sync on a GPU; device.py); the value of torch.tensor(t, dtype)."""
        return torch.scalar_tensor(t, dtype=self.dtype, device=self.device)

    def split(self, flat: torch.Tensor):
        """The flat state as the user's y: a tensor, or a tuple of views."""
        if not self.is_tuple:
            return flat.view(self.shape)
        return tuple(p.view(s) for p, s in zip(flat.split(self.sizes), self.shapes))

    def unflatten(self, ys: torch.Tensor):
        """(len(t), N) -> (len(t), *y0.shape), or a tuple of such for a tuple y0."""
        n = ys.shape[0]
        if not self.is_tuple:
            return ys.view(n, *self.shape)
        return tuple(p.reshape(n, *s) for p, s in zip(ys.split(self.sizes, dim=1), self.shapes))

    def call(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """func at (t, flat y), checked, flat (differentiable: the adjoint uses it too)."""
        f = self.func(t, self.split(y))
        if not self.is_tuple:
            if (not isinstance(f, torch.Tensor) or f.shape != self.shape
                    or f.dtype != self.dtype):
                self._bad_output(f)
            return f.reshape(-1)
        if (not isinstance(f, (tuple, list)) or len(f) != len(self.shapes)
                or any(not isinstance(fi, torch.Tensor) or fi.shape != s or fi.dtype != self.dtype
                       for fi, s in zip(f, self.shapes))):
            self._bad_output(f)
        return torch.cat([fi.reshape(-1) for fi in f])

    def _bad_output(self, f):
        def describe(x):
            if isinstance(x, torch.Tensor):
                return f"a {str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}"
            return type(x).__name__

        dtype = str(self.dtype).replace("torch.", "")
        if self.is_tuple:
            got = ("(" + ", ".join(describe(x) for x in f) + ")"
                   if isinstance(f, (tuple, list)) else describe(f))
            want = f"a tuple of {len(self.shapes)} {dtype} tensors of shapes {self.shapes}"
        else:
            got, want = describe(f), f"a {dtype} tensor of shape {self.shape}"
        raise ValueError(f"func returned {got}; expected {want} (the dtype and shape of y0)")

    def flat_func(self):
        call, time = self.call, self.time

        def fn(t: float, y: torch.Tensor) -> torch.Tensor:
            return call(time(t), y)

        return fn

    def _norm(self, user):
        """The error norm for the core: None (one RMS channel), slices, or a flat callable."""
        if user is None:
            if not self.is_tuple:
                return None
            slices, offset = [], 0
            for size in self.sizes:  # torchdiffeq's mixed norm: max over the tensors' RMS
                slices.append(slice(offset, offset + size))
                offset += size
            return slices
        split = self.split
        return lambda x: user(split(x))


def forward_solve(problem: Problem, stats: SolveStats, y0: torch.Tensor | None = None):
    tally = Tally()
    try:
        return family_solve(problem.method)(
            problem.flat_func(), problem.y0 if y0 is None else y0, problem.times,
            problem.method, problem.rtol, problem.atol, problem.options, tally, problem.norm)
    finally:
        stats.nfe_forward += tally.nfe
        stats.steps_accepted += tally.accepted
        stats.steps_rejected += tally.rejected


def _solve_with_time_gradient(problem: Problem, stats: SolveStats) -> torch.Tensor:
    """Backprop through the solve with gradients for t (adjoint=False).

    The solver's times are numbers, so t enters through the exact derivatives of the
    solution: dy(t_i)/dt_i = f(t_i, y_i), and dy(t_i)/dt_0 = -Phi(t_i, t_0) f(t_0, y_0),
    which is backprop through a solve started from y0 - (t0 - t0.detach()) f(t0, y0).
    The shifts are zero in value, so the outputs are those of the plain solve; it costs
    len(t) evaluations more, and only on this path.
    """
    fn, times = problem.flat_func(), problem.times
    shift = (problem.t - problem.t.detach()).to(device=problem.device, dtype=problem.dtype)
    y0 = problem.y0
    with torch.no_grad():
        f0 = fn(times[0], y0)
    stats.nfe_forward += 1
    ys = forward_solve(problem, stats, y0=y0 - shift[0] * f0)
    with torch.no_grad():
        fs = torch.stack([fn(ti, yi) for ti, yi in zip(times[1:], ys[1:])])
    stats.nfe_forward += len(times) - 1
    return torch.cat([y0[None], ys[1:] + shift[1:, None] * fs])


# --- validation ---------------------------------------------------------------------
def _positive(name: str, value, allow_zero: bool = False, allow_inf: bool = False) -> float:
    accepted = "a non-negative" if allow_zero else "a positive"
    finite = "" if allow_inf else " finite"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {accepted}{finite} number, got {value!r}")
    value = float(value)
    if (math.isnan(value) or (math.isinf(value) and not allow_inf) or value < 0
            or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {accepted}{finite} number, got {value!r}")
    return value


def _tolerance(name: str, value, shapes, is_tuple, like: torch.Tensor):
    """A number, or per element: a tensor broadcast against y0 (a tensor y0) or one number
    per tensor (a tuple y0, as torchdiffeq); returned as a float or a flat tensor."""
    if isinstance(value, torch.Tensor) and (value.dim() == 0 or
                                            (value.numel() == 1 and not is_tuple)):
        return _positive(name, value)
    if is_tuple and isinstance(value, (tuple, list, torch.Tensor)):
        if isinstance(value, torch.Tensor):
            value = value.reshape(-1).tolist()
        if len(value) != len(shapes):
            raise ValueError(f"{name} must be a positive number or one per tensor of the tuple "
                             f"y0 ({len(shapes)}), got {value!r}")
        parts = [like.new_full((math.prod(s),), _positive(f"{name}[{i}]", v))
                 for i, (s, v) in enumerate(zip(shapes, value))]
        return torch.cat(parts)
    if not isinstance(value, torch.Tensor):
        return _positive(name, value)
    if value.requires_grad:
        raise ValueError(f"{name} must not require grad")
    try:
        full = torch.broadcast_to(value, shapes[0])
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast against y0 "
                         f"of shape {shapes[0]}") from None
    if value.is_complex() or not bool(torch.isfinite(value).all()) or not bool((value > 0).all()):
        raise ValueError(f"{name} must hold positive finite numbers, got {value}")
    return full.to(dtype=like.dtype, device=like.device).reshape(-1).contiguous()


def _validate_state(y0, name: str = "y0") -> None:
    if not isinstance(y0, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(y0).__name__}")
    if not y0.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype (float32, float64, ...), "
                         f"got {y0.dtype}")
    if y0.numel() == 0:
        raise ValueError(f"{name} must hold at least one value, got shape {tuple(y0.shape)}")
    if not bool(torch.isfinite(y0).all()):
        raise ValueError(f"{name} contains NaN or Inf; the initial value must be finite")


def controls_steps_in_state_dtype(method: Method) -> bool:
    return method.adaptive and method.family != "odepack"


def dtype_refusal(name: str, dtype: torch.dtype) -> str | None:
    """Why method `name` cannot solve a state of `dtype` (None: it can). Adaptive step
    control in float16 or bfloat16 cannot resolve its own steps: t moves by 1/1024 (1/128)
    at t=1, the error norm overflows or rounds to 0."""
    if not controls_steps_in_state_dtype(REGISTRY[name]) or dtype in STEP_CONTROL_DTYPES:
        return None
    kind = str(dtype).replace("torch.", "")
    return (f"method {name!r} controls its steps in the state's dtype, and {kind} cannot "
            "resolve them: solve a float32 (or float64) y0 and run func under torch.autocast "
            "(as odenet's precision=bf16 does), or use a fixed-grid method")


def tolerance_floor(dtype: torch.dtype) -> float:
    """The smallest tolerance an adaptive step in `dtype` can be held to, eps**2 (float32
    1.4e-14, float64 4.9e-32): a step is no shorter than a few eps of t, and its error
    estimate resolves no better than eps times the step. Below it, the error norm of the
    first-step estimate overflows (a NaN step) or the steps shrink until they stall."""
    return torch.finfo(dtype).eps ** 2


def tolerance_refusal(name: str, rtol, atol, dtype: torch.dtype = torch.float32,
                      names: tuple[str, str] = ("rtol", "atol")) -> str | None:
    """Why method `name` cannot hold a `dtype` state to rtol and atol (numbers, or tensors
    per element): both below `tolerance_floor(dtype)` somewhere (None: it can). `names`:
    how the message calls them (e.g. the config's solver.rtol, solver.atol)."""
    if not controls_steps_in_state_dtype(REGISTRY[name]):
        return None  # a fixed grid uses no tolerance; LSODA checks its own
    floor = tolerance_floor(dtype)
    below = (torch.as_tensor(rtol) < floor) & (torch.as_tensor(atol) < floor)  # per element
    if not bool(below.any()):
        return None

    def show(v):  # a number, or a tensor's smallest
        return f"{v:g}" if isinstance(v, (int, float)) else f"{float(v.min()):g} (min)"

    kind = str(dtype).replace("torch.", "")
    return (f"{names[0]}={show(rtol)} and {names[1]}={show(atol)} are below what {kind} "
            f"resolves (eps**2 = {floor:.2g}, the least error a {name} step in {kind} can be "
            f"held to): raise {names[0]} or {names[1]} to at least {floor:.2g}")


def _check_tolerances(name: str, rtol, atol, dtype: torch.dtype,
                      names: tuple[str, str] = ("rtol", "atol")) -> None:
    refusal = tolerance_refusal(name, rtol, atol, dtype, names)
    if refusal is not None:
        wider = ", or solve in float64" if dtype != torch.float64 else ""
        raise ValueError(refusal + wider)


def validate(func, y0, t, method, rtol, atol, options) -> Problem:
    if not callable(func):
        raise ValueError(f"func must be callable as func(t, y), got {type(func).__name__}")
    is_tuple = isinstance(y0, tuple)
    if is_tuple:
        if not y0:
            raise ValueError("y0 must be a tensor or a non-empty tuple of tensors, got ()")
        for i, y in enumerate(y0):
            _validate_state(y, f"y0[{i}]")
        kinds = {(y.dtype, y.device) for y in y0}
        if len(kinds) > 1:
            raise ValueError(f"the tensors of y0 must share one dtype and device, got {kinds}")
    else:
        if not isinstance(y0, torch.Tensor):
            raise ValueError(f"y0 must be a torch.Tensor or a tuple of tensors, "
                             f"got {type(y0).__name__}")
        _validate_state(y0)
    like = y0[0] if is_tuple else y0
    shapes = [tuple(y.shape) for y in y0] if is_tuple else [tuple(y0.shape)]
    method = DEFAULT_METHOD if method is None else method
    if not isinstance(method, str) or method not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")

    if isinstance(t, torch.Tensor):
        t_tensor = t
    else:
        try:
            t_tensor = torch.tensor(t, dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"t must be a 1-D sequence of times, got {t!r}") from None
    if t_tensor.dim() != 1 or t_tensor.numel() < 1:
        raise ValueError(f"t must be 1-D with at least 1 time, got shape {tuple(t_tensor.shape)}")
    if t_tensor.is_complex() or t_tensor.dtype == torch.bool:
        raise ValueError(f"t must hold real numbers, got dtype {t_tensor.dtype}")
    times = [float(v) for v in t_tensor.detach().cpu().tolist()]
    if not all(math.isfinite(v) for v in times):
        raise ValueError(f"t must be finite, got {times}")
    big = torch.finfo(like.dtype).max  # func sees t in y0's dtype
    if any(abs(v) > big for v in times):
        raise ValueError(f"t must lie within {like.dtype}'s range (|t| <= {big:.6g}), the "
                         f"dtype func sees t in, got {times}")
    steps = [b - a for a, b in zip(times, times[1:])]
    if not (all(s > 0 for s in steps) or all(s < 0 for s in steps)):
        raise ValueError(f"t must be strictly increasing or strictly decreasing, got {times}")

    refusal = dtype_refusal(method, like.dtype)
    if refusal is not None:
        raise ValueError(f"y0 is {str(like.dtype).replace('torch.', '')}: {refusal}")
    rtol = _tolerance("rtol", rtol, shapes, is_tuple, like)
    atol = _tolerance("atol", atol, shapes, is_tuple, like)
    _check_tolerances(method, rtol, atol, like.dtype)
    opts = _validate_options(REGISTRY[method], options)
    return Problem(func, y0, t_tensor, times, REGISTRY[method], rtol, atol, opts, shapes,
                   is_tuple)


def _validate_options(method: Method, options: dict | None) -> dict:
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict, got {type(options).__name__}")
    table = option_table(method)
    unknown = sorted(set(options) - set(table))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method.name!r}; "
                         f"valid options: {', '.join(table)}")
    opts = {**table, **options}
    if not method.adaptive:
        if opts["step_size"] is not None:
            opts["step_size"] = _positive("options['step_size']", opts["step_size"])
        if "max_order" in opts:
            order = opts["max_order"]
            if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 12:
                raise ValueError(f"options['max_order'] must be an integer in 1..12, "
                                 f"got {order!r}")
    elif method.family == "odepack":
        if opts["first_step"] is not None:
            opts["first_step"] = _positive("options['first_step']", opts["first_step"])
        opts["max_step"] = _positive("options['max_step']", opts["max_step"], allow_inf=True)
        if opts["last_step"] != "clamp":  # LSODA stops at tcrit = t[-1]: no overshoot
            raise ValueError(f"options['last_step'] must be 'clamp' for {method.name!r} (its "
                             f"steps stop at t[-1]), got {opts['last_step']!r}")
    else:
        if opts["first_step"] is not None:
            opts["first_step"] = _positive("options['first_step']", opts["first_step"])
        _check_carry("options['carry_step']", opts["carry_step"])
        opts["min_step"] = _positive("options['min_step']", opts["min_step"], allow_zero=True)
        opts["max_step"] = _positive("options['max_step']", opts["max_step"], allow_inf=True)
        if opts["min_step"] > opts["max_step"]:
            raise ValueError(f"options need min_step <= max_step, got min_step="
                             f"{opts['min_step']} and max_step={opts['max_step']}")
        opts["fail_below_step"] = _positive("options['fail_below_step']",
                                            opts["fail_below_step"], allow_zero=True)
        opts["ifactor"] = _positive("options['ifactor']", opts["ifactor"])
        opts["dfactor"] = _positive("options['dfactor']", opts["dfactor"])
        if not (0 < opts["safety"] <= 1) or opts["ifactor"] < 1 or opts["dfactor"] > 1:
            raise ValueError("options need 0 < safety <= 1, ifactor >= 1 and 0 < dfactor <= 1; "
                             f"got safety={opts['safety']}, ifactor={opts['ifactor']}, "
                             f"dfactor={opts['dfactor']}")
        if opts["controller"] not in CONTROLLERS:
            raise ValueError(f"options['controller'] must be one of {', '.join(CONTROLLERS)}, "
                             f"got {opts['controller']!r}")
        if opts["last_step"] not in LAST_STEPS:
            raise ValueError(f"options['last_step'] must be one of {', '.join(LAST_STEPS)}, "
                             f"got {opts['last_step']!r}")
        if method.family == "reversible" and opts["last_step"] != "clamp":
            # no dense output to read t[-1] from: every output time is a step's end
            raise ValueError(f"options['last_step'] must be 'clamp' for {method.name!r} (it "
                             f"has no dense output), got {opts['last_step']!r}")
        opts["jump_t"] = _jump_times(opts["jump_t"])
        if method.family != "rk" and opts["jump_t"]:
            raise ValueError(f"options['jump_t'] needs a Runge-Kutta method, got "
                             f"{method.name!r}: use one of dopri5, bosh3, tsit5, dopri8")
        if opts["norm"] is not None and not callable(opts["norm"]):
            raise ValueError(f"options['norm'] must be a callable (the error norm), "
                             f"got {opts['norm']!r}")
    steps = opts["max_num_steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"options['max_num_steps'] must be a positive integer, got {steps!r}")
    return opts


def _jump_times(value) -> tuple[float, ...]:
    """options['jump_t']: None, or a 1-D tensor or sequence of finite times; sorted floats."""
    if value is None:
        return ()
    bad = ValueError("options['jump_t'] must be a 1-D tensor or sequence of finite times, "
                     f"got {value!r}")
    if isinstance(value, (str, bytes)) or not isinstance(value, (torch.Tensor, tuple, list)):
        raise bad
    try:
        tensor = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value,
                                 dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise bad from None
    if tensor.dim() != 1 or not bool(torch.isfinite(tensor).all()):
        raise bad
    if isinstance(value, torch.Tensor) and (value.is_complex() or value.dtype == torch.bool):
        raise bad
    return tuple(sorted(set(tensor.tolist())))


def _gradient(gradient, adjoint) -> str:
    """The gradient method from `gradient` and the older `adjoint` flag."""
    if gradient is None:
        return "adjoint" if adjoint else "backprop"
    if not isinstance(gradient, str) or gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; valid: {', '.join(GRADIENTS)}")
    if adjoint is not None and bool(adjoint) != (gradient == "adjoint"):
        raise ValueError(f"adjoint={adjoint!r} contradicts gradient={gradient!r}: pass only "
                         "gradient (adjoint=True is gradient='adjoint', False 'backprop')")
    return gradient


def _check_gradient_method(gradient: str, method: Method) -> None:
    reason = gradient_refusal(method.name, gradient)
    if reason is not None:
        raise ValueError(reason)


def _check_nothing_to_backprop(func, problem: Problem) -> None:
    """gradient='backprop' with a method outside autograd: fine while nothing is
    differentiated (no grad mode, or no input requires grad), else a ValueError rather than
    outputs without gradients. A func closing over tensors that require grad is caught by
    the family on its first evaluation (odepack.py)."""
    if not torch.is_grad_enabled():
        return
    params = func.parameters() if isinstance(func, torch.nn.Module) else ()
    if (problem.y0.requires_grad or problem.t.requires_grad
            or any(p.requires_grad for p in params)):
        raise ValueError(gradient_refusal(problem.method.name, "backprop")
                         + " (or solve under torch.no_grad())")


def _adjoint_params(func, adjoint_params, gradient: str = "adjoint") -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        if not isinstance(func, torch.nn.Module):
            needs = "adjoint=True" if gradient == "adjoint" else f"gradient={gradient!r}"
            raise ValueError(f"{needs} needs func to be a torch.nn.Module (its parameters get "
                             "gradients) or adjoint_params=(...); pass adjoint_params=() if "
                             f"func has none, got func of type {type(func).__name__}")
        return tuple(p for p in func.parameters() if p.requires_grad)
    params = tuple(adjoint_params)
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"adjoint_params must be tensors, got {type(p).__name__}")
    return tuple(p for p in params if p.requires_grad)


def _check_carry(name: str, carry) -> None:
    if carry is not None and not isinstance(carry, StepCarry):
        raise ValueError(f"{name} must be a StepCarry (odenet.solvers.StepCarry) or None, "
                         f"got {type(carry).__name__}")
    if carry is not None and carry.h is not None:
        _positive(f"{name}.h", carry.h)


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
    if not callable(norm) and norm not in NORMS:
        raise ValueError(f"adjoint_options['norm'] must be one of {', '.join(NORMS)} or a "
                         f"callable, got {norm!r}")
    name = adjoint_options.get("method", problem.method.name)
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown adjoint method {name!r}; valid methods: {', '.join(METHODS)}")
    same = name == problem.method.name
    if not REGISTRY[name].callable_norm and (callable(norm) or callable(problem.norm)):
        raise ValueError(f"adjoint method {name!r} uses its own error norm (ODEPACK's weighted "
                         "max norm): a callable norm is not supported; use adjoint_options"
                         "['norm'] = 'default' or 'seminorm'")
    if "options" in adjoint_options:
        options = adjoint_options["options"]
        if isinstance(options, dict) and "norm" in options:
            raise ValueError("the backward solve's norm is adjoint_options['norm'], "
                             "not adjoint_options['options']['norm']")
    else:  # the forward's, less its norm (a norm of y, not of the adjoint state) and its
        # carried step (the forward's, not the backward's)
        options = ({k: v for k, v in problem.options.items() if k not in ("norm", "carry_step")}
                   if same else None)
    if adjoint_options.get("carry_step") is not None:
        _check_carry("adjoint_options['carry_step']", adjoint_options["carry_step"])
        if not REGISTRY[name].adaptive or REGISTRY[name].family == "odepack":
            raise ValueError(f"adjoint_options['carry_step'] is for the adaptive Runge-Kutta "
                             f"family; the adjoint method {name!r} takes no carried step")
        options = {**(options or {}), "carry_step": adjoint_options["carry_step"]}

    def tolerance(key):  # the forward's is already prepared
        if key not in adjoint_options:
            return getattr(problem, key)
        return _tolerance(f"adjoint_options['{key}']", adjoint_options[key], problem.shapes,
                          problem.is_tuple, problem.y0)

    rtol, atol = tolerance("rtol"), tolerance("atol")
    _check_tolerances(name, rtol, atol, problem.dtype,
                      ("adjoint_options['rtol']", "adjoint_options['atol']"))
    return {
        "norm": norm,
        "method": REGISTRY[name],
        "rtol": rtol,
        "atol": atol,
        "options": _validate_options(REGISTRY[name], options),
    }

