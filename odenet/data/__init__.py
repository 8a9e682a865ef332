"""Data: MNIST preparation (``prepare``), MNIST verification and loading (``mnist``), the
batch iterator shared by MNIST and the toy 2-D points and the ``Loaders`` a run gets
(``batches``).

Importing this package does not import torch: ``odenet data`` and the trainer's
preflight use it before (or without) torch. It never imports hydra or ``odenet.cnf``
(``odenet.cnf.data`` builds its loaders on ``Batches``).
"""

from odenet.data.batches import SEED_STRIDE, Batches, Loaders, epoch_generator, val_size_of
from odenet.data.mnist import (
    MEAN,
    RAW_FILES,
    STD,
    VERIFIED,
    DataError,
    MnistBatches,
    file_problem,
    load_mnist,
    mnist_loaders,
    random_crop,
    raw_dir,
    read_idx,
    rebuild_command,
    require_raw,
    verify_raw,
)
from odenet.data.prepare import CLASS_COUNTS, check_raw, main, prepare_mnist

__all__ = [
    "CLASS_COUNTS", "MEAN", "RAW_FILES", "SEED_STRIDE", "STD", "VERIFIED",
    "Batches", "DataError", "Loaders", "MnistBatches", "check_raw", "epoch_generator",
    "file_problem", "load_mnist", "main", "mnist_loaders", "prepare_mnist", "random_crop",
    "raw_dir", "read_idx", "rebuild_command", "require_raw", "val_size_of", "verify_raw",
]
