"""Every figure odenet draws, in one place: ``FIGURES``, one ``Figure`` per entry.

An entry says which runs the figure reads (``task``: the runs of that task), how it is
drawn and what it writes, and its caption (report.md). ``odenet figures``, ``odenet
reproduce`` and the tests iterate over it. Drawing functions are ``"module:function"``
strings, imported when the figure is drawn: the MNIST figures are the report's
(rows: odenet/report/mnist_figures.py, drawings: odenet/report/mnist_drawing.py,
torch-free); the density figures rebuild models from
checkpoints (odenet/analysis/density_figures.py, torch), so this module sits above report and cnf.

Adding a figure: its rows and draw functions (or one write function) and an entry here
(DEVELOPERS.md, "Where a change goes").
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odenet.config.command_line import SettingsError, usage, wants_help
from odenet.report.arguments import report_settings
from odenet.report.mnist_figures import NoData
from odenet.report.runs import ReportError, Run, load_runs, print_invalid
from odenet.run.files import os_reason, write_csv
from odenet.run.record import CLASSIFY, DENSITY, EVALUATION, HISTORY

DEFAULT_OUT = "outputs/report/latest"


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Figure:
    """One figure. Either ``rows`` + ``draw``: ``rows(runs) -> list[dict]`` (the data, and
    the CSV when ``csv``), ``draw(rows, png_path)`` (raises NoData when there is nothing
    to draw); or ``write`` alone: ``write(runs, out_dir) -> ({name: png}, {name: why
    skipped})`` for a figure that makes one file per dataset."""

    name: str
    caption: str
    task: str  # the figure reads the runs of this task (odenet/run/record.py)
    rows: str | None = None
    draw: str | None = None
    write: str | None = None
    csv: bool = True
    evaluations: bool = False  # drawn from evaluation.json (odenet evaluate)
    history: bool = False  # drawn from the history.jsonl of finished ODE-block runs

    def notes(self, runs: Sequence[Run]) -> list[str]:
        """What of the runs it reads is left out, one line each: an evaluation.json whose
        checkpoint changed since it was evaluated, the cut last line of a finished run's
        history.jsonl (load_runs)."""
        out = []
        for r in self.select(runs):
            if self.evaluations and r.evaluation_skipped:
                out.append(f"{self.name}: left out {r.name or r.dir}/{EVALUATION}: "
                           f"{r.evaluation_skipped}")
            if self.history and r.history_note and r.finished and r.has_ode_block:
                have, want = len(r.epochs()), r.metrics.get("epochs")
                lost = f" ({have} of {want} epoch records)" if have != want else ""
                out.append(f"{self.name}: {r.name or r.dir}/{HISTORY}: {r.history_note}"
                           f"{lost}")
        return out

    def select(self, runs: Sequence[Run]) -> list[Run]:
        return [r for r in runs if r.metrics.get("task") == self.task]

    def make(self, runs: Sequence[Run], out_dir: str | Path
             ) -> tuple[dict[str, Path], dict[str, str]]:
        """Draw it from the runs it reads among ``runs``: ({name: png}, {name: why not})."""
        out, runs = Path(out_dir), self.select(runs)
        if self.write:
            return _load(self.write)(runs, out)
        rows = _load(self.rows)(runs)
        try:
            _load(self.draw)(rows, out / f"{self.name}.png")
        except NoData as e:
            return {}, {self.name: str(e)}
        if self.csv:
            write_csv(out / f"{self.name}.csv", rows)
        return {self.name: out / f"{self.name}.png"}, {}


_R = "odenet.report.mnist_figures"  # the rows
_D = "odenet.report.mnist_drawing"  # the drawings
FIGURES: dict[str, Figure] = {f.name: f for f in (
    Figure("fig3a", "Fig. 3a: NFE forward vs numerical error of the trained ODE-Net's block "
           "(re-solved at each tolerance; error against a float64 reference solve).",
           CLASSIFY, f"{_R}:fig3ab_rows", f"{_D}:draw_fig3a", evaluations=True),
    Figure("fig3b", "Fig. 3b: NFE forward vs relative wall time of the forward pass.",
           CLASSIFY, f"{_R}:fig3ab_rows", f"{_D}:draw_fig3b", evaluations=True),
    Figure("fig3c", "Fig. 3c: NFE forward vs NFE backward over training iterations, a "
           "panel per solver (the paper reported backward ≈ half of forward with its "
           "LSODE-family solvers; LSODA is that family) — this is what we measured.",
           CLASSIFY, f"{_R}:fig3c_rows", f"{_D}:draw_fig3c", history=True),
    Figure("fig3d", "Fig. 3d: NFE forward during training.",
           CLASSIFY, f"{_R}:fig3d_rows", f"{_D}:draw_fig3d", history=True),
    Figure("memory", "Measured activation memory (saved for backward) of the ODE block / "
           "residual blocks vs NFE or depth: the O(1) / O(L~) / O(L) of Table 1.",
           CLASSIFY, f"{_R}:memory_rows", f"{_D}:draw_memory"),
    Figure("tradeoff", "Validation error against training core-hours, and NFE per training "
           "iteration against epoch, one colour per recipe (runs with data.val_size): "
           "the picture for choosing a recipe.",
           CLASSIFY, f"{_R}:tradeoff_rows", f"{_D}:draw_tradeoff", history=True),
    # density_<dataset>.png (target | planar | CNF, the paper's Figure 4) and
    # flow_<dataset>.png (noise to data over t, Figures 5/6), from checkpoints; no CSV
    Figure("density", "Density models on 2-D data: target, planar flow and CNF (Fig. 4), "
           "and the CNF's flow from noise to data (Figs. 5/6).", DENSITY,
           write="odenet.analysis.density_figures:write_density_figures", csv=False),
)}


def of_task(task: str) -> list[Figure]:
    return [f for f in FIGURES.values() if f.task == task]


def write_figures(runs: Sequence[Run], out_dir: str | Path,
                  which: Sequence[str] = tuple(FIGURES)
                  ) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw the figures named in ``which``; return ({name: png path}, {name: why skipped})."""
    written, skipped = {}, {}
    for name in which:
        w, s = FIGURES[name].make(runs, out_dir)
        written.update(w)
        skipped.update(s)
    return written, skipped


