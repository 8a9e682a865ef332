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
Groups of runs (``groups``): the finished runs that differ only in seed, one ``Group``
each (a row of Table 1), with its key, members, seeds and each field's ``Stat`` over the
seeds; the table, the figures and the report's claims all read these.
Imports neither torch nor Hydra (the report runs where neither is installed).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from odenet.config.model_registry import ADJOINT, BACKPROP, MODELS, ModelSpec, PaperRow
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


def scale_label(key: dict) -> str:
    """A group key's scale (SCALE_KEYS) in short: 'quick, 1 ep, n=256, test n=100'."""
    parts = [str(key["experiment"])] if key.get("experiment") is not None else []
    if key.get("epochs_planned") is not None:
        parts.append(f"{key['epochs_planned']} ep")
    if key.get("train_size") is not None:
        parts.append(f"n={key['train_size']}")
    if key.get("test_size") is not None:
        parts.append(f"test n={key['test_size']}")
    if recipe_label(key):  # the training levers
        parts.append(recipe_label(key))
    return ", ".join(parts) or "-"


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


# ---------------------------------------------------------------- groups of runs
SOLVER_KEYS = ("solver_method", "solver_rtol", "solver_atol", "solver_gradient",
               "solver_adjoint", "solver_adjoint_norm", "solver_step_size", "solver_last_step")
SCALE_KEYS = ("experiment", "epochs_planned", "train_size", "test_size", "batch_size", "device")
# the training levers (off: null, as in records from before them)
RECIPE_KEYS = ("ema_decay", "solver_carry_step", "kinetic_weight", "jacobian_weight",
               "t1_jitter")
# residual_blocks: a ResNet with fewer blocks (Table 1's ablations) is another row
GROUP_KEYS = ("model", "residual_blocks") + SOLVER_KEYS + SCALE_KEYS + RECIPE_KEYS


def _check_keys() -> None:
    """The group keys are the record's settings: a renamed field fails here, at import."""
    bad = [k for k in GROUP_KEYS[1:] if k not in record.names(record.Metrics, record.SETTING)]
    if bad:
        raise ImportError(f"odenet.report.runs: not in odenet.run.record.Metrics: {bad}")


_check_keys()


@dataclass
class Stat:
    """Mean and sample std over the distinct seeds of a group that report the value (each
    seed's value: the mean of its runs)."""

    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def min(self) -> float | None:
        return min(self.values, default=None)

    @property
    def max(self) -> float | None:
        return max(self.values, default=None)

    def spans(self, x) -> bool | None:
        """Whether ``x`` lies within [min, max] of the seeds' values (the seed spread);
        None with fewer than two seeds (no spread) or no ``x``."""
        if self.n < 2 or num(x) is None:
            return None
        return self.min <= num(x) <= self.max


def seed_stat(members: Sequence[Run], name: str,
              value: Callable[[Run], object] | None = None) -> Stat:
    """``name`` (of metrics.json, or ``value(run)``) over distinct seeds: the runs of one
    seed averaged first (a repeated run is not another seed), then one value per seed."""
    by_seed: dict = {}
    for r in members:
        v = num(value(r) if value else r.metrics.get(name))
        if v is not None:
            by_seed.setdefault(repr(r.metrics.get("seed")), []).append(v)
    return Stat([statistics.fmean(vs) for vs in by_seed.values()])


def default_blocks(model) -> int | None:
    """The model's own number of residual blocks (the paper's network); None without."""
    spec = MODELS.get(model) if isinstance(model, str) else None
    if spec is None or spec.residual_blocks is None:
        return None
    return getattr(spec.schema(), spec.residual_blocks)


def group_key(m: dict) -> dict:
    """What a group's runs share: model, residual blocks, solver settings and scale."""
    key = {k: m.get(k) for k in GROUP_KEYS}
    key["residual_blocks"] = residual_blocks(m)  # an older record: the model's default
    if key["solver_last_step"] is None and key["solver_step_size"] is None:
        # adaptive steps always clamp or overshoot; null: a record from before the
        # setting existed, when they clamped
        key["solver_last_step"] = "clamp"
    if key["solver_gradient"] is None and key["solver_adjoint"] is not None:
        # a record from before solver_gradient: adjoint or backprop
        key["solver_gradient"] = "adjoint" if key["solver_adjoint"] else "backprop"
    if not has_ode_block(m.get("model")):
        # Solver settings of a model without an ODE block do not change it.
        for k in SOLVER_KEYS:
            key[k] = None
    for k in RECIPE_KEYS:
        key[k] = key[k] or None  # a lever off (false, 0) is the run without it
    return key


def recipe_label(key: dict) -> str:
    """The training levers of a group's runs, e.g. 'carried step, kinetic 0.1, EMA 0.999';
    '' without any."""
    parts = ["carried step"] if key.get("solver_carry_step") else []
    for k, name in (("kinetic_weight", "kinetic"), ("jacobian_weight", "Jacobian"),
                    ("t1_jitter", "T jitter"), ("ema_decay", "EMA")):
        if key.get(k):
            parts.append(f"{name} {key[k]:g}")
    return ", ".join(parts)


def reported_error(run: Run, split: str = "test") -> object:
    """The run's error on ``split`` as its table row reports it: that of the weights'
    moving average where the run kept one (optim.ema_decay), else the weights'."""
    m = run.metrics
    return m.get(f"ema_{split}_error") if m.get("ema_decay") else m.get(f"{split}_error")


