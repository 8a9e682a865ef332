"""The solvers' host-device traffic (odenet/solvers/device.py), counted on the CPU: every
number read from a tensor is a sync on a GPU, and every tensor made from host data a copy.
The counts come from the solvers' own hook (``TRAFFIC``) and, so that nothing slips past
it, from torch's dispatcher: ``_local_scalar_dense`` is what float()/bool()/.item() of a
tensor run, ``lift_fresh`` what torch.tensor(host data) runs."""

from __future__ import annotations

import collections
import math
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from odenet.models.blocks import ODEBlock, ODEFunc
from odenet.solvers import TRAFFIC, SolveStats, odeint, odepack, release_buffers, rk
from odenet.solvers.odeint import validate

READ, FRESH = "aten._local_scalar_dense.default", "aten.lift_fresh.default"


class Ops(TorchDispatchMode):
    """Counts the reads and host-data tensors torch itself sees."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[str(func)] += 1
        return func(*args, **(kwargs or {}))


class Counted:
    """TRAFFIC's reads and uploads, and torch's own reads and host-data tensors, inside."""

    def __enter__(self):
        self.ops = Ops().__enter__()
        self._start = (TRAFFIC.reads, TRAFFIC.uploads)
        return self

    def __exit__(self, *exc):
        self.ops.__exit__(*exc)
        self.reads = TRAFFIC.reads - self._start[0]
        self.uploads = TRAFFIC.uploads - self._start[1]
        self.torch_reads = self.ops.count[READ]
        self.fresh = self.ops.count[FRESH]


def _block(rtol: float, gradient: str = "adjoint", method: str = "dopri5") -> ODEBlock:
    torch.manual_seed(0)
    return ODEBlock(ODEFunc(8), rtol=rtol, gradient=gradient, method=method)


def _iteration(block: ODEBlock, x: torch.Tensor) -> tuple[Counted, dict]:
    """One forward and backward through the block, counted (after one uncounted)."""
    block(x).square().sum().backward()
    block.stats.reset()
    with Counted() as c:
        block(x).square().sum().backward()
    return c, block.stats.as_dict()


@pytest.mark.parametrize("rtol", [1e-2, 1e-3, 1e-4])
def test_odenet_iteration_syncs_once_per_step_attempt(rtol):
    """The ODE-Net's iteration (dopri5, adjoint): one read per step attempt, forward and
    backward, plus 4 per solve (the initial state's check, the first step's estimate):
    none per evaluation, however many there are; and no tensor made from host data."""
    x = torch.randn(2, 8, 6, 6)
    c, st = _iteration(_block(rtol), x)
    attempts = (st["steps_accepted"] + st["steps_rejected"] + st["steps_accepted_backward"]
                + st["steps_rejected_backward"])
    assert st["nfe_forward"] + st["nfe_backward"] > 4 * attempts  # ~6 evaluations a step
    assert c.reads == attempts + 2 * 4
    assert c.torch_reads == c.reads  # every read goes through the hook
    assert c.fresh == 0 and c.uploads == 0


def test_rknet_iteration_syncs_once_per_step_attempt():
    """Backprop through the solver (RK-Net): the same, with autograd recording."""
    c, st = _iteration(_block(1e-4, gradient="backprop"), torch.randn(2, 8, 6, 6))
    assert c.reads == st["steps_accepted"] + st["steps_rejected"] + 4
    assert c.torch_reads == c.reads and c.fresh == 0


def test_adjoint_reversible_norm_reads_once_per_step():
    """The adaptive reversible Heun's error norm over the adjoint's channels (z, a and
    each parameter's gradient: 9 here) was read channel by channel: now once a step."""
    block = _block(1e-2, gradient="adjoint", method="adaptive_reversible_heun")
    c, st = _iteration(block, torch.randn(2, 8, 6, 6))
    attempts = (st["steps_accepted"] + st["steps_rejected"] + st["steps_accepted_backward"]
                + st["steps_rejected_backward"])
    # per solve: the first step's 3 norms and the output's finite check
    assert c.reads == attempts + 2 * 4
    assert c.torch_reads == c.reads


def test_reversible_norm_is_the_hosts_arithmetic():
    """Several channels reduced on the device give the number the host computed."""
    from odenet.solvers.reversible import _rms

    x = torch.randn(1000, dtype=torch.float32) * torch.logspace(-3, 3, 1000)
    channels = [slice(0, 10), slice(10, 500), slice(500, 1000)]
    host = max(float(torch.linalg.vector_norm(x[sl])) / math.sqrt(sl.stop - sl.start)
               for sl in channels)
    assert _rms(channels, x)(x) == host


def test_dense_output_uploads_its_weights_once_per_output():
    """last_step=overshoot reads t[-1] from the dense output: one upload of its weights
    per output (non-blocking on a GPU), still one read per step attempt."""
    block = _block(1e-4)
    block.configure(last_step="overshoot")
    c, st = _iteration(block, torch.randn(2, 8, 6, 6))
    assert c.uploads == 2  # the forward's t[-1] and the backward's t[0]
    assert c.reads == (st["steps_accepted"] + st["steps_rejected"]
                       + st["steps_accepted_backward"] + st["steps_rejected_backward"] + 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_times_are_those_of_torch_tensor(dtype):
    """func sees t as torch.tensor(t, dtype) made it, bit for bit, without a copy."""
    method = "rk4" if dtype == torch.bfloat16 else "dopri5"  # adaptive steps refuse bf16
    problem = validate(lambda t, y: y, torch.zeros(1, dtype=dtype), [0.0, 1.0], method,
                       1e-3, 1e-3, None)
    g = torch.Generator().manual_seed(0)
    values = (torch.rand(2000, generator=g, dtype=torch.float64) * 20 - 10).tolist()
    values += [1 / 3, 0.1, 1e-30, 1e-42, -0.0, 2.5e38 if dtype != torch.float64 else 1e300]
    with Counted() as c:
        made = [problem.time(v) for v in values]
    assert c.fresh == 0
    for v, t in zip(values, made):
        want = torch.tensor(v, dtype=dtype)
        assert t.dtype == dtype and t.shape == () and torch.equal(t, want)
        assert torch.signbit(t) == torch.signbit(want)


def test_times_beyond_the_states_dtype_are_refused():
    with pytest.raises(ValueError, match=r"t must lie within torch.float32's range"):
        odeint(lambda t, y: -y, torch.ones(2), [0.0, 1e39])
    ys = odeint(lambda t, y: -y, torch.ones(2, dtype=torch.float64), [0.0, 1e39],
                method="euler")  # float64 holds it
    assert ys.shape == (2, 2)


def test_buffers_are_released():
    """An in-place solve keeps its buffers for the next; release_buffers drops them."""
    release_buffers()
    with torch.no_grad():
        odeint(lambda t, y: -y, torch.ones(50), [0.0, 1.0], stats=SolveStats())
    assert sum(len(v) for v in rk._POOL.values()) == 1
    assert release_buffers() == 1
    assert rk._POOL == {} and release_buffers() == 0


def test_lsoda_off_the_cpu_says_what_it_costs():
    """LSODA runs in scipy on the CPU: a state on another device (a GPU) is copied there
    and back at every evaluation; the solve says so before it starts."""
    pytest.importorskip("scipy")
    msg = odepack.off_host_cost("lsoda", torch.device("cuda:1"))
    assert msg == ("method 'lsoda' solves on the CPU (scipy, float64): with the state on "
                   "cuda:1 every evaluation copies the whole state to the host and back (2 "
                   "copies and 3 device syncs per evaluation); solve on the CPU, or use a "
                   "Runge-Kutta method")
    y0 = torch.ones(3, device="meta")  # not the CPU: the copy to numpy then fails
    problem = validate(lambda t, y: -y, torch.ones(3), [0.0, 1.0], "lsoda", 1e-3, 1e-3, None)
    with pytest.warns(RuntimeWarning, match="with the state on meta every evaluation"):
        with pytest.raises((NotImplementedError, RuntimeError)):
            odepack.solve(lambda t, y: -y, y0, [0.0, 1.0], problem.method, 1e-3, 1e-3,
                          problem.options, rk.Tally())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on the CPU: not a word
        ys = odeint(lambda t, y: -y, torch.ones(3), [0.0, 1.0], method="lsoda")
    assert ys.shape == (2, 3)
