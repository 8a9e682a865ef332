"""Groups of runs (odenet/report/runs.py): the data the table, figures and claims read,
and Table 1's ablation rows (ResNet with 0 and 1 residual blocks)."""

from __future__ import annotations

import csv

import pytest
from fakeruns import metrics_record

from odenet.report import load_runs
from odenet.report.seed_groups import Stat, group_of, groups
from odenet.report.table import write_table

RESNETS = {6: 576_778, 0: 132_874, 1: 206_858}


def _resnets(make_run, errors=((0.0043, 0.0047, 0.0052), (0.0061, 0.0058, 0.0066),
                               (0.0049, 0.0045, 0.0051))):
    for (blocks, params), errs in zip(RESNETS.items(), errors):
        for seed, e in enumerate(errs):
            make_run(f"resnet{blocks}_seed{seed}", model="resnet", seed=seed, params=params,
                     residual_blocks=blocks, test_error=e)


def test_stat_spread():
    st = Stat([0.0043, 0.0047, 0.0052])
    assert (st.n, st.min, st.max) == (3, 0.0043, 0.0052)
    assert st.spans(0.0047) is True and st.spans(0.0043) is True
    assert st.spans(0.0041) is False and st.spans(0.006) is False
    assert st.spans(None) is None
    assert Stat([0.004]).spans(0.004) is None  # one seed: no spread
    assert Stat().mean is None and Stat().min is None and Stat().spans(0.1) is None


def test_groups_split_by_residual_blocks_and_keep_their_seeds(make_run, tmp_path):
    _resnets(make_run)
    make_run("resnet_old", model="resnet", seed=3, params=576_778, test_error=0.005,
             residual_blocks=None)  # a record from before the field: the model's 6
    make_run("resnet_failed", model="resnet", seed=4, residual_blocks=0, status="failed")
    runs = load_runs([tmp_path / "outputs"])[0]
    gs = groups(runs, fields=("test_error", "params"))
    assert [(g.key["residual_blocks"], g.title, g.n_seeds) for g in gs] == [
        (6, "ResNet", 4), (0, "ResNet, no block: downsampling + head", 3),
        (1, "ResNet, one block", 3)]
    full, none, one = gs
    assert not full.ablation and none.ablation and one.ablation
    assert full.paper.test_error == 0.0041 and none.paper is None and one.paper is None
    assert none.stats["params"].mean == 132_874 and one.stats["params"].mean == 206_858
    assert none.stat("test_error").mean == pytest.approx(0.0061666667)
    assert one.seeds == [0, 1, 2] and full.seeds == [0, 1, 2, 3]
    # a field not asked for is computed on demand, and a value function too
    assert one.stat("sec_per_iter").mean == pytest.approx(0.75)
    assert one.stat("x", lambda r: r.metrics["seed"] * 2).values == [0, 2, 4]
    assert full.paper_in_spread() is False and none.paper_in_spread() is None  # 0.41 < 0.43
    assert group_of(gs)[tmp_path / "outputs" / "resnet1_seed2"] is one
    assert all(r.finished for g in gs for r in g.runs)


