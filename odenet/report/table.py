"""`odenet table [RUN_DIRS...]`: Table 1 from run directories, ours beside the paper's.

Finished runs are grouped by model, solver settings and scale (experiment, epochs,
training-set size, batch size, device) and averaged over seeds (mean, and sample std
where a group has several runs). Runs that did not finish (running, failed,
interrupted) are listed in a section of their own and never enter a mean, and so are
run files that fail validation (odenet/record.py), by path and reason.
Paper numbers, titles and Table 1's row order are the model registry's
(odenet/registry.py).
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from odenet import record
from odenet.files import write_atomic
from odenet.registry import MODELS, ModelSpec, PaperRow
from odenet.report._args import ArgumentParser
from odenet.report.runs import (
    Invalid,
    ReportError,
    Run,
    has_ode_block,
    load_runs,
    num,
    print_invalid,
    residual_blocks,
    solver_label,
)

SOLVER_KEYS = ("solver_method", "solver_rtol", "solver_atol", "solver_adjoint",
               "solver_adjoint_norm", "solver_step_size", "solver_last_step")
SCALE_KEYS = ("experiment", "epochs_planned", "train_size", "test_size", "batch_size", "device")
GROUP_KEYS = ("model",) + SOLVER_KEYS + SCALE_KEYS
# Measures averaged over seeds, in table.csv order (an explicit order: table.csv's columns
# stay put when the record gains a field; the density runs' NLLs are not Table 1's).
AVERAGED = ("test_error", "train_error", "params", "nfe_forward_mean", "nfe_backward_mean",
            "activation_mib", "activation_block_mib", "cuda_peak_mib", "rss_peak_mib",
            "sec_per_iter", "sec_per_test_batch", "epochs", "wall_seconds")


def _check_keys() -> None:
    """The table's keys are the record's fields: a renamed field fails here, at import."""
    settings = set(record.names(record.Metrics, record.SETTING))
    measures = set(record.names(record.Metrics, record.MEASURE))
    bad = [k for k in SOLVER_KEYS + SCALE_KEYS if k not in settings]
    bad += [k for k in AVERAGED if k not in measures]
    if bad:
        raise ImportError(f"odenet.report.table: not in odenet.record.Metrics: {bad}")


_check_keys()


@dataclass
class Stat:
    """Mean and sample std over the runs of a group that report the value."""

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


@dataclass
class Row:
    """One table row: a group of finished runs that differ only in seed."""

    key: dict
    runs: list[Run]
    stats: dict[str, Stat]

    @property
    def model(self) -> str:
        return str(self.key["model"])

    @property
    def spec(self) -> ModelSpec | None:
        return MODELS.get(self.model)

    @property
    def paper(self) -> PaperRow | None:
        """The paper's row of this model (odenet trains with the adjoint, rknet by backprop
        through the solver: config validation holds each to its paper row)."""
        return self.spec.paper if self.spec else None

    @property
    def seeds(self) -> list:
        return sorted((r.metrics.get("seed") for r in self.runs), key=lambda s: (s is None, s))


def group_key(m: dict) -> dict:
    key = {k: m.get(k) for k in GROUP_KEYS}
    if key["solver_last_step"] is None and key["solver_step_size"] is None:
        # adaptive steps always clamp or overshoot; null: a record from before the
        # setting existed, when they clamped
        key["solver_last_step"] = "clamp"
    if not has_ode_block(m.get("model")):
        # Solver settings of a model without an ODE block do not change it.
        for k in SOLVER_KEYS:
            key[k] = None
    return key


def _sort_key(key: dict):
    model = key["model"]
    order = list(MODELS).index(model) if model in MODELS else len(MODELS)  # Table 1's
    rtol = num(key["solver_rtol"])
    return (order, str(model), str(key["experiment"]), str(key["solver_method"]),
            bool(key["solver_adjoint"]), str(key["solver_adjoint_norm"]),
            -(rtol if rtol is not None else 0.0), str(key["device"]),
            num(key["epochs_planned"]) or 0, num(key["train_size"]) or 0)


def is_table1_run(run: Run) -> bool:
    """MNIST classification runs (``task`` classify, or no task key: Contract 2 as first
    written); other tasks (e.g. task=density, the CNF experiments) are not Table 1's."""
    return run.metrics["task"] == record.CLASSIFY


