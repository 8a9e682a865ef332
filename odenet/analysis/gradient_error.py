"""What ``odenet gradients`` measures (odenet/analysis/gradients.py: the command, its
settings and what it writes): for each gradient method at each tolerance, the gradient of
the network's loss on a few training batches, its relative error against a float64
continuous reference and against backprop through the same discrete solve, and its cost
(time, NFE, the ODE block's activation memory). ``measure(cfg)`` returns the record that
becomes gradients.json.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from odenet.analysis.probe import open_checkpoint, recorded_checkpoint, set_threads, warn_if_loose
from odenet.run.record import CHECKPOINT_ID, GRADIENTS_FILE

if TYPE_CHECKING:
    from odenet.analysis.gradients import GradientsConfig

INIT = "init"  # checkpoint=init: a freshly initialised network
HEARTBEAT_SECONDS = 30.0  # progress lines of the reference solve, off a terminal
# the gradient methods measured: name -> odeint's `gradient`
GRADIENT_METHODS = {"backprop": "backprop", "adjoint": "adjoint",
                    "adjoint_seminorm": "adjoint", "checkpoint": "checkpoint",
                    "reversible": "reversible"}


class GradientsError(Exception):
    """Bad input: one line, printed as is."""


# ---------------------------------------------------------------- the network
def init_model(name: str, seed: int, device):
    """(untrained model, its config as a plain dict) for checkpoint=init."""
    import torch

    from odenet.config.model_registry import CLASSIFY, MODELS
    from odenet.models import build_model

    having = [s.name for s in MODELS.values() if s.ode_block and s.task == CLASSIFY]
    if name not in having:
        raise GradientsError(f"model={name!r}: checkpoint=init needs a classifier with one ODE "
                             f"block; accepted: {', '.join(having)}")
    config = {"model": {"name": name}, "solver": {}}
    torch.manual_seed(seed)
    model = build_model(config["model"], config["solver"])
    assert model.ode_block is not None
    return model.to(device).eval(), config


def loss_gradient(model, task, batch, *, method: str, tol: float, gradient: str,
                  seminorm: bool, max_steps: int, precision: str = "fp32") -> dict:
    """The gradient of the task's loss of the model on ``batch`` (cross-entropy, or a
    density model's NLL) with the ODE block solved by odeint with ``gradient``; returns
    {"grads": [tensor per parameter], stats, seconds, block MiB}.

    The block is solved here rather than by ODEBlock.forward, which knows only the
    adjoint and backprop; everything else (``ode_input``, ``ode_output``, t0/t1) is the
    model's. ``precision`` as train's: bf16 autocasts the layers, f included, while the
    ODE state and the solver stay in the model's dtype (ODEBlock's fast path)."""
    import torch

    from odenet.models.blocks import autocast_func
    from odenet.solvers import FIXED_METHODS, SolveStats, StepCarry, odeint
    from odenet.training.measure import ActivationMeter, synchronize
    from odenet.training.runtime import autocast

    x = batch[0]
    block = model.ode_block
    params = [p for p in model.parameters() if p.requires_grad]
    options = {"max_num_steps": max_steps}
    if method in FIXED_METHODS:
        options["step_size"] = block.step_size
    else:
        options["last_step"] = block.last_step
    adj = {"adjoint_params": tuple(block.func.parameters())} if gradient != "backprop" else {}
    if gradient == "adjoint":
        adj["adjoint_options"] = {"norm": "seminorm" if seminorm else "default"}
    carried = carried_steps(block, method)  # a run trained with solver.carry_step: its steps
    if carried is not None:
        options["carry_step"] = StepCarry(carried[0])
        if gradient == "adjoint":
            adj["adjoint_options"]["carry_step"] = StepCarry(carried[1])
    stats = SolveStats()
    synchronize(x.device)
    t0 = time.perf_counter()
    func = block.func
    with autocast(precision, x.device):
        h0 = model.ode_input(x).to(x.dtype)
    if precision != "fp32":
        func = autocast_func(block.func, x.device.type, torch.bfloat16)
    with ActivationMeter(model) as m:  # around the ODE block's solve only
        h1 = odeint(func, h0, block.times.to(x.dtype), method=method, rtol=tol,
                    atol=tol, options=options, gradient=gradient, stats=stats, **adj)[-1]
    with autocast(precision, x.device):
        loss = task.loss(model.ode_output(h1), batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    synchronize(x.device)
    seconds = time.perf_counter() - t0
    grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    return {"grads": grads, "seconds": seconds, "nfe_forward": stats.nfe_forward,
            "nfe_backward": stats.nfe_backward, "block_activation_mib": m.total_mib,
            "loss": float(loss.detach())}


def carried_steps(block, method: str) -> tuple[float | None, float | None] | None:
    """(forward, backward) first steps a block trained with solver.carry_step carries, for
    a re-solve with ``method`` (an adaptive Runge-Kutta method); None otherwise."""
    from odenet.solvers import REGISTRY

    steps = getattr(block, "carried_steps", None)
    m = REGISTRY[method]
    if steps is None or not m.adaptive or m.family == "odepack":
        return None
    return tuple(None if math.isnan(h) else h for h in steps.tolist())


def rel_error(g, ref) -> float:
    """||g - ref||_2 / ||ref||_2 over a list of tensors, in float64."""
    import torch

    num = math.sqrt(sum(float(torch.sum((a.double() - b.double()) ** 2))
                        for a, b in zip(g, ref)))
    den = math.sqrt(sum(float(torch.sum(b.double() ** 2)) for b in ref))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


class _SolveProgress:
    """Progress of a long solve, counted in evaluations of ``func``: a bar on a terminal,
    else a line every HEARTBEAT_SECONDS (runlog's bars and heartbeat, as the trainer's)."""

    def __init__(self, func, desc: str, log):
        self.func, self.desc, self.log = func, desc, log

    def __enter__(self):
        from odenet.training.progress import Bars, Heartbeat

        self.bars = Bars("auto").__enter__()
        self.bar = self.bars.count(self.desc, "NFE")
        self.beat = Heartbeat(enabled=not self.bars.shown, every=HEARTBEAT_SECONDS)
        self.n, self.t0 = 0, time.monotonic()
        self.hook = self.func.register_forward_hook(self._evaluated)
        if self.beat.enabled:
            self.log(f"{self.desc}: started")
        return self

    def _evaluated(self, *_):
        self.n += 1
        self.bar.update()
        if self.beat.due():
            self.log(f"{self.desc}: {self.n} evaluations, {time.monotonic() - self.t0:.0f} s")

    def __exit__(self, *exc):
        self.hook.remove()
        self.bar.close()
        self.bars.__exit__(*exc)


def _mean(xs):
    return sum(xs) / len(xs)


def _as(batch, dtype):
    """The batch with its input (the first tensor) in ``dtype``; labels stay."""
    return (batch[0].to(dtype), *batch[1:])


# ---------------------------------------------------------------- the measurement
def measure(cfg: GradientsConfig, log=print) -> dict:
    import torch

    from odenet.training.runtime import float32_math
    from odenet.training.tasks import task_of

    device, model, config, ck, ckpt_id = _open(cfg)
    trained = dict(model.ode_block.settings())
    base_method = cfg.method or trained["method"]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    task = task_of(config)
    batches = _train_batches(cfg, task, config, device)
    dtype = getattr(torch, cfg.dtype)
    net = copy.deepcopy(model).to(dtype)
    net64 = net if dtype == torch.float64 else copy.deepcopy(model).to(torch.float64)
    refs, reference = _references(cfg, net64, task, batches, log)
    exact = _Discrete(cfg, task, batches)
    results = []
    for tol in cfg.tolerances:
        for name in cfg.methods:
            method = cfg.reversible_method if name == "reversible" else base_method
            results.append(_result(cfg, task, net, net64, batches, refs, names, name,
                                   method, tol, exact, log))

    errors = [r["error"] for r in results if r.get("status") == "ok"]
    min_err = min(errors, default=None)
    check_error = reference["check_error"]
    reference["ok"] = bool(min_err is None or check_error < 0.1 * min_err)
    record = {
        "checkpoint": INIT if cfg.checkpoint == INIT else recorded_checkpoint(cfg, GRADIENTS_FILE),
        CHECKPOINT_ID: ckpt_id,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "model": config.get("model", {}).get("name"),
        "epoch": ck.get("epoch"),
        "trained_with": {k: trained[k] for k in ("method", "rtol", "atol", "gradient",
                                                  "adjoint_norm", "step_size")},
        "settings": asdict(cfg),
        "device": str(device),
        "float32_math": float32_math(),  # set by open_checkpoint: IEEE, never TF32
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "images": sum(len(b[0]) for b in batches),  # a density model's: points
        "parameters": names,
        "error_definition": (
            "||g - g*||_2 / ||g*||_2 over all parameter gradients of the batch's mean "
            "loss (cross-entropy; a density model's NLL) (per_parameter: per tensor), "
            "mean over batches; g* = reference "
            "(error) or backprop through the same solver at the same tolerance "
            "(error_vs_discrete: same dtype; error_vs_discrete_float64: float64)"),
        "reference": reference,
        "results": results,
    }
    warn_if_loose(reference, check_error, min_err, log)
    return record


def _open(cfg: GradientsConfig) -> tuple:
    """(device, model, its config, the checkpoint dict, its id): the checkpoint's, or an
    untrained ``model`` for checkpoint=init."""

    from odenet.training.runtime import resolve_device, set_exact_math

    if cfg.checkpoint != INIT:
        return open_checkpoint(cfg)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    set_exact_math()  # as open_checkpoint
    model, config = init_model(cfg.model, cfg.seed, device)
    return device, model, config, {}, None


def _train_batches(cfg: GradientsConfig, task, config: dict, device) -> list:
    """The first training samples, without augmentation: the same for every method."""
    from odenet.data import DataError

    try:
        return task.probe_batches(config, train=True, n=cfg.batches * cfg.batch_size,
                                  batch_size=cfg.batch_size, device=device,
                                  root=cfg.data_root)[: cfg.batches]
    except DataError as e:
        raise GradientsError(str(e)) from None


def _references(cfg: GradientsConfig, net64, task, batches, log) -> tuple[list, dict]:
    """(a) the float64 continuous reference per batch, and its check at 10x the tolerance:
    the slow part (minutes for a trained ODE-Net), so with progress. Returns (the
    reference gradients per batch, the record's "reference" less "ok")."""
    import torch

    from odenet.solvers import SolverError

    t0 = time.perf_counter()
    desc = f"reference solve (float64, tol {cfg.reference_tol:g} and {cfg.reference_tol * 10:g})"
    try:
        refs, checks, ref_nfe, check_nfe = [], [], [], []
        with _SolveProgress(net64.ode_block.func, desc, log):
            for batch in batches:
                for tol, out, nfe in ((cfg.reference_tol, refs, ref_nfe),
                                      (cfg.reference_tol * 10, checks, check_nfe)):
                    r = loss_gradient(net64, task, _as(batch, torch.float64),
                                      method=cfg.reference_method, tol=tol,
                                      gradient=cfg.reference_gradient, seminorm=False,
                                      max_steps=cfg.max_num_steps)
                    out.append(r["grads"])
                    nfe.append(r["nfe_forward"] + r["nfe_backward"])
    except SolverError as e:
        raise GradientsError(f"the float64 reference solve failed ({str(e).splitlines()[0]}); "
                             "raise max_num_steps or reference_tol") from None
    ref_seconds = time.perf_counter() - t0
    check_error = _mean([rel_error(c, r) for c, r in zip(checks, refs)])
    log(f"reference: {cfg.reference_method} float64 {cfg.reference_gradient} tol "
        f"{cfg.reference_tol:g}, NFE-F+B {_mean(ref_nfe):.0f}; check at "
        f"{cfg.reference_tol * 10:g}: error {check_error:.2e}")
    return refs, {"method": cfg.reference_method, "gradient": cfg.reference_gradient,
                  "rtol": cfg.reference_tol, "atol": cfg.reference_tol,
                  "dtype": "float64", "nfe_mean": _mean(ref_nfe), "seconds": ref_seconds,
                  "check_rtol": cfg.reference_tol * 10, "check_nfe_mean": _mean(check_nfe),
                  "check_error": check_error}


class _Discrete:
    """(b) backprop through each (solver, tolerance, dtype) a measured method uses, per
    batch: computed once and shared (backprop, the adjoints and checkpoint share the
    solve). A call returns (gradients per batch, mean NFE-F), or the first line of the
    solver's error."""

    def __init__(self, cfg: GradientsConfig, task, batches):
        self.cfg, self.task, self.batches = cfg, task, batches
        self.done: dict[tuple, Any] = {}

    def __call__(self, method: str, tol: float, net_, dt: str):
        from odenet.solvers import SolverError

        cfg, key = self.cfg, (method, tol, dt)
        if key not in self.done:
            try:
                runs = [loss_gradient(net_, self.task, _as(b, net_dtype(net_)), method=method,
                                      tol=tol, gradient="backprop", seminorm=False,
                                      max_steps=cfg.max_num_steps,
                                      precision=cfg.precision if dt == cfg.dtype else "fp32")
                        for b in self.batches]
                self.done[key] = ([r["grads"] for r in runs],
                                  _mean([r["nfe_forward"] for r in runs]))
            except SolverError as e:
                self.done[key] = str(e).splitlines()[0]
        return self.done[key]


def _result(cfg: GradientsConfig, task, net, net64, batches, refs, names, name: str,
            method: str, tol: float, exact, log) -> dict:
    """One result row: gradient method ``name`` at ``tol`` ("failed" and the reason when
    a solve cannot proceed)."""
    from odenet.solvers import SolverError

    row: dict[str, Any] = {"gradient_method": name, "method": method, "rtol": tol,
                           "atol": tol, "dtype": cfg.dtype, "precision": cfg.precision}
    try:
        row.update(status="ok", reason=None,
                   **_measure_one(cfg, task, net, net64, batches, refs, names, name,
                                  method, tol, exact))
        log(f"tol {tol:g} {name}: error {row['error']:.2e} vs reference, "
            f"{row['error_vs_discrete']:.2e} vs its discrete solve; NFE-F/B "
            f"{row['nfe_forward']:.0f}/{row['nfe_backward']:.0f}, "
            f"{row['block_activation_mib']:.2f} MiB, {row['seconds']:.2f} s")
    except (SolverError, ValueError) as e:
        row.update(status="failed", reason=str(e).splitlines()[0])
        log(f"tol {tol:g} {name}: failed: {row['reason']}")
    return row


def net_dtype(net):
    return next(net.parameters()).dtype


def _measure_one(cfg, task, net, net64, batches, refs, names, name, method, tol,
                 exact) -> dict:
    """One gradient method at one tolerance, over the batches (means)."""
    dtype = net_dtype(net)
    runs = []
    for batch in batches:
        best = None
        for _ in range(cfg.repeats):
            r = loss_gradient(net, task, _as(batch, dtype), method=method, tol=tol,
                              gradient=GRADIENT_METHODS[name],
                              seminorm=name == "adjoint_seminorm",
                              max_steps=cfg.max_num_steps, precision=cfg.precision)
            if best is None or r["seconds"] < best["seconds"]:
                best = r
        runs.append(best)
    grads = [r["grads"] for r in runs]
    err = [rel_error(g, ref) for g, ref in zip(grads, refs)]
    row: dict[str, Any] = {
        "error": _mean(err), "error_max": max(err),
        "per_parameter": {n: _mean([rel_error([g[i]], [ref[i]]) for g, ref in zip(grads, refs)])
                          for i, n in enumerate(names)},
    }
    same = exact(method, tol, net, cfg.dtype)
    if isinstance(same, str):
        raise ValueError(f"backprop through {method} at {tol:g} failed: {same}")
    row["error_vs_discrete"] = _mean([rel_error(g, d) for g, d in zip(grads, same[0])])
    row["discrete"] = {"gradient": "backprop", "dtype": cfg.dtype, "nfe_forward": same[1]}
    row["error_vs_discrete_float64"] = None
    row["discrete_float64"] = None
    if cfg.discrete_float64:
        d64 = same if net64 is net else exact(method, tol, net64, "float64")
        if isinstance(d64, str):
            row["discrete_float64"] = {"status": "failed", "reason": d64}
        else:
            row["error_vs_discrete_float64"] = _mean([rel_error(g, d)
                                                      for g, d in zip(grads, d64[0])])
            row["discrete_float64"] = {"gradient": "backprop", "dtype": "float64",
                                       "nfe_forward": d64[1]}
    row.update(
        seconds=_mean([r["seconds"] for r in runs]),
        nfe_forward=_mean([r["nfe_forward"] for r in runs]),
        nfe_backward=_mean([r["nfe_backward"] for r in runs]),
        block_activation_mib=_mean([r["block_activation_mib"] for r in runs]),
        loss=_mean([r["loss"] for r in runs]))
    return row
