"""The step carried across adaptive solves (options["carry_step"], odenet.solvers.StepCarry,
SolveSpec(carry_step=True), the ODE block's ``carried_steps``, config solver.carry_step):
a solve starts from the step the last one proposed instead of the first-step estimate,
under the same error control; the adjoint's backward solve carries its own."""

from __future__ import annotations

import math

import pytest
import torch

from odenet.models.blocks import ODEBlock
from odenet.solvers import SolveSpec, SolveStats, StepCarry, adaptive, odeint, prepare, rk
from odenet.solvers.odeint import ADAPTIVE_OPTIONS

from .problems import PROBLEMS, Field

torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads spin

T = torch.tensor([0.0, 1.0], dtype=torch.float64)
DOPRI5_ORDER = 5  # the controller's exponent is 1 / the tableau's order
SAFETY, DFACTOR = 0.9, 0.2  # odeint's defaults (ADAPTIVE_OPTIONS)


class _Recorder:
    """A controller that records each call: (kind, h, ratio, the step it returns)."""

    def __init__(self, inner, log: list):
        self.inner, self.log = inner, log

    def first(self, h):
        out = self.inner.first(h)
        self.log.append(("first", h, None, out))
        return out

    def must_accept(self, h):
        return self.inner.must_accept(h)

    def accepted(self, h, ratio):
        out = self.inner.accepted(h, ratio)
        self.log.append(("accepted", h, ratio, out))
        return out

    def rejected(self, h, ratio):
        out = self.inner.rejected(h, ratio)
        self.log.append(("rejected", h, ratio, out))
        return out


@pytest.fixture
def steps(monkeypatch):
    """The controller calls of every adaptive solve from here on, in order; a solve's
    calls start with ("first", h, ...), h the step it starts from."""
    log: list = []
    real = adaptive.make_controller
    monkeypatch.setattr(adaptive, "make_controller", lambda o, q: _Recorder(real(o, q), log))
    return log


@pytest.fixture
def estimates(monkeypatch):
    """How many first-step estimates (one evaluation of f each) the Runge-Kutta solves made."""
    count = [0]
    real = rk._RKStepping.first_step

    def counted(self):
        count[0] += 1
        return real(self)

    monkeypatch.setattr(rk._RKStepping, "first_step", counted)
    return count


def _solves(log: list) -> list[list]:
    """The recorded calls, one list per solve."""
    out: list[list] = []
    for call in log:
        if call[0] == "first":
            out.append([])
        out[-1].append(call)
    return out


def _within_tolerance(ys, exact, tol):
    """A tolerance-controlled solve's global error: a small multiple of the tolerance
    (relative to the solution's size), as tests/solvers/test_accuracy.py asks."""
    scale = exact.abs().max().clamp(min=1.0).item()
    err = (ys - exact).abs().max().item() / scale
    assert err < 50 * tol, err


def _stiff(rate: float):
    y0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    return (lambda t, y: -rate * y), y0, (lambda t: y0 * torch.exp(-rate * t))


@pytest.mark.parametrize("problem", ["decay", "linear", "time_dependent"])
def test_a_second_solve_starts_from_the_carried_step(problem, steps, estimates):
    func, y0, solution = PROBLEMS[problem]()
    tol, carry = 1e-7, StepCarry()
    stats = [SolveStats(), SolveStats()]
    for s in stats:
        ys = odeint(func, y0, T, rtol=tol, atol=tol, options={"carry_step": carry}, stats=s)
        _within_tolerance(ys[-1], solution(T[-1]), tol)  # the same error control
        if s is stats[0]:
            carried = carry.h
            assert carried is not None and carried > 0
    first, second = _solves(steps)
    assert estimates[0] == 1  # the first solve estimated its first step, the second did not
    assert second[0][1] == carried and first[0][1] != carried
    assert stats[1].nfe_forward < stats[0].nfe_forward
    # not a cheaper error control: every step of either solve was accepted on its ratio
    assert all(c[2] <= 1.0 for c in first + second if c[0] == "accepted")


