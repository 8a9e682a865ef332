"""odenet gradients: each gradient method's parameter-gradient error, NFE, time, memory.

A tiny untrained ODE-Net, 4 training images, loose tolerances: the structure of
gradients.json and the properties that hold at any size (checkpoint and reversible give
the exact gradient of their discrete solve; the adjoint does not)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from odenet.analysis import gradient_error
from odenet.analysis import gradients as G
from odenet.analysis.gradient_figure import draw_figure
from odenet.models import build_model

DATA = Path(__file__).resolve().parents[1] / "data"
pytestmark = pytest.mark.skipif(not (DATA / "MNIST" / "raw").is_dir(),
                                reason="MNIST not prepared (make data)")
FAST = ["batch_size=4", "tolerances=[1e-2]", "reference_tol=1e-4", "threads=1",
        f"data_root={DATA}"]


def write_checkpoint(path: Path) -> Path:
    """A Contract-2 checkpoint (model state + resolved config) with untrained weights."""
    cfg = {"model": {"name": "odenet"}, "solver": {"method": "dopri5", "rtol": 1e-3},
           "data": {"root": str(DATA), "normalize": False}}
    torch.manual_seed(0)
    net = build_model(cfg["model"], cfg["solver"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "config": cfg, "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    ck = write_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint.pt")
    assert G.main([f"checkpoint={ck}", *FAST]) == 0
    return ck, json.loads((ck.parent / "gradients.json").read_text())


def rows(record):
    return {r["gradient_method"]: r for r in record["results"]}


def test_json_next_to_checkpoint_with_every_method_and_the_figure(measured):
    ck, rec = measured
    assert rec["checkpoint"] == "checkpoint.pt" and rec["checkpoint_file"]["size"] > 0
    assert (ck.parent / "gradients.png").stat().st_size > 0
    assert rec["images"] == 4 and rec["model"] == "odenet"
    assert set(rec["reference"]) >= {"method", "gradient", "rtol", "dtype", "check_error", "ok"}
    assert math.isfinite(rec["reference"]["check_error"])
    r = rows(rec)
    assert list(r) == list(G.GRADIENT_METHODS)
    assert r["reversible"]["method"] == "adaptive_reversible_heun"
    assert {r[m]["method"] for m in r if m != "reversible"} == {"dopri5"}
    for row in r.values():
        assert row["status"] == "ok" and row["rtol"] == 1e-2
        assert set(row["per_parameter"]) == set(rec["parameters"])
        for k in ("error", "error_vs_discrete", "error_vs_discrete_float64", "seconds",
                  "nfe_forward", "nfe_backward", "block_activation_mib"):
            assert math.isfinite(row[k]) and row[k] >= 0, k
    assert r["backprop"]["nfe_backward"] == 0 and r["adjoint"]["nfe_backward"] > 0
    # the adjoint keeps O(1) activations; backprop through the solver O(NFE)
    assert r["adjoint"]["block_activation_mib"] < r["backprop"]["block_activation_mib"]


def test_the_float32_errors_are_measured_in_ieee_float32(measured):
    """No TF32 floor under the float32 errors (runtime.set_exact_math), and it is said."""
    import torch

    assert measured[1]["float32_math"] == "ieee" and torch.backends.cudnn.allow_tf32 is False


def test_checkpoint_and_reversible_are_exact_discrete_gradients(measured):
    r = rows(measured[1])
    assert r["backprop"]["error_vs_discrete"] == 0.0  # it is the discrete gradient
    # against float64 backprop through the same scheme: float32 backprop through dopri5
    # itself strays on this 4-image batch (~2e-2 from float64, while checkpoint agrees
    # with float64 to 1e-6), so float32 backprop is not a safe yardstick here
    assert r["checkpoint"]["error_vs_discrete_float64"] <= 1e-5
    assert r["reversible"]["error_vs_discrete_float64"] <= 1e-5
    assert r["reversible"]["error_vs_discrete"] <= 1e-5
    # the adjoint differentiates the continuous problem, not its discrete solve
    assert math.isfinite(r["adjoint"]["error"])
    assert r["adjoint"]["error"] > r["checkpoint"]["error_vs_discrete_float64"]
    assert r["adjoint"]["error_vs_discrete_float64"] > \
        100 * r["checkpoint"]["error_vs_discrete_float64"]


def test_float64_discrete_gradients_agree_to_round_off(tmp_path):
    out = tmp_path / "g64.json"
    assert G.main(["checkpoint=init", f"out={out}", "dtype=float64",
                   "methods=[checkpoint,reversible]", *FAST]) == 0
    rec = json.loads(out.read_text())
    assert rec["checkpoint"] == "init" and (tmp_path / "g64.png").is_file()
    for row in rec["results"]:
        assert row["error_vs_discrete"] <= 1e-10, row["gradient_method"]


def test_bf16_gradients_are_measured_against_the_same_reference(tmp_path):
    """precision=bf16 measures the fast path's gradients: the same float64 reference, the
    discrete comparison in bf16 too (backprop's error against it is 0: the same solve)."""
    out = {p: tmp_path / f"{p}.json" for p in ("fp32", "bf16")}
    for p, path in out.items():
        assert G.main(["checkpoint=init", f"out={path}", f"precision={p}",
                       "methods=[backprop,adjoint]", *FAST]) == 0
    rec = {p: rows(json.loads(path.read_text())) for p, path in out.items()}
    for name in ("backprop", "adjoint"):
        fp32, bf16 = rec["fp32"][name], rec["bf16"][name]
        assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
        assert bf16["error"] != fp32["error"] and bf16["error"] < fp32["error"] + 0.05
    assert rec["bf16"]["backprop"]["error_vs_discrete"] == 0


@pytest.mark.parametrize("arg, message", [
    ("methods=[adjoint,sgd]", "methods: 'sgd' is not a gradient method; accepted: backprop"),
    ("tolerances=[0]", "tolerances: 0.0 is not a positive number"),
    ("reversible_method=dopri5", "reversible_method='dopri5' is not one of: "),
    ("dtype=float16", "dtype='float16'; accepted: float32, float64"),
    ("tolerances=[1e-15] method=bosh3", "tolerances: 1e-15 is below what float32 resolves for "
                                        "bosh3"),
    ("checkpoint=/nonexistent/checkpoint.pt", "checkpoint=/nonexistent/checkpoint.pt"),
    ("model=resnet", "model='resnet': checkpoint=init needs a classifier with one ODE block"),
    ("precision=fp16", "precision='fp16' is not one of: fp32, bf16"),
    ("precision=bf16 dtype=float64", "precision=bf16 autocasts float32 layers: it needs "
                                     "dtype=float32, got dtype=float64"),
])
def test_bad_input_is_one_line_exit_2(arg, message, capsys, tmp_path):
    base = ["checkpoint=init", f"out={tmp_path / 'g.json'}", *FAST]
    assert G.main([*base, *arg.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("odenet gradients: error: ")
    assert message in err


def test_init_needs_out(capsys):
    assert G.main(["checkpoint=init", *FAST]) == 2
    assert "checkpoint=init has no run directory: give out=" in capsys.readouterr().err


def test_a_cnf_is_measured(tmp_path, density_checkpoint):
    """A CNF's gradients by every method; backprop and checkpoint give their discrete
    solve's gradient."""
    ck = density_checkpoint(tmp_path / "checkpoint.pt")
    assert G.main([f"checkpoint={ck}", "batch_size=16", "tolerances=[1e-3]",
                   "reference_tol=1e-7", "threads=1"]) == 0
    rec = json.loads((tmp_path / "gradients.json").read_text())
    assert rec["model"] == "cnf" and rec["images"] == 16
    r = rows(rec)
    assert list(r) == list(G.GRADIENT_METHODS)
    assert all(row["status"] == "ok" and math.isfinite(row["error"]) for row in r.values())
    assert r["backprop"]["error_vs_discrete"] == 0
    assert r["checkpoint"]["error_vs_discrete"] < 1e-5
    assert r["adjoint"]["error"] < 1e-2


def test_a_checkpoint_where_nothing_can_be_written_is_refused_before_the_work(
        tmp_path, capsys, monkeypatch, read_only, density_checkpoint):
    """Refused in one line before anything is computed (not computed, then lost to an
    OSError traceback)."""
    ck = density_checkpoint(tmp_path / "run" / "checkpoint.pt")
    read_only(ck.parent)
    monkeypatch.setattr(G, "measure", lambda *a, **k: pytest.fail("computed"))
    assert G.main([f"checkpoint={ck}", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {ck.parent / 'gradients.json'}" in err
    assert "give out=PATH.json in a writable directory" in err


def test_the_reference_solve_shows_progress(tmp_path, capsys, monkeypatch):
    """Off a terminal, heartbeat lines count the reference solve's evaluations (a silent
    reference solve can take minutes)."""
    monkeypatch.setattr(gradient_error, "HEARTBEAT_SECONDS", 0.0)
    assert G.main(["checkpoint=init", f"out={tmp_path / 'g.json'}", "methods=[backprop]",
                   *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    beats = [i for i, line in enumerate(lines) if line.startswith("reference solve (")]
    done = next(i for i, line in enumerate(lines) if line.startswith("reference: "))
    assert lines[beats[0]].endswith(": started") and len(beats) > 10
    assert max(beats) < done
    evaluations = int(lines[max(beats)].split(": ")[1].split()[0])
    nfe = json.loads((tmp_path / "g.json").read_text())["reference"]["nfe_mean"]
    assert evaluations > nfe  # the reference's and its check's, forward and backward


@pytest.mark.parametrize("tolerances, title", [
    ([1e-3], "(tolerance 1e-3)"), ([1e-1, 1e-4], "(tolerances 0.1, 1e-4)")])
def test_the_figure_names_its_tolerances_and_reads_nfe_in_plain_numbers(tolerances, title):
    rows = [{"gradient_method": m, "status": "ok", "error": e, "nfe_forward": f,
             "nfe_backward": b, "block_activation_mib": mib}
            for m, e, f, b, mib in (("adjoint", 0.04, 20, 22, 2.25),
                                    ("backprop", 0.01, 26, 0, 190.0))]
    record = {"model": "odenet", "results": rows,
              "settings": {"methods": ["adjoint", "backprop"], "tolerances": tolerances}}
    fig = draw_figure(record)
    fig.canvas.draw()
    assert fig._suptitle.get_text().endswith(title)
    ticks = [t.get_text() for ax in fig.axes for minor in (False, True)
             for t in ax.get_xticklabels(minor=minor) if t.get_text()]
    assert "30" in ticks and "40" in ticks  # NFE 26..42: not 3x10^1, 4x10^1
    assert not [t for t in ticks if "times" in t or "^" in t]
