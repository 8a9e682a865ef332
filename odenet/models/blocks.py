"""The building blocks shared by all four MNIST models (the authors' odenet_mnist.py).

GN = GroupNorm(min(32, C), C). Convolutions inside residual blocks have no bias; the
ODE function's ConcatConv2d has one (as in the recipe, which fixes the parameter counts).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from odenet.config import SolverConfig
from odenet.solvers import FIXED_METHODS, SolveStats, odeint


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(gn(conv(relu(gn(x))))))."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), conv3x3(cin, cout, stride)
        self.norm2, self.conv2 = norm(cout), conv3x3(cout, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(self.relu(self.norm2(self.conv1(out))))
        return out + skip


class ConcatConv2d(nn.Module):
    """A 3x3 convolution that sees t as one more, constant input channel.

    Under autocast (``precision=bf16``, the fast path) the t channel is folded: conv([t, x])
    = conv(x; the 64 x-weights) + t * conv(ones; the t-weights), the second a fixed map per
    shape (zero padding included), plus the bias. Exact algebra, without the concatenation,
    and the convolution keeps 64 input channels, which the bf16 kernels block well. In fp32
    the concatenation stays, so fp32 results are today's bit for bit.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin + 1, cout, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            return self.folded(t, x)
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], 1))

    def folded(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """conv([t, x]) without the concatenation (the same value, other rounding)."""
        w, pad = self.conv.weight, self.conv.padding
        t_map = F.conv2d(x.new_ones(1, 1, *x.shape[2:]), w[:, :1], padding=pad)
        return F.conv2d(x, w[:, 1:], self.conv.bias, padding=pad) + t * t_map


class ODEFunc(nn.Module):
    """f(t, h) = GN(ConcatConv(t, ReLU(GN(ConcatConv(t, ReLU(GN(h)))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = norm(channels), ConcatConv2d(channels, channels)
        self.norm2, self.conv2 = norm(channels), ConcatConv2d(channels, channels)
        self.norm3 = norm(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, self.relu(self.norm1(x)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.norm3(out)


class ODEBlock(nn.Module):
    """h(t1) = ODESolve(func, h(0), 0, t1) with odenet.solvers.

    ``stats`` (a SolveStats) accumulates the evaluations and steps of every solve until
    ``stats.reset()``; ``configure(rtol=..., atol=..., method=...)`` changes the solver
    settings at any time, e.g. to evaluate a trained model at other tolerances.
    """

    SETTINGS = ("method", "rtol", "atol", "gradient", "adjoint_norm", "step_size",
                "max_num_steps", "last_step")

    def __init__(self, func: nn.Module, t1: float = 1.0, **solver: Any):
        """``solver``: any of SETTINGS (or ``adjoint``: true = gradient adjoint, false =
        backprop); the rest are SolverConfig's defaults, with the adjoint as gradient
        (``from_config`` builds a block from a validated SolverConfig)."""
        super().__init__()
        self.func = func
        self.register_buffer("times", torch.tensor([0.0, float(t1)]), persistent=False)
        self.stats = SolveStats()
        for k in self.SETTINGS:
            setattr(self, k, getattr(SolverConfig, k))
        self.atol, self.gradient = self.rtol, "adjoint"
        self.configure(**solver)

    @classmethod
    def from_config(cls, func: nn.Module, t1: float, solver: Any) -> ODEBlock:
        """A block with the settings of ``solver`` (a validated SolverConfig: atol and
        gradient resolved)."""
        return cls(func, t1, **{k: solver[k] for k in cls.SETTINGS})

    @property
    def adjoint(self) -> bool:
        return self.gradient == "adjoint"

    def configure(self, **settings: Any) -> ODEBlock:
        """Set solver settings (None leaves one unchanged; atol=None with rtol follows it)."""
        unknown = set(settings) - {*self.SETTINGS, "adjoint"}
        if unknown:
            raise ValueError(f"unknown solver setting(s) {sorted(unknown)}; valid: {self.SETTINGS}")
        adjoint = settings.pop("adjoint", None)
        if adjoint is not None:  # the older spelling of gradient
            settings.setdefault("gradient", "adjoint" if adjoint else "backprop")
        if settings.get("rtol") is not None and settings.get("atol") is None:
            settings["atol"] = settings["rtol"]  # as in SolverConfig: atol follows rtol
        for k, v in settings.items():
            if v is not None:
                setattr(self, k, v)
        return self

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.SETTINGS}

    def solver_options(self) -> dict[str, Any]:
        """The `options` of odeint for the current settings."""
        if self.method in FIXED_METHODS:
            return {"max_num_steps": int(self.max_num_steps), "step_size": self.step_size}
        return {"max_num_steps": int(self.max_num_steps), "last_step": self.last_step}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return self._solve(self.func, x)
        # mixed precision: the state, the solver's stages, error control, dense output and
        # the adjoint's state stay in the block's dtype; only f runs under autocast
        func = autocast_func(self.func, device, torch.get_autocast_dtype(device))
        with torch.autocast(device, enabled=False):
            return self._solve(func, x.to(self.times.dtype))

    def _solve(self, func: Any, x: torch.Tensor) -> torch.Tensor:
        g = self.gradient
        ys = odeint(func, x, self.times.to(x.dtype), method=self.method,
                    rtol=self.rtol, atol=self.atol, options=self.solver_options(),
                    gradient=g,
                    adjoint_params=tuple(self.func.parameters()) if g != "backprop" else None,
                    adjoint_options={"norm": self.adjoint_norm} if g == "adjoint" else None,
                    stats=self.stats)
        return ys[-1]

    def extra_repr(self) -> str:
        s = (f"method={self.method}, rtol={self.rtol:g}, atol={self.atol:g}, "
             f"gradient={self.gradient}")
        return s + (f", step_size={self.step_size:g}" if self.method in FIXED_METHODS else "")


def autocast_func(func: nn.Module, device: str, dtype: torch.dtype):
    """f under autocast, its output in the state's dtype (the solver checks it). Every
    call enters autocast itself, so the adjoint's and checkpoint's re-evaluations in
    backward, which run outside the caller's autocast region, compute in bf16 too."""
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device, dtype=dtype):
            out = func(t, y)
        return out.to(y.dtype)
    return f


def downsampling(kind: str, cin: int, width: int) -> nn.Sequential:
    """28x28 -> 6x6 feature maps of ``width`` channels."""
    if kind == "conv":
        return nn.Sequential(
            nn.Conv2d(cin, width, 3, 1), norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 4, 2, 1), norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 4, 2, 1))
    if kind == "res":
        def shortcut() -> nn.Module:
            return nn.Conv2d(width, width, 1, stride=2, bias=False)
        return nn.Sequential(
            nn.Conv2d(cin, width, 3, 1),
            ResBlock(width, width, stride=2, shortcut=shortcut()),
            ResBlock(width, width, stride=2, shortcut=shortcut()))
    raise ValueError(f"unknown downsampling {kind!r} (conv | res)")


def head(width: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(norm(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))
