"""`make bench-compile`: what model.compile=true costs and gains, per process.

One process: an ODE-Net (adjoint) built eager and compiled from the same weights; the
compiled one's first training iteration (compile included) is timed, then 8 iterations of
each alternating (medians). Run it twice: the second process finds inductor's on-disk
cache (TORCHINDUCTOR_CACHE_DIR, default /tmp/torchinductor_$USER) and should compile in a
fraction of the first one's time.

    python -m bench.bench_compile [--precision bf16] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from odenet.models import build_model
from odenet.training.runtime import autocast

from .bench_training import training_batches
from .common import machine, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = training_batches("cpu", 4)
    torch.manual_seed(0)
    solver = {"method": "dopri5", "rtol": 1e-3}
    eager = build_model({"name": "odenet"}, solver)
    compiled = build_model({"name": "odenet", "compile": True}, solver)
    compiled.load_state_dict(eager.state_dict())
    sides = {name: (m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
             for name, m in (("eager", eager), ("compiled", compiled))}

    def step(name, i):
        model, opt = sides[name]
        x, y = batches[i % len(batches)]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(args.precision, x.device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    first = {name: step(name, 0) for name in ("compiled", "eager")}
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for i in range(1, args.iters + 1):
        for name in (("eager", "compiled") if i % 2 else ("compiled", "eager")):
            times[name].append(step(name, i))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    result = {"machine": machine(), "precision": args.precision,
              "first_iteration_s": first, "iteration_s": med,
              "compile_s": first["compiled"] - first["eager"],
              "ratio_compiled_eager": med["compiled"] / med["eager"]}
    print(f"precision {args.precision}, {args.threads} thread(s): first iteration compiled "
          f"{first['compiled']:.1f} s (eager {first['eager']:.2f} s); then compiled "
          f"{med['compiled']:.3f} s vs eager {med['eager']:.3f} s per iteration "
          f"(ratio {result['ratio_compiled_eager']:.2f})")
    print(f"wrote {write_json('compile', result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
