"""The Hydra layer: composing ``configs/``, the ``odenet train`` app, and Hydra's errors
turned into one line. The only module that imports Hydra; below it, configs are
validated structured configs (odenet/config/schema.py) and ``train.run(cfg, out_dir)`` trains.

Python API (README, "Python API"):

    from odenet.cli.app import compose
    from odenet.training.trainer import run
    cfg = compose(["experiment=smoke", "model=odenet"])
    metrics = run(cfg, "outputs/api/odenet")
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from odenet.config.schema import ConfigError, to_config, unknown_key_line
from odenet.run.record import CHECKPOINT_FILE

CONFIG_MODULE = "odenet.configs"
CONFIG_NAME = "config"


def compose(overrides: Sequence[str] = (), config_name: str = CONFIG_NAME) -> Any:
    """Compose ``configs/`` with Hydra's compose API and validate (the Python API, tests)."""
    return _compose(overrides, config_name)[0]


def _compose(overrides: Sequence[str], config_name: str = CONFIG_NAME,
             with_hydra: bool = False) -> tuple[Any, Any]:
    """(validated config, Hydra's own node or None)."""
    from omegaconf import OmegaConf

    raw = _compose_raw(overrides, config_name, with_hydra)
    if not with_hydra:
        return to_config(raw), None
    return to_config(OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"])), raw.hydra


def _compose_raw(overrides: Sequence[str], config_name: str, with_hydra: bool) -> Any:
    """What Hydra composes, before validation (interpolations unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides),
                             return_hydra_config=with_hydra)


def error_line(exc: BaseException) -> str:
    """One line for the user from a ConfigError or an exception of Hydra's composition."""
    if isinstance(exc, ConfigError):
        return str(exc)
    lines = [ln.strip() for ln in str(exc).splitlines()]
    first = lines[0] if lines else type(exc).__name__
    hint = _quoting_hint(str(exc).splitlines(), exc.__cause__)
    if hint:
        return first + hint
    if "Available options in" in str(exc):  # e.g. model=nope
        opts, on = [], False
        for raw in str(exc).splitlines():
            if raw.startswith("Available options in"):
                on = True
                continue
            if on and raw.startswith("\t"):
                opts.append(raw.strip())
            elif on and raw.strip():
                break
        first = first.removeprefix("In 'config': ")
        return f"{first} (available: {', '.join(opts)})" if opts else first
    cause = exc.__cause__
    if cause is not None and "not in struct" in str(cause):
        return unknown_key_line(getattr(cause, "full_key", "") or "")
    if cause is not None and str(cause):
        return f"{first.rstrip('.')}: {str(cause).splitlines()[0].strip()}"
    if first.startswith("Ambiguous value") and len(lines) > 3:
        return f"{first}: sweeping needs -m (--multirun); a list is key=[a,b]"
    return first


# Hydra's errors for an override its grammar does not take unquoted: a character its lexer
# refuses (a caret under it on the next line), or a parse error with no other cause
LEXER_ERROR = "LexerNoViableAltException: "
PARSE_ERROR = re.compile(r"Error parsing override '(.+=.*)'")


def _quoting_hint(lines: list[str], cause: BaseException | None) -> str:
    """How to quote the override of Hydra's error ``lines`` ("" for another error), as it
    pastes into a shell."""
    from odenet.run.directory import command_line, hydra_value

    parsed = PARSE_ERROR.fullmatch(lines[0]) if lines and cause is None else None
    if parsed:
        override, at = parsed.group(1), ""
    elif lines and lines[0].startswith(LEXER_ERROR) and "=" in lines[0]:
        override = lines[0][len(LEXER_ERROR):]
        col = lines[1].find("^") - len(LEXER_ERROR) if len(lines) > 1 else -1
        at = f"{override[col]!r} " if 0 <= col < len(override) else ""
    else:
        return ""
    key, value = override.split("=", 1)
    quoted = command_line([f"{key}={hydra_value(value)}"])
    return (f" ({at}needs quotes: non-ASCII letters, quotes, #, ! and parentheses are taken "
            f"only in a quoted value; write {quoted})")


# ------------------------------------------------------------------------- odenet train
def _hydra_flags(argv: list[str]) -> argparse.Namespace:
    """The flags of a Hydra app's command line that decide what preflight checks."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("overrides", nargs="*")
    for flag in ("--help", "-h"), ("--hydra-help",), ("--version",), ("--resolve",), \
            ("--multirun", "-m"), ("--run", "-r"), ("--shell-completion", "-sc"):
        p.add_argument(*flag, action="store_true")
    for opt in ("--cfg", "-c"), ("--package", "-p"), ("--config-path", "-cp"), \
            ("--config-name", "-cn"), ("--config-dir", "-cd"), ("--experimental-rerun",):
        p.add_argument(*opt)
    p.add_argument("--info", "-i", nargs="?", const="all")
    args, _ = p.parse_known_args(argv)
    return args


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of a multirun's jobs (the cartesian product of its sweeps), as
    Hydra's basic sweeper expands them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            choices.append([o.input_line])
        elif o.is_discrete_sweep():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            raise ConfigError(f"{o.input_line}: only discrete sweeps (a,b,c or range()) "
                              "can be expanded into jobs")
    return [list(job) for job in itertools.product(*choices)]


def preflight(argv: list[str]) -> tuple[str, int] | None:
    """Compose and validate every job of the command line, and check its run directory;
    (one line, exit status) when the command should stop here, else None.

    Runs before Hydra takes over (and writes .hydra/ into the run directory), so that a
    bad config, missing data or a run directory that cannot be used ends with one clear
    line and exit status 2, and leaves every file as it was.
    """
    from odenet.config.model_registry import CLASSIFY, spec
    from odenet.data import DataError, require_raw

    args = _hydra_flags(argv)
    if args.hydra_help:  # Hydra's own advertises a shell completion odenet cannot offer
        print(HYDRA_HELP)
        return "", 0
    modes = [f for f, on in (("--run", args.run), ("--multirun", args.multirun),
                             ("--cfg", args.cfg), ("--info", args.info)) if on]
    if len(modes) > 1:  # Hydra would raise a traceback
        return (f"{' and '.join(modes)} exclude each other: --cfg and --info print the "
                "configuration of one job (drop -m and give one value per key)", 2)
    if args.shell_completion:
        return ("odenet train has no shell completion (Hydra's would call the program "
                "without its 'train' command); `odenet train --help` lists every setting", 2)
    if args.help and not (args.config_path or args.config_dir):
        try:
            jobs = sweep_jobs(args.overrides) if args.multirun else [args.overrides]
            print(train_help(jobs[0], args.config_name or CONFIG_NAME))
        except Exception as e:  # noqa: BLE001 - every composition error becomes one line
            return error_line(e), 2
        return "", 0
    if (args.help or args.version or args.info
            or args.config_path or args.config_dir or args.experimental_rerun):
        return None
    try:
        jobs = sweep_jobs(args.overrides) if args.multirun else [args.overrides]
        composed = [_compose(job, args.config_name or CONFIG_NAME, with_hydra=True)
                    for job in jobs]
    except Exception as e:  # noqa: BLE001 - every composition error becomes one line
        return error_line(e), 2
    if args.cfg:  # --cfg job|hydra|all only prints
        return None
    for root in sorted({cfg.data.root for cfg, _ in composed
                        if spec(cfg.model.name).task == CLASSIFY}):
        try:
            require_raw(root)
        except DataError as e:
            return str(e), 2
    try:
        _check_devices({cfg.device for cfg, _ in composed})
    except ConfigError as e:
        return str(e), 2
    given = {o.split("=", 1)[0].lstrip("+~") for o in args.overrides if "=" in o}
    finished = []
    for i, (cfg, hydra_node) in enumerate(composed):
        try:
            out = _job_dir(hydra_node, i, args.multirun, given)
            if out is None:  # a directory Hydra names by the time: new, check its base
                _check_writable(Path(hydra_node.sweep.dir if args.multirun
                                     else hydra_node.run.dir))
            elif _check_run_dir(cfg, out, claim=not args.multirun):
                finished.append(str(out))
        except ConfigError as e:
            return str(e), 2
    if finished and len(finished) == len(composed):
        from odenet.config.schedules import SCHEDULES

        extendable = " or ".join(s.name for s in SCHEDULES.values() if not s.fitted_to_length)
        return (f"odenet train: nothing to do: {', '.join(finished)} finished (resume=true "
                "continues only a run that has epochs left; raise optim.epochs for more, with a "
                f"{extendable} schedule)", 0)
    return None


HELP_GROUPS = ("model", "solver", "data", "optim", "experiment")


def train_help(overrides: list[str], config_name: str = CONFIG_NAME) -> str:
    """`odenet train [overrides] --help`: the config groups, then every setting of the
    configuration those overrides compose, with its value and what configs/ says of it."""
    from importlib import resources

    from omegaconf import OmegaConf

    cfg = _compose(overrides, config_name)[0]  # a bad setting: its one-line error
    raw = _compose_raw(overrides, config_name, with_hydra=True)
    choices = raw.hydra.runtime.choices
    files = resources.files(CONFIG_MODULE)
    lines = ["usage: odenet train [key=value ...] [-m]   (Hydra's flags: odenet train "
             "--hydra-help)", "", "Configuration groups (group=option; * marks this "
             "configuration's choice):"]
    for group in HELP_GROUPS:
        options = sorted(p.name[:-5] for p in (files / group).iterdir()
                         if p.name.endswith(".yaml"))
        lines.append(f"  {group}: " + ", ".join(o + "*" * (o == choices.get(group))
                                                for o in options))
    lines += ["", "Experiment presets (experiment=NAME; configs/experiment/NAME.yaml):"]
    lines += _described(_preset_texts(files))
    lines += ["", "Where runs write (Hydra's settings, configs/hydra/default.yaml; a path with "
              "non-ASCII", "letters, quotes, # or ! goes in quotes: 'hydra.run.dir=\"runs/ü\"'):"]
    lines += _described(_hydra_settings(files))
    lines += ["", "Settings (key=value: the value here, then its meaning; "
              "`odenet train model=resnet --help` shows the ResNet's):"]
    comments = _setting_comments(files, config_name, choices)
    values = dict(_flatten(OmegaConf.to_container(
        OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]))))
    schema_only = {f"+{k}": v for k, v in _flatten(OmegaConf.to_container(cfg))
                   if k not in values}  # a schema's default no YAML file writes
    lines += _described(
        (f"{key}={_yaml_text(value)}",
         comments.get(key, "not in configs/: the schema's default (odenet/config/schema.py, "
                           "odenet/config/model_registry.py); set it with " + key + "=..."
                      if key.startswith("+") else ""))
        for key, value in {**values, **schema_only}.items())
    return "\n".join(lines)


def _described(items: Iterable[tuple[str, str]]) -> list[str]:
    """Help lines: each item's name, then its meaning wrapped at column 31 (on the next
    line when the name is longer)."""
    import textwrap

    lines = []
    for name, meaning in items:
        setting = f"  {name}"
        if len(setting) > 30 and meaning:
            lines.append(setting)
            setting = ""
        lines += textwrap.wrap(meaning, 100, initial_indent=f"{setting:<31}",
                               subsequent_indent=" " * 31) or [setting]
    return lines


def _preset_texts(files: Any) -> list[tuple[str, str]]:
    """Each experiment preset and the first sentence of its file's header."""
    out = []
    for p in sorted((files / "experiment").iterdir(), key=lambda p: p.name):
        if p.name.endswith(".yaml"):
            header = yaml_comments(p.read_text(encoding="utf-8"))[""]
            first = re.match(r"(.+?\.)(\s+[A-Z]|$)", header)  # not "Fig. 3"
            out.append((p.name[:-5], (first.group(1) if first else header).rstrip(".")))
    return out


