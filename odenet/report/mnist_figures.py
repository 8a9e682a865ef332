"""The MNIST figures: Figure 3 (a)-(d) of the paper and a measured memory plot.

For each, a ``*_rows(runs)`` function here extracts the data (the figure's CSV) and a
``draw_*(rows, path)`` function of odenet/report/mnist_drawing.py draws the PNG;
odenet/report/figure_registry.py lists the figures (captions, which runs each reads) and
writes them. Torch-free, like all of the report.
- fig3a: NFE-forward vs numerical error of a trained ODE-Net's block, per tolerance
  (from ``evaluation.json``, written by ``odenet evaluate``).
- fig3b: NFE-forward vs relative wall time of the forward pass (same source).
- fig3c: NFE-forward vs NFE-backward over training iterations, a panel per solver and
  a series per adjoint variant, with the paper's reported y = x/2 (``history.jsonl`` of
  adjoint runs).
- fig3d: NFE-forward vs training epoch (``history.jsonl`` of ODE-block runs).
- memory: activation memory of the ODE block / residual blocks vs NFE (or depth) for
  the models with either (``metrics.json``): the O(1) / O(L~) / O(L) claim, measured.
  The NFE is that of the iteration whose memory was measured (``activation_nfe_forward``;
  records from before it existed: the last epoch's mean NFE-F); RK-Net's points get the
  least-squares fit y = a·x, drawn as that curve.

Only finished runs enter fig3c, fig3d and memory; fig3a/b use every evaluation found
(load_runs leaves out one whose checkpoint changed since). A figure without data raises
``NoData``, saying what would produce it. The CSVs' ``run_dir`` is ``Run.name``: the
run directory relative to the directory searched.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from odenet.config.model_registry import ADJOINT, BACKPROP, CHECKPOINT, MODELS, REVERSIBLE
from odenet.report.runs import (
    Run,
    fmt_tol,
    gradient_of,
    num,
    optimizer_label,
    recipe_label,
    residual_blocks,
    solver_label,
)
from odenet.report.seed_groups import (
    RECIPE_KEYS,
    Group,
    group_of,
    groups,
    optimizer_settings_apart,
)

# The solvers of the paper's own family (ODEPACK's LSODE, here LSODA): Fig. 3c's claim
PAPER_FAMILY = ("lsoda",)
# The memory figure's series: a model's title and how its x is counted. The texts are
# memory.csv's "series" column.
SERIES = {ADJOINT: " (adjoint)", BACKPROP: " (backprop through solver)",
          CHECKPOINT: " (checkpointed steps)", REVERSIBLE: " (reversible solver)",
          "blocks": " (x = residual blocks)"}


class NoData(Exception):
    """A figure has nothing to draw; the message says what would produce the data."""


# ---------------------------------------------------------------- data extraction
def _run_label(run: Run) -> str:
    m = run.metrics
    seed = m.get("seed")
    return f"{solver_label(m)}" + (f" seed {seed}" if seed is not None else "")


def group_label(g: Group) -> str:
    """A group's label: its solver and seeds ('dopri5 tol=1e-3 adjoint seeds 0, 1, 2'); a
    group of one run reads as that run's label."""
    if all(s is None for s in g.seeds):
        return solver_label(g.key)
    return f"{solver_label(g.key)} seed{'s' if g.n_seeds > 1 else ''} {g.seeds_text}"


def fig3d_label(g: Group) -> str:
    """A group's label in fig3d: the model, solver, scale and seeds ('ODE-Net dopri5
    tol=1e-3 adjoint, quick, 1 ep, seed 0'): the same solver at another scale (smoke,
    custom, quick) reads apart."""
    seeds = "" if all(s is None for s in g.seeds) else \
        f", seed{'s' if g.n_seeds > 1 else ''} {g.seeds_text}"
    return f"{g.title} {solver_label(g.key)}, {g.scale}{seeds}"


def _dir(run: Run) -> str:
    """The run directory as the CSVs write it: relative to the directory searched."""
    return run.name or str(run.dir)


