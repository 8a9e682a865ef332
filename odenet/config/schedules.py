"""Every learning-rate schedule, in one place, as the models are in odenet/config/model_registry.py.

A schedule is a pure function ``f(step, iters_per_epoch, o) -> float``: the multiplier of
the peak learning rate at iteration ``step`` (0-based) for the ``optim`` config ``o``
(config.OptimConfig), and one ``Schedule`` entry in ``SCHEDULES`` naming it. Config
validation (``optim.schedule``), the optimizer (odenet/training/optim.py) and resume's check of a
changed ``optim.epochs`` read this registry; no schedule name is written anywhere else.

Adding a schedule: its function and its entry here, and its numbers in
tests/test_schedules.py (which fails for an entry it does not cover). A schedule that
needs a setting of its own also needs that setting (DEVELOPERS.md, "A new setting").

Pure Python (no torch): config validation imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _warmed(f: float, epoch: float, o: Any) -> float:
    """``f`` times the linear warm-up from ``warmup_start`` over ``warmup_epochs``."""
    if o.warmup_epochs > 0 and epoch < o.warmup_epochs:
        f *= o.warmup_start + (1 - o.warmup_start) * epoch / o.warmup_epochs
    return f


def multistep(step: int, iters_per_epoch: int, o: Any) -> float:
    """x gamma at each of ``milestones`` (epochs, fractions allowed), after the warm-up."""
    f = o.gamma ** sum(1 for m in o.milestones if step >= round(m * iters_per_epoch))
    return _warmed(f, step / iters_per_epoch, o)


def cosine(step: int, iters_per_epoch: int, o: Any) -> float:
    """Cosine from the peak (after ``warmup_epochs``) down to ``final_lr_fraction``."""
    epoch, w = step / iters_per_epoch, o.warmup_epochs
    q = min(max((epoch - w) / max(o.epochs - w, 1e-12), 0.0), 1.0)
    f = o.final_lr_fraction + (1 - o.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * q))
    return _warmed(f, epoch, o)


def onecycle(step: int, iters_per_epoch: int, o: Any) -> float:
    """Linear rise from ``warmup_start`` over ``pct_start`` of all iterations, then cosine
    down to ``final_lr_fraction`` (its own warm-up: ``warmup_epochs`` is not applied)."""
    p = step / max(o.epochs * iters_per_epoch, 1)
    if p < o.pct_start:
        return o.warmup_start + (1 - o.warmup_start) * p / o.pct_start
    q = min((p - o.pct_start) / (1 - o.pct_start), 1.0)
    return o.final_lr_fraction + (1 - o.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * q))


def constant(step: int, iters_per_epoch: int, o: Any) -> float:
    """The peak learning rate throughout, after the warm-up."""
    return _warmed(1.0, step / iters_per_epoch, o)


@dataclass(frozen=True)
class Schedule:
    name: str  # optim.schedule
    factor: Callable[[int, int, Any], float]  # (step, iters_per_epoch, o) -> x peak lr
    # its lr at a step depends on optim.epochs (it is fitted to the run's length): a resumed
    # run may not change its epochs (train.check_resume)
    fitted_to_length: bool


SCHEDULES: dict[str, Schedule] = {s.name: s for s in (
    Schedule("multistep", multistep, fitted_to_length=False),
    Schedule("cosine", cosine, fitted_to_length=True),
    Schedule("onecycle", onecycle, fitted_to_length=True),
    Schedule("constant", constant, fitted_to_length=False),
)}


def lr_factor(step: int, iters_per_epoch: int, o: Any) -> float:
    """Multiplier of the peak lr at iteration ``step`` (0-based) of ``o.schedule``."""
    return SCHEDULES[o.schedule].factor(step, iters_per_epoch, o)


def fitted_to_length() -> tuple[str, ...]:
    return tuple(s.name for s in SCHEDULES.values() if s.fitted_to_length)
