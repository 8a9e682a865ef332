"""A run directory has one owner and one history: refusals are one line, exit
status 2, and leave every file as it was."""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from odenet.cli.app import compose
from odenet.config.schema import ConfigError
from odenet.run import directory as rundir
from odenet.run import files
from odenet.training.progress import Heartbeat
from odenet.training.trainer import run

REPO = Path(__file__).resolve().parents[1]

TINY = ("experiment=smoke", "data.train_size=128", "data.test_size=64",
        "train.train_eval_size=64", "train.tensorboard=false")


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file below d (the lock file's owner pid aside) with its bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK}


def one_line_error(r, needle: str) -> None:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("odenet train: error: "), lines
    assert needle in lines[0], lines[0]


@pytest.fixture
def finished_run(cli, tmp_path, mnist_root):
    out = tmp_path / "run"
    args = [*TINY, "model=mlp", f"data.root={mnist_root}", f"hydra.run.dir={out}"]
    r = cli("train", *args)
    assert r.returncode == 0, r.stderr
    (out / "evaluation.json").write_text("{}")  # as `odenet evaluate` would leave it
    return out, args


def test_a_finished_run_is_not_overwritten_by_a_plain_rerun(cli, finished_run):
    out, args = finished_run
    before = snapshot(out)
    one_line_error(cli("train", *args), "already holds a run: resume=true continues it, "
                                        "overwrite=true deletes it")
    assert snapshot(out) == before  # .hydra/overrides.yaml included


def test_resuming_a_finished_run_changes_nothing(cli, finished_run):
    out, args = finished_run
    before = snapshot(out)
    r = cli("train", *args, "resume=true")
    assert r.returncode == 0 and "nothing to do" in r.stdout and r.stderr == ""
    assert snapshot(out) == before


def test_a_refused_resume_leaves_the_launch_record(cli, finished_run):
    out, args = finished_run
    before = snapshot(out)
    one_line_error(cli("train", *args, "resume=true", "train.max_iters_per_epoch=2"),
                   "other settings for train.max_iters_per_epoch")
    assert snapshot(out) == before


def test_overwrite_deletes_the_old_run_first(cli, finished_run):
    out, args = finished_run
    old = json.loads((out / "metrics.json").read_text())
    r = cli("train", *args, "overwrite=true", "seed=1")
    assert r.returncode == 0, r.stderr
    assert not (out / "evaluation.json").exists()  # the old run's evaluation is gone
    new = json.loads((out / "metrics.json").read_text())
    assert (old["seed"], new["seed"], new["status"]) == (0, 1, "finished")
    assert "overwrite=true: deleted metrics.json, history.jsonl, checkpoint.pt, " \
           "evaluation.json" in (out / "train.log").read_text()


def test_a_second_training_into_a_run_directory_is_refused(cli, cli_popen, tmp_path,
                                                           mnist_root):
    out = tmp_path / "run"
    args = [*TINY, "model=resnet", "optim.epochs=50", f"data.root={mnist_root}",
            f"hydra.run.dir={out}"]
    first = cli_popen("train", *args)
    deadline = time.time() + 120
    while not (out / "history.jsonl").is_file() or not (out / "history.jsonl").read_text():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.2)
    overrides = (out / ".hydra" / "overrides.yaml").read_bytes()
    one_line_error(cli("train", *args, "overwrite=true"), "is in use by another training")
    assert (out / ".hydra" / "overrides.yaml").read_bytes() == overrides
    assert rundir.is_claimed(out)
    first.kill()
    first.wait()
    assert not rundir.is_claimed(out)  # the OS dropped the lock with the process
    assert json.loads((out / "metrics.json").read_text())["status"] == "running"  # killed


