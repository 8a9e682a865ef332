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


# Bogacki-Shampine-style low-order pairs. Neither is FSAL (the last stage is not at the
# propagated solution), so every step evaluates its first stage afresh. torchdiffeq reuses
# the last stage as the next first one anyway, one evaluation fewer per step; odenet keeps
# the method as published (the same solution within the tolerance, more NFE).
def _quadratic(b: list[float]) -> Weights:
    """2nd-order dense output of any 2nd-order method with c_1 = 0: w(theta) = theta e_1 +
    theta^2 (b - e_1); sum w = theta and sum w c = theta^2 / 2 hold because b.c = 1/2."""

    def weights(theta: float) -> list[float]:
        w = [theta**2 * bi for bi in b]
        w[0] += theta - theta**2
        return w

    return weights


_HEUN_B = [0.5, 0.5]
_FEHLBERG2_B = [1 / 512, 255 / 256, 1 / 512]
_FEHLBERG2_BHAT = [1 / 256, 255 / 256, 0.0]  # Fehlberg's 1st-order solution (the 3rd stage's input)

# Dormand & Prince's 8(7) pair (Prince & Dormand 1981, 13 stages + the FSAL stage), with
# its 6th-degree continuous extension: w_i(theta) = theta * P_i(theta), P_i below as
# coefficients of theta^5 .. theta^0 (P_i(1) = b_i).
_DOPRI8_C = [0.0, 1 / 18, 1 / 12, 1 / 8, 5 / 16, 3 / 8, 59 / 400, 93 / 200,
             5490023248 / 9719169821, 13 / 20, 1201146811 / 1299019798, 1.0, 1.0, 1.0]
_DOPRI8_A = [
    [],
    [1 / 18],
    [1 / 48, 1 / 16],
    [1 / 32, 0, 3 / 32],
    [5 / 16, 0, -75 / 64, 75 / 64],
    [3 / 80, 0, 0, 3 / 16, 3 / 20],
    [29443841 / 614563906, 0, 0, 77736538 / 692538347, -28693883 / 1125000000,
     23124283 / 1800000000],
    [16016141 / 946692911, 0, 0, 61564180 / 158732637, 22789713 / 633445777,
     545815736 / 2771057229, -180193667 / 1043307555],
    [39632708 / 573591083, 0, 0, -433636366 / 683701615, -421739975 / 2616292301,
     100302831 / 723423059, 790204164 / 839813087, 800635310 / 3783071287],
    [246121993 / 1340847787, 0, 0, -37695042795 / 15268766246, -309121744 / 1061227803,
     -12992083 / 490766935, 6005943493 / 2108947869, 393006217 / 1396673457,
     123872331 / 1001029789],
    [-1028468189 / 846180014, 0, 0, 8478235783 / 508512852, 1311729495 / 1432422823,
     -10304129995 / 1701304382, -48777925059 / 3047939560, 15336726248 / 1032824649,
     -45442868181 / 3398467696, 3065993473 / 597172653],
    [185892177 / 718116043, 0, 0, -3185094517 / 667107341, -477755414 / 1098053517,
     -703635378 / 230739211, 5731566787 / 1027545527, 5232866602 / 850066563,
     -4093664535 / 808688257, 3962137247 / 1805957418, 65686358 / 487910083],
    [403863854 / 491063109, 0, 0, -5068492393 / 434740067, -411421997 / 543043805,
     652783627 / 914296604, 11173962825 / 925320556, -13158990841 / 6184727034,
     3936647629 / 1978049680, -160528059 / 685178525, 248638103 / 1413531060, 0],
]
_DOPRI8_B = [14005451 / 335480064, 0, 0, 0, 0, -59238493 / 1068277825, 181606767 / 758867731,
             561292985 / 797845732, -1041891430 / 1371343529, 760417239 / 1151165299,
             118820643 / 751138087, -528747749 / 2220607170, 1 / 4, 0]
_DOPRI8_BHAT = [13451932 / 455176623, 0, 0, 0, 0, -808719846 / 976000145,
                1757004468 / 5645159321, 656045339 / 265891186, -3867574721 / 1518517206,
                465885868 / 322736535, 53011238 / 667516719, 2 / 45, 0, 0]
_DOPRI8_P = {
    0: [-6.3448349392860401388, 22.1396504998094068976, -30.0610568289666450593,
        19.9990069333683970610, -6.6910181737837595697, 1.0],
    5: [-39.6107919852202505218, 116.4422149550342161651, -121.4999627731334642623,
        52.2273532792945524050, -7.6142658045872677172, 0.0],
    6: [20.3761213808791436958, -67.1451318825957197185, 83.1721004639847717481,
        -46.8919164181093621583, 10.7281392630428866124, 0.0],
    7: [7.3347098826795362023, -16.5672243527496524646, 9.5724507555993664382,
        -0.1890893225010595467, 0.5526637063753648783, 0.0],
    8: [32.8801774352459155182, -89.9916014847245016028, 87.8406057677205645007,
        -35.7075975946222072821, 4.2186562625665153803, 0.0],
    9: [-10.1588990526426760954, 22.6237489648532849093, -17.4152107770762969005,
        6.2736448083240352160, -0.6627209125361597559, 0.0],
    10: [-12.5401268098782561200, 32.2362340167355370113, -28.5903289514790976966,
         10.3160881272450748458, -1.2636789001135462218, 0.0],
    11: [29.5553001484516038033, -82.1020315488359848644, 81.6630950584341412934,
         -34.7650769866611817349, 5.4106037898590422230, 0.0],
    12: [-41.7923486424390588923, 116.2662185791119533462, -114.9375291377009418170,
         47.7457971078225540396, -7.0321379067945741781, 0.0],
    13: [20.3006925822100825485, -53.9020777466385396792, 50.2558364226176017553,
         -19.0082099341608028453, 2.3537586759714983486, 0.0],
}


def _dopri8_weights(theta: float) -> list[float]:
    w = [0.0] * 14
    for i, coefs in _DOPRI8_P.items():
        p = 0.0
        for c in coefs:  # Horner
            p = p * theta + c
        w[i] = theta * p
    return w


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
    # Heun's third-order method (as torchdiffeq's heun3)
    "heun3": Tableau("heun3", 3, c=[0.0, 1 / 3, 2 / 3], a=[[], [1 / 3], [0.0, 2 / 3]],
                     b=[1 / 4, 0.0, 3 / 4]),
    # Heun's method with Euler as the embedded 1st-order solution
    "adaptive_heun": Tableau(
        "adaptive_heun", 2, c=[0.0, 1.0], a=[[], [1.0]], b=_HEUN_B,
        error=[b - bh for b, bh in zip(_HEUN_B, [1.0, 0.0])],
        interp=_quadratic(_HEUN_B),
    ),
    # Fehlberg's 2(1) pair, propagating the 2nd-order solution (local extrapolation)
    "fehlberg2": Tableau(
        "fehlberg2", 2, c=[0.0, 0.5, 1.0], a=[[], [0.5], [1 / 256, 255 / 256]],
        b=_FEHLBERG2_B,
        error=[b - bh for b, bh in zip(_FEHLBERG2_B, _FEHLBERG2_BHAT)],
        interp=_quadratic(_FEHLBERG2_B),
    ),
    "dopri8": Tableau(
        "dopri8", 8, c=_DOPRI8_C, a=_DOPRI8_A + [_DOPRI8_B[:13]], b=_DOPRI8_B,
        error=[b - bh for b, bh in zip(_DOPRI8_B, _DOPRI8_BHAT)],
        fsal=True,
        interp=_dopri8_weights,
    ),
}
