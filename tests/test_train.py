"""The trainer: what a run writes (Contract 2), resume, interruption, failures, sweeps."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from odenet.cli.app import compose
from odenet.config.model_registry import models_of, spec
from odenet.config.schema import ConfigError
from odenet.models import build_model
from odenet.run import record
from odenet.run.record import CHECKPOINT_FILE, CLASSIFY
from odenet.training.checkpoint_file import load as load_checkpoint
from odenet.training.iteration import IterationMeasures
from odenet.training.measure import count_parameters
from odenet.training.run_state import Progress
from odenet.training.trainer import run

torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads spin

CONTRACT_KEYS = {
    "model", "experiment", "seed", "status", "reason", "solver_method", "solver_rtol",
    "solver_atol", "solver_adjoint", "solver_adjoint_norm", "solver_step_size", "solver_last_step",
    "test_error",
    "train_error", "params", "nfe_forward_mean", "nfe_backward_mean", "activation_mib",
    "activation_block_mib", "cuda_peak_mib", "rss_peak_mib", "sec_per_iter",
    "sec_per_test_batch", "epochs", "epochs_planned", "batch_size", "train_size", "device",
    "torch_version", "git_commit", "wall_seconds"}
ITER_KEYS = {"kind", "epoch", "iter", "loss", "nfe_forward", "nfe_backward", "steps_accepted",
             "steps_rejected", "seconds", "lr"}
EPOCH_KEYS = {"kind", "epoch", "train_error", "test_error", "nfe_forward_mean",
              "nfe_backward_mean", "activation_mib", "activation_block_mib", "rss_peak_mib",
              "seconds"}
# small and quick: 4 iterations of 32 images per epoch, 64 test images
TINY = ("experiment=smoke", "data.train_size=128", "data.test_size=64",
        "train.train_eval_size=64", "train.tensorboard=false")


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


# every classifier of the registry (its exact parameter count: tests/test_models.py)
@pytest.mark.parametrize("name", models_of(CLASSIFY))
def test_smoke_run_writes_valid_files(name, compose_cfg, tmp_path):
    cfg = compose_cfg("experiment=smoke", f"model={name}")
    m = run(cfg, tmp_path)
    assert m == metrics(tmp_path)  # the returned record is what metrics.json holds
    assert CONTRACT_KEYS <= set(m)
    trait = spec(name)
    ode = trait.ode_block
    assert m["status"] == "finished" and m["reason"] is None
    assert (m["model"], m["experiment"], m["seed"]) == (name, "smoke", 0)
    assert m["params"] == count_parameters(build_model(cfg.model, cfg.solver))
    assert 0 <= m["test_error"] <= 1 and 0 <= m["train_error"] <= 1
    assert (m["epochs"], m["epochs_planned"], m["batch_size"], m["train_size"]) == (1, 1, 32, 256)
    assert m["test_size"] == 200 and m["device"] == "cpu" and m["cuda_peak_mib"] is None
    assert m["task"] == "classify"
    assert m["torch_version"] == torch.__version__ and m["wall_seconds"] > 0
    assert m["sec_per_iter"] > 0 and m["sec_per_test_batch"] > 0 and m["rss_peak_mib"] > 100
    assert m["activation_mib"] > 0
    if ode:
        assert m["solver_method"] == "dopri5" and m["solver_rtol"] == m["solver_atol"] == 1e-3
        adjoint = trait.gradients[0] == "adjoint"
        assert m["solver_adjoint"] is adjoint and m["solver_step_size"] is None
        assert m["nfe_forward_mean"] >= 14 and m["test_nfe_forward_mean"] >= 8
        assert (m["nfe_backward_mean"] > 0) is adjoint
        assert 0 < m["activation_block_mib"] < m["activation_mib"]
    else:
        assert m["solver_method"] is None and m["solver_adjoint"] is None
        assert m["nfe_forward_mean"] is None and m["nfe_backward_mean"] is None
        assert (m["activation_block_mib"] is None) is (trait.residual_blocks is None)

    recs = history(tmp_path)
    iters = [r for r in recs if r["kind"] == "iter"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert len(iters) == 8 and [r["iter"] for r in iters] == list(range(8))  # log_every=1
    assert all(ITER_KEYS <= set(r) for r in iters) and len(epochs) == 1
    assert EPOCH_KEYS <= set(epochs[0])
    assert all(math.isfinite(r["loss"]) and r["seconds"] > 0 and r["lr"] == 0.025
               for r in iters)  # lr = 0.1 x 32 / 128
    if ode:
        assert all(r["nfe_forward"] == 2 + 6 * (r["steps_accepted"] + r["steps_rejected"])
                   for r in iters)
        assert m["nfe_forward_mean"] == pytest.approx(sum(r["nfe_forward"] for r in iters) / 8)
    assert epochs[0]["test_error"] == m["test_error"]
    # the files hold exactly the schema's records (odenet/run/record.py): every key a field
    assert record.read_metrics(tmp_path / "metrics.json") == m
    assert set(m) == set(record.for_task(record.Metrics, "classify"))
    assert m["residual_blocks"] == (cfg.model[trait.residual_blocks] if trait.residual_blocks
                                    else None)
    assert record.read_history(tmp_path / "history.jsonl") == recs
    assert set(iters[0]) == set(record.for_task(record.IterRecord, "classify"))
    assert set(epochs[0]) == set(record.for_task(record.EpochRecord, "classify"))

    ck = load_checkpoint(tmp_path / CHECKPOINT_FILE)  # weights_only=True: plain data only
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config"} <= set(ck)
    assert ck["epoch"] == 1 and ck["config"]["model"]["name"] == name
    net = build_model(ck["config"]["model"], ck["config"]["solver"])
    net.load_state_dict(ck["model"])
    assert sum(p.numel() for p in net.parameters()) == m["params"]

    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    if name == "resnet":  # read one run's events back: every iteration was logged
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tb"))
        acc.Reload()
        assert len(acc.Scalars("iter/loss")) == 8
        assert acc.Scalars("epoch/test_error")[-1].value == pytest.approx(m["test_error"])


def test_checkpoint_cannot_run_code(compose_cfg, tmp_path):
    """A checkpoint is loaded with weights_only=True: a pickle that calls code is refused."""
    run(compose_cfg(*TINY, "model=mlp"), tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        run(compose_cfg(*TINY, "model=mlp", "resume=true"), tmp_path)


def test_a_corrupt_checkpoint_is_refused_in_whole_sentences_offering_overwrite(
        compose_cfg, tmp_path):
    run(compose_cfg(*TINY, "model=mlp", "train.stop_after_iters=2"), tmp_path)
    ck = tmp_path / CHECKPOINT_FILE
    ck.write_bytes(ck.read_bytes()[:1000])  # cut short: a zip without its directory
    with pytest.raises(ConfigError) as info:
        run(compose_cfg(*TINY, "model=mlp", "resume=true"), tmp_path)
    line = str(info.value)
    assert line.startswith(f"resume=true: {ck}: not a readable checkpoint (RuntimeError: ")
    assert line.endswith("); overwrite=true starts the run afresh (its records deleted)")
    # torch's first sentence whole (torch 2.14: "PytorchStreamReader failed reading zip
    # archive: failed finding central directory"), not 200 characters ending in "file is"
    assert "\n" not in line and "your checkpoint file is" not in line


def test_resume_without_a_checkpoint_starts_afresh_without_the_old_events(
        compose_cfg, tmp_path, caplog):
    """Its checkpoint deleted, a run starts from scratch: TensorBoard shows each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny = [*TINY, "model=mlp", "train.tensorboard=true"]
    run(compose_cfg(*tiny, "train.stop_after_iters=2"), tmp_path)
    (tmp_path / CHECKPOINT_FILE).unlink()
    with caplog.at_level("WARNING", logger="odenet.train"):
        m = run(compose_cfg(*tiny, "resume=true"), tmp_path)
    assert m["status"] == "finished"
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("iter/loss")] == [1, 2, 3, 4]
    assert (f"resume=true but there is no checkpoint.pt in {tmp_path}: starting from scratch "
            "(deleted what the earlier start left: metrics.json, history.jsonl, tb)"
            in [r.getMessage() for r in caplog.records])


