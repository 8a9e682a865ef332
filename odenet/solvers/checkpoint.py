"""Checkpointed gradients (`gradient="checkpoint"`): the adaptive checkpoint adjoint of
Zhuang et al. (ICML 2020, "ACA") as a torch.autograd.Function.

Forward: the usual solve without a graph (the same outputs, NFE and steps as the
adjoint's forward), keeping each accepted step's (t, dt, start state). Backward: the
steps in reverse, each replayed once under autograd (`rk.replay_step`) and
differentiated with the adjoint of its end state and the cotangents of the outputs it
produced. Step sizes are held fixed, as when backpropagating through the solver, so the
gradient is the exact gradient of the same discrete solve, at O(steps x state) memory
plus one step's activations. Gradients for t as backprop's (odeint._solve_with_time_gradient):
dL/dt_i = grad_i . f(t_i, y_i) for i > 0, dL/dt_0 = -dL/dy0 . f(t_0, y_0).
"""

from __future__ import annotations

import torch

from .odeint import Problem
from .rk import Tally, replay_step, solve
from .stats import SolveStats


def checkpoint_solve(problem: Problem, params: tuple[torch.Tensor, ...],
                     stats: SolveStats) -> torch.Tensor:
    """The flat outputs (len(t), N), differentiable w.r.t. y0, t and params."""
    return _CheckpointSolve.apply((problem, params, stats), problem.y0, problem.t, *params)


def assign_outputs(trace: list, times: list[float]) -> list[list[tuple[int, float | None]]]:
    """For each traced step, the outputs it produced: (index, theta of its dense output,
    or None for the step's end state) -- the same comparisons as rk._adaptive's."""
    direction = 1.0 if times[-1] > times[0] else -1.0
    per_step, next_out = [], 1
    for t, dt, t1, *_ in trace:  # rk.Step
        outs = []
        while next_out < len(times) and (t1 - times[next_out]) * direction >= 0:
            outs.append((next_out, None if times[next_out] == t1
                         else (times[next_out] - t) / dt))
            next_out += 1
        per_step.append(outs)
    return per_step


class _CheckpointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, context, y0, t, *params):
        problem, _, stats = context
        tally, trace = Tally(), []
        try:
            with torch.no_grad():
                ys = solve(problem.flat_func(), y0, problem.times, problem.method,
                           problem.rtol, problem.atol, problem.options, tally, problem.norm,
                           trace=trace)
        finally:
            stats.nfe_forward += tally.nfe
            stats.steps_accepted += tally.accepted
            stats.steps_rejected += tally.rejected
        # the states through save_for_backward, so saved-tensor hooks (ActivationMeter)
        # see them; the floats stay on ctx
        ctx.context, ctx.steps = context, [step._replace(y=None) for step in trace]
        ctx.save_for_backward(ys, *(step.y for step in trace))
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        ys, *starts = ctx.saved_tensors
        problem, params, stats = ctx.context
        trace, times = ctx.steps, problem.times
        fn, tab = problem.flat_func(), problem.tableau
        outputs = assign_outputs(trace, times)
        a = torch.zeros_like(ys[0])  # dL/d(the state after the step being replayed)
        grads = [torch.zeros_like(p) for p in params]
        tally = Tally()
        try:
            for step, y, outs in zip(reversed(trace), reversed(starts), reversed(outputs)):
                dense = [(i, theta) for i, theta in outs if theta is not None]
                for i, theta in outs:
                    if theta is None:
                        a = a + grad_ys[i]
                with torch.enable_grad():
                    y = y.detach().requires_grad_(True)
                    y1, values = replay_step(fn, tab, step, y, [th for _, th in dense], tally)
                    vjps = torch.autograd.grad(
                        [y1, *values], (y, *params), [a, *(grad_ys[i] for i, _ in dense)],
                        allow_unused=True)
                a = vjps[0] if vjps[0] is not None else torch.zeros_like(a)
                grads = [g if v is None else g + v for g, v in zip(grads, vjps[1:])]
            grad_t = None
            if ctx.needs_input_grad[2]:
                grad_t = _time_gradient(problem, ys, grad_ys, a, tally)
        finally:
            stats.nfe_backward += tally.nfe
            stats.steps_accepted_backward += len(trace)
        return (None, a + grad_ys[0], grad_t, *grads)


def _time_gradient(problem: Problem, ys, grad_ys, a0, tally: Tally) -> torch.Tensor:
    """dL/dt_i = grad_i . f(t_i, y_i) (i > 0) and -a(t_0) . f(t_0, y_0), a(t_0) before
    grad_0 is added: the exact derivatives of the solution, as backprop's and the
    adjoint's t gradients (len(t) evaluations)."""
    times = problem.times
    grad_t = torch.zeros(len(times), dtype=ys.dtype, device=ys.device)
    with torch.no_grad():
        for i in range(len(times)):
            tally.nfe += 1
            f = problem.call(problem.time(times[i]), ys[i])
            grad_t[i] = -torch.dot(a0, f) if i == 0 else torch.dot(grad_ys[i], f)
    return grad_t.to(problem.t.dtype)
