"""The run record: what a training run writes and every report reads (DEVELOPERS.md,
Contract 2), as typed schemas.

- ``Metrics``: ``metrics.json``, one flat record = one table row;
- ``IterRecord`` / ``EpochRecord``: the lines of ``history.jsonl`` (``"kind"``: iter | epoch).

The trainer fills these dataclasses and writes them with ``to_json``; table, figures,
regression, reproduce and evaluate read them back through ``read_metrics`` /
``read_history``, which validate every known field's type and report a bad file by
path and reason (``RecordError``, one line).

Each field's metadata: ``kind`` (``SETTING``: what the run was asked to do, a table
groups by it; ``MEASURE``: a number the run measured; ``INFO``: bookkeeping), ``doc``,
``unit``, ``title`` (a table's column header, where it has one), ``task`` (only runs of
that task write the field) and ``reduce``: how the field is reduced from the level below
(``REDUCTIONS``): an ``EpochRecord`` field from the values ``of`` its iterations (the
trainer's ``IterationMeasures``), a ``Metrics`` field from the epoch records' field of its
name.
The trainer builds its epoch records and metrics from these declarations alone
(``epoch_state``/``add_iteration``/``epoch_values``, ``add_epoch``); an ``EpochRecord``
field without ``reduce`` is measured at the epoch's end (evaluation, peaks, clocks).
Imports only the standard library and the model registry's task names.
"""

import json
import math
import statistics
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from odenet.config.model_registry import CLASSIFY, DENSITY  # the tasks (a model's trait)

# the files of a run directory (checkpoint.pt is written by odenet/training/checkpoint_file.py)
METRICS, HISTORY, EVALUATION = "metrics.json", "history.jsonl", "evaluation.json"
# written by odenet gradients (odenet/analysis/gradients.py)
GRADIENTS_FILE, GRADIENTS_FIGURE = "gradients.json", "gradients.png"
CHECKPOINT_FILE = "checkpoint.pt"
# evaluation.json / gradients.json: the key of the checkpoint's odenet.run.files.file_id
CHECKPOINT_ID = "checkpoint_file"
SETTING, MEASURE, INFO = "setting", "measure", "info"
STATUSES = ("running", "finished", "failed", "interrupted")


# how a field is reduced from the values of the level below (its ``reduce``); each is a fold
# over a state of plain types, so that a checkpoint can hold an epoch's state mid-epoch
MEAN, MEDIAN, LAST, MAX, SUM = "mean", "median", "last", "max", "sum"


def _append(state: list, v: Any) -> list:
    state.append(v)
    return state


@dataclass(frozen=True)
class Reduction:
    start: Callable[[], Any]
    add: Callable[[Any, Any], Any]  # (state, value) -> state
    value: Callable[[Any], Any]  # state -> the reduced value (None: no value was added)


REDUCTIONS = {
    # a running sum, as the trainer always summed (the same float32-born digits)
    MEAN: Reduction(lambda: [0.0, 0], lambda s, v: [s[0] + v, s[1] + 1],
                    lambda s: s[0] / s[1] if s[1] else None),
    MEDIAN: Reduction(list, _append, lambda s: float(statistics.median(s)) if s else None),
    LAST: Reduction(lambda: None, lambda s, v: v, lambda s: s),
    MAX: Reduction(lambda: None, lambda s, v: v if s is None else max(s, v), lambda s: s),
    SUM: Reduction(lambda: None, lambda s, v: v if s is None else s + v, lambda s: s),
}
# metrics.json keeps no state but its own values: only the folds whose state is their value
METRICS_REDUCTIONS = (LAST, MAX, SUM)


def _f(kind: str, doc: str, unit: str = "", task: str | None = None, *, reduce: str | None = None,
       of: str | None = None, title: str | None = None, default: Any = None) -> Any:
    """A field and its declaration."""
    return field(default=default, metadata={
        "kind": kind, "doc": doc, "unit": unit, "task": task, "reduce": reduce, "of": of,
        "title": title})


# measure.DevicePeak's stretches (null on a CPU, where activation_mib is the measure)
_TRAIN_PEAK = ("CUDA memory the epoch's training iterations needed at peak, above what was "
               "allocated before them (weights, optimizer state, data on the device)")
_EVAL_PEAK = "CUDA memory the epoch's evaluation passes needed at peak, likewise"


