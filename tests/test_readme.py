"""Every command of the README runs as written. The smoke-sized ones run here, in the
README's order, in one scratch directory (a later command reads what an earlier one
wrote): the quickest in the default test run, those that solve ODEs under `-m slow`; the
rest (longer trainings, installs) are named with the reason they are not run. A command added to the README fails
`test_every_readme_command_is_accounted_for` until it is listed below."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# command as written -> the exit status it must end with. FAST: seconds each, no ODE
# solve (the default test run); SLOW: the rest that a CPU runs in a minute or two.
FAST = {
    "odenet data": 0,
    "odenet reproduce experiment=quick dry_run=true": 0,
    "odenet --help": 0,
    """odenet train experiment=smoke model=mlp 'hydra.run.dir="outputs/runs/ünï (2)"'""": 0,
    "odenet train experiment=smoke model=mlp hydra.run.dir=outputs/runs/mlp "
    "train.stop_after_iters=3": 3,
    "odenet train experiment=smoke model=mlp hydra.run.dir=outputs/runs/mlp resume=true": 0,
    "odenet train experiment=smoke model=mlp hydra.run.dir=outputs/runs/mlp overwrite=true": 0,
}
SLOW = {
    "odenet train experiment=smoke model=odenet": 0,
    "odenet train experiment=smoke model=odenet hydra.run.dir=outputs/runs/ode": 0,
    "odenet evaluate checkpoint=outputs/runs/ode/checkpoint.pt tolerances=[1e-1,1e-2,1e-3] "
    "test_size=200 error_images=20 reference_tol=1e-7": 0,
    "odenet gradients checkpoint=outputs/runs/ode/checkpoint.pt tolerances=[1e-2] "
    "batch_size=16 reference_tol=1e-7": 0,
    "odenet table outputs/runs out=outputs/report/mine": 0,
    "odenet figures outputs/runs out=outputs/report/mine": 0,
    "odenet train experiment=smoke model=odenet solver=bosh3 solver.rtol=1e-2 "
    "solver.gradient=checkpoint": 0,
    "odenet train -m experiment=smoke model=mlp,resnet seed=0,1": 0,
    "odenet train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 experiment=smoke "
    "model=mlp seed=0,1": 0,
    "odenet train -m hydra/launcher=local experiment=smoke model=mlp seed=0,1": 0,
    "odenet train experiment=cnf_moons model=planar optim.lr=0.1": 0,
}
NOT_RUN = {
    "git clone <this repository> odenet && cd odenet": "a placeholder URL",
    "make install": "installs .venv (the test runs inside an installed environment)",
    "source .venv/bin/activate": "the shell's environment",
    "make test": "the test suite itself",
    "odenet train experiment=quick model=odenet": "full MNIST, an epoch: minutes",
    "make reproduce": "the quick plan: 15-30 minutes on 2 cores",
    "odenet train experiment=cnf_moons": "1,000 CNF steps: ~2 minutes",
}


def readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """The commands of the README's shell blocks, in order: comments dropped, continued
    lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", readme(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(line[: _comment_at(line)].strip())
    return out


def _comment_at(line: str) -> int:
    """Where the line's shell comment begins (a # outside quotes, after a space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return len(line)


def run_in_order(commands: dict[str, int], cli, where: Path, mnist_root: Path) -> None:
    (where / "data").symlink_to(mnist_root)  # data.root=data, as in a clone
    # the checkout's code, whichever odenet the environment has installed
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    ran = []
    for command in readme_commands():
        if command not in commands:
            continue
        words = shlex.split(command)
        assert words[0] == "odenet", command
        r = cli(*words[1:], cwd=where, env=env, timeout=600)
        assert r.returncode == commands[command], \
            f"{command}\nexit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        ran.append(command)
    assert ran == [c for c in readme_commands() if c in commands]
    assert set(ran) == set(commands), set(commands) - set(ran)


def test_every_readme_command_is_accounted_for():
    found = readme_commands()
    listed = {**FAST, **SLOW, **NOT_RUN}
    assert len(listed) == len(FAST) + len(SLOW) + len(NOT_RUN)  # none listed twice
    assert set(found) - set(listed) == set(), "README commands this test does not know"
    assert set(listed) - set(found) == set(), "listed here but no longer in the README"


def test_the_quick_readme_commands_run_as_written(cli, tmp_path, mnist_root):
    run_in_order(FAST, cli, tmp_path, mnist_root)
    assert (tmp_path / "outputs/runs/ünï (2)/metrics.json").is_file()
    assert (tmp_path / "outputs/runs/mlp/metrics.json").is_file()


@pytest.mark.slow
def test_the_slower_readme_commands_run_as_written(cli, tmp_path, mnist_root):
    run_in_order(SLOW, cli, tmp_path, mnist_root)
    assert (tmp_path / "outputs/runs/ode/evaluation.json").is_file()
    assert (tmp_path / "outputs/runs/ode/gradients.json").is_file()
    assert (tmp_path / "outputs/report/mine/table.md").is_file()
    assert len(list((tmp_path / "outputs/sweeps").glob("*/*/*/metrics.json"))) == 4 + 2 + 2


def test_the_solver_library_example_runs(capsys):
    section = readme().split("\n## The solver library\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("torch.Size([5, 2])")


def test_the_readme_stays_a_guide():
    assert len(readme().splitlines()) <= 350
