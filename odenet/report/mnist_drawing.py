"""Drawing the MNIST figures (odenet/report/mnist_figures.py): each ``draw_*(rows,
path)`` draws a figure's PNG from its rows (raising ``NoData`` when there are none) and
returns the matplotlib Figure. Matplotlib's Agg backend, no display; torch-free, like all
of the report.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

from odenet.config.model_registry import ADJOINT, BACKPROP, CHECKPOINT, REVERSIBLE
from odenet.report.mnist_figures import (
    NoData,
    group_by,
    nfe_ratio,
    series_kind,
    slope_through_origin,
)
from odenet.report.runs import adjoint_model, fmt_tol
from odenet.run.files import write_atomic

# the memory figure's marker per kind of series (mnist_figures.series_kind)
MARKERS = {ADJOINT: "o", BACKPROP: "^", CHECKPOINT: "D", REVERSIBLE: "v", "blocks": "s"}
# one marker per series where series may sit on the same points (fig3c's variants, fig3d's
# groups): hollow and of other shapes, each stays visible on top of another
MARKER_CYCLE = ("o", "s", "^", "D", "v", "P", "X", "*")


def _new_figure(title: str):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.6), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3, which="both")
    return fig, ax


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())


def draw_fig3a(rows: list[dict], path: Path):
    pts = [r for r in rows if r["numerical_error"] is not None and r["numerical_error"] > 0]
    if not pts:
        raise NoData("no evaluation.json with numerical errors: run `odenet evaluate "
                     "checkpoint=RUN_DIR/checkpoint.pt`")
    fig, ax = _new_figure("Fig. 3a: NFE forward vs numerical error (trained ODE-Net)")
    for _, rs in group_by(pts, "run_dir").items():
        rs = sorted(rs, key=lambda r: r["nfe_forward_mean"])
        ax.plot([r["nfe_forward_mean"] for r in rs], [r["numerical_error"] for r in rs],
                "o-", label=rs[0]["label"])
        for r in rs:
            ax.annotate(f"tol {fmt_tol(r['rtol'])}", (r["nfe_forward_mean"], r["numerical_error"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("NFE forward (function evaluations per forward pass)")
    ax.set_ylabel("numerical error (relative L2 to float64 reference)")
    ax.legend(fontsize=7, title="trained with", title_fontsize=7)
    _save(fig, path)
    return fig


def draw_fig3b(rows: list[dict], path: Path):
    pts = [r for r in rows if r["relative_time"] is not None]
    if not pts:
        raise NoData("no evaluation.json with forward timings: run `odenet evaluate "
                     "checkpoint=RUN_DIR/checkpoint.pt`")
    fig, ax = _new_figure("Fig. 3b: NFE forward vs relative time of the forward pass")
    for _, rs in group_by(pts, "run_dir").items():
        rs = sorted(rs, key=lambda r: r["nfe_forward_mean"])
        xs = [r["nfe_forward_mean"] for r in rs]
        line = ax.plot(xs, [r["relative_time"] for r in rs], "o-",
                       label=f"whole forward pass (wall): {rs[0]['label']}")[0]
        bl = [(r["nfe_forward_mean"], r["relative_block_time"]) for r in rs
              if r["relative_block_time"] is not None]
        if bl:
            ax.plot(*zip(*bl), "s--", mfc="none", color=line.get_color(),
                    label="ODE block alone (wall)")
        cp = [(r["nfe_forward_mean"], r["relative_cpu_time"]) for r in rs
              if r.get("relative_cpu_time") is not None]
        if cp:
            ax.plot(*zip(*cp), "^:", mfc="none", color=line.get_color(),
                    label="whole forward pass, process CPU time")
    # time proportional to NFE, through the cheapest point
    x0 = min(r["nfe_forward_mean"] for r in pts)
    xmax = max(r["nfe_forward_mean"] for r in pts)
    ax.plot([0, xmax], [0, xmax / x0], ":", color="gray", label="time ∝ NFE")
    ax.set_xlabel("NFE forward (function evaluations per forward pass)")
    ax.set_ylabel("relative time (1 = loosest tolerance)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    _save(fig, path)
    return fig


def draw_fig3c(rows: list[dict], path: Path):
    """One panel per solver (one alone: a single panel), a series per adjoint variant."""
    if not rows:
        raise NoData("no finished adjoint runs with history.jsonl: train with "
                     f"`model={adjoint_model()} solver.gradient=adjoint` (a tolerance sweep "
                     "spreads the points)")
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    solvers = group_by(rows, "solver")
    cols = min(len(solvers), 2)
    nrows = math.ceil(len(solvers) / cols)
    fig = Figure(figsize=(6.4 if cols == 1 else 10, 4.6 if nrows == 1 else 3.6 * nrows),
                 dpi=120, layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    fig.suptitle("Fig. 3c: NFE forward vs NFE backward (training iterations)", fontsize=11)
    xmax = max(r["nfe_forward"] for r in rows) * 1.05
    ymax = max(max(r["nfe_backward"] for r in rows) * 1.05, xmax / 2)
    for ax, (solver, srows) in zip(axes, sorted(solvers.items())):
        ax.grid(True, alpha=0.3, which="both")
        ratio = nfe_ratio(srows)
        ax.set_title(f"{solver}: NFE-B / NFE-F = {ratio:.2f}" if ratio else solver,
                     fontsize=10)
        _draw_variants(ax, group_by(srows, "variant"))
        ax.plot([0, xmax], [0, xmax / 2], "--", color="gray", label="paper: NFE-B = NFE-F / 2")
        ax.plot([0, xmax], [0, xmax], ":", color="black", label="NFE-B = NFE-F")
        ax.set_xlabel("NFE forward (evaluations per forward pass)", fontsize=9)
        ax.set_ylabel("NFE backward (per adjoint solve)", fontsize=9)
        ax.set_xlim(0, xmax)  # shared scales: the panels compare at a glance
        ax.set_ylim(0, ymax)
        ax.legend(fontsize=7, title="marker area ∝ iterations", title_fontsize=7)
    for ax in axes[len(solvers):]:
        ax.set_visible(False)
    _save(fig, path)
    return fig


def _draw_variants(ax, variants: dict[str, list[dict]]) -> None:
    """fig3c's series of one panel, hollow, a colour and shape each; a variant on exactly
    the points of an earlier one (the default norm and the seminorm often are) is drawn
    larger around them, and its legend entry says so."""
    seen: dict[frozenset, str] = {}
    for i, ((variant, rs), marker) in enumerate(zip(variants.items(),
                                                    itertools.cycle(MARKER_CYCLE))):
        same = seen.setdefault(frozenset((r["nfe_forward"], r["nfe_backward"]) for r in rs),
                               variant)
        grow = 1.0 if same == variant else 2.5
        most = max(r["iterations"] for r in rs)
        ax.scatter([r["nfe_forward"] for r in rs], [r["nfe_backward"] for r in rs],
                   s=[grow * (12 + 40 * math.sqrt(r["iterations"] / most)) for r in rs],
                   marker=marker, facecolors="none", edgecolors=f"C{i}", linewidths=1.2,
                   label=f"{variant} (measured)"
                   + ("" if same == variant else f": the same points as {same}"))


def moving_mean(ys: Sequence[float], window: int) -> list[float]:
    """Trailing moving mean (the first points average what there is so far)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def draw_fig3d(rows: list[dict], path: Path):
    """A colour per group of seeds (one legend entry each), a line and dots per run."""
    if not rows:
        raise NoData("no finished runs of a model with an ODE block with history.jsonl")
    fig, ax = _new_figure("Fig. 3d: NFE forward during training")
    by_group = sorted(group_by(rows, "group").items())
    for (group, grs), color, marker in zip(by_group, distinct_colors(len(by_group)),
                                           itertools.cycle(MARKER_CYCLE)):
        label = group
        for _, rs in group_by(grs, "run_dir").items():
            _draw_run_nfe(ax, rs, color, marker, label)
            label = None  # the group's label once
    ax.set_xlabel("training epoch (line: iterations, moving mean over 0.1 epoch; "
                  "markers: epoch mean)", fontsize=9)
    ax.set_ylabel("NFE forward (function evaluations per forward pass)")
    ax.set_xlim(left=0)
    # below the axes, where it covers no data; the figure grows with its lines
    fig.set_figheight(4.6 + 0.16 * len(by_group))
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7)
    _save(fig, path)
    return fig


