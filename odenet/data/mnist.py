"""MNIST for training: the raw IDX files read into tensors, and the run's batch iterators.

``odenet data`` (``odenet.data.prepare``) writes torchvision's raw files under
``<root>/MNIST/raw/``; this module only reads them. The 60,000 x 28 x 28 uint8 training
images (47 MB) stay in memory and batches are built by indexing (``Batches``); the
RandomCrop(28, padding=4) offsets of an epoch are drawn up front from the epoch's
generator, after the shuffle order. On CUDA the uint8 dataset is kept on the GPU
(``data.on_device``), or batches are pinned.

torch is imported inside the functions: ``odenet data`` and the trainer's preflight
import this package and should not pay torch's import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from odenet.data.batches import Batches

# torchvision's file names (the .gz names without .gz) with the MD5 of the uncompressed file.
RAW_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# data.normalize: the training set's pixel mean and standard deviation (of values in [0, 1])
MEAN, STD = 0.1307, 0.3081


class DataError(RuntimeError):
    """Data missing or corrupt; the message is one line that says what to do."""


def raw_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "MNIST" / "raw"


def require_raw(root: str | os.PathLike) -> None:
    """DataError saying what to do unless the four raw files exist (their bytes are not read)."""
    d = raw_dir(root)
    missing = [n for n in RAW_FILES if not (d / n).is_file()]
    if missing:
        raise DataError(f"MNIST not found in {d} (missing {', '.join(missing)}): "
                        "run `odenet data` (or `make data`) to prepare it, or set data.root")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (MNIST's format: big-endian header, then uint8 data) as an array."""
    with open(path, "rb") as f:
        magic = int.from_bytes(f.read(4), "big")
        if magic >> 8 != 0x08:  # 0x00000801 labels, 0x00000803 images: uint8 data
            raise DataError(f"{path} is not a uint8 IDX file (magic {magic:#x})")
        ndim = magic & 0xFF
        shape = tuple(int.from_bytes(f.read(4), "big") for _ in range(ndim))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({data.size} of {int(np.prod(shape))} bytes)")
    return data.reshape(shape)


def load_mnist(root: str | os.PathLike, train: bool) -> tuple[Any, Any]:
    """(uint8 images N x 28 x 28, int64 labels), or DataError saying what to do.

    Reads the raw files torchvision.datasets.MNIST(root) reads, with the same result
    (a test checks it), without importing torchvision (3 s per process here).
    """
    import torch

    require_raw(root)
    d = raw_dir(root)
    prefix = "train" if train else "t10k"
    images = read_idx(d / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(d / f"{prefix}-labels-idx1-ubyte")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def random_crop(images, dy, dx, size: int, padding: int):
    """RandomCrop(size, padding) on a batch: the window at (dy, dx) of the zero-padded image.

    images: (B, H, W); dy, dx: (B,) ints in [0, H + 2 * padding - size].
    """
    import torch
    import torch.nn.functional as F

    b = images.shape[0]
    padded = F.pad(images, (padding, padding, padding, padding))
    ar = torch.arange(size, device=images.device)
    rows = (dy.to(images.device)[:, None] + ar)[:, :, None]
    cols = (dx.to(images.device)[:, None] + ar)[:, None, :]
    return padded[torch.arange(b, device=images.device)[:, None, None], rows, cols]


class MnistBatches(Batches):
    """Batches of (float images B x 1 x 28 x 28 in [0, 1], int64 labels) from uint8 tensors.

    augment: RandomCrop(28, padding=crop_padding), its offsets drawn per epoch after the
    order. normalize: (x - MEAN) / STD.
    """

    def __init__(self, images, labels, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, normalize: bool = False, drop_last: bool = False,
                 seed: int = 0, device: Any = "cpu", on_device: bool = False,
                 crop_padding: int = 4):
        self.augment, self.normalize, self.padding = augment, normalize, crop_padding
        super().__init__((images, labels), batch_size, shuffle=shuffle, drop_last=drop_last,
                         seed=seed, device=device, on_device=on_device)

    def _draw(self, g) -> None:
        import torch

        if self.augment:
            span = 2 * self.padding + 1
            self.offsets = torch.randint(0, span, (self.n, 2), generator=g)
        else:
            self.offsets = None

    def _assemble(self, parts, lo: int, hi: int):
        import torch

        x, y = parts
        if self.offsets is not None:
            off = self.offsets[lo:hi]
            x = random_crop(x, off[:, 0], off[:, 1], x.shape[-1], self.padding)
        # copied as uint8 (a quarter of float32's bytes), converted on the device
        x, y = super()._assemble((x, y), lo, hi)
        x = x.unsqueeze(1).to(torch.float32).div_(255.0)
        if self.normalize:
            x = (x - MEAN) / STD
        return x, y


def mnist_loaders(data_cfg: Any, seed: int, device: Any, train_eval_size: int | None = None):
    """(train, test, train_eval) batch iterators for ``data_cfg`` (the schema's DataConfig).

    train_eval (None when train_eval_size == 0) measures the train error on the first
    ``train_eval_size`` training images without augmentation.
    """
    import torch

    dev = torch.device(device)
    on_device = data_cfg.on_device if data_cfg.on_device is not None else dev.type == "cuda"
    xtr, ytr = load_mnist(data_cfg.root, train=True)
    xte, yte = load_mnist(data_cfg.root, train=False)
    if data_cfg.train_size is not None:
        xtr, ytr = xtr[: data_cfg.train_size], ytr[: data_cfg.train_size]
    if data_cfg.test_size is not None:
        xte, yte = xte[: data_cfg.test_size], yte[: data_cfg.test_size]
    common = dict(normalize=data_cfg.normalize, device=dev, on_device=on_device)
    train = MnistBatches(xtr, ytr, data_cfg.batch_size, shuffle=True, augment=data_cfg.augment,
                         drop_last=True, seed=seed, crop_padding=data_cfg.crop_padding, **common)
    test = MnistBatches(xte, yte, data_cfg.test_batch_size, **common)
    train_eval = None
    if train_eval_size != 0:
        n = len(xtr) if train_eval_size is None else min(train_eval_size, len(xtr))
        train_eval = MnistBatches(xtr[:n], ytr[:n], data_cfg.test_batch_size, **common)
    return train, test, train_eval
