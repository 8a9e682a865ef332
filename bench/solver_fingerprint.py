"""Record the outputs, gradients and stats of a fixed set of solves, or check them against
a recording bit for bit (torch.equal): the guard for refactors of odenet/solvers/ that
must not change a single result.

    python -m bench.solver_fingerprint record /tmp/before.pt
    python -m bench.solver_fingerprint check /tmp/before.pt   # exit 1 on any difference
"""

from __future__ import annotations

import sys
from functools import partial

import torch

from odenet.models.blocks import ODEFunc
from odenet.solvers import SolveStats, odeint, odeint_event

ADAPTIVE = ("dopri5", "bosh3", "tsit5", "dopri8", "adaptive_heun", "adaptive_reversible_heun")
FIXED = ("euler", "rk4", "explicit_adams", "reversible_heun")


class MLP(torch.nn.Module):
    def __init__(self, n: int, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(n, 16, generator=g, dtype=dtype) / 2)
        self.w2 = torch.nn.Parameter(torch.randn(16, n, generator=g, dtype=dtype) / 4)

    def forward(self, t, y):
        return torch.tanh(y @ self.w1 + torch.sin(3 * t)) @ self.w2 - 0.1 * y


def run(func, y0, t, **kw):
    """Outputs, gradients (y0, t, params) of sum(ys * weights), and the stats."""
    stats = SolveStats()
    y0 = y0.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    func.zero_grad(set_to_none=True)
    ys = odeint(func, y0, t, stats=stats, **kw)
    w = torch.linspace(-1, 1, ys.numel(), dtype=ys.dtype).view_as(ys)
    (ys * w).sum().backward()
    out = {"ys": ys.detach(), "gy0": y0.grad, "gt": t.grad}
    out.update({f"g_{n}": p.grad for n, p in func.named_parameters()})
    return out, stats.as_dict()


def cases():
    for dtype in (torch.float64, torch.float32):
        func = MLP(3, dtype)
        y0 = torch.tensor([0.5, -1.0, 2.0], dtype=dtype)
        t = torch.tensor([0.0, 0.3, 1.0, 2.5], dtype=dtype)
        solve = partial(run, func, y0)
        for method in ADAPTIVE:
            rev = "reversible" in method
            grads = ["backprop", "adjoint", "reversible" if rev else "checkpoint"]
            for last in (("clamp",) if rev else ("clamp", "overshoot")):
                for g in grads:
                    yield (f"{dtype}-{method}-{last}-{g}",
                           partial(solve, t, method=method, rtol=1e-5, atol=1e-7,
                                   options={"last_step": last}, gradient=g))
            yield (f"{dtype}-{method}-reverse-time",
                   partial(solve, t.flip(0), method=method, rtol=1e-4, atol=1e-6))
        for method in FIXED:
            yield (f"{dtype}-{method}-fixed",
                   partial(solve, t, method=method, options={"step_size": 0.1}))
        yield (f"{dtype}-dopri5-PI-bounds-seminorm", partial(
            solve, t, rtol=1e-6, atol=1e-8, adjoint=True, adjoint_options={"norm": "seminorm"},
            options={"controller": "PI", "max_step": 0.2, "first_step": 0.05}))
        yield (f"{dtype}-dopri5-elementwise-tol", partial(
            solve, t, rtol=torch.tensor([1e-4, 1e-6, 1e-5], dtype=dtype), atol=1e-7))
        yield (f"{dtype}-rk-zero-f", partial(_zero_f, dtype))
        yield (f"{dtype}-event", partial(_event, func, y0))
    yield ("float32-odenet-block", _block)


def _zero_f(dtype):
    """f = 0 at the start (a float32 first step at the floor)."""
    with torch.no_grad():
        s = SolveStats()
        ys = odeint(lambda t, y: -(y - 1), torch.ones(3, dtype=dtype),
                    torch.tensor([0.0, 1.0], dtype=dtype), stats=s)
    return {"ys": ys}, s.as_dict()


def _event(func, y0):
    y0 = y0.clone().requires_grad_(True)
    stats = SolveStats()
    t_ev, ys = odeint_event(func, y0, torch.tensor(0.0, dtype=y0.dtype),
                            event_fn=lambda t, y: y[0] - 0.3 * y[0].detach() - 0.1 - t,
                            rtol=1e-6, atol=1e-8, stats=stats)
    (t_ev + ys[-1].sum()).backward()
    return {"t": t_ev.detach(), "ys": ys.detach(), "gy0": y0.grad}, stats.as_dict()


def _block():
    torch.manual_seed(0)
    func = ODEFunc(8)
    x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 1.0])
    result = {}
    stats_all = {}
    for g in ("adjoint", "backprop", "checkpoint"):
        for last in ("clamp", "overshoot"):
            out, stats = run(func, x, t, rtol=1e-3, atol=1e-3, gradient=g,
                             adjoint_params=tuple(func.parameters()) if g != "backprop" else None,
                             options={"last_step": last})
            result.update({f"{g}-{last}-{k}": v for k, v in out.items()})
            stats_all.update({f"{g}-{last}-{k}": v for k, v in stats.items()})
    with torch.no_grad():
        s = SolveStats()
        result["no_grad"] = odeint(func, x, t, rtol=1e-3, atol=1e-3, stats=s)
        stats_all.update({f"no_grad-{k}": v for k, v in s.as_dict().items()})
    return result, stats_all


def record() -> dict:
    torch.set_num_threads(1)
    results = {}
    for name, fn in cases():
        try:
            results[name] = fn()
        except Exception as e:  # a failing solve is a result too
            results[name] = f"{type(e).__name__}: {e}"
    return results


def main(argv: list[str]) -> int:
    mode, path = argv
    results = record()
    if mode == "record":
        torch.save(results, path)
        print(f"recorded {len(results)} cases to {path}")
        return 0
    before = torch.load(path, weights_only=False)
    bad = []
    for name in sorted(set(before) | set(results)):
        a, b = before.get(name), results.get(name)
        if isinstance(a, str) or isinstance(b, str):
            if a != b:
                bad.append(f"{name}: {a!r} -> {b!r}")
            continue
        if a is None or b is None:
            bad.append(f"{name}: missing on one side")
            continue
        (ta, sa), (tb, sb) = a, b
        if sa != sb:
            bad.append(f"{name}: stats {sa} -> {sb}")
        for k in sorted(set(ta) | set(tb)):
            x, y = ta.get(k), tb.get(k)
            same = (x is None and y is None) or (x is not None and y is not None
                                                 and torch.equal(x, y))
            if not same:
                bad.append(f"{name}: {k} differs")
    print("\n".join(bad) if bad else f"all {len(results)} cases equal bit for bit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
