"""report.md of `odenet reproduce`: Table 1, the paper's claims measured, and the figures
drawn from the runs (table.md/csv, <figure>.png/csv beside it), with a header saying how
they were made. Reads run directories only."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from odenet.report.claims import measured_claims
from odenet.report.figure_registry import of_task
from odenet.report.runs import METRICS, ReportError, Run, load_runs
from odenet.report.table import write_table
from odenet.run import record
from odenet.run.files import write_atomic


@dataclass
class Invocation:
    """What report.md says of the reproduction that wrote it."""

    command: str
    experiment: str
    machine: str                    # the machine it ran on, in words
    root: str | None                # where the runs live (the report's paths are relative)
    timings: dict[str, float] = field(default_factory=dict)  # what took how many seconds
    wall: str | None = None         # the plan's wall time over invocations, in words
    failures: list[str] = field(default_factory=list)        # the steps that did not complete


@dataclass
class _Runs:
    table: list[Run]
    figures: dict[str, list[Run]]   # the runs each figure reads
    invalid: list                   # run directories not read, with the reason
    table_result: dict              # write_table's


def write_report(table_dirs: list[Path], sweeps: list[tuple[str, list[Path]]],
                 report_dir: Path, invocation: Invocation) -> Path:
    """table + figures + report.md in report_dir from the Table 1 runs and the sweeps'
    (figure, run directories); returns report.md's path. ReportError without a Table 1
    run."""
    table_dirs = [d for d in table_dirs if (d / METRICS).exists()]
    if not table_dirs:
        raise ReportError("no Table 1 run wrote metrics.json; nothing to report")
    root = Path(invocation.root or ".")  # the report's paths are relative to it
    runs = _read(table_dirs, sweeps, root, report_dir)
    written, skipped = {}, {}
    for f in of_task(record.CLASSIFY):
        w, s = f.make(runs.figures[f.name], report_dir)
        written.update(w)
        skipped.update(s)
    md = _header(invocation)
    for bad in runs.invalid[len(runs.table_result["invalid"]):]:  # the table lists its own
        md += [f"- Not read: `{bad.name}`: {bad.reason}"]
    for f in of_task(record.CLASSIFY):  # evaluations of a checkpoint changed since
        md += [f"- {note}" for note in f.notes(runs.figures[f.name])]
    # drop its own title; its sections become subsections of "Table 1"
    table_md = runs.table_result["md"].read_text().split("\n", 1)[1].replace("\n## ", "\n### ")
    md += ["## Table 1", table_md]
    md += ["## Measured against the paper's claims", ""]
    md += [f"- {line}" for line in measured_claims(runs.table, runs.figures)] or ["- (no data)"]
    md += ["", "## Figures", ""] + _figures(written, skipped)
    path = report_dir / "report.md"
    write_atomic(path, "\n".join(md) + "\n")
    return path


def _read(table_dirs: list[Path], sweeps: list[tuple[str, list[Path]]], root: Path,
          report_dir: Path) -> _Runs:
    """The runs, the table written, and the runs of each figure."""
    table_runs, invalid = load_runs(table_dirs, base=root)
    res = write_table(table_runs, report_dir, [str(root / "table")], invalid)
    sweep_runs: dict[str, list] = {}
    for figure, dirs in sweeps:
        dirs = [d for d in dirs if (d / METRICS).exists()]
        runs, bad = load_runs(dirs, base=root) if dirs else ([], [])
        sweep_runs.setdefault(figure, []).extend(runs)
        invalid += bad
    # Each figure reads the Table 1 runs and the sweeps made for it; memory reads every
    # run (the fig3c sweep's ODE-Nets show the adjoint's flat memory across NFE beside
    # the growth of backprop through the solver)
    fig_runs = {f.name: table_runs + sweep_runs.get(f.name, []) for f in of_task(record.CLASSIFY)}
    fig_runs["memory"] = table_runs + [r for rs in sweep_runs.values() for r in rs]
    return _Runs(table_runs, fig_runs, invalid, res)


def _header(inv: Invocation) -> list[str]:
    md = ["# odenet: Table 1 and Figure 3 of Chen et al. (2018), reproduced\n",
          f"- Command: `{inv.command}`",
          f"- Scale: `experiment={inv.experiment}`"
          + (" (the paper's recipe: 160 epochs)" if inv.experiment == "paper" else
             " (a compressed schedule, not the paper's 160 epochs: see "
             f"configs/experiment/{inv.experiment}.yaml)"),
          f"- Machine: {inv.machine}",
          f"- Written: {_dt.datetime.now().isoformat(timespec='seconds')}; runs under "
          f"`{inv.root}` (the paths below are relative to it)",
          "- Wall time of this invocation: " + ", ".join(
              f"{k} {v / 60:.1f} min" for k, v in inv.timings.items()),
          *([f"- Wall time of the plan's runs under `{inv.root}`, over {inv.wall}"]
            if inv.wall else []),
          ""]
    if inv.failures:
        md += ["**Incomplete:** " + "; ".join(inv.failures), ""]
    return md


def _figures(written: dict, skipped: dict) -> list[str]:
    md = []
    for f in of_task(record.CLASSIFY):
        name = f.name
        if name in written:
            data = f" Data: [{name}.csv]({name}.csv)" if f.csv else ""
            md += [f"![{name}]({name}.png)", "", f"*{f.caption}*{data}", ""]
        else:
            md += [f"*{name}: not drawn — {skipped.get(name, 'no data')}*", ""]
    return md
