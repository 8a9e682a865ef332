"""torchdiffeq's documented behaviour, as a drop-in must have it: the same call
gives the same result (within the tolerance) and the same gradients as torchdiffeq."""

import math

import pytest
import torch

from odenet.solvers import SolverError, SolveStats, odeint, odeint_adjoint

torchdiffeq = pytest.importorskip("torchdiffeq")
F64 = torch.float64


class Flow(torch.nn.Module):
    """A tuple state (z, log p) as flows write it: dz = tanh(z W), dlogp = -trace-ish."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(2, 2, generator=g, dtype=F64) * 0.5)

    def forward(self, t, state):
        z, logp = state
        dz = torch.tanh(z @ self.w)
        return dz, -(dz * z).sum(-1, keepdim=True)


def _flow_state():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(5, 2, generator=g, dtype=F64), torch.zeros(5, 1, dtype=F64))


T3 = torch.tensor([0.0, 0.5, 1.0], dtype=F64)


# --- tuple y0 ------------------------------------------------------------------------------
@pytest.mark.parametrize("adjoint", [False, True])
def test_tuple_state_matches_torchdiffeq(adjoint):
    func = Flow()
    grads = {}
    for lib in ("odenet", "torchdiffeq"):
        func.zero_grad()
        z0, l0 = (x.clone().requires_grad_() for x in _flow_state())
        if lib == "odenet":
            zs, ls = odeint(func, (z0, l0), T3, rtol=1e-9, atol=1e-9, adjoint=adjoint)
        elif adjoint:
            zs, ls = torchdiffeq.odeint_adjoint(func, (z0, l0), T3, rtol=1e-9, atol=1e-9)
        else:
            zs, ls = torchdiffeq.odeint(func, (z0, l0), T3, rtol=1e-9, atol=1e-9)
        assert zs.shape == (3, 5, 2) and ls.shape == (3, 5, 1)
        (zs.square().sum() + ls.sum()).backward()
        grads[lib] = (zs.detach(), ls.detach(), z0.grad, l0.grad, func.w.grad.clone())
    for ours, ref in zip(grads["odenet"], grads["torchdiffeq"]):
        assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_tuple_state_seminorm_and_adjoint_params():
    func = Flow()
    z0, l0 = (x.requires_grad_() for x in _flow_state())
    zs, ls = odeint(func, (z0, l0), T3, rtol=1e-8, atol=1e-8, adjoint=True,
                    adjoint_params=(func.w,), adjoint_options={"norm": "seminorm"})
    (zs.square().sum() + ls.sum()).backward()
    ref = torch.autograd.grad(sum(x.square().sum() if i == 0 else x.sum() for i, x in enumerate(
        torchdiffeq.odeint(func, _flow_state(), T3, rtol=1e-8, atol=1e-8))), func.w)[0]
    assert torch.allclose(func.w.grad, ref, rtol=1e-5, atol=1e-7)


def test_tuple_per_tensor_tolerances():
    """rtol/atol as one number per tensor of the tuple, as torchdiffeq."""
    func = Flow()
    state = _flow_state()
    ours = odeint(func, state, T3, rtol=[1e-6, 1e-3], atol=[1e-8, 1e-3])
    ref = torchdiffeq.odeint(func, state, T3, rtol=[1e-6, 1e-3], atol=[1e-8, 1e-3])
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5)
    # a 0-d tensor is one number for the whole tuple
    same = odeint(func, state, T3, rtol=torch.tensor(1e-6, dtype=F64), atol=1e-8)
    assert torch.equal(same[0], odeint(func, state, T3, rtol=1e-6, atol=1e-8)[0])


# --- fixed grids ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["euler", "midpoint", "heun3"])
def test_fixed_grid_without_step_size_steps_on_t(method):
    """No step_size: one step per interval of t, torchdiffeq's exact arithmetic."""
    t = torch.tensor([0.0, 0.1, 0.3, 0.35, 1.0], dtype=F64)
    y0 = torch.tensor([1.0, -0.5], dtype=F64)

    def func(t, y):
        return torch.sin(t) - y * y

    stats = SolveStats()
    ours = odeint(func, y0, t, method=method, stats=stats)
    ref = torchdiffeq.odeint(func, y0, t, method=method)
    assert torch.allclose(ours, ref, rtol=1e-13, atol=1e-14)
    assert stats.steps_accepted == len(t) - 1


