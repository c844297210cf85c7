"""Each home of the package reads in one sitting: size limits on lines of code.

Lines of code are the lines that hold a token other than a comment, a docstring or a blank: what a
reader has to read. The limits: 300 per module (pure math excepted: the solver and the low-rank
factorizations carry their derivations in code), 80 per function, 250 per class.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_sylv"
MODULE, FUNCTION, CLASS = 300, 80, 250
PURE_MATH = {"solver.py", "lowrank/factorize.py"}


def code_lines(source: str) -> tuple[ast.Module, set[int]]:
    """The parsed module and the numbers of its lines of code (no comments, docstrings, blank lines)."""
    tree = ast.parse(source)
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docstrings)
    return tree, lines


def test_code_lines_skip_docstrings_comments_and_blank_lines():
    source = 'def f(x):\n    """Doc\n    string."""\n    # a comment\n\n    return (x +\n            1)\n'
    assert sorted(code_lines(source)[1]) == [1, 6, 7]


FILES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("name", FILES)
def test_modules_functions_and_classes_stay_within_their_size(name):
    tree, lines = code_lines((PACKAGE / name).read_text())
    if name not in PURE_MATH:
        assert len(lines) <= MODULE, f"{name}: {len(lines)} lines of code > {MODULE}"
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            size = sum(1 for n in lines if node.lineno <= n <= node.end_lineno)
            limit = CLASS if isinstance(node, ast.ClassDef) else FUNCTION
            assert size <= limit, f"{name}:{node.lineno} {node.name}: {size} lines of code > {limit}"
