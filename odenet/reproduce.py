"""`odenet reproduce experiment=quick|paper`: Table 1 and Figure 3 from one command.

The plan (which models, seeds, tolerances, sweeps) lives in ``configs/reproduce.yaml``.
Steps, each skipped when already done, so an interrupted reproduction continues:

1. Table 1 runs: ``odenet train experiment=E model=M seed=S hydra.run.dir=ROOT/table/M_seedS``
   (a separate process each, the same code path as a user's ``odenet train``), then the
   plan's variants (a model trained another way, e.g. ODE-Net with checkpointed
   gradients: ``ROOT/table/NAME_seedS``). A run whose metrics.json says ``finished`` is
   skipped; one with a checkpoint is resumed (``resume=true``).
2. ``odenet evaluate`` on the ODE-Net checkpoint (Figure 3 a, b), unless its
   evaluation.json already covers the plan's tolerances; ``odenet gradients`` on every
   Table 1 run with an ODE block at its own tolerance (Table 1's gradient error), unless
   its gradients.json already measured it.
3. Short tolerance sweeps (Figure 3 c per solver: NFE-F vs NFE-B; memory vs NFE), as
   more runs.
4. ``table`` and ``figures`` into ``outputs/report/<stamp>/`` and a ``report.md`` that
   embeds them.

Ctrl-C or SIGTERM: the running child gets the signal (once) and checkpoints, reproduce
waits for it, says how to continue and exits 130 / 143; no child outlives it.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from odenet import record, rundir
from odenet.errors import ConfigError
from odenet.files import write_atomic
from odenet.registry import MODELS, models_of
from odenet.report.claims import measured_claims, paper_family_verdict  # noqa: F401 (its API)
from odenet.report.runs import (
    EVALUATION,
    METRICS,
    ReportError,
    adjoint_model,
    fmt_tol,
)

PLAN_FILE = "reproduce.yaml"


# ---------------------------------------------------------------- configuration
@dataclass
class EvalPlan:
    model: str = field(default_factory=adjoint_model)
    tolerances: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4, 1e-5])
    overrides: list[str] = field(default_factory=list)


@dataclass
class SweepPlan:
    name: str = "sweep"
    figure: str = "fig3c"
    model: str = field(default_factory=adjoint_model)
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class VariantPlan:
    """A Table 1 row of a model trained another way (e.g. other gradients)."""

    name: str = "variant"  # its run directories: table/<name>_seed<S>
    model: str = field(default_factory=adjoint_model)
    overrides: list[str] = field(default_factory=list)


@dataclass
class GradientsPlan:
    overrides: list[str] = field(default_factory=list)  # of `odenet gradients`


@dataclass
class Plan:
    seeds: list[int] = field(default_factory=lambda: [0])
    models: list[str] = field(default_factory=lambda: models_of(record.CLASSIFY))
    train_overrides: list[str] = field(default_factory=list)
    variants: list[VariantPlan] = field(default_factory=list)
    evaluate: EvalPlan = field(default_factory=EvalPlan)
    gradients: GradientsPlan | None = None  # None: no gradient-error column
    sweeps: list[SweepPlan] = field(default_factory=list)


@dataclass
class ReproduceConfig:
    experiment: str = "quick"
    seeds: list[int] | None = None
    root: str | None = None
    report: str | None = None
    dry_run: bool = False
    sweeps: bool = True
    train_args: list[str] = field(default_factory=list)
    plans: dict[str, Plan] = field(default_factory=dict)


def load_config(argv: list[str], plan_file: str | os.PathLike | None = None) -> ReproduceConfig:
    """configs/reproduce.yaml merged with ``key=value`` overrides, validated."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for a in argv:
        if "=" not in a or a.startswith("-"):
            raise ConfigError(f"bad argument {a!r}: expected key=value overrides such as "
                              "experiment=quick, seeds=[0,1], dry_run=true")
    if plan_file is None:
        text = (resources.files("odenet.configs") / PLAN_FILE).read_text(encoding="utf-8")
        base = OmegaConf.create(text)
    else:
        base = OmegaConf.load(plan_file)
    try:
        schema = OmegaConf.structured(ReproduceConfig)
        cfg = OmegaConf.merge(schema, base, OmegaConf.from_dotlist(argv))
        out: ReproduceConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"bad reproduce setting{f' {key}' if key else ''}: {msg}") from None
    if out.experiment not in out.plans:
        raise ConfigError(f"experiment={out.experiment!r} has no plan; accepted: "
                          f"{', '.join(out.plans)} (configs/{PLAN_FILE})")
    seeds = out.seeds if out.seeds is not None else out.plans[out.experiment].seeds
    if not seeds:
        raise ConfigError("seeds=[] trains nothing; give at least one seed, e.g. seeds=[0]")
    plan = out.plans[out.experiment]
    for sw in plan.sweeps:
        if sw.figure not in ("fig3c", "memory"):
            raise ConfigError(f"sweep {sw.name!r}: figure={sw.figure!r}; accepted: fig3c, memory")
    names = list(plan.models) + [v.name for v in plan.variants]
    for model in list(plan.models) + [v.model for v in plan.variants]:
        if model not in MODELS:
            raise ConfigError(f"plan {out.experiment!r}: model {model!r} is not a model; "
                              f"accepted: {', '.join(MODELS)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"plan {out.experiment!r}: Table 1 row names must differ; "
                          f"repeated: {', '.join(dup)}")
    return out


