"""The one stepping core shared by every explicit Runge-Kutta method.

The state is a flat 1-D tensor. Two storage modes, chosen by whether autograd records:
- no grad (ODE-Net forward, the adjoint's backward solve, evaluation): the stages live
  in one preallocated stage-major buffer K (stages x N), and each stage input, the
  solution, the error estimate and the dense output are a single fused
  `addmv` into preallocated buffers;
- grad (RK-Net, backprop through the solver): stages are kept as a list and combined
  with `torch.add(..., alpha=)`, which saves nothing extra for backward, so the graph
  holds only what `func` itself saves.
The only device-to-host sync per step is the accept/reject decision (adaptive methods):
every number the core reads from a tensor goes through `device.read`, and func's times
are made on the device (device.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .adaptive import drive, just_past, where
from .device import read, upload
from .stats import SolverError
from .tableaus import Tableau

FlatFunc = Callable[[float, torch.Tensor], torch.Tensor]

# Hairer & Wanner's automatic first step (Solving ODEs I, II.4): a trial step of
# FIRST_STEP_FRACTION of |y0| / |f0| (or FIRST_STEP_FALLBACK when either is below
# FIRST_STEP_SMALL), probed once; the result is at most FIRST_STEP_GROWTH times the trial.
FIRST_STEP_FRACTION = 0.01
FIRST_STEP_FALLBACK = 1e-6
FIRST_STEP_SMALL = 1e-5
FIRST_STEP_FLAT = 1e-15  # derivatives below this: no curvature information
FIRST_STEP_FLAT_SHRINK = 1e-3
FIRST_STEP_GROWTH = 100


class Step(NamedTuple):
    """An accepted step, as the checkpointed gradient replays it (`replay_step`)."""

    t: float
    dt: float
    t1: float  # where it ended (exactly an output time or jump when it was cut to one)
    y: torch.Tensor  # a copy of its start state
    t_first: float | None = None  # its first stage's time, if not t (just past a jump)
    t_last: float | None = None  # its c = 1 stages' time, if not t + dt (just before one)


@dataclass
class Tally:
    """Live counts of one solve (kept current even when the solve raises)."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0