def build_rows(runs: Sequence[Run]) -> tuple[list[Row], list[Run]]:
    """Group finished classification runs into rows; return (rows, runs not finished).
    Runs of other tasks are left out of both."""
    groups: dict[tuple, list[Run]] = {}
    keys: dict[tuple, dict] = {}
    excluded = []
    for r in runs:
        if not is_table1_run(r):
            continue
        if not r.finished:
            excluded.append(r)
            continue
        k = group_key(r.metrics)
        t = tuple((name, repr(k[name])) for name in GROUP_KEYS)
        groups.setdefault(t, []).append(r)
        keys[t] = k
    rows = []
    for t, members in groups.items():
        stats = {}
        for name in AVERAGED:
            vals = [num(r.metrics.get(name)) for r in members]
            stats[name] = Stat([v for v in vals if v is not None])
        rows.append(Row(key=keys[t], runs=members, stats=stats))
    rows.sort(key=lambda row: _sort_key(row.key))
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


def _params(stat: Stat) -> str:
    if stat.mean is None:
        return "-"
    if stat.std:  # differing counts within one group would be a bug: show it
        return f"{stat.mean:,.0f} ± {stat.std:,.0f}"
    return f"{stat.mean:,.0f}"


def model_name(key: dict) -> str:
    spec = MODELS.get(key["model"])
    return spec.title if spec else str(key["model"])


def _blocks_text(rows: Sequence[Row]) -> str:
    """'the 6 residual blocks', from the runs' records (several depths: no number)."""
    n = {residual_blocks(r.metrics) for row in rows for r in row.runs} - {None}
    return f"the {n.pop()} residual blocks" if len(n) == 1 else "the residual blocks"


def _scale(key: dict) -> str:
    parts = [str(key["experiment"])] if key["experiment"] is not None else []
    if key["epochs_planned"] is not None:
        parts.append(f"{key['epochs_planned']} ep")
    if key["train_size"] is not None:
        parts.append(f"n={key['train_size']}")
    if key["test_size"] is not None:
        parts.append(f"test n={key['test_size']}")
    return ", ".join(parts) or "-"


MD_HEADER = ("Model", "Solver", "Scale", "Seeds", "Test error (%)", "Paper (%)", "Params",
             "Paper params", "Activations (MiB): model / block", "Paper memory",
             "s / iter", "s / test batch", "Paper time", "NFE-F", "NFE-B", "Device")


def render_markdown(rows: Sequence[Row], excluded: Sequence[Run], sources: Sequence[str],
                    invalid: Sequence[Invalid] = ()) -> str:
    out = io.StringIO()
    w = out.write
    w("# Table 1: MNIST, ours beside the paper's\n\n")
    w(f"From {sum(len(r.runs) for r in rows)} finished run(s) below: "
      f"{', '.join(sources)}. Mean ± sample std over seeds where a row has several runs.\n"
      "Test error over the full test set. Activations: bytes autograd saves for backward "
      f"in one training iteration, whole model / the ODE block or {_blocks_text(rows)} "
      "alone (device-independent; the paper gives memory only as O(·)). s / iter: median "
      "seconds per training iteration. NFE-F/B: function evaluations per forward / "
      "backward pass, mean over the last epoch. Paper: L = ResNet layers, L~ = NFE.\n\n")
    w("| " + " | ".join(MD_HEADER) + " |\n")
    w("|" + "|".join("---" if i < 4 else "---:" for i in range(len(MD_HEADER))) + "|\n")
    for row in rows:
        st, p = row.stats, row.paper
        nfe = has_ode_block(row.model)
        cells = [
            model_name(row.key),
            solver_label(row.key) if nfe else "-",
            _scale(row.key),
            ", ".join(str(s) for s in row.seeds),
            _pm(st["test_error"], 100.0, 2),
            f"{p.test_error * 100:.2f}" if p else "-",
            _params(st["params"]),
            f"{p.params / 1e6:.2f} M" if p else "-",
            f"{_mib(st['activation_mib'])} / {_mib(st['activation_block_mib'])}",
            p.memory if p else "-",
            _pm(st["sec_per_iter"], digits=3),
            _pm(st["sec_per_test_batch"], digits=3),
            p.time if p else "-",
            _pm(st["nfe_forward_mean"], digits=1) if nfe else "-",
            _pm(st["nfe_backward_mean"], digits=1) if nfe else "-",
            ", ".join(sorted({str(r.metrics.get("device")) for r in row.runs})),
        ]
        w("| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n")
    if not rows:
        w("\n(no finished runs)\n")
    w("\n## Runs not in the table (not finished)\n\n")
    if not excluded:
        w("None: every run found had finished.\n")
    else:
        w("| Run directory | Model | Solver | Seed | Status | Epochs | Reason |\n")
        w("|---|---|---|---|---|---|---|\n")
        for r in excluded:
            m = r.metrics
            reason = str(m.get("reason") or "-").replace("|", "/").replace("\n", " ")
            w(f"| {r.dir} | {m.get('model')} | {solver_label(m) if r.has_ode_block else '-'} "
              f"| {m.get('seed', '-')} | {m.get('status')} | "
              f"{m.get('epochs', '-')}/{m.get('epochs_planned', '-')} | {reason} |\n")
    if invalid:
        w("\nFiles that failed validation (odenet/record.py); their runs are left out:\n\n")
        w("| File | Reason |\n|---|---|\n")
        for bad in invalid:
            w(f"| {bad.path} | {bad.reason.replace('|', '/')} |\n")
    return out.getvalue()


