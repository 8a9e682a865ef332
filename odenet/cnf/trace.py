"""The trace of ∂f/∂z, which the instantaneous change of variables integrates.

``d log p(z(t)) / dt = -tr(∂f/∂z)``. Two ways to get it from autograd, both differentiable
(``create_graph=True``) so that training can backpropagate through them:

- ``exact``: D vector-Jacobian products, one per coordinate (fine for D = 2).
- ``hutchinson``: ``tr(A) = E[εᵀ A ε]`` for noise with E[ε εᵀ] = I, one vector-Jacobian
  product (Hutchinson 1989; the estimator FFJORD uses). Rademacher noise has the smaller
  variance, Σ_{i<j} (A_ij + A_ji)², against 2‖(A + Aᵀ)/2‖²_F for Gaussian noise.
"""

from __future__ import annotations

import torch

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


def trace_exact(dz: torch.Tensor, z: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """tr(∂dz/∂z) per sample, from D autograd calls. ``dz``, ``z``: (B, D); returns (B,)."""
    if dz.shape != z.shape or dz.dim() != 2:
        raise ValueError(f"expected dz and z of the same shape (B, D), got {dz.shape}, {z.shape}")
    total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z.shape[1]):
        # rows are independent samples, so d(sum_b dz[b, i])/dz[b, :] is row b's Jacobian row i
        (row,) = torch.autograd.grad(
            dz[:, i].sum(), z, create_graph=create_graph, retain_graph=True
        )
        total = total + row[:, i]
    return total


def trace_hutchinson(
    dz: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, create_graph: bool = True
) -> torch.Tensor:
    """Unbiased estimate εᵀ (∂dz/∂z) ε per sample, from one vector-Jacobian product."""
    if eps.shape != z.shape:
        raise ValueError(f"noise shape {tuple(eps.shape)} != state shape {tuple(z.shape)}")
    (eps_j,) = torch.autograd.grad(dz, z, eps, create_graph=create_graph, retain_graph=True)
    return (eps_j * eps).sum(1)


def sample_noise(
    like: torch.Tensor, kind: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Noise with E[ε εᵀ] = I, shaped like ``like``: ``rademacher`` (±1) or ``gaussian``."""
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return (bits * 2 - 1).to(like.dtype)
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    raise ValueError(f"unknown noise {kind!r}; choose one of {', '.join(NOISES)}")