def fig3ab_rows(runs: Sequence[Run]) -> list[dict]:
    """One row per (evaluated checkpoint, tolerance)."""
    rows = []
    for run in runs:
        ev = run.evaluation
        if not ev:
            continue
        results = [r for r in ev.get("results", []) if num(r.get("nfe_forward_mean")) is not None]
        times = [num(r.get("forward_seconds")) for r in results]
        times = [t for t in times if t]
        block_times = [num(r.get("block_seconds")) for r in results]
        block_times = [t for t in block_times if t]
        cpu_times = [num(r.get("forward_cpu_seconds")) for r in results]
        cpu_times = [t for t in cpu_times if t]
        # relative to the run with the fewest evaluations (the loosest tolerance)
        first = min(results, key=lambda r: num(r.get("nfe_forward_mean")), default={})
        t0 = num(first.get("forward_seconds")) or (min(times) if times else None)
        b0 = num(first.get("block_seconds")) or (min(block_times) if block_times else None)
        c0 = num(first.get("forward_cpu_seconds")) or (min(cpu_times) if cpu_times else None)
        for r in results:
            ft, bt = num(r.get("forward_seconds")), num(r.get("block_seconds"))
            ct = num(r.get("forward_cpu_seconds"))
            rows.append({
                "run_dir": _dir(run),
                "label": _run_label(run),
                "rtol": r.get("rtol"),
                "atol": r.get("atol"),
                "nfe_forward_mean": num(r.get("nfe_forward_mean")),
                "numerical_error": num(r.get("numerical_error")),
                "numerical_error_max": num(r.get("numerical_error_max")),
                "test_error": num(r.get("test_error")),
                "forward_seconds": ft,
                "block_seconds": bt,
                "forward_cpu_seconds": ct,
                "relative_time": ft / t0 if ft and t0 else None,
                "relative_block_time": bt / b0 if bt and b0 else None,
                "relative_cpu_time": ct / c0 if ct and c0 else None,
            })
    return rows


def _variant(m: dict) -> str:
    """Solver/adjoint variant of a training run, tolerance left out (fig3c colours)."""
    norm = m.get("solver_adjoint_norm") or "default"
    name = str(m.get("solver_method"))
    return name + (" adjoint" if norm == "default" else f" adjoint, {norm}")


def fig3c_rows(runs: Sequence[Run]) -> list[dict]:
    """(solver, variant, rtol, NFE-F, NFE-B, count) over the training iterations of
    adjoint runs."""
    counts: Counter = Counter()
    for run in runs:
        m = run.metrics
        if not (run.finished and run.has_ode_block and gradient_of(m) == ADJOINT):
            continue
        for it in run.iters():
            f, b = num(it.get("nfe_forward")), num(it.get("nfe_backward"))
            if f is None or b is None:
                continue
            counts[(str(m.get("solver_method")), _variant(m), fmt_tol(m.get("solver_rtol")),
                    f, b)] += 1
    return [{"solver": sv, "variant": v, "rtol": t, "nfe_forward": f, "nfe_backward": b,
             "iterations": n} for (sv, v, t, f, b), n in sorted(counts.items())]


def nfe_ratio(rows: Sequence[dict]) -> float | None:
    """NFE-B / NFE-F over all the iterations of fig3c rows (sums, each row x its count)."""
    f = sum(r["nfe_forward"] * r["iterations"] for r in rows)
    return sum(r["nfe_backward"] * r["iterations"] for r in rows) / f if f else None


def _positions(records: list[dict]) -> list[float]:
    """Fractional epoch of each iteration record: epoch e's k-th of n records sits at
    (e - first) + (k + 0.5) / n, whatever base (0 or 1) the trainer numbers epochs from."""
    by_epoch: dict = defaultdict(list)
    for i, r in enumerate(records):
        by_epoch[r.get("epoch")].append(i)
    first = min((e for e in by_epoch if num(e) is not None), default=0)
    pos = [0.0] * len(records)
    for e, idx in by_epoch.items():
        base = (num(e) if num(e) is not None else 0) - first
        for k, i in enumerate(idx):
            pos[i] = base + (k + 0.5) / len(idx)
    return pos


def fig3d_rows(runs: Sequence[Run]) -> list[dict]:
    """NFE-F of every iteration and epoch of each finished ODE-block run; ``group``: the
    label of its group of seeds (seed_groups.groups), drawn in one colour."""
    rows = []
    of = group_of(groups(runs, task=None))
    for run in runs:
        if not (run.finished and run.has_ode_block):
            continue
        label, group = _run_label(run), fig3d_label(of[run.dir])
        iters = [it for it in run.iters() if num(it.get("nfe_forward")) is not None]
        first_epoch = min((num(it.get("epoch")) for it in iters
                           if num(it.get("epoch")) is not None), default=None)
        for x, it in zip(_positions(iters), iters):
            rows.append({"run_dir": _dir(run), "label": label, "kind": "iter",
                         "epoch": x, "nfe_forward": num(it["nfe_forward"]), "group": group})
        epochs = [e for e in run.epochs() if num(e.get("nfe_forward_mean")) is not None]
        if first_epoch is None:
            first_epoch = min((num(e.get("epoch")) for e in epochs
                               if num(e.get("epoch")) is not None), default=0)
        for e in epochs:
            ep = num(e.get("epoch"))
            if ep is None:
                continue
            # An epoch record summarises the epoch that ends at (e - first + 1).
            rows.append({"run_dir": _dir(run), "label": label, "kind": "epoch",
                         "epoch": ep - first_epoch + 1,
                         "nfe_forward": num(e["nfe_forward_mean"]), "group": group})
    return rows


