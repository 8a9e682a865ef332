"""The learning-rate schedules (odenet/config/schedules.py): each one's numbers, and the trait
resume reads (fitted to optim.epochs or not)."""

from __future__ import annotations

import pytest

from odenet.cli.app import compose
from odenet.config.schedules import SCHEDULES
from odenet.config.schema import ConfigError
from odenet.training.optim import FITTED_TO_LENGTH, lr_factor

# The factor at steps 0, 3, 5, 10, 24, 25, 39 of 4 epochs x 10 iterations, milestones at
# epochs 1 and 2.5, a warm-up of half an epoch from 0.1, a floor of 0.05: exact values
# (they are the schedules' numbers before the registry, to the last bit). A new schedule
# adds its line here.
STEPS = (0, 3, 5, 10, 24, 25, 39)
EXPECTED = {
    "multistep": [0.1, 0.64, 1.0, 0.1, 0.1, 0.010000000000000002, 0.010000000000000002],
    "cosine": [0.1, 0.64, 1.0, 0.952960212253649, 0.4612391987366138, 0.41930255637075065,
               0.05191221035226144],
    "onecycle": [0.1, 0.37, 0.55, 1.0, 0.5746510200521355, 0.525, 0.05260209970007019],
    "constant": [0.1, 0.64, 1.0, 1.0, 1.0, 1.0, 1.0],
}


def _optim(schedule: str, *overrides: str):
    return compose([f"optim.schedule={schedule}", "optim.epochs=4", "optim.milestones=[1,2.5]",
                    "optim.warmup_epochs=0.5", "optim.final_lr_fraction=0.05",
                    *overrides]).optim


def test_every_schedule_of_the_registry_has_its_numbers_here():
    assert set(EXPECTED) == set(SCHEDULES)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_schedule_gives_its_numbers(name):
    assert [lr_factor(s, 10, _optim(name)) for s in STEPS] == EXPECTED[name]


def test_an_unknown_schedule_is_one_line_naming_the_registered_ones():
    with pytest.raises(ConfigError, match="optim.schedule='nope' is not one of: "
                       + ", ".join(SCHEDULES)) as info:
        compose(["optim.schedule=nope"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_the_schedules_fitted_to_the_epochs_are_those_whose_lr_depends_on_them(schedule):
    three, four = (compose([f"optim.schedule={schedule}", f"optim.epochs={n}",
                            "optim.milestones=[1,2]", "optim.warmup_epochs=1"]).optim
                   for n in (3, 4))
    same = all(lr_factor(s, 10, three) == lr_factor(s, 10, four) for s in range(30))
    assert same == (schedule not in FITTED_TO_LENGTH)


def test_lr_schedules():
    o = compose(["optim.epochs=10", "optim.milestones=[4,8]"]).optim
    assert [lr_factor(s, 10, o) for s in (0, 39, 40, 79, 80, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    c = compose(["optim.epochs=4", "optim.schedule=onecycle", "optim.pct_start=0.25"]).optim
    f = [lr_factor(s, 100, c) for s in range(400)]
    assert f[0] == pytest.approx(c.warmup_start) and max(f) == pytest.approx(1.0)
    assert f.index(max(f)) == 100 and f[-1] < 1e-3
    assert all(a <= b for a, b in zip(f[:100], f[1:101]))  # rises, then falls
    assert all(a >= b for a, b in zip(f[100:], f[101:]))
    k = compose(["optim.epochs=4", "optim.schedule=cosine", "optim.warmup_epochs=1"]).optim
    g = [lr_factor(s, 100, k) for s in range(400)]
    assert g[0] == pytest.approx(0.1) and g[100] == pytest.approx(1.0) and g[-1] < 1e-3
    assert lr_factor(7, 10, compose(["optim.schedule=constant"]).optim) == 1.0
