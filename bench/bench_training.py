"""`make bench`: ODE-Net training with odenet vs torchdiffeq, side by side in one process.

Same seed, same initial weights, same batches (real MNIST), same network: only the ODE
block's solver differs (odenet.solvers vs torchdiffeq's odeint/odeint_adjoint around the
very same ODE function). Per case: median seconds per training iteration after warm-up,
NFE forward/backward, the ratio odenet / torchdiffeq, and each side's gradient error on
the first batch against a float64 rtol=atol=1e-7 adjoint solve. Cases: ODE-Net (adjoint),
ODE-Net (adjoint + seminorm), RK-Net (direct backprop), test-set forward (batch 1000),
and the solver alone on y' = -y (see bench_solver). odenet runs with
solver.last_step=overshoot, torchdiffeq's end handling, so the two take the same steps;
the case "odenet_adjoint_clamp" runs odenet's default (last step ends at t1) instead.

    python -m bench.bench_training [--iters 12] [--warmup 3] [--profile] [--epoch]

--profile: torch.profiler of one ODE-Net iteration per side, time split by kind of work.
--compile: also the cases with odenet's ODE function torch.compile'd (model.compile=true).
--epoch: one whole epoch (468 batches of 128) of ODE-Net and RK-Net training per side.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from odenet.data import load_mnist
from odenet.models import build_model, reset_solver_stats, solver_stats
from odenet.training.runtime import autocast, set_exact_math

from . import bench_solver
from .common import Counted, interleaved, machine, require_torchdiffeq, sync_of, write_json

TOL = 1e-3


class TorchdiffeqBlock(torch.nn.Module):
    """The reference: the same ODE function integrated by torchdiffeq, with its NFE counted."""

    def __init__(self, func: torch.nn.Module, adjoint: bool, norm: str, tdq):
        super().__init__()
        self.func = Counted(func)
        self.adjoint, self.norm, self.tdq = adjoint, norm, tdq
        # made after the network moved to its device: the times go there too (torchdiffeq
        # would otherwise read them from the host at every step)
        device = next(func.parameters()).device
        self.register_buffer("times", torch.tensor([0.0, 1.0], device=device),
                             persistent=False)

    def forward(self, x):
        if self.adjoint and torch.is_grad_enabled():
            opts = {"norm": "seminorm"} if self.norm == "seminorm" else None
            ys = self.tdq.odeint_adjoint(self.func, x, self.times, rtol=TOL, atol=TOL,
                                         adjoint_options=opts)
        else:
            ys = self.tdq.odeint(self.func, x, self.times, rtol=TOL, atol=TOL)
        return ys[-1]


# name: (adjoint, adjoint norm, odenet's last_step, odenet's model.compile)
TRAINING_CASES = {
    "odenet_adjoint": (True, "default", "overshoot", False),
    "odenet_adjoint_seminorm": (True, "seminorm", "overshoot", False),
    "rknet_direct": (False, "default", "overshoot", False),
    "odenet_adjoint_clamp": (True, "default", "clamp", False),
}
COMPILED_CASES = {  # with --compile (the reference stays eager, as the authors' code is)
    "odenet_adjoint_compiled": (True, "default", "overshoot", True),
    "rknet_direct_compiled": (False, "default", "overshoot", True),
}


def _pair(adjoint: bool, norm: str, tdq, device, last_step: str = "overshoot",
          compiled: bool = False):
    """(odenet model, torchdiffeq model) with identical weights and eager ODE functions;
    compiled: odenet's is then torch.compile'd (model.compile=true)."""
    torch.manual_seed(0)
    model = {"name": "odenet" if adjoint else "rknet"}
    solver = {"method": "dopri5", "rtol": TOL, "atol": TOL,
              "gradient": "adjoint" if adjoint else "backprop",
              "adjoint_norm": norm, "last_step": last_step}
    ours = build_model(model, solver).to(device)
    ref = copy.deepcopy(ours)
    ref.body = TorchdiffeqBlock(ref.body.func, adjoint, norm, tdq)
    if compiled:
        state = ours.state_dict()
        ours = build_model(model | {"compile": True}, solver).to(device)
        ours.load_state_dict(state)
    return ours, ref


def read_nfe(model) -> int:
    """The ODE block's evaluations since the last read (either side); resets the count."""
    if getattr(model, "body", None) is None or isinstance(model.body, torch.nn.Sequential):
        return 0  # no ODE block (MLP, ResNet)
    if isinstance(model.body, TorchdiffeqBlock):
        n, model.body.func.calls = model.body.func.calls, 0
        return n
    stats = solver_stats(model)
    reset_solver_stats(model)
    return stats["nfe_forward"] + stats["nfe_backward"]


