"""Gradient methods, odeint(gradient=...): checkpoint and reversible give the gradient of
the same discrete solve as backprop (float64, <= 1e-10 relative), pass gradcheck, count
every evaluation, and use the memory they promise; the adjoint flag is unchanged."""

import math
import weakref

import pytest
import torch

from odenet.solvers import GRADIENTS, RK_METHODS, TABLEAUS, SolveStats, odeint

from .problems import PROBLEMS

F64 = torch.float64
T = (0.0, 0.3, 0.7, 1.2)  # interior outputs: RK dense output, reversible steps cut to land
EXACT = 1e-10  # "to round-off", relative L2


class MLP(torch.nn.Module):
    """A small time-dependent MLP that counts its own calls (the external NFE oracle)."""

    def __init__(self, dim=3, hidden=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim + 1, generator=g, dtype=F64) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(dim, hidden, generator=g, dtype=F64) * 0.5)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        tt = t.expand(*y.shape[:-1], 1)
        return torch.tanh(torch.cat([y, tt], -1) @ self.w1.T) @ self.w2.T


def _y0(rows=2):
    g = torch.Generator().manual_seed(3)
    return torch.randn(rows, 3, generator=g, dtype=F64)


def _run(func, method, gradient, t=T, options=None, tol=1e-6, y0=None, stats=None):
    """Outputs and the flat gradient [y0, t, params] of a fixed random loss."""
    y0 = (_y0() if y0 is None else y0).clone().requires_grad_()
    t = torch.tensor(t, dtype=F64, requires_grad=True)
    func.zero_grad()
    ys = odeint(func, y0, t, method=method, rtol=tol, atol=tol, options=options,
                gradient=gradient, stats=stats)
    weights = torch.randn(ys.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    (ys * weights).sum().backward()
    grads = [y0.grad.flatten(), t.grad] + [p.grad.flatten() for p in func.parameters()]
    return ys.detach(), torch.cat(grads)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


ADAPTIVE_RK = [m for m in RK_METHODS if TABLEAUS[m].adaptive]
FIXED_RK = [m for m in RK_METHODS if not TABLEAUS[m].adaptive]
CHECKPOINT_CASES = (
    [(m, None, T) for m in ADAPTIVE_RK]
    + [(m, {"step_size": 0.1}, T) for m in FIXED_RK]
    + [("rk4", None, T),  # the grid is t itself
       ("dopri5", {"last_step": "overshoot"}, T),  # t[-1] from the dense output
       ("dopri5", {"controller": "PI"}, T),
       ("tsit5", None, (1.2, 0.5, 0.0))]  # backwards in time
)


@pytest.mark.parametrize("method,options,t", CHECKPOINT_CASES)
def test_checkpoint_is_the_gradient_of_the_same_discrete_solve(method, options, t):
    func = MLP()
    ref_stats, stats = SolveStats(), SolveStats()
    ys_ref, g_ref = _run(func, method, "backprop", t, options, stats=ref_stats)
    ys, g = _run(func, method, "checkpoint", t, options, stats=stats)
    assert stats.steps_accepted == ref_stats.steps_accepted  # the same steps
    # the outputs: the in-place solve and the one under autograd differ by round-off
    assert _rel(ys, ys_ref) <= 1e-12  # dopri8: large tableau coefficients
    assert _rel(g, g_ref) <= EXACT, _rel(g, g_ref)


REVERSIBLE_CASES = [
    ("reversible_heun", {"step_size": 0.05}, T),
    ("reversible_heun", None, T),  # the grid is t itself
    ("adaptive_reversible_heun", None, T),
    ("adaptive_reversible_heun", {"controller": "PI", "max_step": 0.2}, T),
    ("adaptive_reversible_heun", None, (1.2, 0.5, 0.0)),  # backwards in time
    ("adaptive_reversible_heun", {"norm": lambda y: y.abs().max()}, T),  # a user norm
]


@pytest.mark.parametrize("method,options,t", REVERSIBLE_CASES)
def test_reversible_is_the_gradient_of_the_same_discrete_solve(method, options, t):
    """The trajectory rebuilt backwards from the end state gives backprop's gradient
    through the reversible method itself."""
    func = MLP()
    ref_stats, stats = SolveStats(), SolveStats()
    ys_ref, g_ref = _run(func, method, "backprop", t, options, stats=ref_stats)
    ys, g = _run(func, method, "reversible", t, options, stats=stats)
    assert stats.steps_accepted == ref_stats.steps_accepted
    assert torch.equal(ys, ys_ref)  # the same out-of-place arithmetic, with or without grad
    assert _rel(g, g_ref) <= EXACT, _rel(g, g_ref)


def test_reversible_methods_also_take_the_adjoint():
    """The family's solve serves the adjoint's backward solve too (the continuous
    gradient, close to the discrete one at a tight tolerance)."""
    func = MLP()
    _, g_ref = _run(func, "adaptive_reversible_heun", "backprop", tol=1e-6)
    _, g = _run(func, "adaptive_reversible_heun", "adjoint", tol=1e-6)
    assert _rel(g, g_ref) < 1e-5  # measured 8e-7


@pytest.mark.parametrize("method,gradient", [("dopri5", "checkpoint"),
                                             ("adaptive_reversible_heun", "reversible")])
def test_tuple_state(method, gradient):
    func = MLP()

    def split(t, y):  # a tuple state (2x3, 2x1) through the same MLP on its first part
        return func(t, y[0]), -y[1] * y[0].sum(-1, keepdim=True)

    grads = {}
    for mode in ("backprop", gradient):
        y0 = (_y0().requires_grad_(), torch.ones(2, 1, dtype=F64, requires_grad=True))
        func.zero_grad()
        ya, yb = odeint(split, y0, torch.tensor(T, dtype=F64), method=method, rtol=1e-4,
                        atol=1e-4, gradient=mode,
                        adjoint_params=None if mode == "backprop" else tuple(func.parameters()))
        (ya.sin().sum() + yb.square().sum()).backward()
        grads[mode] = torch.cat([y0[0].grad.flatten(), y0[1].grad.flatten(),
                                 func.w1.grad.flatten(), func.w2.grad.flatten()])
    assert _rel(grads[gradient], grads["backprop"]) <= EXACT


def test_forward_outputs_do_not_depend_on_the_gradient_method():
    """checkpoint's forward is the adjoint's and the no-grad solve, bit for bit."""
    func = MLP()
    t = torch.tensor(T, dtype=F64)
    with torch.no_grad():
        plain = odeint(func, _y0(), t, rtol=1e-5, atol=1e-5)
        plain_rev = odeint(func, _y0(), t, method="adaptive_reversible_heun", rtol=1e-5, atol=1e-5)
    y0 = _y0().requires_grad_()
    assert torch.equal(odeint(func, y0, t, rtol=1e-5, atol=1e-5, gradient="checkpoint"), plain)
    assert torch.equal(odeint(func, y0, t, rtol=1e-5, atol=1e-5, gradient="adjoint"), plain)
    assert torch.equal(odeint(func, y0, t, method="adaptive_reversible_heun", rtol=1e-5,
                              atol=1e-5, gradient="reversible"), plain_rev)


@pytest.mark.parametrize("adjoint", [True, False])
def test_the_adjoint_flag_is_the_gradient_keyword(adjoint):
    """adjoint=True is gradient="adjoint", adjoint=False (and the default) "backprop": the
    same values, gradients and counts, bit for bit."""
    results = []
    for kw in ({"adjoint": adjoint}, {"gradient": "adjoint" if adjoint else "backprop"},
               {"adjoint": adjoint, "gradient": "adjoint" if adjoint else "backprop"}):
        func, stats = MLP(), SolveStats()
        y0 = _y0().requires_grad_()
        t = torch.tensor(T, dtype=F64, requires_grad=True)
        ys = odeint(func, y0, t, rtol=1e-5, atol=1e-5, stats=stats, **kw)
        ys.square().sum().backward()
        results.append((ys.detach(), y0.grad, t.grad, func.w1.grad, func.w2.grad,
                        stats.as_dict()))
    if not adjoint:
        func, y0 = MLP(), _y0().requires_grad_()
        results.append((odeint(func, y0, torch.tensor(T, dtype=F64), rtol=1e-5, atol=1e-5),))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("kwargs,message", [
    ({"adjoint": True, "gradient": "backprop"}, "adjoint=True contradicts gradient='backprop'"),
    ({"adjoint": False, "gradient": "adjoint"}, "adjoint=False contradicts gradient='adjoint'"),
    ({"adjoint": True, "gradient": "checkpoint"}, "adjoint=True contradicts gradient='checkpoint'"),
    ({"gradient": "aca"}, "unknown gradient 'aca'; valid: backprop, adjoint, checkpoint, "
                          "reversible"),
    ({"gradient": "checkpoint", "method": "explicit_adams", "options": {"step_size": 0.1}},
     "gradient='checkpoint' replays Runge-Kutta steps; method 'explicit_adams' is not one"),
    ({"gradient": "checkpoint", "method": "reversible_heun"},
     "method 'reversible_heun' is not one"),
    ({"gradient": "reversible"}, "gradient='reversible' needs a reversible method, got 'dopri5'"),
    ({"gradient": "checkpoint", "func": lambda t, y: -y},
     "gradient='checkpoint' needs func to be a torch.nn.Module"),
    ({"method": "adaptive_reversible_heun", "options": {"last_step": "overshoot"}},
     "options['last_step'] must be 'clamp' for 'adaptive_reversible_heun'"),
])
def test_bad_gradient_settings_raise_one_line(kwargs, message):
    func = kwargs.pop("func", MLP())
    with pytest.raises(ValueError) as info:
        odeint(func, _y0(), torch.tensor(T, dtype=F64), **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert set(GRADIENTS) == {"backprop", "adjoint", "checkpoint", "reversible"}


def _gradcheck(method, gradient, options=None, tol=1e-6, with_t=False, **check):
    func = MLP(hidden=4)
    params = tuple(func.parameters())

    def solve(y0, t, *ps):
        return odeint(func, y0, t, method=method, rtol=tol, atol=tol, options=options,
                      gradient=gradient, adjoint_params=ps)

    t = torch.tensor(T, dtype=F64, requires_grad=with_t)
    return torch.autograd.gradcheck(solve, (_y0(1).requires_grad_(), t, *params), **check)


@pytest.mark.parametrize("method,gradient", [("rk4", "checkpoint"),
                                             ("reversible_heun", "reversible")])
def test_gradcheck_fixed_grid(method, gradient):
    """On a fixed grid the discrete solve is smooth in y0 and the parameters: gradcheck's
    default (strict) tolerances."""
    assert _gradcheck(method, gradient, {"step_size": 0.1})


@pytest.mark.parametrize("method,gradient,tol", [("dopri5", "checkpoint", 1e-10),
                                                 ("adaptive_reversible_heun", "reversible", 1e-7)])
def test_gradcheck_adaptive(method, gradient, tol):
    """Adaptive: finite differences also move the step sizes (held fixed by the discrete
    gradient), an effect of the size of the tolerance; t gradients are the solution's
    exact derivatives, as backprop's and the adjoint's."""
    assert _gradcheck(method, gradient, tol=tol, with_t=True, eps=1e-5, atol=1e-5, rtol=1e-4,
                      fast_mode=True)


@pytest.mark.parametrize("method,options,gradient", [
    ("dopri5", None, "checkpoint"), ("bosh3", None, "checkpoint"),
    ("rk4", {"step_size": 0.1}, "checkpoint"),
    ("reversible_heun", {"step_size": 0.1}, "reversible"),
    ("adaptive_reversible_heun", None, "reversible")])
def test_stats_count_every_evaluation(method, options, gradient):
    """The MLP's own call count, forward and backward, equals the stats; the backward
    replays stages x steps (checkpoint; an FSAL tableau's last stage only in steps with a
    dense output) or steps + 1 (reversible), plus len(t) for t."""
    func, stats = MLP(), SolveStats()
    y0 = _y0().requires_grad_()
    t = torch.tensor(T, dtype=F64, requires_grad=True)
    ys = odeint(func, y0, t, method=method, rtol=1e-5, atol=1e-5, options=options,
                gradient=gradient, stats=stats)
    assert func.calls == stats.nfe_forward > 0
    func.calls = 0
    ys.sum().backward()
    assert func.calls == stats.nfe_backward
    per_step = TABLEAUS[method].stages if gradient == "checkpoint" else 1
    extra = 0 if gradient == "checkpoint" else 1
    steps = stats.steps_accepted
    if gradient == "checkpoint" and TABLEAUS[method].fsal:
        # a step whose outputs are all its end state skips the FSAL stage; at most
        # len(T) - 1 steps hold a dense output
        assert (per_step - 1) * steps + len(T) <= stats.nfe_backward \
            <= (per_step - 1) * steps + len(T) - 1 + len(T)
    else:
        assert stats.nfe_backward == per_step * steps + extra + len(T)
    assert stats.steps_accepted_backward == stats.steps_accepted


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
def test_checkpoint_replay_skips_the_fsal_stage_of_a_step_without_dense_output(method):
    """t = [0, 1]: every replayed step ends at a step end, so an FSAL pair's last stage
    (f at the end state, for the error estimate only) is not evaluated again; the
    gradient is still backprop's."""
    func, stats = MLP(), SolveStats()
    y0 = _y0().requires_grad_()
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys = odeint(func, y0, t, method=method, rtol=1e-6, atol=1e-6, gradient="checkpoint",
                stats=stats)
    func.calls = 0
    g = torch.autograd.grad(ys[-1].square().sum(), [y0, *func.parameters()])
    assert func.calls == stats.nfe_backward == (TABLEAUS[method].stages - 1) * \
        stats.steps_accepted
    ys = odeint(func, y0, t, method=method, rtol=1e-6, atol=1e-6, gradient="backprop")
    ref = torch.autograd.grad(ys[-1].square().sum(), [y0, *func.parameters()])
    for a, b in zip(g, ref):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


class SavedBytes:
    """Bytes autograd saves for backward (parameters skipped), in total and at the peak
    of what is alive, forward and backward, through saved_tensors_hooks."""

    def __init__(self, params=()):
        self.params = {p.data_ptr() for p in params}
        self.total = self.live = self.peak = 0

    def _pack(self, x):
        alias = x.detach()
        if x.data_ptr() in self.params:
            return alias
        n = x.untyped_storage().nbytes()
        self.total += n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(alias, self._free, n)
        return alias

    def _free(self, n):
        self.live -= n

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)


def _memory(method, gradient, step):
    """(bytes the graph holds after the forward, peak live bytes through forward and
    backward, NFE)."""
    func, stats = MLP(hidden=32), SolveStats()
    meter = SavedBytes(func.parameters())
    y0 = _y0(rows=64).requires_grad_()
    with meter.hooks():
        ys = odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), method=method,
                    options={"step_size": step}, gradient=gradient, stats=stats)
        saved = meter.live
        ys[-1].square().sum().backward()
    del ys
    return saved, meter.peak, stats.nfe_forward


