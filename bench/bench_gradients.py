"""The ODE-Net block (the paper's conv ODE function, batch 128, random weights) trained one
step with each gradient method of odenet.solvers: seconds for forward + backward, NFE-F/B,
activation MiB (what autograd saves in the forward, odenet.training.measure.ActivationMeter) and,
on CUDA, the peak memory allocated through forward + backward.

The methods at rtol = atol = τ for τ in --tolerances (1e-3 is the recipe's), t = [0, 1]:
backprop, adjoint and checkpoint on dopri5 (the same forward solve), reversible on
adaptive_reversible_heun (and backprop through it, for its memory's contrast). Then the
floors a block measures (what each method may cost at most), each a ratio printed with its
limit:
- checkpoint's saved MiB per function evaluation ≤ 1/10 of backprop's (RK-Net's);
- reversible's saved MiB flat in NFE: its largest over its smallest across τ ≤ 2 (as the
  adjoint's), and within 2x of the adjoint's at each τ;
- seconds: checkpoint ≤ 1.4x backprop's; reversible ≤ 1.5x the adjoint's at the same
  NFE-F (seconds per forward evaluation compared, as the two solvers take other steps).
The time floors are per training iteration: with --training (on by default)
the whole network (downsampling, block, head; SGD step) is trained from the same
weights on the same MNIST batches by each gradient method at 1e-3, interleaved
(bench/bench_training.py's Trainer): RK-Net (backprop), ODE-Net (adjoint), checkpoint,
reversible; those ratios are the floors' verdict, the block's are shown beside.
Gradient error is `odenet gradients`'.

    python -m bench.bench_gradients [--repeats 5] [--tolerances 1e-2 1e-3 1e-4]
                                    [--iters 10] [--no-training] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

import torch

from odenet.models.blocks import ODEFunc
from odenet.solvers import SolveStats, odeint
from odenet.training.measure import ActivationMeter
from odenet.training.runtime import set_exact_math

from .common import interleaved, machine, sync_of, write_json

SHAPE = (128, 64, 6, 6)
TOL = 1e-3
MIB = 2**20
# (name, method, gradient)
CASES = [("backprop", "dopri5", "backprop"), ("adjoint", "dopri5", "adjoint"),
         ("checkpoint", "dopri5", "checkpoint"),
         ("reversible", "adaptive_reversible_heun", "reversible"),
         ("backprop_reversible_heun", "adaptive_reversible_heun", "backprop")]


def run(device: str, repeats: int, tol: float = TOL) -> dict:
    torch.manual_seed(0)
    func = ODEFunc(SHAPE[1]).to(device)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.tensor([0.0, 1.0], device=device)
    cuda = torch.device(device).type == "cuda"

    def step(method, gradient, stats=None):
        func.zero_grad()
        y = odeint(func, x.detach().requires_grad_(), t, method=method, rtol=tol, atol=tol,
                   gradient=gradient, stats=stats)
        y[-1].square().mean().backward()

    result = {}
    for name, method, gradient in CASES:
        stats = SolveStats()
        with ActivationMeter(func) as meter:
            y = odeint(func, x.detach().requires_grad_(), t, method=method, rtol=tol,
                       atol=tol, gradient=gradient, stats=stats)
        if cuda:  # of this GPU (cuda:N), not the current one
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        y[-1].square().mean().backward()
        del y
        result[name] = {"method": method, "gradient": gradient,
                        "nfe_forward": stats.nfe_forward, "nfe_backward": stats.nfe_backward,
                        "steps": stats.steps_accepted, "activation_mib": meter.total_mib}
        if cuda:  # what backward adds on top of the held graph
            result[name]["backward_peak_extra_mib"] = (
                torch.cuda.max_memory_allocated(device) - base) / MIB
    times = interleaved({name: (lambda m=m, g=g: step(m, g)) for name, m, g in CASES},
                        repeats, warmup=1,
                        sync=sync_of(device))
    for name in result:
        result[name]["seconds"] = times[name]
    return result


# training iteration cases: name -> (model, its solver settings at 1e-3); the same network
TRAINING = {"backprop": ("rknet", {"gradient": "backprop"}),
            "adjoint": ("odenet", {"gradient": "adjoint"}),
            "checkpoint": ("odenet", {"gradient": "checkpoint"}),
            "reversible": ("odenet", {"method": "adaptive_reversible_heun",
                                      "gradient": "reversible"})}


def training(device: str, iters: int, warmup: int = 2) -> dict:
    """Median seconds per training iteration and mean NFE-F/B of each gradient method."""
    from odenet.models import build_model

    from .bench_training import Trainer, _sync, training_batches

    batches = training_batches(device, iters + warmup)
    trainers = {}
    for name, (model_name, solver) in TRAINING.items():
        torch.manual_seed(0)  # the same initial weights for every method
        model = build_model({"name": model_name}, {"rtol": TOL, "atol": TOL, **solver})
        trainers[name] = Trainer(model.to(device), batches)
    times = interleaved({n: t.step for n, t in trainers.items()}, iters, warmup, _sync(device))
    out = {}
    for name, t in trainers.items():
        timed = t.nfe[warmup:]  # (forward, backward) of the timed iterations
        out[name] = {"seconds": times[name], "model": TRAINING[name][0], **TRAINING[name][1],
                     "nfe_forward": sum(f for f, _ in timed) / len(timed),
                     "nfe_backward": sum(b for _, b in timed) / len(timed)}
    return out


def floors(by_tol: dict[float, dict], train: dict | None = None) -> list[dict]:
    """The floors from the measurements at each tolerance: name, value, limit."""
    out = []

    def add(name: str, value: float, limit: float) -> None:
        out.append({"floor": name, "value": value, "limit": limit, "ok": value <= limit})

    def per_eval(r: dict, key: str) -> float:
        return r[key] / r["nfe_forward"]

    for tol, rows in by_tol.items():
        bp, ck, adj, rev = (rows[k] for k in ("backprop", "checkpoint", "adjoint", "reversible"))
        add(f"tol {tol:g}: checkpoint MiB per evaluation / backprop's",
            per_eval(ck, "activation_mib") / per_eval(bp, "activation_mib"), 0.1)
        add(f"tol {tol:g}: reversible MiB / adjoint's",
            rev["activation_mib"] / adj["activation_mib"], 2.0)
        if not train:  # the block's seconds stand in for the training iteration's
            add(f"tol {tol:g}: checkpoint seconds / backprop's",
                ck["seconds"] / bp["seconds"], 1.4)
            add(f"tol {tol:g}: reversible seconds / adjoint's, per NFE-F",
                per_eval(rev, "seconds") / per_eval(adj, "seconds"), 1.5)
    if train:
        bp, ck, adj, rev = (train[k] for k in ("backprop", "checkpoint", "adjoint", "reversible"))
        add("training iteration: checkpoint seconds / RK-Net's (backprop)",
            ck["seconds"] / bp["seconds"], 1.4)
        add("training iteration: reversible seconds / adjoint's, per NFE-F",
            (rev["seconds"] / rev["nfe_forward"]) / (adj["seconds"] / adj["nfe_forward"]), 1.5)
    if len(by_tol) > 1:
        for name in ("reversible", "adjoint"):
            mib = [rows[name]["activation_mib"] for rows in by_tol.values()]
            nfe = [rows[name]["nfe_forward"] for rows in by_tol.values()]
            add(f"{name} MiB largest / smallest over NFE-F {min(nfe)}-{max(nfe)}",
                max(mib) / min(mib), 2.0)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-2, TOL, 1e-4])
    parser.add_argument("--iters", type=int, default=10,
                        help="timed training iterations per method (after 2 of warm-up)")
    parser.add_argument("--no-training", dest="training", action="store_false",
                        help="only the bare block (no MNIST needed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    set_exact_math()  # fp32 as training runs it: IEEE float32, not TF32
    print(f"machine: {machine(args.device)}")
    train = None
    if args.training:
        train = training(args.device, args.iters)
        print(f"ODE-Net training iteration (batch 128, MNIST), rtol = atol = {TOL:g}:")
        for name, r in train.items():
            print(f"  {name:12s} {1e3 * r['seconds']:8.1f} ms  NFE-F/B "
                  f"{r['nfe_forward']:.1f}/{r['nfe_backward']:.1f}")
    by_tol = {}
    for tol in args.tolerances:
        rows = by_tol[tol] = run(args.device, args.repeats, tol)
        print(f"ODE-Net block {SHAPE}, rtol = atol = {tol:g}, forward + backward:")
        for name, r in rows.items():
            extra = (f", backward peak +{r['backward_peak_extra_mib']:.1f} MiB"
                     if "backward_peak_extra_mib" in r else "")
            print(f"  {name:26s} {1e3 * r['seconds']:8.1f} ms  NFE-F/B {r['nfe_forward']}/"
                  f"{r['nfe_backward']}  steps {r['steps']}  saved {r['activation_mib']:.2f} "
                  f"MiB{extra}")
    checks = floors(by_tol, train)
    print("floors (each ratio against its limit):")
    for c in checks:
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['floor']}: {c['value']:.3f} "
              f"(limit {c['limit']:g})")
    payload = {"machine": machine(args.device), "device": args.device, "shape": SHAPE,
               "tolerances": args.tolerances,
               "methods": {f"{tol:g}": rows for tol, rows in by_tol.items()},
               "training": train,
               "floors": checks}
    print(f"wrote {write_json('gradients', payload, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
