"""The report's "Measured against the paper's claims": one line per claim of the paper
that the runs can speak to, with our numbers (report.md of ``odenet reproduce``).

Table 1's claims read groups of runs (odenet/report/seed_groups.py: a row's seeds
together, mean ± std over them); the figures' claims read the figures' rows
(odenet/report/mnist_figures.py).
A claim without data gives no line. Torch-free, like all of the report.
"""

from __future__ import annotations

from collections.abc import Sequence

from odenet.config.model_registry import ADJOINT, BACKPROP, CHECKPOINT, MODELS, REVERSIBLE
from odenet.report import mnist_figures as F
from odenet.report.runs import Run, gradient_of, solver_label
from odenet.report.seed_groups import Group, groups
from odenet.report.table import DERIVED

# The paper's NFE-B ≈ ½ NFE-F "holds" within ±20 % of ½
HALF = (0.4, 0.6)


def measured_claims(table_runs: Sequence[Run], fig_runs: dict[str, Sequence[Run]]
                    ) -> list[str]:
    """One line per claim of the paper that the data can speak to, with our numbers.
    ``fig_runs``: the runs each figure reads (by figure name: memory, fig3c)."""
    rows = groups(table_runs, fields=("test_error", "params"), derived=DERIVED)
    lines = test_error_claims(rows) + gradient_claims(rows)
    lines += memory_claims(fig_runs["memory"])
    lines += time_claims(table_runs)
    c = F.fig3c_rows(fig_runs["fig3c"])
    for variant, rs in F.group_by(c, "variant").items():
        ratio = F.nfe_ratio(rs)
        if ratio is not None:
            lines.append(f"NFE-B / NFE-F (Fig. 3c, {variant}, over all logged training "
                         f"iterations): {ratio:.2f} (the paper: about 0.5).")
    if any(r["solver"] in F.PAPER_FAMILY for r in c):
        lines.append(paper_family_verdict(c))
    return lines + training_nfe_claims(rows)


def _pct(g: Group) -> str:
    """'0.44 %' (one seed) or '0.44 ± 0.04 % over 3 seeds'."""
    st = g.stats["test_error"]
    if st.std is None:
        return f"{st.mean * 100:.2f} %"
    return f"{st.mean * 100:.2f} ± {st.std * 100:.2f} % over {st.n} seeds"


def test_error_claims(rows: Sequence[Group]) -> list[str]:
    """Each paper row's test error beside the paper's (with several seeds: whether the
    paper's lies within their range), then the ablation rows beside their full model."""
    errs = []
    for g in rows:
        p, st = g.paper, g.stats["test_error"]
        if p is None or st.mean is None:
            continue
        inside = st.spans(p.test_error)
        where = "" if inside is None else (
            f": {'within' if inside else 'outside'} the seeds' range "
            f"{st.min * 100:.2f}-{st.max * 100:.2f} %")
        errs.append(f"{g.title} {_pct(g)} (paper {p.test_error * 100:.2f} %{where})")
    lines = ["Test error: " + "; ".join(errs) + "."] if errs else []
    ablations = [g for g in rows if g.ablation and g.stats["test_error"].mean is not None]
    if ablations:
        full = [g for g in rows if not g.ablation and g.spec and g.spec.residual_blocks
                and g.stats["test_error"].mean is not None]
        lines.append("Ablations the paper has not (the critique that the downsampling and "
                     "head carry the accuracy): " + "; ".join(
                         f"{g.title} {_pct(g)}, {g.stats['params'].mean:,.0f} parameters"
                         for g in ablations + full) + ".")
    return lines


def gradient_claims(rows: Sequence[Group]) -> list[str]:
    def err(g: Group) -> str:
        st = g.stats["gradient_error"]
        return f"{st.mean:.2g}" + (f" ± {st.std:.2g}" if st.std else "")

    grads = [f"{g.title}, {solver_label(g.key)}: {err(g)}" for g in rows
             if g.stats["gradient_error"].mean is not None]
    if not grads:
        return []
    return ["Gradient error of the trained nets at their own tolerance (relative L2 "
            "against a float64 reference, not measured by the paper): "
            + "; ".join(grads) + "."]