def test_rebuilt_checkpoint_reproduces_the_test_error(compose_cfg, tmp_path):
    from odenet.data import mnist_loaders
    from odenet.training.tasks import ClassifyTask
    from odenet.training.trainer import evaluate_split as evaluate

    m = run(compose_cfg(*TINY, "model=odenet"), tmp_path)
    ck = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    cfg = compose_cfg(*TINY, "model=odenet")
    net = build_model(ck["config"]["model"], ck["config"]["solver"])
    net.load_state_dict(ck["model"])
    test = mnist_loaders(cfg.data, cfg.seed, "cpu", 0).test
    ev = evaluate(ClassifyTask(), net, test, torch.device("cpu"))
    assert ev["value"] == m["test_error"]
    assert ev["nfe_forward_mean"] == m["test_nfe_forward_mean"]


def _final(out: Path) -> tuple[dict, dict]:
    m = metrics(out)
    ck = load_checkpoint(out / CHECKPOINT_FILE)
    return m, ck["model"]


SAME = ("test_error", "train_error", "nfe_forward_mean", "nfe_backward_mean", "epochs",
        "activation_mib", "activation_block_mib", "test_nfe_forward_mean", "params")


@pytest.mark.parametrize("name", ["odenet", "resnet"])
def test_resume_gives_the_same_final_metrics(name, compose_cfg, tmp_path):
    """Stopped mid-epoch twice and resumed == never stopped (CPU, bit for bit)."""
    args = (*TINY, f"model={name}", "optim.epochs=2", "optim.schedule=onecycle")
    a, b = tmp_path / "straight", tmp_path / "stopped"
    run(compose_cfg(*args), a)
    first = run(compose_cfg(*args, "train.stop_after_iters=2"), b)
    assert first["status"] == "interrupted" and "stop_after_iters" in first["reason"]
    assert load_checkpoint(b / CHECKPOINT_FILE)["batch"] == 2
    second = run(compose_cfg(*args, "resume=true", "train.stop_after_iters=3"), b)
    assert second["status"] == "interrupted" and second["epochs"] == 1
    last = run(compose_cfg(*args, "resume=true"), b)
    assert last["status"] == "finished"
    (ma, wa), (mb, wb) = _final(a), _final(b)
    for k in SAME:
        assert ma[k] == mb[k], k
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ha = [{k: v for k, v in r.items() if k not in ("seconds", "rss_peak_mib", "sec_per_iter",
                                                   "sec_per_test_batch", "train_seconds")}
          for r in history(a)]
    hb = [{k: v for k, v in r.items() if k not in ("seconds", "rss_peak_mib", "sec_per_iter",
                                                   "sec_per_test_batch", "train_seconds")}
          for r in history(b)]
    assert ha == hb  # the history, too, reads as one run (no duplicates after resume)
    assert mb["wall_seconds"] > 0