class _Stepper:
    def __init__(self, fn: FlatFunc, tab: Tableau, y0: torch.Tensor, tally: Tally, norm):
        self.fn, self.tab, self.tally = fn, tab, tally
        # norm: slices of the state (max over them of the RMS norm: the fast default) or
        # a callable on the flat state (options["norm"], wrapped by odeint)
        self.channels = norm if not callable(norm) else None
        self.user_norm = norm if callable(norm) else None
        self.inplace = not torch.is_grad_enabled()
        coef = tab.tensors(y0.dtype, y0.device)
        self.a, self.b, self.e = coef["a"], coef["b"], coef["error"]
        self.workspace = None
        if self.inplace:
            self.workspace = _acquire_workspace(tab.stages, y0)
            self.K, self.stage_buf, self.err_buf, self.scale_buf, *state = self.workspace[1]
            self.state_bufs = tuple(state)

    def release(self) -> None:
        if self.workspace is not None:
            _release_workspace(self.workspace)
            self.workspace = None

    def eval(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.tally.nfe += 1
        return self.fn(t, y)

    # --- one step ---------------------------------------------------------------
    def first_stage(self, t: float, y: torch.Tensor):
        f = self.eval(t, y)
        if self.inplace:
            self.K[0].copy_(f)
            return self.K[0]
        return f

    def step(self, t: float, y: torch.Tensor, h: float, k1, end_only: bool = False,
             t_last: float | None = None):
        """One step from (t, y) with step h; k1 = f(t, y) if already known (FSAL).
        end_only: only the end state is wanted (no error estimate, no dense output), so an
        FSAL tableau's last stage, f at the end state, is not evaluated. t_last: the time
        of the stages at the step's end (c = 1) when it is not t + h: just before a jump,
        so they see f on the near side, as torchdiffeq."""
        tab = self.tab
        if k1 is None:
            k1 = self.first_stage(t, y)
        if self.inplace:
            return self._step_inplace(t, y, h, t_last)
        ks = [k1]
        y1 = None
        for i in range(1, tab.stages):
            yi = _combine(y, ks, tab.a[i], h)
            if tab.fsal and i == tab.stages - 1:
                y1 = yi
                if end_only:
                    break
            ks.append(self.eval(_stage_time(t, tab.c[i], h, t_last), yi))
        if y1 is None:
            y1 = _combine(y, ks, tab.b, h)
        return y1, ks

    def _step_inplace(self, t, y, h, t_last):
        tab, K = self.tab, self.K
        y1_buf = self.state_bufs[0] if y is not self.state_bufs[0] else self.state_bufs[1]
        last = tab.stages - 1
        for i in range(1, tab.stages):
            out = y1_buf if (tab.fsal and i == last) else self.stage_buf
            yi = torch.addmv(y, K[:i].T, self.a[i], alpha=h, out=out)
            K[i].copy_(self.eval(_stage_time(t, tab.c[i], h, t_last), yi))
        if not tab.fsal:
            torch.addmv(y, K.T, self.b, alpha=h, out=y1_buf)
        return y1_buf, K

    def next_first_stage(self, ks):
        """FSAL: the accepted step's last stage is the next step's first."""
        if self.inplace:
            self.K[0].copy_(self.K[-1])
            return self.K[0]
        return ks[-1]

    # --- error control ----------------------------------------------------------
    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """Max over channels of the RMS norm (one channel for a plain solve)."""
        if self.user_norm is not None:
            return self.user_norm(x)
        norms = [torch.linalg.vector_norm(x[sl]) / math.sqrt(max(sl.stop - sl.start, 1))
                 for sl in self.channels]
        return norms[0] if len(norms) == 1 else torch.stack(norms).max()

    def error_ratio(self, y, y1, ks, h, rtol, atol) -> float:
        """RMS of the embedded error estimate over (atol + rtol * max(|y|, |y1|))."""
        if self.inplace:
            err = torch.mv(self.K.T, self.e, out=self.err_buf)
            scale = torch.abs(y, out=self.scale_buf)
            torch.maximum(scale, y1.abs(), out=scale)
        else:
            with torch.no_grad():
                err = torch.mv(torch.stack([k.detach() for k in ks], 1), self.e)
                scale = torch.maximum(y.detach().abs(), y1.detach().abs())
        with torch.no_grad():
            scale.mul_(rtol).add_(atol)  # rtol, atol: numbers or per-element tensors
            err.div_(scale)
            if self.user_norm is not None:  # torchdiffeq's convention: norm(h * err / scale)
                return read(self.user_norm(err.mul_(h)))
            return read(self.norm(err)) * abs(h)  # the one host sync of a step

    # --- outputs ----------------------------------------------------------------
    def dense(self, y, ks, h, theta, out):
        """y(t + theta h) from the accepted step's stages; `out` is the row to fill."""
        weights = self.tab.interp(theta)
        if self.inplace:
            w = upload(weights, y.dtype, y.device)  # no sync on a GPU
            return torch.addmv(y, self.K.T, w, alpha=h, out=out)
        return _combine(y, ks, weights, h)


def _stage_time(t: float, c: float, h: float, t_last: float | None) -> float:
    return t_last if (t_last is not None and c == 1.0) else t + c * h


# Buffers of finished in-place solves, reused by the next solve of the same size: fresh
# multi-MB allocations cost page faults on every solve (measured ~0.5 ms per MiB on CPU).
# A buffer set is checked out while a solve uses it, so nested solves never share one.
_POOL: dict[tuple, list] = {}
_POOL_KEYS = 8  # distinct workspace keys kept; the oldest is dropped


def _acquire_workspace(stages: int, y0: torch.Tensor):
    # buffers made under inference_mode cannot be written outside it (and vice versa)
    key = (stages, y0.numel(), y0.dtype, y0.device, torch.is_inference_mode_enabled())
    free = _POOL.get(key)
    if free:
        return free.pop()
    n = y0.numel()
    bufs = [y0.new_empty(stages, n)] + [y0.new_empty(n) for _ in range(5)]
    return key, bufs


def release_buffers() -> int:
    """Drops the buffers kept for the next solves (a training run calls it at its start
    and end, so a run neither inherits nor leaves them); returns how many sets it held."""
    held = sum(len(free) for free in _POOL.values())
    _POOL.clear()
    return held


def _release_workspace(workspace) -> None:
    key = workspace[0]
    if key not in _POOL and len(_POOL) >= _POOL_KEYS:
        _POOL.pop(next(iter(_POOL)))
    free = _POOL.setdefault(key, [])
    if len(free) < 2:
        free.append(workspace)


def _combine(y: torch.Tensor, ks, coefs, h: float) -> torch.Tensor:
    """y + h * sum_j coefs[j] * ks[j], as a chain of adds that saves nothing for backward."""
    out = y
    for k, c in zip(ks, coefs):
        if c != 0.0:
            out = torch.add(out, k, alpha=h * c)
    return out


def solve(fn: FlatFunc, y0: torch.Tensor, times: list[float], method, rtol, atol,
          options: dict, tally: Tally, norm=None, trace: list | None = None) -> torch.Tensor:
    """Integrate the flat ODE y' = fn(t, y) from times[0]; returns (len(times), N).

    `method`: a registry.Method or a Tableau. `rtol`/`atol`: floats or tensors of N values.
    `norm`: slices of the state for the error norm (the adjoint's [z, a, g]; default one),
    or a callable on the flat state. `trace`, if a list, gets a `Step` for every accepted
    step (the checkpointed gradient replays them; see `replay_step`).
    """
    tab = getattr(method, "tableau", None) or method
    if norm is None:
        norm = [slice(0, y0.numel())]
    st = _Stepper(fn, tab, y0, tally, norm)
    if st.inplace:
        ys = y0.new_empty(len(times), y0.numel())
        ys[0].copy_(y0)
        emit = ys.__getitem__
    else:
        ys = [y0]
        emit = None
    run = _adaptive if tab.adaptive else _fixed
    try:
        result = run(st, y0, times, rtol, atol, options, ys, emit, trace)
    finally:
        st.release()
    return result if st.inplace else torch.stack(result)


def _where(t: float, h: float, tally: Tally) -> str:
    return where(t, h, tally.nfe)


def fixed_grid(times: list[float], step_size: float | None, max_steps: int | None) -> list[int]:
    """Steps per output interval: the grid is t itself without step_size, else steps of
    step_size whose last one in each interval is cut to land on the output time."""
    if step_size is None:
        return [1] * (len(times) - 1)
    counts = [max(1, math.ceil(abs(b - a) / step_size - 1e-9)) for a, b in zip(times, times[1:])]
    if max_steps is not None and sum(counts) > max_steps:
        raise SolverError(
            f"step_size={step_size:g} needs {sum(counts)} steps over t in "
            f"[{times[0]:g}, {times[-1]:g}], more than max_num_steps={max_steps}: "
            "raise max_num_steps or use a larger step_size")
    return counts


def _fixed(st: _Stepper, y0, times, rtol, atol, options, ys, emit, trace=None):
    step_size = options["step_size"]
    counts = fixed_grid(times, step_size, options["max_num_steps"])
    y = y0
    for i, n in enumerate(counts, start=1):
        ta, tb = times[i - 1], times[i]
        direction = 1.0 if tb > ta else -1.0
        for k in range(n):
            t = ta + direction * k * step_size if k else ta
            h = (tb - t) if k == n - 1 else direction * step_size  # last step lands on tb
            if trace is not None:  # copied: y may be a pooled buffer the next step reuses
                trace.append(Step(t, h, tb if k == n - 1 else t + h, y.clone()))
            y, _ = st.step(t, y, h, None)
            st.tally.accepted += 1
        if emit is not None:
            emit(i).copy_(y)
        else:
            ys.append(y)
        if not read(torch.isfinite(y).all()):
            raise SolverError(
                f"the state became NaN/Inf {_where(tb, step_size or abs(tb - ta), st.tally)}: "
                "use a smaller step_size or an adaptive method")
    return ys


def _initial_step(st: _Stepper, t0, y0, f0, rtol, atol, direction) -> float:
    """Hairer & Wanner (II.4): a first step from the scale of y0, f0 and one probe of f."""
    with torch.no_grad():
        scale = y0.detach().abs() * rtol + atol
        d0 = read(st.norm(y0.detach() / scale))
        d1 = read(st.norm(f0.detach() / scale))
        h0 = (FIRST_STEP_FALLBACK if (d0 < FIRST_STEP_SMALL or d1 < FIRST_STEP_SMALL)
              else FIRST_STEP_FRACTION * d0 / d1)
        y_probe = y0.detach() + direction * h0 * f0.detach()
        f_probe = st.eval(t0 + direction * h0, y_probe)
        d2 = read(st.norm((f_probe - f0.detach()) / scale)) / h0
    if max(d1, d2) <= FIRST_STEP_FLAT:
        h1 = max(FIRST_STEP_FALLBACK, h0 * FIRST_STEP_FLAT_SHRINK)
    else:
        h1 = (FIRST_STEP_FRACTION / max(d1, d2)) ** (1.0 / st.tab.order)
    return min(FIRST_STEP_GROWTH * h0, h1)


def _adaptive(st: _Stepper, y0, times, rtol, atol, options, ys, emit, trace=None):
    stepping = _RKStepping(st, y0, times, rtol, atol, options, ys, emit, trace)
    drive(stepping, times[0], stepping.direction, y0.dtype, options, st.tally)
    return ys


class _RKStepping:
    """The Runge-Kutta family's side of the adaptive loop (adaptive.py): its steps, error
    ratio, dense outputs, FSAL and the jumps of options["jump_t"]."""

    def __init__(self, st: _Stepper, y0, times, rtol, atol, options, ys, emit, trace):
        self.st, self.times, self.rtol, self.atol = st, times, rtol, atol
        self.ys, self.emit, self.trace = ys, emit, trace
        t0, t_end = times[0], times[-1]
        self.direction = direction = 1.0 if t_end > t0 else -1.0
        self.order, self.goal = st.tab.order, f" (integrating to t={t_end:.6g})"
        # "clamp": steps end on t_end; "overshoot" steps past it (read from dense output)
        self.clamp = options["last_step"] == "clamp"
        # times where f jumps (torchdiffeq's jump_t), in the order the solve meets them: a
        # step that would cross one ends on it, and the next starts with f just past it
        self.jumps = sorted((j for j in options["jump_t"] if (j - t0) * direction > 0),
                            key=lambda j: j * direction)
        self.next_jump, self.next_out = 0, 1
        self.y, self.t_first = y0, t0  # t_first: where the step's first stage is evaluated
        self.k1 = st.first_stage(t0, y0)
        if not read(torch.isfinite(self.k1).all()):
            raise SolverError(f"func returned NaN/Inf at the initial state (t={t0:.6g}): "
                              "check the initial value and the function")

    def first_step(self) -> float:
        t0 = self.times[0]
        return _initial_step(self.st, t0, self.y, self.k1, self.rtol, self.atol, self.direction)

    def next_stop(self):
        t_end, jumps = self.times[-1], self.jumps
        if self.next_jump < len(jumps) and (not self.clamp or
                                            (t_end - jumps[self.next_jump]) * self.direction > 0):
            return jumps[self.next_jump], True
        return (t_end, False) if self.clamp else None

    def attempt(self, t, dt, t1, t_last) -> float:
        self.t_last = t_last
        self.y1, self.ks = self.st.step(t, self.y, dt, self.k1, t_last=t_last)
        return self.st.error_ratio(self.y, self.y1, self.ks, dt, self.rtol, self.atol)

    def accept(self, t, dt, t1, jump) -> bool:
        st, times, y, y1, ks, emit = self.st, self.times, self.y, self.y1, self.ks, self.emit
        if self.trace is not None:  # copied: y is a pooled buffer the next step reuses
            self.trace.append(Step(t, dt, t1, y.clone(),
                                   None if self.t_first == t else self.t_first, self.t_last))
        while self.next_out < len(times) and (t1 - times[self.next_out]) * self.direction >= 0:
            i = self.next_out
            if times[i] == t1:
                value = y1
                if emit is not None:
                    emit(i).copy_(y1)
            else:
                value = st.dense(y, ks, dt, (times[i] - t) / dt, emit(i) if emit else None)
            if emit is None:
                self.ys.append(value)
            self.next_out += 1
        self.y, self.t_first = y1, t1
        if jump:  # FSAL's last stage is f on the jump's near side
            self.next_jump += 1
            self.t_first = just_past(t1, self.direction, y1.dtype)
            self.k1 = st.first_stage(self.t_first, y1)
        elif st.tab.fsal:
            self.k1 = st.next_first_stage(ks)
        else:
            self.k1 = None
        return self.next_out == len(times)

    def exhausted(self, t, h, max_steps) -> SolverError:
        return SolverError(
            f"max_num_steps={max_steps} exceeded {_where(t, h, self.st.tally)}{self.goal}: the "
            "problem may be stiff; raise max_num_steps, loosen rtol/atol, or regularize the "
            "dynamics")


def replay_step(fn: FlatFunc, tab: Tableau, step: Step, y: torch.Tensor, thetas: list[float],
                tally: Tally):
    """One accepted step again from y (its start state), recorded by autograd (call under
    grad mode): its end state and the dense output at each theta. The same arithmetic as
    the step under grad, at the same stage times, so its vector-Jacobian product is
    backprop's for that step; k1 is evaluated afresh (a forward FSAL stage was the same f
    at the same point). Without dense outputs an FSAL tableau's last stage is skipped:
    the end state does not depend on it."""
    st = _Stepper(fn, tab, y, tally, None)
    t, dt = step.t, step.dt
    k1 = st.first_stage(t if step.t_first is None else step.t_first, y)
    y1, ks = st.step(t, y, dt, k1, end_only=not thetas, t_last=step.t_last)
    return y1, [st.dense(y, ks, dt, theta, None) for theta in thetas]