HYDRA_SETTINGS = ("run.dir", "sweep.dir", "sweep.subdir")  # the ones --help shows


def _hydra_settings(files: Any) -> list[tuple[str, str]]:
    """hydra.run.dir and the sweep's directories, as configs/hydra/default.yaml sets them
    (unresolved: ${now:...} is the launch time), with its comments."""
    text = (files / "hydra" / "default.yaml").read_text(encoding="utf-8")
    comments, values = yaml_comments(text), dict(_flatten(_yaml_load(text)))
    return [(f"hydra.{k}={values[k]}", comments.get(k, "")) for k in HYDRA_SETTINGS]


def _yaml_load(text: str) -> dict:
    import yaml  # PyYAML, OmegaConf's: the values as written, interpolations unresolved

    return yaml.safe_load(text)


def _setting_comments(files: Any, config_name: str, choices: Any) -> dict[str, str]:
    """What configs/ says of each setting: the root config's comments and those of each
    group's chosen file (whose header, for its name or method, says what it is)."""
    comments = yaml_comments((files / f"{config_name}.yaml").read_text(encoding="utf-8"))
    for group in HELP_GROUPS[:-1]:
        text = (files / group / f"{choices[group]}.yaml").read_text(encoding="utf-8")
        comments.update({f"{group}.{k}": c for k, c in yaml_comments(text).items()})
        header, selector = comments.pop(f"{group}."), "method" if group == "solver" else "name"
        comments[f"{group}.{selector}"] = comments[f"{group}.{selector}"] or header
    return comments