def test_resume_refuses_a_different_run(compose_cfg, tmp_path):
    run(compose_cfg(*TINY, "model=mlp"), tmp_path)
    with pytest.raises(ConfigError, match="model.name") as info:
        run(compose_cfg(*TINY, "model=resnet", "resume=true"), tmp_path)
    assert "\n" not in str(info.value)
    # more epochs may be asked for: training continues
    m = run(compose_cfg(*TINY, "model=mlp", "resume=true", "optim.epochs=2"), tmp_path)
    assert m["status"] == "finished" and m["epochs"] == 2


def test_resume_refuses_new_epochs_for_a_schedule_fitted_to_them(compose_cfg, tmp_path):
    """One-cycle fitted to 3 epochs, resumed with 4, would splice two schedules (lr 0.0188
    -> 0.0224 at step 14): refused."""
    args = (*TINY, "model=mlp", "optim.schedule=onecycle")
    run(compose_cfg(*args, "optim.epochs=3", "train.stop_after_iters=6"), tmp_path)
    before = (tmp_path / "history.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="optim.epochs=4 but the run has optim.epochs=3, "
                       "and its onecycle schedule is fitted to them") as info:
        run(compose_cfg(*args, "optim.epochs=4", "resume=true"), tmp_path)
    assert "\n" not in str(info.value) and "overwrite=true" in str(info.value)
    assert (tmp_path / "history.jsonl").read_bytes() == before
    assert run(compose_cfg(*args, "optim.epochs=3", "resume=true"), tmp_path)["epochs"] == 3


