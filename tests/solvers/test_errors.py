"""Bad input raises ValueError naming the value; an impossible solve raises SolverError."""

import math

import pytest
import torch

from odenet.solvers import SolverError, SolveStats, odeint

Y0 = torch.tensor([1.0, 2.0])
T = torch.tensor([0.0, 1.0])


def decay(t, y):
    return -y


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rtol": 0.0}, "rtol must be a positive finite number, got 0.0"),
        ({"rtol": -1e-3}, "rtol must be a positive"),
        ({"atol": float("nan")}, "atol must be a positive finite number, got nan"),
        ({"atol": math.inf}, "atol must be a positive"),
        ({"rtol": "abc"}, "rtol must be a positive finite number, got 'abc'"),
        ({"rtol": True}, "rtol must be a positive"),
        ({"t": torch.tensor([0.0, 1.0, 0.5])}, "t must be strictly increasing or strictly decreasing"),
        ({"t": torch.tensor([0.0, 0.0])}, "strictly"),
        ({"t": torch.zeros(2, 2)}, "t must be 1-D with at least 2 times, got shape (2, 2)"),
        ({"t": torch.tensor([0.0])}, "at least 2 times"),
        ({"t": torch.tensor([0.0, math.nan])}, "t must be finite"),
        ({"t": "soon"}, "t must be"),
        ({"y0": torch.tensor([1, 2])}, "y0 must have a floating dtype"),
        ({"y0": torch.tensor([1.0, math.inf])}, "y0 contains NaN or Inf"),
        ({"y0": [1.0, 2.0]}, "y0 must be a torch.Tensor, got list"),
        ({"method": "rk45"}, "unknown method 'rk45'; valid methods: euler, midpoint, rk4, bosh3"),
        ({"method": "rk4"}, "fixed-grid method 'rk4' needs options={'step_size': h}"),
        ({"method": "rk4", "options": {"step_size": -0.1}}, "options['step_size'] must be a positive"),
        ({"options": {"stepsize": 0.1}}, "unknown option(s) ['stepsize'] for method 'dopri5'"),
        ({"method": "euler", "options": {"step_size": 0.1, "first_step": 1}}, "unknown option(s) ['first_step']"),
        ({"options": {"controller": "PID"}}, "options['controller'] must be 'I' or 'PI'"),
        ({"options": {"last_step": "cut"}},
         "options['last_step'] must be one of clamp, overshoot, got 'cut'"),
        ({"options": {"max_num_steps": 0}}, "options['max_num_steps'] must be a positive integer"),
        ({"options": {"safety": 2.0}}, "0 < safety <= 1"),
        ({"adjoint": True, "adjoint_options": {"nrom": "seminorm"}}, "unknown adjoint option(s) ['nrom']"),
        ({"adjoint": True, "adjoint_options": {"norm": "l2"}}, "adjoint_options['norm'] must be one of default, seminorm"),
        ({"adjoint": True, "adjoint_options": {"rtol": 0}}, "adjoint_options['rtol'] must be a positive"),
        ({"func": 3}, "func must be callable"),
        ({"t": torch.tensor([0.0, 1.0], requires_grad=True)}, "gradients with respect to t need adjoint=True"),
        ({"func": lambda t, y: y[:1]}, "func returned (1,); expected a tensor of shape (2,)"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    args = {"func": decay, "y0": Y0.clone().requires_grad_(), "t": T, **kwargs}
    with pytest.raises(ValueError) as info:
        odeint(args.pop("func"), args.pop("y0"), args.pop("t"), **args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_step_size_underflow():
    """y' = y^2 blows up at t = 1: the solver stops with a clear error, not a hang."""
    with pytest.raises(SolverError, match=r"step size underflow at t=0\.99.* function evaluations"):
        odeint(lambda t, y: y * y, Y0[:1], torch.tensor([0.0, 2.0]), rtol=1e-6, atol=1e-6)


def test_max_num_steps():
    with pytest.raises(SolverError, match="max_num_steps=5 exceeded at t="):
        odeint(lambda t, y: torch.cos(50 * t) * y, Y0, torch.tensor([0.0, 10.0]),
               rtol=1e-8, atol=1e-8, options={"max_num_steps": 5})


def test_nan_state():
    def nan_after_half(t, y):
        return -y if t < 0.5 else y * math.nan

    with pytest.raises(SolverError, match="became NaN/Inf at t=0\\.[45]"):
        odeint(nan_after_half, Y0, T, rtol=1e-6, atol=1e-6)


def test_nan_at_start():
    with pytest.raises(SolverError, match="NaN/Inf at the initial state"):
        odeint(lambda t, y: y * math.nan, Y0, T)


def test_nan_fixed_grid():
    with pytest.raises(SolverError, match="state became NaN/Inf at t=1"):
        odeint(lambda t, y: y * math.nan, Y0, T, method="euler", options={"step_size": 0.1})


def test_fixed_grid_too_many_steps_is_refused_up_front():
    with pytest.raises(SolverError, match="needs 10000000000 steps"):
        odeint(decay, Y0, T, method="euler", options={"step_size": 1e-10})


def test_solver_error_is_runtime_error():
    assert issubclass(SolverError, RuntimeError)


def test_no_sliver_step_before_the_end():
    """A step that would stop a hair (below float resolution) before t1 ends at t1 instead
    of leaving a remainder too short to step (a false "step size underflow")."""
    stats = SolveStats()
    odeint(decay, Y0.double(), torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1.0,
           atol=1.0, options={"first_step": 1.0 - 1e-15}, stats=stats)
    assert stats.steps_accepted == 1