def test_the_interruption_hint_is_a_complete_command(cli, tmp_path, mnist_root):
    out = tmp_path / "run"
    r = cli("train", *TINY, "model=mlp", "optim.epochs=3", f"data.root={mnist_root}",
            f"hydra.run.dir={out}", "train.stop_after_iters=5")
    assert r.returncode == 3, r.stderr
    hint = [ln for ln in (r.stdout + r.stderr).splitlines() if "continue with: " in ln]
    command = shlex.split(hint[0].split("continue with: ", 1)[1])
    assert command[:2] == ["odenet", "train"] and command[-1] == "resume=true"
    assert f"hydra.run.dir={out}" in command and "optim.epochs=3" in command
    # without the setting that stopped this session, or it would stop again
    assert not [a for a in command if "stop_after_iters" in a]
    r2 = cli(*command[1:])  # followed as printed
    assert r2.returncode == 0, r2.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_the_interruption_hint_pastes_into_a_shell(cli, tmp_path, mnist_root):
    """A run directory with a space, a comma, parentheses and non-ASCII letters; the
    printed command is run by a shell, as a user pastes it."""
    out = tmp_path / "x y (2), é"
    r = cli("train", *TINY, "model=mlp", "optim.epochs=2", f"data.root={mnist_root}",
            f"hydra.run.dir='{out}'", "train.stop_after_iters=3")
    assert r.returncode == 3, r.stderr
    hint = [ln for ln in (r.stdout + r.stderr).splitlines() if "continue with: " in ln]
    command = hint[0].split("continue with: ", 1)[1]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    r2 = subprocess.run(["/bin/sh", "-c", command], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PATH": path})
    assert r2.returncode == 0, r2.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("value", ["/a/x y", " lead and trail ", "a,b", "x(1) [2] {3}",
                                   "it's", "a=b", "é", "#!&~\"'", "back\\", "back\\'q",
                                   "plain/path-1.0_x"])
def test_hydra_values_read_back_through_shell_and_parser(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    line = rundir.command_line(["odenet", f"hydra.run.dir={rundir.hydra_value(value)}"])
    arg = shlex.split(line)[1]
    assert OverridesParser.create().parse_overrides([arg])[0].value() == value


@pytest.mark.parametrize("damage,needle", [
    ("delete", "history.jsonl is missing"),
    ("cut", "history.jsonl has 10 of the"),
])
def test_resume_refuses_a_damaged_history(compose_cfg, tmp_path, damage, needle):
    cfg = compose_cfg(*TINY, "model=mlp", "optim.epochs=2", "train.stop_after_iters=6")
    assert run(cfg, tmp_path)["status"] == "interrupted"
    hist = tmp_path / "history.jsonl"
    if damage == "delete":
        hist.unlink()
    else:
        hist.write_bytes(hist.read_bytes()[:10])
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=needle):
        run(compose_cfg(*TINY, "model=mlp", "optim.epochs=2", "resume=true"), tmp_path)
    assert snapshot(tmp_path) == before  # never padded with NUL bytes


def test_resume_refuses_a_torch_file_that_is_not_a_checkpoint(compose_cfg, tmp_path):
    run(compose_cfg(*TINY, "model=mlp", "train.stop_after_iters=2"), tmp_path)
    torch.save({"model": {}, "config": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="is not a training checkpoint"):
        run(compose_cfg(*TINY, "model=mlp", "resume=true"), tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        run(compose_cfg(*TINY, "model=mlp", "resume=true"), tmp_path)


def test_orphaned_temporary_files_are_removed_at_the_next_start(compose_cfg, tmp_path):
    (tmp_path / ".metrics.json.abc123.tmp").write_text("{half")
    run(compose_cfg(*TINY, "model=mlp"), tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_fails_the_run_and_metrics_match_the_checkpoint(compose_cfg, tmp_path,
                                                                    monkeypatch):
    real, saves = files.write_atomic, []

    def write_atomic(path, data):
        if Path(path).name == "checkpoint.pt":
            saves.append(path)
            if len(saves) == 2:  # the second epoch's checkpoint does not fit
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr("odenet.training.checkpoint_file.write_atomic", write_atomic)
    m = run(compose_cfg(*TINY, "model=mlp", "optim.epochs=3"), tmp_path)
    assert m["status"] == "failed" and "No space left on device" in m["reason"]
    assert "\n" not in m["reason"]
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert on_disk["epochs"] == ck["epoch"] == 1


@pytest.mark.parametrize("setting", ["optim.lr=inf", "optim.lr=1e400", "solver.rtol=inf",
                                     "solver.atol=nan", "optim.milestones=[1,inf]"])
def test_non_finite_settings_are_one_line_errors(setting):
    with pytest.raises(ConfigError, match="not finite|finite number") as info:
        compose([setting])
    assert setting.split("=")[0] in str(info.value) and "\n" not in str(info.value)


def test_bad_run_directories_are_one_line_errors(cli, tmp_path, mnist_root):
    (tmp_path / "file").write_text("")
    one_line_error(cli("train", *TINY, "model=mlp", f"data.root={mnist_root}",
                       f"hydra.run.dir={tmp_path / 'file' / 'run'}"), "is a file, not a directory")
    one_line_error(cli("train", *TINY, "model=mlp", f"data.root={mnist_root}", "resume=true",
                       "overwrite=true"), "contradict")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_heartbeat_logs_progress_without_a_terminal(caplog):
    beat = Heartbeat(enabled=True, every=0.0)
    with caplog.at_level("INFO", logger="odenet.train"):
        beat.tick(epoch=0, epochs=2, batch=10, ipe=100, loss=0.5, nfe=(26, 20), seconds=0.5)
    msg = caplog.records[-1].getMessage()
    assert msg == "epoch 1/2, iteration 10/100, loss 0.5000, NFE 26/20, 0.500 s/iter, " \
                  "ETA 0:01:35"  # (100 + 90) iterations left x 0.5 s
    quiet = Heartbeat(enabled=True, every=3600.0)
    n = len(caplog.records)
    quiet.tick(0, 1, 1, 10, 0.1, (None, None), 0.1)
    assert len(caplog.records) == n


def test_a_terminal_without_a_width_gets_the_heartbeat(monkeypatch):
    """Under `script -qc` the terminal reports 0 columns, where tqdm draws nothing: the
    heartbeat lines take over (the bars do not count as shown)."""
    import io

    from odenet.training.progress import Bars

    class Terminal(io.StringIO):
        def isatty(self):
            return True

        def fileno(self):
            return 2

    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert not Bars("auto").shown  # the trainer's Heartbeat(enabled=not bars.shown) logs
    assert Bars("always").shown and Bars("always").size == (80, 20)  # drawn at a fixed size
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((100, 30)))
    assert Bars("auto").shown and Bars("always").size is None


def test_bars_under_script_fall_back_to_the_heartbeat():
    import shutil

    if shutil.which("script") is None:
        pytest.skip("no script(1)")
    code = "from odenet.training.progress import Bars; print('shown', Bars('auto').shown)"
    r = subprocess.run(["script", "-qc", shlex.join([sys.executable, "-c", code]), "/dev/null"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "shown False" in r.stdout, (r.stdout, r.stderr)


def test_reports_show_a_run_nobody_owns_any_more_as_killed(compose_cfg, tmp_path):
    from odenet.report.runs import load_runs

    run(compose_cfg(*TINY, "model=mlp"), tmp_path / "a")
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({**m, "status": "running"}))
    (r,), _ = load_runs([tmp_path])
    assert r.status == "killed"  # says running, but no process holds its lock
    rundir.claim(tmp_path / "a")
    try:
        assert r.status == "running"
    finally:
        rundir.release(tmp_path / "a")


def test_a_training_whose_owning_parent_died_stops(monkeypatch):
    import os
    import signal

    from odenet.training.stopping import Stop, StopSignals

    monkeypatch.delenv(rundir.PARENT_PID, raising=False)
    assert not rundir.parent_gone()
    monkeypatch.setenv(rundir.PARENT_PID, str(os.getppid()))
    assert not rundir.parent_gone()
    StopSignals().check("received")  # the parent lives: goes on
    monkeypatch.setenv(rundir.PARENT_PID, "999999999")  # re-parented: the owner is gone
    with pytest.raises(Stop) as info:
        StopSignals().check("received")
    assert info.value.signum == signal.SIGTERM


def test_reproduce_reruns_a_run_without_checkpoint_afresh(tmp_path):
    from odenet.reproduce.jobs import Training, train_command

    job = Training("mlp_seed0", "table", ["model=mlp"], tmp_path)
    assert train_command(job)[-1].startswith("hydra.run.dir=")
    (tmp_path / "metrics.json").write_text("{}")  # failed before its first checkpoint
    assert train_command(job)[-1] == "overwrite=true"
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert train_command(job)[-1] == "resume=true"


def test_sweep_jobs_label_their_log_lines(cli, tmp_path, mnist_root):
    r = cli("train", "-m", *TINY, "model=mlp", "seed=0,1", f"data.root={mnist_root}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 0, r.stderr
    log0 = (tmp_path / "sweep" / "0" / "train.log").read_text()
    lines = [ln for ln in log0.splitlines() if "odenet.train]" in ln]
    assert lines and all("] - [job 0: " in ln and ",seed=0," in ln for ln in lines)
    assert "[job 1:" not in log0 and ",seed=1," in (r.stdout + r.stderr)


def _shell(command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` run by /bin/sh as a user pastes it (odenet on the PATH)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(["/bin/sh", "-c", command], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PATH": path})


def test_an_interrupted_sweep_prints_one_command_that_resumes_all_of_it(cli, tmp_path,
                                                                       mnist_root):
    """Job 0 (one epoch) finishes, job 1 stops after 6 of its 8 iterations; the printed
    command continues the sweep in its own directory."""
    sweep = tmp_path / "sweep"
    r = cli("train", "-m", *TINY, "model=mlp", "optim.epochs=1,2", "train.stop_after_iters=6",
            f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 3, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("odenet train: sweep interrupted; continue it (finished jobs are "
                           "skipped) with: odenet train -m "), last
    finished = (sweep / "0" / "metrics.json").read_bytes()
    assert "stop_after_iters" not in last  # it would stop job 1 again
    r2 = _shell(last.split(" with: ", 1)[1])
    assert r2.returncode == 0, r2.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no new sweep
    assert (sweep / "0" / "metrics.json").read_bytes() == finished  # skipped
    m1 = json.loads((sweep / "1" / "metrics.json").read_text())
    assert (m1["status"], m1["epochs"]) == ("finished", 2)


@pytest.mark.parametrize("when", ["at start", "as job 0 starts"])
def test_ctrl_c_early_in_a_sweep_stops_it_in_one_line(tmp_path, mnist_root, when):
    """A SIGINT while torch or Hydra load, or while job 0 sets up: one line, no
    KeyboardInterrupt traceback, no job 1."""
    import signal

    sweep = tmp_path / "sweep"
    # Ctrl-C's default even where this test was started with SIGINT ignored (`make test &`)
    p = subprocess.Popen([sys.executable, "-m", "odenet.cli", "train", "-m", *TINY,
                          "model=mlp", "seed=0,1,2", f"data.root={mnist_root}",
                          f"hydra.sweep.dir={sweep}"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={
                             k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while when != "at start" and not (sweep / "0" / "train.log").exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.05)
    time.sleep(1.0 if when == "at start" else 0.3)  # at start: past the interpreter's own
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert p.returncode == 130, stderr
    assert len(lines) == 1 and lines[0].startswith("odenet train: ") and \
        "interrupted" in lines[0], stderr
    assert not (sweep / "1").exists()  # no job started after the signal


def test_a_full_disk_under_hydras_record_is_one_line(cli, tmp_path, mnist_root):
    """Hydra's own write of .hydra/config.yaml failing (here into /dev/full: "No space
    left on device") is one line, no OSError traceback."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").symlink_to("/dev/full")
    r = cli("train", *TINY, "model=mlp", f"data.root={mnist_root}", f"hydra.run.dir={out}")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "odenet train: error: cannot write Hydra's record of the run (.hydra/): No space "
        "left on device"], r.stderr
    assert not (out / "metrics.json").exists()


def test_a_missing_cuda_is_refused_before_anything_is_written(cli, tmp_path, mnist_root):
    """device=cuda on a machine without CUDA leaves nothing behind (no .hydra/, train.log
    or .lock)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    one_line_error(cli("train", *TINY, "model=mlp", "device=cuda", f"data.root={mnist_root}",
                       f"hydra.run.dir={out}"), "device=cuda but CUDA is not available")
    assert not out.exists()


def test_a_cuda_index_past_the_devices_is_refused(monkeypatch):
    """device=cuda:N with N past the machine's GPUs failed deep in CUDA's own error."""
    from odenet.training.runtime import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"device=cuda:2 but this machine has 2 CUDA "
                                          r"device\(s\): cuda:0 to cuda:1"):
        resolve_device("cuda:2")
