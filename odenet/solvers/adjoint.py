"""The adjoint method (Chen et al. 2018, Algorithm 1) as a torch.autograd.Function.

Forward: solve without recording a graph, keep only the outputs (O(1) memory in NFE).
Backward: per output interval, from t_i down to t_{i-1}, one solve of the augmented state
s = [z, a, g] with ds/dt = [f(z, t), -a^T df/dz, -a^T df/dtheta], starting from the stored
z(t_i), a = dL/dz(t_i) and the parameter gradient g accumulated so far. The two
vector-Jacobian products come from one autograd call per evaluation.
Gradients for t: dL/dt_i = grad_i . f(t_i, z_i) for i > 0, and
dL/dt_0 = -a(t_0) . f(t_0, z_0) with a(t_0) before grad_0 is added.
"""

from __future__ import annotations

import math

import torch

from .device import read
from .odeint import Problem
from .registry import family_solve
from .rk import Tally
from .stats import SolveStats


def adjoint_solve(problem: Problem, params: tuple[torch.Tensor, ...], back: dict,
                  stats: SolveStats) -> torch.Tensor:
    """The flat outputs (len(t), N), differentiable w.r.t. y0, t and params."""
    return _AdjointSolve.apply(_Context(problem, params, back, stats), problem.y0, problem.t,
                               *params)


class _Context:
    """What backward needs besides tensors (autograd.Function takes it as an input)."""

    def __init__(self, problem, params, back, stats):
        self.problem, self.params, self.back, self.stats = problem, params, back, stats


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, context: _Context, y0, t, *params):
        problem = context.problem
        tally = Tally()
        try:
            with torch.no_grad():
                ys = family_solve(problem.method)(
                    problem.flat_func(), y0, problem.times, problem.method, problem.rtol,
                    problem.atol, problem.options, tally, problem.norm)
        finally:
            context.stats.nfe_forward += tally.nfe
            context.stats.steps_accepted += tally.accepted
            context.stats.steps_rejected += tally.rejected
        ctx.context = context
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        (ys,) = ctx.saved_tensors
        context = ctx.context
        problem, params, back, stats = (context.problem, context.params, context.back,
                                        context.stats)
        times = problem.times
        n = ys.shape[1]
        sizes = [p.numel() for p in params]
        n_params = sum(sizes)
        dtype = ys.dtype
        norm = _backward_norm(problem, back["norm"], n, params)
        rtol = _backward_tolerance(back["rtol"], n_params)
        atol = _backward_tolerance(back["atol"], n_params)
        solve = family_solve(back["method"])

        def augmented(t: float, s: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                z = s[:n].detach().requires_grad_(True)
                f = problem.call(problem.time(t), z)
                if f.requires_grad:
                    vjps = torch.autograd.grad(f, (z, *params), -s[n:2 * n], allow_unused=True)
                else:  # func uses neither y nor the parameters: all their gradients are 0
                    vjps = (None,) * (1 + len(params))
            parts = [f.detach(), _flat(vjps[0], z)]
            parts += [_flat(g, p).to(dtype) for g, p in zip(vjps[1:], params)]
            return torch.cat(parts)

        def f_at(i: int) -> torch.Tensor:  # f(t_i, z_i), for gradients w.r.t. t
            with torch.no_grad():
                stats.nfe_backward += 1
                return problem.call(problem.time(times[i]), ys[i])

        needs_t = ctx.needs_input_grad[2]
        grad_t = torch.zeros(len(times), dtype=dtype, device=ys.device) if needs_t else None
        a = grad_ys[-1].clone()
        g = ys.new_zeros(n_params)
        for i in range(len(times) - 1, 0, -1):
            if needs_t:
                grad_t[i] = torch.dot(grad_ys[i], f_at(i))
            tally = Tally()
            try:
                with torch.no_grad():
                    s = solve(augmented, torch.cat([ys[i], a, g]), [times[i], times[i - 1]],
                              back["method"], rtol, atol, back["options"], tally, norm)[-1]
            finally:
                stats.nfe_backward += tally.nfe
                stats.steps_accepted_backward += tally.accepted
                stats.steps_rejected_backward += tally.rejected
            a = s[n:2 * n]
            g = s[2 * n:]
            if needs_t and i == 1:
                grad_t[0] = -torch.dot(a, f_at(0))
            a = a + grad_ys[i - 1]

        grad_params = []
        offset = 0
        for p, size in zip(params, sizes):
            grad_params.append(g[offset:offset + size].view_as(p).to(p.dtype))
            offset += size
        if grad_t is not None:
            grad_t = grad_t.to(problem.t.dtype)
        return (None, a, grad_t, *grad_params)


def _backward_tolerance(tol, n_params: int):
    """Per-element tolerances of y apply to z and a; the parameter gradients get the
    smallest of them (a number stays a number)."""
    if not isinstance(tol, torch.Tensor):
        return tol
    return torch.cat([tol, tol, tol.min().expand(n_params)])


def _backward_norm(problem: Problem, norm, n: int, params):
    """The error norm of the augmented state [z, a, g].

    "default": max of the RMS norms of z, a and each parameter's gradient (as torchdiffeq;
    a tuple y0 contributes one channel per tensor); "seminorm" (Kidger et al. 2021) leaves
    the gradients out. A forward options["norm"] measures z and a. A callable gets
    torchdiffeq's tuple (t, *y, *adj_y, *adj_params); its t entry is 0 here (odenet does
    not integrate t's adjoint).
    """
    sizes = [p.numel() for p in params]
    param_slices, offset = [], 2 * n
    for size in sizes:
        param_slices.append(slice(offset, offset + size))
        offset += size
    if callable(norm):
        def user(s):
            z, a = problem.split(s[:n]), problem.split(s[n:2 * n])
            z, a = (z, a) if problem.is_tuple else ((z,), (a,))
            grads = [s[sl].view_as(p) for sl, p in zip(param_slices, params)]
            return norm((s.new_zeros(()), *z, *a, *grads))
        return user
    keep = param_slices if norm == "default" else []
    if callable(problem.norm):
        fwd = problem.norm

        def mixed(s):
            parts = [read(fwd(s[:n])), read(fwd(s[n:2 * n]))]
            parts += [read(torch.linalg.vector_norm(s[sl])) / math.sqrt(sl.stop - sl.start)
                      for sl in keep]
            return max(parts)
        return mixed
    state = problem.norm or [slice(0, n)]
    return state + [slice(sl.start + n, sl.stop + n) for sl in state] + keep


def _flat(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(like.numel(), dtype=like.dtype, device=like.device) if grad is None \
        else grad.reshape(-1)
