"""Issue 19, items 6 and 7: where reports write, and runs found but not read."""

from __future__ import annotations

import csv

import pytest
from fakeruns import history_records

from odenet import figures as registry
from odenet.report.table import main as table_main


def _one_line_exit_2(code, capsys, prog):
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"odenet {prog}: error: --out ") and "writable" in err, err
    return err


@pytest.mark.parametrize("prog", ["table", "figures"])
@pytest.mark.parametrize("where", ["read-only directory", "under a file"])
def test_out_where_nothing_can_be_written_is_one_line(prog, where, make_run, tmp_path,
                                                      capsys, read_only):
    """Was an OSError traceback (issue 19 item 6)."""
    make_run("ode", history=history_records())
    if where == "under a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "report"
    else:
        (tmp_path / "ro").mkdir()
        out = read_only(tmp_path / "ro")
    main = table_main if prog == "table" else registry.main
    _one_line_exit_2(main([str(tmp_path / "outputs"), "--out", str(out)]), capsys, prog)
