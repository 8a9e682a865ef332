"""What a training solve of an ODE block may add to f: regularizers of the learned dynamics
and a random end time.

- Kinetic energy ``∫ ‖f‖² dt`` and the Jacobian's Frobenius norm ``∫ ‖∂f/∂h‖²_F dt`` (its
  Hutchinson estimate ``‖εᵀ ∂f/∂h‖²``, ε Rademacher, drawn once per solve): Finlay et al.
  2020, "How to train your neural ODE". Both are norms per state element (divided by the
  state's size), integrated along the trajectory as two more channels of the same solve,
  so the adjoint, backprop and checkpointing differentiate them as they do h.
- STEER (Ghosh et al. 2020): the solve ends at T ~ U(t1 - b, t1 + b) instead of t1. It is
  solved as ``g(s, h) = c f(c s, h)`` over [0, t1], c = T / t1: the same trajectory, and
  the solve keeps its prepared times.

Evaluation solves use none of this: they integrate f over [0, t1].
"""

from __future__ import annotations

import torch


class TrainingField:
    """f of a training solve: ``scale`` c (the end time's factor) and, with ``penalties``,
    the flat state ``[h, kinetic, jacobian]`` of shape (batch, D + 2); ``shape`` is h's."""

    def __init__(self, func, penalties: bool, jacobian: bool):
        self.func, self.penalties, self.jacobian = func, penalties, jacobian
        self.scale = 1.0
        self.shape: tuple[int, ...] = ()
        self.noise: torch.Tensor | None = None  # ε of the Hutchinson estimate, h's shape

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.scale
        if not self.penalties:
            return self.func(t * c, z) * c if c != 1.0 else self.func(t, z)
        h = z[:, :-2].reshape(self.shape)
        graph = torch.is_grad_enabled()  # False in the adjoint's forward solve
        # the Jacobian term differentiates f even there; the kinetic term needs no graph,
        # and one built per evaluation would be work (and saved tensors) thrown away
        with torch.set_grad_enabled(graph or self.jacobian):
            if self.jacobian and not (graph and h.requires_grad):  # a leaf to differentiate
                h = h.detach().requires_grad_()
            f = self.func(t * c, h)
            size = f[0].numel()
            kinetic = c * f.pow(2).flatten(1).sum(1) / size
            if self.jacobian:
                (vjp,) = torch.autograd.grad(f, h, self.noise, create_graph=graph)
                frobenius = c * vjp.pow(2).flatten(1).sum(1) / size
            else:
                frobenius = torch.zeros_like(kinetic)
        out = torch.cat([(f * c).flatten(1), kinetic[:, None], frobenius[:, None]], 1)
        return out if graph else out.detach()


def rademacher(like: torch.Tensor) -> torch.Tensor:
    """±1 noise shaped like ``like`` (E[ε εᵀ] = I), from torch's global generator."""
    return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1
