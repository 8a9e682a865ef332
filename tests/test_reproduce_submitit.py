"""odenet reproduce through submitit (executor=submitit_local: submitit's processes on this
machine, the code path of executor=slurm but for sbatch): a tiny plan runs to the same
report as executor=local, an interrupted training resumes, and executor settings are
checked in one line.

The children are test_reproduce's fake `odenet`, which writes complete run records."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
from test_reproduce import FAKE

from odenet.reproduce.command import main, reproduce
from odenet.reproduce.plan import load_config
from odenet.reproduce.wall import read_parts

PLAN = textwrap.dedent('''
    experiment: tiny
    plans:
      tiny:
        seeds: [0]
        models: [mlp, odenet]
        evaluate: {model: odenet, tolerances: [1e-1, 1e-3], overrides: [test_size=100]}
        gradients: {overrides: [batch_size=8]}
        sweeps: []
''')


@pytest.fixture
def fake(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    (tmp_path / "fake.py").write_text(FAKE)
    (tmp_path / "plan.yaml").write_text(PLAN)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setattr("odenet.reproduce.jobs.odenet_command",
                        lambda: [sys.executable, str(tmp_path / "fake.py")])

    def run(executor: str, root: str, *over: str) -> tuple[int, list[str]]:
        lines: list[str] = []
        cfg = load_config([f"executor={executor}", f"root={tmp_path / root}",
                           f"report={tmp_path / root / 'report'}", "jobs=2", *over],
                          plan_file=tmp_path / "plan.yaml")
        return reproduce(cfg, "odenet reproduce (test)", log=lines.append), lines

    def calls() -> list[list[str]]:
        path = tmp_path / "calls.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    return run, calls, tmp_path


def test_a_tiny_plan_runs_to_its_report_through_submitit(fake, monkeypatch):
    run, calls, tmp = fake
    monkeypatch.setenv("FAKE_INTERRUPT", "mlp")  # stops as if interrupted: resumed next time
    rc, lines = run("submitit_local", "sub")
    assert rc == 1, lines
    assert "FAILED: table/mlp_seed0 did not finish (exit 1, see " in "\n".join(lines)
    n = len(calls())
    assert n == 4  # two trainings, the evaluation, the ODE-Net's gradient error
    monkeypatch.delenv("FAKE_INTERRUPT")
    rc, lines = run("submitit_local", "sub")
    assert rc == 0, lines
    again = calls()[n:]
    assert [a[0] for a in again] == ["train"] and "resume=true" in again[0]
    assert "start:  table/mlp_seed0 (resuming); output: " in "\n".join(lines)
    assert "done already: table/odenet_seed0" in lines
    assert any(x.startswith("progress after") and "0 running, 0 left" in x for x in lines)
    sub = tmp / "sub"
    out = (sub / "table" / "mlp_seed0" / "train.out").read_text()
    assert out.count("\n$ ") == 2 and "resume=true" in out.split("\n$ ")[-1]
    assert (sub / ".submitit").is_dir()  # submitit's files, beside the runs
    assert [p["ended_by"] for p in read_parts(sub)] == ["ran to the report"] * 2
    md = (sub / "report" / "report.md").read_text()
    assert "| ODE-Net | dopri5 tol=1e-3 adjoint |" in md and "**Incomplete:**" not in md
    # the same plan through the local pool: the same table
    assert run("local", "loc")[0] == 0
    assert (tmp / "loc/report/table.csv").read_text() == (sub / "report/table.csv").read_text()
    n = len(calls())
    assert run("submitit_local", "sub")[0] == 0 and len(calls()) == n  # all done: nothing runs


@pytest.mark.parametrize("argv, needle", [
    (["executor=pbs"], "executor='pbs'; accepted: local, slurm, submitit_local"),
    (["executor=slurm", "slurm.timeout_min=0"], "slurm.timeout_min=0: must be positive"),
    (["slurm.partion=gpu"], "slurm.partion"),
])
def test_bad_executor_settings_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_submitit_missing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit: ImportError
    assert main(["executor=slurm", f"root={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err == ("odenet reproduce: error: executor=slurm needs submitit, which is not "
                   "installed: pip install 'odenet[launchers]', or executor=local\n")
    assert not (tmp_path / "runs").exists()  # nothing written


def test_ctrl_c_reaches_each_job_once_then_once_more(tmp_path):
    """Ctrl-C in a terminal (the whole foreground group, submitit's processes too): each
    running job's training gets SIGTERM once, from reproduce (it checkpoints); a second
    Ctrl-C reaches it as SIGINT (it stops at once); reproduce exits 130, nothing more
    starts and the part is on record."""
    pytest.importorskip("submitit")
    import signal

    from test_reproduce_signals import _ctrl_c_twice, _gone, _signals_of, _start

    args = [f"root={tmp_path / 'runs'}", f"report={tmp_path / 'report'}", "jobs=2",
            "executor=submitit_local"]
    proc = _start(tmp_path, *args, env={"FAKE_NEEDS": "2"})
    runs = [tmp_path / "runs" / "table" / f"{m}_seed0" for m in ("mlp", "resnet")]
    first, err = _ctrl_c_twice(proc, runs, 60)
    assert first == [[signal.SIGTERM]] * 2
    assert proc.returncode == 130, err
    assert _signals_of(runs) == [[signal.SIGTERM, signal.SIGINT]] * 2
    assert all(_gone(int((run / "pid").read_text())) for run in runs)
    assert not (tmp_path / "runs" / "table" / "rknet_seed0").exists()
    [part] = read_parts(tmp_path / "runs")
    assert (part["children_started"], part["ended_by"]) == ("2", "stopped by SIGINT")


def test_slurm_settings_reach_each_jobs_sbatch_script(tmp_path, monkeypatch):
    """executor=slurm: the slurm.* settings as sbatch options (a stand-in srun on PATH
    stands for the cluster: nothing is submitted)."""
    pytest.importorskip("submitit")
    from odenet.reproduce.submitit_executor import SubmititExecutor

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = load_config(["executor=slurm", "slurm.partition=gpu", "slurm.mem_gb=16",
                       "slurm.additional_parameters={account: proj}", "threads=2",
                       f"root={tmp_path / 'runs'}"])
    script = SubmititExecutor(cfg).pool._executor._make_submission_file_text("CMD", "uid")
    for option in ("--partition=gpu", "--time=1440", "--gpus-per-node=1", "--cpus-per-task=2",
                   "--mem=16GB", "--account=proj", f"--output={tmp_path / 'runs/.submitit'}"):
        assert f"#SBATCH {option}" in script, script
    assert not (tmp_path / "runs").exists()  # nothing written before a job is submitted
