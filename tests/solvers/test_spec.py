"""SolveSpec and prepare: a solve validated once gives odeint's results bit for bit
(outputs, gradients, stats), for every gradient method; bad settings are odeint's
one-line ValueErrors, raised when the spec is made."""

import pytest
import torch

from odenet.solvers import SolveSpec, SolveStats, odeint, prepare

from .problems import Field


def _solve(call, func, y0):
    stats = SolveStats()
    y0 = y0.clone().requires_grad_(True)
    func.zero_grad(set_to_none=True)
    ys = call(y0, stats)
    (ys * torch.arange(ys.numel(), dtype=ys.dtype).view_as(ys)).sum().backward()
    return ys.detach(), y0.grad, func.w.grad, stats.as_dict()


@pytest.mark.parametrize("method, gradient, extra", [
    ("dopri5", "adjoint", {}), ("dopri5", "adjoint", {"adjoint_norm": "seminorm"}),
    ("dopri5", "backprop", {"last_step": "overshoot"}), ("tsit5", "checkpoint", {}),
    ("adaptive_reversible_heun", "reversible", {}), ("rk4", "adjoint", {"step_size": 0.1}),
    ("dopri5", "checkpoint", {"options": {"jump_t": [0.4]}, "max_num_steps": 500})])
def test_prepared_solve_is_odeint_bit_for_bit(method, gradient, extra):
    func = Field()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    spec = SolveSpec(method=method, rtol=1e-6, atol=1e-8, gradient=gradient, **extra)
    y0 = torch.tensor([[0.3, -0.2, 1.0], [1.0, 0.5, -0.7]], dtype=torch.float64)
    solve = prepare(spec, func, y0, t)
    ours = [_solve(solve, func, y0), _solve(solve, func, 2 * y0)]  # reused
    ref = [_solve(lambda y, s: odeint(
        func, y, t, method=method, rtol=1e-6, atol=1e-8, options=spec.odeint_options(),
        gradient=gradient, adjoint_params=tuple(func.parameters()),
        adjoint_options=spec.adjoint_options(), stats=s), func, y) for y in (y0, 2 * y0)]
    for a, b in zip(ours, ref):
        assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3])) and a[3] == b[3]


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "rk45"}, "unknown method 'rk45'; valid methods: "),
    ({"rtol": 0}, "rtol must be a positive finite number, got 0"),
    ({"gradient": "exact"}, "unknown gradient 'exact'; valid: backprop, adjoint"),
    ({"method": "rk4", "gradient": "reversible"}, "gradient='reversible' needs a reversible"),
    ({"adjoint_norm": "l2"}, "adjoint_norm must be one of default, seminorm, got 'l2'"),
    ({"last_step": "end"}, "last_step must be one of clamp, overshoot, got 'end'"),
    ({"step_size": 0.1}, "step_size is for fixed-grid methods"),
    ({"max_num_steps": 0}, "options['max_num_steps'] must be a positive integer, got 0"),
    ({"options": {"jump": [0.5]}}, "unknown option(s) ['jump'] for method 'dopri5'"),
])
def test_bad_spec(kwargs, message):
    with pytest.raises(ValueError) as info:
        SolveSpec(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        SolveSpec().rtol = 1e-5


def test_prepared_solve_refuses_another_state():
    solve = prepare(SolveSpec(gradient="backprop"), Field(), torch.zeros(2, 3, dtype=torch.float64),
                    [0.0, 1.0])
    with pytest.raises(ValueError, match=r"y0 must be a torch.float64 tensor of shape \(2, 3\)"):
        solve(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"got a torch.float64 tensor of shape \(3,\)"):
        solve(torch.zeros(3, dtype=torch.float64))


def test_a_tolerance_is_checked_against_the_prepared_state_dtype():
    """A spec holds no dtype: a tolerance float32 cannot resolve is refused by prepare for
    a float32 state and kept for a float64 one."""
    spec = SolveSpec(rtol=1e-18, atol=1e-18, gradient="backprop")
    with pytest.raises(ValueError, match=r"rtol=1e-18 and atol=1e-18 are below what float32 "):
        prepare(spec, Field(), torch.ones(3), torch.tensor([0.0, 1.0]))
    solve = prepare(spec, Field(), torch.ones(3, dtype=torch.float64), torch.tensor([0.0, 1.0]))
    assert solve(torch.ones(3, dtype=torch.float64)).shape == (2, 3)
    with pytest.raises(ValueError, match="y0 is bfloat16: method 'dopri5' controls its steps"):
        prepare(SolveSpec(), Field(), torch.ones(3).bfloat16(), torch.tensor([0.0, 1.0]))