def _claim(rs: list[dict]) -> str:
    """'O(1) (ODE-Net': the paper's memory claim and the model's title."""
    spec = MODELS[rs[0]["model"]]
    return f"{spec.paper.memory if spec.paper else '?'} ({spec.title}"


def memory_claims(runs: Sequence[Run]) -> list[str]:
    """The O(1) / O(L~) / O(L) of Table 1, measured (the memory figure's rows); the
    gradients the paper has not, per group (mean over its seeds)."""
    mem = F.memory_rows(runs)

    def series(kind: str) -> list[dict]:
        return [r for r in mem if F.series_kind(r["series"]) == kind]

    lines = []
    ode, rk, res = series(ADJOINT), series(BACKPROP), series("blocks")
    if ode:
        lo, hi = min(r["x"] for r in ode), max(r["x"] for r in ode)
        mlo = min(r["activation_block_mib"] for r in ode)
        mhi = max(r["activation_block_mib"] for r in ode)
        span = f"{mlo:.2f}" if f"{mlo:.2f}" == f"{mhi:.2f}" else f"{mlo:.2f}-{mhi:.2f}"
        lines.append(f"Memory {_claim(ode)}, adjoint): the block saved {span} MiB "
                     f"for backward at NFE {lo:.0f}-{hi:.0f} ({len(ode)} run(s)).")
    lines += _memory_by_group(runs)
    if rk:
        a = F.slope_through_origin([r["x"] for r in rk], [r["activation_block_mib"] for r in rk])
        lo, hi = min(r["x"] for r in rk), max(r["x"] for r in rk)
        lines.append(f"Memory {_claim(rk)}, backprop through the solver): {a:.2f} MiB per "
                     f"function evaluation (least squares over {len(rk)} run(s), NFE "
                     f"{lo:.0f}-{hi:.0f}).")
    if res:
        lines.append(f"Memory {_claim(res)}): {_blocks_memory(res)}.")
    return lines


def _memory_by_group(runs: Sequence[Run]) -> list[str]:
    """Checkpointed and reversible gradients: each group's block memory at its NFE."""
    lines = []
    for kind, how in ((CHECKPOINT, "checkpointed steps"), (REVERSIBLE, "reversible solver")):
        gs = [g for g in groups(runs, task=None) if g.spec and g.spec.ode_block
              and gradient_of(g.key) == kind and g.stat("activation_block_mib").mean is not None]
        points = []
        for g in gs:
            mib, x = g.stat("activation_block_mib"), g.stat("x", F.memory_x)
            if x.mean is not None:
                seeds = f" ({mib.n} seeds)" if mib.n > 1 else ""
                points.append((x.mean, f"{mib.mean:.2f} MiB at NFE {x.mean:.0f}{seeds}"))
        if points:
            lines.append(f"Memory ({gs[0].spec.title}, {how}): the block saved "
                         + ", ".join(text for _, text in sorted(points)) + ".")
    return lines


def _blocks_memory(res: list[dict]) -> str:
    """'its 6 residual blocks saved 27.40 MiB' (mean over the runs); with several depths
    (the ablations) one mean per depth."""
    by_depth = F.group_by(res, "x")
    if len(by_depth) == 1:
        [(n, rs)] = by_depth.items()
        return (f"its {n:g} residual blocks saved "
                f"{sum(r['activation_block_mib'] for r in rs) / len(rs):.2f} MiB")
    return "its residual blocks saved " + ", ".join(
        f"{sum(r['activation_block_mib'] for r in rs) / len(rs):.2f} MiB with {n:g}"
        for n, rs in sorted(by_depth.items()))


