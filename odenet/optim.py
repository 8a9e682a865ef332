"""Optimizer and learning-rate schedule from the ``optim`` config (OptimConfig)."""

from __future__ import annotations

import math
from typing import Any

import torch

from odenet.config import peak_lr  # defined beside its validation; train reads it here

# schedules whose learning rate at a step depends on optim.epochs (they are fitted to the
# run's length): a resumed run may not change its epochs (train.check_resume)
FITTED_TO_LENGTH = ("cosine", "onecycle")


def lr_factor(step: int, iters_per_epoch: int, o: Any) -> float:
    """Multiplier of the peak lr at iteration ``step`` (0-based) for OptimConfig ``o``."""
    epoch = step / iters_per_epoch
    total = o.epochs * iters_per_epoch
    if o.schedule == "onecycle":
        p = step / max(total, 1)
        if p < o.pct_start:
            return o.warmup_start + (1 - o.warmup_start) * p / o.pct_start
        q = min((p - o.pct_start) / (1 - o.pct_start), 1.0)
        return o.final_lr_fraction + (1 - o.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * q))
    f = 1.0
    if o.schedule == "multistep":
        f = o.gamma ** sum(1 for m in o.milestones if step >= round(m * iters_per_epoch))
    elif o.schedule == "cosine":
        w = o.warmup_epochs
        q = min(max((epoch - w) / max(o.epochs - w, 1e-12), 0.0), 1.0)
        f = o.final_lr_fraction + (1 - o.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * q))
    if o.warmup_epochs > 0 and epoch < o.warmup_epochs:
        f *= o.warmup_start + (1 - o.warmup_start) * epoch / o.warmup_epochs
    return f


def build(cfg: Any, params, iters_per_epoch: int):
    """(optimizer, scheduler stepped once per iteration) for ``cfg.optim``."""
    o = cfg.optim
    if o.name == "adam":  # configs/optim/adam.yaml (the density experiments)
        optimizer = torch.optim.Adam(params, lr=peak_lr(cfg), weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=peak_lr(cfg), momentum=o.momentum,
                                    nesterov=o.nesterov, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, iters_per_epoch, o))
    return optimizer, scheduler
