"""Method lsoda (the "odepack" family, odenet/solvers/odepack.py): ODEPACK's LSODA through
scipy. Closed-form accuracy, NFE bookkeeping, tuple/backward/float32 solves, the adjoint
(its only gradient), stiff problems and the refusals."""

import math
import sys

import pytest
import torch

pytest.importorskip("scipy.integrate")

from odenet.solvers import (  # noqa: E402
    ADJOINT_ONLY_METHODS,
    REGISTRY,
    SolverError,
    SolveStats,
    method_unavailable,
    odeint,
)

from .problems import PROBLEMS  # noqa: E402

F64 = torch.float64


class Counted:
    """func wrapper counting its calls (the external NFE oracle) and the dtypes it sees."""

    def __init__(self, f):
        self.f, self.calls, self.dtypes = f, 0, set()

    def __call__(self, t, y):
        self.calls += 1
        self.dtypes.add(y[0].dtype if isinstance(y, tuple) else y.dtype)
        return self.f(t, y)


def oscillator(dtype=F64):
    """x'' = -w^2 x as the tuple (x, v): x = cos(w t), v = -w sin(w t)."""
    w = 2.0

    def f(t, y):
        x, v = y
        return v, -w * w * x

    y0 = (torch.tensor([1.0], dtype=dtype), torch.tensor([0.0], dtype=dtype))
    return f, y0, lambda t: (math.cos(w * t), -w * math.sin(w * t))


def test_registry_entry():
    m = REGISTRY["lsoda"]
    assert (m.family, m.adaptive, m.gradients, m.callable_norm) == ("odepack", True,
                                                                    ("adjoint",), False)
    assert ADJOINT_ONLY_METHODS == ("lsoda",)
    assert method_unavailable("lsoda") is None and method_unavailable("dopri5") is None


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
def test_exponential_decay_within_tolerance(tol):
    func, y0, solution = PROBLEMS["decay"]()
    t = torch.linspace(0.0, 2.0, 9, dtype=F64)  # interior times: ODEPACK's interpolant
    ys = odeint(func, y0, t, method="lsoda", rtol=tol, atol=tol)
    exact = torch.stack([solution(ti) for ti in t])
    assert ys.shape == (9, 2, 3)
    # global error relative to the solution's size: a small multiple of the tolerance
    assert (ys - exact).abs().max() / exact.abs().max() < 20 * tol


@pytest.mark.parametrize("tol", [1e-4, 1e-7, 1e-10])
def test_harmonic_oscillator_tuple_state_within_tolerance(tol):
    func, y0, solution = oscillator()
    t = torch.tensor([0.0, 0.7, 2.0, 3.1], dtype=F64)
    xs, vs = odeint(func, y0, t, method="lsoda", rtol=tol, atol=tol)
    assert xs.shape == vs.shape == (4, 1)
    for i, ti in enumerate(t.tolist()):
        x, v = solution(ti)
        assert abs(xs[i, 0].item() - x) < 50 * tol and abs(vs[i, 0].item() - v) < 50 * tol


def test_error_shrinks_with_tolerance():
    func, y0, solution = PROBLEMS["time_dependent"]()
    t = torch.tensor([0.0, 2.5], dtype=F64)
    errs, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7, 1e-9, 1e-11):
        stats = SolveStats()
        ys = odeint(func, y0, t, method="lsoda", rtol=tol, atol=tol, stats=stats)
        errs.append((ys[-1] - solution(2.5)).abs().max().item())
        nfes.append(stats.nfe_forward)
    assert all(e2 < e1 for e1, e2 in zip(errs, errs[1:])), errs
    assert all(n2 > n1 for n1, n2 in zip(nfes, nfes[1:])), nfes
    assert errs[-1] < 100 * 1e-11


def test_nfe_is_every_call_of_func_and_steps_are_counted():
    func, y0, _ = PROBLEMS["linear"]()
    counted, stats = Counted(func), SolveStats()
    odeint(counted, y0, torch.linspace(0.0, 3.0, 5, dtype=F64), method="lsoda", rtol=1e-6,
           atol=1e-6, stats=stats)
    assert stats.nfe_forward == counted.calls > 0
    assert 0 < stats.steps_accepted < stats.nfe_forward
    assert stats.steps_rejected == stats.nfe_backward == 0
    # counters accumulate over solves
    odeint(counted, y0, torch.tensor([0.0, 1.0], dtype=F64), method="lsoda", stats=stats)
    assert stats.nfe_forward == counted.calls


