"""Groups of runs (Table 1's rows): the finished runs that differ only in seed, one
``Group`` each, with its key (``group_key``: model, residual blocks, solver settings,
scale, training levers), members, seeds and each field's ``Stat`` over the seeds, in
Table 1's order (``groups``); the table, the figures and the report's claims all read
these. Torch-free, like all of the report.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from odenet.config.model_registry import MODELS, ModelSpec, PaperRow
from odenet.report.runs import Run, has_ode_block, num, residual_blocks, scale_label
from odenet.run import record

SOLVER_KEYS = ("solver_method", "solver_rtol", "solver_atol", "solver_gradient",
               "solver_adjoint", "solver_adjoint_norm", "solver_step_size", "solver_last_step")
SCALE_KEYS = ("experiment", "epochs_planned", "train_size", "test_size", "batch_size", "device")
# the training levers (off: null, as in records from before them)
RECIPE_KEYS = ("ema_decay", "solver_carry_step", "kinetic_weight", "jacobian_weight",
               "t1_jitter")
# the optimizer: runs that differ here are other recipes, never repeats of one seed
OPTIM_KEYS = ("optimizer", "lr", "schedule", "momentum", "nesterov", "weight_decay")
# residual_blocks: a ResNet with fewer blocks (Table 1's ablations) is another row
GROUP_KEYS = ("model", "residual_blocks") + SOLVER_KEYS + SCALE_KEYS + RECIPE_KEYS


def optimizer_settings_apart(records: Iterable[dict]) -> tuple[str, ...]:
    """The optimizer settings (OPTIM_KEYS) in which the metrics ``records`` differ: rows
    and lines split by them, and their labels name them. Where a record predates the
    optimizer fields (it has no ``optimizer``), only lr and schedule count, so that a plan
    resumed across that change keeps its seeds in one row."""
    records = list(records)
    names = OPTIM_KEYS if all(m.get("optimizer") is not None for m in records) \
        else ("lr", "schedule")
    return tuple(n for n in names if len({repr(m.get(n)) for m in records}) > 1)


def _check_keys() -> None:
    """The group keys are the record's settings: a renamed field fails here, at import."""
    bad = [k for k in GROUP_KEYS[1:] + OPTIM_KEYS
           if k not in record.names(record.Metrics, record.SETTING)]
    if bad:
        raise ImportError(f"odenet.report.seed_groups: not in odenet.run.record.Metrics: {bad}")


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
    key = {k: m.get(k) for k in GROUP_KEYS + OPTIM_KEYS}
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
    # the optimizer settings (OPTIM_KEYS) the groups listed with it differ in: its label
    # names them, and only them
    optimizer_settings: tuple[str, ...] = ()

    @property
    def scale(self) -> str:
        """Its scale, levers and telling optimizer settings in short (runs.scale_label)."""
        return scale_label(self.key, self.optimizer_settings)

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
    runs = [r for r in runs if r.finished and (task is None or r.metrics["task"] == task)]
    apart = optimizer_settings_apart(r.metrics for r in runs)
    for r in runs:
        k = group_key(r.metrics)
        t = tuple((name, repr(k[name])) for name in GROUP_KEYS + apart)
        members.setdefault(t, []).append(r)
        keys[t] = k
    out = []
    for t, rs in members.items():
        stats = {name: seed_stat(rs, name, REPORTED.get(name)) for name in fields}
        stats.update({name: seed_stat(rs, name, f) for name, f in (derived or {}).items()})
        out.append(Group(key=keys[t], runs=rs, stats=stats, optimizer_settings=apart))
    return sorted(out, key=lambda g: _sort_key(g.key))


def group_of(gs: Iterable[Group]) -> dict[Path, Group]:
    """Each member run's directory -> its group (for per-run data drawn per group)."""
    return {r.dir: g for g in gs for r in g.runs}
