"""Synthetic run directories for the report tests, built from the run record's schema
(odenet/run/record.py): complete, current records, as the trainer writes them.

(A module of its own, not conftest.py: test modules import these helpers by name.)"""

from __future__ import annotations

import json
from pathlib import Path

from odenet.run import record
from odenet.run.record import EpochRecord, IterRecord, Metrics


def metrics_record(**over) -> dict:
    """A complete metrics.json record (every field of record.Metrics), ODE-Net defaults;
    a model without an ODE block gets null NFEs, a ResNet its 6 residual blocks."""
    m = dict(
        model="odenet", experiment="quick", seed=0, status="finished", task=record.CLASSIFY,
        solver_method="dopri5", solver_rtol=1e-3, solver_atol=1e-3, solver_adjoint=True,
        solver_adjoint_norm="default", solver_last_step="clamp",
        test_error=0.01, train_error=0.008, params=208266,
        nfe_forward_mean=20.0, nfe_backward_mean=26.0, test_nfe_forward_mean=20.0,
        activation_mib=40.0, activation_block_mib=2.25, rss_peak_mib=900.0,
        sec_per_iter=0.75, sec_per_test_batch=1.2, epochs=2, epochs_planned=2,
        batch_size=128, train_size=60000, lr=0.1, schedule="step", device="cpu",
        threads=2, torch_version="2.14.1", git_commit="abc123", host="test",
        wall_seconds=1000.0,
    )
    if over.get("model") in ("mlp", "resnet"):
        m.update(nfe_forward_mean=None, nfe_backward_mean=None, test_nfe_forward_mean=None)
    if over.get("model") == "resnet":
        m.update(residual_blocks=6)
    if over.get("task") == record.DENSITY:
        m.update(test_error=None, train_error=None, test_nll=1.5, train_nll=1.4)
    m.update(over)
    return record.fake(Metrics, **m)


def history_records(epochs: int = 2, iters: int = 3, nfe_f=(20, 26), nfe_b=(26, 32),
                    first_epoch: int = 0, val_error=None, ema_val_error=None) -> list[dict]:
    """`iters` iteration records per epoch (NFE-F/B alternating between the two values
    given) and one epoch record per epoch (``val_error``, ``ema_val_error``: one value
    per epoch, or None)."""
    recs = []
    step = 0
    for e in range(first_epoch, first_epoch + epochs):
        for i in range(iters):
            step += 1
            recs.append(record.fake(IterRecord, epoch=e, iter=i, step=step, loss=0.5,
                                    nfe_forward=nfe_f[i % len(nfe_f)],
                                    nfe_backward=nfe_b[i % len(nfe_b)],
                                    steps_accepted=3, steps_rejected=0, seconds=0.7, lr=0.1))
        recs.append(record.fake(EpochRecord, epoch=e, train_error=0.02, test_error=0.02,
                                nfe_forward_mean=20.0 + 2 * (e - first_epoch),
                                nfe_backward_mean=26.0, activation_mib=40.0,
                                activation_block_mib=2.25, rss_peak_mib=900.0,
                                seconds=100.0, train_seconds=90.0,
                                val_error=val_error[e - first_epoch] if val_error else None,
                                ema_val_error=(ema_val_error[e - first_epoch]
                                               if ema_val_error else None)))
    return recs


def evaluation_record(nfes=(14, 20, 32, 50), errors=(1e-2, 1e-3, 1e-4, 1e-5),
                      seconds=(1.0, 1.4, 2.2, 3.4)) -> dict:
    """evaluation.json as odenet evaluate writes it (not part of the run record)."""
    tols = [10.0 ** -(i + 1) for i in range(len(nfes))]
    return {
        "checkpoint": "checkpoint.pt",
        "reference": {"method": "dopri5", "rtol": 1e-10, "atol": 1e-10, "dtype": "float64"},
        "results": [
            {"rtol": t, "atol": t, "nfe_forward_mean": n, "numerical_error": e,
             "numerical_error_max": e * 3, "forward_seconds": s, "block_seconds": s * 0.8,
             "forward_cpu_seconds": s * 2,
             "test_error": 0.01}
            for t, n, e, s in zip(tols, nfes, errors, seconds)
        ],
    }


def write_run(d: Path, metrics: dict | None = None, history: list[dict] | None = None,
              evaluation: dict | None = None, **over) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps(metrics or metrics_record(**over)))
    if history is not None:
        (d / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    if evaluation is not None:
        (d / "evaluation.json").write_text(json.dumps(evaluation))
    return d
