"""odenet.solvers vs torchdiffeq, same problem, same seed, one process.

odenet runs with options={"last_step": "overshoot"}, torchdiffeq's end handling, so both
take the same steps.

1. bookkeeping: dopri5, rtol=atol=1e-3, y' = -y on 128x64x6x6 floats over [0, 1]: the
   function is one negation, so the time is the solver's own arithmetic;
2. the ODE-Net block (the paper's conv ODE function, batch 128, random weights):
   forward, and forward + adjoint backward, with the NFE of each side; one call of the
   function and of its vjp, also in channels_last; the forward under inference_mode.

    python -m bench.bench_solver [--repeats 20] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy

import torch

from odenet.models.blocks import ODEFunc
from odenet.solvers import SolveStats, odeint
from odenet.training.runtime import set_exact_math

from .common import Counted, interleaved, machine, require_torchdiffeq, sync_of, write_json

SHAPE = (128, 64, 6, 6)
TOL = 1e-3
# odenet steps past t1 and interpolates, as torchdiffeq does: the two take the same steps
LIKE = {"last_step": "overshoot"}


class Negate(torch.nn.Module):
    def forward(self, t, y):
        return -y


def bookkeeping(tdq, device, repeats):
    y0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.tensor([0.0, 1.0], device=device)

    negate = Negate()
    stats = SolveStats()
    with torch.no_grad():
        odeint(negate, y0, t, rtol=TOL, atol=TOL, options=LIKE, stats=stats)
        ref_func = Counted(negate)
        tdq.odeint(ref_func, y0, t, rtol=TOL, atol=TOL)
        times = interleaved({
            "odenet": lambda: odeint(negate, y0, t, rtol=TOL, atol=TOL, options=LIKE),
            "torchdiffeq": lambda: tdq.odeint(negate, y0, t, rtol=TOL, atol=TOL),
        }, repeats, sync=_sync(device))
    nfe = {"odenet": stats.nfe_forward, "torchdiffeq": ref_func.calls}
    steps = {"odenet": stats.steps_accepted + stats.steps_rejected,
             "torchdiffeq": (ref_func.calls - 2) // 6}  # dopri5 with FSAL: 2 + 6 per step
    return {
        name: {"seconds": times[name], "nfe": nfe[name], "steps": steps[name],
               "ms_per_step": 1e3 * times[name] / steps[name],
               "ms_per_eval": 1e3 * times[name] / nfe[name]}
        for name in times
    } | {"ratio_per_step": (times["odenet"] / steps["odenet"])
         / (times["torchdiffeq"] / steps["torchdiffeq"])}


def block(tdq, device, repeats):
    torch.manual_seed(0)
    func = ODEFunc(SHAPE[1]).to(device)
    ref = Counted(func)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    t = torch.tensor([0.0, 1.0], device=device)
    params = tuple(func.parameters())
    stats = SolveStats()

    def ours_forward():
        with torch.no_grad():
            return odeint(func, x, t, rtol=TOL, atol=TOL, options=LIKE, stats=stats)

    def ref_forward():
        with torch.no_grad():
            return tdq.odeint(ref, x, t, rtol=TOL, atol=TOL)

    def ours_train():
        func.zero_grad()
        y = odeint(func, x.requires_grad_(), t, rtol=TOL, atol=TOL, options=LIKE, adjoint=True,
                   adjoint_params=params, stats=stats)
        y[-1].square().mean().backward()

    def ref_train():
        func.zero_grad()
        y = tdq.odeint_adjoint(ref, x.requires_grad_(), t, rtol=TOL, atol=TOL,
                               adjoint_params=params)
        y[-1].square().mean().backward()

    def one_call():
        with torch.no_grad():
            func(t[0], x)

    # channels_last: the same function and input in NHWC layout, forward and vjp
    func_cl = copy.deepcopy(func).to(memory_format=torch.channels_last)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last)

    def one_call_cl():
        with torch.no_grad():
            func_cl(t[0], x_cl)

    def vjp(f, z):
        z = z.detach().requires_grad_(True)
        out = f(t[0], z)
        torch.autograd.grad(out, (z, *f.parameters()), torch.ones_like(out))

    def ours_forward_inference():  # inference_mode instead of no_grad
        with torch.inference_mode():
            return odeint(func, x, t, rtol=TOL, atol=TOL, options=LIKE)

    # NFE of one call of each, counted on a fresh counter
    counts = {}
    for name, fn in [("forward", (ours_forward, ref_forward)), ("train", (ours_train, ref_train))]:
        stats.reset()
        ref.calls = 0
        fn[0]()
        ours_nfe = (stats.nfe_forward, stats.nfe_backward)
        fn[1]()
        fwd_calls = ref.calls if name == "forward" else None
        counts[name] = {"odenet": ours_nfe, "torchdiffeq": fwd_calls if fwd_calls else ref.calls}
    times = interleaved({"odenet_forward": ours_forward, "torchdiffeq_forward": ref_forward,
                         "odenet_train": ours_train, "torchdiffeq_train": ref_train,
                         "one_call": one_call, "one_call_channels_last": one_call_cl,
                         "one_vjp": lambda: vjp(func, x),
                         "one_vjp_channels_last": lambda: vjp(func_cl, x_cl),
                         "odenet_forward_inference_mode": ours_forward_inference},
                        repeats, sync=_sync(device))
    return {
        "forward": {"odenet_s": times["odenet_forward"],
                    "torchdiffeq_s": times["torchdiffeq_forward"],
                    "ratio": times["odenet_forward"] / times["torchdiffeq_forward"],
                    "nfe_odenet": counts["forward"]["odenet"][0],
                    "nfe_torchdiffeq": counts["forward"]["torchdiffeq"]},
        "forward_adjoint_backward": {
            "odenet_s": times["odenet_train"], "torchdiffeq_s": times["torchdiffeq_train"],
            "ratio": times["odenet_train"] / times["torchdiffeq_train"],
            "nfe_odenet": counts["train"]["odenet"],
            "nfe_total_torchdiffeq": counts["train"]["torchdiffeq"]},
        "one_call_s": times["one_call"],
        "one_call_channels_last_s": times["one_call_channels_last"],
        "one_vjp_s": times["one_vjp"],
        "one_vjp_channels_last_s": times["one_vjp_channels_last"],
        "forward_inference_mode_s": times["odenet_forward_inference_mode"],
    }


_sync = sync_of  # the benches' name for it


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    set_exact_math()  # fp32 as training runs it: IEEE float32, not TF32
    tdq = require_torchdiffeq()
    result = {"machine": machine(args.device), "device": args.device,
              "bookkeeping": bookkeeping(tdq, args.device, args.repeats),
              "block": block(tdq, args.device, max(5, args.repeats // 2))}
    bk, blk = result["bookkeeping"], result["block"]
    print(f"machine: {result['machine']}")
    print(f"1. bookkeeping (dopri5, y'=-y, {SHAPE}): "
          f"odenet {bk['odenet']['ms_per_step']:.2f} ms/step (NFE {bk['odenet']['nfe']}), "
          f"torchdiffeq {bk['torchdiffeq']['ms_per_step']:.2f} ms/step "
          f"(NFE {bk['torchdiffeq']['nfe']}): ratio {bk['ratio_per_step']:.2f} (floor <= 0.5)")
    f, fb = blk["forward"], blk["forward_adjoint_backward"]
    print(f"2. ODE-Net block forward: odenet {1e3 * f['odenet_s']:.1f} ms (NFE {f['nfe_odenet']}), "
          f"torchdiffeq {1e3 * f['torchdiffeq_s']:.1f} ms (NFE {f['nfe_torchdiffeq']}): "
          f"ratio {f['ratio']:.2f}")
    print(f"   forward + adjoint backward: odenet {1e3 * fb['odenet_s']:.1f} ms "
          f"(NFE F/B {fb['nfe_odenet'][0]}/{fb['nfe_odenet'][1]}), torchdiffeq "
          f"{1e3 * fb['torchdiffeq_s']:.1f} ms (NFE F+B {fb['nfe_total_torchdiffeq']}): "
          f"ratio {fb['ratio']:.2f} (floor <= 1.0)")
    print(f"   one ODE-function call: {1e3 * blk['one_call_s']:.2f} ms "
          f"(channels_last {1e3 * blk['one_call_channels_last_s']:.2f} ms); with its vjp "
          f"{1e3 * blk['one_vjp_s']:.2f} ms (channels_last "
          f"{1e3 * blk['one_vjp_channels_last_s']:.2f} ms)")
    print(f"   block forward under inference_mode instead of no_grad: "
          f"{1e3 * blk['forward_inference_mode_s']:.1f} ms")
    print(f"wrote {write_json('solver', result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