def test_table1_ablation_rows_are_apart_titled_and_without_paper_numbers(make_run, tmp_path):
    _resnets(make_run)
    res = write_table(load_runs([tmp_path / "outputs"])[0], tmp_path / "rep")
    md = res["md"].read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in md.splitlines() if line.startswith("| ResNet")}
    assert list(rows) == ["ResNet", "ResNet, no block: downsampling + head",
                          "ResNet, one block"]
    full, none, one = rows.values()
    # Seeds, n, test error, paper, paper in seed range, params, paper params
    assert full[3:10] == ["0, 1, 2", "3", "0.47 ± 0.05", "0.41", "no (0.43–0.52)",
                          "576,778", "0.60 M"]
    assert none[3:10] == ["0, 1, 2", "3", "0.62 ± 0.04", "-", "-", "132,874", "-"]
    assert one[3:10] == ["0, 1, 2", "3", "0.48 ± 0.03", "-", "-", "206,858", "-"]
    assert "an ablation the paper has not" in md and "too large" in md
    with open(res["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["residual_blocks"], r["paper_model"], r["paper_in_seed_range"]) for r in table] \
        == [("6", "resnet", "false"), ("0", "", ""), ("1", "", "")]
    assert [float(r["test_error_min"]) for r in table] == [0.0043, 0.0058, 0.0045]


def test_paper_number_inside_the_spread_and_one_seed(make_run, tmp_path):
    for seed, e in enumerate((0.0040, 0.0045, 0.0047)):
        make_run(f"ode{seed}", seed=seed, test_error=e)
    make_run("mlp0", model="mlp", params=238_510, test_error=0.018)
    md = write_table(load_runs([tmp_path / "outputs"])[0], tmp_path / "rep")["md"].read_text()
    ode = next(x for x in md.splitlines() if x.startswith("| ODE-Net |"))
    assert "| 0, 1, 2 | 3 | 0.44 ± 0.04 | 0.42 | yes (0.40–0.47) |" in ode
    mlp = next(x for x in md.splitlines() if x.startswith("| 1-layer MLP |"))
    assert "| 0 | 1 | 1.80 | 1.60 | – |" in mlp  # one seed: no spread to lie in
    assert "within [min, max] of the seeds' test errors" in md
    assert "an ablation" not in md  # no ablation rows: no note


def test_a_resnet_record_without_its_blocks_is_the_papers_row(make_run, tmp_path):
    make_run("r", model="resnet", params=576_778, residual_blocks=None)
    m = metrics_record(model="resnet", residual_blocks=None)
    assert m["residual_blocks"] is None
    [g] = groups(load_runs([tmp_path / "outputs"])[0])
    assert g.key["residual_blocks"] == 6 and g.paper is not None and g.title == "ResNet"


ABLATION_PLAN = """
experiment: tiny
plans:
  tiny:
    seeds: [0, 1, 2]
    models: [resnet, odenet]
    variants:
      - {name: resnet_noblock, model: resnet, overrides: [model.num_blocks=0]}
      - {name: resnet_oneblock, model: resnet, overrides: [model.num_blocks=1]}
    sweeps: []
"""


def test_reproduce_variants_of_resnet_are_the_ablation_rows(tmp_path):
    """The ablations trained as reproduce variants of model resnet (their runs as
    `odenet train` writes them) come out as rows of their own in report.md."""
    from fakeruns import write_run

    from odenet.reproduce.command import build_report
    from odenet.reproduce.jobs import plan_trainings
    from odenet.reproduce.plan import load_config

    plan = tmp_path / "plan.yaml"
    plan.write_text(ABLATION_PLAN)
    cfg = load_config([f"root={tmp_path / 'runs'}"], plan_file=plan)
    jobs = plan_trainings(cfg, tmp_path / "runs")
    for job in jobs:
        blocks = next((int(o.split("=")[1]) for o in job.overrides
                       if o.startswith("model.num_blocks=")), 6)
        seed = int(next(o for o in job.overrides if o.startswith("seed="))[5:])
        resnet = dict(residual_blocks=blocks, params=RESNETS[blocks]) \
            if job.model == "resnet" else {}
        write_run(job.dir, model=job.model, seed=seed, experiment="tiny",
                  test_error=0.005 + seed / 1000, **resnet)
    path = build_report(cfg, jobs, tmp_path / "report", "test", {}, [])
    md = path.read_text()
    table = md.split("## Table 1")[1].split("## Measured")[0]
    titles = [x.split("|")[1].strip() for x in table.splitlines() if x.startswith("| ")][1:]
    assert titles == ["ResNet", "ResNet, no block: downsampling + head", "ResNet, one block",
                      "ODE-Net"]
    none = next(x for x in table.splitlines() if x.startswith("| ResNet, no block"))
    assert "| 0, 1, 2 | 3 | 0.60 ± 0.10 | - | - | 132,874 | - |" in none
    assert "an ablation the paper has not" in table
    claims = md.split("## Measured against the paper's claims")[1]
    assert "ResNet, one block 0.60 ± 0.10 % over 3 seeds, 206,858 parameters" in claims


def test_runs_of_other_optimizer_settings_are_other_rows_named_by_what_differs(make_run,
                                                                                tmp_path):
    """Two MLP recipes (Nesterov with weight decay, plain momentum) of one seed are two
    rows, not one seed run twice; the labels name the settings they differ in, and only
    those."""
    for seed in (0, 1):
        make_run(f"mlp_nesterov_seed{seed}", model="mlp", seed=seed, test_error=0.013,
                 optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4)
        make_run(f"mlp_plain_seed{seed}", model="mlp", seed=seed, test_error=0.010,
                 optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=0.0)
    gs = groups(load_runs([tmp_path / "outputs"])[0], fields=("test_error",))
    assert sorted((g.scale, g.seeds, g.stat("test_error").mean) for g in gs) == [
        ("quick, 2 ep, n=60000, Nesterov, wd 0.0005", [0, 1], 0.013),
        ("quick, 2 ep, n=60000, no Nesterov, wd 0", [0, 1], 0.010)]
    files = write_table(load_runs([tmp_path / "outputs"])[0], tmp_path / "rep")
    table = files["md"].read_text()
    assert "quick, 2 ep, n=60000, Nesterov, wd 0.0005 |" in table
    assert "quick, 2 ep, n=60000, no Nesterov, wd 0 |" in table
    with open(files["csv"]) as f:  # the CSV's rows carry the settings that split them
        assert sorted((r["nesterov"], r["weight_decay"]) for r in csv.DictReader(f)) == [
            ("False", "0.0"), ("True", "0.0005")]


def test_runs_of_one_optimizer_recipe_keep_their_labels(make_run, tmp_path):
    for seed in (0, 1):
        make_run(f"mlp_seed{seed}", model="mlp", seed=seed, optimizer="sgd", momentum=0.9,
                 nesterov=True, weight_decay=5e-4)
    gs = groups(load_runs([tmp_path / "outputs"])[0])
    assert len(gs) == 1 and gs[0].scale == "quick, 2 ep, n=60000" and gs[0].seeds == [0, 1]


def test_a_record_from_before_the_optimizer_fields_joins_its_seeds_row(make_run, tmp_path):
    """A plan resumed across the change: its older records lack the optimizer fields, so
    only lr and schedule (which they have) tell rows apart."""
    for seed in (0, 1):
        make_run(f"mlp_seed{seed}", model="mlp", seed=seed, optimizer="sgd", momentum=0.9,
                 nesterov=True, weight_decay=5e-4)
    make_run("mlp_seed2", model="mlp", seed=2)  # written before the fields
    make_run("mlp_lr", model="mlp", seed=0, lr=0.05)
    gs = groups(load_runs([tmp_path / "outputs"])[0])
    assert sorted((g.scale, g.seeds) for g in gs) == [
        ("quick, 2 ep, n=60000, lr 0.05", [0]), ("quick, 2 ep, n=60000, lr 0.1", [0, 1, 2])]
