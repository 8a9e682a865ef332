"""The one adaptive step loop, shared by the Runge-Kutta (rk.py), reversible Heun
(reversible.py) and event (events.py) solves.

The loop owns what every adaptive solve does alike: the step-size controller, the floor
below which a step no longer moves t, the times a step must end on (an output time, t[-1]
or a jump, never leaving a sliver before it), the step budget and the errors of a solve
that cannot proceed. A family gives it a `Stepping` (below): its own step, error ratio,
outputs and first-step estimate.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from .controllers import make_controller
from .stats import SolverError

# the smallest step float arithmetic resolves at time t: FLOOR_ULPS * eps * |t| (a
# margin of ulps, so the step still moves t in the state's dtype, which func sees)
FLOOR_ULPS = 16


def float_floor(dtype: torch.dtype, *times: float) -> float:
    return FLOOR_ULPS * torch.finfo(dtype).eps * max(*(abs(t) for t in times), 1e-300)


def just_past(t: float, direction: float, dtype: torch.dtype) -> float:
    """The first time after t in `direction` that func sees as another time (t in the
    state's dtype, as odeint passes it): f there is f on that side of a jump at t."""
    here = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(here, torch.tensor(direction * math.inf, dtype=dtype)))


def where(t: float, h: float, nfe: int) -> str:
    return f"at t={t:.6g} with step size {h:.3g} after {nfe} function evaluations"


class Stepping(Protocol):
    """One family's side of the loop, holding the solve's state between steps."""

    order: int  # the error estimate's order, for the controller
    goal: str  # what the solve is after, for errors: " (integrating to t=1)"

    def first_step(self) -> float:
        """The automatic first step (options["first_step"] is None)."""

    def next_stop(self) -> tuple[float, bool] | None:
        """The next time a step must end exactly on, and whether f jumps there; None: none
        (steps may pass every remaining time)."""

    def attempt(self, t: float, dt: float, t1: float, t_last: float | None) -> float:
        """Try the step from t to t1 = t + dt (exactly a stop when cut to one; t_last: the
        time of its end stages, just before a jump): its error ratio, accept when <= 1."""

    def accept(self, t: float, dt: float, t1: float, jump: bool) -> bool:
        """Keep the step just tried (jump: it ended on one); True when the solve is done."""

    def exhausted(self, t: float, h: float, max_steps: int) -> SolverError:
        """The error once max_num_steps steps were tried."""


def drive(stepping: Stepping, t0: float, direction: float, dtype: torch.dtype, options: dict,
          tally) -> None:
    """Step from t0 until `stepping.accept` says the solve is done. `options`: validated
    adaptive options; `tally` counts the accepted and rejected steps (and the family its
    evaluations)."""
    control = make_controller(options, stepping.order)
    fail_below, max_steps = options["fail_below_step"], options["max_num_steps"]
    carry = options["carry_step"]
    h = carry.h if carry is not None and carry.h is not None else options["first_step"]
    if h is None:
        # the estimate can fall below what float32 resolves at t0 (f0 = 0 gives 1e-6):
        # start at the floor instead of failing there
        h = max(stepping.first_step(), float_floor(dtype, t0))
    h = control.first(h)
    t, nonfinite = t0, False
    while True:
        if tally.accepted + tally.rejected >= max_steps:
            raise stepping.exhausted(t, h, max_steps)
        stop = stepping.next_stop()
        last, jump = False, False
        if stop is not None:
            remaining = (stop[0] - t) * direction
            # never leave a sliver too short to step before the stop
            last = h >= remaining - max(fail_below, float_floor(dtype, t, stop[0]))
        bounded = control.must_accept(h)  # before the cut: it may lengthen h by a hair
        planned = h
        if last:
            h, jump = remaining, stop[1]
        # the floor follows t: a step is refused only where it no longer moves t in float
        if h < max(fail_below, float_floor(dtype, t)):
            cause = ("the state or func's output became NaN/Inf" if nonfinite
                     else "step size underflow")
            raise SolverError(f"{cause} {where(t, h, tally.nfe)}{stepping.goal}: the "
                              "dynamics may be stiff or unstable; loosen rtol/atol or check "
                              "func")
        dt = direction * h
        t1 = stop[0] if last else t + dt
        ratio = stepping.attempt(t, dt, t1, just_past(t1, -direction, dtype) if jump else None)
        # NaN compares False: rejected
        if ratio <= 1.0 or (bounded and math.isfinite(ratio)):
            tally.accepted += 1
            if stepping.accept(t, dt, t1, jump):
                if carry is not None:  # the controller's proposal, not the cut last step
                    carry.h = max(planned, control.accepted(h, ratio))
                return
            t = t1
            h = control.accepted(h, ratio)
        else:
            tally.rejected += 1
            h_next = control.rejected(h, ratio)
            if not math.isfinite(ratio):
                nonfinite = True
                if h_next >= h:  # a step bounded below (min_step) cannot shrink past NaN
                    raise SolverError(
                        f"the state or func's output became NaN/Inf {where(t, h, tally.nfe)}"
                        ": check func, or lower options['min_step']")
            h = h_next
