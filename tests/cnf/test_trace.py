import pytest
import torch

from odenet.cnf.trace import sample_noise, trace_exact, trace_hutchinson


def _field(z):
    # a nonlinear field with an asymmetric Jacobian that depends on z
    a = torch.tensor([[0.3, -1.2, 0.5], [2.0, -0.7, 0.1], [0.4, 0.9, 1.1]], dtype=z.dtype)
    return torch.tanh(z @ a.T) + z.pow(3) * torch.tensor([0.1, -0.2, 0.3], dtype=z.dtype)


def _jacobian_trace(z):
    return torch.stack(
        [torch.autograd.functional.jacobian(_field, zi[None])[0, :, 0, :].trace() for zi in z]
    )


def test_exact_trace_matches_the_full_jacobian():
    torch.manual_seed(0)
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    tr = trace_exact(_field(z), z)
    assert torch.allclose(tr, _jacobian_trace(z.detach()), atol=1e-12)


def test_exact_trace_is_differentiable():
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    tr = trace_exact(_field(z), z, create_graph=True)
    (g,) = torch.autograd.grad(tr.sum(), z)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_in_expectation(kind):
    # E[εᵀJε] = tr J. Mean of N draws per point is within 5 standard errors of the exact
    # trace (a false alarm has probability < 1e-6 per point), and the spread matches
    # the estimator's known variance to within 15%.
    torch.manual_seed(1)
    n = 20_000
    z0 = torch.randn(3, 3, dtype=torch.float64)
    z = z0.repeat_interleave(n, 0).requires_grad_(True)
    dz = _field(z)
    est = trace_hutchinson(dz, z, sample_noise(z, kind), create_graph=False).reshape(3, n)
    exact = _jacobian_trace(z0)
    se = est.std(1) / n**0.5
    assert ((est.mean(1) - exact).abs() < 5 * se).all()
    for i in range(3):
        jac = torch.autograd.functional.jacobian(_field, z0[i : i + 1])[0, :, 0, :]
        sym = 0.5 * (jac + jac.T)
        if kind == "gaussian":
            var = 2 * sym.pow(2).sum()
        else:
            var = 2 * (sym.pow(2).sum() - sym.diagonal().pow(2).sum())
        assert abs(est[i].var() / var - 1) < 0.15


def test_noise_has_identity_covariance():
    torch.manual_seed(2)
    like = torch.zeros(200_000, 2)
    r = sample_noise(like, "rademacher")
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    for e in (r, sample_noise(like, "gaussian")):
        cov = e.T @ e / len(e)
        assert torch.allclose(cov, torch.eye(2), atol=0.02)
    with pytest.raises(ValueError):
        sample_noise(like, "uniform")
