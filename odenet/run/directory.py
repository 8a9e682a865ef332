"""A run directory has one owner and one history.

- ``claim(out)``: an exclusive lock on ``out/.lock`` (``fcntl.flock``), held for the life
  of the process or until ``release``; the operating system drops it when the process
  dies, so a killed run never leaves a stale lock. A second training into a directory
  that is claimed is refused in one line.
- ``holds_run(out)``: the directory already has a run's records; starting another one
  there needs ``resume=true`` (continue it) or ``overwrite=true`` (``clear``: its records
  are deleted, Hydra's ``.hydra/`` and ``train.log`` are kept and written anew).
- ``is_claimed(out)``: whether a live process owns it (a run whose metrics.json says
  ``running`` but that nobody owns was killed).

Standard library only (and PyYAML for Hydra's overrides.yaml): the reports use
``is_claimed`` too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from odenet.config.errors import ConfigError
from odenet.run.record import (
    CHECKPOINT_FILE,
    EVALUATION,
    GRADIENTS_FIGURE,
    GRADIENTS_FILE,
    HISTORY,
    METRICS,
)

LOCK = ".lock"
TENSORBOARD = "tb"
# what a run writes (Hydra's .hydra/ and train.log are Hydra's own, rewritten per launch)
RECORDS = (METRICS, HISTORY, CHECKPOINT_FILE, EVALUATION, GRADIENTS_FILE, GRADIENTS_FIGURE,
           TENSORBOARD)

# environment variable: the pid of a parent that owns the training (odenet reproduce);
# the training stops at its next iteration, checkpointing, once that parent is gone
PARENT_PID = "ODENET_PARENT_PID"

_held: dict[Path, int] = {}  # directories this process has claimed -> lock file descriptor


IN_USE = ("run directory {out} is in use by another training (pid {pid}); wait for it or "
          "choose another hydra.run.dir")


def claim(out: str | os.PathLike, in_use: str = IN_USE) -> None:
    """Lock ``out`` for this process (again: a no-op); ConfigError if another owns it,
    ``in_use`` with the directory and the owner's pid filled in ({out}, {pid})."""
    out = Path(out).resolve()
    if out in _held:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"run directory {out}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(in_use.format(out=out, pid=_owner(out) or "?")) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[out] = fd


def release(out: str | os.PathLike) -> None:
    fd = _held.pop(Path(out).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock


@contextlib.contextmanager
def held(out: str | os.PathLike, in_use: str = IN_USE) -> Iterator[None]:
    """``out`` claimed (see ``claim``) for the duration of the block."""
    claim(out, in_use)
    try:
        yield
    finally:
        release(out)


def is_claimed(out: str | os.PathLike) -> bool:
    """Whether a live process holds the lock of ``out``."""
    out = Path(out).resolve()
    if out in _held:
        return True
    try:
        fd = os.open(out / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _owner(out: Path) -> str | None:
    try:
        return (out / LOCK).read_text().strip() or None
    except OSError:
        return None


def parent_gone() -> bool:
    """Whether the parent named by PARENT_PID has died (the process was re-parented)."""
    pid = os.environ.get(PARENT_PID)
    return bool(pid) and os.getppid() != int(pid)


_pending: list[int] = []  # signals received while deferred (defer_signals)


def defer_signals() -> None:
    """From now until a training's own handler takes over (the trainer's StopSignals,
    which adopts what came meanwhile), SIGINT and SIGTERM are noted rather than raised: a
    Ctrl-C in the middle of importing torch or of Hydra's launch would leave a traceback,
    or a half-imported module that the next sweep job crashes on. A second SIGINT is raised
    (KeyboardInterrupt), so that Ctrl-C twice still stops at once."""
    _pending.clear()

    def note(signum: int, frame: object) -> None:
        if _pending and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _pending.append(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(s, note)
        except ValueError:  # not the main thread: the signals are not ours
            pass


def pending_signal() -> int | None:
    """The first signal defer_signals noted, if any."""
    return _pending[0] if _pending else None


def holds_run(out: str | os.PathLike) -> bool:
    out = Path(out)
    return any((out / name).exists() for name in (METRICS, HISTORY, CHECKPOINT_FILE))


def clear(out: str | os.PathLike) -> list[str]:
    """Delete the records of the run in ``out`` (overwrite=true); returns what went."""
    gone = []
    for name in RECORDS:
        p = Path(out) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        gone.append(name)
    return gone


def remove_orphans(out: str | os.PathLike) -> list[str]:
    """Temporary files left by a process killed between write and rename (odenet/run/files.py
    names them ``.<name>.<random>.tmp``); only call while owning ``out``."""
    gone = []
    for p in Path(out).glob(".*.tmp"):
        p.unlink(missing_ok=True)
        gone.append(p.name)
    return gone


def launch_overrides(out: str | os.PathLike) -> list[str]:
    """The command-line overrides the run in ``out`` was launched with (Hydra's record)."""
    import yaml  # PyYAML, which OmegaConf depends on: Hydra's file may quote its items

    try:
        items = yaml.safe_load((Path(out) / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in items] if isinstance(items, list) else []


def resume_command(out: str | os.PathLike, overrides: list[str] | None = None) -> str:
    """The complete command that continues the run in ``out``, as it pastes into a shell."""
    keep = _without(launch_overrides(out) if overrides is None else overrides, "hydra.run.dir")
    return command_line(["odenet", "train", *keep, f"hydra.run.dir={hydra_value(str(out))}",
                         "resume=true"])


def resume_sweep_command(sweep_dir: str | os.PathLike, argv: list[str]) -> str:
    """The command that continues every job of the sweep ``argv`` (odenet train's
    arguments) in its own directory below ``sweep_dir``; resume=true skips the finished."""
    keep = [a for a in _without(argv, "hydra.sweep.dir") if a not in ("-m", "--multirun")]
    return command_line(["odenet", "train", "-m", *keep,
                         f"hydra.sweep.dir={hydra_value(str(sweep_dir))}", "resume=true"])


# left out of a command that continues a run: train.stop_after_iters stopped the session
# that was given it (kept, it would stop the continued one again after as many iterations)
NOT_CONTINUED = ("resume", "overwrite", "train.stop_after_iters")


def _without(overrides: list[str], directory_key: str) -> list[str]:
    return [o for o in overrides
            if o.split("=", 1)[0].lstrip("+~") not in (*NOT_CONTINUED, directory_key)]


# what Hydra's override parser reads back unchanged without quotes (a comma would make a
# sweep, a space at either end is dropped, parentheses, quotes, #, ! or non-ASCII are errors)
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_/.+:@%-]+")


def hydra_value(value: str) -> str:
    """``value`` written so that Hydra's override parser reads it back as this string."""
    if _HYDRA_PLAIN.fullmatch(value):
        return value
    # in a quoted value, a backslash escapes only the quote or backslashes before it
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body).replace("${", "\\${")
    return f"'{body}'"


def command_line(argv: list[str]) -> str:
    """``argv`` for a POSIX shell: an argument holding Hydra's single quotes goes in double
    quotes when it can (``"hydra.run.dir='x y'"``), anything else as shlex.quote has it."""
    return " ".join(f'"{a}"' if "'" in a and not re.search(r'[$`\\"!]', a)
                    else shlex.quote(a) for a in argv)