@dataclass
class Metrics:
    """metrics.json. Fractions in [0, 1]; NFE: function evaluations per solve."""

    model: str = _f(INFO, "registry name (odenet/config/model_registry.py)", default="")
    experiment: str | None = _f(SETTING, "experiment_name of the config")
    seed: int | None = _f(INFO, "seed of torch, numpy, random and the data order")
    status: str = _f(INFO, "running | finished | failed | interrupted", default="running")
    reason: str | None = _f(INFO, "why the run failed or stopped, one line")
    task: str = _f(SETTING, "classify | density (the model's trait)", default=CLASSIFY)
    solver_method: str | None = _f(SETTING, "ODE solver method; null without an ODE block")
    solver_rtol: float | None = _f(SETTING, "relative tolerance")
    solver_atol: float | None = _f(SETTING, "absolute tolerance")
    solver_gradient: str | None = _f(SETTING, "adjoint | backprop | checkpoint | reversible")
    solver_adjoint: bool | None = _f(SETTING, "gradients by the adjoint (solver_gradient "
                                     "is adjoint)")
    solver_adjoint_norm: str | None = _f(SETTING, "default | seminorm")
    solver_step_size: float | None = _f(SETTING, "fixed-grid step; null when adaptive")
    solver_last_step: str | None = _f(SETTING, "clamp | overshoot; null for fixed grids")
    # Contract 2's columns: every run writes them (null for density runs)
    test_error: float | None = _f(MEASURE, "test-set error", "fraction", reduce=LAST,
                                  title="Test error")
    train_error: float | None = _f(MEASURE, "training-set error", "fraction", reduce=LAST)
    val_error: float | None = _f(MEASURE, "validation error (data.val_size; for choosing "
                                 "settings)", "fraction", CLASSIFY, reduce=LAST)
    ema_test_error: float | None = _f(MEASURE, "test-set error of the weights' moving "
                                      "average (optim.ema_decay)", "fraction", CLASSIFY,
                                      reduce=LAST)
    ema_val_error: float | None = _f(MEASURE, "validation error of the weights' moving "
                                     "average", "fraction", CLASSIFY, reduce=LAST)
    ema_test_nll: float | None = _f(MEASURE, "test NLL of the weights' moving average",
                                    "nats", DENSITY, reduce=LAST)
    ema_val_nll: float | None = _f(MEASURE, "validation NLL of the weights' moving average",
                                   "nats", DENSITY, reduce=LAST)
    ema_decay: float | None = _f(SETTING, "optim.ema_decay; null: no moving average")
    solver_carry_step: bool | None = _f(SETTING, "training solves start from the step the "
                                        "last one proposed")
    kinetic_weight: float | None = _f(SETTING, "model.kinetic_weight; null without an ODE "
                                      "block")
    jacobian_weight: float | None = _f(SETTING, "model.jacobian_weight")
    t1_jitter: float | None = _f(SETTING, "model.t1_jitter: training end times in "
                                 "[t1 - b, t1 + b]")
    kinetic_energy: float | None = _f(MEASURE, "mean kinetic energy of the last epoch's "
                                      "training solves", reduce=LAST)
    jacobian_frobenius: float | None = _f(MEASURE, "mean Jacobian Frobenius norm of the "
                                          "last epoch's training solves", reduce=LAST)
    test_nll: float | None = _f(MEASURE, "test negative log-likelihood", "nats", DENSITY,
                                reduce=LAST, title="Test NLL")
    train_nll: float | None = _f(MEASURE, "training NLL", "nats", DENSITY, reduce=LAST,
                                 title="Train NLL")
    val_nll: float | None = _f(MEASURE, "validation NLL (data.val_size)", "nats", DENSITY,
                               reduce=LAST)
    val_size: int | None = _f(SETTING, "validation samples; null: no validation split",
                              "samples")
    params: int | None = _f(MEASURE, "trainable parameters", "count", title="Params")
    residual_blocks: int | None = _f(SETTING, "residual blocks of the body; null without")
    nfe_forward_mean: float | None = _f(MEASURE, "NFE per forward solve, last epoch's "
                                        "training iterations", "evaluations", reduce=LAST,
                                        title="NFE-F")
    nfe_backward_mean: float | None = _f(MEASURE, "NFE per adjoint backward solve",
                                         "evaluations", reduce=LAST, title="NFE-B")
    test_nfe_forward_mean: float | None = _f(MEASURE, "NFE per test batch", "evaluations",
                                             reduce=LAST)
    activation_mib: float | None = _f(MEASURE, "saved for backward, whole model, one "
                                      "training iteration", "MiB", reduce=LAST)
    activation_block_mib: float | None = _f(MEASURE, "saved for backward by the ODE block "
                                            "or the residual blocks", "MiB", reduce=LAST)
    activation_nfe_forward: int | None = _f(MEASURE, "NFE-F of the iteration whose "
                                            "activations were measured", "evaluations",
                                            reduce=LAST)
    cuda_peak_mib: float | None = _f(MEASURE, "CUDA allocator peak of the run", "MiB",
                                     reduce=LAST)
    cuda_train_peak_mib: float | None = _f(MEASURE, _TRAIN_PEAK, "MiB", reduce=LAST,
                                           title="GPU train peak")
    cuda_eval_peak_mib: float | None = _f(MEASURE, _EVAL_PEAK, "MiB", reduce=LAST)
    rss_peak_mib: float | None = _f(MEASURE, "process resident-set peak", "MiB", reduce=LAST)
    sec_per_iter: float | None = _f(MEASURE, "median training iteration", "s", reduce=LAST,
                                    title="s / iter")
    sec_per_test_batch: float | None = _f(MEASURE, "median test batch", "s", reduce=LAST,
                                          title="s / test batch")
    # the trainer's progress (train.Progress): what its last checkpoint holds
    epochs: int = _f(MEASURE, "epochs completed", "epochs", default=0)
    epochs_planned: int | None = _f(SETTING, "optim.epochs", "epochs")
    batch_size: int | None = _f(SETTING, "training batch", "samples")
    train_size: int | None = _f(SETTING, "training samples", "samples")
    test_size: int | None = _f(SETTING, "test samples; null: the task's full test set",
                               "samples")
    max_iters_per_epoch: int | None = _f(SETTING, "train.max_iters_per_epoch")
    lr: float | None = _f(SETTING, "peak learning rate")
    schedule: str | None = _f(SETTING, "optim.schedule")
    optimizer: str | None = _f(SETTING, "optim.name: sgd | adam")
    momentum: float | None = _f(SETTING, "optim.momentum; null: Adam, which has none")
    nesterov: bool | None = _f(SETTING, "optim.nesterov; null: Adam")
    weight_decay: float | None = _f(SETTING, "optim.weight_decay")
    device: str | None = _f(SETTING, "torch device", title="Device")
    precision: str = _f(SETTING, "fp32 | bf16: the network layers' compute dtype",
                        default="fp32")
    float32_math: str | None = _f(INFO, "ieee | tf32: what float32 convolutions and matmuls "
                                  "ran as on a GPU (runtime.set_exact_math); null: before "
                                  "it was recorded")
    threads: int | None = _f(INFO, "torch threads")
    torch_version: str | None = _f(INFO, "torch.__version__")
    git_commit: str | None = _f(INFO, "odenet's commit, when run from a git checkout")
    host: str | None = _f(INFO, "platform.node()")
    wall_seconds: float = _f(MEASURE, "wall time of the run, all sessions", "s", default=0.0)


