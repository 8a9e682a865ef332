"""Solve statistics, returned as data, and the error a solve that cannot proceed raises."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class SolveStats:
    """Counters that accumulate over every solve they are passed to; `reset()` zeroes them.

    `nfe_forward` counts calls of `func` made by forward solves; `nfe_backward` those made
    in backward: the adjoint's backward solves, checkpoint's replayed steps, reversible's
    rebuilt steps, and the len(t) calls of t gradients (direct backprop replays autograd's
    graph instead and calls `func` no more, so it stays 0 there).
    `steps_accepted_backward` counts the adjoint's accepted backward steps, or the steps
    checkpoint and reversible go back through.
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int = 0
    steps_rejected: int = 0
    steps_accepted_backward: int = 0
    steps_rejected_backward: int = 0

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class SolverError(RuntimeError):
    """A solve that cannot proceed: step size underflow, too many steps, NaN/Inf state."""
