"""Three solver bugs, each on its exact failing case: the float32 first step, the adjoint
with a y-independent func, and a func whose output dtype differs from y0's."""

import math

import pytest
import torch

from odenet.solvers import SolveStats, odeint

torchdiffeq = pytest.importorskip("torchdiffeq")


# --- 1. float32 adaptive solves: the automatic first step below the float32 floor --------
def _zero_last_layer_flow():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    torch.nn.init.zeros_(net[2].weight)
    torch.nn.init.zeros_(net[2].bias)
    y0 = torch.randn(8, 2)
    return (lambda t, y: net(y)), y0, [0.0, 1.0], y0  # f = 0: y stays y0


FLOAT32_CASES = {
    "zero_initialised_last_layer": _zero_last_layer_flow,
    "start_at_equilibrium": lambda: ((lambda t, y: -(y - 1)), torch.ones(3), [0.0, 1.0],
                                     torch.ones(3)),
    "cos_on_0_60": lambda: ((lambda t, y: torch.cos(t) * torch.ones_like(y)), torch.zeros(1),
                            [0.0, 60.0], torch.full((1,), math.sin(60.0))),
}


@pytest.mark.parametrize("case", sorted(FLOAT32_CASES))
def test_float32_first_step_below_the_floor_starts_at_the_floor(case):
    """These died with 'step size underflow at t=0'; float64 and torchdiffeq solve them."""
    func, y0, t, exact = FLOAT32_CASES[case]()
    t = torch.tensor(t)
    stats = SolveStats()
    with torch.no_grad():
        ys = odeint(func, y0, t, stats=stats)  # the defaults: dopri5, rtol=1e-7, atol=1e-9
        ref = torchdiffeq.odeint(func, y0, t)
        ys64 = odeint(lambda t, y: func(t.float(), y.float()).double(), y0.double(), t.double())
    assert ys.dtype == torch.float32 and stats.steps_accepted > 0
    assert torch.allclose(ys[-1], exact, atol=1e-5)
    assert torch.allclose(ys[-1], ref[-1], atol=1e-5)
    assert torch.allclose(ys[-1].double(), ys64[-1], atol=1e-5)


# --- 2. the adjoint's backward when func does not depend on y ----------------------------
class TimeOnly(torch.nn.Module):
    """y' = g(t) = w * cos(t), with an unused parameter."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
        self.unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

    def forward(self, t, y):
        return self.w * torch.cos(t)


def test_adjoint_func_independent_of_y():
    """y(t1) = y0 + w (sin t1 - sin t0): dL/dy0 = dL/dy1, dL/dw = sin t1 - sin t0 (L = sum
    y1), the unused parameter's gradient is 0; the same as direct backprop."""
    func = TimeOnly()
    t = torch.tensor([0.0, 1.2], dtype=torch.float64)
    results = []
    for adjoint in (True, False):
        func.zero_grad()
        y0 = torch.tensor([0.3, -0.4], dtype=torch.float64, requires_grad=True)
        ys = odeint(func, y0, t, rtol=1e-10, atol=1e-10, adjoint=adjoint)
        ys[-1].sum().backward()
        results.append((y0.grad, func.w.grad, func.unused.grad))
    (gy, gw, gu), (gy_direct, gw_direct, _) = results
    assert torch.allclose(gy, torch.ones(2, dtype=torch.float64))
    assert torch.allclose(gw, torch.full((2,), math.sin(1.2), dtype=torch.float64), atol=1e-8)
    assert torch.equal(gu, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(gy, gy_direct) and torch.allclose(gw, gw_direct, atol=1e-8)


def test_adjoint_func_without_any_grad_path():
    """y' = cos(t) with no parameters: func's output requires no grad at all."""
    y0 = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ys = odeint(lambda t, y: torch.cos(t) * torch.ones(2, dtype=torch.float64), y0,
                torch.tensor([0.0, 1.0], dtype=torch.float64), adjoint=True, adjoint_params=())
    ys[-1].sum().backward()
    assert torch.equal(y0.grad, torch.ones(2, dtype=torch.float64))


def test_adjoint_func_ignoring_part_of_the_state():
    """y' = (y1, 0): y0's first entry has no effect on y'; gradients equal direct backprop."""
    def func(t, y):
        return torch.stack([y[1], torch.zeros_like(y[1])])

    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    grads = []
    for adjoint in (True, False):
        y0 = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
        ys = odeint(func, y0, t, rtol=1e-10, atol=1e-10, adjoint=adjoint,
                    adjoint_params=() if adjoint else None)
        ys[-1].sum().backward()  # y(2) = (y0_0 + 2 y0_1, y0_1)
        grads.append(y0.grad)
    assert torch.allclose(grads[0], torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert torch.allclose(grads[0], grads[1])


# --- 3. func's output dtype is checked, in every mode --------------------------------------
@pytest.mark.parametrize("mode, method, options", [
    *[(mode, method, options) for mode in ("no_grad", "grad", "adjoint")
      for method, options in (("dopri5", None), ("rk4", {"step_size": 0.1}))],
    # lsoda: no backprop through scipy (grad mode refuses y0 requiring grad first)
    ("no_grad", "lsoda", None), ("adjoint", "lsoda", None)])
@pytest.mark.parametrize("bad, got", [(torch.float64, "float64"), (torch.complex64, "complex64")])
def test_func_output_dtype_is_checked(mode, method, options, bad, got):
    y0 = torch.ones(2, requires_grad=mode != "no_grad")

    def func(t, y):
        return (-y).to(bad)

    with pytest.raises(ValueError) as info, torch.set_grad_enabled(mode != "no_grad"):
        odeint(func, y0, torch.tensor([0.0, 1.0]), method=method, options=options,
               adjoint=mode == "adjoint", adjoint_params=())
    assert str(info.value) == (f"func returned a {got} tensor of shape (2,); expected a float32 "
                               "tensor of shape (2,) (the dtype and shape of y0)")
