"""The run record's schema (odenet/run/record.py): what it accepts, what it refuses, and that
the trainer, the registry and the report agree with it."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from odenet.run import record
from odenet.run.record import EpochRecord, IterRecord, Metrics, RecordError


def test_fake_records_are_complete_and_valid():
    m = record.fake(model="odenet", status="finished", test_error=0.01)
    assert set(m) == set(record.for_task(Metrics, "classify"))
    assert "test_nll" not in m  # a classification run writes no density fields
    assert record.check(Metrics, m) == m
    d = record.fake(model="cnf", task="density", test_nll=2.4)
    assert d["test_nll"] == 2.4 and d["test_error"] is None
    with pytest.raises(TypeError):
        record.fake(model="odenet", no_such_metric=1)


@pytest.mark.parametrize("change,reason", [
    ({"test_error": "0.1"}, "test_error = '0.1' is not float or null"),
    ({"params": 2.5}, "params = 2.5 is not int or null"),
    ({"params": True}, "params = True is not int or null"),
    ({"status": "done"}, "status 'done' is not one of"),
    ({"model": ""}, "missing key 'model'"),
    ({"solver_adjoint": "yes"}, "solver_adjoint = 'yes' is not bool or null"),
])
def test_bad_fields_are_named(change, reason):
    with pytest.raises(RecordError, match=reason.replace("(", r"\(")):
        record.check(Metrics, {**record.fake(model="mlp"), **change})


def test_old_records_load_with_defaults_and_unknown_keys_are_kept():
    old = {"model": "mlp", "status": "finished", "test_error": 0.02, "from_the_future": 1}
    m = record.check(Metrics, old)
    assert m["task"] == "classify" and m["residual_blocks"] is None and m["epochs"] == 0
    assert m["from_the_future"] == 1


def test_files_fail_with_their_path_and_reason(tmp_path):
    p = tmp_path / "metrics.json"
    for text, why in [("", "not valid JSON"), ('{"model": "mlp"', "not valid JSON"),
                      ("[1, 2]", "expected a JSON object"),
                      ('{"model": "mlp", "status": "finished", "seed": "x"}', "seed = 'x'")]:
        p.write_text(text)
        with pytest.raises(RecordError, match=why) as info:
            record.read_metrics(p)
        assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_history_lines_are_checked_and_a_cut_last_line_is_dropped(tmp_path):
    p = tmp_path / "history.jsonl"
    it = record.to_json(IterRecord(epoch=0, iter=0, step=1, loss=0.5, seconds=0.1, lr=0.1))
    ep = record.to_json(EpochRecord(epoch=0, test_error=0.1))
    p.write_text(json.dumps(it) + "\n" + json.dumps(ep) + "\n" + '{"kind": "it')
    assert [r["kind"] for r in record.read_history(p)] == ["iter", "epoch"]
    p.write_text(json.dumps({**it, "loss": "x"}) + "\n" + json.dumps(ep) + "\n")
    with pytest.raises(RecordError, match=r"history.jsonl:1: .*loss = 'x'"):
        record.read_history(p)
    p.write_text(json.dumps({"kind": "step"}) + "\n")
    with pytest.raises(RecordError, match="kind 'step' is not one of"):
        record.read_history(p)


def test_every_metric_reduced_from_the_epochs_is_in_the_epoch_record():
    reduced = [f.name for f in fields(Metrics) if f.metadata["reduce"] is not None]
    assert reduced
    for name in reduced:
        assert name in {f for f in EpochRecord.__dataclass_fields__}, name


def test_non_finite_numbers_are_written_as_null():
    m = record.to_json(Metrics(model="mlp", test_error=float("nan"), sec_per_iter=float("inf")))
    assert m["test_error"] is None and m["sec_per_iter"] is None
    json.dumps(m, allow_nan=False)


# the reductions, each over the values 3, 1, 2 (a new one adds its line)
FOLDS = {record.MEAN: 2.0, record.MEDIAN: 2.0, record.LAST: 2, record.MAX: 3, record.SUM: 6}


def test_every_reduction_is_tested():
    assert set(FOLDS) == set(record.REDUCTIONS)


@pytest.mark.parametrize("how", list(FOLDS))
def test_each_reduction_folds_its_values(how):
    r = record.REDUCTIONS[how]
    state = r.start()
    for v in (3, 1, 2):
        state = r.add(state, v)
    assert r.value(state) == FOLDS[how] and r.value(r.start()) is None


def test_an_epoch_is_its_iterations_reduced_as_its_fields_declare():
    """The trainer copies nothing by hand; a None is a value not measured then."""
    state = record.epoch_state()
    common = {"nfe_backward": None, "activation_block_mib": None}
    record.add_iteration(state, {**common, "loss": 2.0, "nfe_forward": 20,
                                 "activation_mib": 5.0, "activation_nfe_forward": 20,
                                 "sample_seconds": None})  # the measured iteration
    for loss, nfe, sec in (1.0, 26, 0.3), (0.5, 32, 0.1):
        record.add_iteration(state, {**common, "loss": loss, "nfe_forward": nfe,
                                     "activation_mib": None, "activation_nfe_forward": None,
                                     "sample_seconds": sec})
    assert record.epoch_values(state) == {
        "loss": 3.5 / 3, "nfe_forward_mean": 26.0, "nfe_backward_mean": None,
        "activation_mib": 5.0, "activation_block_mib": None, "activation_nfe_forward": 20,
        "sec_per_iter": pytest.approx(0.2), "kinetic_energy": None,
        "jacobian_frobenius": None}
    json.dumps(state)  # plain types: a checkpoint holds it mid-epoch


def test_metrics_hold_the_last_epochs_values_none_included():
    m = Metrics(model="mlp")
    record.add_epoch(m, record.fake(EpochRecord, test_error=0.1, activation_mib=3.0))
    record.add_epoch(m, record.fake(EpochRecord, test_error=0.05, activation_mib=None))
    assert (m.test_error, m.activation_mib, m.params) == (0.05, None, None)


def test_the_tables_headers_are_the_fields_titles():
    from odenet.report import table

    for name in ("params", "sec_per_iter", "sec_per_test_batch", "nfe_forward_mean",
                 "nfe_backward_mean", "device"):
        assert record.title(Metrics, name) in table.MD_HEADER, name
    assert "Test error (%)" in table.MD_HEADER  # shown in percent of the fraction
    assert {"Test NLL (nats)", "Train NLL (nats)"} <= set(table.DENSITY_MD_HEADER)
