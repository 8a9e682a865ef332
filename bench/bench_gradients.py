"""The ODE-Net block (the paper's conv ODE function, batch 128, random weights) trained one
step with each gradient method of odenet.solvers: seconds for forward + backward, NFE-F/B,
activation MiB (what autograd saves in the forward, odenet.measure.ActivationMeter) and,
on CUDA, the peak memory allocated through forward + backward.

The methods at rtol = atol = 1e-3 (the recipe's), t = [0, 1]: backprop, adjoint and
checkpoint on dopri5 (the same forward solve), reversible on adaptive_reversible_heun (and
backprop through it, for its memory's contrast). Gradient error is `odenet gradients`'.

    python -m bench.bench_gradients [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

import torch

from odenet.measure import ActivationMeter
from odenet.models.blocks import ODEFunc
from odenet.solvers import SolveStats, odeint

from .common import interleaved, machine, write_json

SHAPE = (128, 64, 6, 6)
TOL = 1e-3
MIB = 2**20
# (name, method, gradient)
CASES = [("backprop", "dopri5", "backprop"), ("adjoint", "dopri5", "adjoint"),
         ("checkpoint", "dopri5", "checkpoint"),
         ("reversible", "adaptive_reversible_heun", "reversible"),
         ("backprop_reversible_heun", "adaptive_reversible_heun", "backprop")]


def run(device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    func = ODEFunc(SHAPE[1]).to(device)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.tensor([0.0, 1.0], device=device)
    cuda = torch.device(device).type == "cuda"

    def step(method, gradient, stats=None):
        func.zero_grad()
        y = odeint(func, x.detach().requires_grad_(), t, method=method, rtol=TOL, atol=TOL,
                   gradient=gradient, stats=stats)
        y[-1].square().mean().backward()

    result = {}
    for name, method, gradient in CASES:
        stats = SolveStats()
        with ActivationMeter(func) as meter:
            y = odeint(func, x.detach().requires_grad_(), t, method=method, rtol=TOL,
                       atol=TOL, gradient=gradient, stats=stats)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        y[-1].square().mean().backward()
        del y
        result[name] = {"method": method, "gradient": gradient,
                        "nfe_forward": stats.nfe_forward, "nfe_backward": stats.nfe_backward,
                        "steps": stats.steps_accepted, "activation_mib": meter.total_mib}
        if cuda:  # what backward adds on top of the held graph
            result[name]["backward_peak_extra_mib"] = (torch.cuda.max_memory_allocated()
                                                       - base) / MIB
    times = interleaved({name: (lambda m=m, g=g: step(m, g)) for name, m, g in CASES},
                        repeats, warmup=1,
                        sync=torch.cuda.synchronize if cuda else (lambda: None))
    for name in result:
        result[name]["seconds"] = times[name]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    rows = run(args.device, args.repeats)
    print(f"machine: {machine()}")
    print(f"ODE-Net block {SHAPE}, rtol = atol = {TOL:g}, forward + backward:")
    for name, r in rows.items():
        extra = (f", backward peak +{r['backward_peak_extra_mib']:.1f} MiB"
                 if "backward_peak_extra_mib" in r else "")
        print(f"  {name:26s} {1e3 * r['seconds']:8.1f} ms  NFE-F/B {r['nfe_forward']}/"
              f"{r['nfe_backward']}  steps {r['steps']}  saved {r['activation_mib']:.1f} MiB"
              f"{extra}")
    payload = {"machine": machine(), "device": args.device, "tol": TOL, "shape": SHAPE,
               "methods": rows}
    print(f"wrote {write_json('gradients', payload, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
