"""`make bench`: the fast path against the default fp32 eager path and the torchdiffeq
reference, side by side in one process, each ratio against its floor (the largest ratio
a fast default should reach: a 2x speed-up over fp32, more over the reference).

Per model, three sides from the same initial weights, trained with SGD (lr 0.1, momentum
0.9) on the same real MNIST batches of 128, alternating within every round
(bench.common.interleaved), medians after warm-up:
- fast: the settings of the fast path (default ``--precision bf16``; ``--compile`` adds
  model.compile=true), otherwise as ``odenet train model=M`` runs (dopri5, rtol = atol =
  1e-3, last_step=clamp);
- fp32: ``precision=fp32``, eager: the default path;
- reference: the network of torchdiffeq's examples/odenet_mnist.py (the same modules,
  the ODE block integrated by torchdiffeq 0.2.5: odeint_adjoint for ODE-Net, odeint for
  RK-Net), fp32 eager. ResNet has no ODE block: its reference is its fp32 side.
Cases: odenet (adjoint), rknet (backprop through dopri5), resnet, and the test-set
forward (1000 images, ODE-Net, no grad). Printed per case: seconds, NFE-F/B, the ratios
with their floors and, for the ODE models, each side's gradient error on the first batch
against a float64 solve at 1e-7.

    python -m bench.bench_fast [--iters 10] [--warmup 3] [--threads 1] [--compile]
"""

from __future__ import annotations

import argparse
import copy

import torch

from odenet.data import load_mnist
from odenet.models import build_model, reset_solver_stats, solver_stats
from odenet.training.runtime import autocast, set_exact_math

from .bench_training import (
    TOL,
    TorchdiffeqBlock,
    Trainer,
    _grad_error,
    _mean,
    _sync,
    training_batches,
    true_gradient,
)
from .common import interleaved, machine, require_torchdiffeq, write_json

# (case, against): the largest ratio fast / against that a fast default should reach
FLOORS = {("odenet", "fp32"): 0.5, ("odenet", "reference"): 0.3,
          ("rknet", "fp32"): 0.5, ("rknet", "reference"): 0.35,
          ("resnet", "fp32"): 0.6}


def sides(name: str, tdq, device, compiled: bool) -> dict[str, torch.nn.Module]:
    """fast, fp32 and (for the ODE models) reference networks with identical weights."""
    torch.manual_seed(0)
    solver = {"method": "dopri5", "rtol": TOL, "atol": TOL}
    fp32 = build_model({"name": name}, solver).to(device)
    fast = build_model({"name": name} | ({"compile": True} if compiled else {}),
                       solver).to(device)
    fast.load_state_dict(fp32.state_dict())
    out = {"fast": fast, "fp32": fp32}
    if name != "resnet":
        ref = copy.deepcopy(fp32)
        ref.body = TorchdiffeqBlock(ref.body.func, name == "odenet", "default", tdq)
        out["reference"] = ref
    return out


def training_case(name, tdq, batches, device, args, true_grad) -> dict:
    nets = sides(name, tdq, device, args.compile)
    precision = {"fast": args.precision}
    result: dict = {}
    if name != "resnet":
        result["grad_error"] = {
            side: _grad_error(net, batches[0], true_grad, precision.get(side, "fp32"))
            for side, net in nets.items()}
    trainers = {side: Trainer(net, batches, precision.get(side, "fp32"))
                for side, net in nets.items()}
    result["seconds"] = interleaved({side: t.step for side, t in trainers.items()},
                                    args.iters, args.warmup, _sync(device))
    tail = slice(args.warmup, None)
    result["nfe"] = {side: _mean(t.nfe[tail]) for side, t in trainers.items()}
    return result


def test_forward_case(tdq, device, args) -> dict:
    nets = sides("odenet", tdq, device, args.compile)
    images, _ = load_mnist("data", train=False)
    x = (images[:1000].float() / 255.0).unsqueeze(1).to(device)
    precision = {"fast": args.precision}

    def forward(side):
        net = nets[side].eval()
        with torch.inference_mode(), autocast(precision.get(side, "fp32"), x.device):
            net(x)
        if side == "reference":
            n, net.body.func.calls = net.body.func.calls, 0
            return n
        n = solver_stats(net)["nfe_forward"]
        reset_solver_stats(net)
        return n

    seconds = interleaved({side: (lambda s=side: forward(s)) for side in nets},
                          max(5, args.iters // 2), 1, _sync(device))
    return {"seconds": seconds, "nfe": {side: (forward(side), 0) for side in nets}}


def ratios(name: str, case: dict) -> dict[str, float]:
    s = case["seconds"]
    return {against: s["fast"] / s[against] for against in ("fp32", "reference")
            if against in s}


def report(cases: dict) -> list[str]:
    lines = [f"{'case':12s} {'fast s':>8s} {'fp32 s':>8s} {'ref s':>8s}  "
             f"{'NFE-F/B fast | fp32 | ref':32s} ratios (floor)"]
    for name, c in cases.items():
        s, nfe = c["seconds"], c["nfe"]
        ref = f"{s['reference']:8.3f}" if "reference" in s else f"{'–':>8s}"
        nfes = " | ".join(f"{f:.1f}/{b:.1f}" for f, b in nfe.values())
        parts = []
        for against, r in c["ratios"].items():
            floor = FLOORS.get((name, against))
            verdict = "" if floor is None else f" (<= {floor}: {'ok' if r <= floor else 'MISS'})"
            parts.append(f"/{against} {r:.2f}{verdict}")
        lines.append(f"{name:12s} {s['fast']:8.3f} {s['fp32']:8.3f} {ref}  {nfes:32s} "
                     + ", ".join(parts))
        if "grad_error" in c:
            g = c["grad_error"]
            lines.append(f"{'':12s} gradient error vs float64: "
                         + ", ".join(f"{side} {v:.3f}" for side, v in g.items()))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); time with 1 on a shared machine")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"),
                        help="the fast side's precision")
    parser.add_argument("--compile", action="store_true",
                        help="the fast side also with model.compile=true (compiles first)")
    parser.add_argument("--cases", default="odenet,rknet,resnet,test_forward")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    set_exact_math()  # fp32 as training runs it: IEEE float32, not TF32
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tdq = require_torchdiffeq()
    batches = training_batches(args.device, 8)
    true_grad = true_gradient(batches[0], args.device)
    cases = {}
    for name in args.cases.split(","):
        if name == "test_forward":
            cases[name] = test_forward_case(tdq, args.device, args)
        else:
            cases[name] = training_case(name, tdq, batches, args.device, args, true_grad)
        cases[name]["ratios"] = ratios(name, cases[name])
        print(f"  {name} done", flush=True)
    fast = f"precision={args.precision}" + (", model.compile=true" if args.compile else "")
    print(f"machine: {machine(args.device)}  device: {args.device}  fast side: {fast}")
    print("\n".join(report(cases)))
    misses = [(n, a) for n, c in cases.items() for a, r in c["ratios"].items()
              if (n, a) in FLOORS and r > FLOORS[(n, a)]]
    result = {"machine": machine(args.device), "device": args.device, "fast": fast, "cases": cases,
              "floors": {f"{n}/{a}": v for (n, a), v in FLOORS.items()},
              "misses": [f"{n}/{a}" for n, a in misses]}
    print(f"wrote {write_json('fast', result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
