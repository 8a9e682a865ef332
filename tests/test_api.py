"""The README's Python API example runs as written (in a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, mnist_root, capsys):
    code = readme_block("Python API")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(mnist_root)  # data.root=data, as from the repository
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("finished ") and out[1] == "Classifier 0.01 1"
    assert (tmp_path / "outputs/api/odenet/metrics.json").is_file()