def test_fixed_grid_has_no_step_limit_by_default():
    """max_num_steps bounds adaptive solves; a 20,000-step fixed grid runs."""
    stats = SolveStats()
    ys = odeint(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0]),
                method="euler", options={"step_size": 5e-5}, stats=stats)
    assert stats.steps_accepted == 20_000
    assert abs(ys[-1].item() - math.exp(-1)) < 1e-4


# --- t ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("adjoint", [False, True])
def test_single_time_returns_y0(adjoint):
    y0 = torch.tensor([1.0, 2.0], requires_grad=True)
    ys = odeint(lambda t, y: -y, y0, torch.tensor([0.3]), adjoint=adjoint, adjoint_params=())
    assert torch.equal(ys, y0[None].detach()) and ys.shape == (1, 2)
    ys.sum().backward()
    assert torch.equal(y0.grad, torch.ones(2))
    state = _flow_state()
    zs, ls = odeint(Flow(), state, torch.tensor([0.0]))
    assert torch.equal(zs[0], state[0]) and torch.equal(ls[0], state[1])


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.01})])
def test_time_gradients_without_adjoint(method, options):
    """y' = -y: y(t_i) = y0 exp(-(t_i - t0)). L = sum_i w_i y(t_i): dL/dt_i = -w_i y(t_i)
    (i > 0), dL/dt0 = sum_{i>0} w_i y(t_i); as torchdiffeq's backprop through dopri5.
    (torchdiffeq's fixed grids interpolate interior outputs from a grid built from t[0] and
    t[-1] only: their interior t-gradients are 0; odenet's are the exact ones.)"""
    y0 = torch.tensor([1.5], dtype=F64)
    w = torch.tensor([0.5, 2.0, -1.0], dtype=F64)
    grads = []
    for lib in ("odenet", "torchdiffeq"):
        t = torch.tensor([0.2, 0.7, 1.5], dtype=F64, requires_grad=True)
        solve = odeint if lib == "odenet" else torchdiffeq.odeint
        ys = solve(lambda t, y: -y, y0, t, method=method, rtol=1e-10, atol=1e-10,
                   options=options)
        (ys[:, 0] * w).sum().backward()
        grads.append(t.grad)
    yt = 1.5 * torch.exp(-(torch.tensor([0.2, 0.7, 1.5], dtype=F64) - 0.2))
    exact = -w * yt
    exact[0] = (w[1:] * yt[1:]).sum()
    assert torch.allclose(grads[0], exact, atol=1e-7)
    if method == "dopri5":
        assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_time_gradients_without_adjoint_gradcheck():
    """A nonlinear, time-dependent func: t-gradients of the direct path against finite
    differences of the solve (tight tolerance: the solve is then smooth in t)."""
    def func(t, y):
        return torch.sin(t * y) - 0.3 * y

    y0 = torch.tensor([0.4, -0.8], dtype=F64)

    def solve(t):
        return odeint(func, y0, t, rtol=1e-12, atol=1e-12)

    t = torch.tensor([0.1, 0.9, 1.4], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (t,), eps=1e-6, atol=1e-6, rtol=1e-4)


