"""Fixtures for the report tests; the helpers live in fakeruns.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakeruns import write_run


@pytest.fixture
def make_run(tmp_path):
    """make_run("name", history=..., evaluation=..., **metrics overrides) -> run dir."""

    def _make(name: str, history=None, evaluation=None, **over) -> Path:
        return write_run(tmp_path / "outputs" / name, history=history,
                         evaluation=evaluation, **over)

    return _make