@dataclass
class IterRecord:
    """history.jsonl, one line per logged training iteration (every train.log_every)."""

    kind: str = _f(INFO, "always iter", default="iter")
    epoch: int = _f(INFO, "epoch, from 0", default=0)
    iter: int = _f(INFO, "iteration within the epoch, from 0", default=0)
    step: int = _f(INFO, "optimizer steps so far, from 1", default=0)
    loss: float | None = _f(MEASURE, "training loss of the batch")
    nfe_forward: int | None = _f(MEASURE, "NFE of the forward solve", "evaluations")
    nfe_backward: int | None = _f(MEASURE, "NFE of the adjoint backward solve", "evaluations")
    steps_accepted: int | None = _f(MEASURE, "accepted solver steps (forward)", "steps")
    steps_rejected: int | None = _f(MEASURE, "rejected solver steps (forward)", "steps")
    seconds: float | None = _f(MEASURE, "wall time of the iteration", "s")
    lr: float | None = _f(MEASURE, "learning rate of the step")
    kinetic_energy: float | None = _f(MEASURE, "int |f|^2 dt / size(h) of the training "
                                      "solve, batch mean (when model.kinetic_weight > 0)")
    jacobian_frobenius: float | None = _f(MEASURE, "int |eps^T df/dh|^2 dt / size(h), "
                                          "batch mean (when model.jacobian_weight > 0)")


