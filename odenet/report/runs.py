"""Find and read run directories (DEVELOPERS.md Contract 2): the only input of the report.

A run directory is any directory holding a ``metrics.json``. Next to it may lie
``history.jsonl`` (one JSON object per line) and ``evaluation.json`` (written by
``odenet evaluate``, Figure 3 a/b). Nothing here imports torch or Hydra.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

METRICS = "metrics.json"
HISTORY = "history.jsonl"
EVALUATION = "evaluation.json"

# The keys without which a metrics.json cannot be placed in the table at all.
REQUIRED_KEYS = ("model", "status")
STATUSES = ("running", "finished", "failed", "interrupted")
# Models that hold an ODE block: their solver settings matter; for the others they do not.
ODE_MODELS = ("odenet", "rknet")


class ReportError(Exception):
    """Bad input to the report: the message is one line, fit to print as is."""


@dataclass
class Run:
    """One run directory: its metrics record, its history, its tolerance evaluation."""

    dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    evaluation: dict | None = None

    @property
    def finished(self) -> bool:
        return self.metrics.get("status") == "finished"

    @property
    def model(self) -> str:
        return str(self.metrics.get("model"))

    @property
    def has_ode_block(self) -> bool:
        return self.model in ODE_MODELS

    def iters(self) -> list[dict]:
        return [h for h in self.history if h.get("kind") == "iter"]

    def epochs(self) -> list[dict]:
        return [h for h in self.history if h.get("kind") == "epoch"]


def _read_json_object(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ReportError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{path}: unreadable {what}: not valid JSON ({e.msg} at line {e.lineno})"
        ) from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: unreadable {what}: expected a JSON object, "
                          f"got {type(obj).__name__}")
    return obj


def read_metrics(path: Path) -> dict:
    """Read and check one metrics.json; ReportError (one line) when it is unusable."""
    m = _read_json_object(path, METRICS)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise ReportError(f"{path}: unreadable {METRICS}: missing key(s) {', '.join(missing)}")
    if m["status"] not in STATUSES:
        raise ReportError(f"{path}: unreadable {METRICS}: status {m['status']!r} is not one "
                          f"of {', '.join(STATUSES)}")
    return m


def read_history(path: Path) -> list[dict]:
    """Read history.jsonl. A truncated *last* line (a run killed mid-append) is dropped;
    a bad line anywhere else is an error."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ReportError(f"{path}: cannot read {HISTORY}: {e.strerror or e}") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # the run was stopped while appending this line
                break
            raise ReportError(f"{path}:{i}: unreadable {HISTORY}: line is not JSON") from None
        if not isinstance(rec, dict):
            raise ReportError(f"{path}:{i}: unreadable {HISTORY}: line is not a JSON object")
        out.append(rec)
    return out


def find_metrics(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every metrics.json below the given directories (each file once, sorted)."""
    dirs = list(dirs)
    found: dict[Path, None] = {}
    for d in dirs:
        p = Path(d)
        if p.is_file() and p.name == METRICS:
            found[p.resolve()] = None
            continue
        if not p.is_dir():
            raise ReportError(f"no such run directory: {d} (give directories that contain "
                              f"{METRICS} files, at any depth)")
        for root, subdirs, files in os.walk(p):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))  # skip .hydra
            if METRICS in files:
                found[(Path(root) / METRICS).resolve()] = None
    if not found:
        where = ", ".join(str(d) for d in dirs) or "(none given)"
        raise ReportError(f"no runs found: no {METRICS} below {where}")
    return sorted(found)


def load_runs(dirs: Iterable[str | os.PathLike], *, history: bool = True) -> list[Run]:
    """Load every run below ``dirs``: metrics.json, history.jsonl, evaluation.json.

    Raises ReportError (one line) for a missing directory, no runs at all, or an
    unreadable file; the order is that of the sorted run paths.
    """
    runs = []
    for path in find_metrics(dirs):
        d = path.parent
        ev = d / EVALUATION
        runs.append(Run(
            dir=d,
            metrics=read_metrics(path),
            history=read_history(d / HISTORY) if history else [],
            evaluation=_read_json_object(ev, EVALUATION) if ev.exists() else None,
        ))
    return runs


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
    if m.get("solver_adjoint"):
        norm = m.get("solver_adjoint_norm") or "default"
        parts.append("adjoint" if norm == "default" else f"adjoint ({norm})")
    else:
        parts.append("backprop")
    return " ".join(parts)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