def test_backward_in_time():
    func, y0, solution = PROBLEMS["linear"]()
    t = torch.tensor([3.0, 1.5, 0.0], dtype=F64)
    y3 = solution(torch.tensor(3.0, dtype=F64))
    ys = odeint(func, y3, t, method="lsoda", rtol=1e-9, atol=1e-9)
    assert torch.allclose(ys[-1], y0, atol=1e-7)
    assert torch.allclose(ys[1], solution(torch.tensor(1.5, dtype=F64)), atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_in_and_out(dtype):
    func, y0, solution = PROBLEMS["decay"](dtype)
    counted = Counted(func)
    ys = odeint(counted, y0, torch.tensor([0.0, 1.0], dtype=dtype), method="lsoda", rtol=1e-5,
                atol=1e-5)
    assert ys.dtype == dtype and ys.device == y0.device and counted.dtypes == {dtype}
    exact = solution(torch.tensor(1.0, dtype=dtype))
    assert (ys[-1] - exact).abs().max() < 1e-3
    assert torch.equal(ys[0], y0)


def test_y0_is_not_written():
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=F64), method="lsoda")
    assert y0.tolist() == [1.0, 2.0]


def test_stiff_problem_solves_to_tolerance_with_few_evaluations():
    """y' = -1000 (y - cos t): explicit methods need ~1000 steps per unit of time for
    stability; LSODA switches to BDF (its diagonal Jacobian is exact here)."""
    lam = 1000.0

    def exact(t):  # from y(0) = 0
        return (lam * lam * math.cos(t) + lam * math.sin(t) - lam * lam * math.exp(-lam * t)) / (
            lam * lam + 1)

    func = Counted(lambda t, y: -lam * (y - torch.cos(t)))
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    stats = SolveStats()
    ys = odeint(func, torch.zeros(3, dtype=F64), t, method="lsoda", rtol=1e-6, atol=1e-6,
                stats=stats)
    for i, ti in enumerate(t.tolist()):
        assert (ys[i] - exact(ti)).abs().max() < 1e-4
    assert stats.nfe_forward == func.calls
    rk = SolveStats()
    odeint(func, torch.zeros(3, dtype=F64), t, method="dopri5", rtol=1e-6, atol=1e-6, stats=rk)
    assert stats.nfe_forward * 5 < rk.nfe_forward, (stats, rk)


def test_stiff_large_state_needs_no_dense_jacobian():
    """A stiff state of 100,000 numbers: a dense Jacobian would be 80 GB and 100,000
    evaluations; the banded (diagonal) one costs one evaluation and n numbers."""
    rates = torch.logspace(0, 3, 100_000, dtype=F64)  # stiffness ratio 1000
    func = Counted(lambda t, y: -rates * (y - 1.0))
    stats = SolveStats()
    ys = odeint(func, torch.zeros(100_000, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64),
                method="lsoda", rtol=1e-4, atol=1e-4, stats=stats)
    assert (ys[-1] - (1 - torch.exp(-2 * rates))).abs().max() < 1e-3
    assert stats.nfe_forward == func.calls < 1000


class Linear(torch.nn.Module):
    """y' = a * y (a per component): y(T) = y0 exp(a T), dy(T)/da = T y(T)."""

    def __init__(self, dtype=F64):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([-0.7, 0.3], dtype=dtype))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.a * y


@pytest.mark.parametrize("norm", ["default", "seminorm"])
def test_adjoint_gradient_matches_the_analytic_one(norm):
    func = Linear()
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.5], dtype=F64, requires_grad=True)
    stats = SolveStats()
    ys = odeint(func, y0, t, method="lsoda", rtol=1e-10, atol=1e-10, gradient="adjoint",
                adjoint_options={"norm": norm}, stats=stats)
    forward_calls = func.calls
    assert stats.nfe_forward == forward_calls
    (ys[-1].sum() + ys[1].sum()).backward()
    a = func.a.detach()
    e1, e2 = torch.exp(a * 0.6), torch.exp(a * 1.5)
    assert torch.allclose(y0.grad, e1 + e2, rtol=1e-7)
    assert torch.allclose(func.a.grad, y0.detach() * (0.6 * e1 + 1.5 * e2), rtol=1e-7)
    # dL/dt_i = grad_i . f(t_i, y_i); dL/dt_0 = -a(t_0) . f(t_0, y_0)
    y1, y2 = y0.detach() * e1, y0.detach() * e2
    assert torch.allclose(t.grad, torch.stack([-(a * (e1 + e2) * y0.detach()).sum(),
                                               (a * y1).sum(), (a * y2).sum()]), rtol=1e-7)
    # the backward solves ran LSODA, every call counted (+3 for the t gradients)
    assert stats.nfe_backward == func.calls - forward_calls > 0
    assert stats.steps_accepted_backward > 0 and stats.steps_rejected_backward == 0


