"""The "reversible" family: the reversible Heun method (Kidger, Foster, Li, Lyons,
NeurIPS 2021), and its O(1)-memory exact gradient (`gradient="reversible"`).

The state is a pair (y, yh), yh_0 = y_0; the output is y. One step of size h from t to t1:
    yh1 = 2 y - yh + h f(t, yh)
    y1  = y + h/2 (f(t, yh) + f(t1, yh1))
is inverted exactly (in exact arithmetic; in floating point up to round-off) by
    yh = 2 y1 - yh1 - h f(t1, yh1)
    y  = y1 - h/2 (f(t, yh) + f(t1, yh1)),
so the backward pass rebuilds the trajectory from the end state and differentiates each
step on the way: the exact gradient of the discrete solve at O(1) memory in the number
of steps (plus the step sizes). One evaluation per step (f(t1, yh1) is the next step's
f(t, yh)), forward and backward. Order 2 on ODEs.

Why this scheme: it is the simplest algebraically reversible method with a proof of
order 2, one evaluation per step, no tuning constant (diffrax ships it as
ReversibleHeun). McCallum & Foster's (2024) higher-order reversible Runge-Kutta schemes
would take fewer steps at tight tolerances; they are not here yet.

Stability caveat: the scheme's region of absolute stability is only the segment
[-i, i] of the imaginary axis. On y' = lambda y it carries a parasitic mode with
multiplier ~ -(1 - h lambda): for decaying dynamics (Re lambda < 0) that mode grows like
exp(|Re lambda| t) with alternating sign. Fine over the short spans of ODE-Nets (t in
[0, 1], moderate |h lambda|); on stiff or long dissipative problems use another method.

Stepping: "reversible_heun" on a fixed grid (t itself, or options["step_size"] as the Runge
-Kutta fixed grids); "adaptive_reversible_heun" with the embedded error estimate
y1 - (y + h f(t, yh)) = h/2 (f(t1, yh1) - f(t, yh)) (Heun against Euler, as diffrax),
error order 2 for the controller, and every step cut to land exactly on the next output
time (there is no dense output, so outputs are trajectory points the backward pass
revisits). A rejected step costs its one evaluation and leaves (y, yh, f) untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from .adaptive import drive
from .device import read, upload
from .rk import Tally, _initial_step, _where, fixed_grid
from .stats import SolverError, SolveStats


@dataclass
class Path:
    """What the backward pass needs of a forward solve: the accepted steps' start times
    and sizes (floats, exactly as used), the node of each output, and the end state."""

    nodes: list[float] = field(default_factory=list)  # t_0 .. t_N
    steps: list[float] = field(default_factory=list)  # h_0 .. h_{N-1} (signed)
    out_nodes: list[int] = field(default_factory=list)  # output i is y at node out_nodes[i]
    end: tuple | None = None  # (y_N, yh_N)


def _step(fn, t1: float, y, yh, f, dt: float, tally: Tally):
    """One forward step: (y1, yh1, f(t1, yh1))."""
    yh1 = torch.add(y * 2 - yh, f, alpha=dt)
    tally.nfe += 1
    f1 = fn(t1, yh1)
    return torch.add(y, f + f1, alpha=0.5 * dt), yh1, f1


class _Probe:
    """What rk._initial_step reads of a stepper: eval, norm and the order."""

    def __init__(self, fn, tally, norm, order):
        self.fn, self.tally, self.norm = fn, tally, norm
        self.tab = SimpleNamespace(order=order)

    def eval(self, t, y):
        self.tally.nfe += 1
        return self.fn(t, y)


def _rms(norm, like: torch.Tensor):
    """Max over the state's channels (slices) of the RMS norm, as a float, or the user's
    callable. Several channels (the adjoint's [z, a, g]) are reduced on the device and read
    once: float64 norms over float64 roots, the same numbers as dividing each float() on
    the host."""
    if callable(norm):
        return norm
    channels = norm if norm is not None else [slice(0, like.numel())]
    if len(channels) == 1:
        sl, root = channels[0], math.sqrt(channels[0].stop - channels[0].start)
        return lambda x: read(torch.linalg.vector_norm(x[sl])) / root
    roots = upload([math.sqrt(sl.stop - sl.start) for sl in channels], torch.float64,
                   like.device)

    def rms(x):
        norms = torch.stack([torch.linalg.vector_norm(x[sl]) for sl in channels])
        return read((norms.to(torch.float64) / roots).max())
    return rms


def solve(fn, y0: torch.Tensor, times: list[float], method, rtol, atol, options: dict,
          tally: Tally, norm=None) -> torch.Tensor:
    """The family's entry point (registry.py): (len(times), N). Under grad mode every
    operation is out of place, so autograd backpropagates through it."""
    return integrate(fn, y0, times, method, rtol, atol, options, tally, norm)


def integrate(fn, y0, times, method, rtol, atol, options, tally, norm=None, path=None):
    """As `solve`; a `Path` given as `path` is filled for the reversible backward pass."""
    tally.nfe += 1
    f = fn(times[0], y0)  # f at yh_0 = y_0
    y, yh, t = y0, y0, times[0]
    ys = [y0]
    if path is not None:
        path.nodes.append(t)
        path.out_nodes.append(0)

    def accept(t1, dt, y1, yh1, f1, output: bool):  # the step is counted by its loop
        if path is not None:
            path.nodes.append(t1)
            path.steps.append(dt)
            if output:
                path.out_nodes.append(len(path.steps))
        if output:
            ys.append(y1)
            if not read(torch.isfinite(y1).all()):
                raise SolverError(f"the state became NaN/Inf {_where(t1, abs(dt), tally)}: "
                                  "use smaller steps (see the reversible Heun stability caveat)")

    if method.adaptive:
        y, yh = _adaptive(fn, y0, f, times, rtol, atol, options, tally, norm, method.order,
                          accept)
    else:
        for i, n in enumerate(fixed_grid(times, options["step_size"], options["max_num_steps"]),
                              start=1):
            ta, tb = times[i - 1], times[i]
            direction = 1.0 if tb > ta else -1.0
            for k in range(n):
                t = ta + direction * k * options["step_size"] if k else ta
                last = k == n - 1
                dt = (tb - t) if last else direction * options["step_size"]
                t1 = tb if last else t + dt
                y, yh, f = _step(fn, t1, y, yh, f, dt, tally)
                tally.accepted += 1
                accept(t1, dt, y, yh, f, last)
    if path is not None:
        path.end = (y, yh)
    return torch.stack(ys)


def _adaptive(fn, y0, f, times, rtol, atol, options, tally, norm, order, accept):
    stepping = _HeunStepping(fn, y0, f, times, rtol, atol, tally, norm, order, accept)
    drive(stepping, times[0], stepping.direction, y0.dtype, options, tally)
    return stepping.y, stepping.yh


class _HeunStepping:
    """The reversible family's side of the adaptive loop (adaptive.py). No dense output:
    every output time is a step's end."""

    def __init__(self, fn, y0, f, times, rtol, atol, tally, norm, order, accept):
        self.fn, self.f, self.times, self.rtol, self.atol = fn, f, times, rtol, atol
        self.tally, self.order, self._accept = tally, order, accept
        self.direction = 1.0 if times[-1] > times[0] else -1.0
        self.goal = f" (integrating to t={times[-1]:.6g})"
        # a callable norm gets h * err / scale (torchdiffeq's convention, as rk.py)
        self.user_norm = callable(norm)
        self.norm = _rms(norm, y0)
        self.y, self.yh, self.next_out = y0, y0, 1

    def first_step(self) -> float:
        probe = _Probe(self.fn, self.tally, self.norm, self.order)
        return _initial_step(probe, self.times[0], self.y, self.f, self.rtol, self.atol,
                             self.direction)

    def next_stop(self):
        return self.times[self.next_out], False

    def attempt(self, t, dt, t1, t_last) -> float:
        y, f = self.y, self.f
        self.step = y1, _, f1 = _step(self.fn, t1, y, self.yh, f, dt, self.tally)
        with torch.no_grad():  # Heun minus Euler, over the mixed tolerance
            scale = torch.maximum(y.detach().abs(), y1.detach().abs()).mul_(self.rtol)
            scale.add_(self.atol)
            err = (f1.detach() - f.detach()).mul_(0.5).div_(scale)
            h = abs(dt)
            return read(self.norm(err.mul_(h))) if self.user_norm else self.norm(err) * h

    def accept(self, t, dt, t1, jump) -> bool:
        y1, yh1, f1 = self.step
        output = t1 == self.times[self.next_out]
        self._accept(t1, dt, y1, yh1, f1, output)
        self.next_out += output
        self.y, self.yh, self.f = y1, yh1, f1
        return self.next_out == len(self.times)

    def exhausted(self, t, h, max_steps) -> SolverError:
        return SolverError(f"max_num_steps={max_steps} exceeded {_where(t, h, self.tally)}"
                           f"{self.goal}: raise max_num_steps or loosen rtol/atol")


# --- the O(1)-memory gradient -------------------------------------------------------
def reversible_solve(problem, params: tuple[torch.Tensor, ...],
                     stats: SolveStats) -> torch.Tensor:
    """The flat outputs (len(t), N), differentiable w.r.t. y0, t and params."""
    return _ReversibleSolve.apply((problem, params, stats), problem.y0, problem.t, *params)


class _ReversibleSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, context, y0, t, *params):
        problem, _, stats = context
        tally, path = Tally(), Path()
        try:
            with torch.no_grad():
                ys = integrate(problem.flat_func(), y0, problem.times, problem.method,
                               problem.rtol, problem.atol, problem.options, tally,
                               problem.norm, path)
        finally:
            stats.nfe_forward += tally.nfe
            stats.steps_accepted += tally.accepted
            stats.steps_rejected += tally.rejected
        ctx.context, ctx.path = context, path
        ctx.save_for_backward(ys, *path.end)
        path.end = None  # saved above; the Path keeps only floats
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        """Reverse-mode through the steps, each rebuilt from the next. With A_m, B_m the
        adjoints of y_m and yh_m, and f_m = f(t_m, yh_m) used by step m (in yh_{m+1} and
        y_{m+1}) and by step m-1 (in y_m), the cotangent of f_m is
            c_m = h_m (B_{m+1} + A_{m+1} / 2) + h_{m-1} A_m / 2,
        A_m = A_{m+1} + 2 B_{m+1} (+ the output's cotangent), B_m = -B_{m+1} + J_m^T c_m:
        one evaluation and one vector-Jacobian product of f per node."""
        ys, y, yh = ctx.saved_tensors
        problem, params, stats = ctx.context
        path = ctx.path
        hs, nodes = path.steps, path.nodes
        cot: dict[int, torch.Tensor] = {}  # node -> the cotangent of its output(s)
        for i, m in enumerate(path.out_nodes):
            cot[m] = cot[m] + grad_ys[i] if m in cot else grad_ys[i]
        grads = [torch.zeros_like(p) for p in params]
        tally = Tally()

        def vjp(m: int, z: torch.Tensor, c: torch.Tensor):
            """f(t_m, z) and J^T c; the parameters' share added to `grads`."""
            tally.nfe += 1
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                f = problem.call(problem.time(nodes[m]), z)
                out = (torch.autograd.grad(f, (z, *params), c, allow_unused=True)
                       if f.requires_grad else (None,) * (1 + len(params)))
            for k, g in enumerate(out[1:]):
                if g is not None:
                    grads[k] += g
            return f.detach(), (torch.zeros_like(c) if out[0] is None else out[0])

        n = len(hs)
        zero = torch.zeros_like(ys[0])
        a = cot.get(n, zero)
        try:
            f_next, b = vjp(n, yh, a * (0.5 * hs[n - 1]))
            for m in range(n - 1, -1, -1):
                dt = hs[m]
                yh = torch.add(y * 2 - yh, f_next, alpha=-dt)  # rebuild yh_m
                a_m = a + 2 * b + cot.get(m, zero)
                c = torch.add(b, a, alpha=0.5) * dt
                if m > 0:
                    c = torch.add(c, a_m, alpha=0.5 * hs[m - 1])
                f_m, jc = vjp(m, yh, c)
                y = torch.add(y, f_m + f_next, alpha=-0.5 * dt)  # rebuild y_m
                a, b, f_next = a_m, jc - b, f_m
            grad_y0 = a + b
            grad_t = None
            if ctx.needs_input_grad[2]:
                from .checkpoint import _time_gradient

                grad_t = _time_gradient(problem, ys, grad_ys, grad_y0 - grad_ys[0], tally)
        finally:
            stats.nfe_backward += tally.nfe
            stats.steps_accepted_backward += n
        return (None, grad_y0, grad_t, *grads)