def _keys() -> dict[str, str]:
    return {
        "run_dirs": "directories searched recursively for runs, also given first as paths "
                    "(default: [outputs])",
        "out": f"where the PNG and CSV files go (default: {DEFAULT_OUT})",
        "only": f"the figures to draw, one or a list (default: all): {', '.join(FIGURES)}",
    }


def _check_only(args: dict) -> None:
    unknown = [n for n in args["only"] if n not in FIGURES]
    if unknown or not args["only"]:
        raise SettingsError(f"only={','.join(unknown)}: not a figure (figures: "
                            f"{', '.join(FIGURES)})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(usage("odenet figures", "Figure 3 (a)-(d), memory.png (each with its CSV) and "
                    "the density figures from run directories (metrics.json, history.jsonl, "
                    "evaluation.json, checkpoint.pt below them; an evaluation.json whose "
                    "checkpoint changed since is left out). Run paths in the CSVs are relative "
                    "to the run directories.", _keys(),
                    "odenet figures outputs/runs out=outputs/report/mine only=[fig3a,fig3b]"))
        return 0
    args = report_settings("odenet figures", argv, _keys(),
                           {"run_dirs": ["outputs"], "out": DEFAULT_OUT, "only": list(FIGURES)},
                           lists=("run_dirs", "only"), check=_check_only)
    if args is None:
        return 2
    try:
        runs, invalid = load_runs(args["run_dirs"])
    except ReportError as e:
        print(f"odenet figures: error: {e}", file=sys.stderr)
        return 1
    print_invalid("odenet figures", invalid)
    which = args["only"]
    for name in which:
        for note in FIGURES[name].notes(runs):
            print(f"odenet figures: {note}", file=sys.stderr)
    try:
        written, skipped = write_figures(runs, args["out"], which)
    except OSError as e:  # e.g. the disk filled up since the check
        print(f"odenet figures: error: writing to {args['out']}: {os_reason(e)}",
              file=sys.stderr)
        return 2
    for name, why in skipped.items():
        print(f"odenet figures: {name} skipped: {why}", file=sys.stderr)
    if not written:
        print("odenet figures: error: no figure could be drawn from the runs found",
              file=sys.stderr)
        return 1
    with_csv = any(FIGURES[n].csv for n in written if n in FIGURES)
    print(f"odenet figures: wrote {', '.join(p.name for p in written.values())}"
          f"{' (+ CSV)' if with_csv else ''} to {args['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
