"""Figures of the density experiments, drawn from what runs wrote (checkpoint.pt).

- ``density_<dataset>.png`` (the paper's Figure 4): target density, planar-flow
  density and CNF density side by side on one grid, each with its test NLL.
- ``flow_<dataset>.png`` (Figures 5/6): the CNF's transformation from noise to data,
  density p_t (top) and samples z(t) (bottom) at evenly spaced t; samples are coloured
  by the angle of their starting point so that one can follow them.

``write_density_figures(runs, out_dir)`` is the "density" entry of the figures registry
(odenet/report/figure_registry.py; runs: objects with ``dir`` and ``metrics``, as
odenet.report.runs.load_runs returns). Models come back through odenet.training.checkpoint_file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odenet.cnf import datasets
from odenet.config.model_registry import MODELS
from odenet.run.record import CHECKPOINT_FILE, DENSITY
from odenet.training.checkpoint_file import load, load_model

EXTENT = {"moons": 3.5}  # half-width of the square drawn; 4.5 for the other datasets
GRID = 160  # grid points per axis for densities


def extent(name: str) -> float:
    return EXTENT.get(name, 4.5)


def grid_points(lim: float, n: int = GRID) -> tuple[torch.Tensor, float]:
    """Cell centres of an n×n grid on [-lim, lim]², as (n², 2) in image order (row = y),
    and the cell area."""
    edges = np.linspace(-lim, lim, n + 1)
    mid = 0.5 * (edges[1:] + edges[:-1])
    xx, yy = np.meshgrid(mid, mid)
    pts = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32))
    return pts, float((edges[1] - edges[0]) ** 2)


@torch.no_grad()
def model_density(model: Any, lim: float, n: int = GRID, batch: int = 8192,
                  t: float | None = None) -> np.ndarray:
    """exp(log p) of a density model on the grid, (n, n) indexed [y, x]; ``t``: a CNF's
    density of z(t) instead of the data end."""
    model.eval()
    pts, _ = grid_points(lim, n)
    pts = pts.to(next(model.parameters()).dtype)
    out = []
    for lo in range(0, len(pts), batch):
        x = pts[lo : lo + batch]
        lp = model.log_prob(x) if t is None else model.log_prob_at(x, t)
        out.append(lp.exp())
    return torch.cat(out).reshape(n, n).double().numpy()


def target_density(name: str, lim: float, n: int = GRID) -> np.ndarray:
    """The data's density on the grid: closed form where there is one, else a histogram."""
    if datasets.has_log_density(name):
        pts, _ = grid_points(lim, n)
        return datasets.log_density(name, pts).exp().reshape(n, n).numpy()
    return datasets.histogram_density(name, np.linspace(-lim, lim, n + 1))


# ------------------------------------------------------------------------ runs
def density_runs(runs: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """{dataset: {model name: run}} over finished density runs with a checkpoint; where
    several runs share a dataset and model, the lowest test NLL wins."""
    best: dict[str, dict[str, Any]] = {}
    for run in runs:
        m = run.metrics
        if m.get("task") != DENSITY or m.get("status") != "finished":
            continue
        if not (Path(run.dir) / CHECKPOINT_FILE).is_file() or m.get("test_nll") is None:
            continue
        ds = m.get("dataset") or \
            load(Path(run.dir) / CHECKPOINT_FILE)["config"]["data"]["name"]
        slot = best.setdefault(ds, {})
        old = slot.get(m["model"])
        if old is None or m["test_nll"] < old.metrics["test_nll"]:
            slot[m["model"]] = run
    return best


# ------------------------------------------------------------------------ drawing
def _imshow(ax, dens: np.ndarray, lim: float, title: str) -> None:
    ax.imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis",
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_density_comparison(name: str, panels: list[tuple[str, np.ndarray]], path: Path):
    """One row: the panels (title, density on the grid) of dataset ``name``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = extent(name)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8))
    for ax, (title, dens) in zip(np.atleast_1d(axes), panels):
        _imshow(ax, dens, lim, title)
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


@torch.no_grad()
def draw_flow(model: Any, name: str, path: Path, steps: int = 5, samples: int = 4000,
              seed: int = 0, grid: int = 100) -> None:
    """The CNF's noise → data transformation: density p_t and samples z(t) at ``steps``
    times from t0 to t1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = extent(name)
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(samples, model.dim, generator=g) * model.base_std
    path_z = model.transform(z0, steps).numpy()
    times = np.linspace(model.t0, model.t1, steps)
    colour = (torch.atan2(z0[:, 1], z0[:, 0]).numpy() + math.pi) / (2 * math.pi)
    fig, axes = plt.subplots(2, steps, figsize=(2.2 * steps, 4.6))
    for k, t in enumerate(times):
        _imshow(axes[0, k], model_density(model, lim, grid, t=float(t)), lim, f"t = {t:.2g}")
        ax = axes[1, k]
        ax.scatter(path_z[k, :, 0], path_z[k, :, 1], c=colour, cmap="hsv", s=1.5,
                   linewidths=0, rasterized=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("density p_t")
    axes[1, 0].set_ylabel("samples z(t)")
    fig.suptitle(f"{name}: noise (t = {model.t0:g}) to data (t = {model.t1:g})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _nll(run: Any) -> str:
    v = run.metrics.get("test_nll")
    return "" if v is None else f", NLL {v:.3f}"


def write_density_figures(runs: Sequence[Any], out_dir: str | Path
                          ) -> tuple[dict[str, Path], dict[str, str]]:
    """density_<dataset>.png and flow_<dataset>.png for every dataset with density runs;
    returns ({figure: path}, {figure: why skipped})."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    by_ds = density_runs(runs)
    if not by_ds and runs:
        skipped["density"] = "no finished density run with a checkpoint"
    for ds, models in sorted(by_ds.items()):
        lim = extent(ds)
        floor = ""
        if datasets.has_log_density(ds):
            test = datasets.sample(ds, 5000, [0, 2])
            floor = f", NLL {-datasets.log_density(ds, test).mean().item():.3f}"
        panels = [(f"target{floor}", target_density(ds, lim))]
        # the paper's Figure 4, left to right: the baseline flows, then the ODE-based ones
        kinds = sorted(models, key=lambda k: (MODELS[k].ode_block, k))
        flows = [k for k in kinds if MODELS[k].ode_block]
        nets = {k: load_model(Path(models[k].dir) / CHECKPOINT_FILE)[0] for k in kinds}
        for kind in kinds:
            panels.append((f"{MODELS[kind].title} {nets[kind].size_label()}"
                           f"{_nll(models[kind])}", model_density(nets[kind], lim)))
        name = f"density_{ds}"
        draw_density_comparison(ds, panels, out / f"{name}.png")
        written[name] = out / f"{name}.png"
        if flows:  # noise to data over t: the continuous flow (the first, if several)
            draw_flow(nets[flows[0]], ds, out / f"flow_{ds}.png")
            written[f"flow_{ds}"] = out / f"flow_{ds}.png"
        else:
            skipped[f"flow_{ds}"] = "no finished continuous flow (model with an ODE block)"
    return written, skipped