def distinct_colors(n: int) -> list:
    """``n`` colours, no two alike: matplotlib's 10 (n <= 10), its 20 (n <= 20), else
    ``n`` samples of a rainbow map."""
    from matplotlib import colormaps

    if n <= 20:
        return list(colormaps["tab10" if n <= 10 else "tab20"].colors[:n])
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _draw_run_nfe(ax, rs: list[dict], color, marker: str, label) -> None:
    """One run of fig3d: its iterations' moving mean and its epoch means."""
    it = [r for r in rs if r["kind"] == "iter"]
    ep = [r for r in rs if r["kind"] == "epoch"]
    if it:
        n_epochs = max(1, math.ceil(max(r["epoch"] for r in it)))
        window = max(1, round(len(it) / n_epochs / 10))  # a tenth of an epoch
        ax.plot([r["epoch"] for r in it], moving_mean([r["nfe_forward"] for r in it], window),
                "-", lw=0.8, alpha=0.6, color=color)
    if ep:
        ax.plot([r["epoch"] for r in ep], [r["nfe_forward"] for r in ep], marker,
                color=color, mfc="none", label=label)
    elif it and label:
        ax.lines[-1].set_label(label)


def draw_tradeoff(rows: list[dict], path: Path):
    """Left: validation error against training core-hours; right: NFE per training
    iteration (forward: solid, backward: dashed) against epoch. A colour per recipe."""
    if not rows:
        raise NoData("no runs with a validation split (train with data.val_size=10000)")
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), dpi=120, layout="constrained")
    err_ax, nfe_ax = fig.subplots(1, 2)
    err_ax.set_title("Validation error per CPU time, by recipe", fontsize=11)
    nfe_ax.set_title("Evaluations per training iteration", fontsize=11)
    for recipe, rs in group_by(rows, "recipe").items():
        color = None
        for _, run in group_by(rs, "run_dir").items():
            line = err_ax.plot([r["core_seconds"] / 3600 for r in run],
                               [r["val_error"] * 100 for r in run], "o-", ms=3,
                               color=color, label=recipe if color is None else None)[0]
            color = line.get_color()
            nfe = [r for r in run if r["nfe_forward"] is not None]
            if nfe:
                nfe_ax.plot([r["epoch"] for r in nfe], [r["nfe_forward"] for r in nfe],
                            "o-", ms=3, color=color)
                nfe_ax.plot([r["epoch"] for r in nfe], [r["nfe_backward"] or 0 for r in nfe],
                            "s--", ms=3, color=color)
    err_ax.set_xlabel("training core-hours (epoch training time x threads)")
    err_ax.set_ylabel("validation error (%)")
    err_ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    for axis in (err_ax.yaxis,):  # plain numbers on the log axis, not 4x10^-1
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(FormatStrFormatter("%g"))
    err_ax.legend(fontsize=7)
    nfe_ax.set_xlabel("epoch (from 1)")
    nfe_ax.set_ylabel("NFE per iteration (solid: forward, dashed: backward)")
    for ax in (err_ax, nfe_ax):
        ax.grid(True, alpha=0.3, which="both")
    _save(fig, path)
    return fig


