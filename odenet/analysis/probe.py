"""What `odenet evaluate` and `odenet gradients` share: both re-solve the ODE block of a
trained checkpoint at several tolerances against a float64 reference. Their common
settings (``ProbeSettings``), the checks of those settings, opening the checkpoint, and
the command's shell (``command_main``: help, one-line errors, exit status).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odenet.config.errors import ConfigError, need
from odenet.run.files import check_writable, os_reason
from odenet.training.openmp import threads_warning


@dataclass
class ProbeSettings:
    checkpoint: str = "???"
    tolerances: list[float] = field(default_factory=lambda: [1e-3])
    method: str | None = None  # null: the one the model trained with
    dtype: str = "float32"
    reference_tol: float = 1e-10
    reference_method: str = "dopri5"
    max_num_steps: int = 100000
    repeats: int = 1
    device: str = "auto"
    threads: int | None = None
    data_root: str | None = None
    out: str | None = None


def check(cfg: ProbeSettings, positive: tuple[str, ...] = ()) -> None:
    """ConfigError (one line) for a bad common setting; ``positive``: more integer
    settings that must be >= 1."""
    from odenet.solvers import METHODS

    need(bool(cfg.tolerances), "tolerances=[] gives nothing to measure; give e.g. "
         "tolerances=[1e-1,1e-3]")
    for t in cfg.tolerances:
        need(t > 0 and math.isfinite(t), f"tolerances: {t!r} is not a positive number")
    need(cfg.dtype in ("float32", "float64"), f"dtype={cfg.dtype!r}; accepted: float32, "
         "float64")
    for name in ("method", "reference_method"):
        m = getattr(cfg, name)
        need(m is None or m in METHODS, f"{name}={m!r}; accepted: {', '.join(METHODS)}")
    _check_resolvable(cfg)
    need(cfg.reference_tol > 0 and cfg.reference_tol * 10 < min(cfg.tolerances),
         f"reference_tol={cfg.reference_tol!r} must be positive and at least 100x below "
         f"the smallest tolerance ({min(cfg.tolerances):g})")
    for name in ("max_num_steps", "repeats", *positive):
        need(getattr(cfg, name) >= 1,
             f"{name}={getattr(cfg, name)!r} must be a positive integer")
    need(cfg.threads is None or cfg.threads >= 1,
         f"threads={cfg.threads!r} must be a positive integer or null")


def _check_resolvable(cfg: ProbeSettings) -> None:
    """Each tolerance (rtol = atol) within what its solve's dtype resolves (before the
    comparison with reference_tol, which would blame reference_tol instead)."""
    import torch

    from odenet.solvers import tolerance_floor, tolerance_refusal

    for name, method, tols, dtype in (
            ("tolerances", cfg.method or "dopri5", cfg.tolerances, cfg.dtype),  # null: trained
            ("reference_tol", cfg.reference_method, [cfg.reference_tol], "float64")):
        tols = [t for t in tols if t > 0]  # a non-positive one: refused by check
        floor = tolerance_floor(getattr(torch, dtype))
        for tol in tols:
            need(tolerance_refusal(method, tol, tol, getattr(torch, dtype)) is None,
                 f"{name}: {tol:g} is below what {dtype} resolves for {method} (eps**2 = "
                 f"{floor:.2g}): raise it to at least {floor:.2g}")


def _out(cfg: ProbeSettings, default_name: str) -> Path:
    return Path(cfg.out) if cfg.out else Path(cfg.checkpoint).with_name(default_name)


def recorded_checkpoint(cfg: ProbeSettings, default_name: str) -> str:
    """The checkpoint as the result records it: relative to the result's own folder
    (``checkpoint.pt`` beside it), so a committed or copied run directory names no
    machine's absolute path."""
    here = _out(cfg, default_name).parent.resolve()
    return os.path.relpath(Path(cfg.checkpoint).resolve(), here)


def output_path(cfg: ProbeSettings, default_name: str) -> Path:
    """Where the command writes its result: ``out``, else ``default_name`` next to the
    checkpoint; checked before any work (ConfigError in one line), so that none is lost."""
    out = _out(cfg, default_name)
    if cfg.out or Path(cfg.checkpoint).is_file():  # no checkpoint: open_checkpoint says so
        try:
            check_writable(out.parent)
        except OSError as e:
            raise ConfigError(f"cannot write {out} ({os_reason(e)}); give out=PATH.json "
                              "in a writable directory") from None
    return out


def set_threads(threads: int | None) -> None:
    """torch's threads (None: its default), with a warning on stderr when they exceed the
    cores this process may use."""
    import torch

    if threads:
        torch.set_num_threads(threads)
        warning = threads_warning(threads)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)


def open_checkpoint(cfg: ProbeSettings) -> tuple[Any, Any, dict, dict, dict | None]:
    """(device, model in eval mode, its config, the checkpoint, what identifies the file)
    for ``cfg.checkpoint``, after setting the threads and IEEE float32 arithmetic
    (runtime.set_exact_math); ConfigError in one line."""

    from odenet.run.files import file_id
    from odenet.training.checkpoint_file import CheckpointError, load_ode_model
    from odenet.training.runtime import resolve_device, set_exact_math

    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    set_exact_math()  # float32 errors measured in IEEE float32, not with a TF32 floor
    path = Path(cfg.checkpoint)
    # read before loading it: the figures compare it with the checkpoint.pt they find
    try:
        ident = file_id(path)
    except OSError:
        ident = None  # load_ode_model says why in one line
    try:
        model, config, ck = load_ode_model(path, device)
    except CheckpointError as e:
        raise ConfigError(f"checkpoint={e}") from None
    return device, model, config, ck, ident


def warn_if_loose(reference: dict, check_error: float, min_err: float, log) -> None:
    """Say when the float64 reference is not much tighter than the smallest error it
    measured (``reference["ok"]`` false): such errors measure the reference too."""
    if not reference["ok"]:
        log(f"warning: the reference is not much tighter than the smallest error reported "
            f"({check_error:.1e} vs {min_err:.1e}); lower reference_tol")


def command_main(argv: list[str] | None, *, command: str, doc: str, config_file: str,
                 errors: tuple[type[Exception], ...],
                 prepare: Callable[[list[str]], tuple[Any, Path]],
                 run: Callable[[Any, Path], tuple[dict, str]]) -> int:
    """`odenet <command>`: ``prepare(argv)`` loads and checks the settings and returns them
    with the output path (checked writable before any work); ``run(cfg, out)`` does the
    work, writes its files and returns the record and what the summary line names. Exit
    0, 1 when every result failed, 2 on bad settings or a failed write (one line on
    stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip() + f"\n\nSettings: configs/{config_file} (key=value overrides).")
        return 0
    out = None
    try:
        cfg, out = prepare(argv)
        record, summary = run(cfg, out)
    except (*errors, ConfigError) as e:
        print(f"odenet {command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # written after the check: e.g. the disk filled up since
        print(f"odenet {command}: error: writing {out}: {os_reason(e)}", file=sys.stderr)
        return 2
    failed = [r for r in record["results"] if r["status"] != "ok"]
    print(f"odenet {command}: {len(record['results']) - len(failed)}/{len(record['results'])} "
          f"{summary}")
    return 1 if failed and len(failed) == len(record["results"]) else 0
