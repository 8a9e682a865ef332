"""`odeint_event`: solve until an event function crosses zero (a terminal event), with
gradients through the event time, called as torchdiffeq's.

1. Find the event time t* without a graph: adaptive steps from t0 until event_fn changes
   sign at a step's end, then bisection on the step's dense output (no more evaluations
   of func).
2. Solve again from t0 to t* (held fixed) with `odeint_interface` (odeint, or
   odeint_adjoint), so the state y(t*) has the interface's gradients at fixed time.
3. Reroute gradients as the implicit function theorem says: with c(t*, y(t*)) = 0,
   dt*/dθ = -(∂c/∂y · dy/dθ + ∂c/∂θ) / (∂c/∂t + ∂c/∂y · f). So a loss L(t*, y(t*)) sends
   y(t*) the gradient L_y + λ ∂c/∂y and event_fn's parameters λ ∂c/∂θ, with
   λ = -(L_t + L_y · f) / (∂c/∂t + ∂c/∂y · f).
The solve runs twice (find, then differentiate): about twice torchdiffeq's NFE.
"""

from __future__ import annotations

import torch

from . import rk
from .adaptive import drive
from .device import read
from .odeint import odeint, validate
from .stats import SolverError, SolveStats


def odeint_event(func, y0, t0, *, event_fn, reverse_time: bool = False,
                 odeint_interface=odeint, **kwargs):
    """Returns (event_t, solution): the first time event_fn(t, y) crosses zero after t0
    (before t0 with reverse_time=True), and the solution at [t0, event_t]. event_fn may
    return several values: the first of them to cross zero ends the solve."""
    if not callable(event_fn):
        raise ValueError(f"event_fn must be callable as event_fn(t, y), got {event_fn!r}")
    t0 = torch.as_tensor(t0)
    if t0.numel() != 1:
        raise ValueError(f"t0 must be one time, got shape {tuple(t0.shape)}")
    t0 = t0.reshape(())
    direction = -1.0 if reverse_time else 1.0
    probe_t = torch.stack([t0.detach(), t0.detach() + direction])
    problem = validate(func, y0, probe_t, kwargs.get("method"), kwargs.get("rtol", 1e-7),
                       kwargs.get("atol", 1e-9), kwargs.get("options"))
    if not problem.method.adaptive or problem.method.family != "rk":  # bisects RK dense output
        raise ValueError(f"odeint_event needs an adaptive method of the Runge-Kutta family, "
                         f"got {problem.method.name!r}")
    if problem.options["jump_t"]:  # the event search steps without them
        raise ValueError("odeint_event does not take options['jump_t']; solve with odeint "
                         "up to the jump first")
    stats = kwargs.get("stats") or SolveStats()
    with torch.no_grad():
        sign0 = torch.sign(event_fn(problem.time(problem.times[0]), problem.split(problem.y0)))

    def event(t: torch.Tensor, y_flat: torch.Tensor) -> torch.Tensor:
        """All crossings as one: positive at t0, <= 0 once any value has changed sign."""
        return torch.min(event_fn(t, problem.split(y_flat)) * sign0)

    t_star = _find_event(problem, event, direction, stats)
    t_event = torch.tensor(t_star, dtype=t0.dtype, device=t0.device)
    solution = odeint_interface(func, y0, torch.stack([t0, t_event]), **kwargs)
    last = (torch.cat([s[-1].reshape(-1) for s in solution]) if problem.is_tuple
            else solution[-1].reshape(-1))
    params = tuple(p for p in event_fn.parameters() if p.requires_grad) \
        if isinstance(event_fn, torch.nn.Module) else ()
    event_t, state = _RerouteEventGradient.apply((problem, event), t_event, last, *params)
    if problem.is_tuple:
        parts = problem.split(state)
        return event_t, tuple(torch.cat([s[:-1], p[None]]) for s, p in zip(solution, parts))
    return event_t, torch.cat([solution[:-1], state.view(problem.shape)[None]])