def test_more_epochs_of_a_constant_schedule_equal_a_longer_run(compose_cfg, tmp_path):
    a, b = tmp_path / "two", tmp_path / "one_then_two"
    run(compose_cfg(*TINY, "model=mlp", "optim.epochs=2"), a)
    run(compose_cfg(*TINY, "model=mlp", "optim.epochs=1"), b)
    m = run(compose_cfg(*TINY, "model=mlp", "optim.epochs=2", "resume=true"), b)
    assert (m["status"], m["epochs"], m["epochs_planned"]) == ("finished", 2, 2)
    (_, wa), (_, wb) = _final(a), _final(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_settings_that_do_not_apply_are_said(compose_cfg, tmp_path, caplog):
    """Solver settings of a model without an ODE block, and more training images than
    MNIST has, are said in the log, not dropped without a word."""
    cfg = compose_cfg(*TINY, "model=mlp", "solver=bosh3", "data.train_size=100000000",
                      "train.max_iters_per_epoch=2")
    with caplog.at_level("WARNING", logger="odenet.train"):
        m = run(cfg, tmp_path)
    said = [r.getMessage() for r in caplog.records]
    assert "model=mlp has no ODE block: solver.method=bosh3 not applied (metrics.json " \
           "records no solver)" in said
    assert "data.train_size=100000000 but the train split holds 60000 images: using " \
           "60000" in said
    assert (m["train_size"], m["solver_method"]) == (60000, None)


def test_a_batch_larger_than_the_train_split_is_the_split_and_scales_the_lr(
        compose_cfg, tmp_path, caplog):
    """One batch of the whole split per epoch: the recipe's lr follows the 100 samples that
    run (0.1 x 100 / 128), not the 5000 asked for."""
    cfg = compose_cfg(*TINY, "model=mlp", "data.train_size=100", "data.batch_size=5000",
                      "optim.epochs=2")
    with caplog.at_level("WARNING", logger="odenet.train"):
        m = run(cfg, tmp_path)
    assert ("data.batch_size=5000 but the train split holds 100 samples: batches of 100, lr "
            "0.078125, optim.base_lr scaled by it") in [r.getMessage() for r in caplog.records]
    assert (m["status"], m["batch_size"], m["train_size"]) == ("finished", 100, 100)
    assert m["lr"] == pytest.approx(0.1 * 100 / 128)
    iters = [r for r in history(tmp_path) if r["kind"] == "iter"]
    assert [r["lr"] for r in iters] == pytest.approx([0.078125, 0.078125])


def test_the_optimizer_settings_are_recorded(compose_cfg, tmp_path):
    """The settings that make a recipe, so a report never counts two recipes as one."""
    cfg = compose_cfg(*TINY, "model=mlp", "optim.epochs=1", "optim.nesterov=true",
                      "optim.weight_decay=5e-4", "optim.momentum=0.8")
    m = run(cfg, tmp_path)
    assert (m["optimizer"], m["momentum"], m["nesterov"], m["weight_decay"]) == \
        ("sgd", 0.8, True, 5e-4)
    assert json.loads((tmp_path / "metrics.json").read_text())["nesterov"] is True


def test_more_threads_than_the_process_may_use_are_said(compose_cfg, tmp_path, caplog,
                                                       monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
    cfg = compose_cfg(*TINY, "model=mlp", "threads=2", "train.stop_after_iters=1")
    before = torch.get_num_threads()
    try:
        with caplog.at_level("WARNING", logger="odenet.train"):
            run(cfg, tmp_path)
    finally:
        torch.set_num_threads(before)
    assert ("threads=2 but this process may use 1 core(s): the threads take turns on them, "
            "which slows every step; threads=1 or fewer runs faster"
            in [r.getMessage() for r in caplog.records])


def test_a_file_that_cannot_be_written_fails_the_run_in_one_line(compose_cfg, tmp_path,
                                                                 caplog, monkeypatch):
    """A full disk at the second epoch's checkpoint: one line naming the file and what is
    kept (the first epoch's checkpoint, and the command that continues it), no traceback."""
    from odenet.training import checkpoint_file as checkpoint
    saves, real_save = [], checkpoint.save

    def save(path, ck):
        saves.append(ck["epoch"])
        if len(saves) == 2:  # as files.write_atomic raises it
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, ck)

    monkeypatch.setattr(checkpoint, "save", save)
    with caplog.at_level("ERROR", logger="odenet.train"):
        m = run(compose_cfg(*TINY, "model=mlp", "optim.epochs=3"), tmp_path)
    ck = tmp_path / "checkpoint.pt"
    assert [(r.getMessage(), r.exc_info) for r in caplog.records] == [(
        f"run failed: cannot write {ck}: No space left on device (epoch 2, iteration 0); kept: "
        f"{ck} of epoch 1, which continues once there is room: odenet train "
        f"hydra.run.dir={tmp_path} resume=true", None)]
    assert (m["status"], m["epochs"], load_checkpoint(ck)["epoch"]) == ("failed", 1, 1)
    assert m["reason"] == f"cannot write {ck}: No space left on device (epoch 2, iteration 0)"


def test_nan_loss_fails_the_run_with_a_reason(compose_cfg, tmp_path):
    m = run(compose_cfg(*TINY, "model=mlp", "optim.lr=1e30"), tmp_path)
    assert m["status"] == "failed" and "non-finite loss" in m["reason"]
    assert metrics(tmp_path)["status"] == "failed"


def test_solver_error_fails_the_run_with_a_reason(compose_cfg, tmp_path):
    m = run(compose_cfg(*TINY, "model=odenet", "solver.max_num_steps=1"), tmp_path)
    assert m["status"] == "failed" and m["reason"].startswith("SolverError: max_num_steps=1")
    assert "\n" not in m["reason"]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(cli_popen, tmp_path, mnist_root):
    out = tmp_path / "run"
    p = cli_popen("train", *TINY, "model=resnet", "optim.epochs=50", f"data.root={mnist_root}",
                  "train.progress=always", f"hydra.run.dir={out}")
    hist, deadline = out / "history.jsonl", time.time() + 120
    while not (hist.is_file() and hist.read_text()):  # training has begun
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM
    line = [ln for ln in (stdout + stderr).splitlines() if "interrupted (SIGTERM" in ln]
    assert line and "checkpoint saved to" in line[0] and "resume=true" in line[0]
    assert "epochs" in stderr  # the tqdm bar was drawn (progress=always)
    m = metrics(out)
    assert m["status"] == "interrupted" and m["reason"].startswith("SIGTERM")
    ck = load_checkpoint(out / CHECKPOINT_FILE)
    assert ck["epoch"] * 4 + ck["batch"] >= 1
    assert (out / "train.log").read_text().count("interrupted (SIGTERM") == 1
    # and it continues where it stopped
    cfg = compose([*TINY, "model=resnet", "optim.epochs=2", f"data.root={mnist_root}",
                   "resume=true"])
    assert run(cfg, out)["status"] == "finished"


def test_sweep_goes_on_after_a_failed_job(cli, tmp_path, mnist_root):
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", *TINY, "model=mlp", "optim.lr=1e30,0.1", f"data.root={mnist_root}",
            f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1, r.stderr  # a job failed: the sweep says so
    m0, m1 = metrics(sweep / "0"), metrics(sweep / "1")
    assert m0["status"] == "failed" and m1["status"] == "finished"
    # its last line names the failed job, not the other one's last epoch
    assert r.stderr.splitlines()[-1] == (
        f"odenet train: error: 1 of 2 sweep jobs failed: job 0 in {sweep / '0'}: "
        f"{m0['reason']}")
    assert (sweep / "1" / ".hydra" / "overrides.yaml").is_file()
    assert (sweep / "multirun.yaml").is_file()


def test_joblib_launcher_runs_jobs_in_parallel_processes(cli, tmp_path, mnist_root):
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
            "model=mlp", "seed=0,1", f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    runs = [metrics(sweep / str(i)) for i in (0, 1)]
    assert [m["seed"] for m in runs] == [0, 1]
    assert all(m["status"] == "finished" for m in runs)
    assert runs[0]["test_error"] is not None


def test_submitit_local_launcher(cli, tmp_path, mnist_root):
    """The same code path as hydra/launcher=submitit_slurm on a SLURM cluster."""
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", "hydra/launcher=submitit_local", *TINY, "model=mlp", "seed=0,1",
            f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}", timeout=600)
    assert r.returncode == 0, r.stderr
    runs = [metrics(sweep / str(i)) for i in (0, 1)]
    assert [m["status"] for m in runs] == ["finished", "finished"]
    assert (sweep / ".submitit").is_dir()


