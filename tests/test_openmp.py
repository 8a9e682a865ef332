"""The OpenMP wait policy odenet picks before torch loads (odenet/training/openmp.py)."""

import os

import pytest

from odenet.training import openmp


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    return monkeypatch


def test_idle_machine_spins_briefly(clean_env):
    clean_env.setattr(openmp, "other_runnable_tasks", lambda: 0)
    assert "nothing else running" in openmp.set_wait_policy()
    assert os.environ["GOMP_SPINCOUNT"] == "10000" and "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.parametrize("others", [1, None])
def test_busy_or_unknown_machine_sleeps(clean_env, others):
    clean_env.setattr(openmp, "other_runnable_tasks", lambda: others)
    openmp.set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ


def test_user_setting_wins(clean_env):
    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    clean_env.setattr(openmp, "other_runnable_tasks", lambda: 0)
    openmp.set_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ


def test_a_busy_process_is_counted():
    """A process spinning on a core is runnable in every sample (Linux only)."""
    import subprocess
    import sys
    import time

    if openmp.other_runnable_tasks() is None:
        pytest.skip("no /proc/loadavg here")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert openmp.other_runnable_tasks() >= 1
    finally:
        hog.kill()
        hog.wait()


def test_more_threads_than_usable_cores_are_named(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)
    assert openmp.usable_cores() == 3
    assert openmp.threads_warning(3) is None and openmp.threads_warning(None) is None
    assert openmp.threads_warning(16) == (
        "threads=16 but this process may use 3 core(s): the threads take turns on them, "
        "which slows every step; threads=3 or fewer runs faster")
