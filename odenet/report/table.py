"""`odenet table [RUN_DIRS...]`: Table 1 from run directories, ours beside the paper's,
and a table of the density models (CNF, planar flow) when there are density runs.

Finished runs are grouped (odenet/report/seed_groups.py, ``groups``) by model, residual
blocks, solver settings and scale (experiment, epochs, training-set size, batch size,
device) and averaged over seeds: the runs of one seed (a run repeated) are averaged
first, so a row's mean is over distinct seeds and its sample std is over distinct seeds
only (repeats are not independent seeds); the seeds column says "0 (x2)" for two runs of
seed 0. Table 1 says per row how many seeds (n) and whether the paper's test error lies
within [min, max] of the seeds' ("–" with one seed); a ResNet with other residual
blocks than its own (the ablation rows) is a row of its own, without paper numbers.
Runs that did not finish (running, failed, interrupted) are listed in a section of
their own and never enter a mean, and so are run files that fail validation
(odenet/run/record.py), by path and reason. Every path written is relative to the
directory given (odenet/report/runs.py, ``Run.name``).
Paper numbers, titles and Table 1's row order are the model registry's
(odenet/config/model_registry.py); which table a run belongs to is its record's ``task``.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from odenet.config.command_line import usage, wants_help
from odenet.report.arguments import report_settings
from odenet.report.runs import (
    Invalid,
    ReportError,
    Run,
    has_ode_block,
    load_runs,
    own_gradient_result,
    print_invalid,
    residual_blocks,
    solver_label,
)
from odenet.report.seed_groups import (
    OPTIM_KEYS,
    RECIPE_KEYS,
    SCALE_KEYS,
    SOLVER_KEYS,
    Group,
    Stat,
    groups,
)
from odenet.run import record
from odenet.run.files import os_reason, write_atomic

# Measures averaged over seeds, in table.csv order (an explicit order: table.csv's columns
# stay put when the record gains a field; the density runs' NLLs are not Table 1's).
AVERAGED = ("test_error", "train_error", "params", "nfe_forward_mean", "nfe_backward_mean",
            "activation_mib", "activation_block_mib", "cuda_peak_mib", "rss_peak_mib",
            "sec_per_iter", "sec_per_test_batch", "epochs", "wall_seconds",
            "cuda_train_peak_mib", "cuda_eval_peak_mib")
# The density table's measures, in table_density.csv order
DENSITY_AVERAGED = ("test_nll", "train_nll", "params", "nfe_forward_mean",
                    "nfe_backward_mean", "activation_mib", "sec_per_iter", "epochs",
                    "wall_seconds")
AVERAGED_OF = {record.CLASSIFY: AVERAGED, record.DENSITY: DENSITY_AVERAGED}
# Table 1's measures from other files than metrics.json, the last columns of table.csv:
# the trained net's gradient error at its own settings (gradients.json, odenet gradients)
DERIVED = {"gradient_error": lambda run: (own_gradient_result(run) or {}).get("error")}


def _check_keys() -> None:
    """The table's measures are the record's: a renamed field fails here, at import."""
    measures = set(record.names(record.Metrics, record.MEASURE))
    bad = [k for k in AVERAGED + DENSITY_AVERAGED if k not in measures]
    if bad:
        raise ImportError(f"odenet.report.table: not in odenet.run.record.Metrics: {bad}")


_check_keys()

Row = Group  # a row of the table is a group of runs (odenet/report/seed_groups.py)


def is_table1_run(run: Run) -> bool:
    """MNIST classification runs (``task`` classify, or no task key: Contract 2 as first
    written); other tasks (e.g. task=density, the CNF experiments) are not Table 1's."""
    return run.metrics["task"] == record.CLASSIFY


def build_rows(runs: Sequence[Run], task: str = record.CLASSIFY
               ) -> tuple[list[Row], list[Run]]:
    """Group the finished runs of ``task`` into rows (seed_groups.groups, with the table's
    measures); return (rows, its runs not finished). Runs of other tasks are left out of
    both."""
    derived = DERIVED if task == record.CLASSIFY else {}
    rows = groups(runs, task, AVERAGED_OF[task], derived)
    excluded = [r for r in runs if r.metrics["task"] == task and not r.finished]
    return rows, excluded


