"""The shared batch iterator gives bit-identical batches to the loaders it replaced.

``OldBatchLoader`` and ``OldPointLoader`` are the MNIST and toy-point loaders as they
were before ``odenet.data.Batches`` (copied, trimmed of comments): the oracle. Every
training run's data, and so every metric, depends on these batches being the same for
the same (seed, epoch, index).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from odenet.cnf.data import toy_loaders
from odenet.cnf.datasets import sample
from odenet.data import MEAN, SEED_STRIDE, STD, Batches, MnistBatches, mnist_loaders

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- the oracle
def old_epoch_generator(seed, epoch):
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def old_random_crop(images, dy, dx, size, padding):
    b = images.shape[0]
    padded = F.pad(images, (padding, padding, padding, padding))
    ar = torch.arange(size, device=images.device)
    rows = (dy.to(images.device)[:, None] + ar)[:, :, None]
    cols = (dx.to(images.device)[:, None] + ar)[:, None, :]
    return padded[torch.arange(b, device=images.device)[:, None, None], rows, cols]


class OldBatchLoader:
    def __init__(self, images, labels, batch_size, *, shuffle=False, augment=False,
                 normalize=False, drop_last=False, seed=0, device="cpu", on_device=False,
                 crop_padding=4):
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

    def __len__(self):
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    @property
    def num_samples(self):
        return len(self) * self.batch_size if self.drop_last else self.n

    def set_epoch(self, epoch):
        g = old_epoch_generator(self.seed, epoch)
        self.order = torch.randperm(self.n, generator=g) if self.shuffle else None
        if self.augment:
            span = 2 * self.padding + 1
            self.offsets = torch.randint(0, span, (self.n, 2), generator=g)
        else:
            self.offsets = None

    def __iter__(self):
        for i in range(len(self)):
            yield self.batch(i)

    def batch(self, i):
        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.n)
        if self.order is not None:
            idx = self.order[lo:hi].to(self.images.device)
            x, y = self.images[idx], self.labels[idx]
        else:
            x, y = self.images[lo:hi], self.labels[lo:hi]
        if self.offsets is not None:
            off = self.offsets[lo:hi]
            x = old_random_crop(x, off[:, 0], off[:, 1], x.shape[-1], self.padding)
        if self.pin:
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, non_blocking=True).unsqueeze(1).to(torch.float32).div_(255.0)
        if self.normalize:
            x = (x - MEAN) / STD
        return x, y.to(self.device, non_blocking=True)


class OldPointLoader:
    def __init__(self, points, batch_size, *, shuffle=False, drop_last=False, seed=0,
                 device="cpu"):
        self.points = points.to(device)
        self.n = len(points)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last = drop_last and self.n >= batch_size
        self.set_epoch(0)

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    @property
    def num_samples(self):
        return len(self) * self.batch_size if self.drop_last else self.n

    def set_epoch(self, epoch):
        g = old_epoch_generator(self.seed, epoch)
        self.order = torch.randperm(self.n, generator=g).to(self.points.device) \
            if self.shuffle else None

    def __iter__(self):
        for i in range(len(self)):
            yield self.batch(i)

    def batch(self, i):
        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.n)
        if self.order is None:
            return (self.points[lo:hi],)
        return (self.points[self.order[lo:hi]],)


# --------------------------------------------------------------------------- helpers
def assert_same_iterators(new, old, epochs=(0, 3, 1)):
    """Same sizes; every batch equal (values, dtype, device) by iteration, batch(i), batches(s)."""
    assert (new.n, len(new), new.num_samples, new.drop_last) == \
        (old.n, len(old), old.num_samples, old.drop_last)
    for epoch in epochs:
        new.set_epoch(epoch)
        old.set_epoch(epoch)
        expected = list(old)
        assert len(expected) == len(new)
        for got in (list(new), [new.batch(i) for i in range(len(new))]):
            assert_same_batches(got, expected)
        for start in (1, len(new) - 1, len(new)):
            assert_same_batches(list(new.batches(start)), expected[start:])


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert type(a) is tuple and len(a) == len(b)
        for ta, tb in zip(a, b):
            assert ta.dtype == tb.dtype and ta.device == tb.device and ta.shape == tb.shape
            assert torch.equal(ta, tb)


def fake_images(n=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (n,), generator=g)


# --------------------------------------------------------------------------- tests
def test_the_seed_stride_is_the_one_every_run_so_far_used():
    assert SEED_STRIDE == 1_000_003


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shuffle,augment,normalize", [
    (False, False, False), (True, False, False), (False, True, False), (True, True, True)])
@pytest.mark.parametrize("batch_size,drop_last", [(16, True), (16, False), (70, True),
                                                  (100, True), (1, False)])
def test_image_batches_equal_the_old_loaders(device, shuffle, augment, normalize, batch_size,
                                             drop_last):
    x, y = fake_images()
    for seed, on_device, padding in ((0, False, 4), (7, True, 2)):
        kw = dict(shuffle=shuffle, augment=augment, normalize=normalize, drop_last=drop_last,
                  seed=seed, device=device, on_device=on_device, crop_padding=padding)
        assert_same_iterators(MnistBatches(x, y, batch_size, **kw),
                              OldBatchLoader(x, y, batch_size, **kw))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shuffle,drop_last", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("batch_size", [32, 100, 250])
def test_point_batches_equal_the_old_loaders(device, shuffle, drop_last, batch_size):
    pts = sample("moons", 100, seed=[5, 1])
    for seed in (0, 7):
        new = Batches((pts,), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                      device=device, on_device=True)
        old = OldPointLoader(pts, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                             device=device)
        assert_same_iterators(new, old)


def test_mnist_loaders_equal_the_old_loaders(compose_cfg):
    from odenet.data import load_mnist

    cfg = compose_cfg("data.train_size=1000", "data.test_size=700", "data.batch_size=128",
                      "data.test_batch_size=300", "train.train_eval_size=500", "seed=3")
    loaders = mnist_loaders(cfg.data, cfg.seed, "cpu", cfg.train.train_eval_size)
    train, test, train_eval = loaders.train, loaders.test, loaders.train_eval
    assert loaders.val is None
    xtr, ytr = load_mnist(cfg.data.root, train=True)
    xte, yte = load_mnist(cfg.data.root, train=False)
    d = cfg.data
    common = dict(normalize=d.normalize, device="cpu", on_device=False)
    assert_same_iterators(train, OldBatchLoader(
        xtr[:1000], ytr[:1000], 128, shuffle=True, augment=d.augment, drop_last=True, seed=3,
        crop_padding=d.crop_padding, **common), epochs=(0, 2))
    assert_same_iterators(test, OldBatchLoader(xte[:700], yte[:700], 300, **common), epochs=(0,))
    assert_same_iterators(train_eval, OldBatchLoader(xtr[:500], ytr[:500], 300, **common),
                          epochs=(0,))


def test_toy_loaders_equal_the_old_loaders():
    from types import SimpleNamespace

    cfg = SimpleNamespace(name="circles", train_size=300, test_size=200, batch_size=64,
                          test_batch_size=128)
    loaders = toy_loaders(cfg, seed=4, train_eval_size=100)
    train, test, train_eval = loaders.train, loaders.test, loaders.train_eval
    assert loaders.val is None
    pts_tr = sample("circles", 300, [4, 1])
    pts_te = sample("circles", 200, [0, 2])
    assert_same_iterators(train, OldPointLoader(pts_tr, 64, shuffle=True, drop_last=True, seed=4))
    assert_same_iterators(test, OldPointLoader(pts_te, 128), epochs=(0,))
    assert_same_iterators(train_eval, OldPointLoader(pts_tr[:100], 128), epochs=(0,))
    assert toy_loaders(cfg, seed=4, train_eval_size=0).train_eval is None


def test_batches_reject_bad_shapes_and_sizes():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Batches((torch.zeros(3),), 0)
    with pytest.raises(ValueError, match="different lengths"):
        Batches((torch.zeros(3), torch.zeros(4)), 2)