def yaml_comments(text: str) -> dict[str, str]:
    """The comment on each key's line of a configs/ YAML file, continued by the comment
    lines indented below it, by dotted key (``train.log_every``); under "" the file's
    header (the comment lines before its first key)."""
    comments: dict[str, str] = {"": ""}
    parents: list[tuple[int, str]] = []
    last, last_indent = "", -1
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if stripped.startswith("# @package"):  # Hydra's directive, not a comment
            continue
        if stripped.startswith("#"):
            if last is not None and indent > last_indent:
                comments[last] = f"{comments[last]} {stripped[1:].strip()}".strip()
            else:
                last = None
            continue
        m = re.match(r"(?P<key>[A-Za-z_]\w*):(?P<value>[^#]*)(#\s?(?P<comment>.*))?$", stripped)
        if m is None:  # a blank line, a list item
            last = None
            continue
        parents = [(i, k) for i, k in parents if i < indent]
        last, last_indent = ".".join([k for _, k in parents] + [m["key"]]), indent
        comments[last] = (m["comment"] or "").strip()
        if not m["value"].strip():  # a section: its keys follow, indented
            parents.append((indent, m["key"]))
    return comments


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in values.items():
        out += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def _yaml_text(value: Any) -> str:
    """A value as one writes it on the command line (null, true, [60, 100, 140])."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_yaml_text, value)) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) \
        else str(value)


HYDRA_HELP = """\
odenet train is a Hydra app (https://hydra.cc); these of Hydra's flags apply:
  --help,-h            odenet train's help: configuration groups and every setting
  --cfg,-c job|hydra|all   print the configuration instead of running
  --resolve            with --cfg: resolve interpolations before printing
  --package,-p PKG     with --cfg: print this package only
  --multirun,-m        one job per combination of the swept values (key=a,b,c)
  --config-name,-cn    another root config than configs/config.yaml
  --config-dir,-cd     one more directory of configs
  --info,-i            information about config sources and plugins
Hydra's shell completion is not available: its script would call the program without
its 'train' command. Hydra's config groups: hydra/launcher=joblib|local|slurm (sweeps in
parallel or on a cluster), hydra/job_logging, hydra/sweeper."""


def _check_devices(devices: set[str]) -> None:
    """ConfigError for a device this machine lacks (device=cuda without CUDA)."""
    asked = sorted(devices - {"auto", "cpu"})
    if asked:
        from odenet.training.runtime import (
            resolve_device,  # loads torch: only when CUDA is asked for
        )

        for name in asked:
            resolve_device(name)


def _job_dir(hydra_node: Any, index: int, multirun: bool, given: set[str]) -> Path | None:
    """Where job ``index`` writes, when the command line fixes it (``given`` holds
    hydra.run.dir, or hydra.sweep.dir with the default numbered subdirectories)."""
    from omegaconf import OmegaConf

    if not multirun:
        return Path(hydra_node.run.dir) if "hydra.run.dir" in given else None
    subdir = OmegaConf.to_container(hydra_node.sweep, resolve=False).get("subdir")
    if "hydra.sweep.dir" in given and subdir == "${hydra.job.num}":
        return Path(hydra_node.sweep.dir) / str(index)
    return None


def _check_writable(path: Path) -> None:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"run directory {path}: {p} is a file, not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"run directory {path}: cannot write in {p} (read-only file "
                          "system or no permission)")


def _check_run_dir(cfg: Any, out: Path, claim: bool) -> bool:
    """ConfigError where ``cfg`` cannot run in ``out``; True when it has nothing to do
    (resume=true on a finished run). ``claim``: keep ``out`` locked for this process, so
    that nobody else starts there before Hydra does."""
    from odenet.run import directory as rundir
    from odenet.training import trainer as train
    _check_writable(out)
    if rundir.is_claimed(out):
        rundir.claim(out)  # raises the one line that names the owner
    if cfg.resume:
        if (out / CHECKPOINT_FILE).is_file():
            train.check_resume(cfg, out)
        if train.finished(out, cfg) is not None:
            return True
    elif rundir.holds_run(out) and not cfg.overwrite:
        raise ConfigError(f"{out} already holds a run: resume=true continues it, "
                          "overwrite=true deletes it and starts afresh")
    if claim:
        rundir.claim(out)
    return False


class _JobLabel(logging.Filter):
    """Prefixes every log line of a sweep job with ``[job N: its overrides]``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text
        self.handlers = list(logging.getLogger().handlers)
        for h in self.handlers:
            h.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(f"[{self.text}]"):
            record.msg = f"[{self.text}] {record.msg}"
        return True

    def remove(self) -> None:
        for h in self.handlers:
            h.removeFilter(self)


