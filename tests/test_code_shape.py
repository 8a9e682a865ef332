"""A bound on the code's shape: no function outside odenet/solvers/ is longer than
80 lines (the solver library is exempt: its steppers follow the published tableaux)."""

import ast
from pathlib import Path

import odenet

MAX_LINES = 80
PACKAGE = Path(odenet.__file__).parent


def _long_functions(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if "solvers" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_outside_the_solvers_exceeds_80_lines():
    assert _long_functions(PACKAGE) == []


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def too_long():\n{body}\n")
    (tmp_path / "solvers").mkdir()
    (tmp_path / "solvers" / "exempt.py").write_text(f"def stepper():\n{body}\n")
    assert _long_functions(tmp_path) == [f"long.py:1 too_long ({MAX_LINES + 1} lines)"]
