"""The "odepack" family: LSODA (method "lsoda"), the paper's solver family, run by scipy.

Chen et al. (2018) measured NFE (Figure 3) with solvers of ODEPACK's LSODE family. LSODA
(Hindmarsh 1983; Petzold 1983) is its variant with automatic stiffness detection: Adams
methods of order 1-12 while the problem is non-stiff, BDF of order 1-5 while it is stiff,
with ODEPACK's own step and order control, first step and error norm (a weighted max norm,
max_i |err_i| / (rtol_i |y_i| + atol_i), where the Runge-Kutta family uses an RMS norm: the
same tolerance is stricter here).

How it is driven: `scipy.integrate.LSODA`, the stepper `solve_ivp(method="LSODA")` runs,
called step by step here. Rather than `solve_ivp` itself or `ode(...).set_integrator(
"lsoda")` stepping to each output time (ODEPACK's itask=1), because this way
- every accepted step comes back to Python, so `max_num_steps` counts accepted steps over
  the whole solve and fails with odenet's SolverError (`ode`'s `nsteps` counts per output
  interval, and its failure is a warning);
- no step passes t[-1] (ODEPACK's tcrit = t_bound: itask=5), so func is never evaluated
  outside [t[0], t[-1]] ("clamp", as the other families' default);
- output times inside a step are read from ODEPACK's own interpolant (the Nordsieck
  history, `dense_output`), computed only for steps that hold one;
- all of it through scipy's public API (`ode` needs its private work arrays for counts).
The per-step Python overhead is small next to an evaluation of an ODE-Net's func.

Arithmetic: scipy works on a float64 numpy vector on the CPU. Each evaluation converts the
state to y0's dtype and device for func (a copy: scipy reuses its array) and func's output
back to float64 on the CPU; every call of func is counted in the tally, the evaluations
LSODA spends on Jacobians included. Accepted steps are counted; ODEPACK reports no
rejected steps, so `steps_rejected` stays 0. With the state on a GPU each evaluation also
costs two copies of the state and waits for the device: a solve says so (a RuntimeWarning,
`off_host_cost`).

Stiffness: while LSODA runs BDF it solves the implicit step equations by a Newton
iteration with a Jacobian it builds by finite differences. For an ODE-Net the state is a
whole batch (128x64x7x7 ~ 400k numbers, the adjoint's augmented state ~ 2x that plus the
parameters): a dense Jacobian would be n^2 ~ 1.6e11 numbers and n evaluations per Jacobian.
So the solver is always told the Jacobian is banded with lband = uband = 0: ODEPACK then
estimates only its diagonal, from ONE extra evaluation (all columns perturbed at once), and
stores n numbers. That diagonal is used only inside the Newton iteration, whose convergence
it can slow (more iterations or smaller steps where the true Jacobian is far from
diagonal); the accuracy is still set by the local error test on the tolerances.

Gradients: autograd cannot go through scipy, so the only gradient is the adjoint (odeint
refuses the others, registry.Method.gradients), whose forward and backward solves both run
here. The error norm cannot be a callable; the adjoint's norms are honoured through the
weights: "default" measures every component (z, a and the parameter gradients, one max
norm), "seminorm" (Kidger et al. 2021) leaves the parameter gradients out by giving them an
absolute tolerance so large that their errors never count.

numpy and scipy are imported here only, lazily, inside `solve` (the `lsoda` extra of
setup.cfg); the rest of the library imports only torch (pyproject.toml's import-linter
contract lets this module alone import them).
"""

from __future__ import annotations

import math
import warnings

import torch

from .registry import method_unavailable
from .rk import Tally
from .stats import SolverError

# The absolute tolerance of components the error norm leaves out (the adjoint's seminorm):
# their weight 1/(rtol |y| + atol) is ~1e-20, so no error of theirs counts, while ODEPACK's
# difference increments, which scale with rtol |y| + atol, stay finite even in float32.
UNMEASURED_ATOL = 1e20


