"""The run record's schema (odenet/record.py): what it accepts, what it refuses, and that
the trainer, the registry and the report agree with it."""

from __future__ import annotations

import json

import pytest

from odenet import record
from odenet.record import EpochRecord, IterRecord, Metrics, RecordError


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


def test_every_from_epoch_metric_is_in_the_epoch_record():
    for name in record.names(Metrics, from_epoch=True):
        assert name in {f for f in EpochRecord.__dataclass_fields__}, name


def test_non_finite_numbers_are_written_as_null():
    m = record.to_json(Metrics(model="mlp", test_error=float("nan"), sec_per_iter=float("inf")))
    assert m["test_error"] is None and m["sec_per_iter"] is None
    json.dumps(m, allow_nan=False)
