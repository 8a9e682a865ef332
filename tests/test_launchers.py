"""configs/hydra/launcher/: the submitit launchers with a time limit that a paper-scale run
fits in (the plugin's own stop every job after 60 minutes)."""

from __future__ import annotations

import json

import pytest
import yaml

PAPER_TIMEOUT_MIN = 1440  # 160 epochs: 4-16 h per model on 2 CPU cores


def _launcher(name: str):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="odenet.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={name}"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg.hydra.launcher


@pytest.mark.parametrize("name, target", [("slurm", "SlurmLauncher"), ("local", "LocalLauncher")])
def test_launcher_fits_a_paper_scale_run(name, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = _launcher(name)
    assert launcher._target_.endswith(f"submitit_launcher.{target}")
    assert launcher.timeout_min == PAPER_TIMEOUT_MIN
    assert _launcher(f"submitit_{name}").timeout_min == 60  # what it replaces


def test_local_launcher_runs_with_its_timeout(cli, tmp_path, mnist_root):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", "hydra/launcher=local", "experiment=smoke", "model=mlp",
            "data.train_size=128", "data.test_size=64", "train.train_eval_size=64",
            "train.tensorboard=false", f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}",
            timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "finished"
    launched = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launched["timeout_min"] == PAPER_TIMEOUT_MIN
    assert (sweep / ".submitit").is_dir()
