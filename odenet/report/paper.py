"""The paper's own Table 1 (Chen et al. 2018, MNIST), to print beside our numbers.

Source: ../shared/docs/paper.md. The paper gives memory and time only as O(.):
L = ResNet layers, L~ = function evaluations per forward pass (NFE).
"""

from __future__ import annotations

# key -> display name, test error (fraction), parameter count (as rounded in the paper),
# memory and time (as the paper states them).
TABLE1 = {
    "mlp": {"name": "1-layer MLP", "test_error": 0.0160, "params": 240_000,
            "memory": "-", "time": "-"},
    "resnet": {"name": "ResNet", "test_error": 0.0041, "params": 600_000,
               "memory": "O(L)", "time": "O(L)"},
    "rknet": {"name": "RK-Net", "test_error": 0.0047, "params": 220_000,
              "memory": "O(L~)", "time": "O(L~)"},
    "odenet": {"name": "ODE-Net", "test_error": 0.0042, "params": 220_000,
               "memory": "O(1)", "time": "O(L~)"},
}
MODEL_ORDER = ("mlp", "resnet", "rknet", "odenet")


def paper_key(metrics: dict) -> str | None:
    """Which paper row a run corresponds to. An ODE block trained with the adjoint is the
    paper's ODE-Net, one trained by backprop through the solver is its RK-Net, whatever
    the run's ``model`` name says (``model=odenet solver.adjoint=false`` is an RK-Net)."""
    model = metrics.get("model")
    if model in ("odenet", "rknet"):
        return "odenet" if metrics.get("solver_adjoint") else "rknet"
    return model if model in TABLE1 else None
