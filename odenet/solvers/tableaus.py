"""Butcher tableaus of the explicit Runge-Kutta methods, with their dense output.

Every method is data: the stepping core in `rk.py` is shared. Coefficients are exact
fractions where the literature gives them, else the published decimals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Weights = Callable[[float], list[float]]


@dataclass(frozen=True)
class Tableau:
    name: str
    order: int  # order of the solution that is propagated
    c: list[float]  # stage times (fractions of the step)
    a: list[list[float]]  # a[i] = coefficients of stages 0..i-1 for stage i
    b: list[float]  # weights of the propagated solution
    error: list[float] | None = None  # b - b_hat of the embedded pair; None: fixed grid
    fsal: bool = False  # last stage is f(t + h, y1): reused as the next step's first
    interp: Weights | None = None  # theta -> weights w with y(t + theta h) = y + h sum w_i k_i
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.error is not None

    def tensors(self, dtype: torch.dtype, device: torch.device) -> dict[str, object]:
        """Coefficient vectors as tensors on (dtype, device), built once per pair."""
        key = (dtype, device)
        if key not in self._cache:
            def vec(values):
                return torch.tensor(values, dtype=dtype, device=device)

            self._cache[key] = {
                "a": [vec(row) if row else None for row in self.a],
                "b": vec(self.b),
                "error": vec(self.error) if self.error is not None else None,
            }
        return self._cache[key]


def _hermite(b: list[float], last: int) -> Weights:
    """Cubic Hermite through (y0, f0) and (y1, f1): 3rd-order dense output for FSAL pairs."""

    def weights(theta: float) -> list[float]:
        h10 = theta**3 - 2 * theta**2 + theta
        h01 = -2 * theta**3 + 3 * theta**2
        h11 = theta**3 - theta**2
        w = [h01 * bi for bi in b]
        w[0] += h10
        w[last] += h11
        return w

    return weights


# Dormand-Prince 5(4) with Hairer's 4th-order continuous extension (dopri5.f, CONTD5).
# The embedded 4th-order weights are Shampine's (as torchdiffeq), not Hairer's
# 5179/57600...: both satisfy the order conditions (tested); these give the reference's
# step sequence, so NFE compare like for like (Hairer's took 32 vs 26 NFE on ODE-Net).
_DOPRI5_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_DOPRI5_BHAT = [1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60]
_DOPRI5_D = [
    -12715105075 / 11282082432, 0.0, 87487479700 / 32700410799, -10690763975 / 1880347072,
    701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423,
]


def _dopri5_weights(theta: float) -> list[float]:
    # y(theta) = y0 + theta*(r2 + (1-theta)*(r3 + theta*(r4 + (1-theta)*r5))) with
    # r2 = h b.k, r3 = h (e1 - b).k, r4 = h (2b - e1 - e7).k, r5 = h d.k, expanded in k.
    one = 1.0 - theta
    w = []
    for i, (bi, di) in enumerate(zip(_DOPRI5_B, _DOPRI5_D)):
        e1 = 1.0 if i == 0 else 0.0
        e7 = 1.0 if i == 6 else 0.0
        w.append(theta * bi + theta * one * (e1 - bi)
                 + theta**2 * one * (2 * bi - e1 - e7) + theta**2 * one**2 * di)
    return w


# Tsitouras 5(4) (2011) with its 4th-order interpolant.
_TSIT5_B = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
            -3.290069515436081, 2.324710524099774, 0.0]
_TSIT5_ERROR = [-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
                -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 1 / 66]


def _tsit5_weights(theta: float) -> list[float]:
    t = theta
    t2 = t * t
    return [
        -1.0530884977290216 * t * (t - 1.3299890189751412)
        * (t2 - 1.4364028541716351 * t + 0.7139816917074209),
        0.1017 * t2 * (t2 - 2.1966568338249754 * t + 1.2949852507374631),
        2.490627285651252793 * t2 * (t2 - 2.38535645472061657 * t + 1.57803468208092486),
        -16.54810288924490272 * (t - 1.21712927295533244) * (t - 0.61620406037800089) * t2,
        47.37952196281928122 * (t - 1.203071208372362603) * (t - 0.658047292653547382) * t2,
        -34.87065786149660974 * (t - 1.2) * (t - 2 / 3) * t2,
        2.5 * (t - 1) * (t - 0.6) * t2,
    ]


_BOSH3_B = [2 / 9, 1 / 3, 4 / 9, 0.0]
_BOSH3_BHAT = [7 / 24, 1 / 4, 1 / 3, 1 / 8]

TABLEAUS: dict[str, Tableau] = {
    "euler": Tableau("euler", 1, c=[0.0], a=[[]], b=[1.0]),
    "midpoint": Tableau("midpoint", 2, c=[0.0, 0.5], a=[[], [0.5]], b=[0.0, 1.0]),
    "rk4": Tableau(
        "rk4", 4, c=[0.0, 0.5, 0.5, 1.0],
        a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
        b=[1 / 6, 1 / 3, 1 / 3, 1 / 6],
    ),
    "bosh3": Tableau(
        "bosh3", 3, c=[0.0, 0.5, 0.75, 1.0],
        a=[[], [0.5], [0.0, 0.75], [2 / 9, 1 / 3, 4 / 9]],
        b=_BOSH3_B,
        error=[b - bh for b, bh in zip(_BOSH3_B, _BOSH3_BHAT)],
        fsal=True,
        interp=_hermite(_BOSH3_B, last=3),
    ),
    "dopri5": Tableau(
        "dopri5", 5, c=[0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0],
        a=[
            [],
            [1 / 5],
            [3 / 40, 9 / 40],
            [44 / 45, -56 / 15, 32 / 9],
            [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
            [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
            _DOPRI5_B[:6],
        ],
        b=_DOPRI5_B,
        error=[b - bh for b, bh in zip(_DOPRI5_B, _DOPRI5_BHAT)],
        fsal=True,
        interp=_dopri5_weights,
    ),
    "tsit5": Tableau(
        "tsit5", 5, c=[0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0],
        a=[
            [],
            [0.161],
            [-0.008480655492356989, 0.335480655492357],
            [2.897153057105493, -6.359448489975075, 4.3622954328695815],
            [5.325864828439257, -11.748883564062828, 7.4955393428898365,
             -0.09249506636175525],
            [5.86145544294642, -12.92096931784711, 8.159367898576159,
             -0.071584973281401, -0.028269050394068383],
            _TSIT5_B[:6],
        ],
        b=_TSIT5_B,
        error=_TSIT5_ERROR,
        fsal=True,
        interp=_tsit5_weights,
    ),
}

FIXED_METHODS = tuple(name for name, tab in TABLEAUS.items() if not tab.adaptive)
ADAPTIVE_METHODS = tuple(name for name, tab in TABLEAUS.items() if tab.adaptive)
METHODS = FIXED_METHODS + ADAPTIVE_METHODS
