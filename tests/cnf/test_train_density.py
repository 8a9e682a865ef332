"""The density task through the shared trainer: `odenet train experiment=cnf_moons`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from odenet.cli.app import compose
from odenet.config.schema import ConfigError

# a tiny budget: 2 epochs of 4 batches of 128 points, fixed-grid RK4 (fast, deterministic)
TINY = ["data.train_size=512", "data.test_size=500", "data.batch_size=128",
        "data.test_batch_size=250", "optim.epochs=2", "optim.lr=1e-2",
        "train.train_eval_size=256", "train.tensorboard=false", "train.log_every=1",
        "solver.method=rk4", "solver.step_size=0.25"]
SMALL_CNF = ["model.width=16", "model.hidden=16"]


@pytest.mark.parametrize("experiment", ["cnf_moons", "cnf_circles", "cnf_8gaussians",
                                        "cnf_checkerboard", "cnf_pinwheel", "cnf_2spirals"])
def test_experiments_compose(experiment):
    c = compose([f"experiment={experiment}"])
    assert c.model.name == "cnf" and c.model.field == "hyper"
    assert c.data.name == experiment.removeprefix("cnf_") and c.optim.name == "adam"
    assert c.solver.gradient == "adjoint" and c.solver.atol == c.solver.rtol
    p = compose([f"experiment={experiment}", "model=planar"])
    assert p.model.name == "planar" and p.model.layers == 32
    # the same budget for both: data, batch, epochs, optimizer
    assert (p.data, p.optim) == (c.data, c.optim)


@pytest.mark.parametrize("overrides,expected", [
    (["model=cnf"], "experiment=cnf_moons"),
    (["experiment=cnf_moons", "model=odenet"], "model=odenet learns MNIST"),
    (["experiment=cnf_moons", "data.name=mnist"], "data.name"),
    (["experiment=cnf_moons", "model.trace=approx"], "model.trace"),
    (["experiment=cnf_moons", "model.field=resnet"], "model.field"),
    (["experiment=cnf_moons", "model.base_std=0"], "model.base_std"),
])
def test_bad_density_configs_are_one_line_errors(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        compose(overrides)


def _run(tmp_path: Path, *overrides: str) -> tuple[dict, Path]:
    from odenet.training.trainer import run

    out = tmp_path / "_".join(o.replace("=", "-") for o in overrides) if overrides else tmp_path
    m = run(compose(["experiment=cnf_moons", *TINY, *overrides]), out)
    return m, out


def test_cnf_and_planar_train_log_and_lower_the_nll(tmp_path):
    from odenet.cnf.data import toy_loaders
    from odenet.models import build_model as build_density_model
    from odenet.training.runtime import seed_everything

    cfg = compose(["experiment=cnf_moons", *TINY, *SMALL_CNF])
    seed_everything(cfg.seed)
    init = build_density_model(cfg.model, cfg.solver).eval()
    test = toy_loaders(cfg.data, cfg.seed).test
    with torch.no_grad():
        nll0 = -torch.cat([init.log_prob(x) for (x,) in test]).mean().item()

    m, out = _run(tmp_path, *SMALL_CNF)
    assert m["status"] == "finished", m["reason"]
    assert m["model"] == "cnf" and m["experiment"] == "cnf_moons" and m["task"] == "density"
    assert m["test_nll"] < nll0 - 0.05  # a short run lowers the test NLL
    assert math.isfinite(m["train_nll"]) and m["test_error"] is None
    assert m["nfe_forward_mean"] == 16 and m["nfe_backward_mean"] == 16  # RK4, 4 steps
    assert m["solver_adjoint"] is True and m["activation_block_mib"] is not None
    assert m["sec_per_iter"] > 0 and m["rss_peak_mib"] > 0 and m["params"] > 0
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in hist if h["kind"] == "epoch"]
    assert len(epochs) == 2 and all("test_nll" in e for e in epochs)
    assert all(h["nfe_forward"] == 16 for h in hist if h["kind"] == "iter")

    p, pout = _run(tmp_path, "model=planar")
    assert p["status"] == "finished" and p["model"] == "planar"
    assert p["nfe_forward_mean"] is None and p["solver_method"] is None
    assert math.isfinite(p["test_nll"])

    # the checkpoints rebuild the models; `odenet figures` draws from them
    from odenet.report.figure_registry import write_figures
    from odenet.report.runs import load_runs
    from odenet.training.checkpoint_file import load_model

    model, saved, _ = load_model(out / "checkpoint.pt")
    assert saved["model"]["name"] == "cnf"
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(torch.zeros(3, 2))).all()
    written, skipped = write_figures(load_runs([tmp_path])[0], tmp_path / "fig")
    assert {"density_moons", "flow_moons"} <= set(written)
    assert "fig3c" in skipped and "fig3d" in skipped  # density runs stay out of Figure 3
    for name in ("density_moons", "flow_moons"):
        assert written[name].stat().st_size > 10_000
