"""The report: Table 1 and Figure 3 from run directories (reads only what runs wrote)."""

from odenet.report.runs import EVALUATION, HISTORY, METRICS, Invalid, ReportError, Run, load_runs

__all__ = ["EVALUATION", "HISTORY", "METRICS", "Invalid", "ReportError", "Run", "load_runs"]
