"""The paper's baseline: a planar normalizing flow (Rezende & Mohamed 2015) with K layers.

Each layer is g(x) = x + û tanh(wᵀx + b), with log|det ∂g/∂x| = log|1 + ûᵀ w tanh'(wᵀx + b)|
and û = u + (m(wᵀu) − wᵀu) w / ‖w‖², m(a) = −1 + softplus(a), which keeps wᵀû ≥ −1 so
every layer is invertible (Rezende & Mohamed, appendix A.1).

Direction: for maximum likelihood the layers run data → noise, z = g_K ∘ … ∘ g_1(x), so
log p(x) = log N(z) + Σ_k log|det ∂g_k| is exact and cheap. (The paper notes that a planar
flow's inverse has no closed form, which is why it trained planar flows by density
matching instead.) Sampling runs the inverse: each layer's inverse is a monotone scalar
equation in α = wᵀx, solved by bisection to float precision.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from odenet.cnf.base import normal_log_prob


class PlanarFlow(nn.Module):
    def __init__(self, dim: int = 2, layers: int = 32, base_std: float = 1.0,
                 init_std: float = 0.5):
        super().__init__()
        if dim < 1 or layers < 1:
            raise ValueError("dim and layers must be >= 1")
        if base_std <= 0:
            raise ValueError(f"base_std must be > 0, got {base_std}")
        self.dim, self.n_layers, self.base_std = dim, layers, float(base_std)
        self.u = nn.Parameter(init_std * torch.randn(layers, dim))
        self.w = nn.Parameter(init_std * torch.randn(layers, dim))
        self.b = nn.Parameter(torch.zeros(layers))

    def size_label(self) -> str:
        """Its size in a figure's title: K layers."""
        return f"K={self.n_layers}"

    def u_hat(self) -> torch.Tensor:
        """û for all layers, (K, D): u corrected so that wᵀû ≥ −1 (invertibility)."""
        wu = (self.w * self.u).sum(1, keepdim=True)
        m = -1.0 + F.softplus(wu)
        return self.u + (m - wu) * self.w / self.w.pow(2).sum(1, keepdim=True).clamp_min(1e-12)

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data → noise: (z, Σ_k log|det ∂g_k/∂x|)."""
        u = self.u_hat()
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for k in range(self.n_layers):
            a = x @ self.w[k] + self.b[k]
            h = torch.tanh(a)
            det = 1.0 + (1.0 - h.pow(2)) * (u[k] @ self.w[k])
            logdet = logdet + det.abs().clamp_min(1e-12).log()
            x = x + h[:, None] * u[k]
        return x, logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.to_base(x)
        return normal_log_prob(z, self.base_std) + logdet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    @torch.no_grad()
    def _invert_layer(self, y: torch.Tensor, k: int, u: torch.Tensor, iters: int = 60):
        """x with x + u_k tanh(w_kᵀx + b_k) = y. g(α) = α + (w·u) tanh(α + b) is monotone in
        α = wᵀx and |g(α) − α| ≤ |w·u|, so α lies within |w·u| of wᵀy: bisect there."""
        w, b = self.w[k], self.b[k]
        wu = float(u[k] @ w)
        target = y @ w
        lo, hi = target - abs(wu) - 1e-6, target + abs(wu) + 1e-6
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = mid + wu * torch.tanh(mid + b) > target
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        alpha = 0.5 * (lo + hi)
        return y - torch.tanh(alpha + b)[:, None] * u[k]

    @torch.no_grad()
    def transform(self, z0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Noise → data through the inverse layers; returns the K+1 intermediate points
        (K+1, B, D), or ``steps`` of them evenly spaced over the layers."""
        u = self.u_hat()
        path = [z0]
        x = z0
        for k in reversed(range(self.n_layers)):
            x = self._invert_layer(x, k, u)
            path.append(x)
        out = torch.stack(path)
        if steps is not None:
            idx = torch.linspace(0, self.n_layers, steps).round().long()
            out = out[idx]
        return out
