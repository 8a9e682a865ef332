"""The one way odenet writes a file: atomically.

The content goes to a temporary file in the same directory, is flushed and fsync'ed,
then renamed over the target, and the directory is fsync'ed: a reader sees the old file
or the new one, never a half-written one, even after a crash. The temporary file is
removed on any error. Standard library only (reports use it too).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (str: UTF-8) to ``path`` atomically, with the usual mode (0666 less
    the umask); creates the parent directory. An OSError names ``path`` (a full disk's
    ENOSPC, raised by a write, names no file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    _fsync_dir(path.parent)
    return path


def check_writable(directory: str | os.PathLike) -> None:
    """OSError unless files can be created in ``directory``, or where it does not exist
    yet, in its nearest existing parent (write_atomic creates the rest): a command
    checks where it will write before its work, so that no result is lost."""
    d = Path(directory).absolute()
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".write-test.", suffix=".tmp")
    except OSError as e:  # about the directory, not the test file's random name
        raise type(e)(e.errno, e.strerror, str(d)) from None
    os.close(fd)
    os.unlink(tmp)


def os_reason(e: OSError) -> str:
    """An OSError in a few words, naming the path it is about, for a one-line error."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (indent 1, no NaN: the caller turns non-finite numbers into null)."""
    return write_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """CSV, one row per dict (keys: the columns, from the first row); None is an empty
    cell, a whole float an integer (counts such as NFE read back as integers)."""
    out = io.StringIO()
    wr = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    wr.writeheader()
    for r in rows:
        wr.writerow({k: _cell(v) for k, v in r.items()})
    return write_atomic(path, out.getvalue())


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    return v


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_id(path: str | os.PathLike) -> dict:
    """What identifies a file's content: its size and SHA-256 (a checkpoint is a few MB:
    hashing costs milliseconds; mtimes change when run directories are copied)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"size": os.path.getsize(path), "sha256": h.hexdigest()}
