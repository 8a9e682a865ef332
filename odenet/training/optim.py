"""Optimizer and learning-rate schedule from the ``optim`` config (OptimConfig); the
schedules themselves are odenet/config/schedules.py's registry."""

from __future__ import annotations

import torch

from odenet.config.schedules import fitted_to_length, lr_factor
from odenet.config.schema import peak_lr  # defined beside its validation; train reads it here

__all__ = ["build", "build_ema", "lr_factor", "peak_lr", "FITTED_TO_LENGTH"]

# schedules whose learning rate at a step depends on optim.epochs (they are fitted to the
# run's length): a resumed run may not change its epochs (train.check_resume)
FITTED_TO_LENGTH = fitted_to_length()


def build(cfg, params, iters_per_epoch: int, batch: int | None = None):
    """(optimizer, scheduler stepped once per iteration) for ``cfg.optim``; ``batch``: the
    batch that runs (default data.batch_size), which the recipe's lr is scaled by."""
    o = cfg.optim
    lr = peak_lr(cfg, batch)
    if o.name == "adam":  # configs/optim/adam.yaml (the density experiments)
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=o.momentum,
                                    nesterov=o.nesterov, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, iters_per_epoch, o))
    return optimizer, scheduler


def build_ema(cfg, model: torch.nn.Module):
    """The exponential moving average of ``model``'s weights (and buffers) that
    ``optim.ema_decay`` asks for, updated by ``update_parameters(model)`` after each step;
    None without one."""
    decay = cfg.optim.ema_decay
    if decay is None:
        return None
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update(decay),
                                               use_buffers=True)


def ema_update(decay: float):
    """AveragedModel's update: w_ema <- d w_ema + (1 - d) w with d = min(decay, (1 + n) /
    (10 + n)) after n updates, so that the average forgets the first, random weights as
    fast as a short run needs (a fixed 0.999 would still give them a third of the weight
    after 1,100 steps)."""
    @torch.no_grad()
    def update(averaged: list, current: list, n: torch.Tensor) -> None:
        n = int(n)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)
    return update
