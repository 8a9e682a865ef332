"""Models: exact parameter counts, shapes, the ODE block's solver stats and settings."""

from __future__ import annotations

import pytest
import torch

from odenet.cli.app import compose
from odenet.config.model_registry import models_of
from odenet.models import (
    ConcatConv2d,
    ODEBlock,
    build_model,
    configure_solver,
    measured_blocks,
    ode_blocks,
    reset_solver_stats,
    solver_stats,
)
from odenet.run.record import CLASSIFY
from odenet.training.measure import count_parameters

torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads spin


def model(name: str, *overrides: str):
    c = compose([f"model={name}", *overrides])
    torch.manual_seed(0)
    return build_model(c.model, c.solver)


# the paper's networks, exactly; a new classifier adds its count here
PARAMS = {"mlp": 238_510, "resnet": 576_778, "odenet": 208_266, "rknet": 208_266}


def test_every_classifier_of_the_registry_has_its_parameter_count_here():
    assert set(PARAMS) == set(models_of(CLASSIFY))


@pytest.mark.parametrize("name,params", list(PARAMS.items()))
def test_exact_parameter_counts(name, params):
    assert count_parameters(model(name)) == params


@pytest.mark.parametrize("blocks,params", [(0, 132_874), (1, 206_858)])
def test_ablation_resnets_keep_downsampling_and_head(blocks, params):
    """Table 1's ablation rows: no residual block, one residual block."""
    m = model("resnet", f"model.num_blocks={blocks}")
    assert count_parameters(m) == params == 132_874 + blocks * 73_984
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_blocks_are_shared_and_assemblies_differ_only_in_the_body():
    r, o = model("resnet"), model("odenet")
    assert [n for n, _ in r.features.named_parameters()] == \
           [n for n, _ in o.features.named_parameters()]
    assert count_parameters(r.head) == count_parameters(o.head) == 778
    assert count_parameters(r.body) == 6 * 73_984 and count_parameters(o.body) == 75_392
    assert measured_blocks(r) == [r.body] and measured_blocks(o) == [o.body]
    assert measured_blocks(model("mlp")) == []


