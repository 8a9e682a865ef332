"""The Hydra layer: composing ``configs/``, the ``odenet train`` app, and Hydra's errors
turned into one line. The only module that imports Hydra; below it, configs are
validated structured configs (odenet/config/schema.py) and ``trainer.run(cfg, out_dir)`` trains.

Python API (README, "Python API"):

    from odenet.cli.app import compose
    from odenet.training.trainer import run
    cfg = compose(["experiment=smoke", "model=odenet"])
    metrics = run(cfg, "outputs/api/odenet")

`odenet train` parses its command line with Hydra's own parser, composes with Hydra's
compose API and runs a job with Hydra's ``run_job``; a sweep (-m) is Hydra's multirun (its
sweeper and the chosen launcher), checked first by ``SweepGuard`` (configs/hydra/). The
checks that must come before Hydra writes into a run directory are in guard.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from odenet.cli import guard
from odenet.cli.error_lines import Refused, error_line
from odenet.config.schema import ConfigError, to_config
from odenet.run.record import METRICS, read_metrics

__all__ = ["compose", "error_line", "train_help", "train_main", "SweepGuard"]

CONFIG_MODULE = "odenet.configs"
CONFIG_NAME = "config"


@contextlib.contextmanager
def _hydra() -> Iterator[Any]:
    """Hydra initialized on configs/ (its compose API); the GlobalHydra, cleared after."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3",
                                  job_name="train"):
        yield GlobalHydra.instance()


def _composed(overrides: Sequence[str], config_name: str) -> tuple[Any, Any]:
    """(the validated config, Hydra's composition with its ``hydra`` node); inside _hydra."""
    from hydra import compose as hydra_compose

    raw = hydra_compose(config_name=config_name, overrides=list(overrides),
                        return_hydra_config=True)
    return _validated(raw), raw


def _validated(raw: Any) -> Any:
    from omegaconf import OmegaConf

    return to_config(OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]))


def compose(overrides: Sequence[str] = (), config_name: str = CONFIG_NAME) -> Any:
    """Compose ``configs/`` with Hydra's compose API and validate (the Python API, tests)."""
    with _hydra():
        return _composed(overrides, config_name)[0]


def train_help(overrides: Sequence[str] = (), config_name: str = CONFIG_NAME) -> str:
    """`odenet train [overrides] --help`: the config groups, then every setting of the
    configuration those overrides compose, with its value and what configs/ says of it."""
    from odenet.cli.help import GROUPS, render

    with _hydra() as gh:
        cfg, raw = _composed(overrides, config_name)  # a bad setting: its one-line error
        options = {g: gh.config_loader().get_group_options(g) for g in GROUPS}
    return render(cfg, raw, options, config_name)


