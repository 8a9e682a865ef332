"""The OpenMP wait policy odenet picks before torch loads (odenet/openmp.py)."""

import os

import pytest

from odenet import openmp


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    return monkeypatch


def test_idle_machine_spins_briefly(clean_env):
    clean_env.setattr(os, "getloadavg", lambda: (0.1, 0.5, 0.5))
    assert "idle" in openmp.set_wait_policy()
    assert os.environ["GOMP_SPINCOUNT"] == "10000" and "OMP_WAIT_POLICY" not in os.environ


def test_busy_machine_sleeps(clean_env):
    clean_env.setattr(os, "getloadavg", lambda: (1.0, 0.2, 0.2))
    assert "busy" in openmp.set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ


def test_user_setting_wins(clean_env):
    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    clean_env.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    openmp.set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ
