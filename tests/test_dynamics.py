"""The ODE block's training solves (odenet/models/dynamics.py): the kinetic energy and
Jacobian-Frobenius penalties against their closed forms for linear dynamics, their
gradients (finite differences; adjoint, backprop and checkpoint agree), STEER's end-time
jitter, and evaluation solves that use none of them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from odenet.cli.app import compose
from odenet.config.schema import ConfigError
from odenet.models import ODEBlock, blocks, build_model, dynamics_penalty
from odenet.models.dynamics import TrainingField
from odenet.training.iteration import train_step
from odenet.training.tasks import ClassifyTask
from odenet.training.trainer import run

torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads spin

GRADIENTS = ["backprop", "adjoint", "checkpoint"]


class Scalar(nn.Module):
    """f(t, h) = a h; records the times it is evaluated at."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.times: list[float] = []

    def forward(self, t, h):
        self.times.append(float(t))
        return self.a * h


class Matrix(nn.Module):
    """f(t, h) = h @ A."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(torch.as_tensor(A, dtype=torch.float64).clone())

    def forward(self, t, h):
        return h @ self.A


def _block(func, t1=1.0, gradient="backprop", tol=1e-10, **regularize) -> ODEBlock:
    return ODEBlock(func, t1, method="dopri5", rtol=tol, gradient=gradient,
                    max_num_steps=10000).regularize(**regularize)


def _x(batch=3, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=torch.float64)


@pytest.fixture
def fixed_noise(monkeypatch):
    """The Hutchinson noise drawn by the block: each draw recorded in ``drawn``; set
    ``fixed[0]`` to a tensor to make every solve use that one."""
    drawn, fixed = [], [None]
    real = blocks.rademacher

    def draw(like):
        eps = real(like) if fixed[0] is None else fixed[0].clone()
        drawn.append(eps)
        return eps

    monkeypatch.setattr(blocks, "rademacher", draw)
    return drawn, fixed


def _kinetic_scalar(a, x, T):
    """int_0^T |a x e^{a t}|^2 dt / D, batch mean."""
    d = x.shape[1]
    return float((a * x.pow(2).sum(1) * math.expm1(2 * a * T) / 2 / d).mean())


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("t1", [1.0, 0.5])
def test_the_penalties_of_a_scalar_field_are_their_closed_forms(gradient, t1):
    a, x = -0.8, _x()
    block = _block(Scalar(a), t1, gradient, kinetic=0.3, jacobian=0.7).train()
    out = block(x)
    # the state is solved as without the penalties: h(t1) = x e^{a t1}
    torch.testing.assert_close(out, x * math.exp(a * t1), rtol=1e-9, atol=0)
    kinetic, frobenius = (float(block.penalties[k]) for k in ("kinetic_energy",
                                                              "jacobian_frobenius"))
    assert kinetic == pytest.approx(_kinetic_scalar(a, x, t1), rel=1e-9)
    assert frobenius == pytest.approx(a * a * t1, rel=1e-9)  # |eps a|^2 / D = a^2, any eps
    assert float(block.penalty.detach()) == pytest.approx(0.3 * kinetic + 0.7 * frobenius, rel=1e-12)
    # and their gradients w.r.t. a, in closed form
    block.penalty.backward()
    n2 = float(x.pow(2).sum(1).mean()) / x.shape[1]
    dk = n2 / 2 * (math.expm1(2 * a * t1) + 2 * a * t1 * math.exp(2 * a * t1))
    assert float(block.func.a.grad) == pytest.approx(0.3 * dk + 0.7 * 2 * a * t1, rel=1e-7)


def test_the_jacobian_penalty_of_a_linear_map_is_its_frobenius_norm(fixed_noise):
    drawn, _ = fixed_noise
    T, d = 1.0, 3
    # a diagonal A: |eps^T A|^2 = |A|_F^2 for every Rademacher eps
    diag = torch.tensor([-0.5, 0.3, -1.2], dtype=torch.float64)
    block = _block(Matrix(torch.diag(diag)), T, kinetic=0.0, jacobian=1.0).train()
    x = _x(5, d)
    for _ in range(3):
        block(x)
        assert float(block.penalties["jacobian_frobenius"]) == pytest.approx(
            T * float(diag.pow(2).sum()) / d, rel=1e-9)
    assert len(drawn) == 3 and not torch.equal(drawn[0], drawn[1])  # drawn once per solve
    assert all(e.shape == x.shape and set(e.unique().tolist()) == {-1.0, 1.0} for e in drawn)
    # its kinetic energy: sum_i x_i^2 A_ii (e^{2 A_ii T} - 1) / 2 / D
    block.regularize(kinetic=1.0, jacobian=1.0)
    block(x)
    exact = (x.pow(2) * diag * torch.expm1(2 * diag * T) / 2).sum(1).mean() / d
    assert float(block.penalties["kinetic_energy"]) == pytest.approx(float(exact), rel=1e-9)
    # any A: exactly |eps^T A^T|^2 (per draw) and |A|_F^2 on average
    A = torch.tensor([[-0.5, 0.8, 0.0], [0.2, 0.3, -0.6], [0.4, 0.0, -1.0]],
                     dtype=torch.float64)
    block = _block(Matrix(A), T, tol=1e-8, kinetic=0.0, jacobian=1.0).train()
    x = _x(4000, d, seed=1)
    block(x)
    eps = drawn[-1]
    per_draw = float((eps @ A.T).pow(2).sum(1).mean()) * T / d
    got = float(block.penalties["jacobian_frobenius"])
    assert got == pytest.approx(per_draw, rel=1e-7)
    assert got == pytest.approx(T * float(A.pow(2).sum()) / d, rel=0.05)


def _penalty(block, x):
    block.train()
    block(x)
    return block.penalty


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_the_penalties_gradient_matches_finite_differences(gradient, fixed_noise):
    _, fixed = fixed_noise
    A = torch.tensor([[-0.5, 0.8, 0.0], [0.2, 0.3, -0.6], [0.4, 0.1, -1.0]],
                     dtype=torch.float64)
    x = _x(2, 3)
    fixed[0] = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]], dtype=torch.float64)
    block = _block(Matrix(A), 0.8, gradient, tol=1e-11, kinetic=0.6, jacobian=0.4)
    _penalty(block, x).backward()
    grad = block.func.A.grad.clone()
    fd, step = torch.zeros_like(A), 1e-5
    for i in range(3):
        for j in range(3):
            vals = []
            for sign in (1, -1):
                probe = A.clone()
                probe[i, j] += sign * step
                probed = _block(Matrix(probe), 0.8, gradient, tol=1e-11, kinetic=0.6,
                                jacobian=0.4)
                vals.append(float(_penalty(probed, x).detach()))
            fd[i, j] = (vals[0] - vals[1]) / (2 * step)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_the_adjoint_and_checkpoint_gradients_are_backprops(fixed_noise):
    """The whole loss (the state's and the penalties' parts), w.r.t. the parameters and the
    input, float64: the adjoint's to the solve's tolerance, checkpoint's to rounding."""
    _, fixed = fixed_noise
    A = torch.tensor([[-0.5, 0.8, 0.0], [0.2, 0.3, -0.6], [0.4, 0.1, -1.0]],
                     dtype=torch.float64)
    fixed[0] = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]], dtype=torch.float64)
    grads = {}
    for gradient in GRADIENTS:
        block = _block(Matrix(A), 1.0, gradient, tol=1e-11, kinetic=0.6, jacobian=0.4).train()
        x = _x(2, 3).requires_grad_()
        out = block(x)
        (out.pow(2).sum() + block.penalty).backward()
        grads[gradient] = (block.func.A.grad, x.grad)
    for g, r in zip(grads["adjoint"], grads["backprop"]):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)
    for g, r in zip(grads["checkpoint"], grads["backprop"]):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)


def test_steer_end_times_lie_in_the_jittered_interval(fixed_noise):
    a, t1, b = -0.6, 1.0, 0.25
    func = Scalar(a)
    block = _block(func, t1, tol=1e-8, kinetic=1.0, t1_jitter=b).train()
    x = _x(2, 3)
    ends = []
    for _ in range(300):
        func.times.clear()
        out = block(x)
        field = next(iter(block._prepared.values())).field
        assert isinstance(field, TrainingField)
        T = field.scale * t1
        # f was evaluated up to T, last there (the last step's last stage)
        assert max(func.times) == func.times[-1] == pytest.approx(T, rel=1e-12)
        # the trajectory is the one to T, and so is the kinetic energy's integral
        torch.testing.assert_close(out, x * math.exp(a * T), rtol=1e-6, atol=0)
        assert float(block.penalties["kinetic_energy"]) == pytest.approx(
            _kinetic_scalar(a, x, T), rel=1e-6)
        ends.append(T)
    assert all(t1 - b <= T <= t1 + b for T in ends)
    assert min(ends) < t1 - 0.9 * b and max(ends) > t1 + 0.9 * b  # the whole interval
    assert abs(sum(ends) / len(ends) - t1) < 0.04  # uniform about t1
    assert len(set(ends)) == len(ends)  # a draw per solve


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_evaluation_solves_ignore_the_jitter_and_penalties(gradient):
    x = _x(2, 3)
    A = torch.tensor([[-0.5, 0.8, 0.0], [0.2, 0.3, -0.6], [0.4, 0.1, -1.0]])
    func = Matrix(A)
    plain = _block(func, 1.0, gradient, tol=1e-6)
    steered = _block(func, 1.0, gradient, tol=1e-6, kinetic=0.5, jacobian=0.5, t1_jitter=0.3)
    steered.train()
    steered(x)  # a training solve first: what it left must not leak into evaluation
    dynamics_penalty(steered)
    rng = torch.get_rng_state()
    for mode in ("eval", "no_grad"):
        steered.train(mode == "no_grad")
        steered.stats.reset()
        plain.stats.reset()
        plain.train(mode == "no_grad")
        with torch.no_grad() if mode == "no_grad" else torch.enable_grad():
            out, ref = steered(x), plain(x)
        assert torch.equal(out.detach(), ref.detach()), mode  # integrated to t1, bit for bit
        assert steered.stats == plain.stats
        assert steered.penalty is None and steered.penalties == {}
    assert torch.equal(torch.get_rng_state(), rng)  # and drew nothing