@pytest.mark.parametrize("name", models_of(CLASSIFY))
def test_forward_backward_shapes(name):
    m = model(name)
    x = torch.rand(3, 1, 28, 28)
    out = m(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_ode_block_exposes_solver_stats_per_solve():
    o, r = model("odenet"), model("rknet")
    x = torch.rand(2, 1, 28, 28)
    assert solver_stats(model("resnet")) is None
    for m, adjoint in ((o, True), (r, False)):
        (block,) = ode_blocks(m)
        assert block.adjoint is adjoint
        reset_solver_stats(m)
        m(x).sum().backward()
        st = solver_stats(m)
        # dopri5 with FSAL: 2 evaluations for the initial step + 6 per step taken
        assert st["nfe_forward"] == 2 + 6 * (st["steps_accepted"] + st["steps_rejected"])
        assert (st["nfe_backward"] > 0) is adjoint
        reset_solver_stats(m)
        assert solver_stats(m)["nfe_forward"] == 0


def test_tolerance_can_change_at_evaluation_time():
    m = model("odenet")
    x = torch.rand(2, 1, 28, 28)
    nfe = {}
    with torch.no_grad():
        for tol in (1e-1, 1e-5):
            configure_solver(m, rtol=tol)
            (block,) = ode_blocks(m)
            assert block.rtol == block.atol == tol  # atol follows rtol
            reset_solver_stats(m)
            m(x)
            nfe[tol] = solver_stats(m)["nfe_forward"]
    assert nfe[1e-5] > nfe[1e-1]
    configure_solver(m, method="rk4", step_size=0.5)
    reset_solver_stats(m)
    with torch.no_grad():
        m(x)
    assert solver_stats(m)["nfe_forward"] == 8  # 2 steps x 4 stages
    with pytest.raises(ValueError, match="unknown solver setting"):
        configure_solver(m, tol=1)


def test_adjoint_and_direct_gradients_agree():
    """ODE-Net (adjoint) and RK-Net (backprop through the steps) train the same function:
    their gradients approach each other as the tolerance tightens (backprop gives the
    gradient of the discretization, the adjoint that of the ODE; the solver tests
    check each against references)."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28)
    grads = []
    for name in ("odenet", "rknet"):
        m = model(name, "solver.rtol=1e-5")
        m.zero_grad()
        m(x).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    rel = (grads[0] - grads[1]).norm() / grads[1].norm()
    assert rel < 0.05


def test_build_model_from_a_checkpoint_config_dict():
    cfg = compose(["model=rknet", "solver=bosh3", "solver.rtol=1e-2"])
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg)  # what checkpoint.pt stores
    torch.manual_seed(0)
    a = build_model(cfg.model, cfg.solver)
    b = build_model(plain["model"], plain["solver"])
    b.load_state_dict(a.state_dict())
    (blk,) = ode_blocks(b)
    assert isinstance(blk, ODEBlock)
    assert (blk.method, blk.rtol, blk.atol, blk.adjoint) == ("bosh3", 1e-2, 1e-2, False)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # partial dicts work too: an unset gradient follows the model name
    assert ode_blocks(build_model({"name": "odenet"}, {"rtol": 1e-2}))[0].adjoint is True


def test_a_checkpoint_config_with_keys_the_schemas_lack_builds_with_strict_false():
    """load_model reads checkpoints of another odenet version: keys it does not know are
    dropped there (strict=False), refused everywhere else."""
    from odenet.config.schema import ConfigError

    solver = {"method": "bosh3", "rtol": 1e-2, "adjoint": False, "gradient": "backprop"}
    (blk,) = ode_blocks(build_model({"name": "rknet", "old": 1}, solver, strict=False))
    assert (blk.method, blk.gradient) == ("bosh3", "backprop")
    with pytest.raises(ConfigError, match="unknown key 'solver.adjoint'"):
        build_model({"name": "rknet"}, solver)


def test_res_downsampling_option():
    m = model("odenet", "model.downsampling=res")
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("last_step", ["clamp", "overshoot"])
def test_last_step_setting_reaches_the_solver(last_step):
    """solver.last_step=overshoot steps past t1 (as torchdiffeq); clamp never leaves [0, t1]."""
    m = model("odenet", f"solver.last_step={last_step}")
    (block,) = ode_blocks(m)
    times = []
    block.func.register_forward_pre_hook(lambda mod, args: times.append(float(args[0])))
    with torch.no_grad():
        m(torch.rand(2, 1, 28, 28))
    assert min(times) == 0.0
    assert (max(times) > 1.0) == (last_step == "overshoot")


def _output_nfe_grad(m, x):
    reset_solver_stats(m)
    out = m(x)
    out.square().sum().backward()
    return out.detach(), solver_stats(m), torch.cat([p.grad.flatten() for p in m.parameters()])


@pytest.mark.slow  # torch.compile takes ~30 s per graph on this CPU
@pytest.mark.parametrize("name", ["odenet", "rknet"])
def test_compiled_ode_function_matches_eager(name):
    """model.compile=true: same parameter names, outputs, NFE and gradients as eager.

    The two differ in the last float32 bits. Backprop through the solver (RK-Net) turns
    that into a tiny gradient difference. The adjoint's adaptive backward steps can move
    with it, changing the gradient within the solver's own error: so for ODE-Net the two
    must be closer to each other than eager is to a float64 solve at 1e-8."""
    tight = "solver.rtol=1e-6" if name == "odenet" else "solver.rtol=1e-3"
    eager, compiled = model(name, tight), model(name, tight, "model.compile=true")
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out_e, nfe_e, grad_e = _output_nfe_grad(eager, x)
    out_c, nfe_c, grad_c = _output_nfe_grad(compiled, x)
    assert nfe_c["nfe_forward"] == nfe_e["nfe_forward"]
    assert torch.allclose(out_c, out_e, rtol=1e-4, atol=1e-5)
    if name == "rknet":
        # float32 round-off, amplified through the solve's steps: 6.6e-4 relative on an
        # AVX2-only VM (inductor's AVX2 kernels against oneDNN's), under 1e-4 on AVX-512;
        # a wrong gradient (a term missing, a detached path) is off by O(1)
        assert (grad_c - grad_e).norm() < 3e-3 * grad_e.norm()
        return
    truth = model(name, "solver.rtol=1e-8", "solver.max_num_steps=100000").double()
    truth.load_state_dict(eager.state_dict())
    grad_t = _output_nfe_grad(truth, x.double())[2].float()
    assert (grad_c - grad_e).norm() < 2 * (grad_e - grad_t).norm()
    assert (grad_e - grad_t).norm() < 1e-2 * grad_t.norm()


def test_the_folded_t_channel_equals_the_concatenation():
    """ConcatConv2d.folded (the bf16 path): conv(x) + t * conv(ones) equals conv([t, x]),
    zero padding at the borders included (float64, so only the rounding could differ)."""
    conv = ConcatConv2d(5, 7).double()
    x = torch.randn(3, 5, 6, 4, dtype=torch.float64)
    for t in (0.0, 0.37, -2.5):
        tt = torch.tensor(t, dtype=torch.float64)
        assert torch.allclose(conv.folded(tt, x), conv(tt, x), rtol=0, atol=1e-12)


def _record_dtypes(m):
    """dtypes seen by the ODE function (its state) and by its inner GroupNorm (the conv's
    output), in every evaluation, forward and backward."""
    func = ode_blocks(m)[0].func
    seen = {"state": set(), "conv_out": set()}
    func.register_forward_pre_hook(lambda mod, args: seen["state"].add(args[1].dtype))
    func.norm2.register_forward_pre_hook(lambda mod, args: seen["conv_out"].add(args[0].dtype))
    return seen


@pytest.fixture(scope="module")
def float64_gradient():
    """The parameter gradient of _output_nfe_grad for the seed-0 ODE-Net on 8 images, by a
    float64 solve at 1e-6 (its own error is ~1e-4 of the 5-8 % measured here): the truth
    both precisions are measured against."""
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    truth = model("odenet", "solver.rtol=1e-6").double()
    return x, _output_nfe_grad(truth, x.double())[2].float()


@pytest.mark.parametrize("gradient", ["adjoint", "backprop", "checkpoint"])
def test_bf16_autocasts_f_and_keeps_the_ode_state_in_fp32(gradient, float64_gradient):
    """Under bf16 autocast f's convolutions run in bf16, in backward too (the adjoint's
    and checkpoint's re-evaluations), while the solver's state, the block's output and the
    gradients stay fp32. The gradient's error (against float64 at 1e-6) is fp32's within
    bf16's rounding (measured: adjoint 0.080 vs 0.066, backprop 0.059 vs 0.052)."""
    name = "rknet" if gradient == "backprop" else "odenet"
    ref, fast = (model(name, f"solver.gradient={gradient}") for _ in range(2))
    x, truth = float64_gradient
    seen = _record_dtypes(fast)
    ode_blocks(fast)[0].register_forward_hook(
        lambda mod, args, out: seen.update(out=out.dtype))  # returns None: output unchanged
    grad_ref = _output_nfe_grad(ref, x)[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reset_solver_stats(fast)
        out = fast(x)
    nfe_fwd = solver_stats(fast)["nfe_forward"]
    out.float().square().sum().backward()
    grad = torch.cat([p.grad.flatten() for p in fast.parameters()])
    assert seen["state"] == {torch.float32} and seen["out"] == torch.float32
    assert seen["conv_out"] == {torch.bfloat16}
    assert grad.dtype == torch.float32 and all(p.dtype == torch.float32
                                               for p in fast.parameters())
    assert nfe_fwd >= 14 and (solver_stats(fast)["nfe_backward"] > 0) is (gradient != "backprop")
    error = (grad - truth).norm() / truth.norm()
    assert error < (grad_ref - truth).norm() / truth.norm() + 0.03


def test_compile_without_a_cxx_compiler_runs_eager_with_one_line(monkeypatch, caplog):
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise RuntimeError("no working C++ compiler found in ('g++',)\nmore detail")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with caplog.at_level("WARNING", logger="odenet.models"):
        m = model("odenet", "model.compile=true")
    assert m.body.func._compiled_call_impl is None  # eager
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["model.compile=true needs a C++ compiler for torch.compile (no working "
                     "C++ compiler found in ('g++',)): running eager"]
    monkeypatch.undo()  # with the compiler found, the function is compiled (lazily)
    assert model("odenet", "model.compile=true").body.func._compiled_call_impl is not None


@pytest.mark.slow  # compiles 4 graphs (~30 s each on this CPU)
def test_the_compiled_ode_function_compiles_once_per_shape_kind_not_per_batch():
    """model.compile=true: the training batch compiles a static graph, the next size one
    dynamic in the batch, and no later size (test batch, last partial batch) compiles
    again; in bf16 as in fp32, with the fp32 outputs unchanged."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    m = model("odenet", "model.compile=true").eval()
    eager = model("odenet").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bf16 in (False, True):
            for n in (4, 6, 3, 5, 6, 2):
                x = torch.rand(n, 1, 28, 28, generator=g)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = m(x)
                if not bf16:
                    assert torch.allclose(out, eager(x), rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 4


def test_the_ode_block_prepares_its_solve_once_per_shape(monkeypatch):
    """ODEBlock validates a solve once per batch shape (odenet.solvers.prepare), gives what
    odeint gives bit for bit, prepares again after configure, and a deep copy solves with
    its own function."""
    import copy

    import odenet.models.blocks as blocks
    from odenet.solvers import odeint

    calls = []
    real = blocks.prepare
    monkeypatch.setattr(blocks, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = model("odenet").eval()
    block = ode_blocks(m)[0]
    h = torch.rand(3, 64, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = block(h), block(h)
        block(h[:2])
        direct = odeint(block.func, h, block.times, method="dopri5", rtol=1e-3, atol=1e-3,
                        options={"max_num_steps": 1000, "last_step": "clamp"})[-1]
    assert torch.equal(first, second) and torch.equal(first, direct) and len(calls) == 2
    block.configure(rtol=1e-5)
    with torch.no_grad():
        assert not torch.equal(block(h), first) and len(calls) == 3
    twin = copy.deepcopy(m)
    with torch.no_grad():
        ode_blocks(twin)[0].func.norm3.bias.add_(1.0)
        assert not torch.equal(ode_blocks(twin)[0](h), block(h))
