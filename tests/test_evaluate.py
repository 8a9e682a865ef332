"""odenet evaluate: a checkpoint's ODE block re-solved per tolerance (Figure 3 a, b)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from odenet.analysis import evaluate as E
from odenet.config.errors import ConfigError
from odenet.models import build_model, ode_blocks
from odenet.solvers import odeint

DATA = Path(__file__).resolve().parents[1] / "data"
needs_mnist = pytest.mark.skipif(not (DATA / "MNIST" / "raw").is_dir(),
                                 reason="MNIST not prepared (make data)")


def write_checkpoint(path: Path, model: str = "odenet", seed: int = 0) -> Path:
    """A Contract-2 checkpoint (model state + resolved config) with untrained weights."""
    cfg = {"model": {"name": model}, "solver": {"method": "dopri5", "rtol": 1e-3},
           "data": {"root": str(DATA), "normalize": False}}
    torch.manual_seed(seed)
    net = build_model(cfg["model"], cfg["solver"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "config": cfg, "epoch": 1}, path)
    return path


ARGS = ["tolerances=[1e-1,1e-4]", "test_size=24", "batch_size=12", "error_images=12",
        "reference_tol=1e-7", "threads=1"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    if not (DATA / "MNIST" / "raw").is_dir():
        pytest.skip("MNIST not prepared (make data)")
    ck = write_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint.pt")
    assert E.main([f"checkpoint={ck}", *ARGS]) == 0
    return ck, json.loads((ck.parent / "evaluation.json").read_text())


def test_writes_json_next_to_checkpoint(evaluated):
    ck, ev = evaluated
    assert ev["checkpoint"] == "checkpoint.pt"  # relative: no machine path
    assert ev["test_images"] == 24 and ev["error_images"] == 12
    assert ev["trained_with"]["rtol"] == 1e-3 and ev["trained_with"]["adjoint"] is True
    assert [r["rtol"] for r in ev["results"]] == [0.1, 1e-4]
    assert all(r["status"] == "ok" for r in ev["results"])


def test_records_what_identifies_the_checkpoint(evaluated, tmp_path):
    """evaluation.json names the checkpoint's size and SHA-256; odenet figures compares
    them with the run's checkpoint.pt and leaves out the evaluation once it changed."""
    from odenet.report.runs import file_id, stale_evaluation

    ck, ev = evaluated
    assert ev["checkpoint_file"] == file_id(ck)
    assert len(ev["checkpoint_file"]["sha256"]) == 64
    assert stale_evaluation(ck.parent, ev) is None
    run = tmp_path / "run"  # the same run, its checkpoint retrained (another seed)
    write_checkpoint(run / "checkpoint.pt", seed=1)
    assert "checkpoint.pt changed since it was evaluated" in stale_evaluation(run, ev)


def test_tighter_tolerance_more_nfe_less_error(evaluated):
    _, ev = evaluated
    loose, tight = ev["results"]
    assert tight["nfe_forward_mean"] > loose["nfe_forward_mean"] >= 8
    assert tight["numerical_error"] < loose["numerical_error"] / 5
    assert loose["numerical_error_max"] >= loose["numerical_error"] > 0
    # the reference is far more accurate than anything it judges
    assert ev["reference"]["check_error"] < 0.1 * tight["numerical_error"]
    assert ev["reference"]["ok"] is True
    assert ev["reference"]["nfe_forward_mean"] > tight["nfe_forward_mean"]
    for r in ev["results"]:
        assert r["forward_seconds"] > r["block_seconds"] > 0
        assert r["forward_cpu_seconds"] > 0
        assert 0 <= r["test_error"] <= 1


def _test_batch(n=12):
    from odenet.data import MnistBatches, load_mnist

    x, y = load_mnist(DATA, train=False)
    return MnistBatches(x[:n], y[:n], n).batch(0)