# --- tolerances and norms ------------------------------------------------------------------
def test_per_element_tolerances_match_torchdiffeq():
    """rtol/atol tensors broadcast against y0; tightening one element's atol sharpens it."""
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)
    y0 = torch.tensor([[1.0, 0.0], [1e-3, 2e-3]], dtype=F64)

    def func(t, y):
        return y @ A.T

    t = torch.tensor([0.0, 3.0], dtype=F64)
    exact = y0 @ torch.linalg.matrix_exp(A * 3).T
    atol = torch.tensor([[1e-4], [1e-10]], dtype=F64)  # per row, broadcast over columns
    ours = odeint(func, y0, t, rtol=1e-4, atol=atol)
    ref = torchdiffeq.odeint(func, y0, t, rtol=1e-4, atol=atol)
    assert torch.allclose(ours, ref, rtol=1e-3, atol=1e-8)
    loose = odeint(func, y0, t, rtol=1e-4, atol=1e-4)
    err_row1 = (ours[-1, 1] - exact[1]).abs().max()
    assert err_row1 < 0.5 * (loose[-1, 1] - exact[1]).abs().max()


def test_callable_norm_matches_torchdiffeq():
    """options["norm"]: torchdiffeq's max norm, same steps and result."""
    def linf(x):
        return x.abs().max()

    func = Flow()
    z0 = _flow_state()[0]
    counts = {}
    for lib in ("odenet", "torchdiffeq"):
        calls = [0]

        def f(t, z, calls=calls):
            calls[0] += 1
            return func(t, (z, z[:, :1]))[0]

        solve = odeint if lib == "odenet" else torchdiffeq.odeint
        with torch.no_grad():
            ys = solve(f, z0, T3, rtol=1e-6, atol=1e-6, options={"norm": linf})
        counts[lib] = (calls[0], ys)
    (n_ours, ours), (n_ref, ref) = counts["odenet"], counts["torchdiffeq"]
    assert torch.allclose(ours, ref, atol=1e-5)
    assert abs(n_ours - n_ref) <= 0.15 * n_ref, (n_ours, n_ref)
    # and it is the norm used: the max norm is stricter than RMS, so more steps
    rms = SolveStats()
    odeint(lambda t, z: func(t, (z, z[:, :1]))[0], z0, T3, rtol=1e-6, atol=1e-6, stats=rms)
    assert n_ours >= rms.nfe_forward


def test_callable_adjoint_norm():
    """A callable adjoint norm gets torchdiffeq's tuple (t, y, adj_y, *adj_params); the
    gradient is the default norm's within the tolerance."""
    func = Flow()
    seen = []

    def norm(parts):
        seen.append(len(parts))
        return max(p.abs().max() for p in parts)

    grads = []
    for adjoint_norm in ("default", norm):
        func.zero_grad()
        z0 = _flow_state()[0].requires_grad_()
        ys = odeint_adjoint(lambda t, z: func(t, (z, z[:, :1]))[0], z0, T3, rtol=1e-8,
                            atol=1e-8, adjoint_params=(func.w,),
                            adjoint_options={"norm": adjoint_norm})
        ys.square().sum().backward()
        grads.append(torch.cat([z0.grad.flatten(), func.w.grad.flatten()]))
    assert set(seen) == {4}  # t, y, adj_y, w
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


# --- step bounds ---------------------------------------------------------------------------
def test_max_step_bounds_every_step():
    stats = SolveStats()
    ys = odeint(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0]),
                rtol=1e-3, atol=1e-3, options={"max_step": 0.01}, stats=stats)
    assert stats.steps_accepted >= 100
    ref = torchdiffeq.odeint(lambda t, y: -y, torch.ones(1, dtype=F64), torch.tensor([0.0, 1.0]),
                             rtol=1e-3, atol=1e-3, options={"max_step": 0.01})
    assert torch.allclose(ys, ref, atol=1e-9)


def test_min_step_accepts_steps_at_the_bound():
    """A step of min_step is accepted whatever its error: few steps, never rejected."""
    stats = SolveStats()
    odeint(lambda t, y: torch.cos(20 * t) * y, torch.ones(1, dtype=F64),
           torch.tensor([0.0, 1.0]), rtol=1e-12, atol=1e-12, options={"min_step": 0.1},
           stats=stats)
    assert stats.steps_rejected == 0 and stats.steps_accepted <= 10