@pytest.mark.parametrize("case", ["stiffer problem", "tighter tolerance"])
def test_a_carried_step_too_large_is_rejected_and_shrunk_by_the_controllers_rule(case, steps):
    func, y0, _ = PROBLEMS["decay"]()
    carry = StepCarry()
    odeint(func, y0, T, rtol=1e-5, atol=1e-5, options={"carry_step": carry})
    carried = carry.h
    if case == "stiffer problem":
        (func, y0, solution), tol = _stiff(60.0), 1e-5
    else:
        (func, y0, solution), tol = PROBLEMS["decay"](), 1e-11
    stats = SolveStats()
    ys = odeint(func, y0, T, rtol=tol, atol=tol, options={"carry_step": carry}, stats=stats)
    _within_tolerance(ys[-1], solution(T[-1]), tol)
    calls = _solves(steps)[-1]
    assert calls[0][1] == carried and calls[1][0] == "rejected"  # the carried step failed
    rejected = [i for i, c in enumerate(calls) if c[0] == "rejected"]
    assert stats.steps_rejected == len(rejected) >= 1
    for i in rejected:
        _, h, ratio, shrunk = calls[i]
        # IController.rejected: h * min(1, max(dfactor, safety * ratio^(-1/order)))
        rule = h * (DFACTOR if not math.isfinite(ratio)
                    else min(1.0, max(DFACTOR, SAFETY * ratio ** (-1.0 / DOPRI5_ORDER))))
        assert shrunk == pytest.approx(rule, rel=1e-14) and shrunk < h
        assert calls[i + 1][1] == shrunk  # and the solve tried exactly that step next


@pytest.mark.parametrize("controller", ["I", "PI"])
def test_the_carry_is_the_step_the_controller_proposes_next(controller, steps):
    """The larger of the controller's proposal after the last step and the step it had
    planned before that step was cut to end on t1: both proposals of the controller."""
    carry = StepCarry()
    for problem in ("decay", "linear", "time_dependent", "decay"):
        func, y0, _ = PROBLEMS[problem]()
        odeint(func, y0, T, rtol=1e-6, atol=1e-6,
               options={"carry_step": carry, "controller": controller})
        calls = _solves(steps)[-1]
        last = calls[-1]
        assert last[0] == "accepted"
        planned = calls[-2][3] if len(calls) > 1 else last[1]
        assert carry.h == max(planned, last[3]), (problem, carry.h, last)
        assert carry.h >= last[3]


def test_the_carry_stays_within_max_step(steps):
    func, y0, _ = PROBLEMS["decay"]()
    carry = StepCarry()
    for _ in range(3):
        odeint(func, y0, T, rtol=1e-4, atol=1e-4,
               options={"carry_step": carry, "max_step": 0.05})
        assert 0 < carry.h <= 0.05
    assert all(c[3] <= 0.05 for c in steps)


def _adjoint_grads(func, y0, options=None, adjoint_options=None, between=None):
    """Outputs and gradients of an adjoint solve; ``between()`` runs after its forward
    solve, before its backward."""
    y0 = y0.clone().requires_grad_(True)
    func.zero_grad(set_to_none=True)
    ys = odeint(func, y0, T, rtol=1e-8, atol=1e-8, gradient="adjoint",
                adjoint_params=tuple(func.parameters()), options=options,
                adjoint_options=adjoint_options)
    if between is not None:
        between()
    (ys[-1] ** 2).sum().backward()
    return ys.detach(), y0.grad, func.w.grad


def test_the_adjoints_backward_solve_carries_its_own_step(steps):
    func, y0 = Field(), torch.tensor([[0.3, -0.2, 1.0], [1.0, 0.5, -0.7]], dtype=torch.float64)
    ref = _adjoint_grads(func, y0)
    fwd, back = StepCarry(), StepCarry(0.123)
    for _ in range(2):
        steps.clear()
        before, seen = back.h, []
        got = _adjoint_grads(func, y0, {"carry_step": fwd}, {"carry_step": back},
                             between=lambda s=seen: s.append(fwd.h))
        forward, backward = _solves(steps)
        assert backward[0][1] == before != fwd.h  # the backward started from its own carry
        assert back.h != before and back.h > 0  # ...and left its next step in it
        assert fwd.h == seen[0]  # the backward never wrote the forward's
        for a, b in zip(got, ref):  # the same error control: the same results, to tolerance
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # no adjoint_options carry: the backward does not take the forward's carried step, and
    # leaves it alone
    h, h_back = fwd.h, back.h
    steps.clear()
    _adjoint_grads(func, y0, {"carry_step": fwd})
    forward, backward = _solves(steps)
    assert forward[0][1] == h and backward[0][1] not in (fwd.h, h_back)
    assert back.h == h_back


