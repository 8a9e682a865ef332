"""odenet reproduce's scheduler: N children at once, work on a checkpoint after its
training, the report last, a dead job reported and rerun, the progress line, every seed
of a sweep, and the jobs / threads settings.

The children are a stand-in `odenet` (test_reproduce's fake, which writes complete run
records) behind a wrapper that notes when each child starts and ends, sleeps a little so
that children overlap, and can die once (SIGKILL) as an out-of-memory kill would.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from test_reproduce import FAKE

from odenet.config.errors import ConfigError
from odenet.reproduce.command import main, reproduce
from odenet.reproduce.executor import job_count, usable_cores
from odenet.reproduce.jobs import EVALUATE, GRADIENTS, job_command, plan_jobs, plan_trainings
from odenet.reproduce.local import GpuSlots, child_gpus
from odenet.reproduce.plan import load_config
from odenet.reproduce.scheduling import JobQueue
from odenet.reproduce.status import (
    RunState,
    Show,
    _last_iters,
    duration,
    eta_text,
    run_state,
    time_left,
)
from odenet.run import record

STANDIN = textwrap.dedent('''
    import json, os, runpy, signal, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    kv = dict(a.split("=", 1) for a in args[1:] if "=" in a)
    where = kv.get("hydra.run.dir") or str(Path(kv["checkpoint"]).parent)

    def event(what):
        with open(os.environ["EVENTS"], "a") as f:
            f.write(json.dumps({"what": what, "cmd": args[0], "run": Path(where).name,
                                "args": args, "t": time.time(), "pid": os.getpid(),
                                "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")

    event("start")
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0.8")))  # long enough to overlap
    if (args[0] == "train" and Path(where).name == os.environ.get("FAKE_DIE_ONCE")
            and "resume=true" not in args):
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / "checkpoint.pt").write_bytes(b"ckpt")  # an epoch's checkpoint
        event("end")
        os.kill(os.getpid(), signal.SIGKILL)
    print("some output of", args[0])  # to <run>/<command>.out, not the terminal
    event("end")
    sys.argv = [os.environ["FAKE_SCRIPT"], *args]
    runpy.run_path(os.environ["FAKE_SCRIPT"], run_name="__main__")
''')

PLAN = textwrap.dedent('''
    experiment: tiny
    plans:
      tiny:
        seeds: [0, 1]
        models: [mlp, resnet, rknet, odenet]
        order: [odenet, rknet]
        evaluate: {model: odenet, tolerances: [1e-1, 1e-3], overrides: [test_size=100]}
        gradients: {overrides: [batch_size=8]}
        sweeps:
          - {name: fig3c, figure: fig3c, model: odenet, overrides: [data.train_size=64],
             seeds: all, grid: {solver.rtol: [1e-1, 1e-2]}}
          - {name: memory, figure: memory, model: rknet, overrides: [data.train_size=64],
             grid: {solver.rtol: [1e-1, 1e-4]}}
''')


@pytest.fixture
def standin(tmp_path, monkeypatch):
    (tmp_path / "fake.py").write_text(FAKE)
    (tmp_path / "standin.py").write_text(STANDIN)
    (tmp_path / "plan.yaml").write_text(PLAN)
    monkeypatch.setenv("FAKE_SCRIPT", str(tmp_path / "fake.py"))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("EVENTS", str(tmp_path / "events.jsonl"))
    monkeypatch.setattr("odenet.reproduce.jobs.odenet_command", lambda: [sys.executable, str(tmp_path / "standin.py")])

    def run(*over):
        lines: list[str] = []
        cfg = load_config([f"root={tmp_path / 'runs'}", f"report={tmp_path / 'report'}",
                             *over], plan_file=tmp_path / "plan.yaml")
        return reproduce(cfg, "odenet reproduce (test)", log=lines.append), lines

    def events():
        path = tmp_path / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    return run, events, tmp_path


def _most_at_once(events) -> int:
    most = now = 0
    for e in sorted(events, key=lambda e: e["t"]):
        now += 1 if e["what"] == "start" else -1
        most = max(most, now)
    return most


@pytest.mark.parametrize("jobs", [2, 3])
def test_n_children_at_once_work_after_its_training_report_last(standin, jobs):
    run, events, tmp = standin
    rc, lines = run(f"jobs={jobs}")
    assert rc == 0, lines
    ev = events()
    trains = [e for e in ev if e["cmd"] == "train"]
    assert len(trains) == 2 * (8 + 4 + 2)  # a start and an end each
    assert _most_at_once(ev) == jobs  # never more, and really that many
    # the longest rows first (the plan's order), then the others, then the sweeps
    started = [x.split()[1].split("/")[1].rstrip(";") for x in lines
               if x.startswith("start:  ") and len(x.split()[1].split("/")) == 2]
    assert len(started) == 14
    assert started[:4] == ["odenet_seed0", "odenet_seed1", "rknet_seed0", "rknet_seed1"]
    assert started.index("mlp_seed1") < min(started.index(n) for n in started if "rtol" in n)
    # work on a checkpoint starts after its training has ended
    end = {e["run"]: e["t"] for e in trains if e["what"] == "end"}
    post = [e for e in ev if e["cmd"] != "train" and e["what"] == "start"]
    assert sorted((e["cmd"], e["run"]) for e in post) == [
        ("evaluate", "odenet_seed0"), ("gradients", "odenet_seed0"), ("gradients", "odenet_seed1"),
        ("gradients", "rknet_seed0"), ("gradients", "rknet_seed1")]
    assert all(e["t"] > end[e["run"]] for e in post)
    # ... and before trainings that come later in the plan: the report need not wait
    assert min(e["t"] for e in post) < max(end.values())
    # the report comes last
    md = tmp / "report" / "report.md"
    assert md.stat().st_mtime > max(e["t"] for e in ev)
    assert f"Wall time of this invocation: all steps ({jobs} jobs at once) " in md.read_text()
    # every child at threads=1, its output in its run directory
    assert all("threads=1" in e["args"] for e in ev)
    out = (tmp / "runs" / "table" / "odenet_seed0" / "train.out").read_text()
    assert "$ " in out and "some output of train" in out
    assert "some output of gradients" in (tmp / "runs/table/odenet_seed0/gradients.out").read_text()
    assert not any("some output" in line for line in lines)
    # one line per child started and done, one progress line at the start and the end
    assert sum(x.startswith("start:  ") for x in lines) == 14 + 5
    assert sum(x.startswith("done:   ") for x in lines) == 14 + 5
    progress = [x for x in lines if x.startswith("progress after")]
    assert f"0 done, {jobs} running, {19 - jobs} left" in progress[0]
    assert "19 done, 0 running, 0 left; time left ~0s" in progress[-1]


@pytest.fixture
def gpus(monkeypatch):
    """A machine whose torch sees `n` CUDA GPUs (torch.cuda's queries patched)."""
    import torch

    def make(n: int, visible: str | None = None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return make


def test_on_gpus_one_job_per_gpu_or_the_number_asked(tmp_path, monkeypatch, gpus):
    """Trainings on CUDA (device=auto on a GPU machine): one child per GPU, or jobs_per_gpu
    each, not one per CPU core; the trainings' device= decides (cpu, cuda:N)."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    monkeypatch.setattr("odenet.reproduce.executor.usable_cores", lambda: 16)

    def jobs(*over):
        cfg = load_config(list(over), plan_file=plan)
        gpu_names = child_gpus(cfg)
        return job_count(cfg, gpu_names), gpu_names

    gpus(4)
    assert jobs() == (4, ["0", "1", "2", "3"])
    assert jobs("jobs_per_gpu=2") == (8, ["0", "1", "2", "3"])
    assert jobs("jobs=3")[0] == 3
    assert jobs("train_args=[device=cpu]") == (16, [])
    assert jobs("train_args=[device=cuda:2]") == (1, [None])  # the child picks cuda:2
    gpus(2, visible="5,7")  # this process sees two: the children get their names
    assert jobs() == (2, ["5", "7"])
    gpus(1)
    assert jobs() == (1, [None])
    gpus(0)
    assert jobs() == (16, [])
    with pytest.raises(ConfigError, match="jobs_per_gpu=0: must be a positive integer"):
        load_config(["jobs_per_gpu=0"], plan_file=plan)


def test_each_child_gets_the_least_busy_gpu(standin, gpus):
    """Two GPUs: two children at once, never two on one GPU (CUDA_VISIBLE_DEVICES)."""
    run, events, _ = standin
    gpus(2)
    rc, lines = run("sweeps=false")
    assert rc == 0, lines
    assert "2 job(s) at once (1 per GPU: 2 GPU(s); each child on the GPU running the " \
           "fewest, by CUDA_VISIBLE_DEVICES)" in lines[1]
    ev = sorted(events(), key=lambda e: e["t"])
    assert _most_at_once(ev) == 2 and {e["gpu"] for e in ev} == {"0", "1"}
    running: dict[int, str] = {}
    for e in ev:
        if e["what"] == "start":
            assert e["gpu"] not in running.values()
            running[e["pid"]] = e["gpu"]
        else:
            running.pop(e["pid"])
    slots = GpuSlots(["0", "1"])
    assert [slots.take(t) for t in "abc"] == [{"CUDA_VISIBLE_DEVICES": g} for g in "010"]
    slots.give_back("b")
    assert slots.take("d") == {"CUDA_VISIBLE_DEVICES": "1"}
    assert GpuSlots([None]).take("a") == {} and GpuSlots([]).take("a") == {}


def test_a_dead_job_is_reported_its_work_skipped_and_rerun(standin, monkeypatch):
    run, events, tmp = standin
    monkeypatch.setenv("FAKE_DIE_ONCE", "rknet_seed0")
    monkeypatch.setenv("FAKE_SLEEP", "0")
    rc, lines = run("sweeps=false", "seeds=[0]")
    assert rc == 1
    died = next(x for x in lines if x.startswith("FAILED: table/rknet_seed0"))
    assert "did not finish (killed by SIGKILL" in died
    assert "FAILED: gradient error skipped: rknet_seed0 did not finish" in lines
    md = (tmp / "report" / "report.md").read_text()
    assert "**Incomplete:**" in md and "table/rknet_seed0 did not finish" in md
    n = len(events())
    monkeypatch.delenv("FAKE_DIE_ONCE")
    rc, lines = run("sweeps=false", "seeds=[0]")
    assert rc == 0, lines
    again = [e for e in events()[n:] if e["what"] == "start"]
    assert [(e["cmd"], e["run"]) for e in again] == [("train", "rknet_seed0"),
                                                     ("gradients", "rknet_seed0")]
    assert "resume=true" in again[0]["args"]
    assert "done already: table/odenet_seed0" in lines
    assert "done already: gradients table/odenet_seed0" in lines


def test_no_child_outlives_a_failing_reproduce(standin, monkeypatch):
    run, events, tmp = standin
    monkeypatch.setenv("FAKE_SLEEP", "30")

    def broken(self):
        if len(events()) >= 2:  # both children started
            raise RuntimeError("a bug in reproduce")
        return "progress"

    monkeypatch.setattr(JobQueue, "progress", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run("jobs=2", "sweeps=false")
    pids = [e["pid"] for e in events()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sweep_seeds(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)

    def names(*over, text=PLAN):
        plan.write_text(text)
        cfg = load_config(list(over), plan_file=plan)
        return {g: [j.name for j in plan_trainings(cfg, Path("r")) if j.group == g]
                for g in ("fig3c", "memory")}

    got = names()
    assert got["fig3c"] == ["odenet_rtol0.1_seed0", "odenet_rtol0.1_seed1",
                            "odenet_rtol1e-2_seed0", "odenet_rtol1e-2_seed1"]  # seeds: all
    assert got["memory"] == ["rknet_rtol0.1_seed0", "rknet_rtol1e-4_seed0"]  # the first
    got = names("seeds=[5,6,7]")
    assert [n for n in got["fig3c"] if "0.1" in n] == [f"odenet_rtol0.1_seed{s}" for s in (5, 6, 7)]
    assert got["memory"][0] == "rknet_rtol0.1_seed5"
    memory = "model: rknet, overrides: [data.train_size=64],"
    got = names(text=PLAN.replace(memory, memory + " seeds: [1, 2],"))
    assert got["memory"] == ["rknet_rtol0.1_seed1", "rknet_rtol0.1_seed2",
                             "rknet_rtol1e-4_seed1", "rknet_rtol1e-4_seed2"]
    plan.write_text(PLAN)
    job = next(j for j in plan_trainings(load_config([], plan_file=plan), Path("r"))
               if j.name == "odenet_rtol1e-2_seed1")
    assert "seed=1" in job.overrides and job.dir == Path("r/fig3c/odenet_rtol1e-2_seed1")
    for bad in ("some", "[a]", "[]", "true"):
        plan.write_text(PLAN.replace(memory, memory + f" seeds: {bad},"))
        with pytest.raises(ConfigError, match=r"sweep 'memory': seeds=.*; accepted: null "
                                                r"\(the first seed\), all"):
            load_config([], plan_file=plan)


def test_threads_jobs_and_their_defaults(tmp_path, monkeypatch):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)

    def train_threads(*over):
        jobs = plan_trainings(load_config(list(over), plan_file=plan), Path("r"))
        return {tuple(a for a in j.overrides if a.startswith("threads=")) for j in jobs}

    assert train_threads() == {("threads=1",)}
    assert train_threads("threads=2") == {("threads=2",)}
    assert train_threads("train_args=[threads=4]") == {("threads=4",)}  # theirs, once
    assert train_threads("threads=null") == {()}
    cfg = load_config(["threads=3"], plan_file=plan)
    ev = next(t for t in plan_jobs(cfg, plan_trainings(cfg, Path("r"))) if t.kind == EVALUATE)
    assert job_command(ev, cfg)[-1] == "threads=3"
    assert load_config([], plan_file=plan).jobs is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3


@pytest.mark.parametrize("argv, needle", [
    (["jobs=0"], "jobs=0: must be a positive integer or null"),
    (["jobs=-2"], "jobs=-2"),
    (["threads=-1"], "threads=-1: must be a positive integer or null"),
    (["jobs=two"], "jobs"),
    (["threads=1.5"], "threads"),
])
def test_bad_schedule_settings_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def _records(run_dir: Path, status: str, steps: list[int], seconds: list[float], **m):
    run_dir.mkdir(parents=True)
    m = {"model": "odenet", "status": status, "train_size": 1000, "batch_size": 100,
         "epochs_planned": 3, "sec_per_iter": 9.0, **m}
    (run_dir / "metrics.json").write_text(json.dumps(record.fake(record.Metrics, **m)))
    with open(run_dir / "history.jsonl", "w") as f:
        for step, s in zip(steps, seconds):
            f.write(json.dumps(record.fake(record.IterRecord, step=step, seconds=s)) + "\n")
        f.write(json.dumps(record.fake(record.EpochRecord, epoch=0)) + "\n")
        f.write('{"kind": "iter", "ste')  # a line being written


def test_run_state_reads_the_records(tmp_path):
    _records(tmp_path / "a", "running", list(range(1, 13)), [2.0] * 11 + [30.0])
    assert run_state(tmp_path / "a") == RunState(total=30, done=12, sec_per_iter=2.0)
    _records(tmp_path / "b", "finished", [30], [1.5], max_iters_per_epoch=4)
    assert run_state(tmp_path / "b") == RunState(total=12, done=12, sec_per_iter=1.5)
    # after an epoch, its wall time per iteration: the per-epoch evaluations included
    _records(tmp_path / "e", "running", list(range(1, 15)), [2.0] * 14, epochs=1,
             wall_seconds=25.0)
    assert run_state(tmp_path / "e") == RunState(total=30, done=14, sec_per_iter=2.5)
    _records(tmp_path / "c", "running", [], [])  # started, nothing logged yet
    assert run_state(tmp_path / "c") == RunState(total=30, done=0, sec_per_iter=9.0)
    assert run_state(tmp_path / "nothing") is None
    # a long history is read from its end
    _records(tmp_path / "d", "running", list(range(1, 3001)), [1.0] * 2991 + [4.0] * 9)
    assert _last_iters(tmp_path / "d" / "history.jsonl")[-1]["step"] == 3000
    assert run_state(tmp_path / "d").sec_per_iter == 1.0  # median of the last 20


def test_time_left_arithmetic():
    S = RunState
    runs = [("odenet", False, S(100, 40, 2.0)),  # running: 60 x 2 = 120 s left
            ("odenet", False, None),             # not started: a whole odenet, 100 x 2
            ("odenet", False, None),             # another: 200 s
            ("mlp", True, S(50, 50, 0.2)),       # done: only its row's cost, 10 s
            ("mlp", False, S(None, 0, None)),    # started, not measured: 10 s
            ("resnet", False, None)]             # nothing of its row measured
    assert time_left(runs, jobs=1) == (530.0, 1)
    assert time_left(runs, jobs=2) == (265.0, 1)
    assert time_left(runs, jobs=8) == (200.0, 1)  # never less than the longest
    assert time_left([("resnet", False, None)], 2) == (None, 1)
    assert time_left([("mlp", True, S(50, 50, 0.2))], 2) == (0.0, 0)
    assert eta_text(265.0, 1) == "time left ~4m + 1 training(s) not measured yet (trainings)"
    assert eta_text(None, 3) == "time left: not measured yet (3 training(s))"
    assert [duration(s) for s in (0, 59.6, 61, 3600 + 5 * 60)] == ["0s", "1m", "1m", "1h05m"]


def test_the_progress_line_on_a_terminal_redraws(capsys):
    show = Show(tty=True)
    show.progress("progress after 0s: 0 done, 2 running, 3 left")
    show.line("start:  table/mlp_seed0")
    show.progress("progress after 5s: 1 done, 2 running, 2 left")
    show.close()
    out = capsys.readouterr().out
    assert "start:  table/mlp_seed0\n" in out and "1 done, 2 running, 2 left" in out
    assert "\r" in out  # redrawn in place
    lines: list[str] = []
    show = Show(lines.append, every=3600)
    for k in range(3):
        show.progress(f"p{k}")
    show.progress("last", final=True)
    assert lines == ["p0", "last"]  # without a terminal: one line an interval, and the last


def test_order_passes_over_names_of_no_row(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    cfg = load_config(["plans.tiny.models=[mlp,resnet]", "plans.tiny.order=[nope,resnet]",
                         "sweeps=false", "seeds=[0]"], plan_file=plan)
    assert [j.name for j in plan_trainings(cfg, Path("r"))] == ["resnet_seed0", "mlp_seed0"]


def test_table1_plan():
    cfg = load_config(["experiment=table1"])
    trainings = plan_trainings(cfg, Path("r"))
    table = [j for j in trainings if j.group == "table"]
    rows = ("odenet", "rknet", "resnet", "oneblock", "noblock", "mlp")  # the longest first
    assert [j.name for j in table] == [f"{r}_seed{s}" for r in rows for s in (0, 1, 2)]
    noblock = next(j for j in table if j.name == "noblock_seed1")
    assert noblock.overrides == ["experiment=table1", "model=resnet", "seed=1",
                                 "model.num_blocks=0", "threads=1"]
    assert "model.num_blocks=1" in next(j for j in table if j.row == "oneblock").overrides
    assert len(trainings) == len(table)  # no sweeps: the quick plan draws Fig. 3c and memory
    jobs = plan_jobs(cfg, trainings)
    assert [j.training.name for j in jobs if j.kind == EVALUATE] == ["odenet_seed0"]
    assert sorted(j.training.name for j in jobs if j.kind == GRADIENTS) == [
        f"{m}_seed{s}" for m in ("odenet", "rknet") for s in (0, 1, 2)]
    quick = load_config([]).plans["quick"]
    plan = cfg.plans["table1"]
    assert (plan.evaluate, plan.gradients, plan.sweeps) == (quick.evaluate, quick.gradients, [])


def test_dry_run_prints_the_plan(tmp_path):
    (tmp_path / "plan.yaml").write_text(PLAN)
    lines: list[str] = []
    cfg = load_config([f"root={tmp_path / 'runs'}", "jobs=3", "threads=2", "dry_run=true"],
                        plan_file=tmp_path / "plan.yaml")
    assert reproduce(cfg, "test", log=lines.append) == 0
    assert not (tmp_path / "runs").exists()
    text = "\n".join(lines)
    assert "3 job(s) at once (jobs=3), threads=2 each" in text
    assert "Table 1 rows odenet, rknet (the longest first), then the other rows" in text
    assert lines[3].startswith("[1/19] table/odenet_seed0: would run: ")
    assert "threads=2" in lines[3]
    assert any(x.startswith("[15/19] evaluate table/odenet_seed0 (once table/odenet_seed0 "
                            "is trained): would run: ") for x in lines)
