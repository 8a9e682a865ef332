"""`make bench-threads`: one training at 2 threads against two trainings at 1 thread each,
in total images per second, on an idle machine and with a second process running.

Every training is a fresh process (OpenMP reads its settings once, when torch loads) that
trains the ODE-Net (adjoint, dopri5 1e-3, batch 128, ``--precision``) for ``--iters``
iterations after 2 of warm-up and prints its images per second; processes of one case
start together. "Loaded": a process spinning on one core (``--load`` of them) runs
throughout, as another user's job would. The numbers behind `threads`' default and
`odenet reproduce`'s jobs (docs/benchmarks.md, "Threads against processes").

    python -m bench.bench_threads [--iters 8] [--precision auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from .common import machine, write_json

SPIN = "while True: pass"


def child(iters: int, threads: int, precision: str) -> None:
    import torch
    import torch.nn.functional as F

    from odenet.models import build_model
    from odenet.training.runtime import autocast

    from .bench_training import training_batches

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model({"name": "odenet"}, {"method": "dopri5", "rtol": 1e-3})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = training_batches("cpu", 4)
    start = None
    for i in range(iters + 2):  # the first two warm up
        if i == 2:
            start = time.perf_counter()
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        with autocast(precision, x.device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    print(128 * iters / (time.perf_counter() - start))


def trainings(threads: list[int], iters: int, precision: str) -> list[float]:
    """Images per second of trainings started together, one per entry of ``threads``."""
    cmd = [sys.executable, "-m", "bench.bench_threads", "--child", "--iters", str(iters),
           "--precision", precision, "--threads"]
    procs = [subprocess.Popen(cmd + [str(n)], stdout=subprocess.PIPE, text=True)
             for n in threads]
    return [float(p.communicate()[0].split()[-1]) for p in procs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=8)
    # auto: bf16 where the CPU has bf16 units; on an AVX2-only CPU emulated bf16 is ~13x
    # slower than fp32 and would measure the emulation (odenet.training.runtime.resolve_precision)
    parser.add_argument("--precision", default="auto", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--load", type=int, default=1, help="spinning processes when loaded")
    parser.add_argument("--repeats", type=int, default=2, help="each case, alternating")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    if args.precision == "auto":
        import torch

        from odenet.training.runtime import resolve_precision

        args.precision = resolve_precision("auto", torch.device("cpu"))
    if args.child:
        child(args.iters, args.threads, args.precision)
        return 0
    cases = {"one training, 2 threads": [2], "two trainings, 1 thread each": [1, 1]}
    result: dict = {"machine": machine(), "cores": os.cpu_count(),
                    "precision": args.precision, "images_per_s": {}}
    for loaded in (False, True):
        load = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.load)
                ] if loaded else []
        try:
            for r in range(args.repeats):
                for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                    key = f"{'loaded' if loaded else 'idle'}: {name}"
                    total = sum(trainings(cases[name], args.iters, args.precision))
                    result["images_per_s"].setdefault(key, []).append(total)
        finally:
            for p in load:
                p.kill()
    print(f"machine: {result['machine']}, precision {args.precision}")
    for key, values in result["images_per_s"].items():
        print(f"  {key:42s} {', '.join(f'{v:6.1f}' for v in values)} images/s in total")
    print(f"wrote {write_json('threads', result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