def fit_curve(x0: float, x1: float, n: int = 64) -> list[float]:
    """``n`` evenly spaced x from x0 to x1: enough for a smooth a·x on a log y axis."""
    return [x0 + (x1 - x0) * i / (n - 1) for i in range(n)]


def draw_memory(rows: list[dict], path: Path):
    if not rows:
        raise NoData("no finished runs of a model with an ODE block or residual blocks "
                     "that measured activation_block_mib")
    fig, ax = _new_figure("Activation memory of the ODE block / residual blocks")
    for series, rs in sorted(group_by(rows, "series").items()):
        xs, ys = [r["x"] for r in rs], [r["activation_block_mib"] for r in rs]
        label, a, kind = series, None, series_kind(series)
        if kind == BACKPROP:  # memory grows with NFE: fit its slope
            a = slope_through_origin(xs, ys)
            if a:
                label += f": ≈ {a:.2f} MiB per evaluation"
        pts = ax.scatter(xs, ys, marker=MARKERS.get(kind, "o"), s=36, label=label)
        if a:
            # y = a·x through the origin: on the log y axis a curve, so drawn point by
            # point over the x range (from half the smallest x: log y has no 0)
            fx = fit_curve(min(xs) / 2, max(r["x"] for r in rows) * 1.05)
            ax.plot(fx, [a * x for x in fx], "--", lw=0.8, color=pts.get_facecolor()[0],
                    label=f"fit: y = {a:.2f}·x")
    ax.set_yscale("log")
    # records from before activation_nfe_forward give the last epoch's mean NFE-F
    older = any(r.get("x_from") == "nfe_forward_mean" for r in rows)
    ax.set_xlabel("NFE forward of the measured iteration (ODE blocks"
                  + ("; older runs: last epoch's mean" if older else "")
                  + ")\nor number of residual blocks (ResNet)", fontsize=9)
    ax.set_ylabel("activations saved for backward (MiB, one iteration)")
    ax.set_xlim(left=0)
    ax.legend(fontsize=7)
    _save(fig, path)
    return fig
