"""The package's size rules: every module of src/fashionrec under 600 lines, every function under 120."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fashionrec"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120


def _modules():
    return sorted(p for p in SRC.rglob("*.py"))


def long_functions(tree: ast.AST, limit: int) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append((node.name, n))
    return out


def test_the_rule_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(130))
    assert long_functions(ast.parse(f"def f():\n{body}\n"), MAX_FUNCTION_LINES) == [("f", 131)]


def test_no_module_over_the_limit():
    big = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_no_function_over_the_limit():
    long = {
        f"{p.relative_to(SRC)}::{name}": n
        for p in _modules()
        for name, n in long_functions(ast.parse(p.read_text()), MAX_FUNCTION_LINES)
    }
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
