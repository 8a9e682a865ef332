"""Measurements: the saved-activation census (O(1) adjoint vs O(NFE) backprop), timers."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from odenet.cli.app import compose
from odenet.models import (
    build_model,
    configure_solver,
    measured_blocks,
    reset_solver_stats,
    solver_stats,
)
from odenet.training.measure import (
    MIB,
    ActivationMeter,
    Timer,
    activation_mib,
    median,
    rss_peak_mib,
)

torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads spin


def test_counts_each_storage_once_and_skips_parameters():
    lin = nn.Linear(256, 256, bias=False)
    x = torch.randn(64, 256, requires_grad=True)
    with ActivationMeter(lin) as m:
        y = torch.exp(x)  # saves its output y (64 x 256 floats)
        z = y * y  # saves y twice: same storage, counted once
        w = lin(z)  # saves z (and the weight: a parameter, not counted)
    assert m.total_bytes == 2 * 64 * 256 * 4
    assert m.block_mib is None
    w.sum().backward()
    assert x.grad is not None  # the hooks give autograd what it needs


def test_block_share_is_measured_separately():
    seq = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
    x = torch.randn(16, 32)
    with ActivationMeter(seq, blocks=[seq[3]]) as m:
        out = seq(x).sum()
    # inside the block only Tanh's output is saved; outside, x, two pre-activations ...
    assert m.block_bytes == 16 * 32 * 4
    assert m.total_bytes > m.block_bytes
    del out


def test_a_graph_dropped_inside_the_meter_is_not_counted():
    """Only what backward will need counts: a graph built and freed within the measured
    forward (a per-evaluation vector-Jacobian product) is transient."""
    lin = nn.Linear(32, 32)
    x = torch.randn(16, 32, requires_grad=True)
    with ActivationMeter(lin) as kept:
        out = torch.tanh(lin(x))
    with ActivationMeter(lin) as dropped:
        for _ in range(5):
            y = torch.tanh(lin(x))
            torch.autograd.grad(y.sum(), x)  # frees y's graph
        out2 = torch.tanh(lin(x))
    assert kept.total_bytes == dropped.total_bytes > 0
    assert dropped.tensors > kept.tensors  # the dropped graphs did save tensors
    del out, out2


def test_meter_keeps_no_graph_alive():
    """The pack hook must not make a reference cycle (output -> grad_fn -> saved output)
    that only the cycle collector could free: memory would pile up between collections."""
    lin = nn.Linear(64, 64)
    x = torch.randn(8, 64, requires_grad=True)
    gc.disable()
    try:
        with ActivationMeter(lin):
            y = torch.tanh(lin(x))  # tanh saves its own output
        ref = weakref.ref(y)
        del y
        assert ref() is None  # freed by reference counting alone
    finally:
        gc.enable()


def _block_mib_and_nfe(name: str, rtol: float, x, y, *overrides: str):
    cfg = compose([f"model={name}", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.solver)
    configure_solver(model, rtol=rtol)
    reset_solver_stats(model)
    total, block = activation_mib(model, x, y, measured_blocks(model))
    return total, block, solver_stats(model)["nfe_forward"]


def test_odenet_block_memory_is_flat_while_rknet_grows_with_nfe():
    """The paper's memory claim, measured: O(1) with the adjoint, O(NFE) without."""
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    loose, tight = 1e-1, 1e-5
    _, ode_l, nfe_l = _block_mib_and_nfe("odenet", loose, x, y)
    _, ode_t, nfe_t = _block_mib_and_nfe("odenet", tight, x, y)
    _, rk_l, rnfe_l = _block_mib_and_nfe("rknet", loose, x, y)
    _, rk_t, rnfe_t = _block_mib_and_nfe("rknet", tight, x, y)
    assert (nfe_l, nfe_t) == (rnfe_l, rnfe_t)  # same weights, same solves
    assert nfe_t >= 2 * nfe_l  # the tolerance really changed the depth
    assert ode_t == pytest.approx(ode_l)  # flat: only the block's input/output are kept
    growth = (rk_t / rk_l) / (nfe_t / nfe_l)
    assert 0.8 < growth < 1.25  # proportional to NFE
    assert rk_t > 20 * ode_t
    # per evaluation, backprop keeps about (batch x 64 x 6 x 6 floats) x a few tensors
    per_eval = (rk_t - rk_l) * MIB / (nfe_t - nfe_l)
    assert 3 * 4 * 64 * 36 * 4 < per_eval < 30 * 4 * 64 * 36 * 4