class Trainer:
    """One model, its optimizer and its own pass over the shared batches; ``precision``
    as the trainer's (odenet.training.runtime.autocast around the forward and the loss)."""

    def __init__(self, model, batches, precision: str = "fp32"):
        self.model, self.batches, self.precision = model, batches, precision
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        self.i = 0
        self.nfe: list[tuple[int, int]] = []

    def step(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        read_nfe(self.model)
        with autocast(self.precision, x.device):
            loss = F.cross_entropy(self.model(x), y)
        forward = read_nfe(self.model)
        loss.backward()
        backward = read_nfe(self.model)
        self.opt.step()
        self.nfe.append((forward, backward))


def training_case(case, tdq, batches, device, iters, warmup, true_grad):
    adjoint, norm, last_step, compiled = (TRAINING_CASES | COMPILED_CASES)[case]
    ours, ref = _pair(adjoint, norm, tdq, device, last_step, compiled)
    errors = {name: _grad_error(model, batches[0], true_grad)
              for name, model in (("odenet", ours), ("torchdiffeq", ref))}
    a, b = Trainer(ours, batches), Trainer(ref, batches)
    times = interleaved({"odenet": a.step, "torchdiffeq": b.step}, iters, warmup, _sync(device))
    tail = slice(warmup, None)  # NFE of the timed iterations
    return {
        "odenet_s": times["odenet"], "torchdiffeq_s": times["torchdiffeq"],
        "ratio": times["odenet"] / times["torchdiffeq"],
        "nfe_odenet": _mean(a.nfe[tail]), "nfe_torchdiffeq": _mean(b.nfe[tail]),
        "last_step": last_step,
        "grad_error_odenet": errors["odenet"], "grad_error_torchdiffeq": errors["torchdiffeq"],
    }


def _grads(model, batch, precision: str = "fp32") -> torch.Tensor:
    x, y = batch
    model.zero_grad(set_to_none=True)
    with autocast(precision, x.device):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return grad


def true_gradient(batch, device) -> torch.Tensor:
    """The initial weights' gradient on `batch` from a float64 adjoint solve at 1e-7."""
    torch.manual_seed(0)
    model = build_model({"name": "odenet"}, {"method": "dopri5", "rtol": 1e-7, "atol": 1e-7,
                                             "max_num_steps": 100_000}).to(device).double()
    x, y = batch
    return _grads(model, (x.double(), y)).float()


def _grad_error(model, batch, true_grad, precision: str = "fp32") -> float:
    """Relative L2 error of all parameter gradients on `batch` (NFE counters are reset)."""
    grad = _grads(model, batch, precision)
    read_nfe(model)
    return float((grad - true_grad).norm() / true_grad.norm())


def test_forward_case(tdq, device, iters, compiled=False):
    ours, ref = _pair(True, "default", tdq, device, compiled=compiled)
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


_sync = sync_of  # the benches' name for it


# Kinds of work in a profile, matched on the op name (first match wins); aten ops that
# match none are tensor arithmetic: the solver's stage sums, error norm, adjoint state
# and the optimizer step.
KINDS = (
    ("convolutions", ("conv",)),
    ("group norms", ("group_norm",)),
    ("other layers (ReLU, linear, pool, loss)",
     ("relu", "clamp_min", "threshold_backward", "addmm", "linear", "pool", "softmax",
      "nll_loss", "mean")),
)
ARITHMETIC = "tensor arithmetic (solver, adjoint state, optimizer)"
AUTOGRAD = "autograd engine"
PYTHON_FUNCS = "Python inside autograd Functions / optimizer"
PYTHON_GAPS = "Python between ops (not in any op)"


def kind_of(name: str) -> str:
    if name.startswith("aten::"):
        for kind, needles in KINDS:
            if any(n in name for n in needles):
                return kind
        return ARITHMETIC
    if name.startswith("autograd::") or ("Backward" in name and "Adjoint" not in name):
        return AUTOGRAD
    return PYTHON_FUNCS


def profile_iteration(tdq, batches, device) -> dict:
    """torch.profiler of one ODE-Net (adjoint) iteration per side after warm-up: seconds
    by kind of work (ops' self time; the wall time no op accounts for is Python)."""
    from torch.profiler import ProfilerActivity, profile

    ours, ref = _pair(True, "default", tdq, device)
    result = {}
    for name, model in (("odenet", ours), ("torchdiffeq", ref)):
        trainer = Trainer(model, batches)
        for _ in range(3):
            trainer.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            trainer.step()
            wall = time.perf_counter() - start
        kinds = {kind: 0.0 for kind, _ in KINDS} | {ARITHMETIC: 0.0, AUTOGRAD: 0.0,
                                                    PYTHON_FUNCS: 0.0}
        for event in prof.key_averages():
            kinds[kind_of(event.key)] += event.self_cpu_time_total / 1e6
        kinds[PYTHON_GAPS] = max(wall - sum(kinds.values()), 0.0)
        result[name] = {"wall_s": wall, "nfe": trainer.nfe[-1], "seconds": kinds}
    return result


def print_profile(profile: dict) -> None:
    o, r = profile["odenet"], profile["torchdiffeq"]
    print(f"\nprofile of one ODE-Net iteration (NFE-F/B odenet {o['nfe']}, torchdiffeq "
          f"{r['nfe']}); seconds and share of the profiled wall time")
    for kind in o["seconds"]:
        a, b = o["seconds"][kind], r["seconds"][kind]
        print(f"  {kind:52s} {a:7.3f} {100 * a / o['wall_s']:5.1f}%   "
              f"{b:7.3f} {100 * b / r['wall_s']:5.1f}%")
    print(f"  {'total (profiled wall time)':52s} {o['wall_s']:7.3f}         {r['wall_s']:7.3f}")


def training_batches(device, count: int | None = None) -> list:
    """The first `count` (None: all 468 full) batches of 128 MNIST training images."""
    images, labels = load_mnist("data", train=True)
    stop = len(images) - 127 if count is None else 128 * count
    return [((images[i:i + 128].float() / 255.0).unsqueeze(1).to(device),
             labels[i:i + 128].to(device)) for i in range(0, stop, 128)]


def epoch_case(adjoint: bool, tdq, device) -> dict:
    """One pass over all 468 full training batches, the two sides alternating per batch."""
    batches = training_batches(device)
    ours, ref = _pair(adjoint, "default", tdq, device)
    sides = {"odenet": Trainer(ours, batches), "torchdiffeq": Trainer(ref, batches)}
    total = dict.fromkeys(sides, 0.0)
    sync = _sync(device)
    for i in range(len(batches)):
        for name in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
            start = time.perf_counter()
            sides[name].step()
            sync()
            total[name] += time.perf_counter() - start
    return {"batches": len(batches), "odenet_s": total["odenet"],
            "torchdiffeq_s": total["torchdiffeq"],
            "ratio": total["odenet"] / total["torchdiffeq"],
            "nfe_odenet": _mean(sides["odenet"].nfe),
            "nfe_torchdiffeq": _mean(sides["torchdiffeq"].nfe)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=12, help="timed iterations per case (>= 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true", help="also profile one iteration")
    parser.add_argument("--compile", action="store_true",
                        help="also time odenet with model.compile=true (compiles first)")
    parser.add_argument("--epoch", action="store_true",
                        help="also time one whole epoch of ODE-Net and RK-Net (~25 min on CPU)")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    set_exact_math()  # fp32 as training runs it: IEEE float32, not TF32
    tdq = require_torchdiffeq()
    batches = training_batches(args.device, 8)
    true_grad = true_gradient(batches[0], args.device)
    names = list(TRAINING_CASES) + (list(COMPILED_CASES) if args.compile else [])
    cases = {name: training_case(name, tdq, batches, args.device, args.iters, args.warmup,
                                 true_grad) for name in names}
    cases["test_forward_1000"] = test_forward_case(tdq, args.device, max(5, args.iters // 2))
    if args.compile:
        cases["test_forward_1000_compiled"] = test_forward_case(
            tdq, args.device, max(5, args.iters // 2), compiled=True)
    solver = bench_solver.bookkeeping(tdq, args.device, 20)
    result = {"machine": machine(args.device), "device": args.device, "cases": cases,
              "solver_alone": solver}
    print(f"machine: {machine(args.device)}  device: {args.device}")
    print(f"{'case':26s} {'odenet s':>9s} {'tdq s':>9s} {'ratio':>6s}  "
          f"{'NFE-F/B odenet | torchdiffeq':30s} grad error odenet | torchdiffeq")
    for name, c in cases.items():
        nfe_o, nfe_r = c["nfe_odenet"], c["nfe_torchdiffeq"]
        fmt = (lambda v: f"{v[0]:.1f}/{v[1]:.1f}") if isinstance(nfe_o, tuple) else str
        grads = (f"{c['grad_error_odenet']:.3f} | {c['grad_error_torchdiffeq']:.3f}"
                 if "grad_error_odenet" in c else "")
        print(f"{name:26s} {c['odenet_s']:9.3f} {c['torchdiffeq_s']:9.3f} {c['ratio']:6.2f}  "
              f"{fmt(nfe_o) + ' | ' + fmt(nfe_r):30s} {grads}")
    print(f"{'solver y=-y (per step)':26s} {solver['odenet']['ms_per_step'] / 1e3:9.4f} "
          f"{solver['torchdiffeq']['ms_per_step'] / 1e3:9.4f} {solver['ratio_per_step']:6.2f}  "
          f"{solver['odenet']['nfe']} | {solver['torchdiffeq']['nfe']}")
    if args.profile:
        result["profile"] = profile_iteration(tdq, batches, args.device)
        print_profile(result["profile"])
    if args.epoch:
        result["epoch"] = {name: epoch_case(adjoint, tdq, args.device)
                           for name, adjoint in (("odenet", True), ("rknet", False))}
        for name, e in result["epoch"].items():
            print(f"one epoch of {name} ({e['batches']} batches): odenet {e['odenet_s']:.0f} s, "
                  f"torchdiffeq {e['torchdiffeq_s']:.0f} s, ratio {e['ratio']:.2f}")
    print(f"wrote {write_json('training', result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
