"""The "adams" family: explicit Adams-Bashforth on a fixed grid (method "explicit_adams").

As torchdiffeq's explicit_adams: the first two steps are Runge-Kutta 4 (Kutta's 3/8
rule), then each step is Adams-Bashforth of order min(steps so far + 1, max_order - 1),
one evaluation per step. The weights are those of the actual previous times (the
integral of the polynomial through the stored derivatives), so the shortened step that
lands on an output time stays consistent; on a uniform grid they are the classical ones.
"""

from __future__ import annotations

import collections
from fractions import Fraction
from functools import lru_cache

import torch

from .device import read
from .rk import Tally, _combine, _where, fixed_grid
from .stats import SolverError

MAX_ORDER = 12  # torchdiffeq's default options["max_order"]: orders up to 11
START_ORDER = 3  # below this many stored derivatives a step is RK4 (torchdiffeq's rule)
_NODE_DIGITS = 9  # nodes rounded so a uniform grid hits the cache every step

# Kutta's 3/8 rule (rows: stage inputs; last: the solution weights)
_RK38_A = [[1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]]
_RK38_C = [1 / 3, 2 / 3, 1.0]
_RK38_B = [1 / 8, 3 / 8, 3 / 8, 1 / 8]


@lru_cache(maxsize=64)
def bashforth_weights(nodes: tuple[float, ...]) -> tuple[float, ...]:
    """w_j = integral over [0, 1] of the Lagrange polynomial of node j (nodes in units of
    the step, relative to the current time: 0, then the earlier ones), in exact rationals."""
    xs = [Fraction(x).limit_denominator(10**_NODE_DIGITS) for x in nodes]
    weights = []
    for j, xj in enumerate(xs):
        poly = [Fraction(1)]  # coefficients, lowest power first
        denom = Fraction(1)
        for m, xm in enumerate(xs):
            if m == j:
                continue
            poly = [Fraction(0)] + poly  # times x
            for p in range(len(poly) - 1):
                poly[p] -= xm * poly[p + 1]
            denom *= xj - xm
        weights.append(float(sum(c / (p + 1) for p, c in enumerate(poly)) / denom))
    return tuple(weights)


def solve(fn, y0: torch.Tensor, times: list[float], method, rtol, atol, options: dict,
          tally: Tally, norm=None) -> torch.Tensor:
    counts = fixed_grid(times, options["step_size"], options["max_num_steps"])
    step_size = options["step_size"]
    history = collections.deque(maxlen=max(1, options["max_order"] - 1))  # (t, f), newest first
    ys = [y0]
    y = y0
    for i, n in enumerate(counts, start=1):
        ta, tb = times[i - 1], times[i]
        direction = 1.0 if tb > ta else -1.0
        for k in range(n):
            t = ta + direction * k * step_size if k else ta
            h = (tb - t) if k == n - 1 else direction * step_size
            f0 = fn(t, y)
            tally.nfe += 1
            history.appendleft((t, f0))
            order = min(len(history), options["max_order"] - 1)
            if order < START_ORDER:
                ks = [f0]
                for row, c in zip(_RK38_A, _RK38_C):
                    ks.append(fn(t + c * h, _combine(y, ks, row, h)))
                    tally.nfe += 1
                y = _combine(y, ks, _RK38_B, h)
            else:
                nodes = tuple(round((tj - t) / h, _NODE_DIGITS) for tj, _ in
                              list(history)[:order])
                fs = [f for _, f in list(history)[:order]]
                y = _combine(y, fs, bashforth_weights(nodes), h)
            tally.accepted += 1
        ys.append(y)
        if not read(torch.isfinite(y).all()):
            raise SolverError(
                f"the state became NaN/Inf {_where(tb, step_size or abs(tb - ta), tally)}: "
                "use a smaller step_size or an adaptive method")
    return torch.stack(ys)
