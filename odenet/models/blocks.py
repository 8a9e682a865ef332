"""The building blocks shared by all four MNIST models (the authors' odenet_mnist.py).

GN = GroupNorm(min(32, C), C). Convolutions inside residual blocks have no bias; the
ODE function's ConcatConv2d has one (as in the recipe, which fixes the parameter counts).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from odenet.config.schema import SolverConfig
from odenet.models.dynamics import TrainingField, rademacher
from odenet.solvers import (
    FIXED_METHODS,
    REGISTRY,
    PreparedSolve,
    SolveSpec,
    SolveStats,
    StepCarry,
    prepare,
)


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
    and the convolution keeps 64 input channels (measured faster in bf16, forward and
    vector-Jacobian product, than the 65-channel one). In fp32 the concatenation stays, so
    fp32 results are those of earlier code bit for bit.
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


class CarriedStep(StepCarry):
    """The step one direction of a block's solves carries (solver.carry_step), kept in the
    block's ``carried_steps`` buffer (NaN: none yet), so that checkpoints hold it and a
    resumed run continues bit for bit. Solves in eval mode neither read nor write it: a
    test-time solve depends on the weights and the solver's settings alone, starts from
    the first-step estimate and so keeps its tolerance (a carried step that the error
    estimate accepts can be far less accurate than the tolerance asks), and evaluation
    never steers training. ``block.eval_from_carried_step = True`` makes eval-mode solves
    read it (still never write it): `odenet evaluate` shows what it does to the error."""

    def __init__(self, block: nn.Module, index: int):
        self.block, self.index = block, index

    @property
    def h(self) -> float | None:
        if not (self.block.training or self.block.eval_from_carried_step):
            return None
        h = float(self.block.carried_steps[self.index])
        return None if math.isnan(h) else h

    @h.setter
    def h(self, value: float) -> None:
        if self.block.training:
            self.block.carried_steps[self.index] = value


class ODEBlock(nn.Module):
    """h(t1) = ODESolve(func, h(0), 0, t1) with odenet.solvers.

    ``stats`` (a SolveStats) accumulates the evaluations and steps of every solve until
    ``stats.reset()``; ``configure(rtol=..., atol=..., method=...)`` changes the solver
    settings at any time, e.g. to evaluate a trained model at other tolerances.
    """

    SETTINGS = tuple(f.name for f in dataclasses.fields(SolveSpec) if f.name != "options")
    PREPARED_KEPT = 8  # prepared solves kept (batch shapes x dtypes x devices x precisions)

    def __init__(self, func: nn.Module, t1: float = 1.0, **solver: Any):
        """``solver``: any of SETTINGS; the rest are SolverConfig's defaults, with the
        adjoint as gradient (``from_config`` builds a block from a validated SolverConfig)."""
        super().__init__()
        self.func = func
        self.register_buffer("times", torch.tensor([0.0, float(t1)]), persistent=False)
        self.stats = SolveStats()
        self.eval_from_carried_step = False  # see CarriedStep
        self._settings = {k: getattr(SolverConfig, k) for k in self.SETTINGS}
        self._settings.update(atol=self._settings["rtol"], gradient="adjoint")
        self.configure(**solver)
        self.regularize()

    @classmethod
    def from_config(cls, func: nn.Module, t1: float, solver: Any) -> ODEBlock:
        """A block with the settings of ``solver`` (a validated SolverConfig: atol and
        gradient resolved)."""
        return cls(func, t1, **{k: solver[k] for k in cls.SETTINGS})

    def __getattr__(self, name: str) -> Any:
        if name in ODEBlock.SETTINGS:  # block.rtol etc.: the current settings
            return self.__dict__["_settings"][name]
        return super().__getattr__(name)

    @property
    def adjoint(self) -> bool:
        return self.gradient == "adjoint"

    def configure(self, **settings: Any) -> ODEBlock:
        """Set solver settings (None leaves one unchanged; atol=None with rtol follows it).
        Bad values raise the solver's one-line ValueError here, not at the next solve."""
        unknown = set(settings) - set(self.SETTINGS)
        if unknown:
            raise ValueError(f"unknown solver setting(s) {sorted(unknown)}; valid: {self.SETTINGS}")
        if settings.get("rtol") is not None and settings.get("atol") is None:
            settings["atol"] = settings["rtol"]  # as in SolverConfig: atol follows rtol
        new = {**self._settings, **{k: v for k, v in settings.items() if v is not None}}
        fixed = new["method"] in FIXED_METHODS  # a kept step_size applies to fixed grids only
        # a carried step applies to adaptive Runge-Kutta methods only (e.g. a run trained
        # with one, re-solved with rk4 or lsoda by odenet evaluate)
        method = REGISTRY[new["method"]] if new["method"] in REGISTRY else None
        carry = bool(new["carry_step"] and method is not None and method.adaptive
                     and method.family != "odepack")
        self.spec = SolveSpec(**{**new, "step_size": new["step_size"] if fixed else None,
                                 "max_num_steps": int(new["max_num_steps"]),
                                 "carry_step": carry})
        self._settings, self._prepared = new, {}
        if new["carry_step"] and "carried_steps" not in self._buffers:
            self.register_buffer("carried_steps", torch.full((2,), math.nan, dtype=torch.float64))
            self._carry = (CarriedStep(self, 0), CarriedStep(self, 1))
        return self

    def regularize(self, kinetic: float = 0.0, jacobian: float = 0.0,
                   t1_jitter: float = 0.0) -> ODEBlock:
        """What training solves add (odenet/models/dynamics.py): the weights of the kinetic
        energy and Jacobian penalties (``penalty`` after each training forward), and
        STEER's end-time jitter b (T ~ U(t1 - b, t1 + b)). Evaluation solves use none."""
        if not 0 <= t1_jitter < float(self.times[-1]):
            raise ValueError(f"t1_jitter must be in [0, t1), got {t1_jitter}")
        self.kinetic, self.jacobian, self.t1_jitter = kinetic, jacobian, t1_jitter
        self.penalty: torch.Tensor | None = None  # the weighted penalties of the last solve
        self.penalties: dict[str, torch.Tensor | None] = {}  # their integrals, batch means
        return self

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles prepare afresh: a prepared solve holds this block's func
        return {**self.__dict__, "_prepared": {}}

    def solver_options(self) -> dict[str, Any]:
        """The `options` of odeint for the current settings."""
        return self.spec.odeint_options()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        # mixed precision: the state, the solver's stages, error control, dense output and
        # the adjoint's state stay in the block's dtype; only f runs under autocast
        cast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if cast is None:
            return self._solve(x, None)
        with torch.autocast(device, enabled=False):
            return self._solve(x.to(self.times.dtype), cast)

    def _solve(self, x: torch.Tensor, cast: torch.dtype | None) -> torch.Tensor:
        penalties = bool(self.kinetic or self.jacobian)
        if not (self.training and torch.is_grad_enabled() and (penalties or self.t1_jitter)):
            return self._prepare(x, cast)(x, self.stats)[-1]
        solve = self._prepare(x, cast, penalties)
        field = solve.field
        field.scale = 1.0  # T / t1, with T ~ U(t1 - b, t1 + b)
        if self.t1_jitter:
            field.scale += self.t1_jitter / float(self.times[-1]) * (2 * float(torch.rand(())) - 1)
        if not penalties:
            return solve(x, self.stats)[-1]
        field.shape, field.noise = tuple(x.shape), rademacher(x) if self.jacobian else None
        z1 = solve(torch.cat([x.flatten(1), x.new_zeros(len(x), 2)], 1), self.stats)[-1]
        kinetic, frobenius = z1[:, -2].mean(), z1[:, -1].mean()
        self.penalty = self.kinetic * kinetic + self.jacobian * frobenius
        self.penalties = {"kinetic_energy": kinetic.detach(),
                          "jacobian_frobenius": frobenius.detach() if self.jacobian else None}
        return z1[:, :-2].reshape(x.shape)

    def _prepare(self, x: torch.Tensor, cast: torch.dtype | None,
                 training: bool | None = None) -> PreparedSolve:
        """The solve validated once per state shape, dtype, device, precision, set of
        trainable parameters and kind (odenet.solvers.prepare), not on every forward.
        ``training``: a training solve's TrainingField (``solve.field``), with (True) or
        without (False) the penalties' channels; None: f itself."""
        params = tuple(self.func.parameters())
        key = (tuple(x.shape), x.dtype, x.device, cast,
               tuple((id(p), p.requires_grad) for p in params), training)
        solve = self._prepared.get(key)
        if solve is None:
            func = self.func if cast is None else autocast_func(self.func, x.device.type, cast)
            field = None if training is None else TrainingField(func, training,
                                                                 bool(self.jacobian))
            like = x.new_zeros(len(x), x[0].numel() + 2) if training else x
            carry = self._carry if self.spec.carry_step else None
            solve = prepare(self.spec, field or func, like=like, t=self.times.to(x.dtype),
                            params=params, carry=carry)
            solve.field = field
            if len(self._prepared) >= self.PREPARED_KEPT:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[key] = solve
        return solve

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
