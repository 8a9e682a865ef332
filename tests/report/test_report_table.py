"""odenet table: grouping, averaging over seeds, paper numbers, excluded runs, files."""

from __future__ import annotations

import csv
import json

import pytest
from fakeruns import metrics_record

from odenet.config.model_registry import MODELS
from odenet.report import load_runs
from odenet.report import table as T
from odenet.report.table import build_rows, main, write_table
from odenet.run import record


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def four_models(make_run):
    make_run("mlp0", model="mlp", params=238510, test_error=0.018, activation_block_mib=None)
    make_run("res0", model="resnet", params=576778, test_error=0.006, seed=0)
    # a ResNet whose config carried other (irrelevant) solver settings: same row
    make_run("res1", model="resnet", params=576778, test_error=0.008, seed=1, solver_rtol=1e-1)
    make_run("rk0", model="rknet", solver_adjoint=False, test_error=0.007,
             activation_block_mib=183.0, nfe_backward_mean=0.0)
    make_run("ode0", seed=0, test_error=0.01, sec_per_iter=0.70)
    make_run("ode1", seed=1, test_error=0.02, sec_per_iter=0.80)
    make_run("ode_tol1", seed=0, solver_rtol=1e-1, solver_atol=1e-1, test_error=0.03,
             nfe_forward_mean=14.0)
    make_run("ode_failed", seed=2, status="failed", reason="SolverError: max_num_steps exceeded",
             test_error=0.9, epochs=1)
    make_run("ode_running", seed=3, status="running", test_error=0.5, epochs=1)


def test_rows_grouped_and_averaged_over_seeds(tmp_path, four_models):
    rows, excluded = build_rows(load_runs([tmp_path / "outputs"])[0])
    assert [(r.model, r.key["solver_rtol"], len(r.runs)) for r in rows] == [
        ("mlp", None, 1), ("resnet", None, 2), ("rknet", 1e-3, 1),
        ("odenet", 0.1, 1), ("odenet", 1e-3, 2)]
    ode = rows[-1]
    # the failed (0.9) and running (0.5) runs are not in the mean
    assert ode.stats["test_error"].mean == pytest.approx(0.015)
    assert ode.stats["test_error"].std == pytest.approx(0.0070710678)
    assert ode.stats["sec_per_iter"].mean == pytest.approx(0.75)
    assert ode.seeds == [0, 1]
    assert rows[1].stats["test_error"].mean == pytest.approx(0.007)
    assert sorted(r.metrics["status"] for r in excluded) == ["failed", "running"]
    # cuda_peak_mib is null on the CPU: no mean, not a zero
    assert ode.stats["cuda_peak_mib"].mean is None


def test_markdown_has_ours_beside_the_papers(tmp_path, four_models):
    res = write_table(load_runs([tmp_path / "outputs"])[0], tmp_path / "rep", ["outputs"])
    md = res["md"].read_text()
    lines = md.splitlines()
    ode = next(line for line in lines if line.startswith("| ODE-Net | dopri5 tol=1e-3"))
    cells = [c.strip() for c in ode.strip("|").split("|")]
    assert cells[3] == "0, 1" and cells[4] == "2"  # seeds, n
    assert cells[5] == "1.50 ± 0.71"               # test error %, mean ± std
    assert cells[6] == "0.42"                      # paper's ODE-Net
    assert cells[7] == "no (1.00–2.00)"            # 0.42 % not within the seeds' range
    assert cells[8] == "208,266" and cells[9] == "0.22 M"
    assert cells[10] == "40.0 ± 0.0 / 2.25 ± 0.00" and cells[12] == "O(1)"
    assert cells[11] == "-"  # the GPU's training peak: none on the CPU
    assert cells[16] == "20.0 ± 0.0" and cells[17] == "26.0 ± 0.0"
    rk = next(line for line in lines if line.startswith("| RK-Net |"))
    assert "| 0.47 |" in rk and "O(L~)" in rk and "183.0" in rk
    mlp = next(line for line in lines if line.startswith("| 1-layer MLP |"))
    assert "| 1.80 |" in mlp and "| 1.60 |" in mlp and "238,510" in mlp
    res_line = next(line for line in lines if line.startswith("| ResNet |"))
    assert "0.70 ± 0.14" in res_line and "| 0.41 |" in res_line
    # excluded runs are listed with status and reason, in their own section
    excl = md.split("## Runs not in the table")[1]
    assert "failed" in excl and "SolverError: max_num_steps exceeded" in excl
    assert "running" in excl and "ode_failed" in excl and "ode_running" in excl
    assert "90.00" not in md and "ode_failed" not in md.split("## Runs not in")[0]


