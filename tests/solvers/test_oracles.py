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
