"""The minimum step follows the current time: a step is refused only
where it no longer moves t in the state's dtype, not below 16 eps max(|t0|, |t1|) for the
whole solve (which refused easy float32 problems on long spans at t=0)."""

import pytest
import torch

from odenet.solvers import SolverError, SolveStats, odeint

torchdiffeq = pytest.importorskip("torchdiffeq")


def spike(t, y):  # y' = 1000 exp(-1000 t): y(t) = 1 - exp(-1000 t)
    return 1e3 * torch.exp(-1e3 * t) * torch.ones_like(y)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_reversible_heun"])
def test_float32_spike_on_a_long_span(method):
    """Died with 'step size underflow at t=0 with step size 0.0111'; float64 and
    torchdiffeq solve it."""
    t = torch.tensor([0.0, 1.0, 1e4])
    with torch.no_grad():
        ys = odeint(spike, torch.zeros(1), t, method=method, rtol=1e-3, atol=1e-6)
        ys64 = odeint(spike, torch.zeros(1, dtype=torch.float64), t.double(), method=method,
                      rtol=1e-3, atol=1e-6)
    exact = 1 - torch.exp(-1e3 * t.double())
    assert ys.dtype == torch.float32
    assert torch.allclose(ys[:, 0].double(), exact, rtol=0, atol=1e-3)
    assert torch.allclose(ys.double(), ys64, rtol=0, atol=1e-5)
    if method == "dopri5":
        ref = torchdiffeq.odeint(spike, torch.zeros(1), t, rtol=1e-3, atol=1e-6)
        assert torch.allclose(ys, ref, rtol=0, atol=1e-5)


def test_float32_spike_gradient_through_the_adjoint():
    """The adjoint's backward solve (from 1e4 down to 0) has the same floor."""
    y0 = torch.zeros(1, requires_grad=True)
    ys = odeint(spike, y0, torch.tensor([0.0, 1e4]), rtol=1e-3, atol=1e-6, adjoint=True,
                adjoint_params=())
    ys[-1].sum().backward()
    assert abs(ys[-1].item() - 1.0) < 1e-3
    assert torch.allclose(y0.grad, torch.ones(1))  # y(t1) = y0 + const


def test_float32_stiff_decay_on_a_long_span_gets_past_t0():
    """y' = -1000 y on [0, 1e4] died at t=0 with a step size underflow. Now it steps: an
    explicit method is held near its stability bound (h ~ 3.3e-3 for dopri5, as in
    torchdiffeq), so 2000 steps reach past t = 1: stiffness, not the floor, is what is left
    (the 3e6 steps to 1e4 are too slow for a test)."""
    stats = SolveStats()
    with pytest.raises(SolverError, match=r"max_num_steps=2000 exceeded at t=") as info:
        odeint(lambda t, y: -1e3 * y, torch.ones(1), torch.tensor([0.0, 1e4]), rtol=1e-3,
               atol=1e-6, options={"max_num_steps": 2000}, stats=stats)
    reached = float(str(info.value).split("at t=")[1].split()[0])
    assert reached > 1.0 and stats.steps_accepted > 1000


@pytest.mark.parametrize("method", ["dopri5", "adaptive_reversible_heun"])
def test_a_genuine_blow_up_on_a_long_span_still_underflows(method):
    """y' = y^2, y(0) = 1 blows up at t = 1: the solve stops there with the one-line
    SolverError (before, a span to 1e4 stopped it earlier, at the span's floor)."""
    with pytest.raises(SolverError) as info:
        odeint(lambda t, y: y * y, torch.ones(1), torch.tensor([0.0, 1e4]), method=method,
               rtol=1e-6, atol=1e-6)
    message = str(info.value)
    assert message.startswith("step size underflow at t=") and "\n" not in message
    reached = float(message.split("at t=")[1].split()[0])
    assert 0.99 < reached <= 1.0