@pytest.mark.parametrize("penalty", ["model.kinetic_weight=0.1", "model.jacobian_weight=0.1"])
def test_the_adjoint_block_stays_flat_with_a_penalty(penalty):
    """A training solve's penalty channels do not cost the adjoint its O(1) memory."""
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    _, plain, _ = _block_mib_and_nfe("odenet", 1e-1, x, y)
    _, loose, nfe_l = _block_mib_and_nfe("odenet", 1e-1, x, y, penalty)
    _, tight, nfe_t = _block_mib_and_nfe("odenet", 1e-5, x, y, penalty)
    assert nfe_t >= 2 * nfe_l
    assert tight == pytest.approx(loose)
    assert loose < 1.1 * plain  # the state's two more channels, nothing per evaluation


def test_resnet_block_memory_is_fixed_and_mlp_has_no_block():
    x, y = torch.rand(2, 1, 28, 28), torch.randint(0, 10, (2,))
    r = build_model({"name": "resnet"})
    total, block = activation_mib(r, x, y, measured_blocks(r))
    assert 0 < block < total
    m = build_model({"name": "mlp"})
    total, block = activation_mib(m, x, y, measured_blocks(m))
    assert block is None and total > 0


def test_rss_peak_can_be_reset():
    from odenet.training.measure import reset_rss_peak

    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    high = rss_peak_mib()
    del big
    if not reset_rss_peak():
        pytest.skip("no /proc/self/clear_refs here")
    assert rss_peak_mib() < high - 32


def test_timer_median_and_rss():
    with Timer() as t:
        sum(range(10000))
    assert t.seconds > 0
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([]) is None
    assert 10 < rss_peak_mib() < 100_000


def test_device_peaks_are_the_runs_and_each_stretchs(monkeypatch):
    """DevicePeak on a GPU (torch.cuda's allocator statistics faked): a stretch's peak is
    what it needed above what it started with (weights, optimizer state, a dataset on the
    device), and starts without the solver's kept buffers; the run's peak is all of it,
    not an earlier run's. On a CPU every value is None."""
    from odenet.solvers import rk
    from odenet.training import measure

    alloc = {"now": 0, "peak": 0}

    def allocate(mib):
        alloc["now"] += int(mib * MIB)
        alloc["peak"] = max(alloc["peak"], alloc["now"])

    def reset(device=None):
        alloc["peak"] = alloc["now"]

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: alloc["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: alloc["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    allocate(900)
    allocate(-900)  # an earlier run's peak in this process
    peaks = measure.DevicePeak(torch.device("cuda"))
    allocate(100)  # weights, data on the device
    rk._POOL["kept"] = [("kept", [])]  # an earlier solve's buffers
    peaks.start()
    assert rk._POOL == {}
    allocate(60)  # forward
    allocate(-60)  # backward done
    assert peaks.stop("train") == pytest.approx(60)
    peaks.start()
    allocate(250)  # evaluation at batch 1000
    allocate(-250)
    assert peaks.stop("eval") == pytest.approx(250)
    assert peaks.mib == pytest.approx({"train": 60, "eval": 250})
    assert peaks.overall_mib == pytest.approx(350)
    cpu = measure.DevicePeak(torch.device("cpu"))
    cpu.start()
    assert cpu.stop("train") is None and cpu.overall_mib is None