def test_a_prepared_solve_carries_forward_and_backward_apart(steps):
    func, y0 = Field(), torch.tensor([[0.3, -0.2, 1.0]], dtype=torch.float64)
    spec = SolveSpec(rtol=1e-7, atol=1e-7, gradient="adjoint", carry_step=True)
    shared = (StepCarry(), StepCarry())
    solve = prepare(spec, func, y0, T, carry=shared)
    assert solve.carry is shared
    solve(y0.clone().requires_grad_())[-1].sum().backward()
    assert shared[0].h > 0 and shared[1].h > 0 and shared[0].h != shared[1].h
    other = prepare(spec, func, y0, T)  # without `carry`: its own, starting afresh
    assert other.carry[0].h is None and other.carry[0] is not shared[0]
    steps.clear()
    h0 = shared[0].h
    prepare(spec, func, y0, T, carry=shared)(y0)  # another prepared solve, the same carry
    assert steps[0][1] == h0


@pytest.mark.parametrize("options, message", [
    ({"carry_step": 0.1}, "options['carry_step'] must be a StepCarry (odenet.solvers.StepCarry) "
     "or None, got float"),
    ({"carry_step": StepCarry(0.0)}, "options['carry_step'].h must be a positive finite number"),
    ({"carry_step": StepCarry(-0.5)}, "options['carry_step'].h must be a positive finite number"),
    ({"carry_step": StepCarry(math.nan)}, "options['carry_step'].h must be a positive finite"),
    ({"carry_step": StepCarry(math.inf)}, "options['carry_step'].h must be a positive finite"),
])
def test_bad_carries_are_one_line_value_errors(options, message):
    func, y0, _ = PROBLEMS["decay"]()
    with pytest.raises(ValueError) as info:
        odeint(func, y0, T, options=options)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("adjoint_options, message", [
    ({"carry_step": "h"}, "adjoint_options['carry_step'] must be a StepCarry"),
    ({"carry_step": StepCarry(-1.0)}, "adjoint_options['carry_step'].h must be a positive"),
    ({"carry_step": StepCarry(), "method": "rk4"}, "the adjoint method 'rk4' takes no carried "
     "step"),
])
def test_bad_backward_carries_are_one_line_value_errors(adjoint_options, message):
    func, y0 = Field(), torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError) as info:
        odeint(func, y0, T, gradient="adjoint", adjoint_params=tuple(func.parameters()),
               adjoint_options=adjoint_options)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["rk4", "euler", "explicit_adams", "lsoda"])
def test_methods_without_an_adaptive_step_refuse_a_carry(method):
    with pytest.raises(ValueError) as info:
        SolveSpec(method=method, carry_step=True)
    assert str(info.value) == (f"carry_step is for the adaptive Runge-Kutta family, got the "
                               f"method {method!r}")
    func, y0, _ = PROBLEMS["decay"]()
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['carry_step'\]") as info:
        odeint(func, y0, T, method=method, options={"carry_step": StepCarry()})
    assert "\n" not in str(info.value)


def test_config_refuses_carry_step_without_an_adaptive_step(cli, compose_cfg, tmp_path):
    from odenet.config.schema import ConfigError

    r = cli("train", "solver=rk4", "solver.carry_step=true", f"hydra.run.dir={tmp_path / 'run'}")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("odenet train: error: ")
    assert "solver.carry_step=true is for the adaptive Runge-Kutta methods" in lines[0]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="solver.method=lsoda has no step to carry") as info:
        compose_cfg("solver=lsoda", "solver.carry_step=true")
    assert "\n" not in str(info.value)
    assert compose_cfg("solver=tsit5", "solver.carry_step=true").solver.carry_step is True


