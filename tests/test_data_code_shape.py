"""Shape of the data layer's code (src/tcpnet/data, src/tcpnet/tools): no copied code, small
functions with few parameters, and the lazy exports of ``tcpnet.data`` derived, cheap and complete."""
import ast
from pathlib import Path

import tcpnet

PACKAGE = Path(tcpnet.__file__).parent
AREAS = [PACKAGE / "data", PACKAGE / "tools"]
COPY_RUN = 5  # statements in a row: shorter repeats are idioms (a check and its raise), not copies


def _functions(root: Path):
    """(path, function node) for every function and method under ``root``."""
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def _statements(fn: ast.AST) -> list:
    """The function's top-level statements, its docstring left out."""
    return [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]


def test_no_function_copies_a_run_of_statements_of_another():
    """A run of COPY_RUN statements that two functions share (compared as syntax trees, so
    renaming nothing hides it) is one helper written twice."""
    seen, copies = {}, []
    for root in AREAS:
        for path, fn in _functions(root):
            body = _statements(fn)
            dumps = [ast.dump(s) for s in body]
            for i in range(len(dumps) - COPY_RUN + 1):
                where = f"{path.relative_to(PACKAGE)}:{body[i].lineno} ({fn.name})"
                first = seen.setdefault(tuple(dumps[i:i + COPY_RUN]), where)
                if first != where and f"({fn.name})" not in first:
                    copies.append(f"{where} repeats {first}")
    assert not copies, "\n".join(copies)