_STATUSES: list[str] = []  # statuses of the jobs run in this process
_FAILED: list[str] = []  # the failed jobs of a sweep run in this process, for its last line
_SWEEP: dict[str, Any] = {}  # "dir": the multirun's directory; "started": jobs trained


def _train_job(dcfg: Any) -> float | None:
    """The function Hydra runs per job (also inside joblib/submitit workers)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from odenet.data import DataError
    from odenet.run import directory as rundir
    from odenet.training import trainer as train

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        _SWEEP["dir"] = os.path.abspath(hc.sweep.dir)
    signum = rundir.pending_signal()
    if signum is not None:  # a signal between jobs or during Hydra's launch: start no more
        raise SystemExit(128 + signum)
    _SWEEP["started"] = _SWEEP.get("started", 0) + 1
    label = None
    if hc.mode == RunMode.MULTIRUN:  # parallel jobs interleave: say whose line it is
        label = _JobLabel(f"job {hc.job.num}: {hc.job.override_dirname or 'defaults'}")
    try:
        # validated here, once: the trainer and everything below take it as it is
        metrics = train.run(to_config(dcfg), hc.runtime.output_dir)
    except (ConfigError, DataError) as e:
        print(f"odenet train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if label is not None:
            label.remove()
    _STATUSES.append(metrics["status"])
    if hc.mode == RunMode.MULTIRUN and metrics["status"] == "failed":
        _FAILED.append(f"job {hc.job.num} in {hc.runtime.output_dir}: {metrics['reason']}")
    if train.last_signal is not None:  # Ctrl-C / SIGTERM also ends a sweep
        raise SystemExit(128 + int(train.last_signal))
    # what a sweeper that chooses settings optimizes: the validation metric, never the
    # test metric (None without data.val_size)
    value = metrics.get("val_error", metrics.get("val_nll"))
    return float(value) if isinstance(value, (int, float)) else None


def train_main(argv: list[str] | None = None) -> int:
    """`odenet train [overrides] [-m]`: the Hydra app (config: configs/config.yaml)."""
    from odenet.run import directory as rundir
    rundir.defer_signals()  # before torch and Hydra load: an early Ctrl-C ends in one line
    argv = list(sys.argv[1:] if argv is None else argv)
    _STATUSES.clear()
    _FAILED.clear()
    _SWEEP.clear()
    try:
        stop = preflight(argv) or _launch(argv)
    except KeyboardInterrupt:  # Ctrl-C twice before a training loop took the signals
        stop = "interrupted (SIGINT twice): stopped at once", 130
    line, code = stop
    if code in (3, 130, 143) and "dir" in _SWEEP and _SWEEP.get("started"):  # all of it
        line = ("sweep interrupted; continue it (finished jobs are skipped) with: "
                + rundir.resume_sweep_command(_SWEEP["dir"], argv))
    elif code in (130, 143) and not _SWEEP.get("started"):
        line = f"interrupted ({signal.Signals(code - 128).name}) before training began: " \
               "nothing was trained"
    if line:
        print(f"odenet train: {'error: ' if code in (1, 2) else ''}{line}" if code else line,
              file=sys.stderr if code else sys.stdout)
    return code


def _launch(argv: list[str]) -> tuple[str, int]:
    """Run the Hydra app on ``argv``: ("", exit status), or a line to print with it."""
    import hydra
    from hydra.errors import HydraException

    from odenet.run import directory as rundir
    signum = rundir.pending_signal()
    if signum is not None:  # came during preflight
        return "", 128 + signum
    app = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}",
                     config_name=CONFIG_NAME)(_train_job)
    saved, full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [saved[0] if saved else "odenet", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach us (not a traceback)
    try:
        app()
    except SystemExit as e:
        return "", int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 1)
    except OSError as e:  # Hydra writing .hydra/ into the run directory, e.g. a full disk
        where = e.filename or "Hydra's record of the run (.hydra/)"
        return f"cannot write {where}: {e.strerror or e}", 1
    except HydraException as e:  # what preflight does not compose (--config-dir ...)
        return error_line(e), 1
    finally:
        sys.argv = saved
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    if "failed" in _STATUSES:  # a sweep ends on its failures, not on its last epoch
        failed = (f"{len(_FAILED)} of {len(_STATUSES)} sweep jobs failed: "
                  + "; ".join(_FAILED)) if _FAILED else ""
        return failed, 1
    return "", 3 if "interrupted" in _STATUSES else 0
