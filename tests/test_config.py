"""Configs: every group option composes and validates; bad configs end in one clear line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from odenet.cli.app import compose, error_line
from odenet.config.model_registry import MODELS, models_of
from odenet.config.schema import Config, ConfigError, is_typed, model_config, to_config
from odenet.run.record import CLASSIFY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("model", "solver", "data", "optim", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


# options that only make sense for the density task compose within a density experiment
DENSITY_OPTIONS = {("model", "cnf"), ("model", "planar"), ("data", "toy")}


@pytest.mark.parametrize("group,option",
                         [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    pre = ["experiment=cnf_moons"] if (group, option) in DENSITY_OPTIONS else []
    cfg = compose([*pre, f"{group}={option}"])
    assert OmegaConf.is_readonly(cfg)
    if group == "model":
        assert cfg.model.name == option
    if group == "solver":
        assert cfg.solver.method == option
    if group == "experiment":
        assert cfg.experiment_name == option


def test_the_groups_hold_what_the_issue_lists():
    assert options("model") == sorted(MODELS)  # one file per model of the registry
    assert {"paper", "quick", "smoke"} <= set(options("experiment"))
    from odenet.solvers import METHODS

    assert set(options("solver")) == set(METHODS)  # one file per method of the library


@pytest.mark.parametrize("experiment", ["paper", "quick", "smoke"])
@pytest.mark.parametrize("model", models_of(CLASSIFY))
def test_experiments_compose_with_every_model(experiment, model):
    cfg = compose([f"experiment={experiment}", f"model={model}"])
    assert cfg.model.name == model and cfg.experiment_name == experiment


def test_defaults_are_the_papers_recipe():
    c = compose([])
    assert c.model.name == "odenet" and c.solver.method == "dopri5"
    assert c.solver.rtol == c.solver.atol == 1e-3 and c.solver.gradient == "adjoint"
    o = c.optim
    assert (o.name, o.momentum, o.base_lr, o.epochs, list(o.milestones), o.gamma) == (
        "sgd", 0.9, 0.1, 160, [60, 100, 140], 0.1)
    assert o.weight_decay == 0 and c.data.batch_size == 128 and c.data.augment
    assert not c.data.normalize and c.data.train_size is None and c.data.test_size is None
    p = compose(["experiment=paper"])
    assert p.optim.epochs == 160 and p.optim.schedule == "multistep"
    q = compose(["experiment=quick"])
    assert q.data.train_size is None and q.data.test_size is None  # full MNIST
    assert q.optim.epochs <= 6


def test_a_tolerance_float32_resolves_or_no_tolerance_at_all_is_accepted():
    assert compose(["solver.rtol=1e-13"]).solver.atol == 1e-13
    assert compose(["solver.rtol=1e-20", "solver.atol=1e-6"]).solver.rtol == 1e-20
    assert compose(["solver=rk4", "solver.rtol=1e-20"]).solver.method == "rk4"  # fixed grid
    assert compose(["model=mlp", "solver.rtol=1e-20"]).model.name == "mlp"  # no ODE block


def test_atol_follows_rtol_unless_set():
    assert compose(["solver.rtol=1e-2"]).solver.atol == 1e-2
    s = compose(["solver.rtol=1e-2", "solver.atol=1e-4"]).solver
    assert (s.rtol, s.atol) == (1e-2, 1e-4)
    assert compose(["solver=rk4", "solver.rtol=1e-5"]).solver.atol == 1e-5


def test_rknet_is_odenet_without_the_adjoint():
    o, r = compose(["model=odenet"]), compose(["model=rknet"])
    assert (o.solver.gradient, r.solver.gradient) == ("adjoint", "backprop")
    assert OmegaConf.to_container(o.model) == {**OmegaConf.to_container(r.model),
                                               "name": "odenet"}
    assert compose(["model=rknet", "solver=rk4"]).solver.step_size == 0.25
    with pytest.raises(ConfigError, match="model=rknet"):
        compose(["model=rknet", "solver.gradient=adjoint"])
    with pytest.raises(ConfigError, match="model=odenet"):
        compose(["model=odenet", "solver.gradient=backprop"])


def test_mlp_and_resnet_ignore_the_solver_settings():
    from odenet.config.schema import unused_settings

    assert compose(["model=resnet", "solver.gradient=backprop"]).model.name == "resnet"
    # valid, but not applying (sweeps mix models): the trainer says so
    assert unused_settings(compose(["model=mlp", "solver=rk4", "solver.rtol=1e-2"])) == [
        "solver.method=rk4", "solver.rtol=0.01", "solver.step_size=0.25"]
    assert unused_settings(compose(["model=resnet", "solver.gradient=backprop"])) == [
        "solver.gradient=backprop"]
    assert unused_settings(compose(["model=mlp"])) == []
    assert unused_settings(compose(["model=odenet", "solver.rtol=1e-2"])) == []


@pytest.mark.parametrize("overrides,expected", [
    (["solver.rtol=-1"], "solver.rtol must be > 0"),
    (["solver.rtol=abc"], "solver.rtol: Value 'abc'"),
    (["model=nope"], "Could not find 'model/nope' (available: cnf, mlp, odenet, planar, "
                     "resnet, rknet)"),
    (["solver.rtl=1e-3"], "unknown key 'solver.rtl'; did you mean 'solver.rtol'?"),
    (["+solver.rtl=1e-3"], "unknown key 'solver.rtl'; did you mean 'solver.rtol'?"),
    (["rtol=1e-3"], "did you mean 'solver.rtol'?"),
    (["solver.adjoint=true"], "unknown key 'solver.adjoint'"),  # one spelling: solver.gradient
    (["solver.method=vode"], "solver.method='vode' is not one of"),
    # lsoda solves in scipy, outside autograd: the adjoint only
    (["model=rknet", "solver=lsoda"], "solver.method=lsoda: method 'lsoda' solves outside "
     "autograd (in scipy), so gradient='backprop' cannot go through its steps: use "
     "gradient='adjoint' (model=rknet computes its gradients by backprop)"),
    (["solver=lsoda", "solver.gradient=checkpoint"],
     "solver.method=lsoda: method 'lsoda' solves outside autograd (in scipy), so "
     "gradient='checkpoint' cannot go through its steps: use gradient='adjoint'"),
    (["solver=lsoda", "solver.gradient=reversible"],
     "gradient='reversible' cannot go through its steps: use gradient='adjoint'"),
    (["solver.last_step=cut"], "solver.last_step='cut' is not one of"),
    (["model=mlp", "model.compile=true"],
     "'model.compile' is not in the chosen model's config; models that have it: rknet, odenet"),
    (["model=mlp", "+model.compile=true"], "unknown key 'model.compile' for model=mlp (its "
     "keys: name, in_channels, image_size, num_classes, hidden)"),
    (["model=resnet", "+model.widht=3"], "unknown key 'model.widht' for model=resnet; did you "
     "mean 'model.width'?"),
    (["solver=rk4", "solver.step_size=null"], "fixed-grid method"),
    (["optim.schedule=linear"], "optim.schedule='linear' is not one of"),
    (["optim.milestones=[100,60]"], "optim.milestones must be increasing"),
    (["data.batch_size=0"], "data.batch_size must be >= 1"),
    (["seed=0,1"], "sweeping needs -m"),
    (["device=tpu"], "device='tpu'"),
    # values that would fail only once training began: refused up front
    (["seed=99999999999999999999"], "seed must be in [0, 1e+12) (got 99999999999999999999)"),
    (["optim.lr=1e308"], "optim.lr=1e+308 is too large: float32 parameters take at most"),
    (["optim.base_lr=1e38", "data.batch_size=1280"], "data.batch_size=1280 = 1e+39 is too"),
    (["optim.weight_decay=1e300"], "optim.weight_decay=1e+300 is too large"),
    # a value that means nothing is refused for every model, with an ODE block or not
    (["model=mlp", "solver.method=nosuch"], "solver.method='nosuch' is not one of"),
    (["model=mlp", "solver.rtol=-1"], "solver.rtol must be > 0"),
    (["model=resnet", "solver.gradient=nope"], "solver.gradient='nope' is not one of"),
    # what Hydra's grammar takes only quoted: the refusal says how to quote it
    (["hydra.run.dir=runs/ünï/run"], "LexerNoViableAltException: hydra.run.dir=runs/ünï/run "
     "('ü' needs quotes: non-ASCII letters, quotes, #, ! and parentheses are taken only in a "
     "quoted value; write \"hydra.run.dir='runs/ünï/run'\")"),
    (["data.root=/mnt/a#b"], "('#' needs quotes: non-ASCII letters, quotes, #, ! and "
     "parentheses are taken only in a quoted value; write \"data.root='/mnt/a#b'\")"),
    # the ODE block's float32 state cannot be held to less than eps**2
    (["solver.rtol=1e-20"], "solver.rtol=1e-20 and solver.atol=1e-20 are below what float32 "
     "resolves (eps**2 = 1.4e-14, the least error a dopri5 step in float32 can be held to): "
     "raise solver.rtol or solver.atol to at least 1.4e-14"),
    (["model=rknet", "solver=tsit5", "solver.rtol=1e-15", "solver.atol=1e-16"],
     "solver.rtol=1e-15 and solver.atol=1e-16 are below what float32 resolves"),
])
def test_bad_configs_give_one_line(overrides, expected):
    with pytest.raises(Exception) as info:
        compose(overrides)
    line = error_line(info.value)
    assert expected in line
    assert "\n" not in line


@pytest.mark.parametrize("value", ["/tmp/ünï dir#2", "runs/x!", "it's/ü", 'say "ß"',
                                   "ab)"])
def test_the_quoting_a_refusal_suggests_gives_back_the_value(value):
    import shlex

    with pytest.raises(Exception) as info:
        compose([f"data.root={value}"])
    suggested = shlex.split(error_line(info.value).split("; write ", 1)[1][:-1])
    assert compose(suggested).data.root == value


def test_every_accepted_seed_seeds_the_data():
    from odenet.config.schema import SEED_LIMIT
    from odenet.data.batches import epoch_generator

    assert compose([f"seed={SEED_LIMIT - 1}"]).seed == SEED_LIMIT - 1
    epoch_generator(SEED_LIMIT - 1, 10**6 - 1)  # torch takes it: within 64 bits


def test_lsoda_trains_an_odenet_by_the_adjoint_and_needs_scipy(monkeypatch):
    cfg = compose(["solver=lsoda", "solver.adjoint_norm=seminorm"])
    assert (cfg.solver.method, cfg.solver.gradient, cfg.solver.atol) == ("lsoda", "adjoint", 1e-3)
    monkeypatch.setitem(sys.modules, "scipy", None)  # as if the lsoda extra were missing
    with pytest.raises(ConfigError) as info:
        compose(["solver=lsoda"])
    assert str(info.value) == ("solver.method=lsoda: method 'lsoda' needs scipy, which is not "
                               "installed: pip install 'odenet[lsoda]'")


def test_schema_rejects_unknown_keys_and_wrong_types_from_any_source():
    good = OmegaConf.to_container(compose([]))
    with pytest.raises(ConfigError, match="unknown key 'model.widht' for model=odenet; did you mean 'model.width'"):
        to_config({**good, "model": {**good["model"], "widht": 3}})
    with pytest.raises(ConfigError, match="seed"):
        to_config({**good, "seed": "x"})
    assert isinstance(to_config(good), type(compose([])))
    # a checkpoint's plain dict (or a part of it) rebuilds the same model config
    assert model_config({"name": "rknet"}).width == 64
    assert OmegaConf.structured(Config).model.name == "odenet"


def test_bad_command_lines_exit_nonzero_with_one_line(cli_popen, tmp_path):
    """The command lines of the issue, each in a fresh process (run concurrently)."""
    cases = {
        "solver.rtol=-1": "solver.rtol must be > 0",
        "solver.rtol=abc": "could not be converted to Float",
        "model=nope": "Could not find 'model/nope'",
        "solver.rtl=1e-3": "did you mean 'solver.rtol'?",
        f"data.root={tmp_path / 'nowhere'}": "MNIST not found in",
        "seed=99999999999999999999": "seed must be in [0, 1e+12)",
        "optim.lr=1e308": "optim.lr=1e+308 is too large",
        "solver.rtol=1e-19": "solver.rtol=1e-19 and solver.atol=1e-19 are below what float32",
        "data.root=dätä": "('ä' needs quotes: ",
    }
    procs = {arg: cli_popen("train", arg, f"hydra.run.dir={tmp_path / 'run'}")
             for arg in cases}
    for arg, expected in cases.items():
        out, err = procs[arg].communicate(timeout=120)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert procs[arg].returncode == 2, (arg, err)
        assert len(lines) == 1, (arg, err)
        assert lines[0].startswith("odenet train: error: ") and expected in lines[0], lines
    assert not (tmp_path / "run").exists()  # nothing was started


def test_cli_dispatcher(cli):
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "gradients", "table", "figures", "reproduce", "data"):
        assert f"\n  {cmd} " in r.stdout
    r = cli("nope")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "odenet: unknown command 'nope'; valid commands: train, evaluate, gradients, table, "
        "figures, reproduce, data"]


def test_dispatch_table_is_lazy_and_complete():
    from odenet.cli import dispatch as cli
    assert cli.COMMANDS["evaluate"][0] == "odenet.analysis.evaluate:main"
    assert cli.COMMANDS["gradients"][0] == "odenet.analysis.gradients:main"
    assert cli.COMMANDS["table"][0] == "odenet.report.table:main"
    assert cli.COMMANDS["figures"][0] == "odenet.report.figure_registry:main"
    assert cli.COMMANDS["reproduce"][0] == "odenet.reproduce:main"
    assert cli.COMMANDS["train"][0] == "odenet.cli.app:train_main"
    assert cli.COMMANDS["data"][0] == "odenet.data:main"
    src = Path(cli.__file__).read_text()  # commands are imported only when they run
    assert "import torch" not in src and "import hydra" not in src


def test_train_help_lists_config_groups(cli):
    r = cli("train", "--help")
    assert r.returncode == 0
    for group in ("model:", "solver:", "experiment:"):
        assert group in r.stdout
    assert "  model: cnf, mlp, odenet*, planar, resnet, rknet" in r.stdout


def test_train_help_gives_every_setting_its_value_and_meaning():
    """--help gives each setting its value and its meaning (the comment in configs/)."""
    from odenet.cli.app import train_help

    text = train_help([])
    assert "  solver.rtol=0.001            relative tolerance of the adaptive step control" in text
    assert "  seed=0                       seeds torch, numpy and random" in text
    assert "  train.max_iters_per_epoch=null\n" + " " * 31 + "cut each epoch" in text
    lines = text.split("\nSettings")[1].splitlines()[1:]
    settings = [i for i, ln in enumerate(lines) if not ln.startswith("   ")]
    keys = {lines[i].split("=", 1)[0].strip().lstrip("+") for i in settings}

    def leaves(node, prefix=""):
        return {k for key, v in node.items()
                for k in (leaves(v, f"{prefix}{key}.") if isinstance(v, dict) else [prefix + key])}

    assert keys == leaves(OmegaConf.to_container(compose([])))
    for i in settings:  # a meaning on the line or on the next, indented
        assert len(lines[i]) > 31 or lines[i + 1].startswith(" " * 31), lines[i]
    resnet = train_help(["model=resnet", "optim=adam"])
    assert "  model.width=" in resnet and "  optim.lr=0.001               peak learning rate" \
        in resnet


def test_train_help_describes_each_preset_and_where_a_run_goes():
    from odenet.cli.app import train_help

    text = train_help([])
    presets = text.split("Experiment presets")[1].split("\n\n")[0].splitlines()[1:]
    named = [ln.split()[0] for ln in presets if not ln.startswith(" " * 31)]
    assert named == options("experiment")
    assert all(len(ln) > 31 for ln in presets)  # each with a description on its line
    assert "  smoke                        Seconds, for tests and a first look: 256 training " \
        "and 200 test\n" in text
    assert "  hydra.run.dir=outputs/runs/${now:%Y-%m-%d}/${now:%H-%M-%S}_${model.name}\n" + \
        " " * 31 + "a run's directory: its checkpoint.pt" in text
    assert "'hydra.run.dir=\"runs/ü\"'" in text
    assert "x0.1 at epochs 60, 100 and 140 of 160, no weight decay" in " ".join(text.split())
    assert "140, 160 epochs" not in text and "issue" not in text


@pytest.mark.parametrize("option", options("experiment_model"))
def test_per_model_experiment_deltas_apply_automatically(option):
    experiment, model = option.rsplit("_", 1)
    with_delta = compose([f"experiment={experiment}", f"model={model}"])
    with initialize_config_dir(str(CONFIGS), version_base=None):  # its defaults resolved
        # composed alone, a group's file lands under its group's name
        delta = hydra_compose(config_name=f"experiment_model/{option}").experiment_model
    for section, values in delta.items():
        if not OmegaConf.is_config(values):  # a top-level setting, e.g. precision
            assert with_delta[section] == values
            continue
        for key, value in values.items():
            assert with_delta[section][key] == value
    assert compose([f"experiment={experiment}", "model=odenet"]).optim.epochs != \
        with_delta.optim.epochs or "optim" not in delta
    # the command line still wins
    assert compose([f"experiment={experiment}", f"model={model}",
                    "optim.epochs=3"]).optim.epochs == 3


def test_yaml_and_schema_defaults_agree():
    """Defaults are written in configs/ and in the schemas (which also fill settings an
    old checkpoint lacks): composing the default files gives the schemas' defaults."""

    assert OmegaConf.to_container(compose([])) == OmegaConf.to_container(to_config({}))
    for name, spec in MODELS.items():
        pre = ["experiment=cnf_moons"] if spec.task == "density" else []
        assert OmegaConf.to_container(compose([*pre, f"model={name}"]).model) == \
            OmegaConf.to_container(model_config({"name": name})), name


