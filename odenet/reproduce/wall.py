"""The wall-time ledger, ROOT/wall.csv: one row per invocation that ran the plan (start,
end, seconds, children started, how it ended), so that a reproduction resumed across
sessions reports its parts and their sum."""

from __future__ import annotations

import csv
import datetime as _dt
from pathlib import Path

from odenet.report.runs import ReportError
from odenet.reproduce.status import duration
from odenet.run.files import write_csv

WALL = "wall.csv"
WALL_FIELDS = ("started_utc", "ended_utc", "seconds", "children_started", "ended_by")


def record_part(root: Path, parts: list[dict], started: _dt.datetime, seconds: float,
                children: int, ended_by: str) -> None:
    """Writes ROOT/wall.csv anew (atomically): the earlier parts, then this invocation."""
    this = dict(zip(WALL_FIELDS, (started.isoformat(timespec="seconds"),
                                  utc_now().isoformat(timespec="seconds"),
                                  f"{seconds:.1f}", str(children), ended_by), strict=True))
    write_csv(root / WALL, [*parts, this])


def read_parts(root: Path) -> list[dict]:
    """The invocations recorded in ROOT/wall.csv, oldest first ([] when none)."""
    path = root / WALL
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    bad = f"{path}: not a wall-time record; move it away to start a new one"
    if set(WALL_FIELDS) - set(reader.fieldnames or ()):
        raise ReportError(f"{bad} (expected the columns {', '.join(WALL_FIELDS)})")
    for k, row in enumerate(rows, 2):
        try:
            float(row["seconds"])
        except (TypeError, ValueError):
            raise ReportError(f"{bad} (line {k}: seconds={row['seconds']!r} is not a "
                              "number)") from None
    return rows


def parts_line(parts: list[dict]) -> str:
    """'2 invocations: 29m (stopped by SIGINT) + 1h24m (ran to the report) = 1h53m'."""
    total = sum(float(p["seconds"]) for p in parts)
    terms = " + ".join(f"{duration(float(p['seconds']))} ({p['ended_by']})" for p in parts)
    n = len(parts)
    return f"{n} invocation{'s' if n > 1 else ''}: {terms} = {duration(total)}"


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)
