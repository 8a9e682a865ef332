"""`python -m bench.bench_steps CHECKPOINT`: the forward solve's steps of a trained ODE-Net
on one training batch, in fp32 and under bf16 autocast: each step's size and error ratio
(what the controller saw). Shows why bf16 can take more steps: its rounding noise in f
raises the error ratio of small steps, which limits how fast the step may grow.
"""

from __future__ import annotations

import argparse

import torch

import odenet.solvers.rk as rk
from odenet.training.checkpoint_file import load_model
from odenet.training.runtime import autocast

from .bench_training import training_batches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)[0].train()
    x, _ = training_batches("cpu", 1)[0]
    seen: list[str] = []
    error_ratio = rk._Stepper.error_ratio

    def recorded(self, y, y1, ks, h, rtol, atol):
        ratio = error_ratio(self, y, y1, ks, h, rtol, atol)
        seen.append(f"h={h:.3f} ratio={ratio:.3f}")
        return ratio

    rk._Stepper.error_ratio = recorded
    try:
        for precision in ("fp32", "bf16"):
            seen.clear()
            with torch.no_grad(), autocast(precision, x.device):
                model(x)
            print(f"{precision}: {len(seen)} steps: " + ", ".join(seen))
    finally:
        rk._Stepper.error_ratio = error_ratio
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