def test_numerical_error_matches_its_definition(evaluated):
    """Recompute the error of the loose solve independently: block output at tol 0.1 vs a
    float64 solve at 1e-9, relative L2 per image, mean over images."""
    ck, ev = evaluated
    c = torch.load(ck, weights_only=True)
    net = build_model(c["config"]["model"], c["config"]["solver"])
    net.load_state_dict(c["model"])
    net.eval()
    block = ode_blocks(net)[0]
    x, _ = _test_batch()
    with torch.no_grad():
        h0 = net.features(x)
        h = odeint(block.func, h0, torch.tensor([0.0, 1.0]), method="dopri5", rtol=0.1,
                   atol=0.1)[-1]
        f64 = block.func.double()
        ref = odeint(f64, h0.double(), torch.tensor([0.0, 1.0], dtype=torch.float64),
                     method="dopri5", rtol=1e-9, atol=1e-9)[-1]
    e = ((h.double() - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).mean().item()
    assert ev["results"][0]["numerical_error"] == pytest.approx(e, rel=0.02)


def test_test_error_matches_the_model_at_the_same_tolerance(evaluated):
    ck, ev = evaluated
    c = torch.load(ck, weights_only=True)
    net = build_model(c["config"]["model"], c["config"]["solver"])
    net.load_state_dict(c["model"])
    net.eval()
    ode_blocks(net)[0].configure(rtol=1e-4, atol=1e-4)
    from odenet.data import MnistBatches, load_mnist

    xs, ys = load_mnist(DATA, train=False)
    wrong = 0
    with torch.no_grad():
        for x, y in MnistBatches(xs[:24], ys[:24], 12):
            wrong += int((net(x).argmax(1) != y).sum())
    assert ev["results"][1]["test_error"] == pytest.approx(wrong / 24)


@needs_mnist
def test_out_setting(tmp_path):
    ck = write_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "elsewhere" / "ev.json"
    assert E.main([f"checkpoint={ck}", "tolerances=[1e-1]", "test_size=12", "batch_size=12",
                   "error_images=4", "reference_tol=1e-6", f"out={out}"]) == 0
    ev = json.loads(out.read_text())
    assert not (tmp_path / "evaluation.json").exists()
    assert ev["test_images"] == 12 and ev["error_images"] == 4


@needs_mnist
@pytest.mark.parametrize("argv, needle", [
    ([], "checkpoint is required"),
    (["checkpoint=/nonexistent/ck.pt"], "no such file"),
    (["checkpoint=CK", "tolerances=[-1]"], "tolerances: -1"),
    (["checkpoint=CK", "tolerances=[]"], "tolerances=[]"),
    (["checkpoint=CK", "tolerances=[1e-3]", "reference_tol=1e-4"], "reference_tol="),
    (["checkpoint=CK", "dtype=float16"], "dtype='float16'; accepted: float32, float64"),
    (["checkpoint=CK", "tolerances=[1e-3,1e-20]"], "tolerances: 1e-20 is below what float32 "
     "resolves for dopri5 (eps**2 = 1.4e-14): raise it to at least 1.4e-14"),
    (["checkpoint=CK", "tolerances=[1e-3]", "reference_tol=1e-33"],
     "reference_tol: 1e-33 is below what float64 resolves for dopri5"),
    (["checkpoint=CK", "method=nope"], "method='nope'; accepted:"),
    (["checkpoint=CK", "tolerance=1e-3"], "tolerance"),
    (["checkpoint=CK", "batch_size=abc"], "batch_size"),
    (["checkpoint=RESNET"], "model 'resnet' has no ODE block(s)"),
    (["checkpoint=GARBAGE"], "not a readable checkpoint"),
    (["checkpoint=EMPTY"], "not a readable checkpoint"),
    (["checkpoint=FOREIGN"], "missing 'model'/'config'"),
    (["checkpoint"], "expected key=value"),
    (["checkpoint=CK", "tolerances=[1e-1]", "test_size=4", "max_num_steps=3"],
     "reference solve failed"),
])
def test_bad_input_one_line(tmp_path, capsys, argv, needle):
    ck = write_checkpoint(tmp_path / "ck.pt")
    res = write_checkpoint(tmp_path / "res.pt", model="resnet")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")  # torch, not odenet's
    subst = {"CK": str(ck), "RESNET": str(res), "GARBAGE": str(garbage),
             "EMPTY": str(tmp_path / "empty.pt"), "FOREIGN": str(tmp_path / "foreign.pt")}
    argv = [a.split("=")[0] + "=" + subst.get(a.split("=", 1)[1], a.split("=", 1)[1])
            if "=" in a else a for a in argv]
    assert E.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "evaluation.json").exists()


