"""ODEs with closed-form solutions, shared by the solver tests."""

import math

import torch


def decay(dtype=torch.float64):
    """y' = -y, y(t) = y0 exp(-t), on a (2, 3) state."""
    y0 = torch.arange(1.0, 7.0, dtype=dtype).reshape(2, 3)
    return (lambda t, y: -y), y0, (lambda t: y0 * torch.exp(-t))


def linear(dtype=torch.float64):
    """y' = A y with a rotation-and-decay A: y(t) = expm(A t) y0."""
    A = torch.tensor([[-0.1, 2.0, 0.0], [-2.0, -0.1, 0.0], [0.0, 0.0, -0.5]], dtype=dtype)
    y0 = torch.tensor([1.0, 0.0, 2.0], dtype=dtype)
    return (lambda t, y: A @ y), y0, (lambda t: torch.linalg.matrix_exp(A * t) @ y0)


def time_dependent(dtype=torch.float64):
    """y' = -2 t y + cos(t) exp(-t^2): y(t) = (y0 + sin t) exp(-t^2)."""
    y0 = torch.tensor([0.5, -1.0], dtype=dtype)
    return (lambda t, y: -2 * t * y + torch.cos(t) * torch.exp(-t * t),
            y0, lambda t: (y0 + math.sin(t)) * math.exp(-t * t))


PROBLEMS = {"decay": decay, "linear": linear, "time_dependent": time_dependent}


class Field(torch.nn.Module):
    """A small time-dependent nonlinear field with parameters (float64), for gradient tests."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=torch.float64) / 2)

    def forward(self, t, y):
        return torch.tanh(y @ self.w) * torch.cos(t) - 0.1 * y
