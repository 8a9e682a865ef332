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
        ({"t": torch.zeros(2, 2)}, "t must be 1-D with at least 1 time, got shape (2, 2)"),
        ({"t": torch.tensor([])}, "at least 1 time"),
        ({"t": torch.tensor([0.0, math.nan])}, "t must be finite"),
        ({"t": "soon"}, "t must be"),
        ({"y0": torch.tensor([1, 2])}, "y0 must have a floating dtype"),
        ({"y0": torch.tensor([1.0, math.inf])}, "y0 contains NaN or Inf"),
        ({"y0": [1.0, 2.0]}, "y0 must be a torch.Tensor or a tuple of tensors, got list"),
        ({"y0": (Y0, torch.tensor([1, 2]))}, "y0[1] must have a floating dtype"),
        ({"y0": (Y0, Y0.double())}, "the tensors of y0 must share one dtype and device"),
        ({"method": "rk45"}, "unknown method 'rk45'; valid methods: euler, midpoint, rk4, heun3, "
                             "explicit_adams, reversible_heun, bosh3, dopri5, tsit5, "
                             "adaptive_heun, fehlberg2, dopri8, adaptive_reversible_heun, lsoda"),
        ({"method": "rk4", "options": {"step_size": -0.1}}, "options['step_size'] must be a positive"),
        ({"options": {"stepsize": 0.1}}, "unknown option(s) ['stepsize'] for method 'dopri5'"),
        ({"method": "euler", "options": {"step_size": 0.1, "first_step": 1}}, "unknown option(s) ['first_step']"),
        ({"options": {"controller": "PID"}}, "options['controller'] must be one of I, PI, got 'PID'"),
        ({"options": {"max_step": 0.0}}, "options['max_step'] must be a positive number, got 0.0"),
        ({"options": {"min_step": 0.5, "max_step": 0.1}}, "options need min_step <= max_step"),
        ({"options": {"norm": "rms"}}, "options['norm'] must be a callable (the error norm), got 'rms'"),
        ({"method": "explicit_adams", "options": {"max_order": 13}},
         "options['max_order'] must be an integer in 1..12, got 13"),
        ({"rtol": torch.ones(3)}, "rtol of shape (3,) does not broadcast against y0 of shape (2,)"),
        ({"atol": torch.tensor([1e-6, 0.0])}, "atol must hold positive finite numbers"),
        ({"y0": (Y0, Y0), "rtol": [1e-3]}, "rtol must be a positive number or one per tensor of the tuple y0 (2)"),
        ({"options": {"last_step": "cut"}},
         "options['last_step'] must be one of clamp, overshoot, got 'cut'"),
        ({"options": {"max_num_steps": 0}}, "options['max_num_steps'] must be a positive integer"),
        ({"options": {"safety": 2.0}}, "0 < safety <= 1"),
        ({"adjoint": True, "adjoint_options": {"nrom": "seminorm"}}, "unknown adjoint option(s) ['nrom']"),
        ({"adjoint": True, "adjoint_options": {"norm": "l2"}},
         "adjoint_options['norm'] must be one of default, seminorm or a callable, got 'l2'"),
        ({"adjoint": True, "adjoint_options": {"options": {"norm": max}}},
         "the backward solve's norm is adjoint_options['norm']"),
        ({"adjoint": True}, "adjoint=True needs func to be a torch.nn.Module"),
        ({"adjoint": True, "adjoint_options": {"rtol": 0}}, "adjoint_options['rtol'] must be a positive"),
        ({"func": 3}, "func must be callable"),
        ({"func": lambda t, y: y[:1]},
         "func returned a float32 tensor of shape (1,); expected a float32 tensor of shape (2,)"),
        ({"func": lambda t, y: (y,)}, "func returned tuple; expected a float32 tensor of shape (2,)"),
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
    """An explicit max_num_steps still bounds a fixed grid (by default it does not)."""
    with pytest.raises(SolverError, match="needs 10000000000 steps"):
        odeint(decay, Y0, T, method="euler", options={"step_size": 1e-10, "max_num_steps": 1000})


