"""odeint_event: terminal events with gradients through the event time (as torchdiffeq)."""

import math

import pytest
import torch

from odenet.solvers import SolverError, odeint, odeint_adjoint, odeint_event

F64 = torch.float64


class Threshold(torch.nn.Module):
    """event: y - c = 0, with c a parameter."""

    def __init__(self, c=0.5):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=F64))

    def forward(self, t, y):
        return y[0] - self.c


class Decay(torch.nn.Module):
    """y' = -k y: y(t) = y0 exp(-k t), so y = c at t* = ln(y0 / c) / k."""

    def __init__(self, k=1.3):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t, y):
        return -self.k * y


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint])
def test_event_time_and_gradients_closed_form(interface):
    """t* = ln(y0/c)/k: dt*/dy0 = 1/(k y0), dt*/dc = -1/(k c), dt*/dk = -t*/k; and
    L = y(t*) = c makes dL/d(anything but c) = 0."""
    func, event = Decay(), Threshold()
    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    t_star, ys = odeint_event(func, y0, torch.tensor(0.0, dtype=F64), event_fn=event,
                              odeint_interface=interface, rtol=1e-10, atol=1e-10)
    exact = math.log(2.0 / 0.5) / 1.3
    assert abs(t_star.item() - exact) < 1e-8
    assert ys.shape == (2, 1) and abs(ys[-1].item() - 0.5) < 1e-8
    t_star.backward(retain_graph=True)
    assert abs(y0.grad.item() - 1 / (1.3 * 2.0)) < 1e-6
    assert abs(event.c.grad.item() + 1 / (1.3 * 0.5)) < 1e-6
    assert abs(func.k.grad.item() + exact / 1.3) < 1e-6
    for p in (y0, event.c, func.k):
        p.grad = None
    ys[-1].sum().backward()
    assert abs(y0.grad.item()) < 1e-6 and abs(func.k.grad.item()) < 1e-6
    assert abs(event.c.grad.item() - 1.0) < 1e-6


def test_event_matches_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def func(t, y):  # a ball: (height, velocity)
        return torch.stack([y[1], -9.81 * torch.ones_like(y[0])])

    def ground(t, y):
        return y[0]

    results = []
    for fn in (odeint_event, torchdiffeq.odeint_event):
        y0 = torch.tensor([10.0, 2.0], dtype=F64, requires_grad=True)
        t_star, ys = fn(func, y0, torch.tensor(0.0, dtype=F64), event_fn=ground,
                        rtol=1e-8, atol=1e-8)
        t_star.backward()
        results.append((t_star.detach(), ys.detach(), y0.grad))
    for ours, ref in zip(*results):
        assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-6)
    exact = (2.0 + math.sqrt(4.0 + 2 * 9.81 * 10.0)) / 9.81
    assert abs(results[0][0].item() - exact) < 1e-7


def test_event_reverse_time_and_tuple_state():
    def func(t, state):
        y, z = state
        return -y, torch.ones_like(z)

    def event(t, state):  # several values: the first to cross ends the solve
        y, z = state
        return torch.stack([y[0] - 4.0, z[0] + 10.0])

    state = (torch.tensor([1.0], dtype=F64), torch.tensor([0.0], dtype=F64))
    t_star, (ys, zs) = odeint_event(func, state, torch.tensor(0.0, dtype=F64), event_fn=event,
                                    reverse_time=True, rtol=1e-10, atol=1e-10)
    assert abs(t_star.item() + math.log(4.0)) < 1e-8  # y = e^{-t} reaches 4 at t = -ln 4
    assert abs(ys[-1].item() - 4.0) < 1e-7 and abs(zs[-1].item() + math.log(4.0)) < 1e-7


def test_event_needs_an_adaptive_method_and_terminates():
    with pytest.raises(ValueError, match="odeint_event needs an adaptive method"):
        odeint_event(lambda t, y: -y, torch.ones(1), torch.tensor(0.0),
                     event_fn=lambda t, y: y[0] - 0.5, method="rk4")
    with pytest.raises(SolverError, match="no event within max_num_steps=50"):
        odeint_event(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor(0.0, dtype=F64),
                     event_fn=lambda t, y: y[0] + 1.0, options={"max_num_steps": 50})