def recipe_of(run: Run, optimizer_settings: Sequence[str] = ()) -> str:
    """The trade-off figure's line: the run's model, solver (with an ODE block), levers,
    the ``optimizer_settings`` named (those the runs drawn differ in) and epochs, e.g.
    'odenet dopri5 tol=1e-3 adjoint, carried step, EMA 0.999, Nesterov, 8 ep'."""
    m = run.metrics
    parts = [str(m.get("model"))]
    if run.has_ode_block:
        parts[0] += f" {solver_label(m)}"
    levers = recipe_label({k: m.get(k) for k in RECIPE_KEYS})
    optimizer = optimizer_label(m, optimizer_settings)
    parts += [p for p in (levers, optimizer) if p]
    parts.append(f"{m.get('epochs_planned')} ep")
    return ", ".join(parts)


def tradeoff_rows(runs: Sequence[Run]) -> list[dict]:
    """Per epoch of every run with a validation split: its validation error (the weights'
    moving average where the run kept one, as Table 1 reports), the training core-seconds
    so far (each epoch's training wall time x torch threads) and its mean NFE per
    training iteration, forward and backward."""
    rows = []
    runs = [run for run in runs if run.metrics.get("val_size") is not None]
    apart = optimizer_settings_apart(run.metrics for run in runs)
    for run in runs:
        m = run.metrics
        key = "ema_val_error" if m.get("ema_decay") else "val_error"
        threads, core_seconds = num(m.get("threads")) or 1, 0.0
        for e in run.epochs():
            core_seconds += (num(e.get("train_seconds")) or 0.0) * threads
            if num(e.get(key)) is None or num(e.get("epoch")) is None:
                continue
            f, b = num(e.get("nfe_forward_mean")), num(e.get("nfe_backward_mean"))
            rows.append({"run_dir": _dir(run), "recipe": recipe_of(run, apart),
                         "seed": m.get("seed"), "epoch": num(e["epoch"]) + 1,
                         "core_seconds": core_seconds, "val_error": num(e[key]),
                         "nfe_forward": f, "nfe_backward": b,
                         # a backward evaluation costs ~3 forward ones (f and its VJP)
                         "forward_equivalents": None if f is None else f + 3 * (b or 0)})
    return rows


def _memory_x(run: Run) -> tuple[float | None, str]:
    """The memory figure's x of a run and the field it comes from: the NFE of the
    iteration whose activations were measured (a record from before that field: the last
    epoch's mean, the measured one may differ), or the residual blocks."""
    m, spec = run.metrics, MODELS.get(run.model)
    if spec is not None and spec.ode_block:
        x_from = "activation_nfe_forward" if num(m.get("activation_nfe_forward")) \
            is not None else "nfe_forward_mean"
        return num(m.get(x_from)), x_from
    if spec is not None and spec.residual_blocks is not None:
        return residual_blocks(m), "residual_blocks"
    return None, ""


def memory_x(run: Run) -> float | None:
    return _memory_x(run)[0]


def memory_rows(runs: Sequence[Run]) -> list[dict]:
    rows = []
    for run in runs:
        m = run.metrics
        mib = num(m.get("activation_block_mib"))
        if not run.finished or mib is None:
            continue
        spec = MODELS.get(run.model)
        x, x_from = _memory_x(run)
        if spec is None or x is None:
            continue
        if spec.ode_block:
            series, x_kind = spec.title + SERIES[gradient_of(m)], "nfe_forward"
        else:
            series, x_kind = spec.title + SERIES["blocks"], "blocks"
        rows.append({"run_dir": _dir(run), "series": series, "model": m.get("model"),
                     "solver": solver_label(m) if run.has_ode_block else "",
                     "x": x, "x_kind": x_kind, "activation_block_mib": mib,
                     "activation_mib": num(m.get("activation_mib")), "x_from": x_from})
    return rows


def slope_through_origin(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of y = a x (MiB per function evaluation)."""
    sxx = sum(x * x for x in xs)
    return sum(x * y for x, y in zip(xs, ys)) / sxx if sxx > 0 else None


def group_by(rows: list[dict], key: str) -> dict[str, list[dict]]:
    d: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        d[r[key]].append(r)
    return d


def series_kind(series: str) -> str:
    """ADJOINT, BACKPROP or "blocks": what a memory series measures (from its text)."""
    return next((k for k, suffix in SERIES.items() if series.endswith(suffix)), "")
