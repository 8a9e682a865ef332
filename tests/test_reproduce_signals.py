"""odenet reproduce owns its children: a signal reaches every running child once, reproduce
waits for them and exits 128 + signal, and no child outlives it.

The fast tests run reproduce as a real process with a fake child (a script that records
the signals it gets); test_sigterm_real_training_resumes runs real `odenet train`
children (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from odenet.reproduce.wall import read_parts

REPO = Path(__file__).resolve().parents[1]

# The fake `odenet train`: writes its pid, waits for FAKE_NEEDS signals (default 1; 2: one
# that ignores the first), writing each to signals.json, then waits a little longer so that
# a second delivery (a process group shared with reproduce) would be recorded too.
CHILD = textwrap.dedent('''
    import json, os, signal, sys, time
    from pathlib import Path
    kv = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    d = Path(kv["hydra.run.dir"]); d.mkdir(parents=True, exist_ok=True)
    got = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: got.append(signum))
    (d / "pid").write_text(str(os.getpid()))
    needs, seen = int(os.environ.get("FAKE_NEEDS", "1")), 0
    deadline = time.monotonic() + 60
    while len(got) < needs and time.monotonic() < deadline:
        time.sleep(0.02)
        if len(got) > seen:
            seen = len(got)
            (d / "signals.json").write_text(json.dumps(got))
    time.sleep(0.5)
    (d / "signals.json").write_text(json.dumps(got))
    sys.exit(128 + got[0] if got else 0)
''')

# reproduce's own main(), with the fake child and a one-run plan
DRIVER = textwrap.dedent('''
    import functools, sys
    from odenet.reproduce import command, jobs, plan
    child, plan_file = sys.argv[1], sys.argv[2]
    jobs.odenet_command = lambda: [sys.executable, child]
    command.load_config = functools.partial(plan.load_config, plan_file=plan_file)
    sys.exit(command.main(sys.argv[3:]))
''')

PLAN = textwrap.dedent('''
    experiment: tiny
    plans:
      tiny:
        seeds: [0]
        models: [mlp, resnet, rknet]
        evaluate: {model: odenet, tolerances: [1e-1]}
''')


def _env() -> dict[str, str]:
    # children import this checkout's odenet, whatever the installed one is
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def _wait_for(path: Path, timeout: float, proc: subprocess.Popen) -> None:
    """Until `path` exists and is not empty."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        assert proc.poll() is None, f"reproduce exited early: {proc.communicate(timeout=10)}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _start(tmp_path, *args, env=None):
    """reproduce's main() in a process group of its own, as a shell gives a foreground job."""
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "plan.yaml").write_text(PLAN)
    return subprocess.Popen([sys.executable, str(tmp_path / "driver.py"),
                             str(tmp_path / "child.py"), str(tmp_path / "plan.yaml"), *args],
                            env={**_env(), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _signal(proc: subprocess.Popen, signum: int, to_group: bool) -> None:
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)


@pytest.mark.parametrize("signum, to_group, jobs", [
    (signal.SIGTERM, False, 1),  # kill <pid>
    (signal.SIGINT, True, 1),    # Ctrl-C in a terminal: the whole foreground process group
    (signal.SIGTERM, False, 2),  # two children running: each gets it once
    (signal.SIGINT, True, 2),
])
def test_signal_reaches_every_child_once(tmp_path, signum, to_group, jobs):
    args = [f"root={tmp_path / 'runs'}", f"report={tmp_path / 'report'}", f"jobs={jobs}"]
    proc = _start(tmp_path, *args)
    runs = [tmp_path / "runs" / "table" / f"{m}_seed0" for m in ("mlp", "resnet", "rknet")]
    try:
        for run in runs[:jobs]:
            _wait_for(run / "pid", 30, proc)
        children = [int((run / "pid").read_text()) for run in runs[:jobs]]
        _signal(proc, signum, to_group)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 128 + signum, err
    for run in runs[:jobs]:
        assert json.loads((run / "signals.json").read_text()) == [signum]  # once, not twice
    assert all(_gone(child) for child in children)
    for run in runs[jobs:]:
        assert not run.exists()  # nothing started after
    assert not (tmp_path / "report").exists()
    [part] = read_parts(tmp_path / "runs")  # the interrupted part is on record
    assert part["ended_by"] == f"stopped by {signal.Signals(signum).name}"
    assert part["children_started"] == str(jobs)
    last = err.strip().splitlines()[-1]
    during = ", ".join(f"table/{r.name}" for r in runs[:jobs])
    assert last.startswith(f"odenet reproduce: stopped by {signal.Signals(signum).name} "
                           f"during {during};"), last
    assert last.endswith(f"run the same command again (finished runs are skipped, "
                         f"interrupted ones resume): odenet reproduce {' '.join(args)}")
    assert f"start:  table/mlp_seed0; output: {runs[0] / 'train.out'}" in out


def _signals_of(runs: list[Path]) -> list[list[int]]:
    return [json.loads((r / "signals.json").read_text()) for r in runs]


def _ctrl_c_twice(proc: subprocess.Popen, runs: list[Path], start_timeout: float):
    """Ctrl-C to reproduce's process group once every run has started, then once more
    after each run noted the first; (the runs' signals after the first, stderr)."""
    try:
        for run in runs:
            _wait_for(run / "pid", start_timeout, proc)
        _signal(proc, signal.SIGINT, True)
        for run in runs:
            _wait_for(run / "signals.json", 30, proc)
        time.sleep(1.0)  # reproduce waits for them, signals nothing more
        assert proc.poll() is None
        first = _signals_of(runs)
        _signal(proc, signal.SIGINT, True)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return first, err


def test_a_second_signal_reaches_each_child_once_more(tmp_path):
    """Children that go on after the first Ctrl-C: reproduce waits for them; the second
    Ctrl-C reaches each of them once more (odenet train then stops at once)."""
    args = [f"root={tmp_path / 'runs'}", f"report={tmp_path / 'report'}", "jobs=2"]
    proc = _start(tmp_path, *args, env={"FAKE_NEEDS": "2"})
    runs = [tmp_path / "runs" / "table" / f"{m}_seed0" for m in ("mlp", "resnet")]
    first, err = _ctrl_c_twice(proc, runs, 30)
    assert first == [[2], [2]]
    assert proc.returncode == 130, err
    assert _signals_of(runs) == [[2, 2], [2, 2]]
    assert not (tmp_path / "runs" / "table" / "rknet_seed0").exists()


def test_a_root_is_held_by_one_invocation(tmp_path):
    """A second reproduce into a root that one is running is refused in one line naming the
    first (and how to wait for it), before it starts or writes anything: the first's
    children keep their run locks, wall.csv keeps its row."""
    root = tmp_path / "runs"
    args = [f"root={root}", f"report={tmp_path / 'report'}", "jobs=1"]
    first = _start(tmp_path, *args)
    run = root / "table" / "mlp_seed0"
    try:
        _wait_for(run / "pid", 30, first)
        second = _start(tmp_path, *args)
        out, err = second.communicate(timeout=60)
        look = _start(tmp_path, *args, "dry_run=true")  # writes nothing: not refused
        assert look.wait(timeout=60) == 0
        assert first.poll() is None
        _signal(first, signal.SIGTERM, False)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
    assert (second.returncode, out) == (2, "")
    assert err == (f"odenet reproduce: error: root={root} is held by another odenet reproduce "
                   f"(pid {first.pid}): wait for it to end (tail --pid={first.pid} -f "
                   "/dev/null) and run again, or choose another root=\n")
    assert json.loads((run / "signals.json").read_text()) == [signal.SIGTERM]
    assert sorted(p.name for p in (root / "table").iterdir()) == ["mlp_seed0"]
    [part] = read_parts(root)
    assert (part["children_started"], part["ended_by"]) == ("1", "stopped by SIGTERM")


@pytest.mark.slow
def test_sigterm_real_training_resumes(tmp_path, mnist_root):
    """Real `odenet train` children: SIGTERM mid-training checkpoints the run, reproduce
    exits 143 with no child left; the same command again resumes it to finished."""
    data = mnist_root
    run = tmp_path / "runs" / "table" / "resnet_seed0"
    # one ResNet run of 40 iterations (a few seconds), no evaluation (no ODE-Net), no
    # variant rows, no gradient errors, no sweeps
    cmd = [sys.executable, "-m", "odenet.cli", "reproduce", "experiment=quick",
           "plans.quick.models=[resnet]", "plans.quick.variants=[]",
           "plans.quick.gradients=null", "sweeps=false", f"root={tmp_path / 'runs'}",
           f"report={tmp_path / 'report'}",
           f"train_args=[data.root={data},data.train_size=5120,data.test_size=256,"
           "train.train_eval_size=0,train.log_every=1,optim.epochs=1,threads=1]"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(run / "history.jsonl", 120, proc)  # the first iteration is logged:
        # training, its signal handlers set
        children = _children(proc.pid)
        assert len(children) == 1
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 143, err
    assert _gone(children[0])
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["reason"].startswith("SIGTERM"), m
    assert (run / "checkpoint.pt").is_file()
    assert "odenet reproduce: stopped by SIGTERM during table/resnet_seed0" in err

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "start:  table/resnet_seed0 (resuming)" in again.stdout
    assert "resume=true" in (run / "train.out").read_text().split("\n$ ")[-1]
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "finished" and m["epochs"] == 1
    assert sorted(p.name for p in (tmp_path / "runs" / "table").iterdir()) == ["resnet_seed0"]
    assert (tmp_path / "report" / "report.md").is_file()


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (Linux /proc)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids
