"""Continuous normalizing flow: the ODE state is [z, log p] (the paper's section 4).

dz/dt = f(z, t) and d log p(z(t))/dt = −tr(∂f/∂z) (instantaneous change of variables).
The model maps base noise z(t0) ~ N(0, σ² I) to data z(t1). To score data x, integrate the
state [x, 0] from t1 back to t0; with ℓ the second component,

    log p(x) = log N(z(t0)) − ℓ(t0),  ℓ(t0) = ∫_{t0}^{t1} tr(∂f/∂z) dt.

Training backpropagates through the solve with the adjoint (Contract 1 of DEVELOPERS.md:
``odeint(..., adjoint=True, adjoint_params=...)``, here through ``ODEBlock``); the trace
is computed with ``create_graph`` so that the adjoint's vector-Jacobian products reach
through it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from odenet.cnf.base import normal_log_prob
from odenet.cnf.trace import NOISES, TRACES, sample_noise, trace_exact, trace_hutchinson
from odenet.models.blocks import ODEBlock
from odenet.solvers import SolveStats, odeint


class CNFDynamics(nn.Module):
    """The augmented field (t, [z, ℓ]) ↦ [f(z, t), −tr(∂f/∂z)] on a (B, D+1) state."""

    def __init__(self, field: nn.Module, dim: int, trace: str = "exact", noise: str = "rademacher"):
        super().__init__()
        if trace not in TRACES:
            raise ValueError(f"unknown trace {trace!r}; choose one of {', '.join(TRACES)}")
        if noise not in NOISES:
            raise ValueError(f"unknown noise {noise!r}; choose one of {', '.join(NOISES)}")
        self.field, self.dim, self.trace, self.noise = field, dim, trace, noise
        self.eps: torch.Tensor | None = None  # Hutchinson noise, fixed for one whole solve

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # A graph through the trace is needed only when the caller differentiates this call
        # (direct backprop, or the adjoint's backward solve); forward solves under no_grad.
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not y.requires_grad:
                y = y.detach().requires_grad_(True)
            z = y[:, : self.dim]
            dz = self.field(t, z)
            if self.trace == "exact":
                tr = trace_exact(dz, z, create_graph=keep_graph)
            else:
                if self.eps is None or self.eps.shape != z.shape:
                    raise RuntimeError("Hutchinson trace: call resample_noise(z) before the solve")
                tr = trace_hutchinson(dz, z, self.eps, create_graph=keep_graph)
        out = torch.cat([dz, -tr[:, None]], 1)
        return out if keep_graph else out.detach()

    def resample_noise(self, like: torch.Tensor) -> None:
        self.eps = sample_noise(like, self.noise) if self.trace == "hutchinson" else None


class _Backward(nn.Module):
    """The dynamics run from t1 back to t0 as a forward solve over s = t1 − t ∈ [0, t1 − t0]."""

    def __init__(self, dynamics: CNFDynamics, t1: float):
        super().__init__()
        self.dynamics, self.t1 = dynamics, float(t1)

    def forward(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.dynamics(self.t1 - s, y)


class CNF(nn.Module):
    """Density model p(x) of a CNF with base N(0, base_std² I) at t0 and data at t1.

    ``trace`` is the estimator used while training (``exact`` or ``hutchinson`` with
    ``noise``); in eval mode the model uses ``eval_trace`` (default ``exact``: the reported
    NLL is then the model's NLL up to solver tolerance, not a stochastic estimate).

    The density direction (data → noise) is an ``ODEBlock`` (odenet.models) over the
    augmented state, so the trainer reads its NFE from ``stats``, ``configure(rtol=...)``
    changes its tolerances and the activation meter measures it like the ODE-Net's block.
    ``solver`` keywords: method, rtol, atol, adjoint, adjoint_norm, step_size, max_num_steps,
    last_step.
    """

    def __init__(
        self,
        field: nn.Module,
        dim: int = 2,
        t0: float = 0.0,
        t1: float = 1.0,
        base_std: float = 1.0,
        trace: str = "exact",
        noise: str = "rademacher",
        eval_trace: str = "exact",
        **solver: Any,
    ):
        super().__init__()
        if not t1 > t0:
            raise ValueError(f"need t1 > t0, got t0={t0}, t1={t1}")
        if base_std <= 0:
            raise ValueError(f"base_std must be > 0, got {base_std}")
        if eval_trace not in TRACES:
            raise ValueError(f"unknown eval_trace {eval_trace!r}; one of {', '.join(TRACES)}")
        self.dim, self.t0, self.t1, self.base_std = dim, float(t0), float(t1), float(base_std)
        self.train_trace, self.eval_trace = trace, eval_trace
        solver = {"rtol": 1e-5, "atol": 1e-5, **solver}
        self.block = ODEBlock(_Backward(CNFDynamics(field, dim, trace, noise), t1), t1 - t0,
                              **solver)

    @property
    def dynamics(self) -> CNFDynamics:
        return self.block.func.dynamics

    @property
    def field(self) -> nn.Module:
        return self.dynamics.field

    def size_label(self) -> str:
        """Its size in a figure's title, e.g. M=64 (the hypernetwork's width)."""
        return self.field.size_label()

    @property
    def stats(self) -> SolveStats:
        """NFE forward/backward and steps of the density solves, until ``stats.reset()``."""
        return self.block.stats

    def configure(self, **settings: Any) -> CNF:
        self.block.configure(**settings)
        return self

    def _prepare(self, z: torch.Tensor) -> None:
        self.dynamics.trace = self.train_trace if self.training else self.eval_trace
        self.dynamics.resample_noise(z)

    # the network around its ODE block, as odenet.models.Classifier's (evaluate, gradients)
    @property
    def ode_block(self) -> ODEBlock:
        return self.block

    def ode_input(self, x: torch.Tensor) -> torch.Tensor:
        """The block's initial state [x, 0] for data x (and the trace's noise, if any)."""
        self._prepare(x)
        return torch.cat([x, torch.zeros_like(x[:, :1])], 1)

    def ode_output(self, y0: torch.Tensor) -> torch.Tensor:
        """log p(x) from the block's output [z(t0), ℓ(t0)]."""
        return normal_log_prob(y0[:, : self.dim], self.base_std) - y0[:, self.dim]

    def ode_refusal(self) -> str | None:
        """Why its ODE block cannot be re-solved against a reference (None: it can)."""
        if self.eval_trace == "hutchinson":
            return ("model.eval_trace=hutchinson draws a new trace estimate for every "
                    "solve, so no reference solve can judge one; only eval_trace=exact "
                    "can be re-solved")
        return None

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, (B, D) → (B,): solve [x, 0] from t1 back to t0."""
        return self.ode_output(self.block(self.ode_input(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def transform(self, z0: torch.Tensor, steps: int = 2) -> torch.Tensor:
        """Noise → data: z(t) at ``steps`` evenly spaced times from t0 to t1, (steps, B, D)."""
        return self.transform_with_log_prob(z0, steps)[0]

    def transform_with_log_prob(
        self, z0: torch.Tensor, steps: int = 2
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z(t) and log p_t(z(t)) along the flow from t0 to t1: ((steps, B, D), (steps, B)).

        A solve without gradients and outside ``stats`` (for figures and sampling).
        """
        y0 = torch.cat([z0, torch.zeros_like(z0[:, :1])], 1)
        ys = self._solve_plain(y0, torch.linspace(self.t0, self.t1, steps, dtype=z0.dtype))
        logp = normal_log_prob(z0, self.base_std)[None] + ys[..., self.dim]
        return ys[..., : self.dim], logp

    def log_prob_at(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """log p_t(x): the density of z(t) at x, for t in [t0, t1] (no gradients, no stats)."""
        if not self.t0 <= t <= self.t1:
            raise ValueError(f"t={t} is outside [{self.t0}, {self.t1}]")
        if t == self.t0:
            return normal_log_prob(x, self.base_std)
        y = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
        y0 = self._solve_plain(y, torch.tensor([t, self.t0], dtype=x.dtype))[-1]
        return normal_log_prob(y0[:, : self.dim], self.base_std) - y0[:, self.dim]

    def _solve_plain(self, y0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        self._prepare(y0[:, : self.dim])
        b = self.block
        with torch.no_grad():
            return odeint(self.dynamics, y0, ts.to(y0), method=b.method, rtol=b.rtol,
                          atol=b.atol, options=b.solver_options())
