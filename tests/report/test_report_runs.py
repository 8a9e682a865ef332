"""load_runs: finding and reading run directories through the run record (odenet/run/record.py)."""

from __future__ import annotations

import json

import pytest
from fakeruns import evaluation_record, history_records, metrics_record, write_run

from odenet.report import ReportError, load_runs
from odenet.report.runs import fmt_tol, has_ode_block, residual_blocks, solver_label


def test_finds_nested_runs_with_history_and_evaluation(tmp_path):
    write_run(tmp_path / "runs" / "a", history=history_records(epochs=2, iters=3),
              evaluation=evaluation_record(), seed=0)
    write_run(tmp_path / "sweeps" / "2026" / "0", seed=1)
    (tmp_path / "empty").mkdir()
    runs, invalid = load_runs([tmp_path])
    assert invalid == []
    assert [r.dir.name for r in runs] == ["a", "0"]
    a, b = runs
    assert a.metrics["seed"] == 0 and b.metrics["seed"] == 1
    assert len(a.iters()) == 6 and len(a.epochs()) == 2
    assert a.evaluation["results"][0]["nfe_forward_mean"] == 14
    assert b.history == [] and b.evaluation is None


def test_overlapping_dirs_count_each_run_once(tmp_path):
    write_run(tmp_path / "runs" / "a")
    runs, _ = load_runs([tmp_path, tmp_path / "runs", tmp_path / "runs" / "a" / "metrics.json"])
    assert len(runs) == 1


def test_hydra_record_dirs_are_not_searched(tmp_path):
    write_run(tmp_path / "a")
    write_run(tmp_path / "a" / ".hydra")  # not a run: hidden dirs are skipped
    assert len(load_runs([tmp_path])[0]) == 1


def test_missing_directory_is_one_line_error(tmp_path):
    with pytest.raises(ReportError) as e:
        load_runs([tmp_path / "nope"])
    msg = str(e.value)
    assert "nope" in msg and "\n" not in msg


def test_no_runs_found(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ReportError, match="no runs found: no metrics.json below"):
        load_runs([tmp_path / "x"])


@pytest.mark.parametrize("content, why", [
    ("", "not valid JSON"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"status": "finished"}), "missing key 'model'"),
    (json.dumps({"model": "odenet", "status": "done"}), "status 'done' is not one of"),
    (json.dumps(metrics_record(test_error="0.01")), "test_error = '0.01' is not float"),
    (json.dumps(metrics_record(epochs=True)), "epochs = True is not int"),
])
def test_invalid_metrics_are_listed_with_path_and_reason(tmp_path, content, why):
    write_run(tmp_path / "good")
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.json").write_text(content)
    runs, invalid = load_runs([tmp_path])
    assert [r.dir.name for r in runs] == ["good"]
    [bad] = invalid
    assert bad.path == d / "metrics.json" and why in bad.reason and "\n" not in bad.reason


def test_old_records_load_with_defaults(tmp_path):
    """metrics.json written before task, test_size, solver_last_step, residual_blocks."""
    m = metrics_record(model="resnet")
    for k in ("task", "test_size", "solver_last_step", "residual_blocks"):
        del m[k]
    write_run(tmp_path / "old", metrics=m)
    [run], invalid = load_runs([tmp_path])
    assert invalid == [] and run.metrics["task"] == "classify"
    assert residual_blocks(run.metrics) == 6  # the model's default setting
    assert not run.has_ode_block


def test_traits_not_names():
    assert has_ode_block("odenet") and has_ode_block("rknet") and has_ode_block("cnf")
    assert not has_ode_block("resnet") and not has_ode_block("nosuchmodel")
    assert residual_blocks(metrics_record(model="resnet", residual_blocks=3)) == 3
    assert residual_blocks(metrics_record(model="mlp")) is None


def test_truncated_last_history_line_is_dropped_but_bad_middle_line_is_invalid(tmp_path):
    d = write_run(tmp_path / "run")
    good = json.dumps(history_records(epochs=1, iters=1)[0])
    (d / "history.jsonl").write_text(good + "\n" + good + "\n" + '{"kind": "it')
    assert len(load_runs([tmp_path])[0][0].history) == 2
    (d / "history.jsonl").write_text(good + "\n" + "garbage\n" + good + "\n")
    runs, [bad] = load_runs([tmp_path])
    assert runs == [] and bad.path == d / "history.jsonl"
    assert bad.reason == "line 2: invalid history.jsonl: line is not JSON"
    # the table does not read histories: the run is in it
    assert len(load_runs([tmp_path], history=False)[0]) == 1


def test_bad_evaluation_is_invalid(tmp_path):
    d = write_run(tmp_path / "run", evaluation=evaluation_record())
    (d / "evaluation.json").write_text("[]")
    runs, [bad] = load_runs([tmp_path])
    assert runs == [] and bad.path == d / "evaluation.json" and "results" in bad.reason


def test_labels():
    assert fmt_tol(1e-3) == "1e-3" and fmt_tol(1.5e-4) == "1.5e-4" and fmt_tol(0.1) == "0.1"
    assert fmt_tol(None) == "-"
    assert solver_label(metrics_record()) == "dopri5 tol=1e-3 adjoint"
    assert solver_label(metrics_record(solver_adjoint_norm="seminorm", solver_atol=1e-4)) == \
        "dopri5 rtol=1e-3 atol=1e-4 adjoint (seminorm)"
    assert solver_label(metrics_record(solver_method="rk4", solver_step_size=0.25,
                                       solver_adjoint=False)) == "rk4 h=0.25 backprop"