# ---------------------------------------------------------------- formatting
def _pm(stat: Stat, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    if stat.mean is None:
        return "-"
    s = f"{stat.mean * scale:.{digits}f}"
    if stat.std is not None:
        s += f" ± {stat.std * scale:.{digits}f}"
    return s + unit


def _mib(stat: Stat) -> str:
    """MiB with 3 significant figures or so: 0.844, 2.25, 14.5, 183.0."""
    m = stat.mean
    return _pm(stat, digits=3 if m is not None and m < 1 else 2 if m is not None and m < 10
               else 1)


def _sig(stat: Stat) -> str:
    """Two significant figures, for errors spanning decades: 0.080, 0.0012, 6.1e-07."""
    if stat.mean is None:
        return "-"
    def f(v: float) -> str:
        return f"{v:.2g}" if abs(v) >= 1e-3 else f"{v:.1e}"

    return f(stat.mean) + (f" ± {f(stat.std)}" if stat.std is not None else "")


def _params(stat: Stat) -> str:
    if stat.mean is None:
        return "-"
    if stat.std:  # differing counts within one group would be a bug: show it
        return f"{stat.mean:,.0f} ± {stat.std:,.0f}"
    return f"{stat.mean:,.0f}"


def _in_spread(row: Row) -> str:
    """Table 1's "Paper in seed range" cell: the paper's test error within [min, max] of
    the seeds' ('yes (0.40–0.47)'); '–' with one seed, '-' without a paper number."""
    st, p = row.stats["test_error"], row.paper
    if p is None or st.mean is None:
        return "-"
    inside = st.spans(p.test_error)
    if inside is None:
        return "–"
    return f"{'yes' if inside else 'no'} ({st.min * 100:.2f}–{st.max * 100:.2f})"


def _blocks_text(rows: Sequence[Row]) -> str:
    """'the 6 residual blocks', from the runs' records (several depths: no number)."""
    n = {residual_blocks(r.metrics) for row in rows for r in row.runs} - {None}
    return f"the {n.pop()} residual blocks" if len(n) == 1 else "the residual blocks"


def _title(name: str, unit: str | None = None) -> str:
    """A column's header from its metrics.json field's declaration (odenet/run/record.py)."""
    return record.title(record.Metrics, name) + (f" ({unit})" if unit else "")


def _with_unit(name: str) -> str:
    """The header with the field's own unit, e.g. "Test NLL (nats)"."""
    return _title(name, record.unit(record.Metrics, name))


MD_HEADER = ("Model", "Solver", "Scale", "Seeds", "n", _title("test_error", "%"),
             "Paper (%)", "Paper in seed range", _title("params"), "Paper params",
             "Activations (MiB): model / block", _title("cuda_train_peak_mib", "MiB"),
             "Paper memory", _title("sec_per_iter"),
             _title("sec_per_test_batch"), "Paper time", _title("nfe_forward_mean"),
             _title("nfe_backward_mean"), "Gradient error", _title("device"))
DENSITY_MD_HEADER = ("Model", "Solver", "Scale", "Seeds", _with_unit("test_nll"),
                     _with_unit("train_nll"),
                     _title("nfe_forward_mean"), _title("nfe_backward_mean"),
                     _title("sec_per_iter"), _title("params"), _title("device"))
DENSITY_TITLE = "Density models on 2-D data"
# Under Table 1 when it has a row with other residual blocks than the model's own
ABLATION_NOTE = (
    "Rows \"no block\" / \"one block\" (or another number of blocks): the ResNet's "
    "downsampling and head with fewer residual blocks than its own, an ablation the paper "
    "has not (no paper value). It answers a "
    "critique of the experiment: users of the paper's reference code report that the "
    "downsampling and head alone reach under 0.6 % after ~100 epochs and that one "
    "residual block matches six; the authors agreed the ResNet baseline was too large.\n")


def _md_rows(w, header: Sequence[str], lines: Sequence[list[str]]) -> None:
    w("| " + " | ".join(header) + " |\n")
    w("|" + "|".join("---" if i < 4 else "---:" for i in range(len(header))) + "|\n")
    for cells in lines:
        w("| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n")


def _devices(row: Row) -> str:
    return ", ".join(sorted({str(r.metrics.get("device")) for r in row.runs}))


def _test_set_text(rows: Sequence[Row]) -> str:
    """Which test images the test errors are over: the full test set unless a row says
    otherwise (its Scale: "test n=N", a run of data.test_size=N)."""
    sizes = sorted({row.key["test_size"] for row in rows if row.key["test_size"] is not None})
    if not sizes:
        return "Test error over the full test set."
    part = f"over the first {' / '.join(f'{n:,}' for n in sizes)} test images only"
    if len(sizes) == 1 and all(row.key["test_size"] is not None for row in rows):
        return f"Test error {part} (Scale: test n=), not the full test set."
    return f"Test error over the full test set, but {part} in rows whose Scale says test n=."


def _mnist_md(w, rows: Sequence[Row], sources: Sequence[str]) -> None:
    w(f"From {sum(len(r.runs) for r in rows)} finished run(s) below: "
      f"{', '.join(sources)}. Mean ± sample std over distinct seeds where a row has several "
      "(the runs of one seed are averaged first; \"0 (x2)\": seed 0 run twice); a row's "
      "runs share model, solver, scale, levers and optimizer settings, and Scale names an "
      "optimizer setting where rows differ in it.\n"
      f"{_test_set_text(rows)} Activations: bytes autograd saves for backward "
      f"in one training iteration, whole model / the ODE block or {_blocks_text(rows)} "
      "alone (device-independent; the paper gives memory only as O(·)). GPU train peak: "
      "CUDA memory a training iteration needed at peak above the weights, optimizer state "
      "and data it started with, the last epoch's ('-' on a CPU). s / iter: median "
      "seconds per training iteration. NFE-F/B: function evaluations per forward / "
      "backward pass, mean over the last epoch. Gradient error: relative L2 error of all "
      "parameter gradients of the trained net, by its own gradient method, solver and "
      "tolerance, against a float64 reference solve (`odenet gradients`, gradients.json; "
      "'-': not measured). Paper: L = ResNet layers, L~ = NFE; no paper value for a row "
      "the paper has not. n: seeds with a test error. Paper in seed range: whether the "
      "paper's test error lies within [min, max] of the seeds' test errors (shown, %); "
      "'–': one seed, no spread.\n")
    if any(row.ablation for row in rows):
        w(ABLATION_NOTE)
    w("\n")
    lines = []
    for row in rows:
        st, p = row.stats, row.paper
        nfe = has_ode_block(row.model)
        lines.append([
            row.title,
            solver_label(row.key) if nfe else "-",
            row.scale,
            row.seeds_text,
            str(st["test_error"].n),
            _pm(st["test_error"], 100.0, 2),
            f"{p.test_error * 100:.2f}" if p else "-",
            _in_spread(row),
            _params(st["params"]),
            f"{p.params / 1e6:.2f} M" if p else "-",
            f"{_mib(st['activation_mib'])} / {_mib(st['activation_block_mib'])}",
            _mib(st["cuda_train_peak_mib"]),
            p.memory if p else "-",
            _pm(st["sec_per_iter"], digits=3),
            _pm(st["sec_per_test_batch"], digits=3),
            p.time if p else "-",
            _pm(st["nfe_forward_mean"], digits=1) if nfe else "-",
            _pm(st["nfe_backward_mean"], digits=1) if nfe else "-",
            _sig(st["gradient_error"]) if nfe else "-",
            _devices(row),
        ])
    _md_rows(w, MD_HEADER, lines)
    if not rows:
        w("\n(no finished runs)\n")


def _density_md(w, rows: Sequence[Row], sources: Sequence[str]) -> None:
    w(f"From {sum(len(r.runs) for r in rows)} finished density run(s) below: "
      f"{', '.join(sources)}. Mean ± sample std over distinct seeds, as in Table 1. NLL: "
      "negative log-likelihood of the test / training points, nats per point (the last "
      "epoch's). NFE-F/B: function evaluations per forward / backward solve, mean over "
      "the last epoch. s / iter: median seconds per training iteration.\n\n")
    lines = []
    for row in rows:
        st = row.stats
        nfe = has_ode_block(row.model)
        lines.append([
            row.title,
            solver_label(row.key) if nfe else "-",
            row.scale,
            row.seeds_text,
            _pm(st["test_nll"], digits=4),
            _pm(st["train_nll"], digits=4),
            _pm(st["nfe_forward_mean"], digits=1) if nfe else "-",
            _pm(st["nfe_backward_mean"], digits=1) if nfe else "-",
            _pm(st["sec_per_iter"], digits=3),
            _params(st["params"]),
            _devices(row),
        ])
    _md_rows(w, DENSITY_MD_HEADER, lines)
    if not rows:
        w("\n(no finished runs)\n")


def render_markdown(rows: Sequence[Row], excluded: Sequence[Run], sources: Sequence[str],
                    invalid: Sequence[Invalid] = (), density: Sequence[Row] | None = None,
                    mnist: bool = True) -> str:
    """table.md: Table 1 (unless ``mnist`` is false: no classification run was found),
    the density table (when ``density`` is given), then the runs and files left out."""
    out = io.StringIO()
    w = out.write
    if mnist:
        w("# Table 1: MNIST, ours beside the paper's\n\n")
        _mnist_md(w, rows, sources)
    if density is not None:
        w(f"\n## {DENSITY_TITLE}\n\n" if mnist else f"# {DENSITY_TITLE}\n\n")
        _density_md(w, density, sources)
    w("\n## Runs not in the table (not finished)\n\n")
    if excluded or invalid:
        bases = sorted({r.base for r in excluded if r.base})
        if bases:
            w(f"Paths relative to {', '.join(bases)}.\n\n")
    if not excluded:
        w("None: every run found had finished.\n")
    else:
        w("| Run directory | Model | Solver | Seed | Status | Epochs | Reason |\n")
        w("|---|---|---|---|---|---|---|\n")
        for r in excluded:
            m = r.metrics
            reason = str(m.get("reason") or "-").replace("|", "/").replace("\n", " ")
            w(f"| {_name(r)} | {m.get('model')} | "
              f"{solver_label(m) if r.has_ode_block else '-'} "
              f"| {m.get('seed', '-')} | {r.status} | "
              f"{m.get('epochs', '-')}/{m.get('epochs_planned', '-')} | {reason} |\n")
    if invalid:
        w("\nFiles that failed validation (odenet/run/record.py); their runs are left out:\n\n")
        w("| File | Reason |\n|---|---|\n")
        for bad in invalid:
            w(f"| {_name(bad)} | {bad.reason.replace('|', '/')} |\n")
    return out.getvalue()


def _name(item: Run | Invalid) -> str:
    """The path a report writes: relative to the directory searched (load_runs)."""
    return item.name or str(item.dir if isinstance(item, Run) else item.path)


def csv_header(task: str = record.CLASSIFY) -> list[str]:
    cols = ["model"] + (["paper_model"] if task == record.CLASSIFY else [])
    cols += list(SOLVER_KEYS) + list(SCALE_KEYS) + ["n_runs", "n_seeds", "seeds"]
    for name in AVERAGED_OF[task]:
        cols += [f"{name}_mean", f"{name}_std"]
    if task == record.CLASSIFY:
        cols += ["paper_test_error", "paper_params", "paper_memory", "paper_time"]
        cols += [f"{name}_{s}" for name in DERIVED for s in ("mean", "std")]
    cols += ["run_dirs"]
    if task == record.CLASSIFY:  # after run_dirs: the earlier columns keep their places
        cols += ["residual_blocks", "test_error_min", "test_error_max", "paper_in_seed_range"]
    return cols + list(RECIPE_KEYS + OPTIM_KEYS)  # the rest of a row's key, last likewise


def _mean_std(st: Stat) -> list[str]:
    return ["" if st.mean is None else repr(st.mean), "" if st.std is None else repr(st.std)]


def render_csv(rows: Sequence[Row], task: str = record.CLASSIFY) -> str:
    """table.csv (task classify) or table_density.csv: one line per row; ``seeds``
    lists every run's seed (repeats included), ``n_seeds`` the distinct ones."""
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow(csv_header(task))
    for row in rows:
        p = row.paper
        line = [row.model] + ([row.model if p else ""] if task == record.CLASSIFY else [])
        line += ["" if row.key[k] is None else row.key[k] for k in SOLVER_KEYS + SCALE_KEYS]
        line += [len(row.runs), len({repr(s) for s in row.seeds}),
                 ";".join(str(s) for s in row.seeds)]
        for name in AVERAGED_OF[task]:
            line += _mean_std(row.stats[name])
        if task == record.CLASSIFY:
            line += [p.test_error, p.params, p.memory, p.time] if p else ["", "", "", ""]
            for name in DERIVED:
                line += _mean_std(row.stats[name])
        line += [";".join(_name(r) for r in row.runs)]
        if task == record.CLASSIFY:
            st = row.stats["test_error"]
            inside = st.spans(p.test_error) if p else None
            line += ["" if row.key["residual_blocks"] is None else row.key["residual_blocks"],
                     "" if st.min is None else repr(st.min),
                     "" if st.max is None else repr(st.max),
                     "" if inside is None else str(inside).lower()]
        line += ["" if row.key[k] is None else row.key[k] for k in RECIPE_KEYS + OPTIM_KEYS]
        wr.writerow(line)
    return out.getvalue()


def render_excluded_csv(excluded: Sequence[Run], invalid: Sequence[Invalid] = ()) -> str:
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow(["run_dir", "model", "seed", "status", "epochs", "epochs_planned", "reason"])
    for r in excluded:
        m = r.metrics
        wr.writerow([_name(r), m.get("model"), m.get("seed"), r.status, m.get("epochs"),
                     m.get("epochs_planned"), m.get("reason") or ""])
    for bad in invalid:  # status "invalid": the file named in run_dir failed validation
        wr.writerow([_name(bad), "", "", "invalid", "", "", bad.reason])
    return out.getvalue()


def write_table(runs: Sequence[Run], out_dir: str | Path, sources: Sequence[str] = (),
                invalid: Sequence[Invalid] = ()) -> dict:
    """Write table.md, excluded_runs.csv, table.csv (unless every run found is a density
    run: no empty Table 1) and table_density.csv (when there are density runs) to
    out_dir; return their paths (None: not written)."""
    out = Path(out_dir)
    rows, excluded = build_rows(runs)
    has_density = any(r.metrics["task"] == record.DENSITY for r in runs)
    # no empty Table 1 for a directory of density runs; with no runs at all, it says so
    mnist = any(is_table1_run(r) for r in runs) or not has_density
    density, d_excluded = build_rows(runs, record.DENSITY) if has_density else ([], [])
    excluded = sorted(excluded + d_excluded, key=lambda r: str(r.dir))
    paths = {"md": out / "table.md", "csv": out / "table.csv" if mnist else None,
             "density_csv": out / "table_density.csv" if has_density else None,
             "excluded_csv": out / "excluded_runs.csv"}
    write_atomic(paths["md"], render_markdown(rows, excluded, [str(s) for s in sources],
                                              invalid, density if has_density else None,
                                              mnist))
    if mnist:
        write_atomic(paths["csv"], render_csv(rows))
    if has_density:
        write_atomic(paths["density_csv"], render_csv(density, record.DENSITY))
    write_atomic(paths["excluded_csv"], render_excluded_csv(excluded, invalid))
    return {"rows": rows, "density_rows": density, "excluded": excluded,
            "invalid": list(invalid), **paths}


DEFAULT_OUT = "outputs/report/latest"


TABLE_KEYS = {
    "run_dirs": "directories searched (recursively) for metrics.json, also given first as "
                "paths (default: [outputs])",
    "out": f"where table.md, table.csv go (default: {DEFAULT_OUT})",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(usage("odenet table", "Table 1 (test error, params, memory, time, NFE) and the "
                    "density models' table (NLL, NFE, time) from run directories: reads every "
                    "metrics.json below them, writes table.md, table.csv (MNIST runs), "
                    "table_density.csv (density runs) and excluded_runs.csv; paths in them are "
                    "relative to the run directories.", TABLE_KEYS,
                    "odenet table outputs/runs out=outputs/report/mine"))
        return 0
    args = report_settings("odenet table", argv, TABLE_KEYS,
                           {"run_dirs": ["outputs"], "out": DEFAULT_OUT}, lists=("run_dirs",))
    if args is None:
        return 2
    try:
        # the table reads neither histories nor evaluations (a bad one leaves its run in);
        # it reads gradients.json (its gradient-error column)
        runs, invalid = load_runs(args["run_dirs"], history=False, evaluation=False)
    except ReportError as e:
        print(f"odenet table: error: {e}", file=sys.stderr)
        return 1
    print_invalid("odenet table", invalid)
    try:
        res = write_table(runs, args["out"], args["run_dirs"], invalid)
    except OSError as e:  # e.g. the disk filled up since the check
        print(f"odenet table: error: writing to {args['out']}: {os_reason(e)}", file=sys.stderr)
        return 2
    rows = res["rows"] + res["density_rows"]
    n_fin = sum(len(r.runs) for r in rows)
    files = [res[k] for k in ("md", "csv", "density_csv") if res[k] is not None]
    other = sum(r.metrics["task"] not in AVERAGED_OF for r in runs)
    print(f"odenet table: {len(rows)} row(s) from {n_fin} finished run(s)"
          + (f" ({len(res['density_rows'])} of density models)" if res["density_rows"] else "")
          + f", {len(res['excluded'])} not finished"
          + (f", {other} run(s) of other tasks left out" if other else "")
          + (f", {len(invalid)} invalid file(s) listed" if invalid else "")
          + f" -> {', '.join(str(p) for p in files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
