import math

import numpy as np
import pytest
import torch

from odenet.cnf import datasets


@pytest.mark.parametrize("name", datasets.DATASETS)
def test_samples_are_seeded_finite_and_in_range(name):
    a = datasets.sample(name, 2000, seed=3)
    b = datasets.sample(name, 2000, seed=3)
    c = datasets.sample(name, 2000, seed=4)
    assert a.shape == (2000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    assert a.abs().max() < 6.0  # the figures' grid covers [-4.5, 4.5]²; tails rarely leave it


def test_unknown_dataset_is_a_value_error():
    with pytest.raises(ValueError, match="unknown toy dataset"):
        datasets.sample("spiral_galaxy", 10, 0)
    with pytest.raises(ValueError, match="closed-form"):
        datasets.log_density("pinwheel", torch.zeros(1, 2))


@pytest.mark.parametrize("name", sorted(datasets.LOG_DENSITIES))
def test_closed_form_densities_integrate_to_one(name):
    edges = np.linspace(-6, 6, 121)  # spacing 0.1: midpoint rule exact to ~1e-30 for std 0.2
    mid = 0.5 * (edges[1:] + edges[:-1])
    xx, yy = np.meshgrid(mid, mid)
    grid = np.stack([xx.ravel(), yy.ravel()], 1)
    p = datasets.log_density(name, grid).exp().numpy()
    assert abs(p.sum() * (edges[1] - edges[0]) ** 2 - 1.0) < 2e-3


@pytest.mark.parametrize("name", sorted(datasets.LOG_DENSITIES))
def test_closed_form_density_matches_the_samples(name):
    # The histogram of 200k samples agrees with the density cell by cell (L1 distance
    # between the two distributions on a 0.25-wide grid; sampling noise alone is ~0.05).
    edges = np.linspace(-6, 6, 49)
    h = datasets.histogram_density(name, edges, n=200_000, seed=1)
    mid = 0.5 * (edges[1:] + edges[:-1])
    xx, yy = np.meshgrid(mid, mid)
    p = datasets.log_density(name, np.stack([xx.ravel(), yy.ravel()], 1)).exp().numpy()
    cell = (edges[1] - edges[0]) ** 2
    assert np.abs(h.ravel() - p).sum() * cell < 0.1


def test_moons_entropy_is_what_the_density_says():
    # The data's own NLL: a Monte Carlo estimate of its entropy, the floor for any model.
    x = datasets.sample("moons", 20_000, seed=0)
    nll = -datasets.log_density("moons", x).mean().item()
    assert 2.0 < nll < 2.6 and math.isfinite(nll)


def test_the_config_schema_lists_every_dataset():
    from odenet.config.schema import TOY_DATASETS

    assert set(TOY_DATASETS) == set(datasets.DATASETS)
