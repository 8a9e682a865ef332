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

import torch

from . import rk
from .odeint import Problem
from .stats import SolveStats


def adjoint_solve(problem: Problem, params: tuple[torch.Tensor, ...], back: dict,
                  stats: SolveStats) -> torch.Tensor:
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
        tally = rk.Tally()
        try:
            with torch.no_grad():
                ys = rk.solve(problem.flat_func(), y0.reshape(-1), problem.times,
                              problem.tableau, problem.rtol, problem.atol, problem.options,
                              tally)
        finally:
            context.stats.nfe_forward += tally.nfe
            context.stats.steps_accepted += tally.accepted
            context.stats.steps_rejected += tally.rejected
        ys = ys.view(len(problem.times), *problem.shape)
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
        func, shape, times = problem.func, problem.shape, problem.times
        n = ys[0].numel()
        sizes = [p.numel() for p in params]
        n_params = sum(sizes)
        dtype = ys.dtype
        grad_ys = grad_ys.reshape(len(times), n)
        ys_flat = ys.reshape(len(times), n)

        # error-norm channels: z, a and (default norm only) each parameter's gradient, as
        # torchdiffeq does; the seminorm (Kidger et al. 2021) leaves the gradients out
        channels = [slice(0, n), slice(n, 2 * n)]
        if back["norm"] == "default":
            offset = 2 * n
            for size in sizes:
                channels.append(slice(offset, offset + size))
                offset += size

        def augmented(t: float, s: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                z = s[:n].view(shape).detach().requires_grad_(True)
                f = func(problem.time(t), z)
                if f.shape != z.shape:
                    raise ValueError(f"func returned shape {tuple(f.shape)}; expected {shape}")
                vjps = torch.autograd.grad(f, (z, *params), -s[n:2 * n].view(shape),
                                           allow_unused=True)
            parts = [f.detach().reshape(-1), _flat(vjps[0], z)]
            parts += [_flat(g, p).to(dtype) for g, p in zip(vjps[1:], params)]
            return torch.cat(parts)

        def f_at(i: int) -> torch.Tensor:  # f(t_i, z_i), for gradients w.r.t. t
            with torch.no_grad():
                stats.nfe_backward += 1
                return func(problem.time(times[i]), ys[i]).reshape(-1)

        needs_t = ctx.needs_input_grad[2]
        grad_t = torch.zeros(len(times), dtype=dtype, device=ys.device) if needs_t else None
        a = grad_ys[-1].clone()
        g = ys.new_zeros(n_params)
        for i in range(len(times) - 1, 0, -1):
            if needs_t:
                grad_t[i] = torch.dot(grad_ys[i], f_at(i))
            tally = rk.Tally()
            try:
                with torch.no_grad():
                    s = rk.solve(augmented, torch.cat([ys_flat[i], a, g]), [times[i], times[i - 1]],
                                 back["tableau"], back["rtol"], back["atol"], back["options"],
                                 tally, channels)[-1]
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
        return (None, a.view(shape), grad_t, *grad_params)


def _flat(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(like.numel(), dtype=like.dtype, device=like.device) if grad is None \
        else grad.reshape(-1)