def test_run_accepts_plain_dicts_and_dictconfigs(compose_cfg, tmp_path):
    cfg = compose_cfg(*TINY, "model=mlp")
    m = run(OmegaConf.to_container(cfg), tmp_path)
    assert m["status"] == "finished"


def test_missing_data_stops_before_anything_is_written(compose_cfg, tmp_path):
    from odenet.data import DataError

    with pytest.raises(DataError, match="odenet data"):
        run(compose_cfg(*TINY, "model=mlp", f"data.root={tmp_path / 'none'}"), tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_full_test_set_is_test_size_null(compose_cfg, tmp_path):
    """Contract 2: test_size is null when the whole 10,000-image test set was used."""
    m = run(compose_cfg(*TINY, "model=mlp", "data.test_size=null",
                        "data.test_batch_size=5000", "train.train_eval_size=0"), tmp_path)
    assert m["test_size"] is None and m["status"] == "finished"


def test_a_validation_split_is_scored_and_chooses_nothing_else(compose_cfg, tmp_path):
    m = run(compose_cfg(*TINY, "model=mlp", "data.val_size=100"), tmp_path)
    assert m["val_size"] == 100 and 0 <= m["val_error"] <= 1
    assert history(tmp_path)[-1]["val_error"] == m["val_error"]
    assert m["train_size"] == 128  # the first 128 of the 59,900 left for training
    plain = run(compose_cfg(*TINY, "model=mlp"), tmp_path / "plain")
    assert plain["val_size"] is None and plain["val_error"] is None
    # the held-out images are the last ones: the training run itself is the same
    assert (plain["test_error"], plain["train_error"]) == (m["test_error"], m["train_error"])


@pytest.mark.parametrize("overrides,expected", [
    (["model=rknet", "solver.gradient=checkpoint"], "model=rknet computes its gradients by "
     "backprop, not solver.gradient=checkpoint"),
    (["solver.gradient=backprop"], "for backprop use model=rknet"),
    (["solver.gradient=reversible"], "solver.method=dopri5: gradient='reversible' needs a "
     "reversible method, got 'dopri5'"),
    (["solver=explicit_adams", "solver.gradient=checkpoint"], "replays Runge-Kutta steps"),
    (["solver.gradient=nope"], "solver.gradient='nope' is not one of"),
])
def test_bad_gradient_settings_are_one_line(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")) as info:
        compose(overrides)
    assert "\n" not in str(info.value)


def _sgd_losses_float64(*overrides: str, steps: int = 4) -> list[float]:
    """Losses of `steps` SGD iterations (lr 0.1, momentum 0.9, as the recipe) of a float64
    copy of the model on one fixed batch: float64, so two gradient methods that compute the
    same gradient give the same losses on any CPU (float32 trainings differ in their last
    bits between machines and kernels, and training amplifies that)."""
    torch.manual_seed(0)
    c = compose(list(overrides))
    model = build_model(c.model, c.solver).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_checkpointed_gradients_train_like_backprop_with_less_memory(compose_cfg, tmp_path):
    """solver.gradient=checkpoint is the exact gradient of the discrete solve, like RK-Net's
    backprop through it: the same training (float64, to 1e-10), with the block's
    activations per step only (the trainer's own measurement, float32)."""
    ck = _sgd_losses_float64("model=odenet", "solver.gradient=checkpoint")
    rk = _sgd_losses_float64("model=rknet")
    adj = _sgd_losses_float64("model=odenet")
    assert ck == pytest.approx(rk, rel=1e-10, abs=0)
    assert ck[0] == adj[0] and abs(ck[-1] - adj[-1]) > 1e-8  # the adjoint's gradient is not
    ck = run(compose_cfg(*TINY, "model=odenet", "solver.gradient=checkpoint"), tmp_path / "c")
    rk = run(compose_cfg(*TINY, "model=rknet"), tmp_path / "r")
    assert ck["status"] == rk["status"] == "finished"
    assert (ck["solver_gradient"], ck["solver_adjoint"], rk["solver_gradient"]) == (
        "checkpoint", False, "backprop")
    assert ck["nfe_backward_mean"] > 0 and rk["nfe_backward_mean"] == 0
    assert ck["activation_block_mib"] < rk["activation_block_mib"] / 5


def test_the_reversible_solver_trains_with_flat_memory(compose_cfg, tmp_path):
    m = run(compose_cfg(*TINY, "model=odenet", "solver=adaptive_reversible_heun",
                        "solver.gradient=reversible"), tmp_path)
    assert m["status"] == "finished" and m["solver_gradient"] == "reversible"
    assert m["solver_method"] == "adaptive_reversible_heun" and m["nfe_backward_mean"] > 0
    back = run(compose_cfg(*TINY, "model=rknet", "solver=adaptive_reversible_heun"),
               tmp_path / "b")
    assert m["activation_block_mib"] < back["activation_block_mib"] / 5


@pytest.mark.parametrize("name", ["resnet", "odenet"])
def test_bf16_precision_trains_and_is_part_of_the_run(name, compose_cfg, tmp_path):
    """precision=bf16 trains (the ODE block in fp32 around a bf16 f), is recorded in
    metrics.json, and a resumed run may not switch it (it changes the trajectory)."""
    m = run(compose_cfg(*TINY, f"model={name}", "precision=bf16"), tmp_path)
    assert m["status"] == "finished" and m["precision"] == "bf16"
    assert 0 <= m["test_error"] <= 1 and all(math.isfinite(h["loss"]) for h in history(tmp_path)
                                            if h["kind"] == "iter")
    with pytest.raises(ConfigError, match="precision"):
        run(compose_cfg(*TINY, f"model={name}", "precision=fp32", "resume=true",
                        "optim.epochs=2"), tmp_path)
    with pytest.raises(ConfigError, match="precision='fp16' is not one of: fp32, bf16, auto"):
        compose_cfg("precision=fp16")


@pytest.mark.parametrize("units", [True, False])
def test_auto_precision_is_bf16_only_with_bf16_units(units, compose_cfg, tmp_path, monkeypatch):
    """precision=auto runs bf16 where the device has bf16 units and fp32 where bf16 would
    be emulated (an AVX2-only CPU: ~20x slower); metrics.json and the checkpoint record
    what ran, so a resume compares like with like."""
    import odenet.training.runtime as runtime

    monkeypatch.setattr(runtime, "has_bf16_units", lambda device: units)
    m = run(compose_cfg(*TINY, "model=resnet", "precision=auto"), tmp_path)
    want = "bf16" if units else "fp32"
    assert m["status"] == "finished" and m["precision"] == want
    explicit = run(compose_cfg(*TINY, "model=resnet", f"precision={want}"), tmp_path / "e")
    assert explicit["test_error"] == m["test_error"]  # the same run as asking for it
    assert runtime.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_the_records_take_the_steps_measures_by_name():
    """IterRecord's measures and the EpochRecord fields its iterations make name an
    IterationMeasures field: the trainer copies none of them by hand (record.fill,
    record.add_iteration)."""
    from dataclasses import fields

    step = set(IterationMeasures.__dataclass_fields__)
    assert set(record.names(record.IterRecord, record.MEASURE)) <= step
    made = {f.metadata["of"] for f in fields(record.EpochRecord) if f.metadata["reduce"]}
    assert made and made <= step


def test_progress_round_trips_through_its_checkpoint_state():
    p = Progress()
    p.add(IterationMeasures(loss=4.0, sums={"wrong": 1.0, "count": 32.0}, seconds=0.9,
                            lr=0.1, nfe_forward=26, nfe_backward=20, sample_seconds=0.9))
    assert (p.batch, p.step, p.sums["count"]) == (1, 1, 32.0)
    assert record.epoch_values(p.reduced)["loss"] == 4.0
    assert Progress.from_state(p.state()).state() == p.state()


def test_a_typed_config_is_not_validated_again(compose_cfg, tmp_path, monkeypatch):
    """The config is validated once, at the command layer; the trainer and the
    model builder take the typed Config as it is. A dict is still validated."""
    import odenet.config.schema
    import odenet.models

    cfg = compose_cfg(*TINY, "model=odenet", "train.max_iters_per_epoch=1")

    def again(*args, **kwargs):
        raise AssertionError("validated again")

    for module, name in ((odenet.config.schema, "_validate"), (odenet.models, "model_config"),
                         (odenet.models, "solver_config")):
        monkeypatch.setattr(module, name, again)
    assert run(cfg, tmp_path)["status"] == "finished"
    with pytest.raises(AssertionError, match="validated again"):
        run(OmegaConf.to_container(cfg), tmp_path / "plain")


# ---------------------------------------------------------------- the device's side
def _counted_step(name: str, monkeypatch) -> tuple[dict, dict, dict]:
    """The second train_step of `name` on a random batch (the first prepares the ODE
    block's solve, validating it once): (reads when backward began, reads in all, the
    block's stats); reads: TRAFFIC's (the code's hook) and torch's own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from odenet.models import solver_stats
    from odenet.solvers import TRAFFIC
    from odenet.training.iteration import train_step
    from odenet.training.tasks import ClassifyTask

    class Reads(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Reads.n += str(func) == "aten._local_scalar_dense.default"
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = build_model({"name": name}, {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = (torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    at_backward, backward = {}, torch.Tensor.backward

    def snapshot(self, *a, **k):
        at_backward.update(hook=TRAFFIC.reads - start, torch=Reads.n)
        return backward(self, *a, **k)

    train_step(ClassifyTask(), model, opt, batch, torch.device("cpu"))  # the block prepared
    monkeypatch.setattr(torch.Tensor, "backward", snapshot)
    start = TRAFFIC.reads
    with Reads():
        step = train_step(ClassifyTask(), model, opt, batch, torch.device("cpu"))
    assert math.isfinite(step.loss) and step.sums["count"] == 8
    return at_backward, {"hook": TRAFFIC.reads - start, "torch": Reads.n}, \
        solver_stats(model) or {}


def test_the_iteration_reads_nothing_from_the_device_before_backward(monkeypatch):
    """A read waits for the GPU's queue: before backward only the solver's own (one per
    step attempt and a few per solve, tests/solvers/test_device.py), none in a model
    without one; the loss and the task's sums are read once, after the step."""
    before, total, _ = _counted_step("mlp", monkeypatch)
    assert before == {"hook": 0, "torch": 0} and total == {"hook": 1, "torch": 0}
    before, total, st = _counted_step("odenet", monkeypatch)
    forward = st["steps_accepted"] + st["steps_rejected"] + 4
    backward = st["steps_accepted_backward"] + st["steps_rejected_backward"] + 4
    assert before == {"hook": forward, "torch": forward}
    assert total == {"hook": forward + backward + 1, "torch": forward + backward}


def test_a_non_finite_loss_that_breaks_the_backward_solve_is_named(compose_cfg, tmp_path,
                                                                    monkeypatch):
    """The loss is read after backward: an adjoint solve that fails on its NaN gradients
    still ends the run as a non-finite loss, not as the solver's error."""
    from odenet.training.tasks import ClassifyTask

    monkeypatch.setattr(ClassifyTask, "loss", lambda self, out, batch: torch.nn.functional
                        .cross_entropy(out, batch[1]) * float("nan"))
    m = run(compose_cfg(*TINY, "model=odenet", "train.max_iters_per_epoch=1"), tmp_path)
    assert m["status"] == "failed" and m["reason"].startswith("non-finite loss (nan)")


def test_a_second_run_in_the_process_measures_its_own_memory(compose_cfg, tmp_path):
    """The solver's kept buffers are a run's (none inherited, none left behind), so a second
    run in one process (gpu_check, a sweep's basic launcher) measures what the first did:
    on a CPU the activation census, the GPU peaks null. fp32 ran as IEEE float32."""
    from odenet.solvers import release_buffers

    cfg = compose_cfg(*TINY, "model=odenet", "train.max_iters_per_epoch=2")
    a = run(cfg, tmp_path / "a")
    assert release_buffers() == 0  # nothing kept after the run
    b = run(cfg, tmp_path / "b")
    for m in (a, b):
        assert m["status"] == "finished" and m["float32_math"] == "ieee"
        assert m["cuda_train_peak_mib"] is None and m["cuda_eval_peak_mib"] is None
    assert a["activation_mib"] == b["activation_mib"] > 0
    assert a["activation_block_mib"] == b["activation_block_mib"]
    epoch = [h for h in history(tmp_path / "b") if h["kind"] == "epoch"][0]
    assert epoch["cuda_train_peak_mib"] is None and epoch["cuda_peak_mib"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_second_cuda_run_in_the_process_is_not_inflated(compose_cfg, tmp_path):
    """On a GPU: the training and evaluation peaks of a second run equal the first's; the
    adjoint's training peak lies below backprop's (O(1) against O(NFE))."""
    over = (*TINY, "train.max_iters_per_epoch=2", "device=cuda")
    a = run(compose_cfg(*over, "model=odenet"), tmp_path / "a")
    b = run(compose_cfg(*over, "model=odenet"), tmp_path / "b")
    rk = run(compose_cfg(*over, "model=rknet"), tmp_path / "rk")
    for m in (a, b, rk):
        assert m["status"] == "finished" and m["float32_math"] == "ieee"
        assert 0 < m["cuda_train_peak_mib"] <= m["cuda_peak_mib"]
    assert b["cuda_train_peak_mib"] == pytest.approx(a["cuda_train_peak_mib"], rel=0.01)
    assert b["cuda_eval_peak_mib"] == pytest.approx(a["cuda_eval_peak_mib"], rel=0.01)
    assert a["cuda_train_peak_mib"] < rk["cuda_train_peak_mib"]


def test_a_cpu_run_on_a_gpu_machine_leaves_cuda_alone(compose_cfg, tmp_path, monkeypatch):
    """device=cpu where torch sees a GPU: nothing of the run (RNG states in its checkpoint,
    memory peaks, arithmetic flags) initializes CUDA."""
    def initialize():
        raise AssertionError("CUDA initialized by a CPU run")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "_lazy_init", initialize)
    m = run(compose_cfg(*TINY, "model=odenet", "device=cpu", "train.max_iters_per_epoch=1"),
            tmp_path)
    assert m["status"] == "finished", m["reason"]
    assert "cuda" not in load_checkpoint(tmp_path / CHECKPOINT_FILE)["rng"]
