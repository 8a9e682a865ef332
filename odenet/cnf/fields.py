"""Vector fields f(t, z) for continuous normalizing flows. Each maps (scalar t, (B, D) z)
to (B, D) dz/dt.

- ``HyperField``: the paper's CNF. A small hypernetwork turns t into the parameters of a
  width-M layer, f(z, t) = (1/M) Σ_m σ(g_m(t)) u_m(t) tanh(w_m(t)ᵀ z + b_m(t)) — the
  "planar flow made continuous" of section 4, as in the authors' torchdiffeq
  examples/cnf.py (which averages over the M units and gates u with σ(g)).
- ``ConcatField``: a plain MLP with t appended to the input of every layer (FFJORD's
  "concat" layers).
- ``LinearField``: f(z) = A z, no t. The flow has a closed form (a Gaussian stays Gaussian),
  which the tests use to check the log-density against the analytic answer.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def _as_column(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(1, 1).expand(like.shape[0], 1)


class HyperField(nn.Module):
    """The paper's hypernetwork CNF: t → (W, B, U, G) of a width-``width`` layer."""

    def __init__(self, dim: int = 2, width: int = 64, hidden: int = 32):
        super().__init__()
        if dim < 1 or width < 1 or hidden < 1:
            raise ValueError("dim, width and hidden must be >= 1")
        self.dim, self.width, self.hidden = dim, width, hidden
        self.blocksize = width * dim
        self.net = nn.Sequential(
            nn.Linear(1, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 3 * self.blocksize + width),
        )

    def layer(self, t: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """W (M, D), b (M,), U (M, D) at time t, U already gated by σ(G)."""
        weight = self.net[0].weight
        p = self.net(torch.as_tensor(t).to(weight).reshape(1, 1)).reshape(-1)
        m, d, bs = self.width, self.dim, self.blocksize
        w = p[:bs].reshape(m, d)
        u = p[bs : 2 * bs].reshape(m, d)
        g = p[2 * bs : 3 * bs].reshape(m, d)
        b = p[3 * bs :]
        return w, b, u * torch.sigmoid(g)

    def size_label(self) -> str:
        return f"M={self.width}"

    def forward(self, t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
        # (1/M) Σ_m u_m tanh(w_mᵀz + b_m) for every row of z, as two matrix products
        # (the reference's batched (M, B, 1) products compute the same, several times slower)
        w, b, u = self.layer(t)
        return torch.tanh(z @ w.T + b) @ u / self.width


class ConcatLinear(nn.Module):
    """Linear layer whose input is [x, t]."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in + 1, d_out)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x, _as_column(t, x)], 1))


class ConcatField(nn.Module):
    """MLP f(z, t) with t concatenated to the input of every layer."""

    def __init__(self, dim: int = 2, hidden: tuple[int, ...] = (64, 64, 64), activation="tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; one of {', '.join(ACTIVATIONS)}")
        sizes = [dim, *hidden, dim]
        self.hidden = tuple(hidden)
        self.layers = nn.ModuleList(ConcatLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]()

    def size_label(self) -> str:
        return f"{len(self.hidden)}x{self.hidden[0]}" if self.hidden else "linear"

    def forward(self, t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class LinearField(nn.Module):
    """f(z) = A z with a learnable (D, D) matrix A (identity-scaled at init)."""

    def __init__(self, dim: int = 2, matrix: torch.Tensor | None = None):
        super().__init__()
        a = torch.zeros(dim, dim) if matrix is None else torch.as_tensor(matrix).clone()
        if a.shape != (dim, dim):
            raise ValueError(f"matrix must be ({dim}, {dim}), got {tuple(a.shape)}")
        self.matrix = nn.Parameter(a)

    def forward(self, t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
        return z @ self.matrix.T
