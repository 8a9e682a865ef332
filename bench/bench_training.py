"""`make bench`: ODE-Net training with odenet vs torchdiffeq, side by side in one process.

Same seed, same initial weights, same batches (real MNIST), same network: only the ODE
block's solver differs (odenet.solvers vs torchdiffeq's odeint/odeint_adjoint around the
very same ODE function). Per case: median seconds per training iteration after warm-up,
NFE forward/backward, and the ratio odenet / torchdiffeq. Cases: ODE-Net (adjoint),
ODE-Net (adjoint + seminorm), RK-Net (direct backprop), test-set forward (batch 1000),
and the solver alone on y' = -y (see bench_solver).

    python -m bench.bench_training [--iters 12] [--warmup 3] [--profile]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from odenet.data import load_mnist
from odenet.models import build_model, reset_solver_stats, solver_stats

from . import bench_solver
from .common import Counted, interleaved, machine, require_torchdiffeq, write_json

TOL = 1e-3


class TorchdiffeqBlock(torch.nn.Module):
    """The reference: the same ODE function integrated by torchdiffeq, with its NFE counted."""

    def __init__(self, func: torch.nn.Module, adjoint: bool, norm: str, tdq):
        super().__init__()
        self.func = Counted(func)
        self.adjoint, self.norm, self.tdq = adjoint, norm, tdq
        self.register_buffer("times", torch.tensor([0.0, 1.0]), persistent=False)

    def forward(self, x):
        if self.adjoint and torch.is_grad_enabled():
            opts = {"norm": "seminorm"} if self.norm == "seminorm" else None
            ys = self.tdq.odeint_adjoint(self.func, x, self.times, rtol=TOL, atol=TOL,
                                         adjoint_options=opts)
        else:
            ys = self.tdq.odeint(self.func, x, self.times, rtol=TOL, atol=TOL)
        return ys[-1]


def _pair(adjoint: bool, norm: str, tdq, device):
    """(odenet model, torchdiffeq model) with identical weights."""
    torch.manual_seed(0)
    ours = build_model({"name": "odenet" if adjoint else "rknet"},
                       {"method": "dopri5", "rtol": TOL, "atol": TOL, "adjoint": adjoint,
                        "adjoint_norm": norm}).to(device)
    ref = copy.deepcopy(ours)
    ref.body = TorchdiffeqBlock(ref.body.func, adjoint, norm, tdq)
    return ours, ref


class Trainer:
    """One model, its optimizer and its own pass over the shared batches."""

    def __init__(self, model, batches, reference: bool):
        self.model, self.batches, self.reference = model, batches, reference
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        self.i = 0
        self.nfe: list[tuple[int, int]] = []

    def _nfe_read(self):
        if self.reference:
            n = self.model.body.func.calls
            self.model.body.func.calls = 0
            return n
        stats = solver_stats(self.model)
        reset_solver_stats(self.model)
        return stats["nfe_forward"] + stats["nfe_backward"]

    def step(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        self._nfe_read()
        loss = F.cross_entropy(self.model(x), y)
        forward = self._nfe_read()
        loss.backward()
        backward = self._nfe_read()
        self.opt.step()
        self.nfe.append((forward, backward))


def training_case(adjoint, norm, tdq, batches, device, iters, warmup):
    ours, ref = _pair(adjoint, norm, tdq, device)
    a, b = Trainer(ours, batches, False), Trainer(ref, batches, True)
    times = interleaved({"odenet": a.step, "torchdiffeq": b.step}, iters, warmup, _sync(device))
    tail = slice(warmup, None)  # NFE of the timed iterations
    return {
        "odenet_s": times["odenet"], "torchdiffeq_s": times["torchdiffeq"],
        "ratio": times["odenet"] / times["torchdiffeq"],
        "nfe_odenet": _mean(a.nfe[tail]), "nfe_torchdiffeq": _mean(b.nfe[tail]),
    }


def test_forward_case(tdq, device, iters):
    ours, ref = _pair(True, "default", tdq, device)
    images, _ = load_mnist("data", train=False)
    x = (images[:1000].float() / 255.0).unsqueeze(1).to(device)
    ours.eval(), ref.eval()

    def run(model):
        with torch.inference_mode():
            model(x)

    times = interleaved({"odenet": lambda: run(ours), "torchdiffeq": lambda: run(ref)},
                        iters, 1, _sync(device))
    reset_solver_stats(ours)
    ref.body.func.calls = 0
    run(ours), run(ref)
    return {"odenet_s": times["odenet"], "torchdiffeq_s": times["torchdiffeq"],
            "ratio": times["odenet"] / times["torchdiffeq"],
            "nfe_odenet": solver_stats(ours)["nfe_forward"], "nfe_torchdiffeq": ref.body.func.calls}


def _mean(pairs):
    n = max(len(pairs), 1)
    return (sum(p[0] for p in pairs) / n, sum(p[1] for p in pairs) / n)


def _sync(device):
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def profile_iteration(tdq, batches, device, rows: int = 25) -> None:
    """torch.profiler of one ODE-Net (adjoint) iteration per side, after warm-up."""
    from torch.profiler import ProfilerActivity, profile

    ours, ref = _pair(True, "default", tdq, device)
    for name, model in (("odenet", ours), ("torchdiffeq", ref)):
        trainer = Trainer(model, batches, model is ref)
        for _ in range(3):
            trainer.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.step()
        print(f"\n--- profile of one ODE-Net iteration: {name} (NFE F/B {trainer.nfe[-1]}) ---")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=12, help="timed iterations per case (>= 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    tdq = require_torchdiffeq()
    images, labels = load_mnist("data", train=True)
    batches = [((images[i:i + 128].float() / 255.0).unsqueeze(1).to(args.device),
                labels[i:i + 128].to(args.device)) for i in range(0, 128 * 8, 128)]
    cases = {
        "odenet_adjoint": training_case(True, "default", tdq, batches, args.device,
                                        args.iters, args.warmup),
        "odenet_adjoint_seminorm": training_case(True, "seminorm", tdq, batches,
                                                 args.device, args.iters, args.warmup),
        "rknet_direct": training_case(False, "default", tdq, batches, args.device,
                                      args.iters, args.warmup),
        "test_forward_1000": test_forward_case(tdq, args.device, max(5, args.iters // 2)),
    }
    solver = bench_solver.bookkeeping(tdq, args.device, 20)
    print(f"machine: {machine()}  device: {args.device}")
    print(f"{'case':26s} {'odenet s':>9s} {'tdq s':>9s} {'ratio':>6s}  "
          "NFE-F/B odenet | torchdiffeq")
    for name, c in cases.items():
        nfe_o, nfe_r = c["nfe_odenet"], c["nfe_torchdiffeq"]
        fmt = (lambda v: f"{v[0]:.1f}/{v[1]:.1f}") if isinstance(nfe_o, tuple) else str
        print(f"{name:26s} {c['odenet_s']:9.3f} {c['torchdiffeq_s']:9.3f} {c['ratio']:6.2f}  "
              f"{fmt(nfe_o)} | {fmt(nfe_r)}")
    print(f"{'solver y=-y (per step)':26s} {solver['odenet']['ms_per_step'] / 1e3:9.4f} "
          f"{solver['torchdiffeq']['ms_per_step'] / 1e3:9.4f} {solver['ratio_per_step']:6.2f}  "
          f"{solver['odenet']['nfe']} | {solver['torchdiffeq']['nfe']}")
    path = write_json("training", {"machine": machine(), "device": args.device, "cases": cases,
                                   "solver_alone": solver}, args.out)
    print(f"wrote {path}")
    if args.profile:
        profile_iteration(tdq, batches, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
