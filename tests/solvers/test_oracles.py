"""Agreement with scipy's solve_ivp and with torchdiffeq (skipped without the dev extra)."""

import numpy as np
import pytest
import torch

from odenet.solvers import SolveStats, odeint

scipy_integrate = pytest.importorskip("scipy.integrate")


def lotka_volterra(t, y):
    x, p = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * p, -3.0 * p + x * p], -1)


def test_scipy_solve_ivp_agreement():
    y0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    t = torch.linspace(0.0, 5.0, 11, dtype=torch.float64)
    ref = scipy_integrate.solve_ivp(lambda t, y: lotka_volterra(t, torch.tensor(y)).numpy(),
                                    (0.0, 5.0), y0.numpy(), t_eval=t.numpy(), method="DOP853",
                                    rtol=1e-12, atol=1e-12)
    for method in ("bosh3", "dopri5", "tsit5"):
        ys = odeint(lotka_volterra, y0, t, method=method, rtol=1e-9, atol=1e-9)
        assert np.abs(ys.numpy() - ref.y.T).max() < 1e-6, method


def test_torchdiffeq_agreement_and_nfe():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    y0 = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=torch.float64)
    t = torch.linspace(0.0, 3.0, 4, dtype=torch.float64)
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return lotka_volterra(t, y)

    for method in ("dopri5", "bosh3"):
        calls[0] = 0

        ref = torchdiffeq.odeint(f, y0, t, method=method, rtol=1e-8, atol=1e-8)
        ref_nfe, calls[0] = calls[0], 0
        stats = SolveStats()
        ys = odeint(f, y0, t, method=method, rtol=1e-8, atol=1e-8, stats=stats)
        assert torch.allclose(ys, ref, rtol=1e-5, atol=1e-5)
        assert abs(stats.nfe_forward - ref_nfe) <= 0.1 * ref_nfe, (stats.nfe_forward, ref_nfe)
    for method in ("euler", "rk4"):
        ref = torchdiffeq.odeint(lotka_volterra, y0, t, method=method, options={"step_size": 0.01})
        ys = odeint(lotka_volterra, y0, t, method=method, options={"step_size": 0.01})
        assert torch.allclose(ys, ref, atol=1e-6 if method == "rk4" else 5e-2)


class CountedTimes(torch.nn.Module):
    """An ODE function (a small MLP) that records the time of every call."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin1, self.lin2 = torch.nn.Linear(3, 32).double(), torch.nn.Linear(32, 2).double()
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5
        self.times: list[float] = []

    def forward(self, t, y):
        self.times.append(float(t.detach()))
        return self.lin2(torch.tanh(self.lin1(torch.cat([y, t.expand(len(y), 1)], 1))))


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_overshoot_matches_torchdiffeq_step_for_step(method):
    """last_step="overshoot" steps past t[-1] and interpolates, as torchdiffeq does: the same
    evaluations, forward and adjoint backward; "clamp" ends at t[-1] and never
    evaluates outside [t0, t1]."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = CountedTimes()
    y0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    runs = {}
    for name in ("torchdiffeq", "overshoot", "clamp"):
        func.times = []
        if name == "torchdiffeq":
            ys = torchdiffeq.odeint_adjoint(func, y0, t, method=method, rtol=1e-4, atol=1e-4)
        else:
            ys = odeint(func, y0, t, method=method, rtol=1e-4, atol=1e-4, adjoint=True,
                        options={"last_step": name})
        forward = list(func.times)
        ys[-1].square().sum().backward()
        runs[name] = (forward, func.times[len(forward):], ys.detach())
    ref_f, ref_b, ref_y = runs["torchdiffeq"]
    over_f, over_b, over_y = runs["overshoot"]
    assert len(over_f) == len(ref_f) and len(over_b) == len(ref_b)
    # the same forward steps; the backward solves take as many, from y(t1) read off
    # different interpolants (so their times drift apart by the tolerance)
    assert np.allclose(over_f, ref_f, atol=1e-9)
    assert max(ref_f) > 2.0  # the reference does overshoot on this problem
    assert torch.allclose(over_y, ref_y, rtol=1e-2, atol=1e-2)  # interpolants differ
    clamp_f, clamp_b, clamp_y = runs["clamp"]
    assert 0.0 <= min(clamp_f + clamp_b) and max(clamp_f + clamp_b) <= 2.0
    assert torch.allclose(clamp_y, ref_y, rtol=1e-2, atol=1e-2)
