"""`odenet reproduce`: every run behind Table 1 and Figure 3 of the paper from one command.
It reads the plan (configs/reproduce.yaml), turns it into jobs (trainings, then the
evaluation and gradient error of their checkpoints), runs them through an executor (this
machine's process pool, or submitit: SLURM or submitit's local processes) with a progress
line and the time left, skips what is done and resumes what was interrupted, records each
invocation's wall time (ROOT/wall.csv), and writes report.md (odenet.report.markdown)."""

from odenet.reproduce.command import main

__all__ = ["main"]
