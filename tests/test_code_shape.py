"""Bounds on the code's shape outside odenet/solvers/: no module is longer than 500 lines,
no class longer than 150, no function longer than 60 (the solver library is exempt: its
steppers follow the published tableaux)."""

import ast
from pathlib import Path

import odenet

MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 150
MAX_LINES = 60  # a function's
PACKAGE = Path(odenet.__file__).parent


def _modules(root: Path) -> list[tuple[Path, str]]:
    """(path relative to ``root``, text) of every module outside solvers/."""
    return [(path.relative_to(root), path.read_text()) for path in sorted(root.rglob("*.py"))
            if "solvers" not in path.relative_to(root).parts]


def _long_nodes(root: Path, kinds: tuple[type, ...], limit: int) -> list[str]:
    found = []
    for rel, text in _modules(root):
        for node in ast.walk(ast.parse(text, filename=str(rel))):
            if isinstance(node, kinds):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    return found


def _long_functions(root: Path) -> list[str]:
    return _long_nodes(root, (ast.FunctionDef, ast.AsyncFunctionDef), MAX_LINES)


def _long_classes(root: Path) -> list[str]:
    return _long_nodes(root, (ast.ClassDef,), MAX_CLASS_LINES)


def _long_modules(root: Path) -> list[str]:
    return [f"{rel} ({len(text.splitlines())} lines)" for rel, text in _modules(root)
            if len(text.splitlines()) > MAX_MODULE_LINES]


def test_no_function_outside_the_solvers_exceeds_60_lines():
    assert _long_functions(PACKAGE) == []


def test_no_class_outside_the_solvers_exceeds_150_lines():
    assert _long_classes(PACKAGE) == []


def test_no_module_outside_the_solvers_exceeds_500_lines():
    assert _long_modules(PACKAGE) == []


def _exempt_solvers(tmp_path: Path, text: str) -> None:
    (tmp_path / "solvers").mkdir()
    (tmp_path / "solvers" / "exempt.py").write_text(text)


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def too_long():\n{body}\n")
    _exempt_solvers(tmp_path, f"def stepper():\n{body}\n")
    assert _long_functions(tmp_path) == [f"long.py:1 too_long ({MAX_LINES + 1} lines)"]


def test_the_check_finds_a_long_class(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_CLASS_LINES))
    (tmp_path / "long.py").write_text(f"class TooLong:\n{body}\n")
    _exempt_solvers(tmp_path, f"class Tableau:\n{body}\n")
    assert _long_classes(tmp_path) == [f"long.py:1 TooLong ({MAX_CLASS_LINES + 1} lines)"]


def test_the_check_finds_a_long_module(tmp_path):
    text = "".join(f"x{i} = {i}\n" for i in range(MAX_MODULE_LINES + 1))
    (tmp_path / "long.py").write_text(text)
    (tmp_path / "short.py").write_text(text[: text.index(f"x{MAX_MODULE_LINES} =")])
    _exempt_solvers(tmp_path, text)
    assert _long_modules(tmp_path) == [f"long.py ({MAX_MODULE_LINES + 1} lines)"]