class SweepGuard(Callback):
    """Before a sweep writes anything: the settings its jobs share, their data and device,
    and where it writes (each job's own values are validated by the job, once)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            cfg = _validated(config)
        except ConfigError as e:
            raise Refused(str(e)) from None
        guard.check_job(cfg)
        guard.check_run_dir_writable(Path(config.hydra.sweep.dir))


# ------------------------------------------------------------------------- odenet train
class Stopped(BaseException):
    """A signal stopped a sweep (a BaseException: no launcher takes it for a job's failure
    and goes on); where to continue it."""

    def __init__(self, code: int, sweep_dir: str, started: bool):
        super().__init__(code)
        self.code, self.sweep_dir, self.started = code, sweep_dir, started


def train_main(argv: list[str] | None = None) -> int:
    """`odenet train [overrides] [-m]`: the Hydra app (config: configs/config.yaml)."""
    from odenet.run import directory as rundir

    rundir.defer_signals()  # before torch and Hydra load: an early Ctrl-C ends in one line
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        line, code = _train(argv)
    except Refused as r:
        line, code = r.line, r.code
    except Stopped as s:
        line, code = "", s.code
        if s.started:
            line = ("sweep interrupted; continue it (finished jobs are skipped) with: "
                    + rundir.resume_sweep_command(s.sweep_dir, argv))
    except KeyboardInterrupt:  # Ctrl-C twice before a training loop took the signals
        line, code = "interrupted (SIGINT twice): stopped at once", 130
    if code in (130, 143) and not line:
        line = (f"interrupted ({signal.Signals(code - 128).name}) before training began: "
                "nothing was trained")
    if line:
        print(f"odenet train: {'error: ' if code in (1, 2) else ''}{line}"
              if code and not line.startswith("odenet train:") else line,
              file=sys.stderr if code else sys.stdout)
    return code


def _train(argv: list[str]) -> tuple[str, int]:
    """("", exit status) or a line to print with it."""
    from hydra._internal.utils import get_args_parser  # what hydra.main parses sys.argv with
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parser = get_args_parser()
    parser.error = _bad_flag  # type: ignore[method-assign]  # one line, not argparse's usage
    args = parser.parse_args(argv)
    config_name = args.config_name or CONFIG_NAME
    if args.shell_completion:
        return ("odenet train has no shell completion (Hydra's would call the program "
                "without its 'train' command); `odenet train --help` lists every setting", 2)
    if args.config_path or args.config_dir:
        return ("--config-path/--config-dir: odenet train composes its own configs/; add a "
                "directory of configs with hydra.searchpath=[file:///abs/dir]", 2)
    try:
        if args.help and not args.hydra_help:
            print(train_help(args.overrides, config_name))
            return "", 0
        if args.hydra_help:  # Hydra's own composes no app config: not our template
            with _hydra() as gh:
                raw = _composed(args.overrides, config_name)[1]
                print(gh.hydra.get_help(raw.hydra.hydra_help, raw, parser, resolve=False))
            return "", 0
        if args.cfg or args.info:
            return _show(args, config_name)
        return (_sweep if args.multirun else _single)(args.overrides, config_name)
    except (HydraException, ConfigError, OmegaConfBaseException) as e:  # composition
        return error_line(e), 2  # (a missing config file is an OSError too: first)
    except OSError as e:  # Hydra writing .hydra/ into the run directory, e.g. a full disk
        where = e.filename or "Hydra's record of the run (.hydra/)"
        return f"cannot write {where}: {e.strerror or e}", 1


def _show(args: Any, config_name: str) -> tuple[str, int]:
    """--cfg and --info: Hydra prints the configuration of one job, or its sources."""
    if args.multirun or (args.cfg and args.info):
        return ("-m, --cfg and --info exclude each other: --cfg and --info print the "
                "configuration of one job (drop -m and give one value per key)", 2)
    with _hydra() as gh:
        if args.cfg:
            gh.hydra.show_cfg(config_name=config_name, overrides=args.overrides,
                              cfg_type=args.cfg, package=args.package, resolve=args.resolve)
        else:
            gh.hydra.show_info(args.info, config_name=config_name, overrides=args.overrides)
    return "", 0


def _bad_flag(message: str) -> None:
    raise Refused(f"{message}: odenet train takes key=value settings and Hydra's flags "
                  "(odenet train --help, --hydra-help)")


def _single(overrides: list[str], config_name: str) -> tuple[str, int]:
    """One run: composed and validated once, checked before Hydra's run_job creates its
    directory and writes its record there, then trained by that validated config. (Not
    Hydra's run(): its one hook before it writes, the on_run_start callback, cannot hand
    the validated config to the job, which would validate its own copy again.)"""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode

    from odenet.data import DataError
    from odenet.run import directory as rundir
    from odenet.training import trainer

    with _hydra() as gh:
        cfg, raw = _composed(overrides, config_name)
        raw.hydra.mode = RunMode.RUN
        guard.check_job(cfg)
        decided = guard.claim_run_dir(cfg, Path(raw.hydra.run.dir))  # ${now:} resolved once
        signum = rundir.pending_signal()
        if signum is not None:
            return "", 128 + signum

        def job(_: Any) -> dict:  # Hydra's copy of the config is left: cfg is validated
            return trainer.run(cfg, HydraConfig.get().runtime.output_dir, decided)

        # the configured hydra.callbacks, as Hydra's own run() hands them to run_job
        context = HydraContext(config_loader=gh.config_loader(), callbacks=Callbacks(raw))
        ret = run_job(task_function=job, config=raw, job_dir_key="hydra.run.dir",
                      job_subdir_key=None, hydra_context=context)
    try:
        metrics = ret.return_value  # the job's exception, raised
    except (ConfigError, DataError) as e:  # e.g. the data changed since the check
        raise Refused(str(e)) from None
    if trainer.last_signal is not None:
        return "", 128 + int(trainer.last_signal)
    return "", {"finished": 0, "interrupted": 3}.get(metrics["status"], 1)


def _sweep(overrides: list[str], config_name: str) -> tuple[str, int]:
    """Hydra's multirun: its sweeper expands the jobs, the chosen launcher runs them; each
    job's record (metrics.json) then says how the sweep ended."""
    with _hydra() as gh:
        returns = gh.hydra.multirun(config_name=config_name, task_function=_sweep_job,
                                    overrides=[*overrides, "hydra.mode=MULTIRUN"])
    jobs = [(r.hydra_cfg.hydra.job.num, Path(r.hydra_cfg.hydra.runtime.output_dir))
            for batch in returns or [] for r in batch]
    records = [(num, out, read_metrics(out / METRICS)) for num, out in jobs]
    failed = [f"job {num} in {out}: {m['reason']}" for num, out, m in records
              if m["status"] == "failed"]
    if failed:  # a sweep ends on its failures, not on its last job
        return f"{len(failed)} of {len(records)} sweep jobs failed: " + "; ".join(failed), 1
    if any(m["status"] == "interrupted" for _, _, m in records):
        raise Stopped(3, str(Path(returns[0][0].hydra_cfg.hydra.sweep.dir).resolve()), True)
    return "", 0


def _sweep_job(dcfg: Any) -> float | None:
    """The function Hydra runs per job of a sweep (also inside joblib/submitit workers)."""
    from hydra.core.hydra_config import HydraConfig

    from odenet.data import DataError
    from odenet.run import directory as rundir
    from odenet.training import trainer

    hc = HydraConfig.get()
    sweep_dir = os.path.abspath(hc.sweep.dir)
    signum = rundir.pending_signal()
    if signum is not None:  # a signal between jobs or during Hydra's launch: start no more
        raise Stopped(128 + signum, sweep_dir, started=int(hc.job.num) > 0)
    label = guard.JobLabel(f"job {hc.job.num}: {hc.job.override_dirname or 'defaults'}")
    try:
        metrics = trainer.run(to_config(dcfg), hc.runtime.output_dir)  # validated here, once
    except (ConfigError, DataError) as e:
        raise Refused(str(e)) from None
    finally:
        label.remove()
    if trainer.last_signal is not None:  # Ctrl-C / SIGTERM also ends a sweep
        raise Stopped(128 + int(trainer.last_signal), sweep_dir, started=True)
    # what a sweeper that chooses settings optimizes: the validation metric, never the
    # test metric (None without data.val_size)
    value = metrics.get("val_error", metrics.get("val_nll"))
    return float(value) if isinstance(value, (int, float)) else None