@dataclass
class EpochRecord:
    """history.jsonl, one line per finished epoch."""

    kind: str = _f(INFO, "always epoch", default="epoch")
    epoch: int = _f(INFO, "epoch, from 0", default=0)
    train_error: float | None = _f(MEASURE, "training-set error", "fraction", CLASSIFY)
    test_error: float | None = _f(MEASURE, "test-set error", "fraction", CLASSIFY)
    train_nll: float | None = _f(MEASURE, "training NLL", "nats", DENSITY)
    val_error: float | None = _f(MEASURE, "validation error", "fraction", CLASSIFY)
    test_nll: float | None = _f(MEASURE, "test NLL", "nats", DENSITY)
    ema_test_error: float | None = _f(MEASURE, "test-set error, weights' moving average",
                                      "fraction", CLASSIFY)
    ema_val_error: float | None = _f(MEASURE, "validation error, weights' moving average",
                                     "fraction", CLASSIFY)
    ema_test_nll: float | None = _f(MEASURE, "test NLL, weights' moving average", "nats",
                                    DENSITY)
    ema_val_nll: float | None = _f(MEASURE, "validation NLL, weights' moving average", "nats",
                                   DENSITY)
    val_nll: float | None = _f(MEASURE, "validation NLL", "nats", DENSITY)
    nfe_forward_mean: float | None = _f(MEASURE, "NFE per forward solve", "evaluations",
                                        reduce=MEAN, of="nfe_forward")
    nfe_backward_mean: float | None = _f(MEASURE, "NFE per backward solve", "evaluations",
                                         reduce=MEAN, of="nfe_backward")
    test_nfe_forward_mean: float | None = _f(MEASURE, "NFE per test batch", "evaluations")
    # of the iteration whose activations were counted: each session's first in the epoch
    activation_mib: float | None = _f(MEASURE, "saved for backward, whole model", "MiB",
                                      reduce=LAST, of="activation_mib")
    activation_block_mib: float | None = _f(MEASURE, "saved for backward, blocks", "MiB",
                                            reduce=LAST, of="activation_block_mib")
    activation_nfe_forward: int | None = _f(MEASURE, "NFE-F of the measured iteration",
                                            "evaluations", reduce=LAST,
                                            of="activation_nfe_forward")
    rss_peak_mib: float | None = _f(MEASURE, "process resident-set peak", "MiB")
    cuda_peak_mib: float | None = _f(MEASURE, "CUDA allocator peak of the run so far", "MiB")
    cuda_train_peak_mib: float | None = _f(MEASURE, _TRAIN_PEAK, "MiB")
    cuda_eval_peak_mib: float | None = _f(MEASURE, _EVAL_PEAK, "MiB")
    loss: float | None = _f(MEASURE, "mean training loss", reduce=MEAN, of="loss")
    kinetic_energy: float | None = _f(MEASURE, "mean kinetic energy of the training solves",
                                      reduce=MEAN, of="kinetic_energy")
    jacobian_frobenius: float | None = _f(MEASURE, "mean Jacobian Frobenius norm of the "
                                          "training solves", reduce=MEAN,
                                          of="jacobian_frobenius")
    lr: float | None = _f(MEASURE, "learning rate at the epoch's end")
    # the measured iteration's time includes the census: not a sample (its sample_seconds
    # is None)
    sec_per_iter: float | None = _f(MEASURE, "median training iteration", "s", reduce=MEDIAN,
                                    of="sample_seconds")
    sec_per_test_batch: float | None = _f(MEASURE, "median test batch", "s")
    train_seconds: float | None = _f(MEASURE, "wall time of the epoch's training", "s")
    seconds: float | None = _f(MEASURE, "wall time of the epoch, evaluation included", "s")


HISTORY_KINDS = {"iter": IterRecord, "epoch": EpochRecord}


