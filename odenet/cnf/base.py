"""What the density models share: the base density N(0, std² I) and their interface.

A density model (``CNF``, ``PlanarFlow``) has
- ``log_prob(x)``: (B, D) → (B,) log-density in nats, differentiable for training;
- ``transform(z0, steps)``: base samples → data, returning the path (steps, B, D), for the
  noise→data figures; the last entry is a sample of the model;
- ``base_std`` and ``dim``.
"""

from __future__ import annotations

import math

import torch


def normal_log_prob(z: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """log N(z; 0, std² I) summed over the last dimension."""
    d = z.shape[-1]
    return -0.5 * (z / std).pow(2).sum(-1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))
