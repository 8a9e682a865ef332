"""odenet reproduce: plan expansion, skip/resume, failures, the report.

The training and evaluation children are replaced by a fake `odenet` (a small script
that writes complete run records, built from the schema by odenet.run.record.fake), so these tests check the orchestration in seconds; the
real pipeline at smoke scale is tested in test_reproduce_smoke (marked slow).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from odenet.config.errors import ConfigError
from odenet.report.runs import ReportError
from odenet.reproduce.command import build_report, main, reproduce
from odenet.reproduce.jobs import Training, plan_trainings
from odenet.reproduce.plan import EvalPlan, Plan, SweepPlan, load_config
from odenet.reproduce.status import duration
from odenet.reproduce.wall import WALL, parts_line, read_parts

FAKE = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from odenet.run.record import EpochRecord, IterRecord, Metrics, fake
    args = sys.argv[1:]
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(args) + "\\n")
    kv = dict(a.split("=", 1) for a in args[1:] if "=" in a)
    if args[0] == "evaluate":
        ck = Path(kv["checkpoint"])
        tols = [float(t) for t in kv["tolerances"].strip("[]").split(",")]
        res = [{"rtol": t, "atol": t, "nfe_forward_mean": 10 + 6 * i,
                "numerical_error": t / 10, "forward_seconds": 1.0 + i, "block_seconds": 0.5 + i,
                "test_error": 0.02} for i, t in enumerate(tols)]
        (ck.parent / "evaluation.json").write_text(json.dumps({"results": res}))
        sys.exit(0)
    if args[0] == "gradients":  # every method at the run's own tolerance
        ck = Path(kv["checkpoint"])
        run = json.loads((ck.parent / "metrics.json").read_text())
        tol = float(kv["tolerances"].strip("[]"))
        errors = {"backprop": 0.07, "adjoint": 0.08, "checkpoint": 0.07, "reversible": 0.012}
        res = [{"gradient_method": g, "method": run["solver_method"], "rtol": tol, "atol": tol,
                "dtype": "float32", "status": "ok", "error": e} for g, e in errors.items()]
        (ck.parent / "gradients.json").write_text(json.dumps({"results": res}))
        sys.exit(0)
    d = Path(kv["hydra.run.dir"]); d.mkdir(parents=True, exist_ok=True)
    model, seed = kv["model"], int(kv["seed"])
    rtol = float(kv.get("solver.rtol", 1e-3))
    method = kv.get("solver", "dopri5")
    gradient = kv.get("solver.gradient", "adjoint" if model == "odenet" else "backprop")
    adjoint = gradient == "adjoint"
    status = "finished"
    if os.environ.get("FAKE_FAIL") == model:
        status = "failed"
    if os.environ.get("FAKE_INTERRUPT") == model and kv.get("resume") != "true":
        status = "interrupted"
    nfe = {0.1: 8, 0.01: 14, 0.001: 20, 0.0001: 32}.get(rtol, 20)
    nfe_b = nfe // 2 if method == "lsoda" else nfe + 6  # lsoda: the paper's half
    ode = model in ("odenet", "rknet")
    m = fake(Metrics, model=model, experiment=kv["experiment"], seed=seed, status=status,
             reason="NaN loss" if status == "failed" else None, task="classify",
             solver_method=method, solver_rtol=rtol, solver_atol=rtol,
             solver_adjoint=adjoint, solver_gradient=gradient, solver_adjoint_norm=kv.get("solver.adjoint_norm", "default"),
             solver_step_size=None, solver_last_step="clamp", test_error=0.01, train_error=0.01,
             params={"mlp": 238510, "resnet": 576778}.get(model, 208266),
             residual_blocks=6 if model == "resnet" else None,
             nfe_forward_mean=nfe if ode else None,
             nfe_backward_mean=(nfe_b if adjoint else 0) if ode else None,
             test_nfe_forward_mean=nfe if ode else None,
             activation_mib=10.0, activation_block_mib=None if model == "mlp" else
                 (2.25 if adjoint else 9.2 * nfe),
             cuda_peak_mib=None, rss_peak_mib=500.0, sec_per_iter=0.1,
             sec_per_test_batch=0.1, epochs=1, epochs_planned=1, batch_size=128,
             train_size=int(kv.get("data.train_size", 60000)),
             test_size=int(kv["test_size"]) if "test_size" in kv else None, device="cpu",
             lr=0.1, schedule="step", threads=1, torch_version="x", git_commit="x",
             host="test", wall_seconds=1.0)
    (d / "checkpoint.pt").write_bytes(b"ckpt")
    (d / "metrics.json").write_text(json.dumps(m))
    with open(d / "history.jsonl", "a") as f:
        for i in range(3):
            f.write(json.dumps(fake(IterRecord, epoch=0, iter=i, step=i + 1, nfe_forward=nfe,
                                    nfe_backward=nfe_b if adjoint else 0)) + "\\n")
        f.write(json.dumps(fake(EpochRecord, epoch=0, nfe_forward_mean=nfe)) + "\\n")
    sys.exit(0 if status == "finished" else 1)
''')

PLAN = textwrap.dedent('''
    experiment: tiny
    plans:
      tiny:
        seeds: [0]
        models: [mlp, resnet, rknet, odenet]
        evaluate: {model: odenet, tolerances: [1e-1, 1e-2, 1e-3], overrides: [test_size=100]}
        sweeps:
          - {name: fig3c, figure: fig3c, model: odenet, overrides: [data.train_size=64],
             grid: {solver.rtol: [1e-1, 1e-2], solver.adjoint_norm: [default, seminorm]}}
          - {name: memory, figure: memory, model: rknet, overrides: [data.train_size=64],
             grid: {solver.rtol: [1e-1, 1e-4]}}
''')


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_odenet.py"
    script.write_text(FAKE)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setattr("odenet.reproduce.jobs.odenet_command", lambda: [sys.executable, str(script)])
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)

    def calls():
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    def run(*over):
        cfg = load_config([f"root={tmp_path / 'runs'}", f"report={tmp_path / 'report'}",
                             *over], plan_file=plan)
        return reproduce(cfg, "odenet reproduce (test)", log=lambda *_: None)

    return run, calls, tmp_path


def test_plan_expansion(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    cfg = load_config(["seeds=[0,1]"], plan_file=plan)
    jobs = plan_trainings(cfg, Path("r"))
    table = [j for j in jobs if j.group == "table"]
    assert [j.name for j in table] == ["mlp_seed0", "mlp_seed1", "resnet_seed0", "resnet_seed1",
                                       "rknet_seed0", "rknet_seed1", "odenet_seed0",
                                       "odenet_seed1"]
    assert table[0].overrides[:3] == ["experiment=tiny", "model=mlp", "seed=0"]
    sweep = [j for j in jobs if j.group == "fig3c"]
    assert [j.name for j in sweep] == [
        "odenet_rtol0.1_adjoint_normdefault_seed0", "odenet_rtol0.1_adjoint_normseminorm_seed0",
        "odenet_rtol1e-2_adjoint_normdefault_seed0", "odenet_rtol1e-2_adjoint_normseminorm_seed0"]
    assert "solver.rtol=1e-2" in sweep[2].overrides
    assert "solver.adjoint_norm=seminorm" in sweep[3].overrides
    assert sweep[0].dir == Path("r/fig3c/odenet_rtol0.1_adjoint_normdefault_seed0")
    assert len({j.dir for j in jobs}) == len(jobs) == 8 + 4 + 2
    assert len(plan_trainings(load_config(["sweeps=false"], plan_file=plan), Path("r"))) == 4


@pytest.mark.parametrize("argv, needle", [
    (["experiment=nope"], "experiment='nope' has no plan; accepted: quick, table1, paper"),
    (["dry_run=maybe"], "dry_run"),
    (["bogus=1"], "bogus"),
    (["quick"], "expected key=value"),
    (["seeds=[]"], "seeds=[]"),
])
def test_bad_settings_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_shipped_plans_load():
    paper_rows = ("mlp", "resnet", "rknet", "odenet", "odenet_checkpoint", "odenet_reversible")
    # the quick plan is sized to 45 minutes: the paper's four rows, Fig. 3c and memory only
    quick = load_config(["experiment=quick"])
    jobs = plan_trainings(quick, Path("r"))
    assert [j.name for j in jobs if j.group == "table"] == [
        "odenet_seed0", "rknet_seed0", "resnet_seed0", "mlp_seed0"]
    assert {j.group for j in jobs} == {"table", "fig3c", "memory"}
    assert quick.plans["quick"].gradients is not None
    cfg = load_config(["experiment=paper"])
    jobs = plan_trainings(cfg, Path("r"))
    assert {j.name for j in jobs if j.group == "table"} == {
        f"{m}_seed{s}" for m in paper_rows for s in cfg.plans["paper"].seeds}
    assert {j.group for j in jobs} == {"table", "fig3c", "fig3c_solvers", "memory"}
    reversible = next(j for j in jobs if j.name.startswith("odenet_reversible"))
    assert "solver=adaptive_reversible_heun" in reversible.overrides
    assert "solver.gradient=reversible" in reversible.overrides
    solvers = {o for j in jobs if j.group == "fig3c_solvers" for o in j.overrides
               if o.startswith("solver=")}
    assert solvers == {"solver=bosh3", "solver=tsit5", "solver=lsoda"}
    assert cfg.plans["paper"].gradients is not None



def test_quick_plan_trains_its_ode_rows_with_the_levers_and_sweeps_without():
    """The quick plan's ODE rows carry the step and keep the kinetic penalty; its Fig. 3c
    and memory sweeps measure NFE under the error control alone, so they have neither."""
    from odenet.cli.app import compose

    jobs = plan_trainings(load_config(["experiment=quick"]), Path("r"))
    for job in jobs:
        if job.model not in ("odenet", "rknet"):
            continue
        cfg = compose(job.overrides)
        levers = (cfg.solver.carry_step, cfg.model.kinetic_weight)
        if job.group == "table":
            assert levers == (True, 0.1), job.name
            assert (cfg.solver.method, cfg.solver.rtol) == ("dopri5", 1e-3)
        else:
            assert levers == (False, 0.0), job.name

VARIANT_PLAN = textwrap.dedent('''
    experiment: tiny
    plans:
      tiny:
        seeds: [0]
        models: [mlp, odenet]
        variants:
          - {name: odenet_checkpoint, model: odenet, overrides: [solver.gradient=checkpoint]}
        evaluate: {model: odenet, tolerances: [1e-1, 1e-3], overrides: []}
        gradients: {overrides: [batch_size=8]}
        sweeps:
          - {name: fig3c, figure: fig3c, model: odenet, overrides: [data.train_size=64],
             grid: {solver: [dopri5, lsoda], solver.rtol: [1e-1, 1e-2]}}
''')


def test_variants_gradient_error_and_the_paper_family(fake):
    """Variant rows train with their overrides and have no paper numbers; odenet gradients
    runs once per ODE-block row at its own tolerance and fills the gradient-error column;
    Fig. 3c is split per solver and the report says whether NFE-B ≈ NFE-F / 2 holds with
    LSODA."""
    _, calls, tmp = fake
    plan = tmp / "variants.yaml"
    plan.write_text(VARIANT_PLAN)
    cfg = load_config([f"root={tmp / 'runs'}", f"report={tmp / 'report'}"], plan_file=plan)
    assert reproduce(cfg, "test", log=lambda *_: None) == 0
    c = calls()
    variant = next(a for a in c if a[0] == "train" and "solver.gradient=checkpoint" in a)
    assert any(a.endswith("table/odenet_checkpoint_seed0") for a in variant)
    grads = [a for a in c if a[0] == "gradients"]
    assert sorted(next(x for x in a if x.startswith("checkpoint=")) for a in grads) == [
        f"checkpoint={tmp / 'runs/table' / n / 'checkpoint.pt'}"
        for n in ("odenet_checkpoint_seed0", "odenet_seed0")]
    assert all("tolerances=[0.001]" in a and "batch_size=8" in a for a in grads)
    md = (tmp / "report" / "report.md").read_text()
    table = md.split("## Table 1")[1].split("## Measured")[0]
    row = next(line for line in table.splitlines() if "checkpoint |" in line)
    cells = [x.strip() for x in row.split("|")]
    assert cells[7] == "-" and cells[10] == "-"  # no paper test error, no paper params
    assert cells[-3] == "0.07"  # its own method's error
    adj = next(line for line in table.splitlines() if "tol=1e-3 adjoint |" in line)
    assert [x.strip() for x in adj.split("|")][-3] == "0.08"
    assert [x.strip() for x in adj.split("|")][7] == "0.42"  # the paper's ODE-Net row
    claims = md.split("## Measured against the paper's claims")[1]
    # lsoda's fake NFE-B = NFE-F // 2 (8 -> 4, 14 -> 7); dopri5's NFE-F + 6
    assert "With LSODA, the paper's solver family, NFE-B / NFE-F = 0.50 over 6 training " \
           "iterations" in claims and "holds (taken as 0.4-0.6)" in claims
    assert "does not hold" not in claims
    c3 = (tmp / "report" / "fig3c.csv").read_text().splitlines()
    assert c3[0].startswith("solver,variant,") and any(x.startswith("lsoda,") for x in c3)
    n = len(c)
    assert reproduce(cfg, "test", log=lambda *_: None) == 0
    assert len(calls()) == n  # trainings, evaluation and gradients all skipped


def test_plan_with_an_unknown_model_or_repeated_row_is_refused(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text(VARIANT_PLAN.replace("model: odenet, overrides: [solver.gradient",
                                         "model: odenett, overrides: [solver.gradient"))
    with pytest.raises(ConfigError, match="'odenett' is not a model"):
        load_config([], plan_file=plan)
    plan.write_text(VARIANT_PLAN.replace("name: odenet_checkpoint", "name: odenet"))
    with pytest.raises(ConfigError, match="repeated: odenet"):
        load_config([], plan_file=plan)


def test_full_pipeline_then_rerun_skips_everything(fake):
    run, calls, tmp = fake
    assert run() == 0
    c = calls()
    trains = [a for a in c if a[0] == "train"]
    evals = [a for a in c if a[0] == "evaluate"]
    assert len(trains) == 4 + 4 + 2 and len(evals) == 1
    assert f"checkpoint={tmp / 'runs/table/odenet_seed0/checkpoint.pt'}" in evals[0]
    assert "tolerances=[0.1,0.01,0.001]" in evals[0] and "test_size=100" in evals[0]
    assert all(any(a.startswith("hydra.run.dir=") for a in t) for t in trains)
    assert not any("resume=true" in t for t in trains)
    rep = tmp / "report"
    names = sorted(p.name for p in rep.iterdir())
    for f in ("report.md", "table.md", "table.csv", "fig3a.png", "fig3b.png", "fig3c.png",
              "fig3d.png", "memory.png", "fig3c.csv", "memory.csv"):
        assert f in names
    md = (rep / "report.md").read_text()
    assert "odenet reproduce (test)" in md and "experiment=tiny" in md
    for name in ("fig3a", "fig3b", "fig3c", "fig3d", "memory"):
        assert f"![{name}]({name}.png)" in md
    assert "| ODE-Net | dopri5 tol=1e-3 adjoint |" in md
    # the table holds only the Table 1 runs; the sweeps feed fig3c and memory
    assert "n=64" not in (rep / "table.md").read_text()
    c3 = (rep / "fig3c.csv").read_text()
    assert "seminorm" in c3 and ",14,20," in c3  # tol 1e-2 sweep: NFE-F 14, NFE-B 20
    mem = (rep / "memory.csv").read_text()
    assert "294.4" in mem  # RK-Net at tol 1e-4: 32 NFE x 9.2 MiB
    claims = md.split("## Measured against the paper's claims")[1].split("## Figures")[0]
    assert "9.20 MiB per function evaluation (least squares over 3 run(s), NFE 8-32)" in claims
    # ODE-Nets of the fig3c sweep (NFE 8, 14) join the table's (NFE 20) in the memory plot
    assert "the block saved 2.25 MiB for backward at NFE 8-20 (5 run(s))" in claims
    # fake NFE-B = NFE-F + 6 over tol 0.1, 0.01 (sweep) and 1e-3 (table): 180 / 126
    assert "NFE-B / NFE-F (Fig. 3c, dopri5 adjoint, over all logged training iterations): " \
           "1.43" in claims
    assert "ODE-Net 1.00 % (paper 0.42 %)" in claims

    parts = read_parts(tmp / "runs")
    assert [(p["children_started"], p["ended_by"]) for p in parts] == [
        (str(len(c)), "ran to the report")]
    assert 0 < float(parts[0]["seconds"]) < 600
    assert "over 1 invocation: " in md

    assert run() == 0
    assert len(calls()) == len(c)  # nothing re-run, the evaluation included
    parts = read_parts(tmp / "runs")  # the rerun is a second part, that started nothing
    assert [p["children_started"] for p in parts] == [str(len(c)), "0"]
    total = duration(sum(float(p["seconds"]) for p in parts))
    assert "over 2 invocations: " in (rep / "report.md").read_text()
    assert (rep / "report.md").read_text().count(f" = {total} (`wall.csv` there)") == 1


def test_wall_parts_add_up_and_a_broken_record_is_refused_before_any_run(fake):
    run, calls, tmp = fake
    root = tmp / "runs"
    root.mkdir()
    (root / WALL).write_text("started_utc,ended_utc,seconds,children_started,ended_by\n"
                               "2026-12-02T14:12:06+00:00,2026-12-02T14:41:09+00:00,1743.0,"
                               "4,stopped by SIGINT\n")
    assert run("sweeps=false") == 0
    parts = read_parts(root)
    assert [p["ended_by"] for p in parts] == ["stopped by SIGINT", "ran to the report"]
    assert parts_line(parts[:1]) == "1 invocation: 29m (stopped by SIGINT) = 29m"
    line = next(x for x in (tmp / "report" / "report.md").read_text().splitlines()
                if "invocations" in x)
    assert line.startswith(f"- Wall time of the plan's runs under `{root}`, over 2 "
                           "invocations: 29m (stopped by SIGINT) + ")
    n = len(calls())
    (root / WALL).write_text("start,end\n1,2\n")
    with pytest.raises(ReportError, match="expected the columns started_utc"):
        read_parts(root)
    assert run("sweeps=false") == 1 and len(calls()) == n  # nothing ran
    (root / WALL).write_text("started_utc,ended_utc,seconds,children_started,ended_by\n"
                               "a,b,soon,0,x\n")
    with pytest.raises(ReportError, match="line 2: seconds='soon' is not a number"):
        read_parts(root)


def test_interrupted_run_resumes_and_failure_is_reported(fake, monkeypatch):
    run, calls, tmp = fake
    monkeypatch.setenv("FAKE_INTERRUPT", "resnet")
    monkeypatch.setenv("FAKE_FAIL", "mlp")
    assert run("sweeps=false") == 1
    md = (tmp / "report" / "report.md").read_text()
    assert "**Incomplete:**" in md and "table/mlp_seed0 did not finish" in md
    assert "table/resnet_seed0 did not finish" in md
    excluded = md.split("## Runs not in the table")[1]
    assert "NaN loss" in excluded and "interrupted" in excluded
    n = len(calls())
    monkeypatch.delenv("FAKE_FAIL")
    assert run("sweeps=false") == 0
    again = calls()[n:]
    assert [a for a in again if a[0] == "train"] == [
        a for a in again if a[0] == "train" and ("model=mlp" in a or "model=resnet" in a)]
    assert len([a for a in again if a[0] == "train"]) == 2
    resnet = next(a for a in again if "model=resnet" in a)
    assert "resume=true" in resnet  # it left a checkpoint behind
    assert "**Incomplete:**" not in (tmp / "report" / "report.md").read_text()


def test_evaluation_rerun_when_tolerances_change(fake):
    run, calls, tmp = fake
    assert run("sweeps=false") == 0
    n = len(calls())
    assert run("sweeps=false", "plans.tiny.evaluate.tolerances=[1e-1,1e-5]") == 0
    new = calls()[n:]
    assert [a[0] for a in new] == ["evaluate"]


def test_invalid_run_is_listed_and_the_report_still_written(fake):
    run, calls, tmp = fake
    assert run("sweeps=false") == 0
    bad = tmp / "runs" / "table" / "mlp_seed0" / "metrics.json"
    m = json.loads(bad.read_text())
    m["test_error"] = "0.01"  # a string: not a number
    bad.write_text(json.dumps(m))
    assert Training("x", "table", [], bad.parent).status() is None  # not finished: retrained
    cfg = load_config([f"root={tmp / 'runs'}", f"report={tmp / 'report2'}"],
                        plan_file=tmp / "plan.yaml")
    jobs = plan_trainings(cfg, tmp / "runs")
    build_report(cfg, jobs, tmp / "report2", "test", {}, [])
    md = (tmp / "report2" / "report.md").read_text()
    assert f"| {bad.relative_to(tmp / 'runs')} | invalid metrics.json: test_error = '0.01' is not float or null |" in md
    assert "| 1-layer MLP |" not in md and "| ODE-Net |" in md


def test_defaults_come_from_the_registry():
    assert Plan().models == ["mlp", "resnet", "rknet", "odenet"]
    assert EvalPlan().model == "odenet" and SweepPlan().model == "odenet"
    from odenet.reproduce import plan as reproduce_plan

    assert reproduce_plan.ConfigError is ConfigError  # the one every command raises


def test_dry_run_runs_nothing(fake):
    run, calls, tmp = fake
    assert run("dry_run=true") == 0
    assert calls() == [] and not (tmp / "report").exists()


SMOKE_PLAN = textwrap.dedent('''
    experiment: smoke
    plans:
      smoke:
        seeds: [0]
        models: [mlp, odenet]
        evaluate:
          model: odenet
          tolerances: [1e-1, 1e-3]
          overrides: [test_size=64, batch_size=32, error_images=8, reference_tol=1e-6]
        sweeps:
          - {name: fig3c, figure: fig3c, model: odenet, overrides: [train.max_iters_per_epoch=2],
             grid: {solver.rtol: [1e-1, 1e-3]}}
          - {name: memory, figure: memory, model: rknet, overrides: [train.max_iters_per_epoch=1],
             grid: {solver.rtol: [1e-1, 1e-3]}}
''')


@pytest.mark.slow
def test_reproduce_smoke_real_pipeline(tmp_path, monkeypatch):
    """The real `odenet train` / `odenet evaluate` children at smoke scale: an interrupted
    first pass, then a second that resumes it, evaluates and writes the full report."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "data" / "MNIST" / "raw").is_dir():
        pytest.skip("MNIST not prepared (make data)")
    monkeypatch.chdir(repo)
    plan = tmp_path / "plan.yaml"
    plan.write_text(SMOKE_PLAN)
    base = [f"root={tmp_path / 'runs'}", f"report={tmp_path / 'report'}"]
    quiet = lambda *_: None  # noqa: E731
    # pass 1: Table-1 runs only, each stopped after 3 iterations as if interrupted
    cfg = load_config(base + ["sweeps=false", "train_args=[train.stop_after_iters=3]"],
                        plan_file=plan)
    assert reproduce(cfg, "odenet reproduce (smoke, pass 1)", log=quiet) == 1
    odenet_dir = tmp_path / "runs" / "table" / "odenet_seed0"
    first = json.loads((odenet_dir / "metrics.json").read_text())
    assert first["status"] == "interrupted"
    # pass 2: resumes, finishes, evaluates, sweeps, reports
    cfg = load_config(base, plan_file=plan)
    assert reproduce(cfg, "odenet reproduce (smoke)", log=quiet) == 0
    m = json.loads((odenet_dir / "metrics.json").read_text())
    assert m["status"] == "finished" and m["epochs"] == m["epochs_planned"]
    ev = json.loads((odenet_dir / "evaluation.json").read_text())
    assert [r["rtol"] for r in ev["results"]] == [0.1, 0.001]
    rep = tmp_path / "report"
    md = (rep / "report.md").read_text()
    for name in ("fig3a", "fig3b", "fig3c", "fig3d", "memory"):
        assert (rep / f"{name}.png").stat().st_size > 10_000
        assert f"![{name}]({name}.png)" in md
    assert "| ODE-Net | dopri5 tol=1e-3 adjoint | smoke" in md
    assert "| 1-layer MLP |" in md and "**Incomplete:**" not in md
    mem = (rep / "memory.csv").read_text()
    assert mem.count("RK-Net") == 2  # the two memory-sweep runs