def test_without_a_carry_the_solver_is_unchanged(steps, estimates):
    """The default (no carry) and an empty StepCarry give the same solve, bit for bit; a
    block without carry_step has no new buffer (its checkpoints are as before)."""
    assert ADAPTIVE_OPTIONS["carry_step"] is None and SolveSpec().carry_step is False
    func, y0, _ = PROBLEMS["linear"]()
    runs = []
    for options in (None, {"carry_step": None}, {"carry_step": StepCarry()}):
        s = SolveStats()
        runs.append((odeint(func, y0, T, rtol=1e-6, atol=1e-6, options=options, stats=s),
                     s.as_dict()))
    assert estimates[0] == 3  # each estimated its first step
    assert all(torch.equal(ys, runs[0][0]) and s == runs[0][1] for ys, s in runs)
    a, b, c = _solves(steps)
    # the same steps (a carry asks the controller its next step once more, at the end)
    assert a == b == c[:len(a)] and len(c) == len(a) + 1
    block = ODEBlock(_Linear(), 1.0)
    assert set(block.state_dict()) == {"func.A"} and not block.spec.carry_step


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor([[-1.0, 0.5, 0.0], [-0.5, -1.0, 0.2],
                                                  [0.0, 0.1, -2.0]], dtype=torch.float64))

    def forward(self, t, h):
        return h @ self.A


def _train_forward(block, x):
    block.train()
    block.stats.reset()
    out = block(x.clone().requires_grad_())
    (out ** 2).sum().backward()
    return out.detach(), block.stats.as_dict()


def test_the_blocks_carry_is_saved_and_not_used_in_eval_mode(steps):
    x = torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]], dtype=torch.float64)
    block = ODEBlock(_Linear(), 1.0, method="dopri5", rtol=1e-6, carry_step=True)
    assert torch.isnan(block.state_dict()["carried_steps"]).all()  # none yet
    _train_forward(block, x)
    carried = block.state_dict()["carried_steps"].clone()
    assert torch.isfinite(carried).all() and (carried > 0).all()  # forward and backward
    assert carried.dtype == torch.float64
    assert carried[0] != carried[1]
    # eval mode starts from the first-step estimate and leaves the carried step as it is
    block.eval()
    steps.clear()
    with torch.no_grad():
        out = block(x)
    assert steps[0][0] == "first" and steps[0][1] != float(carried[0])
    assert torch.equal(block.carried_steps, carried)
    (block(x.clone().requires_grad_()) ** 2).sum().backward()  # with gradients too
    assert torch.equal(block.carried_steps, carried)
    torch.testing.assert_close(out, x @ torch.linalg.matrix_exp(block.func.A.detach()),
                               rtol=1e-4, atol=1e-5)
    # a copy loaded from the state dict continues the training exactly as the block does
    twin = ODEBlock(_Linear(), 1.0, method="dopri5", rtol=1e-6, carry_step=True)
    twin.load_state_dict(block.state_dict())
    assert torch.equal(twin.carried_steps, carried)
    for b in (block, twin):
        b.func.zero_grad(set_to_none=True)
    steps.clear()
    (ya, sa), (yb, sb) = _train_forward(block, x), _train_forward(twin, x)
    assert steps[0][0] == "first" and steps[0][1] == float(carried[0])  # training reads it
    assert torch.equal(ya, yb) and sa == sb
    assert torch.equal(block.func.A.grad, twin.func.A.grad)
    assert torch.equal(block.carried_steps, twin.carried_steps)
    assert not torch.equal(block.carried_steps, carried)  # training updated it


def test_the_blocks_training_solves_take_fewer_evaluations_with_a_carry():
    x = torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]], dtype=torch.float64)
    plain = ODEBlock(_Linear(), 1.0, method="dopri5", rtol=1e-6)
    carried = ODEBlock(_Linear(), 1.0, method="dopri5", rtol=1e-6, carry_step=True)
    _train_forward(carried, x)  # the first solve has no carry yet
    (ya, sa), (yb, sb) = _train_forward(plain, x), _train_forward(carried, x)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    assert sb["nfe_forward"] < sa["nfe_forward"] and sb["nfe_backward"] < sa["nfe_backward"]


