"""`make bench-openmp`: one ODE-Net adjoint iteration under each OpenMP wait policy,
alone and with a second identical training running at the same time.

Each measurement is a fresh process: OpenMP reads the policy once, when torch loads it.
The numbers behind odenet/training/openmp.py's choice.

    python -m bench.bench_openmp [--iters 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

# libgomp spins 300,000 rounds by default when OMP_WAIT_POLICY is unset
POLICIES = {
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "libgomp default (spin 300000)": {"GOMP_SPINCOUNT": "300000"},
}


def child(iters: int) -> None:
    """Median seconds of one ODE-Net adjoint training iteration (printed)."""
    import torch
    import torch.nn.functional as F

    from odenet.models import build_model

    from .bench_training import training_batches

    torch.manual_seed(0)
    model = build_model({"name": "odenet"}, {"method": "dopri5", "rtol": 1e-3})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = training_batches("cpu", 4)
    times = []
    for i in range(iters + 2):  # the first two warm up
        x, y = batches[i % len(batches)]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    print(statistics.median(times[2:]))


def measure(env: dict, iters: int, copies: int) -> list[float]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    cmd = [sys.executable, "-m", "bench.bench_openmp", "--child", "--iters", str(iters)]
    procs = [subprocess.Popen(cmd, env=base | env, stdout=subprocess.PIPE, text=True)
             for _ in range(copies)]
    return [float(p.communicate()[0].split()[-1]) for p in procs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.iters)
        return 0
    print(f"{'policy':32s} {'alone':>8s}   two trainings at once (each)")
    for name, env in POLICIES.items():
        alone = measure(env, args.iters, 1)[0]
        pair = measure(env, args.iters, 2)
        print(f"{name:32s} {alone:7.3f}s   {pair[0]:.3f}s, {pair[1]:.3f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
