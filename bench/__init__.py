"""Benchmarks: odenet vs torchdiffeq side by side in one process (not tests)."""