@pytest.mark.parametrize("override, message", [
    ("model.kinetic_weight=-0.1", "model.kinetic_weight must be >= 0 (got -0.1)"),
    ("model.jacobian_weight=-1", "model.jacobian_weight must be >= 0 (got -1.0)"),
    ("model.t1_jitter=1.0", "model.t1_jitter must be in [0, model.t1=1) (got 1.0)"),
    ("model.t1_jitter=1.5", "model.t1_jitter must be in [0, model.t1=1) (got 1.5)"),
    ("model.t1_jitter=-0.1", "model.t1_jitter must be in [0, model.t1=1) (got -0.1)"),
])
@pytest.mark.parametrize("name", ["odenet", "rknet"])
def test_bad_regularization_settings_are_one_line_config_errors(name, override, message):
    with pytest.raises(ConfigError) as info:
        compose([f"model={name}", override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_regularizers_are_off_by_default():
    c = compose(["model=odenet"])
    assert (c.model.kinetic_weight, c.model.jacobian_weight, c.model.t1_jitter) == (0, 0, 0)
    block = build_model(c.model, c.solver).body
    assert (block.kinetic, block.jacobian, block.t1_jitter) == (0, 0, 0)
    x = torch.rand(2, 4, 6, 6)
    block.func = Scalar(-0.5).float()
    block.configure(rtol=1e-5)
    block.train()
    out = block(x)
    assert block.penalty is None and block._prepared and all(
        s.field is None for s in block._prepared.values())  # f itself, no TrainingField
    torch.testing.assert_close(out, x * math.exp(-0.5), rtol=1e-4, atol=1e-5)


def test_the_block_refuses_a_jitter_past_its_start():
    for b in (0.5, 0.7, -0.1):
        with pytest.raises(ValueError, match=r"t1_jitter must be in \[0, t1\)") as info:
            _block(Scalar(-1.0), 0.5, t1_jitter=b)
        assert "\n" not in str(info.value)


def _tiny(*overrides):
    c = compose(["model=odenet", "model.width=4", *overrides])
    torch.manual_seed(0)
    return build_model(c.model, c.solver).double()


def test_dynamics_penalty_is_the_weighted_sum_and_is_cleared():
    model = _tiny("model.kinetic_weight=0.5", "model.jacobian_weight=0.25").train()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    model(x)
    total, values = dynamics_penalty(model)
    assert set(values) == {"kinetic_energy", "jacobian_frobenius"}
    values = {k: float(v) for k, v in values.items()}  # detached tensors: read after backward
    assert values["kinetic_energy"] > 0 and values["jacobian_frobenius"] > 0
    assert float(total.detach()) == pytest.approx(0.5 * values["kinetic_energy"]
                                         + 0.25 * values["jacobian_frobenius"], rel=1e-12)
    assert total.requires_grad
    assert dynamics_penalty(model) == (None, {})  # cleared
    model.eval()
    model(x)
    assert dynamics_penalty(model) == (None, {})  # an evaluation solve adds nothing
    plain = _tiny().train()
    plain(x)
    assert dynamics_penalty(plain) == (None, {})


def test_train_step_adds_the_penalty_to_the_loss():
    overrides = ("model.kinetic_weight=2", "model.jacobian_weight=2", "model.t1_jitter=0.2")
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64),
             torch.randint(0, 10, (4,), generator=g))
    model, manual = _tiny(*overrides), _tiny(*overrides)
    torch.manual_seed(1)  # the same noise and end time for both
    step = train_step(ClassifyTask(), model, torch.optim.SGD(model.parameters(), lr=1.0),
                      batch, torch.device("cpu"))
    torch.manual_seed(1)
    manual.train()
    loss = nn.functional.cross_entropy(manual(batch[0]), batch[1])
    penalty, values = dynamics_penalty(manual)
    of_penalty = torch.autograd.grad(penalty, list(manual.parameters()), retain_graph=True,
                                     allow_unused=True)
    (loss + penalty).backward()
    assert step.loss == float(loss.detach())  # the recorded loss is the task's
    assert step.kinetic_energy == values["kinetic_energy"] > 0
    assert step.jacobian_frobenius == values["jacobian_frobenius"] > 0
    for (name, p), q in zip(model.named_parameters(), manual.parameters()):
        torch.testing.assert_close(p.detach(), (q - q.grad).detach(), rtol=1e-12, atol=1e-14,
                                   msg=name)
    # the penalty's part of the step is not negligible: the test can tell it is there
    assert max(float(g.abs().max()) for g in of_penalty if g is not None) > 1e-3


