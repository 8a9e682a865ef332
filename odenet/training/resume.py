"""What a training does with its run directory (``take_over``, decided once, before
anything is written): whether its checkpoint may be continued (``check_resume``: a
training checkpoint of the same settings, but those a resumed run may change, with its
history intact), whether its run has nothing left to do (``finished``), and the refusal
of a run there that is neither resumed nor overwritten. Settings are compared
as the machine runs them (``machine_precision``: precision=auto resolved).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odenet.config.schedules import SCHEDULES
from odenet.config.schema import ConfigError, as_dict, to_config
from odenet.run import directory as rundir
from odenet.run import record
from odenet.training import checkpoint_file as checkpoint
from odenet.training import optim
from odenet.training.runtime import resolve_device, resolve_precision

# config keys a resumed run may change: what does not change the weights' trajectory
# (more epochs extend it, unless the schedule is fitted to them: optim.FITTED_TO_LENGTH;
# threads and device change rounding only). Everything else, train.max_iters_per_epoch
# included, must match the checkpoint.
RESUMABLE_CHANGES = ("optim.epochs", "train.log_every", "train.train_eval_size",
                     "train.stop_after_iters", "train.measure_memory", "train.tensorboard",
                     "train.progress", "threads", "device", "resume", "overwrite")


def machine_precision(cfg: Any) -> Any:
    """``cfg`` with precision=auto made what this machine runs (runtime.resolve_precision),
    before a run's settings are compared with a checkpoint's or saved."""
    if cfg.precision != "auto":
        return cfg
    resolved = resolve_precision(cfg.precision, resolve_device(cfg.device))
    return to_config({**as_dict(cfg), "precision": resolved})


def finished(out: Path, cfg: Any) -> dict | None:
    """The metrics of the run in ``out`` if it has finished ``cfg``'s epochs, else None."""
    try:
        m = record.read_metrics(out / record.METRICS)
    except record.RecordError:
        return None
    return m if m["status"] == "finished" and m["epochs"] >= cfg.optim.epochs else None


def check_resume(cfg: Any, out: Path) -> dict[str, Any]:
    """The checkpoint in ``out`` if ``cfg`` may continue it: a training checkpoint, the
    same settings but RESUMABLE_CHANGES, its history intact. ConfigError otherwise."""
    cfg = machine_precision(cfg)  # the checkpoint holds what ran, never auto
    path = out / checkpoint.CHECKPOINT_FILE
    try:
        ck = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"resume=true: {e}; overwrite=true starts the run afresh (its "
                          "records deleted)") from None
    missing = [k for k in ("optimizer", "scheduler", "rng", "progress") if k not in ck]
    if missing:
        raise ConfigError(f"resume=true: {path} is not a training checkpoint "
                          f"(no {', '.join(missing)})")
    diff = [k for k in _config_diff(ck["config"], as_dict(cfg))
            if not any(k == a or k.startswith(a + ".") for a in RESUMABLE_CHANGES)]
    if diff:
        raise ConfigError(f"resume=true: {path} was written with other settings for "
                          f"{', '.join(diff)} (only {', '.join(RESUMABLE_CHANGES)} may change)")
    _check_epochs_change(ck["config"]["optim"]["epochs"], cfg.optim)
    _check_state_kept(ck, cfg, path)
    hist = out / record.HISTORY
    need = ck["progress"].get("history_bytes", 0)
    have = hist.stat().st_size if hist.exists() else None
    if have is None or have < need:
        what = "is missing" if have is None else f"has {have} of the {need} bytes it had"
        raise ConfigError(f"resume=true: {hist} {what} when {path} was saved; the run's "
                          "history cannot continue (overwrite=true starts afresh)")
    return ck


def _check_state_kept(ck: dict[str, Any], cfg: Any, path: Path) -> None:
    """A setting that keeps state in the checkpoint cannot be turned on when resuming a run
    written without it (its config predates the setting, so the settings compare equal)."""
    kept = (("optim.ema_decay", cfg.optim.ema_decay is not None, "ema" in ck,
             "a moving average of the weights"),
            ("solver.carry_step", bool(cfg.solver.get("carry_step")),
             any(k.endswith("carried_steps") for k in ck["model"]), "a carried step"))
    for key, wanted, has, what in kept:
        if wanted and not has:
            raise ConfigError(f"resume=true: {path} holds no {what}, so {key} cannot be "
                              "turned on for this run (train afresh: overwrite=true, or "
                              "another hydra.run.dir)")


def _check_epochs_change(was: int, o: Any) -> None:
    """More (or fewer) epochs extend a run only where the schedule does not depend on them:
    a cosine or one-cycle schedule is fitted to optim.epochs, so changing them would
    splice two schedules into one run."""
    if o.epochs != was and o.schedule in optim.FITTED_TO_LENGTH:
        free = " and ".join(s.name for s in SCHEDULES.values() if not s.fitted_to_length)
        raise ConfigError(
            f"resume=true: optim.epochs={o.epochs} but the run has optim.epochs={was}, and "
            f"its {o.schedule} schedule is fitted to them (every step's learning rate would "
            f"change); only {free} runs can be extended: train {o.epochs} "
            "epochs afresh (overwrite=true, or another hydra.run.dir)")


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ; keys only one side has (a schema that gained a
    setting since the checkpoint was written) are not differences."""
    out = []
    for k in sorted(set(a) & set(b)):
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


@dataclass(frozen=True)
class TakeOver:
    """A run directory's fate: continue ``checkpoint`` (None: start afresh), or nothing to
    do when ``done`` holds the metrics of a run that has finished its epochs."""
    checkpoint: dict[str, Any] | None = None
    done: dict[str, Any] | None = None


def take_over(cfg: Any, out: Path) -> TakeOver:
    """The resume/overwrite rules for ``out``, reading it only (the checkpoint is loaded
    here, once): ConfigError for a resume the checkpoint refuses and for a run there that
    is neither resumed (resume=true) nor overwritten (overwrite=true)."""
    if cfg.resume:
        ck = check_resume(cfg, out) if (out / checkpoint.CHECKPOINT_FILE).is_file() else None
        return TakeOver(ck, finished(out, cfg))
    if rundir.holds_run(out) and not cfg.overwrite:
        raise ConfigError(f"{out} already holds a run: resume=true continues it, "
                          "overwrite=true deletes it and starts afresh")
    return TakeOver()
