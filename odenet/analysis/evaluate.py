"""`odenet evaluate checkpoint=... tolerances=[...]`: a trained ODE block at many tolerances.

For each tolerance τ (rtol = atol = τ) the ODE block of a trained checkpoint (ODE-Net,
RK-Net, or a CNF: any model with one, through ``model.ode_input`` / ``ode_block`` /
``ode_output``) is re-solved on the test set, batch by batch, and we record:

- ``nfe_forward_mean``: function evaluations per forward solve (mean over test batches);
- ``numerical_error``: how far the block's output is from a reference solution, defined
  per image i over the first ``error_images`` test images as
      e_i = ||h_τ(x_i) - h_ref(x_i)||_2 / ||h_ref(x_i)||_2
  where h(x) is the ODE block's output (an ODE-Net's h(t1), 64 x 6 x 6 values; a CNF's
  [z(t0), ℓ(t0)], "images" being its test points), h_τ the solve at τ (in ``dtype``,
  float32 as trained, in the same batches as the timing) and h_ref a float64 solve of
  the same block from the same h(0) (the float32 ``ode_input``, e.g. downsampling, cast)
  with ``reference_method`` at rtol = atol = ``reference_tol`` (default dopri5, 1e-10).
  ``numerical_error`` is the mean of e_i, ``numerical_error_max`` the largest;
- ``forward_seconds`` / ``block_seconds``: wall time of the whole forward pass over the
  test images / of the ODE block alone (per batch the fastest of ``repeats`` passes);
  ``forward_cpu_seconds``: the process's CPU time for the forward pass (all its threads),
  less sensitive than wall time to other work on a shared machine;
- ``test_error``: the fraction of test images misclassified; for a density model
  ``test_nll`` instead, the mean negative log-likelihood (nats) of the test points.

The reference itself is checked: a second float64 solve at 10 x ``reference_tol`` gives
``reference.check_error`` (same definition); it should lie far below every numerical
error reported. Writes ``evaluation.json`` next to the checkpoint (atomically), with
``checkpoint_file``: the size and SHA-256 of the checkpoint evaluated, so that ``odenet
figures`` can leave out an evaluation whose checkpoint has changed since (a rerun).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from odenet.analysis.probe import (
    ProbeSettings,
    check,
    command_main,
    open_checkpoint,
    output_path,
    recorded_checkpoint,
    warn_if_loose,
)
from odenet.config.errors import need
from odenet.config.schema import load_settings
from odenet.run.files import write_json
from odenet.run.record import CHECKPOINT_ID, EVALUATION

CONFIG_FILE = "evaluate.yaml"


@dataclass
class EvaluateConfig(ProbeSettings):
    tolerances: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
    test_size: int | None = None
    batch_size: int = 1000
    error_images: int = 1000


class EvaluateError(Exception):
    """A solve that cannot be evaluated: one line, printed as is."""


def validate(cfg: EvaluateConfig) -> EvaluateConfig:
    check(cfg, positive=("batch_size", "error_images"))
    need(cfg.test_size is None or cfg.test_size >= 1,
         f"test_size={cfg.test_size!r} must be a positive integer or null")
    return cfg


def _rel_errors(h, ref):
    """Per-image ||h - ref|| / ||ref|| in float64."""
    h, ref = h.double().flatten(1), ref.double().flatten(1)
    return (h - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-300)


def reference_solve(func, h0s: list, method: str, tol: float, max_steps: int, times):
    """float64 solves of ``func`` from each h0 in h0s; (outputs, mean NFE)."""
    import torch

    from odenet.solvers import SolveStats, odeint

    func64 = copy.deepcopy(func).double()
    t = times.double()
    outs, nfes = [], []
    with torch.no_grad():
        for h0 in h0s:
            st = SolveStats()
            ys = odeint(func64, h0.double(), t, method=method, rtol=tol, atol=tol,
                        options={"max_num_steps": max_steps}, stats=st)
            outs.append(ys[-1])
            nfes.append(st.nfe_forward)
    return torch.cat(outs), sum(nfes) / len(nfes)


def evaluate(cfg: EvaluateConfig, log=print) -> dict:
    """Run the evaluation; returns the record written to evaluation.json."""
    import torch

    from odenet.training.runtime import float32_math
    from odenet.training.tasks import task_of

    device, model, config, ck, ckpt_id = open_checkpoint(cfg)
    block = model.ode_block
    trained = dict(block.settings())
    dtype = getattr(torch, cfg.dtype)
    task = task_of(config)
    batches = _test_batches(cfg, task, config, device)
    n_test = sum(len(b[0]) for b in batches)
    n_err = min(cfg.error_images, n_test)

    # h(0) of every test sample, once (float32, as trained): every solve starts there, so
    # the tolerance solves and the reference differ only in the ODE block's solve.
    with torch.no_grad():
        h0s = [model.ode_input(b[0]) for b in batches]
    ref, reference = _reference(cfg, block, torch.cat(h0s)[:n_err], log)

    model.to(dtype)
    method = cfg.method or trained["method"]
    results = [_tolerance(cfg, model, task, batches, h0s, ref, dtype, method, tol, log)
               for tol in cfg.tolerances]
    carried = (_from_carried_step(cfg, model, task, batches, h0s, ref, dtype, method, log)
               if method == trained["method"] else None)
    min_err = min((r["numerical_error"] for r in results if r.get("numerical_error")),
                  default=None)
    check_error = reference["check_error"]
    reference["ok"] = bool(min_err is None or check_error < 0.1 * min_err)
    record = {
        "checkpoint": recorded_checkpoint(cfg, EVALUATION),
        CHECKPOINT_ID: ckpt_id,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "model": config.get("model", {}).get("name"),
        "epoch": ck.get("epoch"),
        "trained_with": {**{k: trained[k] for k in ("method", "rtol", "atol", "gradient",
                                                    "adjoint_norm", "step_size")},
                         "adjoint": trained["gradient"] == "adjoint"},
        "settings": asdict(cfg),
        "device": str(device),
        "float32_math": float32_math(),  # set by open_checkpoint: IEEE, never TF32
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "test_images": n_test,
        "error_images": n_err,
        "numerical_error_definition": (
            "mean over the first error_images test images of ||h_tol - h_ref||_2 / "
            "||h_ref||_2, h = the ODE block's output h(t1); h_ref: float64 solve from the "
            "same h(0) with reference.method at reference.rtol"),
        "reference": reference,
        "results": results,
    }
    if carried is not None:
        record["carried_step"] = carried
    warn_if_loose(reference, check_error, min_err, log)
    return record


def _test_batches(cfg: EvaluateConfig, task, config: dict, device) -> list:
    """The test set (``test_size`` samples, all when null) in batches, on the device."""
    from odenet.data import DataError

    try:
        return task.probe_batches(config, train=False, n=cfg.test_size,
                                  batch_size=cfg.batch_size, device=device,
                                  root=cfg.data_root)
    except DataError as e:
        raise EvaluateError(str(e)) from None


def _reference(cfg: EvaluateConfig, block, err_h0, log) -> tuple[Any, dict]:
    """The float64 reference from ``err_h0`` and a check of it at 10x looser tolerance:
    (its outputs, the record's "reference" less "ok")."""
    import torch

    from odenet.solvers import SolverError

    t0 = time.perf_counter()
    chunks = list(torch.split(err_h0, cfg.batch_size))
    try:
        ref, ref_nfe = reference_solve(block.func, chunks, cfg.reference_method,
                                       cfg.reference_tol, cfg.max_num_steps, block.times)
        ref_seconds = time.perf_counter() - t0
        check, check_nfe = reference_solve(block.func, chunks, cfg.reference_method,
                                           cfg.reference_tol * 10, cfg.max_num_steps,
                                           block.times)
    except SolverError as e:
        raise EvaluateError(f"the float64 reference solve failed ({str(e).splitlines()[0]}); "
                            "raise max_num_steps or reference_tol") from None
    check_error = float(_rel_errors(check, ref).mean())
    log(f"reference: {cfg.reference_method} float64 tol {cfg.reference_tol:g}, "
        f"NFE {ref_nfe:.0f}, {ref_seconds:.1f} s; check at {cfg.reference_tol * 10:g}: "
        f"error {check_error:.2e}")
    return ref, {"method": cfg.reference_method, "rtol": cfg.reference_tol,
                 "atol": cfg.reference_tol, "dtype": "float64",
                 "nfe_forward_mean": ref_nfe, "seconds": ref_seconds,
                 "check_rtol": cfg.reference_tol * 10, "check_nfe_forward_mean": check_nfe,
                 "check_error": check_error}


def _from_carried_step(cfg: EvaluateConfig, model, task, batches, h0s, ref, dtype,
                       method: str, log) -> dict | None:
    """For a block trained with solver.carry_step: every tolerance again, each solve
    starting from the step training carried instead of the first-step estimate (what
    training's solves did); None for a block without one."""
    block = model.ode_block
    steps = getattr(block, "carried_steps", None)
    if steps is None or math.isnan(float(steps[0])):
        return None
    h = float(steps[0])
    log(f"from the step training carried (h = {h:.3g}) instead of the first-step estimate:")
    block.eval_from_carried_step = True
    try:
        rows = [_tolerance(cfg, model, task, batches, h0s, ref, dtype, method, tol, log)
                for tol in cfg.tolerances]
    finally:
        block.eval_from_carried_step = False
    return {"first_step": h, "results": rows}


def _tolerance(cfg: EvaluateConfig, model, task, batches, h0s, ref, dtype, method: str,
               tol: float, log) -> dict:
    """One result row: the block re-solved at rtol = atol = ``tol`` ("failed" and the
    reason when the solve cannot proceed)."""
    import torch

    from odenet.solvers import SolverError

    model.ode_block.configure(method=method, rtol=tol, atol=tol,
                              max_num_steps=cfg.max_num_steps)
    row: dict[str, Any] = {"rtol": tol, "atol": tol, "method": method}
    try:
        with torch.no_grad():
            row.update(status="ok", reason=None, **_measure_tolerance(
                model, task, batches, h0s, ref, dtype, cfg.repeats))
        metric = row[f"test_{task.metric}"]
        log(f"tol {tol:g}: NFE {row['nfe_forward_mean']:.1f}, error "
            f"{row['numerical_error']:.2e}, test {task.metric} "
            f"{f'{metric * 100:.2f} %' if task.metric == 'error' else f'{metric:.4f}'}, "
            f"forward {row['forward_seconds']:.2f} s")
    except SolverError as e:
        row.update(status="failed", reason=str(e).splitlines()[0])
        log(f"tol {tol:g}: failed: {row['reason']}")
    return row


def _measure_tolerance(model, task, batches, h0s, ref, dtype, repeats: int) -> dict:
    """NFE, numerical error (first len(ref) samples), the task's test metric and timings
    of the model at its block's current settings; each batch's times are the fastest of
    ``repeats``."""
    import torch

    from odenet.training.measure import synchronize

    device = ref.device
    block = model.ode_block
    block.stats.reset()
    model(batches[0][0].to(dtype))  # warm-up (first-call overheads), not timed
    nfes, steps_acc, steps_rej, outs = [], [], [], []
    fwd = blk = cpu = 0.0
    sums: dict[str, float] = {}
    for batch, h0 in zip(batches, h0s):
        x = batch[0]
        best_fwd = best_blk = best_cpu = math.inf
        for _ in range(repeats):
            block.stats.reset()
            ca = time.process_time()
            ta = time.perf_counter()
            model.ode_input(x.to(dtype))  # timed as part of the forward pass;
            h0 = h0.to(dtype)             # the solve starts from the cached h(0)
            synchronize(device)           # its GPU work is not the block's
            tb = time.perf_counter()
            h1 = block(h0)
            synchronize(device)
            tc = time.perf_counter()
            out = model.ode_output(h1)
            synchronize(device)
            td = time.perf_counter()
            cd = time.process_time()
            best_fwd, best_blk = min(best_fwd, td - ta), min(best_blk, tc - tb)
            best_cpu = min(best_cpu, cd - ca)
        fwd += best_fwd
        blk += best_blk
        cpu += best_cpu
        nfes.append(block.stats.nfe_forward)
        steps_acc.append(block.stats.steps_accepted)
        steps_rej.append(block.stats.steps_rejected)
        for k, v in task.sums(out, batch).items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if sum(len(o) for o in outs) < len(ref):
            outs.append(h1)
    err = _rel_errors(torch.cat(outs)[: len(ref)], ref)
    return dict(nfe_forward_mean=sum(nfes) / len(nfes), nfe_forward_max=max(nfes),
                steps_accepted_mean=sum(steps_acc) / len(steps_acc),
                steps_rejected_mean=sum(steps_rej) / len(steps_rej),
                numerical_error=float(err.mean()), numerical_error_max=float(err.max()),
                **{f"test_{task.metric}": task.reduce(sums)}, forward_seconds=fwd,
                block_seconds=blk, forward_cpu_seconds=cpu)


def main(argv: list[str] | None = None) -> int:
    def prepare(argv: list[str]) -> tuple[EvaluateConfig, Path]:
        cfg = validate(load_settings(EvaluateConfig, CONFIG_FILE, argv, "evaluate"))
        return cfg, output_path(cfg, EVALUATION)

    def run(cfg: EvaluateConfig, out: Path) -> tuple[dict, str]:
        record = evaluate(cfg)
        write_json(out, record)
        return record, f"tolerances evaluated -> {out}"

    return command_main(argv, command="evaluate", doc=__doc__, config_file=CONFIG_FILE,
                        errors=(EvaluateError,), prepare=prepare, run=run)


if __name__ == "__main__":
    raise SystemExit(main())
