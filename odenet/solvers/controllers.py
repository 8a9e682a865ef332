"""Step-size controllers of the adaptive solvers: given the step just tried and its error
ratio (error / tolerance, accept when <= 1), propose the next step.

A controller is an object with `first(h)`, `accepted(h, ratio)`, `rejected(h, ratio)` and
`must_accept(h)`; `make_controller(options, order)` builds the one an `options` dict asks
for. A new controller (e.g. a PID) is one more class here and one more name in
`CONTROLLERS`. The arithmetic of I and PI is the one odenet always used: the same steps,
step for step.
"""

from __future__ import annotations

import math

SAFETY = 0.9  # aim below the tolerance, so the next step is rarely rejected
IFACTOR = 10.0  # largest growth of the step after an accepted step
DFACTOR = 0.2  # largest shrink after a rejected step
# Hairer & Wanner II (IV.2): the PI controller h * ratio^(-PI_ALPHA/q) * prev^(PI_BETA/q)
PI_ALPHA = 0.7
PI_BETA = 0.4
PREV_RATIO_FLOOR = 1e-4  # an accepted step with ~zero error must not blow up the PI term


class IController:
    """The integral controller (as torchdiffeq): factor = safety * ratio^(-1/q), bounded by
    [1, ifactor] after an accepted step (never shrink) and [dfactor, 1] after a rejection."""

    def __init__(self, order: int, safety: float = SAFETY, ifactor: float = IFACTOR,
                 dfactor: float = DFACTOR):
        self.exponent = 1.0 / order
        self.safety, self.ifactor, self.dfactor = safety, ifactor, dfactor

    def first(self, h: float) -> float:
        return h

    def must_accept(self, h: float) -> bool:
        return False

    def _growth(self, ratio: float) -> float:
        return self.safety * ratio ** -self.exponent

    def accepted(self, h: float, ratio: float) -> float:
        factor = self.ifactor if ratio == 0.0 else self._growth(ratio)
        return h * min(self.ifactor, max(1.0, factor))

    def rejected(self, h: float, ratio: float) -> float:
        if not math.isfinite(ratio):
            return h * self.dfactor
        return h * min(1.0, max(self.dfactor, self.safety * ratio ** -self.exponent))


class PIController(IController):
    """Hairer's PI controller: also weighs the previous accepted step's ratio (smoother)."""

    def __init__(self, order: int, **kw):
        super().__init__(order, **kw)
        self.prev_ratio = 1.0

    def _growth(self, ratio: float) -> float:
        return (self.safety * ratio ** (-PI_ALPHA * self.exponent)
                * self.prev_ratio ** (PI_BETA * self.exponent))

    def accepted(self, h: float, ratio: float) -> float:
        h_next = super().accepted(h, ratio)
        self.prev_ratio = max(ratio, PREV_RATIO_FLOOR)
        return h_next


class BoundedController:
    """Wraps a controller to honour torchdiffeq's options["min_step"] / ["max_step"]: every
    proposed step is clamped to [min_step, max_step], and a step of at most min_step is
    accepted whatever its error."""

    def __init__(self, inner, min_step: float, max_step: float):
        self.inner, self.min_step, self.max_step = inner, min_step, max_step

    def _clamp(self, h: float) -> float:
        return min(self.max_step, max(self.min_step, h))

    def first(self, h: float) -> float:
        return self._clamp(self.inner.first(h))

    def must_accept(self, h: float) -> bool:
        return h <= self.min_step

    def accepted(self, h: float, ratio: float) -> float:
        return self._clamp(self.inner.accepted(h, ratio))

    def rejected(self, h: float, ratio: float) -> float:
        return self._clamp(self.inner.rejected(h, ratio))


class StepCarry:
    """A step size kept from one adaptive solve to the next (options["carry_step"]): a
    solve starts from ``h`` where it is set, instead of the first-step estimate, and leaves
    in ``h`` the larger of the step its controller would take next and the step it had
    planned before the last one was cut to end on t[-1] (both the controller's proposals).
    The error control is untouched: a carried step too large for the next solve is
    rejected and shrunk like any other."""

    def __init__(self, h: float | None = None):
        self.h = h

    def __repr__(self) -> str:
        return f"StepCarry(h={self.h!r})"


CONTROLLERS = {"I": IController, "PI": PIController}


def make_controller(options: dict, order: int):
    """The controller of validated adaptive `options`; unbounded (the default) costs nothing."""
    inner = CONTROLLERS[options["controller"]](order, safety=options["safety"],
                                               ifactor=options["ifactor"],
                                               dfactor=options["dfactor"])
    if options["min_step"] > 0 or math.isfinite(options["max_step"]):
        return BoundedController(inner, options["min_step"], options["max_step"])
    return inner
