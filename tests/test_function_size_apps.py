"""Small functions, few parameters (issue 14): no function or method in the commands
(``tcpnet.apps``, ``tcpnet.cli``), the checkpoint I/O (``tcpnet.checkpoints``), evaluation and
metrics, the FLOP counter or the renderers (``tcpnet.viz``) is over 80 lines or takes more than 10 parameters (``self``/``cls`` not counted;
``*args`` and ``**kwargs`` count one each). Counted with ``ast`` from ``def`` to the last line."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import tcpnet

MAX_LINES, MAX_PARAMS = 80, 10
PACKAGE = Path(tcpnet.__file__).parent
AREAS = ("apps", "checkpoints", "viz", "cli.py", "engine/evaluate.py", "engine/metrics.py", "utils/complexity.py")


def _files() -> Iterator[Path]:
    for area in AREAS:
        path = PACKAGE / area
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def _functions(path: Path) -> Iterator[Tuple[str, int, int]]:
    """(qualified name, lines, parameters) of every function and method in ``path``, nested ones too."""
    def visit(node: ast.AST, prefix: str) -> Iterator[Tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                params = len([n for n in names if n not in ("self", "cls")]) + bool(a.vararg) + bool(a.kwarg)
                yield f"{prefix}{child.name}", child.end_lineno - child.lineno + 1, params
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    return visit(ast.parse(path.read_text(encoding="utf-8")), "")


@pytest.mark.parametrize("path", list(_files()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_are_short_with_few_parameters(path):
    too_big = [f"{path.relative_to(PACKAGE)}: {name} has {lines} lines, {params} parameters"
               for name, lines, params in _functions(path) if lines > MAX_LINES or params > MAX_PARAMS]
    assert not too_big, "\n".join(too_big)


def test_the_counter_sees_methods_nested_functions_and_star_arguments(tmp_path):
    source = ("class A:\n    def m(self, a, *args, b, **kw):\n        if a:\n            def inner(x):\n"
              "                return x\n")
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert sorted(_functions(path)) == [("A.m", 4, 4), ("A.m.inner", 2, 1)]
