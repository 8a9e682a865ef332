"""The seams: step-size controllers as objects, one method registry naming the family."""

import importlib

import pytest
import torch

from odenet.solvers import (
    ADAPTIVE_METHODS,
    DEFAULT_MAX_NUM_STEPS,
    FIXED_METHODS,
    METHODS,
    REGISTRY,
    BoundedController,
    IController,
    PIController,
    odeint,
)
from odenet.solvers.controllers import DFACTOR, IFACTOR, PI_ALPHA, PI_BETA, SAFETY
from odenet.solvers.registry import family_solve


def test_i_controller():
    c = IController(order=5)
    assert c.accepted(0.1, (SAFETY / 2) ** 5) == pytest.approx(0.2)  # factor 2
    assert c.accepted(0.1, 0.0) == pytest.approx(0.1 * IFACTOR)
    assert c.accepted(0.1, 1.0) == 0.1  # never shrinks after an accepted step
    assert c.rejected(0.1, 1e9) == pytest.approx(0.1 * DFACTOR)
    assert c.rejected(0.1, float("nan")) == pytest.approx(0.1 * DFACTOR)
    assert not c.must_accept(1e-30)


def test_pi_controller_uses_the_previous_ratio():
    c = PIController(order=4)
    h1 = c.accepted(0.1, 0.01)  # previous ratio 1: only the current term
    assert h1 == pytest.approx(0.1 * SAFETY * 0.01 ** (-PI_ALPHA / 4))
    h2 = c.accepted(0.1, 0.01)  # now the previous 0.01 enters with PI_BETA
    assert h2 == pytest.approx(0.1 * SAFETY * 0.01 ** (-PI_ALPHA / 4) * 0.01 ** (PI_BETA / 4))


def test_bounded_controller_clamps_and_accepts_at_the_floor():
    c = BoundedController(IController(order=5), min_step=0.01, max_step=0.05)
    assert c.first(1.0) == 0.05 and c.first(1e-6) == 0.01
    assert c.accepted(0.04, 0.0) == 0.05 and c.rejected(0.02, 1e9) == 0.01
    assert c.must_accept(0.01) and not c.must_accept(0.02)


def test_registry_names_every_method_and_its_family():
    assert set(METHODS) == set(REGISTRY) and len(METHODS) == len(REGISTRY)
    assert set(FIXED_METHODS) | set(ADAPTIVE_METHODS) == set(METHODS)
    for name, method in REGISTRY.items():
        assert callable(family_solve(method)), name
        assert (method.tableau is not None) == (method.family == "rk")
    assert REGISTRY["explicit_adams"].family == "adams"
    assert importlib.import_module("odenet.solvers.multistep").solve is family_solve(
        REGISTRY["explicit_adams"])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_solves_through_the_registry(method):
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    ys = odeint(lambda t, y: -y, y0, torch.tensor([0.0, 0.5], dtype=torch.float64),
                method=method, rtol=1e-6, atol=1e-6,
                options={"step_size": 0.05} if method in FIXED_METHODS else None)
    assert torch.allclose(ys[-1], y0 * torch.exp(torch.tensor(-0.5, dtype=torch.float64)),
                          rtol=2e-2)  # euler's error at this step


def test_default_max_num_steps_defined_once():
    """The adaptive default is the exported constant (fixed grids: no limit by default)."""
    from odenet.solvers.odeint import ADAPTIVE_OPTIONS, FIXED_OPTIONS

    assert ADAPTIVE_OPTIONS["max_num_steps"] == DEFAULT_MAX_NUM_STEPS == 10_000
    assert FIXED_OPTIONS["max_num_steps"] is None
