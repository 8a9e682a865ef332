"""``gradients.png``: the error of each gradient method against the float64 reference,
against NFE (forward + backward) and against the ODE block's activation memory, from one
gradients.json record (odenet/analysis/gradient_error.py).
"""

from __future__ import annotations

from pathlib import Path

from odenet.analysis.gradient_error import GRADIENT_METHODS
from odenet.report.runs import fmt_tol


def write_figure(record: dict, path: Path) -> None:
    """Error against the reference vs NFE-F+B and vs block activation memory, per method.
    Written here, not by `odenet figures`: that registry draws from run directories, this
    from one gradients.json."""
    fig = draw_figure(record)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)  # atomically, as the JSON


def draw_figure(record: dict):
    """The figure of ``write_figure`` (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    ax_nfe, ax_mem = fig.subplots(1, 2)
    # distinct markers and dashes: methods that coincide (the adjoint with and without
    # the seminorm often do) stay visible on top of one another
    styles = dict(zip(GRADIENT_METHODS, ("o-", "s--", "x:", "^-", "v-.")))
    for name in record["settings"]["methods"]:
        rows = [r for r in record["results"]
                if r["gradient_method"] == name and r["status"] == "ok"]
        if not rows:
            continue
        err = [max(r["error"], 1e-16) for r in rows]  # a log axis cannot show 0
        ax_nfe.plot([r["nfe_forward"] + r["nfe_backward"] for r in rows], err, styles[name],
                    label=name, mfc="none")
        ax_mem.plot([max(r["block_activation_mib"], 1e-6) for r in rows], err, styles[name],
                    label=name, mfc="none")
    for ax, xlabel in ((ax_nfe, "NFE forward + backward"),
                       (ax_mem, "ODE block activation memory (MiB)")):
        _log_axes(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("relative gradient error vs float64 reference")
        ax.grid(True, which="both", alpha=0.3)
    ax_nfe.legend(fontsize=8)
    tols = record["settings"]["tolerances"]
    fig.suptitle(f"{record['model']}: parameter-gradient error per method "
                 f"(tolerance{'s' if len(tols) > 1 else ''} "
                 f"{', '.join(fmt_tol(t) for t in tols)})", fontsize=10)
    fig.tight_layout()
    return fig


def _log_axes(ax) -> None:
    """Log scales; x (counts, MiB) in plain numbers (30, 40, not 3x10^1, 4x10^1)."""
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