def _check_declarations() -> None:
    """Each ``reduce`` names a fold the level can hold; a Metrics field's has its epoch
    field. A bad declaration fails here, at import, not in the middle of a run."""
    epoch = {f.name for f in fields(EpochRecord)}
    bad = [f"EpochRecord.{f.name}" for f in _reduced(EpochRecord)
           if f.metadata["reduce"] not in REDUCTIONS or not f.metadata["of"]]
    bad += [f"Metrics.{f.name}" for f in _reduced(Metrics)
            if f.metadata["reduce"] not in METRICS_REDUCTIONS or f.name not in epoch]
    if bad:
        raise ImportError(f"odenet.run.record: bad reduce declarations: {', '.join(bad)}")


class RecordError(ValueError):
    """A record that fails its schema; the message is one line naming the file."""


# ------------------------------------------------------------------------- writing
def to_json(record: Any) -> dict:
    """The record as a JSON-ready dict: non-finite floats become null, fields of the
    other task are left out (a classification run writes no test_nll)."""
    task = getattr(record, "task", None)
    out = {}
    for f in fields(record):
        if f.metadata["task"] is not None and task is not None and f.metadata["task"] != task:
            continue
        v = getattr(record, f.name)
        out[f.name] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def for_task(record_type: type, task: str) -> list[str]:
    """Names of ``record_type``'s fields a run of ``task`` writes."""
    return [f.name for f in fields(record_type) if f.metadata["task"] in (None, task)]


def names(record_type: type, kind: str | None = None, **meta: Any) -> list[str]:
    """Field names of ``record_type``, filtered by metadata kind and other metadata."""
    return [f.name for f in fields(record_type)
            if (kind is None or f.metadata["kind"] == kind)
            and all(f.metadata.get(k) == v for k, v in meta.items())]


def fill(record_type: type, values: dict, **given: Any) -> Any:
    """A ``record_type`` of ``given`` and, for its other fields, the value of the same name
    in ``values`` where there is one (e.g. an IterRecord from an iteration's measures)."""
    mine = {f.name for f in fields(record_type)}
    return record_type(**{**{k: v for k, v in values.items() if k in mine}, **given})


def _reduced(record_type: type) -> list:
    return [f for f in fields(record_type) if f.metadata["reduce"] is not None]


def epoch_state() -> dict[str, Any]:
    """The state of an epoch that has no iteration yet: EpochRecord field -> its fold's."""
    return {f.name: REDUCTIONS[f.metadata["reduce"]].start() for f in _reduced(EpochRecord)}


def add_iteration(state: dict[str, Any], values: dict) -> None:
    """Fold one iteration's ``values`` (by name: each EpochRecord field's ``of``) into
    ``state``. None is no value: not measured at that iteration (the NFE of a model without
    an ODE block, the activations of all but the measured iteration)."""
    for f in _reduced(EpochRecord):
        v = values.get(f.metadata["of"])  # absent: not measured by this model
        if v is not None:
            state[f.name] = REDUCTIONS[f.metadata["reduce"]].add(state[f.name], v)


def epoch_values(state: dict[str, Any]) -> dict[str, Any]:
    """The EpochRecord fields reduced from the epoch's iterations so far."""
    return {f.name: REDUCTIONS[f.metadata["reduce"]].value(state[f.name])
            for f in _reduced(EpochRecord)}


def add_epoch(metrics: Metrics, epoch: dict) -> None:
    """Fold an epoch record (as JSON) into the run's metrics: each Metrics field with a
    ``reduce``, from the epoch field of its name. ``last`` takes the epoch's value even
    when it is None (a measure the last epoch did not take is not the run's)."""
    for f in _reduced(Metrics):
        how, v = f.metadata["reduce"], epoch.get(f.name)
        if f.name in epoch and (v is not None or how == LAST):
            setattr(metrics, f.name, REDUCTIONS[how].add(getattr(metrics, f.name), v))


def title(record_type: type, name: str) -> str:
    """The column header of field ``name`` (its ``title``; the name when it has none)."""
    return _field(record_type, name).metadata["title"] or name


def unit(record_type: type, name: str) -> str:
    return _field(record_type, name).metadata["unit"]


def _field(record_type: type, name: str) -> Any:
    return {f.name: f for f in fields(record_type)}[name]


# ------------------------------------------------------------------------- reading
def _types(annotation: Any) -> tuple[type, ...]:
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) \
        else (annotation,)
    if float in args:
        args = (*args, int)  # JSON writes 2.0 as 2.0, but hand-made files may say 2
    return tuple(args)