def test_the_gpu_training_peak_has_its_column(tmp_path, make_run):
    """On a GPU the training peak shows what the activation census shows on a CPU: the
    adjoint's O(1) against backprop's O(NFE)."""
    make_run("ode", device="cuda", cuda_train_peak_mib=21.5, cuda_eval_peak_mib=180.0)
    make_run("rk", model="rknet", solver_adjoint=False, device="cuda",
             cuda_train_peak_mib=412.0, cuda_eval_peak_mib=180.0)
    res = write_table(load_runs([tmp_path / "outputs"])[0], tmp_path / "rep")
    lines = res["md"].read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Model |"))
    assert "| Activations (MiB): model / block | GPU train peak (MiB) | Paper memory |" \
        in header
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in lines if line.startswith(("| ODE-Net |", "| RK-Net |"))}
    assert cells["ODE-Net"][11:13] == ["21.5", "O(1)"]
    assert cells["RK-Net"][11:13] == ["412.0", "O(L~)"]
    csv_rows = {r["model"]: r for r in _csv(res["csv"])}
    assert float(csv_rows["odenet"]["cuda_train_peak_mib_mean"]) == 21.5
    assert float(csv_rows["rknet"]["cuda_eval_peak_mib_mean"]) == 180.0


def test_csv_content(tmp_path, four_models):
    res = write_table(load_runs([tmp_path / "outputs"])[0], tmp_path / "rep")
    rows = _csv(res["csv"])
    assert len(rows) == 5
    ode = [r for r in rows if r["model"] == "odenet" and r["solver_rtol"] == "0.001"][0]
    assert ode["n_runs"] == "2" and ode["seeds"] == "0;1"
    assert float(ode["test_error_mean"]) == pytest.approx(0.015)
    assert float(ode["test_error_std"]) == pytest.approx(0.0070710678)
    assert float(ode["paper_test_error"]) == 0.0042 and ode["paper_memory"] == "O(1)"
    assert ode["cuda_peak_mib_mean"] == "" and ode["cuda_train_peak_mib_mean"] == ""
    single = [r for r in rows if r["model"] == "odenet" and r["solver_rtol"] == "0.1"][0]
    assert single["n_runs"] == "1" and single["test_error_std"] == ""
    excl = _csv(res["excluded_csv"])
    # "running" in metrics.json, but no process owns the directory: killed
    assert sorted(r["status"] for r in excl) == ["failed", "killed"]


def test_paper_rows_titles_and_order_come_from_the_registry(tmp_path, four_models):
    rows, _ = build_rows(load_runs([tmp_path / "outputs"])[0])
    assert [r.model for r in rows] == [m for m in MODELS if m in {r.model for r in rows}] + \
        ["odenet"]  # Table 1's order; two ODE-Net rows (two tolerances)
    for row in rows:
        assert row.paper == MODELS[row.model].paper and row.spec.title
    md = write_table(load_runs([tmp_path / "outputs"])[0], tmp_path / "rep")["md"].read_text()
    assert "or the 6 residual blocks alone" in md  # from the ResNet runs' residual_blocks


def test_table_keys_are_record_fields():
    settings = record.names(record.Metrics, record.SETTING)
    measures = record.names(record.Metrics, record.MEASURE)
    assert set(T.SOLVER_KEYS + T.SCALE_KEYS + T.RECIPE_KEYS + T.OPTIM_KEYS) <= set(settings)
    assert set(T.AVERAGED) <= set(measures)


def _bad_files(root):
    """Next to good runs: an empty, a truncated, a foreign and a mistyped metrics.json."""
    for name, text in [("empty", ""), ("truncated", '{"model": "odenet", "stat'),
                       ("foreign", '{"loss": 0.1, "accuracy": 0.99}'),
                       ("mistyped", json.dumps(metrics_record(test_error="0.01")))]:
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(text)