def _find_event(problem, event, direction: float, stats: SolveStats) -> float:
    """Adaptive steps from t0 (the problem's method, tolerances and options) until the
    event crosses zero; the crossing time located by bisection on the dense output."""
    tally = rk.Tally()
    with torch.no_grad():
        st = rk._Stepper(problem.flat_func(), problem.tableau, problem.y0, tally,
                         problem.norm or [slice(0, problem.y0.numel())])
        try:
            t0 = problem.times[0]
            if read(event(problem.time(t0), problem.y0)) <= 0:
                return t0
            stepping = _EventStepping(st, problem, event, direction)
            drive(stepping, t0, direction, problem.dtype, problem.options, tally)
            return stepping.t_event
        finally:
            st.release()
            stats.nfe_forward += tally.nfe
            stats.steps_accepted += tally.accepted
            stats.steps_rejected += tally.rejected


class _EventStepping:
    """The event search's side of the adaptive loop (adaptive.py): Runge-Kutta steps with
    no end time, until the event has crossed zero at a step's end."""

    goal = " while looking for the event"

    def __init__(self, st, problem, event, direction):
        self.st, self.problem, self.event, self.direction = st, problem, event, direction
        self.order = st.tab.order
        self.y = problem.y0
        self.k1 = st.first_stage(problem.times[0], self.y)

    def first_step(self) -> float:
        p = self.problem
        return rk._initial_step(self.st, p.times[0], self.y, self.k1, p.rtol, p.atol,
                                self.direction)

    def next_stop(self):
        return None

    def attempt(self, t, dt, t1, t_last) -> float:
        p = self.problem
        self.y1, self.ks = self.st.step(t, self.y, dt, self.k1)
        return self.st.error_ratio(self.y, self.y1, self.ks, dt, p.rtol, p.atol)

    def accept(self, t, dt, t1, jump) -> bool:
        if read(self.event(self.problem.time(t1), self.y1)) <= 0:
            self.t_event = _bisect(self.st, self.event, self.problem, t, self.y, self.ks, dt)
            return True
        self.y = self.y1
        self.k1 = self.st.next_first_stage(self.ks) if self.st.tab.fsal else None
        return False

    def exhausted(self, t, h, max_steps) -> SolverError:
        return SolverError(f"no event within max_num_steps={max_steps} steps (reached "
                           f"t={t:.6g})")


def _bisect(st, event, problem, t, y, ks, dt) -> float:
    lo, hi = 0.0, 1.0  # fractions of the step: event > 0 at lo, <= 0 at hi
    resolution = 4 * torch.finfo(problem.dtype).eps * max(abs(t), abs(t + dt), 1.0)
    while (hi - lo) * abs(dt) > resolution:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        y_mid = st.dense(y, ks, dt, mid, None)
        if read(event(problem.time(t + mid * dt), y_mid)) > 0:
            lo = mid
        else:
            hi = mid
    return t + hi * dt


class _RerouteEventGradient(torch.autograd.Function):
    """Identity forward on (event_t, y(t*)); backward per the implicit function theorem."""

    @staticmethod
    def forward(ctx, info, t_event, state, *params):
        ctx.info = info
        ctx.save_for_backward(t_event, state, *params)
        return t_event.clone(), state.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_t, grad_state):
        problem, event = ctx.info
        t_event, state, *params = ctx.saved_tensors
        with torch.enable_grad():
            t = t_event.detach().to(problem.dtype).requires_grad_(True)
            y = state.detach().requires_grad_(True)
            c = event(t, y)
            dc_dt, dc_dy, *dc_dp = torch.autograd.grad(c, (t, y, *params), allow_unused=True)
        with torch.no_grad():
            f = problem.call(t.detach(), state)
        dc_dt = torch.zeros((), dtype=problem.dtype) if dc_dt is None else dc_dt
        dc_dy = torch.zeros_like(state) if dc_dy is None else dc_dy
        lam = -(grad_t.to(problem.dtype) + torch.dot(grad_state, f)) / (dc_dt + torch.dot(dc_dy, f))
        grads_p = [None if g is None else lam * g for g in dc_dp]
        return (None, None, grad_state + lam * dc_dy, *grads_p)