def check(record_type: type, obj: Any) -> dict:
    """``obj`` checked against ``record_type``: a dict whose known fields have their
    types (bool is not a number; NaN is not a value). Missing fields take their default
    (records written before the field existed), except fields of another task; unknown
    keys are kept (a newer writer).
    Raises RecordError (message without the file name)."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    out = dict(obj)
    task = obj.get("task", CLASSIFY) if record_type is Metrics else None
    for f in fields(record_type):
        if f.name not in obj:
            if f.metadata["task"] not in (None, task):
                continue  # a field of another task: that run does not write it
            if f.default is MISSING:
                raise RecordError(f"missing key {f.name!r}")
            out[f.name] = f.default
            continue
        v, ok = obj[f.name], _types(f.type)
        bad = (isinstance(v, bool) and bool not in ok) or not isinstance(v, ok) or (
            isinstance(v, float) and not math.isfinite(v))
        if bad:
            want = " or ".join("null" if t is type(None) else t.__name__ for t in ok
                               if not (t is int and float in ok))
            raise RecordError(f"{f.name} = {v!r} is not {want}")
    if record_type is Metrics:
        if not out["model"]:
            raise RecordError("missing key 'model'")
        if out["status"] not in STATUSES:
            raise RecordError(f"status {out['status']!r} is not one of {', '.join(STATUSES)}")
    return out


def read_metrics(path: str | Path) -> dict:
    """A metrics.json, checked (RecordError: one line with the path and the reason)."""
    return check_file(path, Metrics)


def check_file(path: str | Path, record_type: type = Metrics) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RecordError(f"{path}: cannot read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise RecordError(f"{path}: not valid JSON{where}") from None
    try:
        return check(record_type, obj)
    except RecordError as e:
        raise RecordError(f"{path}: invalid {path.name}: {e}") from None


def read_history(path: str | Path, notes: list[str] | None = None) -> list[dict]:
    """history.jsonl, each line checked. A truncated *last* line (a run killed while
    appending) is dropped, and said in ``notes`` (when given: a list a line is appended
    to); a bad line anywhere else is a RecordError. No file: []."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                if notes is not None:
                    notes.append(f"line {i} is cut short (an interrupted write): left out")
                break
            raise RecordError(f"{path}:{i}: invalid {path.name}: line is not JSON") from None
        kind = rec.get("kind") if isinstance(rec, dict) else None
        if kind not in HISTORY_KINDS:
            raise RecordError(f"{path}:{i}: invalid {path.name}: kind {kind!r} is not one of "
                              f"{', '.join(HISTORY_KINDS)}")
        try:
            out.append(check(HISTORY_KINDS[kind], rec))
        except RecordError as e:
            raise RecordError(f"{path}:{i}: invalid {path.name}: {e}") from None
    return out


def fake(record_type: type = Metrics, **values: Any) -> dict:
    """A complete record as JSON (every field), for tests and examples: the defaults of
    ``record_type`` updated with ``values``; unknown names are an error."""
    return to_json(record_type(**values))


_check_declarations()


def doc_table(record_type: type) -> str:
    """Markdown lines 'name | type | unit | meaning' of ``record_type`` (for DEVELOPERS.md)."""
    rows = []
    for f in fields(record_type):
        t = str(f.type).replace("typing.", "").replace("<class '", "").replace("'>", "")
        task = f" ({f.metadata['task']} runs)" if f.metadata["task"] else ""
        how = f.metadata["reduce"]
        if how is not None:  # its declaration: from the level below
            task += f"; {how} of {f.metadata['of'] or f.name}"
        rows.append(f"| `{f.name}` | {t} | {f.metadata['unit']} | {f.metadata['doc']}{task} |")
    return "\n".join(rows)


__all__ = ["METRICS", "HISTORY", "EVALUATION", "CHECKPOINT_FILE", "GRADIENTS_FILE",
           "GRADIENTS_FIGURE", "CHECKPOINT_ID", "Metrics", "IterRecord", "EpochRecord",
           "RecordError", "STATUSES", "SETTING", "MEASURE", "INFO", "to_json", "for_task",
           "names", "fill", "epoch_state", "add_iteration", "epoch_values", "add_epoch",
           "title", "unit", "REDUCTIONS", "MEAN", "MEDIAN", "LAST", "MAX", "SUM", "check",
           "check_file", "read_metrics", "read_history", "fake", "doc_table"]