class Dense(torch.nn.Module):
    """y' = W y + b, 8 x 8, seeded."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8, dtype=F64)
        torch.nn.init.normal_(self.lin.weight, std=0.3,
                              generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.lin.bias)

    def forward(self, t, y):
        return self.lin(y)


def test_seminorm_leaves_the_parameter_gradients_out_of_the_error_control():
    """The default norm also controls the error of the parameter gradients, the seminorm
    does not: fewer backward evaluations, and both gradients match dopri5's backprop at a
    tight tolerance."""
    def gradient(method, tol, **kw):
        func = Dense()
        stats = SolveStats()
        ys = odeint(func, torch.linspace(-1, 1, 16, dtype=F64).reshape(2, 8),
                    torch.tensor([0.0, 2.0], dtype=F64), method=method, rtol=tol, atol=tol,
                    stats=stats, **kw)
        ys[-1].square().sum().backward()
        return stats.nfe_backward, func.lin.weight.grad

    _, reference = gradient("dopri5", 1e-10)
    nfe = {}
    for norm in ("default", "seminorm"):
        nfe[norm], grad = gradient("lsoda", 1e-5, gradient="adjoint",
                                   adjoint_options={"norm": norm})
        assert (grad - reference).abs().max() < 1e-3 * reference.abs().max(), norm
    assert nfe["seminorm"] < nfe["default"], nfe


def test_adjoint_float32_and_tuple():
    func = Linear(torch.float32)
    y0 = (torch.tensor([1.0], requires_grad=True), torch.tensor([2.0], requires_grad=True))
    xs, vs = odeint(lambda t, y: (func.a[:1] * y[0], func.a[1:] * y[1]), y0,
                    torch.tensor([0.0, 1.0]), method="lsoda", rtol=1e-6, atol=1e-6,
                    gradient="adjoint", adjoint_params=(func.a,))
    assert xs.dtype == vs.dtype == torch.float32
    (xs[-1] + vs[-1]).sum().backward()
    assert func.a.grad.dtype == torch.float32
    assert torch.allclose(func.a.grad, torch.tensor([1.0, 2.0]) * torch.exp(func.a.detach()),
                          rtol=1e-4)


def test_adjoint_with_another_backward_method():
    func = Linear()
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    ys = odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method="lsoda", rtol=1e-9,
                atol=1e-9, gradient="adjoint", adjoint_options={"method": "dopri5"})
    ys[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.exp(func.a.detach()), rtol=1e-6)


def test_backprop_without_gradients_to_compute_is_a_plain_solve():
    func = Linear()
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    with torch.no_grad():  # an nn.Module's parameters require grad: fine under no_grad
        ys = odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method="lsoda")
    assert torch.allclose(ys[-1], y0 * torch.exp(func.a.detach()), rtol=1e-3)


@pytest.mark.parametrize("kwargs,message", [
    ({"gradient": "checkpoint"}, "method 'lsoda' solves outside autograd (in scipy), so "
     "gradient='checkpoint' cannot go through its steps: use gradient='adjoint'"),
    ({"gradient": "reversible"}, "gradient='reversible' cannot go through its steps"),
    ({"gradient": "backprop", "y0_grad": True}, "gradient='backprop' cannot go through its "
     "steps: use gradient='adjoint' (or solve under torch.no_grad())"),
    ({"y0_grad": True}, "gradient='backprop' cannot go through its steps"),  # the default
    ({"func": "module"}, "gradient='backprop' cannot go through its steps"),  # its parameters
    ({"func": "closure"}, "func's output requires grad: use gradient='adjoint'"),
    ({"options": {"safety": 0.9}}, "unknown option(s) ['safety'] for method 'lsoda'; valid "
     "options: first_step, max_num_steps, max_step, last_step"),
    ({"options": {"min_step": 0.1}}, "unknown option(s) ['min_step'] for method 'lsoda'"),
    ({"options": {"norm": max}}, "unknown option(s) ['norm'] for method 'lsoda'"),
    ({"options": {"last_step": "overshoot"}},
     "options['last_step'] must be 'clamp' for 'lsoda' (its steps stop at t[-1])"),
    ({"options": {"max_step": -1.0}}, "options['max_step'] must be a positive"),
    ({"options": {"first_step": 0.0}}, "options['first_step'] must be a positive"),
    ({"gradient": "adjoint", "adjoint_options": {"norm": lambda s: s[0].abs().max()}},
     "adjoint method 'lsoda' uses its own error norm (ODEPACK's weighted max norm): a "
     "callable norm is not supported"),
    ({"method": "dopri5", "gradient": "adjoint", "options": {"norm": lambda y: y.abs().max()},
      "adjoint_options": {"method": "lsoda", "options": {}}},
     "adjoint method 'lsoda' uses its own error norm"),
    ({"func": lambda t, y: (-y).double()}, "func returned a float64 tensor of shape (2,); "
     "expected a float32 tensor of shape (2,) (the dtype and shape of y0)"),
])
def test_refusals_are_one_line_value_errors(kwargs, message):
    module = Linear(torch.float32)
    func = {"module": module, "closure": lambda t, y: module.a * y}.get(
        kwargs.get("func"), kwargs.get("func", lambda t, y: -y))
    kwargs = {k: v for k, v in kwargs.items() if k != "func"}
    y0 = torch.tensor([1.0, 2.0], requires_grad=kwargs.pop("y0_grad", False))
    kwargs.setdefault("method", "lsoda")
    if kwargs.get("gradient", "backprop") != "backprop":
        kwargs["adjoint_params"] = (module.a,)
    with pytest.raises(ValueError) as info:
        odeint(func, y0, torch.tensor([0.0, 1.0]), **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_max_num_steps():
    with pytest.raises(SolverError, match=r"max_num_steps=5 exceeded at t=.* after \d+ function "
                                          "evaluations"):
        odeint(lambda t, y: torch.cos(50 * t) * y, torch.ones(2), torch.tensor([0.0, 10.0]),
               method="lsoda", rtol=1e-8, atol=1e-8, options={"max_num_steps": 5})


def test_options_map_onto_odepack():
    stats = SolveStats()
    odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="lsoda",
           options={"max_step": 0.01}, stats=stats)
    assert stats.steps_accepted >= 100
    counted = Counted(lambda t, y: -y)
    odeint(counted, torch.ones(2), torch.tensor([0.0, 1.0]), method="lsoda", rtol=1e-3,
           atol=1e-3, options={"first_step": 1e-4})
    assert counted.calls > 0


def test_blow_up_and_nan_raise_solver_error():
    with pytest.raises(SolverError, match="step size underflow at t=0\\.49"):
        odeint(lambda t, y: y * y, torch.tensor([1.0, 2.0], dtype=F64),
               torch.tensor([0.0, 2.0], dtype=F64), method="lsoda", rtol=1e-6, atol=1e-6)
    with pytest.raises(SolverError, match="became NaN/Inf at t=0\\.[45]"):
        odeint(lambda t, y: -y if t < 0.5 else y * math.nan, torch.ones(2),
               torch.tensor([0.0, 1.0]), method="lsoda", rtol=1e-6, atol=1e-6)


def test_odepack_failure_is_a_solver_error_with_its_message(monkeypatch):
    """ODEPACK's failures (istate < 0) come as a scipy warning and status "failed"."""
    import warnings

    from odenet.solvers import odepack

    class Failing:
        def __init__(self, fun, t0, y0, t_bound, **kw):
            self.t, self.y, self.status, self.step_size = t0, y0, "running", None

        def step(self):
            warnings.warn("lsoda: Repeated error test failures (internal error).", stacklevel=2)
            self.status = "failed"
            return "Unexpected istate in LSODA."

    monkeypatch.setattr(odepack, "_lsoda", lambda name: Failing)
    with pytest.raises(SolverError) as info:
        odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="lsoda")
    assert str(info.value).startswith("LSODA failed at t=0 after 0 function evaluations "
                                      "(integrating to t=1): lsoda: Repeated error test "
                                      "failures (internal error). (func may return NaN/Inf")


def test_missing_scipy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)
    line = "method 'lsoda' needs scipy, which is not installed: pip install 'odenet[lsoda]'"
    assert method_unavailable("lsoda") == line
    with pytest.raises(ImportError) as info:
        odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="lsoda")
    assert str(info.value) == line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_state_stays_on_the_device():
    func, y0, solution = PROBLEMS["decay"]()
    seen = set()

    def f(t, y):
        seen.add(y.device.type)
        return func(t, y)

    with pytest.warns(RuntimeWarning, match="copies the whole state to the host and back"):
        ys = odeint(f, y0.cuda(), torch.tensor([0.0, 1.0], dtype=F64), method="lsoda",
                    rtol=1e-8, atol=1e-8)
    assert ys.device.type == "cuda" and seen == {"cuda"}
    assert torch.allclose(ys[-1].cpu(), solution(torch.tensor(1.0, dtype=F64)), atol=1e-6)