# ---------------------------------------------------------------- the jobs
@dataclass
class Job:
    """One training run of the plan."""

    name: str          # unique within the reproduction; also its directory name
    group: str         # table | the sweep's name
    overrides: list[str]
    dir: Path
    model: str = ""

    def status(self) -> str | None:
        """Its metrics.json's status; None where there is none (or none that validates)."""
        try:
            return record.read_metrics(self.dir / METRICS)["status"]
        except record.RecordError:
            return None

    @property
    def finished(self) -> bool:
        return self.status() == "finished"


def _value(v) -> str:
    if isinstance(v, float):
        return fmt_tol(v) if v < 0.1 else f"{v:g}"
    return str(v)


def plan_jobs(cfg: ReproduceConfig, root: Path) -> list[Job]:
    plan = cfg.plans[cfg.experiment]
    seeds = cfg.seeds if cfg.seeds is not None else plan.seeds
    base = [f"experiment={cfg.experiment}"]
    jobs = []
    rows = [VariantPlan(m, m, []) for m in plan.models] + list(plan.variants)
    for row, seed in itertools.product(rows, seeds):
        name = f"{row.name}_seed{seed}"
        jobs.append(Job(name, "table",
                        base + [f"model={row.model}", f"seed={seed}"]
                        + list(plan.train_overrides) + list(row.overrides)
                        + list(cfg.train_args), root / "table" / name, row.model))
    if cfg.sweeps:
        for sw in plan.sweeps:
            keys = list(sw.grid)
            for values in itertools.product(*(sw.grid[k] for k in keys)):
                sets = [f"{k}={_value(v)}" for k, v in zip(keys, values)]
                tag = "_".join(f"{k.rsplit('.', 1)[-1]}{_value(v)}" for k, v in zip(keys, values))
                name = f"{sw.model}_{tag or 'default'}_seed{seeds[0]}"
                jobs.append(Job(name, sw.name,
                                base + [f"model={sw.model}", f"seed={seeds[0]}"]
                                + list(sw.overrides) + sets + list(cfg.train_args),
                                root / sw.name / name, sw.model))
    return jobs


def odenet_command() -> list[str]:
    """How to call the `odenet` CLI in a child process: the venv's console script, else
    the same entry point through this interpreter."""
    exe = Path(sys.executable).with_name("odenet")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from odenet.cli import main; sys.exit(main())"]


def train_command(job: Job) -> list[str]:
    cmd = odenet_command() + ["train", *job.overrides, f"hydra.run.dir={job.dir}"]
    if (job.dir / record.CHECKPOINT_FILE).exists():
        cmd.append("resume=true")
    elif rundir.holds_run(job.dir):  # a run that failed before its first checkpoint
        cmd.append("overwrite=true")
    return cmd


class Interrupted(Exception):
    """A signal stopped the reproduction (after its running child, if any, stopped)."""

    def __init__(self, signum: int, where: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.where = signum, where


# Signals that stop a reproduction, and what the running child is sent for each:
# `odenet train` checkpoints and exits on SIGINT/SIGTERM; a terminal hang-up becomes SIGTERM.
FORWARD = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM}
if hasattr(signal, "SIGHUP"):
    FORWARD[signal.SIGHUP] = signal.SIGTERM


