import numpy as np
import torch

from odenet.cnf.planar import PlanarFlow


def _grid(lo=-16.0, hi=16.0, n=641):
    edges = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    mid = 0.5 * (edges[1:] + edges[:-1])
    xx, yy = torch.meshgrid(mid, mid, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), (edges[1] - edges[0]).item() ** 2


def _random_flow(seed, layers=8, init_std=1.5):
    torch.manual_seed(seed)
    flow = PlanarFlow(dim=2, layers=layers, init_std=init_std).double()
    with torch.no_grad():
        flow.b.normal_()
        # make some raw u anti-aligned with w: û must still keep the layer invertible
        flow.u[0] = -3.0 * flow.w[0]
    return flow


def test_invertibility_constraint_holds():
    flow = _random_flow(0)
    assert ((flow.u_hat() * flow.w).sum(1) >= -1 - 1e-12).all()


def test_log_det_matches_autograd_jacobian():
    flow = _random_flow(1, layers=4)
    x = torch.randn(6, 2, dtype=torch.float64)
    _, logdet = flow.to_base(x)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda v: flow.to_base(v)[0], x[i : i + 1])
        assert torch.allclose(logdet[i], jac[0, :, 0, :].det().abs().log(), atol=1e-10)


def test_density_integrates_to_one():
    flow = _random_flow(2)
    pts, cell = _grid()
    with torch.no_grad():
        mass = flow.log_prob(pts).exp().sum().item() * cell
    assert abs(mass - 1.0) < 1e-4


def test_transform_inverts_the_density_direction():
    flow = _random_flow(3)
    z0 = torch.randn(500, 2, dtype=torch.float64)
    path = flow.transform(z0)
    assert path.shape == (flow.n_layers + 1, 500, 2)
    back, _ = flow.to_base(path[-1])
    assert torch.allclose(back, z0, atol=1e-9)
    assert flow.transform(z0, steps=5).shape == (5, 500, 2)


def test_samples_follow_the_density():
    # sample means/covariances from transform() agree with moments of exp(log_prob) on a grid
    flow = _random_flow(4, layers=4)
    torch.manual_seed(0)
    x = flow.transform(torch.randn(20_000, 2, dtype=torch.float64))[-1]
    pts, cell = _grid(-12.0, 12.0, 241)
    with torch.no_grad():
        w = flow.log_prob(pts).exp() * cell
    mean_grid = (w[:, None] * pts).sum(0)
    assert np.allclose(x.mean(0).numpy(), mean_grid.numpy(), atol=0.06)  # ~4 standard errors of a 20k-sample mean
