"""The weights' exponential moving average (optim.ema_decay, odenet.training.optim.build_ema):
its formula, its evaluation beside the raw weights (ema_test_error, ema_val_error), a raw
training it leaves untouched, its checkpoint and a bit-for-bit resume."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from odenet.cli.app import compose
from odenet.config.schema import ConfigError
from odenet.run.record import CHECKPOINT_FILE
from odenet.training import optim
from odenet.training.checkpoint_file import load as load_checkpoint
from odenet.training.trainer import run

torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads spin

# 4 iterations of 32 images per epoch on a narrow ODE-Net: a few seconds a run
TINY = ("experiment=smoke", "model=odenet", "model.width=8", "data.train_size=128",
        "data.test_size=32", "train.train_eval_size=0", "train.tensorboard=false",
        "optim.epochs=2")
EMA = ("optim.ema_decay=0.75",)


def _history(out) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.register_buffer("scale", torch.ones(2, dtype=torch.float64))


def _d(decay: float, n: int) -> float:
    """The decay of the update after n updates: warmed up, min(decay, (1 + n) / (10 + n))
    (odenet.training.optim.ema_update)."""
    return min(decay, (1 + n) / (10 + n))


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_the_average_follows_its_formula(decay):
    """w_ema = w after the first update, then d w_ema + (1 - d) w after each (d warmed up),
    for the weights and the buffers."""
    net = _Net()
    ema = optim.build_ema(OmegaConf.create({"optim": {"ema_decay": decay}}), net)
    g = torch.Generator().manual_seed(0)
    expected = None
    for n in range(12):
        with torch.no_grad():  # a "step": new weights and buffers
            for t in (net.lin.weight, net.lin.bias, net.scale):
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
        ema.update_parameters(net)
        now = [net.lin.weight, net.lin.bias, net.scale]
        expected = ([t.detach().clone() for t in now] if expected is None else
                    [_d(decay, n) * e + (1 - _d(decay, n)) * t.detach()
                     for e, t in zip(expected, now)])
        got = [ema.module.lin.weight, ema.module.lin.bias, ema.module.scale]
        for e, t in zip(expected, got):
            torch.testing.assert_close(t.detach(), e, rtol=1e-13, atol=1e-15)
    assert ema.module is not net and int(ema.n_averaged) == 12
    assert not torch.equal(ema.module.lin.weight, net.lin.weight)  # an average, not a copy
    assert optim.build_ema(OmegaConf.create({"optim": {"ema_decay": None}}), net) is None


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_root):
    """The runs the tests below compare (each once): with the EMA (straight, and stopped
    after 1, 2 and 5 iterations then resumed), without it, with a validation split."""
    root = tmp_path_factory.mktemp("ema")

    def go(name, *overrides):
        out = root / name
        return run(compose([f"data.root={mnist_root}", *TINY, *overrides]), out), out

    return {
        "plain": go("plain"),
        "ema": go("ema", *EMA),
        "one": go("one", *EMA, "train.stop_after_iters=1"),
        "two": go("two", *EMA, "train.stop_after_iters=2"),
        "val": go("val", *EMA, "data.val_size=100"),
    }


def test_the_average_is_evaluated_and_recorded(runs):
    for name in ("ema", "val"):
        m, out = runs[name]
        assert m["status"] == "finished" and m["ema_decay"] == 0.75
        epochs = [r for r in _history(out) if r["kind"] == "epoch"]
        assert len(epochs) == 2
        assert all(0 <= r["ema_test_error"] <= 1 for r in epochs)
        assert m["ema_test_error"] == epochs[-1]["ema_test_error"]
        assert json.loads((out / "metrics.json").read_text())["ema_test_error"] == \
            m["ema_test_error"]
    m, out = runs["val"]
    epochs = [r for r in _history(out) if r["kind"] == "epoch"]
    assert all(0 <= r["ema_val_error"] <= 1 for r in epochs)
    assert m["ema_val_error"] == epochs[-1]["ema_val_error"] and m["val_size"] == 100
    assert runs["ema"][0]["ema_val_error"] is None  # no validation split, no EMA on it
    plain = runs["plain"][0]
    assert plain["ema_decay"] is None and plain["ema_test_error"] is None
    assert all(r.get("ema_test_error") is None for r in _history(runs["plain"][1]))


def test_the_raw_training_is_the_same_with_and_without_the_average(runs):
    (mp, op), (me, oe) = runs["plain"], runs["ema"]
    for k in ("test_error", "nfe_forward_mean", "nfe_backward_mean", "test_nfe_forward_mean"):
        assert mp[k] == me[k], k
    wp = load_checkpoint(op / CHECKPOINT_FILE)["model"]
    we = load_checkpoint(oe / CHECKPOINT_FILE)["model"]
    assert set(wp) == set(we) and all(torch.equal(wp[k], we[k]) for k in wp)

    def iters(out):
        return [(r["iter"], r["loss"], r["nfe_forward"]) for r in _history(out)
                if r["kind"] == "iter"]

    assert iters(op) == iters(oe) and len(iters(op)) == 8  # the second epoch too
    epochs = [[r["test_error"] for r in _history(o) if r["kind"] == "epoch"] for o in (op, oe)]
    assert epochs[0] == epochs[1]


def test_the_checkpoint_holds_the_average_of_the_steps(runs):
    """After 1 step the average is the weights; after 2, d w1 + (1 - d) w2 (d warmed up),
    w1 and w2 the weights of the runs stopped after 1 and 2 steps (the same trajectory)."""
    d = _d(0.75, 1)
    one = load_checkpoint(runs["one"][1] / CHECKPOINT_FILE)
    two = load_checkpoint(runs["two"][1] / CHECKPOINT_FILE)
    for ck, steps in ((one, 1), (two, 2)):
        assert int(ck["ema"]["n_averaged"]) == steps
    assert "ema" not in load_checkpoint(runs["plain"][1] / CHECKPOINT_FILE)
    w1, w2 = one["model"], two["model"]
    ema1 = {k[len("module."):]: v for k, v in one["ema"].items() if k.startswith("module.")}
    ema2 = {k[len("module."):]: v for k, v in two["ema"].items() if k.startswith("module.")}
    params = [k for k in w1 if w1[k].is_floating_point()]
    assert set(ema1) == set(w1) and params
    for k in params:
        assert torch.equal(ema1[k], w1[k]), k
        torch.testing.assert_close(ema2[k], d * w1[k] + (1 - d) * w2[k], rtol=1e-6, atol=1e-7,
                                   msg=k)
    assert any(not torch.equal(ema2[k], w2[k]) for k in params)


def test_a_checkpoint_is_rebuilt_with_the_average_where_the_run_kept_one(runs):
    from odenet.training.checkpoint_file import load_model

    for name in ("ema", "plain"):
        out = runs[name][1]
        model, _, ck = load_model(out / CHECKPOINT_FILE)
        want = ({k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
                if name == "ema" else ck["model"])
        got = model.state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got), name
        assert not model.training


def test_resume_with_the_average_is_bit_for_bit(runs, mnist_root, tmp_path):
    import shutil

    out = tmp_path / "stopped"
    shutil.copytree(runs["two"][1], out)
    m = run(compose([f"data.root={mnist_root}", *TINY, *EMA, "train.stop_after_iters=5",
                     "resume=true"]), out)
    assert m["status"] == "interrupted"  # stopped again, in the second epoch
    m = run(compose([f"data.root={mnist_root}", *TINY, *EMA, "resume=true"]), out)
    (ma, oa) = runs["ema"]
    assert m["status"] == "finished"
    for k in ("test_error", "ema_test_error", "nfe_forward_mean"):
        assert m[k] == ma[k], k
    a, b = load_checkpoint(oa / CHECKPOINT_FILE), load_checkpoint(out / CHECKPOINT_FILE)
    for part in ("model", "ema"):
        assert set(a[part]) == set(b[part])
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    strip = ("seconds", "rss_peak_mib", "sec_per_iter", "sec_per_test_batch", "train_seconds")
    assert ([{k: v for k, v in r.items() if k not in strip} for r in _history(oa)]
            == [{k: v for k, v in r.items() if k not in strip} for r in _history(out)])


def test_resume_may_not_change_the_decay(runs, mnist_root, tmp_path):
    import shutil

    out = tmp_path / "stopped"
    shutil.copytree(runs["two"][1], out)
    for decay in ("0.5", "null"):
        with pytest.raises(ConfigError, match="optim.ema_decay") as info:
            run(compose([f"data.root={mnist_root}", *TINY, f"optim.ema_decay={decay}",
                         "resume=true"]), out)
        assert "\n" not in str(info.value)


def test_an_older_checkpoint_resumed_with_an_average_is_refused_or_continued(runs, mnist_root,
                                                                           tmp_path):
    import shutil

    out = tmp_path / "old"
    shutil.copytree(runs["plain"][1], out)
    ck = torch.load(out / CHECKPOINT_FILE, weights_only=False)
    del ck["config"]["optim"]["ema_decay"]  # as written before the setting existed
    torch.save(ck, out / CHECKPOINT_FILE)
    try:
        m = run(compose([f"data.root={mnist_root}", *TINY, *EMA, "optim.epochs=3",
                         "resume=true"]), out)
    except ConfigError as e:  # refused: fine, in one line
        assert "\n" not in str(e)
    else:
        assert m["status"] == "finished" and m["ema_test_error"] is not None


@pytest.mark.parametrize("decay, shown", [("0", "0.0"), ("1", "1.0"), ("-1", "-1.0"),
                                          ("1.5", "1.5")])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bad_decays_are_one_line_config_errors(optimizer, decay, shown):
    with pytest.raises(ConfigError) as info:
        compose([f"optim={optimizer}", f"optim.ema_decay={decay}"])
    assert str(info.value) == f"optim.ema_decay must be in (0, 1) or null (got {shown})"
    assert compose([f"optim={optimizer}"]).optim.ema_decay is None  # off by default
