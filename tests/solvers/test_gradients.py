"""Gradients: gradcheck of direct and adjoint paths, adjoint vs direct, seminorm, NFE counts."""

import pytest
import torch

from odenet.solvers import SolveStats, odeint


class Counted(torch.nn.Module):
    """A small time-dependent MLP that counts its own calls (the external NFE oracle)."""

    def __init__(self, dim=3, hidden=16, dtype=torch.float64, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim + 1, generator=g, dtype=dtype) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(dim, hidden, generator=g, dtype=dtype) * 0.5)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        tt = t.expand(*y.shape[:-1], 1)
        return torch.tanh(torch.cat([y, tt], -1) @ self.w1.T) @ self.w2.T


def _y0(dtype=torch.float64):
    return torch.tensor([[0.3, -0.5, 0.8], [1.0, 0.2, -0.4]], dtype=dtype)


def test_gradcheck_direct_fixed_grid():
    """Backprop through the solver gives the exact gradient of the discrete solve."""
    func = Counted()
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)

    def solve(y0, w1, w2):
        func.w1, func.w2 = w1, w2
        return odeint(func, y0, t, method="rk4", options={"step_size": 0.15})

    inputs = (_y0().requires_grad_(), func.w1.detach().clone().requires_grad_(),
              func.w2.detach().clone().requires_grad_())
    func.w1, func.w2 = None, None
    del func._parameters["w1"], func._parameters["w2"]
    assert torch.autograd.gradcheck(solve, inputs)


@pytest.mark.parametrize("method", [pytest.param("dopri5", marks=pytest.mark.slow), "rk4"])
def test_gradcheck_adjoint(method):
    """Adjoint gradients w.r.t. y0, the parameters and t, against finite differences."""
    func = Counted()
    params = (func.w1, func.w2)
    opts = {"step_size": 0.01} if method == "rk4" else None

    def solve(y0, t, *ps):
        return odeint(func, y0, t, method=method, rtol=1e-12, atol=1e-12, options=opts,
                      adjoint=True, adjoint_params=ps)

    t = torch.tensor([0.0, 0.5, 1.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (_y0().requires_grad_(), t, *params),
                                    eps=1e-5, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
def test_adjoint_matches_direct(method):
    func = Counted()
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    weights = torch.randn(3, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for adjoint in (False, True):
        y0 = _y0().requires_grad_()
        func.zero_grad()
        ys = odeint(func, y0, t, method=method, rtol=1e-10, atol=1e-10, adjoint=adjoint)
        (ys * weights).sum().backward()
        grads.append(torch.cat([y0.grad.flatten(), func.w1.grad.flatten(), func.w2.grad.flatten()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-8)


def test_stats_count_every_call_forward_and_backward():
    func = Counted()
    y0 = _y0().requires_grad_()
    stats = SolveStats()
    ys = odeint(func, y0, torch.tensor([0.0, 0.5, 1.0]), rtol=1e-6, atol=1e-6, adjoint=True,
                stats=stats)
    assert stats.nfe_forward == func.calls > 0
    assert stats.steps_accepted > 0
    func.calls = 0
    ys.sum().backward()
    assert stats.nfe_backward == func.calls > 0
    assert stats.steps_accepted_backward > 0


def test_direct_backprop_calls_func_only_forward():
    func = Counted()
    stats = SolveStats()
    ys = odeint(func, _y0().requires_grad_(), torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-6,
                stats=stats)
    calls = func.calls
    ys.sum().backward()
    assert func.calls == calls == stats.nfe_forward and stats.nfe_backward == 0


SCALE = 0.3


class Wide(torch.nn.Module):
    """Many parameters, few states: where the seminorm pays (Kidger et al. 2021)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin1 = torch.nn.Linear(4, 256).double()
        self.lin2 = torch.nn.Linear(256, 4).double()
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * SCALE

    def forward(self, t, y):
        return self.lin2(torch.tanh(self.lin1(y)))


def test_seminorm_fewer_backward_evaluations_same_gradient():
    func = Wide()
    y0 = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = {}
    for norm in ("default", "seminorm"):
        func.zero_grad()
        stats = SolveStats()
        ys = odeint(func, y0, torch.tensor([0.0, 1.0]), rtol=1e-8, atol=1e-8, adjoint=True,
                    adjoint_options={"norm": norm}, stats=stats)
        ys[-1].square().sum().backward()
        grad = torch.cat([p.grad.flatten() for p in func.parameters()])
        results[norm] = (stats.nfe_backward, grad)
    (nfe_default, g_default), (nfe_semi, g_semi) = results["default"], results["seminorm"]
    assert nfe_semi < 0.9 * nfe_default, (nfe_semi, nfe_default)
    assert torch.allclose(g_semi, g_default, rtol=1e-5, atol=1e-7)


def test_adjoint_options_tolerances_used():
    func = Counted()
    counts = []
    for tol in (1e-3, 1e-9):
        stats = SolveStats()
        ys = odeint(func, _y0().requires_grad_(), torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-6,
                    adjoint=True, adjoint_options={"rtol": tol, "atol": tol}, stats=stats)
        ys.sum().backward()
        counts.append(stats.nfe_backward)
    assert counts[0] < counts[1]


def test_adjoint_under_no_grad_is_a_plain_solve():
    func = Counted()
    with torch.no_grad():
        a = odeint(func, _y0(), torch.tensor([0.0, 1.0]), adjoint=True)
    b = odeint(func, _y0(), torch.tensor([0.0, 1.0]))
    assert torch.allclose(a, b.detach(), rtol=1e-12, atol=1e-12)
