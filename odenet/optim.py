"""Optimizer and learning-rate schedule from the ``optim`` config (OptimConfig); the
schedules themselves are odenet/schedules.py's registry."""

from __future__ import annotations

import torch

from odenet.config import peak_lr  # defined beside its validation; train reads it here
from odenet.schedules import fitted_to_length, lr_factor

__all__ = ["build", "lr_factor", "peak_lr", "FITTED_TO_LENGTH"]

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