def test_invalid_files_are_listed_not_fatal(tmp_path, four_models, capsys):
    out_root = tmp_path / "outputs"
    _bad_files(out_root / "bad")
    out = tmp_path / "rep"
    assert main([str(out_root), f"out={out}"]) == 0
    std = capsys.readouterr()
    assert "5 row(s) from 7 finished run(s), 2 not finished" in std.out
    assert "4 invalid file(s) listed" in std.out
    assert std.err.count("\n") == 4 and "not read:" in std.err
    md = (out / "table.md").read_text()
    listed = md.split("## Runs not in the table")[1]
    for name, why in [("empty", "not valid JSON"), ("truncated", "not valid JSON"),
                      ("foreign", "missing key 'model'"),
                      ("mistyped", "test_error = '0.01' is not float or null")]:
        line = next(x for x in listed.splitlines() if f"| bad/{name}/metrics.json |" in x)
        assert why in line, (name, line)
    excl = _csv(out / "excluded_runs.csv")
    assert sorted(r["status"] for r in excl) == ["failed", "invalid", "invalid", "invalid",
                                                 "invalid", "killed"]
    # the valid rows are those of the good runs alone
    assert len(_csv(out / "table.csv")) == 5


def test_non_numeric_test_error_is_invalid_not_dropped(make_run, tmp_path):
    make_run("good", test_error=0.01)
    bad = make_run("bad", test_error=0.02)
    m = json.loads((bad / "metrics.json").read_text())
    m["test_error"] = "n/a"
    (bad / "metrics.json").write_text(json.dumps(m))
    runs, invalid = load_runs([tmp_path / "outputs"])
    assert [r.dir.name for r in runs] == ["good"]
    assert [(b.path, b.reason) for b in invalid] == [
        (bad / "metrics.json", "invalid metrics.json: test_error = 'n/a' is not float or null")]


@pytest.mark.parametrize("sizes, says", [
    ((None, None), "Test error over the full test set. "),
    ((100, 100), "Test error over the first 100 test images only (Scale: test n=), not the "
                 "full test set. "),
    ((None, 2500), "Test error over the full test set, but over the first 2,500 test images "
                   "only in rows whose Scale says test n=. "),
])
def test_the_table_says_which_test_images_its_errors_are_over(make_run, tmp_path, sizes,
                                                               says):
    for i, size in enumerate(sizes):
        make_run(f"r{i}", model=("mlp", "resnet")[i], test_size=size)
    res = write_table(load_runs([tmp_path / "outputs"])[0], tmp_path / "rep", ["outputs"])
    md = res["md"].read_text()
    assert says in md and md.count("Test error over") == 1


def test_seeds_with_different_scale_are_not_averaged(make_run, tmp_path):
    make_run("a", epochs_planned=2, epochs=2, test_error=0.01)
    make_run("b", epochs_planned=160, epochs=160, test_error=0.004)
    make_run("c", experiment="paper", test_error=0.005)
    rows, _ = build_rows(load_runs([tmp_path / "outputs"])[0])
    assert len(rows) == 3 and all(len(r.runs) == 1 for r in rows)


def test_main_writes_files_and_reports(tmp_path, four_models, capsys):
    out = tmp_path / "rep"
    assert main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    assert (out / "table.md").exists() and (out / "table.csv").exists()
    msg = capsys.readouterr().out
    assert "5 row(s) from 7 finished run(s), 2 not finished" in msg


