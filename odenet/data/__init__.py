"""Data: MNIST preparation (``prepare``) and MNIST loading (``mnist``).

Importing this package does not import torch: ``odenet data`` and the trainer's
preflight use it before (or without) torch. It never imports hydra or ``odenet.cnf``.
"""

from odenet.data.mnist import (
    MEAN,
    RAW_FILES,
    STD,
    BatchLoader,
    DataError,
    epoch_generator,
    load_mnist,
    mnist_loaders,
    random_crop,
    raw_dir,
    read_idx,
    require_raw,
)
from odenet.data.prepare import CLASS_COUNTS, VERIFIED, check_raw, main, prepare_mnist

__all__ = [
    "CLASS_COUNTS", "MEAN", "RAW_FILES", "STD", "VERIFIED", "BatchLoader",
    "DataError", "check_raw", "epoch_generator", "load_mnist",
    "main", "mnist_loaders", "prepare_mnist", "random_crop", "raw_dir", "read_idx",
    "require_raw",
]
