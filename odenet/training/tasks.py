"""What a run learns: a ``Task`` gives the trainer its data, loss and metric.

The model's ``task`` trait (odenet/config/model_registry.py) picks the task: ``classify`` (MNIST,
cross-entropy, error rate) here, ``density`` (2-D toy densities, NLL) in
odenet/cnf/task.py. The trainer (odenet/training/trainer.py) is the same for both.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from odenet.cnf.task import DensityTask
from odenet.config.model_registry import spec
from odenet.data import Loaders, MnistBatches, load_mnist, mnist_loaders
from odenet.run.record import CLASSIFY, DENSITY


class Task(Protocol):
    """The trainer writes ``<split>_<metric>`` (e.g. ``test_error``), lower is better."""

    metric: str  # error | nll
    full_test_size: int | None  # metrics.json says test_size: null for this many

    def loaders(self, cfg: Any, device: torch.device) -> Loaders:
        """``odenet.data.Loaders``: ``train`` has ``len()``, ``set_epoch(e)`` and
        ``batch(i)``, a pure function of (seed, epoch, i), so that a resumed run sees the
        same batches; ``test``, ``train_eval`` and ``val`` (None when not asked for)
        iterate over their whole split; each has ``n`` samples."""

    def loss(self, out: torch.Tensor, batch: Any) -> torch.Tensor:
        """The loss to minimize from the model's output ``out`` on ``batch``."""

    def sums(self, out: torch.Tensor, batch: Any) -> dict:
        """Sums for ``reduce`` from the model's output on one batch."""

    def train_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict]:
        """(loss to minimize, sums for ``reduce``), in model.train() mode, with grad."""

    def eval_batch(self, model: nn.Module, batch: Any) -> dict:
        """Sums for ``reduce`` over one batch (no grad, model.eval())."""

    def probe_batches(self, config: dict, *, train: bool, n: int | None, batch_size: int,
                      device: Any, root: str | None = None) -> list:
        """The first ``n`` (None: all) samples of a run's training or test set, in order
        and unaugmented, as batches: what evaluate and gradients re-solve. ``config``:
        the run's (a checkpoint's plain dict); ``root``: where MNIST lies, if not there."""

    def reduce(self, sums: dict[str, float]) -> float | None:
        """The metric from sums accumulated over batches."""


class ClassifyTask:
    """MNIST classification: cross-entropy loss, error rate."""

    metric = "error"
    full_test_size = 10000  # MNIST's test set

    def loaders(self, cfg, device):
        return mnist_loaders(cfg.data, cfg.seed, device, cfg.train.train_eval_size)

    def loss(self, out, batch):
        return nn.functional.cross_entropy(out, batch[1])

    def sums(self, out, batch):
        return {"wrong": (out.argmax(1) != batch[1]).sum(), "count": len(batch[1])}

    def train_loss(self, model, batch):
        logits = model(batch[0])
        return self.loss(logits, batch), self.sums(logits.detach(), batch)

    def eval_batch(self, model, batch):
        return self.sums(model(batch[0]), batch)

    def probe_batches(self, config, *, train, n, batch_size, device, root=None):
        data = config.get("data") or {}
        x, y = load_mnist(root or data.get("root", "data"), train=train)
        return list(MnistBatches(x[:n], y[:n], batch_size, device=device,
                                 normalize=bool(data.get("normalize", False))))

    def reduce(self, sums):
        n = sums.get("count", 0)
        return float(sums["wrong"]) / n if n else None


TASKS: dict[str, type] = {CLASSIFY: ClassifyTask, DENSITY: DensityTask}


def task_of(config: dict) -> Task:
    """The task of the model a run's config names (its registry trait)."""
    return TASKS[spec(config["model"]["name"]).task]()