def test_main_bad_input_one_line_nonzero(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), f"out={tmp_path / 'rep'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no runs found" in err and "empty" in err
    assert not (tmp_path / "rep").exists()
    assert main(["--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bogus" in err and "keys: run_dirs, out" in err
    for bad, named in ((["nope=1"], "unknown key 'nope'"),
                       ([f"out={tmp_path}", "out=a"], "out given twice"),
                       ([f"out={tmp_path}", "stray"], "bad argument 'stray'")):
        assert main(bad) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and named in err, err


def test_run_directories_as_paths_or_as_a_key(make_run, tmp_path):
    make_run("a")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([str(tmp_path / "outputs"), f"out={one}"]) == 0
    assert main([f"run_dirs=[{tmp_path / 'outputs'}]", f"out={two}"]) == 0
    assert (one / "table.csv").read_text() == (two / "table.csv").read_text()


def test_main_only_failed_runs_still_writes_their_list(make_run, tmp_path):
    make_run("f", status="failed", reason="NaN loss at iteration 3")
    out = tmp_path / "rep"
    assert main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    md = (out / "table.md").read_text()
    assert "(no finished runs)" in md and "NaN loss at iteration 3" in md


def test_runs_of_other_tasks_are_not_table1(make_run, tmp_path, capsys):
    make_run("ode", task="classify", test_error=0.01)
    make_run("old", test_error=0.03)  # no task key: a classification run
    make_run("cnf", task="density", model="cnf", test_error=None)
    make_run("cnf_failed", task="density", model="cnf", status="failed")
    rows, excluded = build_rows(load_runs([tmp_path / "outputs"])[0])
    assert [len(r.runs) for r in rows] == [2] and excluded == []
    assert main([str(tmp_path / "outputs"), f"out={tmp_path / 'rep'}"]) == 0
    # the density runs are in a table of their own (tests/report/test_report_reading.py)
    assert "3 finished run(s) (1 of density models), 1 not finished" in capsys.readouterr().out


# ---------------------------------------------------------------- gradient error
def _gradients(method="dopri5", tol=1e-3, **errors) -> dict:
    """A gradients.json with one float32 result per gradient method given."""
    return {"results": [{"gradient_method": g, "method": method, "rtol": tol, "atol": tol,
                         "dtype": "float32", "status": "ok", "error": e}
                        for g, e in errors.items()]}


def test_gradient_error_column_reads_the_runs_own_method_and_tolerance(make_run, tmp_path):
    from odenet.report.runs import file_id

    ode = make_run("ode0", model="odenet", solver_gradient="adjoint", seed=0)
    ode1 = make_run("ode1", model="odenet", solver_gradient="adjoint", seed=1)
    ck = make_run("ck0", model="odenet", solver_gradient="checkpoint", solver_adjoint=False)
    semi = make_run("semi", model="odenet", solver_gradient="adjoint",
                    solver_adjoint_norm="seminorm")
    other = make_run("tol", model="odenet", solver_gradient="adjoint", solver_rtol=1e-2,
                     solver_atol=1e-2)
    (ode / "gradients.json").write_text(json.dumps(
        _gradients(backprop=0.07, adjoint=0.08, adjoint_seminorm=0.09, checkpoint=0.069)))
    (ode1 / "gradients.json").write_text(json.dumps(_gradients(adjoint=0.10)))
    (ck / "gradients.json").write_text(json.dumps(_gradients(adjoint=0.5, checkpoint=0.068)))
    (semi / "gradients.json").write_text(json.dumps(_gradients(adjoint=0.5,
                                                               adjoint_seminorm=0.2)))
    # measured at another tolerance than the run's own (1e-2): not its column's value
    (other / "gradients.json").write_text(json.dumps(_gradients(adjoint=0.3)))
    # a checkpoint retrained since gradients.json was written: left out
    stale = make_run("stale", model="rknet", solver_gradient="backprop", solver_adjoint=False)
    (stale / "checkpoint.pt").write_bytes(b"v1")
    g = _gradients(backprop=0.07)
    g["checkpoint_file"] = file_id(stale / "checkpoint.pt")
    (stale / "gradients.json").write_text(json.dumps(g))
    (stale / "checkpoint.pt").write_bytes(b"v2")

    runs, invalid = load_runs([tmp_path / "outputs"])
    assert not invalid
    assert next(r for r in runs if r.dir == stale).gradients_skipped.startswith(
        "checkpoint.pt changed")
    rows, _ = build_rows(runs)
    err = {(r.key["solver_gradient"], r.key["solver_adjoint_norm"], r.key["solver_rtol"],
            r.model): r.stats["gradient_error"] for r in rows}
    adj = err[("adjoint", "default", 1e-3, "odenet")]
    assert adj.values == [0.08, 0.10] and adj.std == pytest.approx(0.0141421, rel=1e-4)
    assert err[("checkpoint", "default", 1e-3, "odenet")].values == [0.068]
    assert err[("adjoint", "seminorm", 1e-3, "odenet")].values == [0.2]
    assert err[("adjoint", "default", 1e-2, "odenet")].values == []
    assert err[("backprop", "default", 1e-3, "rknet")].values == []
    out = tmp_path / "rep"
    write_table(runs, out)
    md = (out / "table.md").read_text()
    line = next(x for x in md.splitlines() if "dopri5 tol=1e-3 checkpoint" in x)
    cells = [c.strip() for c in line.split("|")]
    assert cells[-3] == "0.068" and cells[7] == "-"  # no paper row: the paper has none
    line = next(x for x in md.splitlines() if "dopri5 tol=1e-3 adjoint |" in x)
    assert [c.strip() for c in line.split("|")][-3] == "0.09 ± 0.014"
    csv_rows = {(r["solver_gradient"], r["solver_adjoint_norm"], r["solver_rtol"]): r
                for r in _csv(out / "table.csv") if r["model"] == "odenet"}
    assert float(csv_rows[("checkpoint", "default", "0.001")]["gradient_error_mean"]) == 0.068
    assert csv_rows[("adjoint", "default", "0.01")]["gradient_error_mean"] == ""