TINY = ("experiment=smoke", "model=odenet", "model.width=8", "data.train_size=128",
        "data.test_size=32", "train.train_eval_size=0", "train.tensorboard=false")
PENALTIES = ("model.kinetic_weight=0.01", "model.jacobian_weight=0.01", "model.t1_jitter=0.2")


def _history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_a_training_with_penalties_records_them_and_resumes_bit_for_bit(compose_cfg,
                                                                        tmp_path):
    from odenet.run.record import CHECKPOINT_FILE
    from odenet.training.checkpoint_file import load as load_checkpoint

    a, b = tmp_path / "straight", tmp_path / "stopped"
    m = run(compose_cfg(*TINY, *PENALTIES), a)
    assert m["status"] == "finished"
    assert (m["kinetic_weight"], m["jacobian_weight"], m["t1_jitter"]) == (0.01, 0.01, 0.2)
    iters = [r for r in _history(a) if r["kind"] == "iter"]
    epoch = [r for r in _history(a) if r["kind"] == "epoch"][-1]
    assert len(iters) == 4
    for k in ("kinetic_energy", "jacobian_frobenius"):
        assert all(r[k] > 0 for r in iters), k
        assert epoch[k] == pytest.approx(sum(r[k] for r in iters) / len(iters), rel=1e-9), k
        assert m[k] == epoch[k], k
    first = run(compose_cfg(*TINY, *PENALTIES, "train.stop_after_iters=2"), b)
    assert first["status"] == "interrupted"
    last = run(compose_cfg(*TINY, *PENALTIES, "resume=true"), b)
    assert last["status"] == "finished"
    for k in ("test_error", "nfe_forward_mean", "nfe_backward_mean", "kinetic_energy",
              "jacobian_frobenius"):
        assert m[k] == last[k], k
    wa = load_checkpoint(a / CHECKPOINT_FILE)["model"]
    wb = load_checkpoint(b / CHECKPOINT_FILE)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    keep = ("iter", "loss", "nfe_forward", "kinetic_energy", "jacobian_frobenius")
    assert ([[r[k] for k in keep] for r in iters]
            == [[r[k] for k in keep] for r in _history(b) if r["kind"] == "iter"])