def time_claims(table_runs: Sequence[Run]) -> list[str]:
    """Fig. 3b (time ∝ NFE) and Fig. 3a (accuracy for compute), from evaluation.json."""
    ab = F.fig3ab_rows(table_runs)
    ab = [r for r in ab if r["relative_time"] is not None and r["nfe_forward_mean"]]
    if len(ab) < 2:
        return []
    lo = min(ab, key=lambda r: r["nfe_forward_mean"])
    hi = max(ab, key=lambda r: r["nfe_forward_mean"])
    nfe_x = hi["nfe_forward_mean"] / lo["nfe_forward_mean"]
    line = (f"Time ∝ NFE (Fig. 3b): NFE {lo['nfe_forward_mean']:.0f} → "
            f"{hi['nfe_forward_mean']:.0f} (x{nfe_x:.2f}) took "
            f"x{hi['relative_time'] / lo['relative_time']:.2f} the forward time")
    if hi["relative_block_time"] and lo["relative_block_time"]:
        blk_x = hi["relative_block_time"] / lo["relative_block_time"]
        line += f" (ODE block alone x{blk_x:.2f})"
    lines = [line + "."]
    e_lo, e_hi = lo["numerical_error"], hi["numerical_error"]
    if e_lo and e_hi:
        lines.append(f"Accuracy for compute (Fig. 3a): numerical error {e_lo:.1e} at NFE "
                     f"{lo['nfe_forward_mean']:.0f} → {e_hi:.1e} at NFE "
                     f"{hi['nfe_forward_mean']:.0f}.")
    return lines


def training_nfe_claims(rows: Sequence[Group]) -> list[str]:
    """Fig. 3d (the paper: NFE grows in training): each group's NFE-F in its first and
    last epoch, the mean over its seeds."""
    lines = []
    for g in rows:
        first = g.stat("first", lambda r: _epoch_nfe(r, 0))
        last = g.stat("last", lambda r: _epoch_nfe(r, -1))
        if first.mean is None:
            continue
        f, t = first.mean, last.mean
        trend = "grows" if t > f else "does not grow" if t == f else "falls"
        lines.append(f"NFE in training (Fig. 3d, paper: it grows; {F.group_label(g)}): "
                     f"NFE-F {f:.1f} in the first epoch → {t:.1f} in the last ({trend}).")
    return lines


def _epoch_nfe(run: Run, i: int) -> float | None:
    """NFE-F of the run's epoch ``i`` (fig3d's epoch means); None under two epochs."""
    eps = [x for x in F.fig3d_rows([run]) if x["kind"] == "epoch"]
    return eps[i]["nfe_forward"] if len(eps) >= 2 else None


def paper_family_verdict(fig3c: list[dict]) -> str:
    """One sentence: does the paper's NFE-B ≈ ½ NFE-F hold with its own solver family
    (LSODA), beside the other solvers' ratios, all over every logged training iteration
    of the default-norm adjoint. "Holds": within ±20 % of ½ (0.4-0.6)."""
    default = [r for r in fig3c if "seminorm" not in r["variant"]]
    ratio = {s: F.nfe_ratio(rs) for s, rs in F.group_by(default, "solver").items()}
    family = [s for s in ratio if s in F.PAPER_FAMILY and ratio[s] is not None]
    if not family:
        return "Fig. 3c with the paper's solver family: no LSODA run with the plain adjoint."
    s = family[0]
    r = ratio[s]
    others = ", ".join(f"{o} {v:.2f}" for o, v in sorted(ratio.items())
                       if o != s and v is not None)
    n = sum(x["iterations"] for x in default if x["solver"] == s)
    verdict = "holds" if HALF[0] <= r <= HALF[1] else "does not hold"
    return (f"With {s.upper()}, the paper's solver family, NFE-B / NFE-F = {r:.2f} over "
            f"{n} training iterations (forward and adjoint solves by {s}), so the paper's "
            f"NFE-B ≈ ½ NFE-F {verdict} (taken as 0.4-0.6)"
            + (f"; the Runge-Kutta solvers give {others}." if others else "."))
