"""odenet figures: the data behind each figure, the PNGs, skipping what has no data."""

from __future__ import annotations

import csv

import pytest
from fakeruns import evaluation_record, history_records

from odenet.report import figure_registry as registry
from odenet.report import load_runs
from odenet.report import mnist_drawing as D
from odenet.report import mnist_figures as F
from odenet.run.record import CLASSIFY

# Figure 3 and memory: the registry's figures of MNIST runs
FIG3 = tuple(f.name for f in registry.of_task(CLASSIFY))


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png_size(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    return img.shape[1], img.shape[0]


@pytest.fixture
def runs(make_run, tmp_path):
    make_run("ode_adj", history=history_records(epochs=2, iters=4, nfe_f=(20, 26),
                                                nfe_b=(26, 32), first_epoch=1,
                                                val_error=(0.02, 0.01),
                                                ema_val_error=(0.015, 0.008)),
             evaluation=evaluation_record(), val_size=10000, ema_decay=0.999, threads=2)
    make_run("ode_semi", solver_adjoint_norm="seminorm", solver_rtol=1e-2, solver_atol=1e-2,
             history=history_records(epochs=1, iters=2, nfe_f=(14,), nfe_b=(8,)))
    make_run("rk_20", model="rknet", solver_adjoint=False, nfe_forward_mean=20.0,
             activation_block_mib=184.0, history=history_records(nfe_b=(0,)))
    make_run("rk_40", model="rknet", solver_adjoint=False, nfe_forward_mean=40.0,
             activation_block_mib=368.0, solver_rtol=1e-5, solver_atol=1e-5)
    make_run("res", model="resnet", activation_block_mib=30.0)
    make_run("mlp", model="mlp", activation_block_mib=None)
    # unfinished runs' iterations must not show up
    make_run("ode_failed", status="failed", reason="NaN",
             history=history_records(nfe_f=(99,), nfe_b=(99,)))
    return load_runs([tmp_path / "outputs"])[0]


def test_fig3ab_rows(runs):
    rows = F.fig3ab_rows(runs)
    assert [r["nfe_forward_mean"] for r in rows] == [14, 20, 32, 50]
    assert [r["numerical_error"] for r in rows] == [1e-2, 1e-3, 1e-4, 1e-5]
    assert [r["relative_time"] for r in rows] == pytest.approx([1.0, 1.4, 2.2, 3.4])
    assert [r["relative_cpu_time"] for r in rows] == pytest.approx([1.0, 1.4, 2.2, 3.4])
    assert [r["relative_block_time"] for r in rows] == pytest.approx([1.0, 1.4, 2.2, 3.4])
    assert rows[0]["rtol"] == pytest.approx(0.1)


def test_tradeoff_rows_are_the_validation_error_per_training_core_second(runs):
    rows = F.tradeoff_rows(runs)  # the one run with a validation split
    assert [r["epoch"] for r in rows] == [2, 3]  # its epochs 1 and 2, counted from 1
    assert [r["val_error"] for r in rows] == [0.015, 0.008]  # the average's: it kept one
    assert [r["core_seconds"] for r in rows] == [180.0, 360.0]  # 90 s x 2 threads, summed
    assert [r["forward_equivalents"] for r in rows] == [20 + 3 * 26, 22 + 3 * 26]
    assert rows[0]["recipe"].startswith("odenet dopri5") and "EMA 0.999" in rows[0]["recipe"]


def test_fig3c_rows_count_iterations_of_adjoint_runs_only(runs):
    rows = F.fig3c_rows(runs)
    got = {(r["variant"], r["rtol"], r["nfe_forward"], r["nfe_backward"]): r["iterations"]
           for r in rows}
    assert got == {
        ("dopri5 adjoint", "1e-3", 20, 26): 4,   # 2 epochs x (iters 0, 2)
        ("dopri5 adjoint", "1e-3", 26, 32): 4,
        ("dopri5 adjoint, seminorm", "1e-2", 14, 8): 2,
    }  # RK-Net (NFE-B 0) and the failed run (99) are absent


def test_fig3c_one_panel_per_solver_with_its_ratio(make_run, tmp_path):
    make_run("dp", history=history_records(nfe_f=(20,), nfe_b=(18,)))
    make_run("ls", solver_method="lsoda", history=history_records(nfe_f=(30,), nfe_b=(15,)))
    rows = F.fig3c_rows(load_runs([tmp_path / "outputs"])[0])
    assert {r["solver"] for r in rows} == {"dopri5", "lsoda"}
    assert F.nfe_ratio([r for r in rows if r["solver"] == "lsoda"]) == 0.5
    fig = D.draw_fig3c(rows, tmp_path / "c.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["dopri5: NFE-B / NFE-F = 0.90", "lsoda: NFE-B / NFE-F = 0.50"]


def test_fig3c_variants_on_the_same_points_stay_visible_and_say_so(make_run, tmp_path):
    hist = history_records(nfe_f=(20, 26), nfe_b=(26, 32))
    make_run("default", history=hist)
    make_run("semi", solver_adjoint_norm="seminorm", history=hist)
    fig = D.draw_fig3c(F.fig3c_rows(load_runs([tmp_path / "outputs"])[0]), tmp_path / "c.png")
    ax = fig.axes[0]
    assert ax.get_legend_handles_labels()[1][:2] == [
        "dopri5 adjoint (measured)",
        "dopri5 adjoint, seminorm (measured): the same points as dopri5 adjoint"]
    default, semi = ax.collections[:2]
    assert default.get_offsets().tolist() == semi.get_offsets().tolist()
    # hollow, other colours and shapes, the later one larger: neither hides the other
    assert len(default.get_facecolors()) == len(semi.get_facecolors()) == 0
    assert tuple(default.get_edgecolors()[0]) != tuple(semi.get_edgecolors()[0])
    assert default.get_paths()[0] != semi.get_paths()[0]
    assert min(semi.get_sizes()) > max(default.get_sizes())


def test_fig3d_twelve_groups_in_twelve_colours_labels_apart_legend_off_the_data(
        make_run, tmp_path):
    for i, (exp, tol) in enumerate((e, t) for e in ("smoke", "custom", "quick", "table1")
                                   for t in (1e-1, 1e-2, 1e-3)):
        make_run(f"r{i}", experiment=exp, solver_rtol=tol, solver_atol=tol,
                 history=history_records(nfe_f=(20 + i,), nfe_b=(26,)))
    rows = F.fig3d_rows(load_runs([tmp_path / "outputs"])[0])
    labels = {r["group"] for r in rows}
    assert len(labels) == 12 and "ODE-Net dopri5 tol=1e-3 adjoint, smoke, 2 ep, n=60000, " \
        "seed 0" in labels
    fig = D.draw_fig3d(rows, tmp_path / "d.png")
    ax = fig.axes[0]
    dots = [line for line in ax.lines if line.get_label() in labels]
    assert len(dots) == 12
    assert len({(tuple(d.get_color()), d.get_marker()) for d in dots}) == 12
    assert len({tuple(d.get_color()) for d in dots}) == 12  # no colour twice
    fig.canvas.draw()
    legend, box = fig.legends[0], ax.get_window_extent()
    assert not legend.get_window_extent().overlaps(box)  # it covers no data
    assert sorted(t.get_text() for t in legend.get_texts()) == sorted(labels)


def test_fig3d_rows_positions(runs):
    rows = [r for r in F.fig3d_rows(runs) if r["run_dir"].endswith("ode_adj")]
    it = [r for r in rows if r["kind"] == "iter"]
    ep = [r for r in rows if r["kind"] == "epoch"]
    # epochs numbered from 1 in this history: iterations land in (0, 2)
    assert [r["epoch"] for r in it] == pytest.approx(
        [0.125, 0.375, 0.625, 0.875, 1.125, 1.375, 1.625, 1.875])
    assert [(r["epoch"], r["nfe_forward"]) for r in ep] == [(1, 20.0), (2, 22.0)]


def test_memory_rows_and_slope(runs):
    rows = F.memory_rows(runs)
    by = {r["run_dir"]: r for r in rows}  # relative to the directory searched
    assert set(by) == {"ode_adj", "ode_semi", "rk_20", "rk_40", "res"}  # no MLP, no failed
    assert by["res"]["x"] == 6 and by["res"]["x_kind"] == "blocks"
    assert by["rk_40"]["series"] == "RK-Net (backprop through solver)"
    assert by["ode_adj"]["series"] == "ODE-Net (adjoint)"
    assert by["res"]["series"] == "ResNet (x = residual blocks)"
    rk = [r for r in rows if r["model"] == "rknet"]
    assert F.slope_through_origin([r["x"] for r in rk],
                                  [r["activation_block_mib"] for r in rk]) == pytest.approx(9.2)


def test_write_all_figures_with_csvs_and_labelled_axes(runs, tmp_path):
    out = tmp_path / "figs"
    written, skipped = registry.write_figures(runs, out, FIG3)
    assert skipped == {}
    assert set(written) == set(FIG3)
    for name in FIG3:
        w, h = _png_size(out / f"{name}.png")
        assert w > 400 and h > 300
        assert len(_csv(out / f"{name}.csv")) > 0
    c = _csv(out / "fig3c.csv")
    assert {(r["nfe_forward"], r["nfe_backward"], r["iterations"]) for r in c} == {
        ("20", "26", "4"), ("26", "32", "4"), ("14", "8", "2")}
    assert [float(r["numerical_error"]) for r in _csv(out / "fig3a.csv")] == \
        [1e-2, 1e-3, 1e-4, 1e-5]


@pytest.mark.parametrize("name", FIG3)
def test_each_figure_has_title_and_axes_with_units(runs, tmp_path, name):
    f = registry.FIGURES[name]  # the registry's functions: a new figure is tested too
    rows = registry._load(f.rows)(runs)
    fig = registry._load(f.draw)(rows, tmp_path / f"{name}.png")
    ax = fig.axes[0]
    assert ax.get_title()
    assert "(" in ax.get_xlabel() and "(" in ax.get_ylabel()  # units / meaning in brackets
    if name == "fig3c":
        labels = ax.get_legend_handles_labels()[1]
        assert any("NFE-F / 2" in lab for lab in labels)
    if name in ("fig3a", "memory"):
        assert ax.get_yscale() == "log"


def test_figures_without_data_are_skipped_with_a_note(make_run, tmp_path, capsys):
    make_run("res", model="resnet")
    out = tmp_path / "figs"
    assert registry.main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    err = capsys.readouterr().err
    assert "fig3a skipped" in err and "odenet evaluate" in err
    assert "fig3c skipped" in err
    assert (out / "memory.png").exists() and not (out / "fig3a.png").exists()


def test_main_errors(make_run, tmp_path, capsys):
    make_run("mlp", model="mlp", activation_block_mib=None)
    assert registry.main([str(tmp_path / "outputs"), f"out={tmp_path / 'f'}"]) == 1
    assert "no figure could be drawn" in capsys.readouterr().err
    assert registry.main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    assert registry.main(["only=fig9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fig9" in err and "fig3a, fig3b" in err
    assert registry.main(["--only", "fig3a"]) == 2  # a flag: named, with the keys
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'--only'" in err and "keys: run_dirs, out, only" in err


def test_only_selects_figures(runs, tmp_path):
    written, _ = registry.write_figures(runs, tmp_path / "o", ["fig3c"])
    assert list(written) == ["fig3c"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["fig3c.csv", "fig3c.png"]


def test_registry_entries_are_complete():
    # the paper's Figure 3 and the memory plot, in this order (a new figure may follow)
    assert FIG3[:5] == ("fig3a", "fig3b", "fig3c", "fig3d", "memory")
    for f in registry.FIGURES.values():
        assert f.caption and (f.write or (f.rows and f.draw)), f.name
        for ref in (f.rows, f.draw, f.write):
            if ref and f.task == CLASSIFY:  # density figures import torch: tests/cnf
                assert callable(registry._load(ref)), ref


def test_memory_depth_from_the_record(make_run, tmp_path):
    make_run("res3", model="resnet", residual_blocks=3, activation_block_mib=15.0)
    [row] = F.memory_rows(load_runs([tmp_path / "outputs"])[0])
    assert row["x"] == 3 and row["x_kind"] == "blocks"


def test_invalid_run_next_to_good_ones_is_reported(runs, tmp_path, capsys):
    bad = tmp_path / "outputs" / "zz_bad"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"model": "odenet", "status": "fin')  # truncated
    out = tmp_path / "figs"
    assert registry.main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    err = capsys.readouterr().err
    assert f"not read: {bad / 'metrics.json'}: not valid JSON" in err
    assert all((out / f"{n}.png").exists() and (out / f"{n}.csv").exists() for n in FIG3)


def test_tradeoff_lines_name_the_optimizer_settings_the_runs_differ_in(make_run, tmp_path):
    history = history_records(val_error=[0.02, 0.012])
    for name, nesterov in (("nesterov", True), ("plain", False)):
        make_run(name, model="mlp", val_size=10000, history=history, optimizer="sgd",
                 momentum=0.9, nesterov=nesterov, weight_decay=0.0)
    recipes = {r["recipe"] for r in F.tradeoff_rows(load_runs([tmp_path / "outputs"])[0])}
    assert recipes == {"mlp, Nesterov, 2 ep", "mlp, no Nesterov, 2 ep"}
