"""options={"jump_t": ...}: torchdiffeq's way to name the times where f
is discontinuous. A step that would cross one ends on it (its c = 1 stages just before
it), and the next starts with f just past it; tested against torchdiffeq 0.2.5."""

import re

import pytest
import torch

from odenet.solvers import SolveStats, odeint, odeint_adjoint, odeint_event

torchdiffeq = pytest.importorskip("torchdiffeq")

JUMPS = torch.tensor([0.5, 1.3], dtype=torch.float64)
T = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
TOL = {"rtol": 1e-8, "atol": 1e-10}


class Switched(torch.nn.Module):
    """y' = sign(t - 0.5) w y + [t > 1.3]: a jump in the rate at 0.5, a step input at 1.3."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.7, -0.3], dtype=torch.float64))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return torch.sign(t - 0.5) * self.w * y + (t > 1.3).to(y.dtype)


def exact(w, y0, t):
    """The closed form: y = y0 exp(-w t) up to 0.5, then exp(w (t - 0.5)), plus the step
    input's (exp(w (t - 1.3)) - 1) / w after 1.3."""
    out = []
    for ti in t.tolist():
        y = y0 * torch.exp(-w * min(ti, 0.5))
        if ti > 0.5:
            y = y * torch.exp(w * (ti - 0.5))
        if ti > 1.3:
            y = y + (torch.exp(w * (ti - 1.3)) - 1) / w
        out.append(y)
    return torch.stack(out)


Y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5", "dopri8"])
@pytest.mark.parametrize("last_step", ["clamp", "overshoot"])
def test_same_answer_as_torchdiffeq_with_fewer_evaluations(method, last_step):
    func, stats = Switched(), SolveStats()
    with torch.no_grad():
        odeint(func, Y0, T, method=method, options={"last_step": last_step}, **TOL)
        plain_nfe, func.calls = func.calls, 0
        ys = odeint(func, Y0, T, method=method, options={"jump_t": JUMPS, "last_step": last_step},
                    stats=stats, **TOL)
        nfe, func.calls = func.calls, 0
        ref_method = "dopri5" if method == "tsit5" else method  # torchdiffeq lacks tsit5
        ref = torchdiffeq.odeint(func, Y0, T, method=ref_method, options={"jump_t": JUMPS},
                                 **TOL)
        ref_nfe = func.calls
    truth = exact(func.w.detach(), Y0, T)
    assert stats.nfe_forward == nfe
    assert nfe < plain_nfe  # no step shrinks at the jumps
    assert torch.allclose(ys, truth, rtol=1e-6, atol=0)
    # torchdiffeq's own bosh3 and dopri8 outputs are 1e-5 off the closed form here (its
    # dense outputs: quartic fits); odenet's dopri5 takes its steps exactly (below)
    assert torch.allclose(ys, ref, rtol=5e-5, atol=0)
    if last_step == "overshoot" and method == "dopri5":  # torchdiffeq's stepping exactly
        assert nfe == ref_nfe and torch.allclose(ys, ref, rtol=0, atol=1e-13)


def test_decreasing_time_steps_onto_the_jumps_too():
    func = Switched()
    with torch.no_grad():
        plain = odeint(func, Y0, T.flip(0), **TOL)
        plain_nfe, func.calls = func.calls, 0
        ys = odeint(func, Y0, T.flip(0), options={"jump_t": [0.5, 1.3]}, **TOL)
        ref = torchdiffeq.odeint(func, Y0, T.flip(0), options={"jump_t": JUMPS}, **TOL)
    assert func.calls < plain_nfe / 2
    assert torch.allclose(ys, plain, rtol=1e-5, atol=0)
    assert torch.allclose(ys, ref, rtol=1e-6, atol=0)


def _grads(solve, func):
    y0 = Y0.clone().requires_grad_(True)
    func.zero_grad()
    ys = solve(func, y0)
    (ys * torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).view_as(ys)).sum().backward()
    return torch.cat([y0.grad, func.w.grad])


def test_gradients_agree_with_torchdiffeq_and_backprop():
    """The adjoint's backward solves get the same jumps (its options are the forward's),
    stepping onto them from above; backprop and checkpoint differentiate the same steps."""
    func = Switched()
    opts = {"jump_t": JUMPS}
    tdq_adjoint = _grads(lambda f, y0: torchdiffeq.odeint_adjoint(f, y0, T, options=opts, **TOL),
                         func)
    tdq_backprop = _grads(lambda f, y0: torchdiffeq.odeint(f, y0, T, options=opts, **TOL), func)
    stats = SolveStats()
    adjoint = _grads(lambda f, y0: odeint_adjoint(f, y0, T, options=opts, stats=stats, **TOL),
                     func)
    backprop = _grads(lambda f, y0: odeint(f, y0, T, options=opts, **TOL), func)
    checkpoint = _grads(lambda f, y0: odeint(f, y0, T, options=opts, gradient="checkpoint",
                                             **TOL), func)
    func.calls = 0
    _grads(lambda f, y0: odeint_adjoint(f, y0, T, **TOL), func)
    assert stats.nfe_forward + stats.nfe_backward < func.calls / 2
    assert torch.allclose(adjoint, tdq_adjoint, rtol=1e-6, atol=0)
    assert torch.allclose(backprop, tdq_backprop, rtol=1e-6, atol=0)
    assert torch.allclose(adjoint, backprop, rtol=1e-5, atol=0)
    assert torch.allclose(checkpoint, backprop, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", ["0.5", 0.5, [[0.5]], [float("nan")],
                                   torch.tensor([float("inf")]), {"t": 0.5}, [0.5, "a"]])
def test_bad_jump_t(value):
    with pytest.raises(ValueError) as info:
        odeint(Switched(), Y0, T, options={"jump_t": value})
    message = str(info.value)
    assert message.startswith("options['jump_t'] must be a 1-D tensor or sequence of finite "
                              "times, got ") and "\n" not in message


@pytest.mark.parametrize("method, message", [
    ("adaptive_reversible_heun", "options['jump_t'] needs a Runge-Kutta method"),
    ("rk4", "unknown option(s) ['jump_t']")])
def test_jump_t_needs_an_adaptive_runge_kutta_method(method, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        odeint(Switched(), Y0, T, method=method, options={"jump_t": [0.5]})


def test_odeint_event_refuses_jump_t():
    with pytest.raises(ValueError, match="odeint_event does not take options"):
        odeint_event(Switched(), Y0, torch.tensor(0.0, dtype=torch.float64),
                     event_fn=lambda t, y: 1.0 - t, options={"jump_t": [0.5]})
