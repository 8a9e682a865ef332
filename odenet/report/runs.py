"""Find and read run directories (DEVELOPERS.md Contract 2): the only input of the report.

A run directory is any directory holding a ``metrics.json``, found by a walk that follows
symbolic links (each directory once) and lists every directory it cannot enter as an
``Invalid`` (not silently left out). Next to it may lie
``history.jsonl``, ``evaluation.json`` (written by ``odenet evaluate``, Figure 3 a/b) and
``gradients.json`` (written by ``odenet gradients``, Table 1's gradient error).
metrics.json and history.jsonl are read through odenet/run/record.py and validated there; a
file that fails is not an error of the command: it is returned as an ``Invalid`` (path
and reason) for the report to list, and the other runs are read on. An evaluation.json
or gradients.json whose checkpoint has changed since it was written is left out of the
run (the reason in ``Run.evaluation_skipped`` / ``Run.gradients_skipped``). Every run
and file also gets a ``name``: its path relative to the directory searched (the one
given, or the deepest directory holding all those given), the path written into
reports, so that they read the same on any machine.
Also what a run's record says in short (``solver_label``, ``scale_label``, its gradient
method and that method's result in gradients.json); groups of runs that differ only in
seed are odenet/report/seed_groups.py.
Imports neither torch nor Hydra (the report runs where neither is installed).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from odenet.config.model_registry import ADJOINT, BACKPROP, MODELS
from odenet.run import directory as rundir
from odenet.run import record
from odenet.run.files import file_id
from odenet.run.record import (
    CHECKPOINT_FILE,
    CHECKPOINT_ID,
    EVALUATION,
    GRADIENTS_FILE,
    HISTORY,
    METRICS,
)


class ReportError(Exception):
    """No input at all (no such directory, no runs found): one line, fit to print."""


@dataclass(frozen=True)
class Invalid:
    """A run file the report could not use, and why (one line)."""

    path: Path
    reason: str
    name: str = field(default="", compare=False)  # path relative to the directory searched


@dataclass
class Run:
    """One run directory: its metrics record, its history, its tolerance evaluation."""

    dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    evaluation: dict | None = None
    gradients: dict | None = None  # gradients.json
    name: str = ""  # dir relative to the directory searched: the path reports write
    base: str = ""  # that directory, as given
    evaluation_skipped: str | None = None  # why evaluation.json was left out
    history_note: str | None = None  # what of history.jsonl was left out (a cut last line)
    gradients_skipped: str | None = None  # why gradients.json was left out

    @property
    def finished(self) -> bool:
        return self.metrics.get("status") == "finished"

    @property
    def status(self) -> str:
        """metrics.json's status, except that a run which says "running" but that no
        process owns (odenet/run/directory.py) was killed."""
        s = str(self.metrics.get("status"))
        return "killed" if s == "running" and not rundir.is_claimed(self.dir) else s

    @property
    def model(self) -> str:
        return str(self.metrics.get("model"))

    @property
    def has_ode_block(self) -> bool:
        return has_ode_block(self.model)

    def iters(self) -> list[dict]:
        return [h for h in self.history if h.get("kind") == "iter"]

    def epochs(self) -> list[dict]:
        return [h for h in self.history if h.get("kind") == "epoch"]


def has_ode_block(model) -> bool:
    """The registry's trait; a model it does not know (an older or newer odenet) has none."""
    spec = MODELS.get(model) if isinstance(model, str) else None
    return spec is not None and spec.ode_block


def _reason(e: Exception, path: Path) -> str:
    """RecordError's message without the leading 'path:' (the report prints the path)."""
    msg = str(e)
    if msg.startswith(f"{path}:"):
        msg = msg[len(str(path)) + 1:].strip()
        msg = re.sub(r"^(\d+): ", r"line \1: ", msg)
    return msg