def solve(fn, y0: torch.Tensor, times: list[float], method, rtol, atol, options: dict,
          tally: Tally, norm=None) -> torch.Tensor:
    """Integrate the flat ODE y' = fn(t, y) from times[0] with LSODA; returns (len(times), N)
    in y0's dtype and device (see the module's docstring)."""
    import numpy as np

    LSODA = _lsoda(method.name)
    if callable(norm):  # odeint refuses these first; a guard for direct callers
        raise ValueError(f"method {method.name!r} uses ODEPACK's own error norm: a callable "
                         "norm is not supported")
    dtype, device, n = y0.dtype, y0.device, y0.numel()
    if device.type != "cpu":
        warnings.warn(off_host_cost(method.name, device), RuntimeWarning, stacklevel=2)
    t0, t_end = times[0], times[-1]
    direction = 1.0 if t_end > t0 else -1.0
    rtol_np, atol_np = _tolerances(np, rtol, atol, norm, n)
    # the backprop path runs with grad enabled: a func whose output needs a graph (it
    # closes over parameters that require grad) would get gradients silently lost
    check_graph = torch.is_grad_enabled()

    def f(t: float, y):
        nonlocal check_graph
        tally.nfe += 1
        x = torch.from_numpy(y).to(device=device, dtype=dtype, copy=True)
        if check_graph:
            check_graph = False
            out = fn(t, x)
            if out.requires_grad:
                raise ValueError(f"method {method.name!r} solves outside autograd (in scipy), "
                                 "so gradient='backprop' cannot go through its steps, and "
                                 "func's output requires grad: use gradient='adjoint' (or "
                                 "solve under torch.no_grad())")
        else:
            with torch.no_grad():
                out = fn(t, x)
        return out.detach().to(device="cpu", dtype=torch.float64).numpy()

    first = options["first_step"]
    # copied: scipy keeps the state in the array it is given and writes it in place
    state0 = y0.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    solver = LSODA(f, t0, state0, t_end, rtol=rtol_np, atol=atol_np,
                   first_step=None if first is None else min(first, abs(t_end - t0)),
                   max_step=options["max_step"],
                   lband=0, uband=0)  # a diagonal Jacobian in stiff mode: see the docstring

    ys = torch.empty(len(times), n, dtype=dtype, device=device)
    ys[0].copy_(y0.detach())
    max_steps = options["max_num_steps"]
    k = 1
    while k < len(times):
        if tally.accepted >= max_steps:
            raise SolverError(
                f"max_num_steps={max_steps} exceeded {_where(solver, tally)} (integrating to "
                f"t={t_end:.6g}): raise max_num_steps, loosen rtol/atol, or regularize the "
                "dynamics")
        t = solver.t
        with warnings.catch_warnings(record=True) as caught:  # ODEPACK's messages
            warnings.simplefilter("always")
            message = solver.step()
        if solver.status == "failed":
            why = "; ".join(str(w.message) for w in caught) or message
            raise SolverError(
                f"LSODA failed {_where(solver, tally)} (integrating to t={t_end:.6g}): {why} "
                "(func may return NaN/Inf, or the tolerances may be too small)")
        tally.accepted += 1
        if solver.t == t:  # t + h == t: the step fell below what float64 resolves at t
            raise SolverError(
                f"step size underflow {_where(solver, tally)} (integrating to t={t_end:.6g}): "
                "the dynamics may be stiff or unstable (a blow-up); loosen rtol/atol or check "
                "func")
        if not np.isfinite(solver.y).all():
            raise SolverError(f"the state became NaN/Inf {_where(solver, tally)} (integrating "
                              f"to t={t_end:.6g}): check func, or tighten rtol/atol")
        t1 = solver.t
        dense = None
        while k < len(times) and (t1 - times[k]) * direction >= 0:
            if times[k] == t1 or (k == len(times) - 1 and solver.status == "finished"):
                value = solver.y
            else:  # inside the step: ODEPACK's interpolant (built once per step)
                dense = solver.dense_output() if dense is None else dense
                value = dense(times[k])
            ys[k].copy_(torch.from_numpy(value))
            k += 1
    return ys


def off_host_cost(name: str, device: torch.device) -> str:
    """What a solve with the state on ``device`` (not the CPU) costs: said once per place."""
    return (f"method {name!r} solves on the CPU (scipy, float64): with the state on {device} "
            "every evaluation copies the whole state to the host and back (2 copies and 3 "
            "device syncs per evaluation); solve on the CPU, or use a Runge-Kutta method")


def _lsoda(name: str):
    try:
        from scipy.integrate import LSODA
    except ImportError:
        reason = method_unavailable(name)
        if reason is None:  # installed but broken: scipy's own error
            raise
        raise ImportError(reason) from None
    return LSODA


def _tolerances(np, rtol, atol, norm, n: int):
    """rtol and atol as scipy takes them (numbers, or float64 arrays of n); components no
    slice of `norm` covers (the adjoint's seminorm leaves out the parameter gradients) get
    UNMEASURED_ATOL."""
    def as_np(tol):
        if isinstance(tol, torch.Tensor):
            return tol.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
        return float(tol)

    rtol, atol = as_np(rtol), as_np(atol)
    if norm is None:
        return rtol, atol
    measured = np.zeros(n, dtype=bool)
    for sl in norm:
        measured[sl] = True
    if measured.all():
        return rtol, atol
    atol = np.where(measured, np.broadcast_to(atol, (n,)), UNMEASURED_ATOL)
    return rtol, atol


def _where(solver, tally: Tally) -> str:
    h = solver.step_size  # of the last step (none yet, or 0 when t did not move: left out)
    step = f" with step size {h:.3g}" if h is not None and 0 < h < math.inf else ""
    return f"at t={solver.t:.6g}{step} after {tally.nfe} function evaluations"
