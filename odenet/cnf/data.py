"""Batch iterators of toy 2-D points for the trainer (``odenet.data.Batches``, as MNIST's).

The training set is ``train_size`` points drawn from the run's seed; the test set is
``test_size`` points from one fixed stream, the same for every seed and model, so test
NLLs of different runs are comparable point for point. The validation set
(``val_size`` points, none when unset) comes from a third fixed stream, likewise the
same for every seed: the points come from a known distribution, so nothing needs to be
held out of the training points, and the training and test points are unchanged by it.
Each batch is a 1-tuple ``(x,)`` of (B, D) points; the points are generated on the CPU
and kept on ``device``.
"""

from __future__ import annotations

from typing import Any

from odenet.cnf.datasets import sample
from odenet.data.batches import Batches, Loaders, val_size_of

TRAIN_STREAM, TEST_STREAM, VAL_STREAM = 1, 2, 3  # numpy SeedSequence entropy: [seed, stream]
TEST_SEED = 0  # the seed of the test and validation streams, whatever the run's seed


def split_points(data_cfg: Any, seed: int, train: bool):
    """The training points of a run of ``seed`` or (``train`` false) its test points, as
    the trainer sees them (``data_cfg`` as toy_loaders')."""
    if train:
        return sample(data_cfg.name, data_cfg.train_size, [seed, TRAIN_STREAM])
    return sample(data_cfg.name, data_cfg.test_size, [TEST_SEED, TEST_STREAM])


def toy_loaders(data_cfg: Any, seed: int, device: Any = "cpu",
                train_eval_size: int | None = None) -> Loaders:
    """The run's ``Loaders`` for ``data_cfg`` (name, train_size, test_size, val_size,
    batch_size, test_batch_size). ``train_eval`` (None when train_eval_size == 0) scores
    the first ``train_eval_size`` training points (all of them when None); ``val`` (None
    when val_size is unset or 0) scores ``val_size`` points of the fixed validation stream."""
    if data_cfg.train_size is None or data_cfg.test_size is None:
        raise ValueError("toy data need data.train_size and data.test_size (numbers of points)")
    n_val = val_size_of(data_cfg)
    train_pts, test_pts = split_points(data_cfg, seed, True), split_points(data_cfg, seed, False)
    common = dict(device=device, on_device=True)
    train = Batches((train_pts,), data_cfg.batch_size, shuffle=True, drop_last=True, seed=seed,
                    **common)
    test = Batches((test_pts,), data_cfg.test_batch_size, **common)
    train_eval = None
    if train_eval_size != 0:
        n = len(train_pts) if train_eval_size is None else min(train_eval_size, len(train_pts))
        train_eval = Batches((train_pts[:n],), data_cfg.test_batch_size, **common)
    val = None
    if n_val:
        val_pts = sample(data_cfg.name, n_val, [TEST_SEED, VAL_STREAM])
        val = Batches((val_pts,), data_cfg.test_batch_size, **common)
    return Loaders(train, test, train_eval, val)