def csv_header() -> list[str]:
    cols = ["model", "paper_model"] + list(SOLVER_KEYS) + list(SCALE_KEYS) + ["n_runs", "seeds"]
    for name in AVERAGED:
        cols += [f"{name}_mean", f"{name}_std"]
    cols += ["paper_test_error", "paper_params", "paper_memory", "paper_time", "run_dirs"]
    return cols


def render_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow(csv_header())
    for row in rows:
        p = row.paper
        line = [row.model, row.model if p else ""]
        line += ["" if row.key[k] is None else row.key[k] for k in SOLVER_KEYS + SCALE_KEYS]
        line += [len(row.runs), ";".join(str(s) for s in row.seeds)]
        for name in AVERAGED:
            st = row.stats[name]
            line += ["" if st.mean is None else repr(st.mean),
                     "" if st.std is None else repr(st.std)]
        line += [p.test_error, p.params, p.memory, p.time] if p else ["", "", "", ""]
        line += [";".join(str(r.dir) for r in row.runs)]
        wr.writerow(line)
    return out.getvalue()


def render_excluded_csv(excluded: Sequence[Run], invalid: Sequence[Invalid] = ()) -> str:
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow(["run_dir", "model", "seed", "status", "epochs", "epochs_planned", "reason"])
    for r in excluded:
        m = r.metrics
        wr.writerow([r.dir, m.get("model"), m.get("seed"), m.get("status"), m.get("epochs"),
                     m.get("epochs_planned"), m.get("reason") or ""])
    for bad in invalid:  # status "invalid": the file named in run_dir failed validation
        wr.writerow([bad.path, "", "", "invalid", "", "", bad.reason])
    return out.getvalue()


def write_table(runs: Sequence[Run], out_dir: str | Path, sources: Sequence[str] = (),
                invalid: Sequence[Invalid] = ()) -> dict:
    """Write table.md, table.csv and excluded_runs.csv to out_dir; return their paths."""
    out = Path(out_dir)
    rows, excluded = build_rows(runs)
    paths = {"md": out / "table.md", "csv": out / "table.csv",
             "excluded_csv": out / "excluded_runs.csv"}
    write_atomic(paths["md"], render_markdown(rows, excluded, [str(s) for s in sources],
                                              invalid))
    write_atomic(paths["csv"], render_csv(rows))
    write_atomic(paths["excluded_csv"], render_excluded_csv(excluded, invalid))
    return {"rows": rows, "excluded": excluded, "invalid": list(invalid), **paths}


DEFAULT_OUT = "outputs/report/latest"


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(
        prog="odenet table",
        description="Table 1 (test error, params, memory, time, NFE) from run directories: "
                    "reads every metrics.json below RUN_DIRS, writes table.md and table.csv.")
    ap.add_argument("run_dirs", nargs="*", default=["outputs"], metavar="RUN_DIRS",
                    help="directories searched (recursively) for metrics.json "
                         "(default: outputs)")
    ap.add_argument("--out", default=DEFAULT_OUT,
                    help=f"where table.md / table.csv go (default: {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    try:
        runs, invalid = load_runs(args.run_dirs, history=False)
    except ReportError as e:
        print(f"odenet table: error: {e}", file=sys.stderr)
        return 1
    print_invalid("odenet table", invalid)
    res = write_table(runs, args.out, args.run_dirs, invalid)
    n_fin = sum(len(r.runs) for r in res["rows"])
    other = sum(not is_table1_run(r) for r in runs)
    print(f"odenet table: {len(res['rows'])} row(s) from {n_fin} finished run(s), "
          f"{len(res['excluded'])} not finished"
          + (f", {other} run(s) of other tasks left out" if other else "")
          + (f", {len(invalid)} invalid file(s) listed" if invalid else "")
          + f" -> {res['md']}, {res['csv']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
