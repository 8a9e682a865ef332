"""Benchmarks: odenet vs torchdiffeq side by side in one process (not tests)."""

from odenet.training.openmp import set_wait_policy

set_wait_policy()  # as `odenet train` does, before torch loads (recorded by common.machine)
