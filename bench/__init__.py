"""Benchmarks: odenet vs torchdiffeq side by side in one process (not tests)."""

from odenet.openmp import set_wait_policy

WAIT_POLICY = set_wait_policy()  # as `odenet train` does, before torch loads
