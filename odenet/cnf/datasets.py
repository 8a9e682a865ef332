"""Two-dimensional toy densities, generated in code from a seed (no downloads).

Every dataset is a function ``sample(n, rng) -> (n, 2) float32 array``. Where the density
has a closed form (or a one-dimensional integral that quadrature resolves to float
precision), ``log_density(name, x)`` returns it: it gives the "target" panel of the
figures and the data's own NLL (its entropy), the floor no model can beat on average.

Scales follow the toy data of FFJORD (Grathwohl et al. 2019), so that the data live in
roughly [-4, 4]² and a standard normal base density is a sensible starting point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

# ----------------------------------------------------------------------------- samplers

MOONS_NOISE = 0.2  # std of the Gaussian noise around each moon, in output units
CIRCLES_NOISE = 0.24
CIRCLES_RADII = (3.0, 1.5)
GAUSS8_SCALE = 4.0 / math.sqrt(2.0)  # centres on a circle of this radius
GAUSS8_STD = 0.5 / math.sqrt(2.0)


def _moons_curve(theta: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Point on the upper (which=0) or lower (which=1) moon, before noise.

    sklearn's make_moons curves, times 2, shifted by (-1, -0.2) to centre them.
    """
    upper = np.stack([np.cos(theta), np.sin(theta)], 1)
    lower = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], 1)
    pts = np.where(which[:, None] == 0, upper, lower)
    return pts * 2.0 + np.array([-1.0, -0.2])


def moons(n: int, rng: np.random.Generator) -> np.ndarray:
    theta = rng.uniform(0.0, math.pi, n)
    which = rng.integers(0, 2, n)
    return _moons_curve(theta, which) + MOONS_NOISE * rng.standard_normal((n, 2))


def circles(n: int, rng: np.random.Generator) -> np.ndarray:
    theta = rng.uniform(0.0, 2 * math.pi, n)
    radius = np.asarray(CIRCLES_RADII)[rng.integers(0, 2, n)]
    pts = radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
    return pts + CIRCLES_NOISE * rng.standard_normal((n, 2))


def _gauss8_centres() -> np.ndarray:
    angles = np.arange(8) * (2 * math.pi / 8)
    return GAUSS8_SCALE * np.stack([np.cos(angles), np.sin(angles)], 1)


def gaussians8(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = _gauss8_centres()[rng.integers(0, 8, n)]
    return centres + GAUSS8_STD * rng.standard_normal((n, 2))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 dark squares of a 4×4 board of side 2 covering [-4, 4]²."""
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2.0


def pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    """Five curved arms (FFJORD's pinwheel; no closed-form density)."""
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    labels = rng.integers(0, num_classes, n)
    angles = rads[labels] + rate * np.exp(feats[:, 0])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], 1)
    rot = rot.reshape(-1, 2, 2)
    return 2.0 * np.einsum("ti,tij->tj", feats, rot)


def spirals2(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved spirals (FFJORD's 2spirals; no closed-form density)."""
    m = np.sqrt(rng.uniform(0.0, 1.0, n)) * 540 * (2 * np.pi) / 360
    sign = np.where(rng.integers(0, 2, n) == 0, 1.0, -1.0)
    d1x = -np.cos(m) * m + rng.uniform(0.0, 1.0, n) * 0.5
    d1y = np.sin(m) * m + rng.uniform(0.0, 1.0, n) * 0.5
    return sign[:, None] * np.stack([d1x, d1y], 1) / 3.0


SAMPLERS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "moons": moons,
    "circles": circles,
    "8gaussians": gaussians8,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "2spirals": spirals2,
}
DATASETS = tuple(SAMPLERS)


def sample(name: str, n: int, seed: int | Sequence[int]) -> torch.Tensor:
    """``n`` points of dataset ``name`` as a float32 tensor, reproducible from ``seed``
    (an int or a sequence of ints: numpy's SeedSequence entropy)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(list(seed) if isinstance(seed, Sequence) else seed)
    return torch.from_numpy(SAMPLERS[name](n, rng).astype(np.float32))


# ----------------------------------------------------------------------------- densities

_QUAD = 1024  # quadrature points per curve; log-density error < 1e-3 (moons' ends)


def _log_mean_gauss(x: np.ndarray, centres: np.ndarray, std: float) -> np.ndarray:
    """log of the mean over ``centres`` of N(x; centre, std² I), for x (n, 2)."""
    out = np.empty(len(x))
    c2 = (centres**2).sum(1)
    for lo in range(0, len(x), 4096):  # chunks keep the (n, m) matrix small
        xs = x[lo : lo + 4096]
        d2 = (xs**2).sum(1)[:, None] + c2[None, :] - 2.0 * xs @ centres.T
        a = -0.5 * np.maximum(d2, 0.0) / std**2
        amax = a.max(1, keepdims=True)
        lse = amax[:, 0] + np.log(np.exp(a - amax).mean(1))
        out[lo : lo + 4096] = lse - math.log(2 * math.pi * std**2)
    return out


def _moons_logpdf(x: np.ndarray) -> np.ndarray:
    theta = (np.arange(_QUAD) + 0.5) * (math.pi / _QUAD)  # midpoint rule on [0, pi]
    centres = np.concatenate(
        [_moons_curve(theta, np.zeros(_QUAD, int)), _moons_curve(theta, np.ones(_QUAD, int))]
    )
    return _log_mean_gauss(x, centres, MOONS_NOISE)


def _circles_logpdf(x: np.ndarray) -> np.ndarray:
    theta = np.arange(_QUAD) * (2 * math.pi / _QUAD)  # periodic: the rectangle rule is exact
    ring = np.stack([np.cos(theta), np.sin(theta)], 1)
    centres = np.concatenate([r * ring for r in CIRCLES_RADII])
    return _log_mean_gauss(x, centres, CIRCLES_NOISE)


def _gauss8_logpdf(x: np.ndarray) -> np.ndarray:
    return _log_mean_gauss(x, _gauss8_centres(), GAUSS8_STD)


def _checkerboard_logpdf(x: np.ndarray) -> np.ndarray:
    u = x / 2.0  # board coordinates: x1 in [-2, 2), x2 in [-2, 2)
    inside = (np.abs(u) < 2.0).all(1)
    dark = (np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 0
    # 8 dark unit squares in board coordinates, area 8 * 4 = 32 in data coordinates
    return np.where(inside & dark, -math.log(32.0), -np.inf)


LOG_DENSITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "moons": _moons_logpdf,
    "circles": _circles_logpdf,
    "8gaussians": _gauss8_logpdf,
    "checkerboard": _checkerboard_logpdf,
}


def has_log_density(name: str) -> bool:
    return name in LOG_DENSITIES


def log_density(name: str, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The data's true log-density at ``x`` (n, 2); ValueError where it has no closed form."""
    if name not in LOG_DENSITIES:
        raise ValueError(f"dataset {name!r} has no closed-form density")
    xs = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return torch.from_numpy(LOG_DENSITIES[name](xs.astype(np.float64)))


def histogram_density(
    name: str, edges: np.ndarray, n: int = 400_000, seed: int = 0
) -> np.ndarray:
    """Density on the grid cells of ``edges`` (1-D, shared by both axes) from n samples.

    For the figures of datasets without a closed form. Returns (len(edges)-1,)*2,
    indexed [y, x] like an image.
    """
    pts = sample(name, n, seed).numpy()
    h, _, _ = np.histogram2d(pts[:, 1], pts[:, 0], bins=[edges, edges], density=True)
    return h
