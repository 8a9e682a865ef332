import math

import pytest
import torch

from odenet.cnf import datasets
from odenet.cnf.cnf import CNF
from odenet.cnf.fields import ConcatField, HyperField, LinearField

A = torch.tensor([[-0.3, 0.8], [-0.5, 0.4]], dtype=torch.float64)


def _linear_cnf(**kw):
    kw = {"t1": 1.5, "base_std": 0.7, "rtol": 1e-9, "atol": 1e-9, "max_num_steps": 10_000, **kw}
    return CNF(LinearField(2, A), **kw).double().eval()


def _gaussian(t, std=0.7):
    # dz/dt = A z maps N(0, s² I) at t = 0 to N(0, s² M Mᵀ) with M = exp(A t)
    m = torch.linalg.matrix_exp(A * t)
    return torch.distributions.MultivariateNormal(torch.zeros(2, dtype=A.dtype), std**2 * m @ m.T)


def test_linear_field_gives_the_analytic_gaussian_log_density():
    model = _linear_cnf()
    x = torch.randn(50, 2, dtype=torch.float64) * 2
    with torch.no_grad():
        lp = model.log_prob(x)
    assert torch.allclose(lp, _gaussian(1.5).log_prob(x), atol=1e-6)
    # d log p / dt = -tr A along the flow: the log-density change is -tr(A) * t exactly
    assert model.stats.nfe_forward > 0


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_linear_field_intermediate_times_and_transform(trace):
    # with a linear field Hutchinson is exact in expectation *and* in mean over the batch
    # only; test the deterministic parts: the path and the exact-trace densities at t
    model = _linear_cnf(trace=trace, eval_trace="exact")
    x = torch.randn(20, 2, dtype=torch.float64)
    for t in (0.0, 0.5, 1.5):
        assert torch.allclose(model.log_prob_at(x, t), _gaussian(t).log_prob(x), atol=1e-6)
    z0 = torch.randn(30, 2, dtype=torch.float64)
    path, logp = model.transform_with_log_prob(z0, steps=4)
    for k, t in enumerate(torch.linspace(0, 1.5, 4, dtype=torch.float64)):
        assert torch.allclose(path[k], z0 @ torch.linalg.matrix_exp(A * t).T, atol=1e-7)
        assert torch.allclose(logp[k], _gaussian(t.item()).log_prob(path[k]), atol=1e-6)


def test_hutchinson_log_density_is_unbiased():
    # The same two points, each copied n times: every copy gets its own noise for the
    # whole solve. The mean Hutchinson log-density is within 5 standard errors of the
    # exact one (a false alarm has probability < 1e-6 per point).
    torch.manual_seed(0)
    field = HyperField(2, width=16, hidden=16).double()
    for p in field.parameters():
        p.data.mul_(3.0)  # a field with a clearly non-zero, z-dependent Jacobian
    exact = CNF(field, trace="exact", rtol=1e-7, atol=1e-7).double().train()
    x = torch.tensor([[0.5, -1.0], [1.5, 0.3]], dtype=torch.float64)
    with torch.no_grad():
        ref = exact.log_prob(x)
    n = 2000
    for noise in ("rademacher", "gaussian"):
        hutch = CNF(field, trace="hutchinson", noise=noise, rtol=1e-7, atol=1e-7)
        hutch = hutch.double().train()
        with torch.no_grad():
            est = hutch.log_prob(x.repeat_interleave(n, 0)).reshape(2, n)
        se = est.std(1) / math.sqrt(n)
        assert (se > 1e-4).all()  # the estimator really is stochastic here
        assert ((est.mean(1) - ref).abs() < 5 * se).all(), (noise, est.mean(1), ref, se)
    # in eval mode the model reports the exact trace, whatever it trains with
    with torch.no_grad():
        assert torch.allclose(hutch.eval().log_prob(x), ref, atol=1e-5)


@pytest.mark.parametrize("field", ["hyper", "concat"])
def test_adjoint_gradients_match_backprop_through_the_solver(field):
    torch.manual_seed(1)
    f = HyperField(2, 8, 8) if field == "hyper" else ConcatField(2, (16, 16))
    f = f.double()
    x = datasets.sample("moons", 64, 0).double()
    grads = []
    for adjoint in (True, False):
        gradient = "adjoint" if adjoint else "backprop"
        model = CNF(f, gradient=gradient, rtol=1e-8, atol=1e-8).double().train()
        f.zero_grad()
        (-model.log_prob(x).mean()).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in f.parameters()]))
        assert (model.stats.nfe_backward > 0) == adjoint
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("field", ["hyper", "concat"])
def test_density_integrates_to_one_on_a_grid(field):
    torch.manual_seed(2)
    f = HyperField(2, 16, 16) if field == "hyper" else ConcatField(2, (32, 32))
    for p in f.parameters():
        p.data.mul_(2.0)
    model = CNF(f, t1=1.0, rtol=1e-5, atol=1e-5).eval()
    edges = torch.linspace(-7, 7, 101)
    mid = 0.5 * (edges[1:] + edges[:-1])
    xx, yy = torch.meshgrid(mid, mid, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        p = model.log_prob(pts).exp()
    mass = p.sum().item() * (edges[1] - edges[0]).item() ** 2
    assert abs(mass - 1.0) < 0.01
    # and the flow did move the density away from the base N(0, I)
    base = torch.exp(-0.5 * pts.pow(2).sum(1)) / (2 * math.pi)
    assert (p - base).abs().max() > 0.005


def test_a_short_run_lowers_the_nll():
    torch.manual_seed(3)
    train = datasets.sample("moons", 2048, 0)
    test = datasets.sample("moons", 1000, 1)
    # fixed-grid RK4 (16 evaluations a solve) keeps this fast; the adjoint trains it
    model = CNF(HyperField(2, 32, 16), method="rk4", step_size=0.25, trace="hutchinson")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def test_nll():
        model.eval()
        with torch.no_grad():
            return -model.log_prob(test).mean().item()

    before = test_nll()
    for _ in range(25):
        model.train()
        loss = -model.log_prob(train[torch.randint(0, 2048, (128,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = test_nll()
    assert after < before - 0.1, (before, after)


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="t1 > t0"):
        CNF(LinearField(2), t0=1.0, t1=1.0)
    with pytest.raises(ValueError, match="unknown trace"):
        CNF(LinearField(2), trace="approx")
    with pytest.raises(ValueError, match="unknown noise"):
        CNF(LinearField(2), trace="hutchinson", noise="uniform")
    with pytest.raises(ValueError, match="outside"):
        CNF(LinearField(2)).log_prob_at(torch.zeros(1, 2), 2.0)
