"""Video data: readers, sampling, transforms, list formats, datasets and their assembly.

Every name in a sub-module's ``__all__`` is importable from here (``from tcpnet.data import
VideoDataset``). The table is read from the sub-modules' source on first use, without importing
them, and a name is imported with its module only when asked for, so ``import tcpnet.data`` stays
cheap and a new module's exports need no edit here.
"""
import importlib
from typing import Any, Dict, List, Optional, Set, Tuple

_exports: Optional[Dict[str, str]] = None  # public name -> module that provides it, built on first use


def _public_names(source: str, filename: str) -> Tuple[List[str], Set[str]]:
    """(``__all__``, the names the module defines itself) of a module's source text."""
    import ast

    listed: List[str] = []
    defined: Set[str] = set()
    for node in ast.parse(source, filename).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            defined.update(names)
            if "__all__" in names:
                try:
                    listed = list(ast.literal_eval(node.value))
                except ValueError:
                    raise ImportError(f"{filename}:{node.lineno}: __all__ must be a literal list of names") from None
    return listed, defined


def exports() -> Dict[str, str]:
    """``{name: module}`` for every name in the ``__all__`` of a sub-module of this package; a name
    several modules list (a re-export) maps to the module that defines it."""
    global _exports
    if _exports is None:
        import importlib.util
        import pkgutil

        table: Dict[str, str] = {}
        defining: Set[str] = set()
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            module = f"{__name__}.{info.name}"
            spec = importlib.util.find_spec(module)
            source = spec.loader.get_source(module) if spec and spec.loader else None
            if source is None:
                continue
            listed, defined = _public_names(source, spec.origin or module)
            for name in listed:
                if name not in table or (name in defined and name not in defining):
                    table[name] = module
                    if name in defined:
                        defining.add(name)
        _exports = table
    return _exports


def __getattr__(name: str) -> Any:
    module = exports().get(name) if not name.startswith("__") else None
    if module is None:
        raise AttributeError(f"module 'tcpnet.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list:
    return sorted(set(globals()) | set(exports()))
