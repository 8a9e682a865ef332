"""The one batch iterator: MNIST images and the toy 2-D points both go through ``Batches``.

A dataset is a few tensors in memory that share their first dimension (images and
labels; points). Batch i of an epoch is built by indexing them, with the epoch's
shuffle order drawn up front from a generator seeded by (seed, epoch). A batch is thus
a pure function of (seed, epoch, index): a run resumed in the middle of an epoch sees
exactly the batches an uninterrupted run would, and no worker processes are needed (on
a 2-core machine they would only compete with the model for the cores).

torch is imported inside the functions: ``odenet data`` and the trainer's preflight
import this package and should not pay torch's import time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from odenet.config.errors import ConfigError

# Epoch e of a run with seed s draws from the generator seeded s * SEED_STRIDE + e, so
# distinct (s, e) pairs get distinct generators while e < SEED_STRIDE (a million epochs).
SEED_STRIDE = 1_000_003


def epoch_generator(seed: int, epoch: int):
    """The generator that draws everything random about ``epoch`` of a run with ``seed``."""
    import torch

    return torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)


class Batches:
    """Batches (tuples, one entry per tensor) of ``tensors``, ``batch_size`` samples each.

    shuffle draws the epoch's order from (seed, epoch) when ``set_epoch`` is called;
    ``batches(start)`` skips the first ``start`` batches without computing them.
    ``drop_last`` is for training only (it is ignored when there are fewer samples than
    one batch); evaluation keeps every sample. The tensors are kept on ``device`` when
    ``on_device``, else on the CPU, and each batch is copied to ``device`` (from pinned
    memory on CUDA).

    Subclasses add per-sample randomness (``_draw``, from the same generator, after the
    order) and per-batch conversion (``_assemble``); see ``odenet.data.mnist``.
    """

    def __init__(self, tensors: Sequence[Any], batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, device: Any = "cpu",
                 on_device: bool = False):
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        store = self.device if on_device else torch.device("cpu")
        self.tensors = tuple(t.to(store) for t in tensors)
        self.n = len(self.tensors[0])
        if any(len(t) != self.n for t in self.tensors):
            raise ValueError(f"tensors of different lengths: {[len(t) for t in self.tensors]}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and self.n >= batch_size
        self.seed = seed
        self.pin = self.device.type == "cuda" and store.type == "cpu"
        self.set_epoch(0)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples seen per epoch (fewer than ``n`` when ``drop_last`` drops a partial batch)."""
        return len(self) * self.batch_size if self.drop_last else self.n

    def set_epoch(self, epoch: int) -> None:
        import torch

        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else None
        self.order = None if order is None else order.to(self.tensors[0].device)
        self._draw(g)

    def _draw(self, g) -> None:
        """Per-sample randomness of the epoch, drawn from ``g`` after the order."""

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self.batches(0)

    def batches(self, start: int = 0) -> Iterator[tuple[Any, ...]]:
        for i in range(start, len(self)):
            yield self.batch(i)

    def batch(self, i: int) -> tuple[Any, ...]:
        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.n)
        idx = slice(lo, hi) if self.order is None else self.order[lo:hi]
        return self._assemble(tuple(t[idx] for t in self.tensors), lo, hi)

    def _assemble(self, parts: tuple[Any, ...], lo: int, hi: int) -> tuple[Any, ...]:
        """Batch ``lo:hi`` (in the epoch's order) from its rows ``parts``: copied to the device."""
        if self.pin:
            parts = tuple(t.pin_memory() for t in parts)
        return tuple(t.to(self.device, non_blocking=True) for t in parts)


@dataclass(frozen=True)
class Loaders:
    """A run's batch iterators (``mnist_loaders``, ``toy_loaders``).

    train: shuffled (and augmented) by (seed, epoch), ``drop_last``. test: the test split,
    in file order. train_eval: the first ``train_eval_size`` training samples, in order,
    no augmentation (None when train_eval_size == 0). val: the validation split, in order,
    no augmentation (None when ``data.val_size`` is 0 or unset). Evaluation iterators
    keep every sample.
    """

    train: Batches
    test: Batches
    train_eval: Batches | None
    val: Batches | None


def val_size_of(data_cfg: Any, limit: int | None = None) -> int:
    """``data.val_size`` as an int: 0 when unset (a config made before the setting existed
    has no such key); ConfigError unless 0 <= val_size < ``limit`` (the samples it is
    held out of, when it is held out: at least one is left for training)."""
    v = getattr(data_cfg, "val_size", None) or 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (limit is not None
                                                                  and v >= limit):
        bound = "" if limit is None else f" and < {limit}"
        raise ConfigError(f"data.val_size={v!r} must be an integer >= 0{bound}")
    return v