def test_solver_error_is_runtime_error():
    assert issubclass(SolverError, RuntimeError)


def test_no_sliver_step_before_the_end():
    """A step that would stop a hair (below float resolution) before t1 ends at t1 instead
    of leaving a remainder too short to step (a false "step size underflow")."""
    stats = SolveStats()
    odeint(decay, Y0.double(), torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1.0,
           atol=1.0, options={"first_step": 1.0 - 1e-15}, stats=stats)
    assert stats.steps_accepted == 1


def _counting(calls):
    def f(t, y):
        calls.append(t)
        return -y
    return f


@pytest.mark.parametrize("y0, kwargs, message", [
    # below eps**2 of the state's dtype: the first-step norm overflowed (a NaN step), or
    # the steps shrank until max_num_steps ran out, blamed on stiffness
    (torch.ones(3), {"rtol": 1e-20, "atol": 1e-20},
     "rtol=1e-20 and atol=1e-20 are below what float32 resolves (eps**2 = 1.4e-14, the least "
     "error a dopri5 step in float32 can be held to): raise rtol or atol to at least 1.4e-14, "
     "or solve in float64"),
    (torch.full((2, 2), 7.0), {"rtol": 1e-15, "atol": 1e-17, "method": "bosh3"},
     "rtol=1e-15 and atol=1e-17 are below what float32 resolves"),
    (torch.ones(3), {"rtol": torch.tensor([1e-3, 1e-16, 1e-3]), "atol": 1e-16},
     "rtol=1e-16 (min) and atol=1e-16 are below what float32 resolves"),
    (torch.ones(3).double(), {"rtol": 1e-33, "atol": 1e-40, "method": "tsit5"},
     "rtol=1e-33 and atol=1e-40 are below what float64 resolves (eps**2 = 4.9e-32, the least "
     "error a tsit5 step in float64 can be held to): raise rtol or atol to at least 4.9e-32"),
    (torch.ones(3), {"rtol": 1e-3, "atol": 1e-3, "adjoint_params": (), "adjoint": True,
                     "adjoint_options": {"rtol": 1e-16, "atol": 1e-18}},
     "adjoint_options['rtol']=1e-16 and adjoint_options['atol']=1e-18 are below what float32"),
    # float16/bfloat16: steps and errors the dtype cannot resolve (NaN steps, underflow)
    (torch.ones(3).half(), {},
     "y0 is float16: method 'dopri5' controls its steps in the state's dtype, and float16 "
     "cannot resolve them: solve a float32 (or float64) y0 and run func under torch.autocast "
     "(as odenet's precision=bf16 does), or use a fixed-grid method"),
    (torch.ones(2, 3).bfloat16(), {"rtol": 1e-2, "atol": 1e-2, "method": "adaptive_heun"},
     "y0 is bfloat16: method 'adaptive_heun' controls its steps in the state's dtype"),
    ((torch.ones(2).half(), torch.ones(1).half()), {"method": "adaptive_reversible_heun"},
     "y0 is float16: method 'adaptive_reversible_heun'"),
])
def test_what_the_dtype_cannot_resolve_is_refused_before_any_evaluation(y0, kwargs, message):
    calls = []
    with pytest.raises(ValueError) as info:
        odeint(_counting(calls), y0, torch.tensor([0.0, 1.0]), **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert calls == []


def test_tolerances_and_dtypes_the_step_control_does_not_use_still_solve():
    """Tolerances are unused on a fixed grid, and LSODA runs in float64: as before."""
    ys = odeint(decay, torch.ones(2).half(), T, method="rk4", rtol=1e-30, atol=1e-30)
    assert ys.dtype == torch.float16 and abs(float(ys[-1, 0]) - math.exp(-1)) < 0.01
    ys = odeint(decay, torch.ones(2, dtype=torch.float64), T, rtol=1e-20, atol=1e-20)
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 1e-14
    ys = odeint(decay, torch.ones(2), T, rtol=1e-20, atol=1e-3)  # atol alone resolves
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 1e-3