def test_fail_below_step_is_odenet_underflow_guard():
    with pytest.raises(SolverError, match="step size underflow"):
        odeint(lambda t, y: torch.cos(50 * t) * y, torch.ones(1, dtype=F64),
               torch.tensor([0.0, 1.0]), rtol=1e-10, atol=1e-10,
               options={"fail_below_step": 1e-2})


# --- odeint_adjoint with torchdiffeq's keywords ------------------------------------------
def test_odeint_adjoint_line_for_line():
    func = Flow()
    kwargs = dict(rtol=1e-8, atol=1e-8, method="dopri5", adjoint_rtol=1e-9, adjoint_atol=1e-9,
                  adjoint_method="bosh3", adjoint_options={"norm": "seminorm"},
                  adjoint_params=(func.w,))
    grads = []
    for fn in (odeint_adjoint, torchdiffeq.odeint_adjoint):
        func.zero_grad()
        z0 = _flow_state()[0].requires_grad_()
        ys = fn(lambda t, z: func(t, (z, z[:, :1]))[0], z0, T3, **kwargs)
        ys.square().sum().backward()
        grads.append(torch.cat([z0.grad.flatten(), func.w.grad.flatten()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_odeint_adjoint_needs_module_or_params():
    y0 = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="needs func to be a torch.nn.Module"):
        odeint_adjoint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]))
    odeint_adjoint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), adjoint_params=()).sum().backward()
    assert torch.allclose(y0.grad, torch.full((2,), math.exp(-1.0) + 1.0), atol=1e-6)


def test_odeint_adjoint_other_method_needs_its_options():
    with pytest.raises(ValueError, match="pass adjoint_options too"):
        odeint_adjoint(Flow(), _flow_state(), T3, options={"max_num_steps": 100},
                       adjoint_method="bosh3")


# --- the new methods against torchdiffeq --------------------------------------------------
@pytest.mark.parametrize("method, options", [
    ("dopri8", None), ("adaptive_heun", None), ("fehlberg2", None),
    ("heun3", {"step_size": 0.05}), ("explicit_adams", {"step_size": 0.05}),
])
def test_new_methods_match_torchdiffeq(method, options):
    """Same call, same result. Fixed grids: to round-off (explicit_adams on a uniform
    grid, max_order 12 as torchdiffeq's). Adaptive: at least as accurate as torchdiffeq
    against a tight reference (fehlberg2's estimate lets its error run ~1000x the
    tolerance in both; torchdiffeq's dopri8 reads outputs off a 4th-order fit, odenet
    off the method's own continuous extension)."""
    func, y0 = Flow(), _flow_state()[0]

    def f(t, z):
        return func(t, (z, z[:, :1]))[0]

    t = torch.linspace(0.0, 1.0, 11, dtype=F64)
    with torch.no_grad():
        ours = odeint(f, y0, t, method=method, rtol=1e-5, atol=1e-5, options=options)
        ref = torchdiffeq.odeint(f, y0, t, method=method, rtol=1e-5, atol=1e-5, options=options)
        exact = odeint(f, y0, t, rtol=1e-12, atol=1e-12)
    if options is not None:
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12), (ours - ref).abs().max()
    else:
        err, err_ref = (ours - exact).abs().max(), (ref - exact).abs().max()
        assert err <= 2 * max(err_ref, 1e-5), (err, err_ref)


def test_per_element_tolerances_with_the_adjoint():
    """Per-element tolerances reach the backward solve (z and a per element, the parameter
    gradients at the tightest): gradients as direct backprop's."""
    func = Flow()
    atol = torch.tensor([[1e-9, 1e-7]], dtype=F64)
    grads = []
    for adjoint in (True, False):
        func.zero_grad()
        z0 = _flow_state()[0].requires_grad_()
        ys = odeint(lambda t, z: func(t, (z, z[:, :1]))[0], z0, T3, rtol=1e-8, atol=atol,
                    adjoint=adjoint, adjoint_params=(func.w,))
        ys.square().sum().backward()
        grads.append(torch.cat([z0.grad.flatten(), func.w.grad.flatten()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)
