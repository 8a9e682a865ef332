"""Training one model: the shared trainer (trainer.py; one iteration: iteration.py), the
task it learns (tasks.py), its optimizer (optim.py), checkpoint.pt (checkpoint_file.py;
what a run keeps in it: run_state.py; whether it may be continued: resume.py), how a run
stops early (stopping.py), what a run shows and logs while it trains (progress.py), its
measurements (measure.py), its process (runtime.py, openmp.py). Nothing here imports
torch at package import, so `odenet --help` stays fast."""