# ------------------------------------------------------------------ density models
def test_a_cnf_is_measured_nfe_error_and_nll_per_tolerance(tmp_path, density_checkpoint):
    """A CNF's ODE block is re-solved like the ODE-Net's: NFE, numerical error and the
    test NLL at each tolerance."""
    from odenet.cnf.data import split_points
    from odenet.training.tasks import DensityTask

    ck = density_checkpoint(tmp_path / "checkpoint.pt")
    # float64: an untrained CNF's errors at tight tolerances lie below float32's round-off
    assert E.main([f"checkpoint={ck}", "tolerances=[1e-1,1e-6]", "batch_size=16",
                   "dtype=float64", "reference_tol=1e-11", "threads=1"]) == 0
    ev = json.loads((tmp_path / "evaluation.json").read_text())
    assert ev["model"] == "cnf" and ev["test_images"] == 40
    loose, tight = ev["results"]
    assert all(r["status"] == "ok" and "test_error" not in r for r in ev["results"])
    assert tight["nfe_forward_mean"] > loose["nfe_forward_mean"]
    assert tight["numerical_error"] < loose["numerical_error"]
    # the NLL is the model's own, at that tolerance, on the run's test points
    net = build_model({"name": "cnf"}, {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6})
    net.load_state_dict(torch.load(ck, weights_only=True)["model"])
    net.eval()
    c = torch.load(ck, weights_only=True)["config"]
    with torch.no_grad():
        sums = DensityTask().eval_batch(net, (split_points(SimpleNamespace(**c["data"]), 0,
                                                           False),))
    assert tight["test_nll"] == pytest.approx(float(sums["nll"]) / 40, rel=1e-5)