def test_reversible_memory_does_not_grow_with_nfe():
    saved_few, peak_few, nfe_few = _memory("reversible_heun", "reversible", 0.1)
    saved_many, peak_many, nfe_many = _memory("reversible_heun", "reversible", 0.0125)
    assert nfe_many >= 7 * nfe_few
    assert saved_many == saved_few  # the outputs and the end state (y, yh)
    assert peak_many == peak_few  # plus one evaluation's activations in backward
    # backprop through the same method, for contrast: grows with NFE
    bp_few = _memory("reversible_heun", "backprop", 0.1)[0]
    bp_many = _memory("reversible_heun", "backprop", 0.0125)[0]
    assert bp_many > 6 * bp_few


def test_checkpoint_memory_is_steps_times_state():
    state = 64 * 3 * 8  # bytes of y (64 x 3 float64)
    results = {}
    for step in (0.1, 0.0125):
        saved, peak, _ = _memory("rk4", "checkpoint", step)
        steps = round(1.0 / step)
        assert saved == (steps + 2) * state  # each step's start state, and the 2 outputs
        results[step] = peak - saved  # backward's extra: one replayed step's graph
    assert results[0.1] == results[0.0125]
    bp = _memory("rk4", "backprop", 0.0125)[0]
    assert bp > 10 * _memory("rk4", "checkpoint", 0.0125)[0]


