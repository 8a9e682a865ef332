"""What a run learns: a ``Task`` gives the trainer its data, loss and metric.

The model's ``task`` trait (odenet/registry.py) picks the task: ``classify`` (MNIST,
cross-entropy, error rate) here, ``density`` (2-D toy densities, NLL) in
odenet/cnf/task.py. The trainer (odenet/train.py) is the same for both.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from odenet.cnf.task import DensityTask
from odenet.data import Loaders, mnist_loaders
from odenet.record import CLASSIFY, DENSITY


class Task(Protocol):
    """The trainer writes ``<split>_<metric>`` (e.g. ``test_error``), lower is better."""

    metric: str  # error | nll
    full_test_size: int | None  # metrics.json says test_size: null for this many

    def loaders(self, cfg: Any, device: torch.device) -> Loaders:
        """``odenet.data.Loaders``: ``train`` has ``len()``, ``set_epoch(e)`` and
        ``batch(i)``, a pure function of (seed, epoch, i), so that a resumed run sees the
        same batches; ``test``, ``train_eval`` and ``val`` (None when not asked for)
        iterate over their whole split; each has ``n`` samples."""

    def train_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict]:
        """(loss to minimize, sums for ``reduce``), in model.train() mode, with grad."""

    def eval_batch(self, model: nn.Module, batch: Any) -> dict:
        """Sums for ``reduce`` over one batch (no grad, model.eval())."""

    def reduce(self, sums: dict[str, float]) -> float | None:
        """The metric from sums accumulated over batches."""


class ClassifyTask:
    """MNIST classification: cross-entropy loss, error rate."""

    metric = "error"
    full_test_size = 10000  # MNIST's test set

    def loaders(self, cfg, device):
        return mnist_loaders(cfg.data, cfg.seed, device, cfg.train.train_eval_size)

    def train_loss(self, model, batch):
        x, y = batch
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        wrong = (logits.detach().argmax(1) != y).sum()
        return loss, {"wrong": wrong, "count": len(y)}

    def eval_batch(self, model, batch):
        x, y = batch
        return {"wrong": (model(x).argmax(1) != y).sum(), "count": len(y)}

    def reduce(self, sums):
        n = sums.get("count", 0)
        return float(sums["wrong"]) / n if n else None


TASKS: dict[str, type] = {CLASSIFY: ClassifyTask, DENSITY: DensityTask}