def test_a_carry_step_block_can_be_evaluated_with_another_method():
    block = ODEBlock(_Linear(), 1.0, method="dopri5", rtol=1e-6, carry_step=True)
    block.configure(method="rk4", step_size=0.05, max_num_steps=1000)
    block.eval()
    x = torch.ones(1, 3, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
    torch.testing.assert_close(out, x @ torch.linalg.matrix_exp(block.func.A.detach()),
                               rtol=1e-3, atol=1e-4)


TINY = ("experiment=smoke", "model=odenet", "model.width=8", "data.train_size=128",
        "data.test_size=32", "train.train_eval_size=0", "train.tensorboard=false",
        "solver.carry_step=true")


def test_resume_of_a_carry_step_training_is_bit_for_bit(compose_cfg, tmp_path):
    import json

    from odenet.run.record import CHECKPOINT_FILE
    from odenet.training.checkpoint_file import load as load_checkpoint
    from odenet.training.trainer import run

    a, b = tmp_path / "straight", tmp_path / "stopped"
    ma = run(compose_cfg(*TINY), a)
    assert ma["solver_carry_step"] is True and ma["status"] == "finished"
    first = run(compose_cfg(*TINY, "train.stop_after_iters=2"), b)
    assert first["status"] == "interrupted"
    stopped = load_checkpoint(b / CHECKPOINT_FILE)["model"]["body.carried_steps"]
    assert torch.isfinite(stopped).all()  # the checkpoint holds both carried steps
    mb = run(compose_cfg(*TINY, "resume=true"), b)
    assert mb["status"] == "finished"
    for k in ("test_error", "nfe_forward_mean", "nfe_backward_mean", "test_nfe_forward_mean"):
        assert ma[k] == mb[k], k
    wa = load_checkpoint(a / CHECKPOINT_FILE)["model"]
    wb = load_checkpoint(b / CHECKPOINT_FILE)["model"]
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wb["body.carried_steps"], stopped)

    def iters(out):
        rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        return [(r["iter"], r["loss"], r["nfe_forward"], r["nfe_backward"]) for r in rows
                if r["kind"] == "iter"]

    assert iters(a) == iters(b) and len(iters(a)) == 4


def test_an_older_checkpoint_resumed_with_a_carry_is_refused_or_continued(compose_cfg,
                                                                         tmp_path):
    from odenet.config.schema import ConfigError
    from odenet.run.record import CHECKPOINT_FILE
    from odenet.training.trainer import run

    plain = tuple(o for o in TINY if o != "solver.carry_step=true")
    run(compose_cfg(*plain, "train.stop_after_iters=2"), tmp_path)
    ck = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    del ck["config"]["solver"]["carry_step"]  # as written before the setting existed
    torch.save(ck, tmp_path / CHECKPOINT_FILE)
    try:
        m = run(compose_cfg(*TINY, "resume=true"), tmp_path)
    except ConfigError as e:  # refused: fine, in one line
        assert "\n" not in str(e)
    else:
        assert m["status"] == "finished"


def test_evaluate_solves_from_the_estimate_and_shows_the_carried_step(compose_cfg, tmp_path,
                                                                       steps):
    """`odenet evaluate` on a carry_step run: its rows start from the first-step estimate;
    ``carried_step`` repeats each tolerance from the step training carried."""
    from odenet.analysis import evaluate as E
    from odenet.run.record import CHECKPOINT_FILE
    from odenet.training.checkpoint_file import load as load_checkpoint
    from odenet.training.trainer import run

    run(compose_cfg(*TINY), tmp_path)
    ck = tmp_path / CHECKPOINT_FILE
    h = float(load_checkpoint(ck)["model"]["body.carried_steps"][0])
    cfg = E.validate(E.EvaluateConfig(checkpoint=str(ck), tolerances=[1e-3], test_size=32,
                                      error_images=8, reference_tol=1e-7, repeats=1))
    steps.clear()
    ev = E.evaluate(cfg, log=lambda *_: None)
    firsts = [s[1] for s in steps if s[0] == "first"]
    h_used = ev["carried_step"]["first_step"]  # in the evaluation's dtype (float32)
    assert h_used == pytest.approx(h, rel=1e-6)
    assert len(ev["results"]) == len(ev["carried_step"]["results"]) == 1
    row, carried = ev["results"][0], ev["carried_step"]["results"][0]
    assert row["status"] == carried["status"] == "ok" and carried["rtol"] == 1e-3
    # the reference, the rows and the carried rows solve the same batches: only the
    # carried rows' solves (under half of them) start from the carried step
    assert 0 < firsts.count(h_used) < len(firsts) / 2
    assert float(load_checkpoint(ck)["model"]["body.carried_steps"][0]) == h  # left as it was
