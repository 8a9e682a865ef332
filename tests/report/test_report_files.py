"""Where reports write (a folder they cannot write is one line), and runs found but not
read (listed with their reason, never dropped without a note)."""

from __future__ import annotations

import csv

import pytest
from fakeruns import history_records

from odenet.report import figure_registry as registry
from odenet.report.table import main as table_main


def _one_line_exit_2(code, capsys, prog):
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"odenet {prog}: error: out=") and "writable" in err, err
    return err


@pytest.mark.parametrize("prog", ["table", "figures"])
@pytest.mark.parametrize("where", ["read-only directory", "under a file"])
def test_out_where_nothing_can_be_written_is_one_line(prog, where, make_run, tmp_path,
                                                      capsys, read_only):
    """One line naming the path, no OSError traceback."""
    make_run("ode", history=history_records())
    if where == "under a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "report"
    else:
        (tmp_path / "ro").mkdir()
        out = read_only(tmp_path / "ro")
    main = table_main if prog == "table" else registry.main
    _one_line_exit_2(main([str(tmp_path / "outputs"), f"out={out}"]), capsys, prog)


def _excluded(out):
    with open(out / "excluded_runs.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_an_unreadable_run_directory_is_listed_with_its_reason(make_run, tmp_path, capsys,
                                                               unreadable):
    """Listed in table.md and excluded_runs.csv with its reason, not left out unsaid."""
    make_run("a")
    unreadable(make_run("b"))
    out = tmp_path / "t"
    assert table_main([str(tmp_path / "outputs"), f"out={out}"]) == 0
    err = capsys.readouterr().err
    assert "not read: " in err and "b: cannot list the directory: Permission denied" in err
    [row] = _excluded(out)
    assert row["run_dir"] == "b" and row["status"] == "invalid"
    assert "Permission denied" in row["reason"]
    assert "cannot list the directory" in (out / "table.md").read_text()


def test_a_symlinked_run_directory_is_read_and_a_loop_is_no_hang(make_run, tmp_path):
    from odenet.report import load_runs

    elsewhere = make_run("../elsewhere/ode", history=history_records())
    (tmp_path / "outputs" / "linked").symlink_to(elsewhere, target_is_directory=True)
    make_run("real")
    (tmp_path / "outputs" / "real" / "loop").symlink_to(tmp_path / "outputs")
    runs, invalid = load_runs([tmp_path / "outputs"])
    assert [r.name for r in runs] == ["linked", "real"] and invalid == []
    assert len(runs[0].history) == len(history_records())


def test_a_cut_last_history_line_of_a_finished_run_is_noted(make_run, tmp_path, capsys):
    """fig3d says which epoch record a cut last line of history.jsonl leaves out, rather
    than dropping it unsaid."""
    d = make_run("ode", history=history_records(epochs=2), epochs=2)
    text = (d / "history.jsonl").read_text()
    (d / "history.jsonl").write_text(text[: text.rstrip().rfind("{") + 10])  # cut the last
    out = tmp_path / "f"
    assert registry.main([str(tmp_path / "outputs"), f"out={out}",
                          "only=fig3d"]) == 0
    err = capsys.readouterr().err
    assert "fig3d: ode/history.jsonl: line 8 is cut short (an interrupted write): left out " \
           "(1 of 2 epoch records)" in err, err