class Children:
    """Runs the reproduction's children one at a time and owns them: a signal that stops
    reproduce is passed on to the running child, reproduce waits for it to checkpoint and
    exit, then raises Interrupted; no child outlives reproduce (short of SIGKILL).

    Each child runs in a process group of its own, so a terminal's Ctrl-C reaches only
    reproduce, which passes it on once: `odenet train` takes a second SIGINT as "stop at
    once, without a checkpoint", which a shared group would deliver twice."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.signum: int | None = None
        self._busy = False  # starting or waiting for a child: signals are forwarded, not raised
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Children:
        for s in FORWARD:
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: signals are not ours to pass on
                break
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handler(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        if not self._busy:  # between children (e.g. writing the report): stop now
            raise Interrupted(self.signum)
        self._forward(FORWARD[signum])

    def _forward(self, signum: int) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:  # it has just exited
                pass

    def run(self, cmd: list[str]) -> int:
        """The child's exit code; Interrupted once it has exited if a signal came meanwhile."""
        self._busy = True
        try:
            # start_new_session: its own process group (see the class), portable to 3.10;
            # only when reproduce passes signals on (else the terminal's must reach it)
            # PARENT_PID: the child stops (and checkpoints) should reproduce die unseen
            env = {**os.environ, rundir.PARENT_PID: str(os.getpid())}
            self.proc = subprocess.Popen(cmd, start_new_session=bool(self._old), env=env)
            if self.signum is not None:  # came while it was starting
                self._forward(FORWARD[self.signum])
            rc = self.proc.wait()
        finally:
            self._reap()
            self._busy = False
            if self.signum is not None:  # also over a failed start: the signal wins
                raise Interrupted(self.signum)
        return rc

    def _reap(self) -> None:
        """A child still running here means reproduce itself failed: stop it, never orphan it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        self.proc = proc
        self._forward(signal.SIGTERM)
        try:
            proc.wait(timeout=60)  # time to checkpoint
        except subprocess.TimeoutExpired:
            self._forward(signal.SIGKILL)
            proc.wait()
        self.proc = None


def _run(cmd: list[str], log, children: Children) -> int:
    log(f"$ {shlex.join(cmd)}")
    try:
        return children.run(cmd)
    except OSError as e:
        log(f"  cannot start: {e}")
        return 127


def evaluation_done(ev_path: Path, checkpoint: Path, tolerances: list[float]) -> bool:
    """evaluation.json exists, is newer than the checkpoint and covers every tolerance."""
    try:
        ev = json.loads(ev_path.read_text())
        if ev_path.stat().st_mtime < checkpoint.stat().st_mtime:
            return False
    except (OSError, ValueError):
        return False
    done = {float(r.get("rtol")) for r in ev.get("results", []) if r.get("rtol") is not None}
    return all(any(abs(t - d) <= 1e-12 * max(abs(t), 1.0) for d in done) for t in tolerances)


def gradients_command(ckpt: Path, metrics: dict | None, plan: GradientsPlan) -> list[str]:
    """`odenet gradients` at the run's own tolerance (rtol; its atol, as odenet gradients
    sets atol = rtol) — '<its rtol>' for a run not trained yet (a dry run)."""
    tol = f"{metrics['solver_rtol']:g}" if metrics else "<its rtol>"
    return odenet_command() + ["gradients", f"checkpoint={ckpt}", f"tolerances=[{tol}]",
                               *plan.overrides]


def gradients_done(run_dir: Path, metrics: dict) -> bool:
    """gradients.json exists, is newer than the checkpoint and measured the run's own
    gradient method at its own solver and tolerance (what Table 1's column reads)."""
    from odenet.report.runs import Run, own_gradient_result, read_evaluation

    path = run_dir / record.GRADIENTS_FILE
    try:
        if path.stat().st_mtime < (run_dir / record.CHECKPOINT_FILE).stat().st_mtime:
            return False
        gradients = read_evaluation(path)
    except (OSError, record.RecordError):
        return False
    return own_gradient_result(Run(run_dir, metrics, gradients=gradients)) is not None


# ---------------------------------------------------------------- the report
def machine_line() -> str:
    try:
        import torch

        tv = torch.__version__
        dev = (f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
               else "CPU only")
    except Exception:  # torch missing is not this function's problem
        tv, dev = "?", "?"
    cpu = platform.processor() or platform.machine()
    return (f"{platform.node() or 'this machine'}: {os.cpu_count()} CPU cores ({cpu}), "
            f"{dev}, Python {platform.python_version()}, torch {tv}")


def write_report(cfg: ReproduceConfig, jobs: list[Job], report_dir: Path,
                 command: str, timings: dict[str, float], failures: list[str]) -> Path:
    """table + figures + report.md in report_dir; returns report.md's path."""
    from odenet.figures import of_task
    from odenet.report.runs import load_runs
    from odenet.report.table import write_table

    table_dirs = [j.dir for j in jobs if j.group == "table" and (j.dir / METRICS).exists()]
    if not table_dirs:
        raise ReportError("no Table 1 run wrote metrics.json; nothing to report")
    root = Path(cfg.root or ".")  # the report's paths are relative to it
    table_runs, invalid = load_runs(table_dirs, base=root)
    res = write_table(table_runs, report_dir, [str(root / "table")], invalid)
    sweep_runs: dict[str, list] = {}
    plan = cfg.plans[cfg.experiment]
    for sw in plan.sweeps if cfg.sweeps else []:
        dirs = [j.dir for j in jobs if j.group == sw.name and (j.dir / METRICS).exists()]
        runs, bad = load_runs(dirs, base=root) if dirs else ([], [])
        sweep_runs.setdefault(sw.figure, []).extend(runs)
        invalid += bad
    # Each figure reads the Table 1 runs and the sweeps made for it; memory reads every
    # run (the fig3c sweep's ODE-Nets show the adjoint's flat memory across NFE beside
    # the growth of backprop through the solver)
    fig_runs = {f.name: table_runs + sweep_runs.get(f.name, []) for f in of_task(record.CLASSIFY)}
    fig_runs["memory"] = table_runs + [r for rs in sweep_runs.values() for r in rs]
    written, skipped = {}, {}
    for f in of_task(record.CLASSIFY):
        w, s = f.make(fig_runs[f.name], report_dir)
        written.update(w)
        skipped.update(s)

    md = ["# odenet: Table 1 and Figure 3 of Chen et al. (2018), reproduced\n",
          f"- Command: `{command}`",
          f"- Scale: `experiment={cfg.experiment}`"
          + (" (the paper's recipe: 160 epochs)" if cfg.experiment == "paper" else
             " (a compressed schedule, not the paper's 160 epochs: see "
             f"configs/experiment/{cfg.experiment}.yaml)"),
          f"- Machine: {machine_line()}",
          f"- Written: {_dt.datetime.now().isoformat(timespec='seconds')}; runs under "
          f"`{cfg.root}` (the paths below are relative to it)",
          "- Wall time of this invocation: " + ", ".join(
              f"{k} {v / 60:.1f} min" for k, v in timings.items()),
          ""]
    if failures:
        md += ["**Incomplete:** " + "; ".join(failures), ""]
    for bad in invalid[len(res["invalid"]):]:  # the table lists its own
        md += [f"- Not read: `{bad.name}`: {bad.reason}"]
    for f in of_task(record.CLASSIFY):  # evaluations of a checkpoint changed since
        md += [f"- {note}" for note in f.notes(fig_runs[f.name])]
    # drop its own title; its sections become subsections of "Table 1"
    table_md = res["md"].read_text().split("\n", 1)[1].replace("\n## ", "\n### ")
    md += ["## Table 1", table_md]
    md += ["## Measured against the paper's claims", ""]
    md += [f"- {line}" for line in measured_claims(table_runs, fig_runs)] or ["- (no data)"]
    md += ["", "## Figures", ""]
    for f in of_task(record.CLASSIFY):
        name = f.name
        if name in written:
            data = f" Data: [{name}.csv]({name}.csv)" if f.csv else ""
            md += [f"![{name}]({name}.png)", "", f"*{f.caption}*{data}", ""]
        else:
            md += [f"*{name}: not drawn — {skipped.get(name, 'no data')}*", ""]
    path = report_dir / "report.md"
    write_atomic(path, "\n".join(md) + "\n")
    return path


# ---------------------------------------------------------------- main
def reproduce(cfg: ReproduceConfig, command: str, log=print) -> int:
    """Run the plan; 0 when every step completed, 1 otherwise. A signal (SIGINT, SIGTERM,
    SIGHUP) stops the running child first, then raises Interrupted."""
    with Children() as children:
        return _reproduce(cfg, command, log, children)


def _reproduce(cfg: ReproduceConfig, command: str, log, children: Children) -> int:
    plan = cfg.plans[cfg.experiment]
    root = Path(cfg.root or f"outputs/reproduce/{cfg.experiment}")
    cfg.root = str(root)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    report_dir = Path(cfg.report or f"outputs/report/{stamp}_{cfg.experiment}")
    jobs = plan_jobs(cfg, root)
    timings: dict[str, float] = {}
    failures: list[str] = []

    # 1 + 3: training runs (Table 1 first, then the sweeps)
    t0 = time.perf_counter()
    todo = [j for j in jobs if not j.finished]
    log(f"odenet reproduce: experiment={cfg.experiment}, {len(jobs)} runs under {root} "
        f"({len(jobs) - len(todo)} already finished)")
    for k, job in enumerate(jobs, 1):
        if job.finished:
            log(f"[{k}/{len(jobs)}] {job.group}/{job.name}: finished, skipped")
            continue
        cmd = train_command(job)
        if cfg.dry_run:
            log(f"[{k}/{len(jobs)}] would run: {shlex.join(cmd)}")
            continue
        log(f"[{k}/{len(jobs)}] {job.group}/{job.name}"
            + (" (resuming)" if "resume=true" in cmd else ""))
        try:
            rc = _run(cmd, log, children)
        except Interrupted as e:
            e.where = f"{job.group}/{job.name} (run directory {job.dir})"
            raise
        if rc != 0 or not job.finished:
            why = f"exit {rc}" if rc else f"status {job.status() or 'unknown'}"
            failures.append(f"{job.group}/{job.name} did not finish ({why}, see {job.dir})")
            log(f"  {failures[-1]}")
    timings["training"] = time.perf_counter() - t0

    # 2: tolerance evaluation of the ODE-Net checkpoint
    t0 = time.perf_counter()
    ev = plan.evaluate
    ev_jobs = [j for j in jobs if j.group == "table" and f"model={ev.model}" in j.overrides]
    if ev_jobs:
        job = ev_jobs[0]
        ckpt = job.dir / record.CHECKPOINT_FILE
        tols = "[" + ",".join(f"{t:g}" for t in ev.tolerances) + "]"
        cmd = odenet_command() + ["evaluate", f"checkpoint={ckpt}", f"tolerances={tols}",
                                 *ev.overrides]
        if cfg.dry_run:
            log(f"would run: {shlex.join(cmd)}")
        elif not job.finished:
            failures.append(f"evaluation skipped: {job.name} did not finish")
        elif evaluation_done(job.dir / EVALUATION, ckpt, ev.tolerances):
            log(f"evaluation of {job.name}: done, skipped")
        elif _run(cmd, log, children) != 0:
            failures.append(f"odenet evaluate failed on {ckpt}")
    timings["evaluation"] = time.perf_counter() - t0

    # 2b: Table 1's gradient error: odenet gradients on each trained ODE-block run
    t0 = time.perf_counter()
    if plan.gradients is not None:
        for job in jobs:
            if job.group != "table" or not MODELS[job.model].ode_block:
                continue
            ckpt = job.dir / record.CHECKPOINT_FILE
            if cfg.dry_run:
                log(f"would run: {shlex.join(gradients_command(ckpt, None, plan.gradients))}")
                continue
            if not job.finished:
                failures.append(f"gradient error skipped: {job.name} did not finish")
                continue
            metrics = record.read_metrics(job.dir / METRICS)
            if gradients_done(job.dir, metrics):
                log(f"gradient error of {job.name}: done, skipped")
                continue
            cmd = gradients_command(ckpt, metrics, plan.gradients)
            if _run(cmd, log, children) != 0 or not gradients_done(job.dir, metrics):
                failures.append(f"odenet gradients did not measure {job.name}'s own gradient "
                                f"({ckpt})")
    timings["gradients"] = time.perf_counter() - t0
    if cfg.dry_run:
        log(f"dry run: nothing trained; the report would go to {report_dir}")
        return 0

    # 4: the report
    try:
        path = write_report(cfg, jobs, report_dir, command, timings, failures)
    except ReportError as e:
        log(f"odenet reproduce: error: {e}")
        return 1
    log(f"odenet reproduce: report -> {path}")
    if failures:
        log(f"odenet reproduce: {len(failures)} step(s) did not complete; rerun the same "
            "command to continue: " + "; ".join(failures))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + f"\n\nSettings: configs/{PLAN_FILE} (key=value overrides).")
        return 0
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"odenet reproduce: error: {e}", file=sys.stderr)
        return 2
    command = shlex.join(["odenet", "reproduce", *argv])
    try:
        return reproduce(cfg, command)
    except Interrupted as e:
        during = f" during {e.where}" if e.where else ""
        print(f"odenet reproduce: stopped by {e}{during}; to continue, run the same command "
              f"again (finished runs are skipped, interrupted ones resume): {command}",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # before the signal handlers were set
        print(f"odenet reproduce: interrupted; to continue, run the same command again: "
              f"{command}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
