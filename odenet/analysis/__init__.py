"""Trained checkpoints re-solved and measured: ``odenet evaluate`` (the solution's error,
NFE and accuracy per tolerance, evaluate.py), ``odenet gradients`` (each gradient method's
error and cost: the command gradients.py, its measurement gradient_error.py, its figure
gradient_figure.py), and what both share (probe.py)."""
