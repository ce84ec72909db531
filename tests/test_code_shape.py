"""Code-shape rules of the package, counted with ``ast``: no function over 80 lines or with more
than 10 parameters (``self``/``cls`` not counted, ``*args``/``**kwargs`` one each)."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tcpnet"
MAX_LINES, MAX_PARAMS = 80, 10


def _functions():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(SRC.parent), node


def _params(fn: ast.FunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def test_no_function_over_80_lines():
    long = [f"{p}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for p, fn in _functions() if fn.end_lineno - fn.lineno + 1 > MAX_LINES]
    assert not long, "\n".join(long)


def test_no_function_with_more_than_10_parameters():
    wide = [f"{p}:{fn.lineno} {fn.name} ({_params(fn)} parameters)" for p, fn in _functions()
            if _params(fn) > MAX_PARAMS]
    assert not wide, "\n".join(wide)


def test_the_rule_counts_what_it_says():
    fn = ast.parse("def f(self, a, b=1, *args, c, **kw):\n    pass\n").body[0]
    assert _params(fn) == 5 and fn.end_lineno - fn.lineno + 1 == 2
