"""The report's claims (odenet/report/claims.py) read groups of runs: a row's seeds
together; and fig3d draws a colour per group."""

from __future__ import annotations

import json

import pytest
from fakeruns import history_records

from odenet.report import load_runs
from odenet.report import mnist_drawing as D
from odenet.report import mnist_figures as F
from odenet.report.claims import measured_claims, paper_family_verdict


def _grads(error):
    return {"results": [{"gradient_method": "adjoint", "method": "dopri5", "rtol": 1e-3,
                         "atol": 1e-3, "dtype": "float32", "status": "ok", "error": error}]}


@pytest.fixture
def seeds3(make_run, tmp_path):
    """Three seeds of ODE-Net, ResNet and its two ablations, ODE-Net checkpointed."""
    for s in range(3):
        d = make_run(f"ode{s}", seed=s, test_error=[0.0040, 0.0045, 0.0047][s],
                     history=history_records(epochs=2), activation_nfe_forward=20 + s)
        (d / "gradients.json").write_text(json.dumps(_grads([0.08, 0.09, 0.10][s])))
        make_run(f"ck{s}", seed=s, solver_gradient="checkpoint", solver_adjoint=False,
                 activation_block_mib=[6.7, 6.8, 6.9][s], activation_nfe_forward=21 + s)
        for blocks, params, err in ((6, 576_778, 0.0043), (0, 132_874, 0.0061),
                                    (1, 206_858, 0.0049)):
            make_run(f"res{blocks}_{s}", model="resnet", seed=s, params=params,
                     residual_blocks=blocks, test_error=err + s / 10000,
                     activation_block_mib=4.5 * blocks)
    runs = load_runs([tmp_path / "outputs"])[0]
    return measured_claims(runs, {"memory": runs, "fig3c": runs}), runs


def test_test_error_over_seeds_and_whether_the_paper_lies_in_their_range(seeds3):
    lines, _ = seeds3
    err = next(x for x in lines if x.startswith("Test error:"))
    assert "ODE-Net 0.44 ± 0.04 % over 3 seeds (paper 0.42 %: within the seeds' range " \
           "0.40-0.47 %)" in err
    assert "ResNet 0.44 ± 0.01 % over 3 seeds (paper 0.41 %: outside the seeds' range " \
           "0.43-0.45 %)" in err
    assert "no block" not in err  # the ablations have no paper number


def test_ablations_beside_the_full_resnet(seeds3):
    lines, _ = seeds3
    ab = next(x for x in lines if x.startswith("Ablations the paper has not"))
    assert "ResNet, no block: downsampling + head 0.62 ± 0.01 % over 3 seeds, 132,874 " \
           "parameters; ResNet, one block 0.50 ± 0.01 % over 3 seeds, 206,858 parameters; " \
           "ResNet 0.44 ± 0.01 % over 3 seeds, 576,778 parameters." in ab


def test_memory_and_gradients_per_group(seeds3):
    lines, _ = seeds3
    assert "Memory (ODE-Net, checkpointed steps): the block saved 6.80 MiB at NFE 22 " \
           "(3 seeds)." in lines
    assert "Memory O(L) (ResNet): its residual blocks saved 0.00 MiB with 0, 4.50 MiB " \
           "with 1, 27.00 MiB with 6." in lines
    grad = next(x for x in lines if x.startswith("Gradient error"))
    assert "ODE-Net, dopri5 tol=1e-3 adjoint: 0.09 ± 0.01." in grad


def test_training_nfe_is_one_line_per_group(seeds3):
    lines, _ = seeds3
    d = [x for x in lines if x.startswith("NFE in training")]
    assert d == ["NFE in training (Fig. 3d, paper: it grows; dopri5 tol=1e-3 adjoint seeds "
                 "0, 1, 2): NFE-F 20.0 in the first epoch → 22.0 in the last (grows)."]


def test_one_seed_reads_as_before(make_run, tmp_path):
    make_run("ode", seed=0, test_error=0.01, history=history_records(epochs=2))
    make_run("ck", seed=0, solver_gradient="checkpoint", solver_adjoint=False,
             activation_block_mib=6.8, activation_nfe_forward=21)
    runs = load_runs([tmp_path / "outputs"])[0]
    lines = measured_claims(runs, {"memory": runs, "fig3c": runs})
    assert lines[0] == "Test error: ODE-Net 1.00 % (paper 0.42 %)."
    assert "Memory (ODE-Net, checkpointed steps): the block saved 6.80 MiB at NFE 21." in lines
    assert lines[-1] == ("NFE in training (Fig. 3d, paper: it grows; dopri5 tol=1e-3 adjoint "
                         "seed 0): NFE-F 20.0 in the first epoch → 22.0 in the last (grows).")


def test_the_report_measures_the_claims_here():
    from odenet.report import markdown

    assert markdown.measured_claims is measured_claims
    assert paper_family_verdict([]).startswith("Fig. 3c with the paper's solver family: no")


def test_fig3d_one_colour_and_one_label_per_group(seeds3, tmp_path):
    _, runs = seeds3
    rows = F.fig3d_rows(runs)
    group = "ODE-Net dopri5 tol=1e-3 adjoint, quick, 2 ep, n=60000, seeds 0, 1, 2"
    assert {r["group"] for r in rows} == {group}
    assert {r["label"] for r in rows} == {f"dopri5 tol=1e-3 adjoint seed {s}" for s in range(3)}
    ax = D.draw_fig3d(rows, tmp_path / "fig3d.png").axes[0]
    assert ax.get_legend_handles_labels()[1] == [group]
    assert len({line.get_color() for line in ax.lines}) == 1
