"""Loaders of toy points for the trainer (the same batch protocol as MNIST's BatchLoader).

The training set is ``train_size`` points drawn from the run's seed; the test set is
``test_size`` points from one fixed stream, the same for every seed and model, so test
NLLs of different runs are comparable point for point.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from odenet.cnf.datasets import sample

TRAIN_STREAM, TEST_STREAM = 1, 2  # numpy SeedSequence entropy: [seed, stream]
TEST_SEED = 0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class PointLoader:
    """Batches ``(x,)`` of (B, D) points; shuffled per epoch from (seed, epoch) if asked.

    ``batch(i)`` is a pure function of (seed, epoch, i), so a resumed run sees the same
    batches. ``drop_last`` is for training only; evaluation keeps every point.
    """

    def __init__(self, points: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, device: Any = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.points = points.to(device)
        self.n = len(points)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last = drop_last and self.n >= batch_size
        self.set_epoch(0)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self.n

    def set_epoch(self, epoch: int) -> None:
        g = epoch_generator(self.seed, epoch)
        self.order = torch.randperm(self.n, generator=g).to(self.points.device) \
            if self.shuffle else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor]]:
        for i in range(len(self)):
            yield self.batch(i)

    def batch(self, i: int) -> tuple[torch.Tensor]:
        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.n)
        if self.order is None:
            return (self.points[lo:hi],)
        return (self.points[self.order[lo:hi]],)


def toy_loaders(data_cfg: Any, seed: int, device: Any = "cpu",
                train_eval_size: int | None = None):
    """(train, test, train_eval) loaders for ``data_cfg`` (name, train_size, test_size,
    batch_size, test_batch_size). ``train_eval`` (None when train_eval_size == 0) scores
    the first ``train_eval_size`` training points (all of them when None)."""
    if data_cfg.train_size is None or data_cfg.test_size is None:
        raise ValueError("toy data need data.train_size and data.test_size (numbers of points)")
    train_pts = sample(data_cfg.name, data_cfg.train_size, [seed, TRAIN_STREAM])
    test_pts = sample(data_cfg.name, data_cfg.test_size, [TEST_SEED, TEST_STREAM])
    train = PointLoader(train_pts, data_cfg.batch_size, shuffle=True, drop_last=True,
                        seed=seed, device=device)
    test = PointLoader(test_pts, data_cfg.test_batch_size, device=device)
    train_eval = None
    if train_eval_size != 0:
        n = len(train_pts) if train_eval_size is None else min(train_eval_size, len(train_pts))
        train_eval = PointLoader(train_pts[:n], data_cfg.test_batch_size, device=device)
    return train, test, train_eval