def test_version_and_no_shell_completion(cli):
    import odenet

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"odenet {odenet.__version__}"
    r = cli("train", "-sc", "install=bash")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no shell completion" in r.stderr
    r = cli("train", "-m", "seed=0,1", "--cfg", "job")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exclude each other" in r.stderr
    r = cli("train", "--hydra-help")
    assert r.returncode == 0 and "--multirun" in r.stdout
    assert "install=bash" not in r.stdout  # Hydra's own help advertises a broken completion


def test_evaluate_chooses_the_device_as_training_does():
    from odenet.analysis.evaluate import EvaluateConfig

    assert EvaluateConfig().device == "auto"
    assert OmegaConf.load(CONFIGS / "evaluate.yaml").device == "auto"


def test_a_config_to_config_made_is_handed_down_as_it_is_and_a_copy_is_validated():
    """Validated once; a merged copy (read-only and typed like the original, but
    holding anything) is not taken on trust."""
    c = compose([])
    assert is_typed(c) and to_config(c) is c
    bad = OmegaConf.merge(c, {"solver": {"rtol": -1.0}})
    assert not is_typed(bad) and not is_typed(OmegaConf.to_container(c))
    with pytest.raises(ConfigError, match=r"solver.rtol must be > 0 \(got -1.0\)"):
        to_config(bad)
