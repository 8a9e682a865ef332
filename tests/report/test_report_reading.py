"""Reports read every run they can: paths relative to the directory given,
the density models' own table, repeats of one seed, evaluations of a changed checkpoint
left out, the memory fit y = a·x against the measured iteration's NFE."""

from __future__ import annotations

import csv
import json

import pytest
from fakeruns import evaluation_record, history_records

from odenet.report import figure_registry as registry
from odenet.report import load_runs
from odenet.report import mnist_drawing as D
from odenet.report import mnist_figures as F
from odenet.report.runs import file_id
from odenet.report.table import build_rows
from odenet.report.table import main as table_main
from odenet.run import record


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _files(d):
    return sorted(p.name for p in d.iterdir())


# ---------------------------------------------------------------- relative paths
@pytest.fixture
def mixed(make_run, tmp_path):
    make_run("ode0", seed=0, history=history_records(), evaluation=evaluation_record())
    make_run("sub/ode1", seed=1, history=history_records())
    make_run("rk", model="rknet", solver_adjoint=False, nfe_backward_mean=0.0,
             activation_block_mib=180.0)
    make_run("res", model="resnet", activation_block_mib=30.0)
    make_run("failed", seed=2, status="failed", reason="NaN loss")
    bad = tmp_path / "outputs" / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{")
    return tmp_path / "outputs"


def test_table_paths_are_relative_to_the_directory_given(mixed, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)  # the directory as given: "outputs"
    out = tmp_path / "rep"
    assert table_main(["outputs", f"out={out}"]) == 0
    std = capsys.readouterr()
    assert std.out.count("\n") == 1 and "invalid file(s) listed" in std.out
    assert _files(out) == ["excluded_runs.csv", "table.csv", "table.md"]
    for name in _files(out):  # no path of this machine in any file written
        assert str(tmp_path) not in (out / name).read_text(), name
    ode = next(r for r in _csv(out / "table.csv") if r["model"] == "odenet")
    assert ode["run_dirs"] == "ode0;sub/ode1"
    assert [(r["run_dir"], r["status"]) for r in _csv(out / "excluded_runs.csv")] == [
        ("failed", "failed"), ("bad/metrics.json", "invalid")]
    md = (out / "table.md").read_text()
    assert "below: outputs." in md and "Paths relative to outputs." in md
    assert "| failed | odenet |" in md and "| bad/metrics.json | not valid JSON" in md


def test_several_directories_paths_relative_to_their_common_directory(make_run, tmp_path):
    make_run("a/ode", seed=0)
    make_run("b/ode", seed=1)
    runs, _ = load_runs([tmp_path / "outputs" / "a", tmp_path / "outputs" / "b"])
    assert [r.name for r in runs] == ["a/ode", "b/ode"]
    assert {r.base for r in runs} == {str(tmp_path / "outputs")}
    [run], _ = load_runs([tmp_path / "outputs" / "a" / "ode" / "metrics.json"])
    assert run.name == "."


def test_figure_csvs_paths_are_relative(mixed, tmp_path, capsys):
    out = tmp_path / "figs"
    assert registry.main([str(mixed), f"out={out}",
                          "only=[fig3a,fig3d,memory]"]) == 0
    assert "wrote fig3a.png, fig3d.png, memory.png (+ CSV)" in capsys.readouterr().out
    assert _files(out) == ["fig3a.csv", "fig3a.png", "fig3d.csv", "fig3d.png",
                           "memory.csv", "memory.png"]
    for name in ("fig3a.csv", "fig3d.csv", "memory.csv"):
        assert str(tmp_path) not in (out / name).read_text(), name
    assert {r["run_dir"] for r in _csv(out / "memory.csv")} == {"ode0", "sub/ode1", "rk",
                                                                 "res"}
    assert {r["run_dir"] for r in _csv(out / "fig3a.csv")} == {"ode0"}


# ---------------------------------------------------------------- density runs
def _density(make_run):
    make_run("cnf0", model="cnf", task=record.DENSITY, experiment="cnf_moons", seed=0,
             test_nll=2.40, train_nll=2.38, params=15904, solver_rtol=1e-4,
             solver_atol=1e-4)
    make_run("cnf1", model="cnf", task=record.DENSITY, experiment="cnf_moons", seed=1,
             test_nll=2.42, train_nll=2.39, params=15904, solver_rtol=1e-4,
             solver_atol=1e-4)
    make_run("planar0", model="planar", task=record.DENSITY, experiment="cnf_moons",
             test_nll=2.41, params=160, nfe_forward_mean=None, nfe_backward_mean=None,
             solver_method=None)
    make_run("cnf_failed", model="cnf", task=record.DENSITY, status="failed",
             reason="SolverError: max_num_steps")


def test_density_runs_get_their_own_table_not_an_empty_table1(make_run, tmp_path, capsys):
    _density(make_run)
    out = tmp_path / "rep"
    assert table_main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    msg = capsys.readouterr().out
    assert msg.count("\n") == 1
    assert "2 row(s) from 3 finished run(s) (2 of density models), 1 not finished" in msg
    assert msg.rstrip().endswith(f"-> {out / 'table.md'}, {out / 'table_density.csv'}")
    assert _files(out) == ["excluded_runs.csv", "table.md", "table_density.csv"]
    md = (out / "table.md").read_text()
    assert md.startswith("# Density models on 2-D data\n") and "# Table 1" not in md
    assert "Test error" not in md
    cnf = next(x for x in md.splitlines() if x.startswith("| CNF |"))
    cells = [c.strip() for c in cnf.strip("|").split("|")]
    assert cells[1] == "dopri5 tol=1e-4 adjoint" and cells[3] == "0, 1"
    assert cells[4] == "2.4100 ± 0.0141" and cells[5] == "2.3850 ± 0.0071"
    assert cells[6] == "20.0 ± 0.0" and cells[9] == "15,904"
    planar = next(x for x in md.splitlines() if x.startswith("| planar flow |"))
    assert "| - | - |" in planar  # no NFE without an ODE block
    assert "SolverError: max_num_steps" in md.split("## Runs not in the table")[1]
    rows = _csv(out / "table_density.csv")
    assert [r["model"] for r in rows] == ["cnf", "planar"]
    assert float(rows[0]["test_nll_mean"]) == pytest.approx(2.41)
    assert rows[0]["run_dirs"] == "cnf0;cnf1" and "test_error_mean" not in rows[0]
    assert [r["run_dir"] for r in _csv(out / "excluded_runs.csv")] == ["cnf_failed"]


def test_mnist_and_density_runs_two_tables(make_run, tmp_path, capsys):
    _density(make_run)
    make_run("ode", seed=0)
    out = tmp_path / "rep"
    assert table_main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    assert "3 row(s) from 4 finished run(s) (2 of density models)" in capsys.readouterr().out
    assert _files(out) == ["excluded_runs.csv", "table.csv", "table.md", "table_density.csv"]
    md = (out / "table.md").read_text()
    assert md.startswith("# Table 1: MNIST") and "\n## Density models on 2-D data\n" in md
    assert [r["model"] for r in _csv(out / "table.csv")] == ["odenet"]


# ---------------------------------------------------------------- repeats of a seed
def test_repeats_of_one_seed_are_not_independent_seeds(make_run, tmp_path, capsys):
    make_run("a", seed=0, test_error=0.01)
    make_run("b", seed=0, test_error=0.03)  # the same seed again
    make_run("c", seed=1, test_error=0.04)
    make_run("d", seed=5, test_error=0.02, solver_rtol=1e-1, solver_atol=1e-1)
    make_run("e", seed=5, test_error=0.04, solver_rtol=1e-1, solver_atol=1e-1)
    [loose, row], _ = build_rows(load_runs([tmp_path / "outputs"])[0])
    # seed 0's runs averaged (0.02), then over the two seeds: mean 0.03, std of (0.02, 0.04)
    assert row.stats["test_error"].values == pytest.approx([0.02, 0.04])
    assert row.stats["test_error"].std == pytest.approx(0.0141421356)
    assert row.seeds_text == "0 (x2), 1"
    assert loose.seeds_text == "5 (x2)" and loose.stats["test_error"].std is None
    out = tmp_path / "rep"
    assert table_main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    assert "2 row(s) from 5 finished run(s), 0 not finished" in capsys.readouterr().out
    md = (out / "table.md").read_text()
    line = next(x for x in md.splitlines() if "tol=1e-3" in x)
    assert "| 0 (x2), 1 | 2 | 3.00 ± 1.41 | 0.42 | no (2.00–4.00) |" in line  # n: 2 seeds
    line = next(x for x in md.splitlines() if "tol=0.1" in x)
    assert "| 5 (x2) | 1 | 3.00 | 0.42 | – |" in line  # one seed: no std, no spread
    rows = {r["solver_rtol"]: r for r in _csv(out / "table.csv")}
    assert (rows["0.001"]["n_runs"], rows["0.001"]["n_seeds"], rows["0.001"]["seeds"]) == \
        ("3", "2", "0;0;1")
    assert rows["0.1"]["test_error_std"] == ""


# ---------------------------------------------------------------- stale evaluations
def _evaluated_run(make_run, content=b"weights v1"):
    d = make_run("ode", history=history_records())
    (d / "checkpoint.pt").write_bytes(content)
    ev = evaluation_record()
    ev["checkpoint_file"] = file_id(d / "checkpoint.pt")
    (d / "evaluation.json").write_text(json.dumps(ev))
    return d


def test_evaluation_of_the_current_checkpoint_is_used(make_run, tmp_path, capsys):
    _evaluated_run(make_run)
    out = tmp_path / "figs"
    assert registry.main([str(tmp_path / "outputs"), f"out={out}",
                          "only=[fig3a,fig3b]"]) == 0
    std = capsys.readouterr()
    assert std.err == "" and _files(out) == ["fig3a.csv", "fig3a.png", "fig3b.csv",
                                             "fig3b.png"]


def test_evaluation_of_a_changed_checkpoint_is_left_out(make_run, tmp_path, capsys):
    d = _evaluated_run(make_run)
    (d / "checkpoint.pt").write_bytes(b"weights v2")  # retrained: same size, other bytes
    out = tmp_path / "figs"
    assert registry.main([str(tmp_path / "outputs"), f"out={out}",
                          "only=[fig3a,fig3b]"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("odenet figures: fig3a: left out ode/evaluation.json: checkpoint.pt "
                      "changed since it was evaluated (size or SHA-256 differ); rerun "
                      "`odenet evaluate checkpoint=RUN_DIR/checkpoint.pt`")
    assert err[1].startswith("odenet figures: fig3b: left out ode/evaluation.json")
    assert "fig3a skipped" in err[2] and "no figure could be drawn" in err[-1]
    assert not out.exists()
    # the other figures still read the run
    written, _ = registry.write_figures(load_runs([tmp_path / "outputs"])[0], out, ["fig3d"])
    assert list(written) == ["fig3d"]


def test_evaluation_without_checkpoint_identity_is_used(make_run, tmp_path):
    d = make_run("ode", evaluation=evaluation_record())  # written before the field
    (d / "checkpoint.pt").write_bytes(b"anything")
    [run], _ = load_runs([tmp_path / "outputs"])
    assert run.evaluation is not None and run.evaluation_skipped is None


def test_table_ignores_evaluations(make_run, tmp_path, capsys):
    d = make_run("ode")
    (d / "evaluation.json").write_text("[]")  # broken: a figure's input, not the table's
    out = tmp_path / "rep"
    assert table_main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    std = capsys.readouterr()
    assert std.err == "" and "1 row(s) from 1 finished run(s)" in std.out


# ---------------------------------------------------------------- the memory figure
def test_memory_x_is_the_measured_iterations_nfe(make_run, tmp_path):
    make_run("rk_new", model="rknet", solver_adjoint=False, nfe_forward_mean=25.0,
             activation_nfe_forward=20, activation_block_mib=160.0)
    make_run("rk_old", model="rknet", solver_adjoint=False, nfe_forward_mean=40.0,
             activation_block_mib=320.0)  # a record from before activation_nfe_forward
    rows = {r["run_dir"]: r for r in F.memory_rows(load_runs([tmp_path / "outputs"])[0])}
    assert (rows["rk_new"]["x"], rows["rk_new"]["x_from"]) == (20, "activation_nfe_forward")
    assert (rows["rk_old"]["x"], rows["rk_old"]["x_from"]) == (40, "nfe_forward_mean")


def test_memory_fit_is_drawn_as_y_equals_ax(make_run, tmp_path, capsys):
    make_run("rk20", model="rknet", solver_adjoint=False, activation_nfe_forward=20,
             activation_block_mib=160.0)
    make_run("rk40", model="rknet", solver_adjoint=False, activation_nfe_forward=40,
             activation_block_mib=320.0)
    make_run("ode", activation_nfe_forward=30, activation_block_mib=3.0)
    rows = F.memory_rows(load_runs([tmp_path / "outputs"])[0])
    fig = D.draw_memory(rows, tmp_path / "memory.png")
    ax = fig.axes[0]
    [fit] = [line for line in ax.get_lines() if line.get_label().startswith("fit: y = ")]
    assert fit.get_label() == "fit: y = 8.00·x"
    xs, ys = fit.get_xdata(), fit.get_ydata()
    assert len(xs) > 10  # a curve on the log axis, not a two-point segment
    assert min(xs) == pytest.approx(10) and max(xs) == pytest.approx(42)
    assert all(y == pytest.approx(8.0 * x) for x, y in zip(xs, ys))
    assert ax.get_yscale() == "log"
    out = tmp_path / "figs"
    assert registry.main([str(tmp_path / "outputs"), f"out={out}",
                          "only=memory"]) == 0
    assert capsys.readouterr().out.strip() == \
        f"odenet figures: wrote memory.png (+ CSV) to {out}"
    assert _files(out) == ["memory.csv", "memory.png"]