@pytest.mark.parametrize("method", ["reversible_heun", "adaptive_reversible_heun"])
def test_reversible_heun_converges_at_order_2_on_a_linear_system(method):
    """y' = A y (rotation and decay): error ~ h^2 on equal steps (adaptive: min_step =
    max_step = h, every step accepted)."""
    func, y0, solution = PROBLEMS["linear"]()
    t = torch.tensor([0.0, 1.5], dtype=F64)
    errs = []
    for h in (0.05, 0.025, 0.0125):
        options = ({"step_size": h} if method == "reversible_heun"
                   else {"min_step": h, "max_step": h})
        ys = odeint(func, y0, t, method=method, rtol=1e-3, atol=1e-3, options=options)
        errs.append(float((ys[-1] - solution(t[-1])).abs().max()))
    slopes = [math.log(e1 / e2, 2) for e1, e2 in zip(errs, errs[1:])]
    assert all(abs(s - 2) < 0.15 for s in slopes), (errs, slopes)


@pytest.mark.parametrize("method,gradient", [("dopri5", "checkpoint"),
                                             ("adaptive_reversible_heun", "reversible")])
def test_the_odenet_block_function(method, gradient):
    """The paper's conv ODE function (GroupNorm, ReLU, time-concatenated convs) in float64,
    at the recipe's tolerance: the parameter gradients equal backprop's."""
    from odenet.models.blocks import ODEFunc

    torch.manual_seed(0)
    func = ODEFunc(32).double()
    x = torch.randn(2, 32, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    grads = {}
    for mode in ("backprop", gradient):
        func.zero_grad()
        y = odeint(func, x, torch.tensor([0.0, 1.0], dtype=F64), method=method, rtol=1e-3,
                   atol=1e-3, gradient=mode)
        y[-1].square().mean().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in func.parameters()])
    assert _rel(grads[gradient], grads["backprop"]) <= EXACT
