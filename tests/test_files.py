"""The one atomic writer (odenet/run/files.py)."""

from __future__ import annotations

import json
import os

import pytest

from odenet.run.files import write_atomic, write_json


def test_writes_whole_files_with_the_usual_mode(tmp_path):
    p = write_atomic(tmp_path / "sub" / "a.txt", "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    write_json(tmp_path / "m.json", {"x": 1.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1.5}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.json", "sub"]  # no temp files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "m.json"
    write_json(p, {"old": True})

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_json(p, {"new": True})
    assert json.loads(p.read_text()) == {"old": True}
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]
    with pytest.raises(ValueError):  # NaN is not JSON: the caller writes null
        write_json(p, {"x": float("nan")})


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failed_write_names_the_file_it_was_writing(tmp_path, monkeypatch, step):
    """A full disk fails the write itself, whose OSError names no file: the error names
    the destination (not the temporary), keeping its errno."""
    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "ck.pt", b"x" * 100)
    assert (info.value.errno, info.value.filename) == (28, str(tmp_path / "ck.pt"))
    assert list(tmp_path.iterdir()) == []