def read_evaluation(path: Path) -> dict:
    """evaluation.json or gradients.json (written by odenet evaluate / gradients; no
    record schema): a JSON object with a 'results' list."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise record.RecordError(f"{path}: cannot read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise record.RecordError(f"{path}: not valid JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("results", []), list):
        raise record.RecordError(f"{path}: expected a JSON object with a 'results' list")
    return obj


def stale_evaluation(run_dir: Path, evaluation: dict,
                     command: str = "evaluate") -> str | None:
    """Why ``evaluation`` (of ``odenet evaluate``, or of ``odenet gradients``) no longer
    describes the run's checkpoint.pt, or None when it does or cannot be told: a file
    written before the command recorded the checkpoint's identity, or a run directory
    without its checkpoint (copied without it), is used as it is."""
    want = evaluation.get(CHECKPOINT_ID)
    ckpt = run_dir / CHECKPOINT_FILE
    if not isinstance(want, dict) or not ckpt.is_file():
        return None
    try:
        size = ckpt.stat().st_size
        if size == want.get("size") and file_id(ckpt)["sha256"] == want.get("sha256"):
            return None
    except OSError as e:
        return f"cannot read {CHECKPOINT_FILE}: {e.strerror or e}"
    return (f"{CHECKPOINT_FILE} changed since it was evaluated (size or SHA-256 differ); "
            f"rerun `odenet {command} checkpoint=RUN_DIR/{CHECKPOINT_FILE}`")


def base_of(dirs: Sequence[str | os.PathLike]) -> tuple[Path, str]:
    """The directory report paths are relative to: the one given (a metrics.json given:
    its directory), or the deepest directory holding all those given; resolved, and as
    the user wrote it (for the report's text)."""
    paths = [Path(d) if not (Path(d).is_file() and Path(d).name == METRICS) else
             Path(d).parent for d in dirs] or [Path(".")]
    resolved = Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    try:
        label = os.path.commonpath([os.path.normpath(p) for p in paths])
    except ValueError:  # absolute and relative ones mixed
        label = ""
    return resolved, label or str(resolved)  # '': nothing in common as written


def relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` ('.' for base itself), with '/' on any system."""
    return Path(os.path.relpath(path, base)).as_posix()


def find_metrics(dirs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Invalid]]:
    """Every metrics.json below the given directories (each run once, sorted), following
    symbolic links (each directory once: a link back up is no loop), and the
    directories found but not listed (Invalid: path and reason; ``name`` left empty)."""
    dirs = list(dirs)
    found: dict[Path, Path] = {}  # resolved -> as found
    unreadable: list[Invalid] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of every directory walked

    def refused(e: OSError) -> None:
        unreadable.append(Invalid(Path(e.filename), f"cannot list the directory: "
                                                    f"{e.strerror or e}"))

    for d in dirs:
        p = Path(d)
        if p.is_file() and p.name == METRICS:
            found.setdefault(p.resolve(), p.resolve())
            continue
        if not p.is_dir():
            raise ReportError(f"no such run directory: {d} (give directories that contain "
                              f"{METRICS} files, at any depth)")
        for root, subdirs, files in os.walk(p.resolve(), onerror=refused, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:
                subdirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))  # skip .hydra
            if METRICS in files:
                path = Path(root) / METRICS
                found.setdefault(path.resolve(), path)
    if not found and not unreadable:
        where = ", ".join(str(d) for d in dirs) or "(none given)"
        raise ReportError(f"no runs found: no {METRICS} below {where}")
    return sorted(found.values()), unreadable


def load_runs(dirs: Iterable[str | os.PathLike], *, history: bool = True,
              evaluation: bool = True, gradients: bool = True,
              base: str | os.PathLike | None = None
              ) -> tuple[list[Run], list[Invalid]]:
    """Every run below ``dirs`` (metrics.json, history.jsonl, evaluation.json,
    gradients.json), in the order of the sorted run paths, and the files that failed
    validation. A run with an invalid file is left out whole (its numbers cannot be
    trusted in part); an evaluation.json or gradients.json of a checkpoint that changed
    since is left out of its run. ``history``, ``evaluation`` and ``gradients`` false:
    that file is not read. ``name``s
    are relative to ``base`` (default: ``base_of(dirs)``).

    Raises ReportError (one line) only for a missing directory or no runs at all.
    """
    dirs = list(dirs)
    found, unreadable = find_metrics(dirs)
    root, label = base_of([base] if base is not None else dirs)
    runs = []
    invalid = [Invalid(u.path, u.reason, relative(u.path, root)) for u in unreadable]
    for path in found:
        d = path.parent
        current = path
        try:
            metrics = record.read_metrics(path)
            current = d / HISTORY
            notes: list[str] = []
            hist = record.read_history(current, notes) if history else []
            current = d / EVALUATION
            ev = read_evaluation(current) if evaluation and current.exists() else None
            current = d / GRADIENTS_FILE
            gr = read_evaluation(current) if gradients and current.exists() else None
        except record.RecordError as e:
            invalid.append(Invalid(current, _reason(e, current), relative(current, root)))
            continue
        skipped = stale_evaluation(d, ev) if ev is not None else None
        gr_skipped = stale_evaluation(d, gr, "gradients") if gr is not None else None
        runs.append(Run(dir=d, metrics=metrics, history=hist,
                        evaluation=None if skipped else ev,
                        gradients=None if gr_skipped else gr, name=relative(d, root),
                        base=label, evaluation_skipped=skipped,
                        gradients_skipped=gr_skipped, history_note=notes[0] if notes else None))
    return runs, invalid


def print_invalid(prog: str, invalid: Iterable[Invalid]) -> None:
    """One stderr line per file that failed validation."""
    import sys

    for bad in invalid:
        print(f"{prog}: not read: {bad.path}: {bad.reason}", file=sys.stderr)


# ---------------------------------------------------------------- small shared helpers
def num(x) -> float | None:
    """A finite float, or None for null / missing / NaN / non-numbers (bools excluded)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_tol(x) -> str:
    """1e-3 -> '1e-3', 1.5e-4 -> '1.5e-4', 0.1 -> '0.1'; '-' for no value."""
    v = num(x)
    if v is None:
        return "-"
    if v == 0 or abs(v) >= 0.1:
        return f"{v:g}"
    mant, exp = f"{v:e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def scale_label(key: dict, optimizer_settings: Sequence[str] = ()) -> str:
    """A group key's scale (SCALE_KEYS), levers and ``optimizer_settings`` in short:
    'quick, 1 ep, n=256, test n=100, EMA 0.999, lr 0.05'."""
    parts = [str(key["experiment"])] if key.get("experiment") is not None else []
    if key.get("epochs_planned") is not None:
        parts.append(f"{key['epochs_planned']} ep")
    if key.get("train_size") is not None:
        parts.append(f"n={key['train_size']}")
    if key.get("test_size") is not None:
        parts.append(f"test n={key['test_size']}")
    if recipe_label(key):  # the training levers
        parts.append(recipe_label(key))
    if optimizer_settings:
        parts.append(optimizer_label(key, optimizer_settings))
    return ", ".join(parts) or "-"


# how optimizer_label names a setting (the others by their own names)
OPTIMIZER_NAMES = {"nesterov": "Nesterov", "weight_decay": "wd"}


def optimizer_label(m: dict, names: Sequence[str]) -> str:
    """The optimizer settings ``names`` of a record in short, e.g. 'lr 0.05, Nesterov,
    wd 0.0005'; a setting the record lacks (older records) reads '<name> ?'."""
    parts = []
    for name in names:
        v = m.get(name)
        if v is None:
            parts.append(f"{OPTIMIZER_NAMES.get(name, name)} ?")
        elif name == "nesterov":
            parts.append("Nesterov" if v else "no Nesterov")
        elif name in ("optimizer", "schedule"):
            parts.append(str(v))
        else:
            parts.append(f"{OPTIMIZER_NAMES.get(name, name)} {v:g}")
    return ", ".join(parts)


def recipe_label(key: dict) -> str:
    """The training levers of a group's runs, e.g. 'carried step, kinetic 0.1, EMA 0.999';
    '' without any."""
    parts = ["carried step"] if key.get("solver_carry_step") else []
    for k, name in (("kinetic_weight", "kinetic"), ("jacobian_weight", "Jacobian"),
                    ("t1_jitter", "T jitter"), ("ema_decay", "EMA")):
        if key.get(k):
            parts.append(f"{name} {key[k]:g}")
    return ", ".join(parts)


def solver_label(m: dict) -> str:
    """A short human label of a run's solver settings, e.g. 'dopri5 tol=1e-3 adjoint'."""
    method = m.get("solver_method") or "?"
    parts = [str(method)]
    step = num(m.get("solver_step_size"))
    if step is not None:
        parts.append(f"h={step:g}")
    else:
        rtol, atol = m.get("solver_rtol"), m.get("solver_atol")
        if num(rtol) is not None and num(rtol) == num(atol):
            parts.append(f"tol={fmt_tol(rtol)}")
        else:
            parts.append(f"rtol={fmt_tol(rtol)} atol={fmt_tol(atol)}")
    if m.get("solver_last_step") == "overshoot":
        parts.append("overshoot")
    gradient = gradient_of(m)
    if gradient == ADJOINT:
        norm = m.get("solver_adjoint_norm") or "default"
        parts.append("adjoint" if norm == "default" else f"adjoint ({norm})")
    else:
        parts.append(gradient)
    return " ".join(parts)


def gradient_of(m: dict) -> str:
    """How the run's ODE block got its gradients: solver_gradient, or (a record from before
    that field) solver_adjoint's adjoint or backprop."""
    return m.get("solver_gradient") or (ADJOINT if m.get("solver_adjoint") else BACKPROP)


def residual_blocks(m: dict) -> int | None:
    """The run's residual blocks: its record's, else (a record written before the field
    existed) its model's default setting; None for a model without residual blocks."""
    spec = MODELS.get(m.get("model")) if isinstance(m.get("model"), str) else None
    if spec is None or spec.residual_blocks is None:
        return None
    if m.get("residual_blocks") is not None:
        return m["residual_blocks"]
    return getattr(spec.schema(), spec.residual_blocks)


def adjoint_model() -> str:
    """The classifier whose ODE block trains with the adjoint (Table 1's ODE-Net): the
    model of Figure 3 a/b and of the hints that name one."""
    return next(s.name for s in MODELS.values()
                if s.task == record.CLASSIFY and s.gradients[:1] == (ADJOINT,))


def own_gradient(m: dict) -> str:
    """The run's gradient method as ``odenet gradients`` names it (the adjoint with the
    seminorm is its own method there)."""
    g = gradient_of(m)
    return "adjoint_seminorm" if g == ADJOINT and m.get("solver_adjoint_norm") == "seminorm" \
        else g


def own_gradient_result(run: Run) -> dict | None:
    """The result of ``odenet gradients`` (gradients.json) for the gradient the run trained
    with at its own solver and tolerances, in float32 as trained; None when not measured.
    Table 1's gradient-error column is its ``error`` (against the float64 reference)."""
    if not run.gradients or not run.has_ode_block:
        return None
    m = run.metrics

    def same(a, b) -> bool:
        a, b = num(a), num(b)
        return a is not None and b is not None and abs(a - b) <= 1e-9 * max(abs(b), 1e-30)

    for r in run.gradients.get("results", []):
        if (isinstance(r, dict) and r.get("status") == "ok" and r.get("dtype") == "float32"
                and r.get("gradient_method") == own_gradient(m)
                and r.get("method") == m.get("solver_method")
                and same(r.get("rtol"), m.get("solver_rtol"))
                and same(r.get("atol"), m.get("solver_atol"))
                and num(r.get("error")) is not None):
            return r
    return None
