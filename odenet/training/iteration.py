"""One training iteration: ``train_step`` takes an optimizer step on a batch and returns
what it measured (``IterationMeasures``: loss, the task's sums, time, learning rate, NFE,
steps, activations where counted, dynamics penalties), by the names the records read
(odenet/run/record.py). Nothing is read from the device before backward.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from odenet.models import dynamics_penalty, reset_solver_stats, solver_stats
from odenet.solvers import SolverError
from odenet.solvers.device import read_all
from odenet.training import measure
from odenet.training.runtime import autocast
from odenet.training.stopping import Failure
from odenet.training.tasks import Task


@dataclass
class IterationMeasures:
    """What one training iteration measured, by the names the records read: IterRecord's
    fields and the ``of`` of the EpochRecord fields its iterations make (odenet/run/record.py)."""

    loss: float
    sums: dict[str, float]
    seconds: float
    lr: float  # the step's learning rate
    nfe_forward: int | None = None
    nfe_backward: int | None = None
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    # the iteration whose activations were counted; None for the others
    activation_mib: float | None = None
    activation_block_mib: float | None = None
    activation_nfe_forward: int | None = None
    sample_seconds: float | None = None  # seconds, but None when counted: not a timing sample
    # the ODE block's dynamics penalties, unweighted (model.kinetic_weight, jacobian_weight)
    kinetic_energy: float | None = None
    jacobian_frobenius: float | None = None

    def postfix(self) -> dict[str, str]:
        p = {"loss": f"{self.loss:.3f}"}
        if self.nfe_forward is not None:
            p["nfe"] = f"{self.nfe_forward}/{self.nfe_backward}"
        return p


def train_step(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any,
               device: torch.device, measure_blocks: list[nn.Module] | None = None,
               precision: str = "fp32") -> IterationMeasures:
    """One optimizer step; with ``measure_blocks`` also count the activations saved for
    backward (whole model and those blocks). ``precision``: the forward's compute dtype
    (autocast computes the loss in fp32; backward and the step run outside autocast)."""
    model.train()
    reset_solver_stats(model)
    lr = optimizer.param_groups[0]["lr"]
    counted = measure_blocks is not None
    meter = measure.ActivationMeter(model, measure_blocks) if counted else None
    with measure.Timer(device) as timer:
        with meter if meter is not None else contextlib.nullcontext():
            with autocast(precision, device):
                loss, sums = task.train_loss(model, batch)
        penalty, penalties = dynamics_penalty(model)
        fwd = solver_stats(model) or {}
        optimizer.zero_grad(set_to_none=True)
        _backward(loss if penalty is None else loss + penalty)
        optimizer.step()
        bwd = solver_stats(model) or {}
    # read after the timer's sync, all at once: nothing waits for the device before backward
    loss_value, sums, penalties = _read(loss, sums, penalties)
    if not math.isfinite(loss_value):  # its step is taken, but the run stops unsaved
        raise Failure(_non_finite(loss_value))
    return IterationMeasures(
        loss=loss_value, sums=sums, seconds=timer.seconds,
        lr=lr, nfe_forward=fwd.get("nfe_forward"), nfe_backward=bwd.get("nfe_backward"),
        steps_accepted=fwd.get("steps_accepted"), steps_rejected=fwd.get("steps_rejected"),
        activation_mib=meter.total_mib if counted else None,
        activation_block_mib=meter.block_mib if counted else None,
        activation_nfe_forward=fwd.get("nfe_forward") if counted else None,
        sample_seconds=None if counted else timer.seconds, **penalties)


def _read(loss: torch.Tensor, sums: dict, penalties: dict
          ) -> tuple[float, dict[str, float], dict[str, float | None]]:
    """The loss, the task's sums and the dynamics penalties (None: not computed) as
    numbers, read from the device at once (one sync)."""
    names = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
    measured = [k for k, v in penalties.items() if v is not None]
    loss_value, *values = read_all([loss, *(sums[k] for k in names),
                                    *(penalties[k] for k in measured)])
    read = dict(zip(names + measured, values))
    sums = {k: float(read.get(k, v)) for k, v in sums.items()}
    return loss_value, sums, {k: read.get(k) for k in penalties}


def _backward(loss: torch.Tensor) -> None:
    """loss.backward(); a backward solve that fails on a non-finite loss says so."""
    try:
        loss.backward()
    except SolverError:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise Failure(_non_finite(value)) from None
        raise


def _non_finite(loss_value: float) -> str:
    return f"non-finite loss ({loss_value}): lower optim.lr or the tolerance"