@pytest.mark.parametrize("model, cfg, needle", [
    ("planar", {}, "model 'planar' has no ODE block(s); a model with one is needed"),
    ("cnf", {"eval_trace": "hutchinson"}, "model.eval_trace=hutchinson"),
])
def test_a_density_model_that_cannot_be_measured_is_refused(tmp_path, capsys, model, cfg,
                                                            needle, density_checkpoint):
    ck = density_checkpoint(tmp_path / "checkpoint.pt", model, **cfg)
    assert E.main([f"checkpoint={ck}", "tolerances=[1e-2]", "threads=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "evaluation.json").exists()


def test_a_checkpoint_where_nothing_can_be_written_is_refused_before_the_work(
        tmp_path, capsys, monkeypatch, read_only, density_checkpoint):
    """Refused in one line before anything is computed (not computed, then lost to an
    OSError traceback)."""
    ck = density_checkpoint(tmp_path / "run" / "checkpoint.pt")
    read_only(ck.parent)
    monkeypatch.setattr(E, "evaluate", lambda *a, **k: pytest.fail("computed"))
    assert E.main([f"checkpoint={ck}", "tolerances=[1e-2]", "threads=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {ck.parent / 'evaluation.json'}" in err
    assert "give out=PATH.json in a writable directory" in err


def test_the_recorded_checkpoint_is_relative_to_the_result(tmp_path):
    """A result written elsewhere (out=) names its checkpoint from its own folder."""
    from odenet.analysis.probe import recorded_checkpoint

    ck = tmp_path / "run" / "checkpoint.pt"
    cfg = E.EvaluateConfig(checkpoint=str(ck), out=str(tmp_path / "results" / "ev.json"))
    assert recorded_checkpoint(cfg, "evaluation.json") == "../run/checkpoint.pt"
    cfg = E.EvaluateConfig(checkpoint=str(ck))
    assert recorded_checkpoint(cfg, "evaluation.json") == "checkpoint.pt"


def test_the_block_is_timed_after_the_downsampling_is_done(monkeypatch):
    """On a GPU a layer's call returns before its kernels have run: block_seconds starts
    after a sync, so the downsampling's GPU time is not the block's."""
    from odenet.training import measure
    from odenet.training.tasks import ClassifyTask

    torch.manual_seed(0)
    model = build_model({"name": "odenet"}, {"method": "dopri5", "rtol": 1e-3}).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        h0 = model.ode_input(x)
        ref = model.ode_block(h0).double()
    events: list[str] = []
    monkeypatch.setattr(measure, "synchronize", lambda device: events.append("sync"))
    downsampling = model.ode_input
    monkeypatch.setattr(model, "ode_input", lambda x: events.append("input") or downsampling(x))
    model.ode_block.register_forward_pre_hook(lambda *a: events.append("block"))
    with torch.no_grad():
        row = E._measure_tolerance(model, ClassifyTask(), [(x, torch.zeros(4, dtype=torch.long))],
                                   [h0], ref, torch.float32, 1)
    last = len(events) - 1 - events[::-1].index("input")
    assert events[last:] == ["input", "sync", "block", "sync", "sync"]
    assert row["block_seconds"] > 0 and row["numerical_error"] < 1e-2


def test_the_float32_side_runs_ieee_float32(evaluated):
    """No TF32 floor under the float32 errors (runtime.set_exact_math), and it is said."""
    _, ev = evaluated
    assert ev["float32_math"] == "ieee"
    assert torch.backends.cudnn.allow_tf32 is False


class _Bad(Exception):
    pass


def _shell(tmp_path, prepare=None, run=None, argv=()):
    from odenet.analysis.probe import command_main

    out = tmp_path / "ev.json"
    return command_main(list(argv), command="probe", doc="The probe.\n", config_file="p.yaml",
                        errors=(_Bad,), prepare=prepare or (lambda argv: ("cfg", out)),
                        run=run or (lambda cfg, out: ({"results": []}, "done")))


@pytest.mark.parametrize("statuses, code", [(["ok", "failed"], 0), (["failed", "failed"], 1),
                                            (["ok"], 0)])
def test_the_command_shell_exits_1_only_when_every_result_failed(tmp_path, capsys, statuses,
                                                                 code):
    record = {"results": [{"status": s} for s in statuses]}
    assert _shell(tmp_path, run=lambda cfg, out: (record, f"tolerances -> {out}")) == code
    ok = statuses.count("ok")
    assert capsys.readouterr().out == f"odenet probe: {ok}/{len(statuses)} tolerances -> " \
                                      f"{tmp_path / 'ev.json'}\n"


def test_the_command_shell_prints_its_help_and_does_no_work(tmp_path, capsys):
    def prepare(argv):
        raise AssertionError("no work on --help")

    assert _shell(tmp_path, prepare=prepare, argv=["--help"]) == 0
    assert capsys.readouterr().out == "The probe.\n\nSettings: configs/p.yaml (key=value overrides).\n"


@pytest.mark.parametrize("where, error, message", [
    ("prepare", ConfigError("rtol must be positive, got 0"), "rtol must be positive, got 0"),
    ("run", _Bad("the checkpoint has no ODE block"), "the checkpoint has no ODE block"),
    ("run", OSError(28, "No space left on device"), "writing {out}: No space left on device"),
])
def test_the_command_shell_reports_an_error_in_one_line_exit_2(tmp_path, capsys, where, error,
                                                               message):
    def fail(*args):
        raise error

    assert _shell(tmp_path, **{where: fail}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"odenet probe: error: {message.format(out=tmp_path / 'ev.json')}\n"