# the measures whose row value is not the metrics.json field of their name
REPORTED = {"test_error": reported_error, "val_error": lambda r: reported_error(r, "val")}


BLOCK_TITLES = {0: "no block: downsampling + head", 1: "one block"}


@dataclass
class Group:
    """The finished runs that differ only in seed (a row of Table 1): their shared
    ``key`` (group_key), the runs, and ``stats``: the fields asked of ``groups``."""

    key: dict
    runs: list[Run]
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.key["model"])

    @property
    def spec(self) -> ModelSpec | None:
        return MODELS.get(self.model)

    @property
    def ablation(self) -> bool:
        """Fewer (or more) residual blocks than the model's own: not the paper's network."""
        return self.key["residual_blocks"] != default_blocks(self.model)

    @property
    def title(self) -> str:
        """The model's title; an ablation's says its blocks ('ResNet, one block')."""
        name = self.spec.title if self.spec else self.model
        if not self.ablation:
            return name
        n = self.key["residual_blocks"]
        return f"{name}, {BLOCK_TITLES.get(n, f'{n} blocks')}"

    @property
    def paper(self) -> PaperRow | None:
        """The paper's row of this model when trained as the paper did (odenet with the
        adjoint, rknet by backprop through the solver: each model's default gradient; the
        model's own residual blocks); None for the rows the paper has not (e.g. ODE-Net
        with checkpointed gradients, a ResNet with one block)."""
        spec = self.spec
        if spec is None or self.ablation or (
                spec.gradients and self.key["solver_gradient"] is not None
                and self.key["solver_gradient"] != spec.gradients[0]):
            return None
        return spec.paper

    @property
    def seeds(self) -> list:
        """The seed of every run, repeats included, sorted."""
        return sorted((r.metrics.get("seed") for r in self.runs), key=lambda s: (s is None, s))

    @property
    def seeds_text(self) -> str:
        """'0, 1' or, for a seed run twice, '0 (x2), 1'."""
        counts: dict = {}
        for s in self.seeds:
            counts[s] = counts.get(s, 0) + 1
        return ", ".join(f"{s} (x{n})" if n > 1 else str(s) for s, n in counts.items())

    @property
    def n_seeds(self) -> int:
        return len({repr(s) for s in self.seeds})

    def stat(self, name: str, value: Callable[[Run], object] | None = None) -> Stat:
        """``name`` over the seeds: from ``stats`` when computed there, else from each
        run's metrics.json (or ``value(run)``)."""
        if value is None and name in self.stats:
            return self.stats[name]
        return seed_stat(self.runs, name, value)

    def paper_in_spread(self, name: str = "test_error") -> bool | None:
        """Whether the paper's ``name`` lies within the seeds' [min, max] of ours; None
        without a paper number or with one seed."""
        return self.stat(name).spans(getattr(self.paper, name, None))


def _sort_key(key: dict):
    model = key["model"]
    order = list(MODELS).index(model) if model in MODELS else len(MODELS)  # Table 1's
    rtol = num(key["solver_rtol"])
    # a model's rows: its default gradient (the paper's row) first, then the registry's order
    grads = MODELS[model].gradients if model in MODELS else ()
    g = key["solver_gradient"]
    rank = grads.index(g) if g in grads else len(grads)
    # the model's own blocks first, then its ablations by depth
    blocks = key["residual_blocks"]
    depth = (blocks != default_blocks(model), blocks if blocks is not None else 0)
    return (order, str(model), str(key["experiment"]), depth, rank, str(key["solver_method"]),
            bool(key["solver_adjoint"]), str(key["solver_adjoint_norm"]),
            -(rtol if rtol is not None else 0.0), str(key["device"]),
            num(key["epochs_planned"]) or 0, num(key["train_size"]) or 0)


def groups(runs: Sequence[Run], task: str | None = record.CLASSIFY, fields: Sequence[str] = (),
           derived: dict[str, Callable[[Run], object]] | None = None) -> list[Group]:
    """The finished runs of ``task`` (None: every task) grouped by ``group_key``, in
    Table 1's order (the registry's models, the paper's way first). Each group's
    ``stats`` holds ``fields`` (of metrics.json) and ``derived`` (name -> value(run))."""
    members: dict[tuple, list[Run]] = {}
    keys: dict[tuple, dict] = {}
    for r in runs:
        if not r.finished or (task is not None and r.metrics["task"] != task):
            continue
        k = group_key(r.metrics)
        t = tuple((name, repr(k[name])) for name in GROUP_KEYS)
        members.setdefault(t, []).append(r)
        keys[t] = k
    out = []
    for t, rs in members.items():
        stats = {name: seed_stat(rs, name, REPORTED.get(name)) for name in fields}
        stats.update({name: seed_stat(rs, name, f) for name, f in (derived or {}).items()})
        out.append(Group(key=keys[t], runs=rs, stats=stats))
    return sorted(out, key=lambda g: _sort_key(g.key))


def group_of(gs: Iterable[Group]) -> dict[Path, Group]:
    """Each member run's directory -> its group (for per-run data drawn per group)."""
    return {r.dir: g for g in gs for r in g.runs}
