"""Loading code that registers backbones, heads, list formats and loop hooks.

Three ways, one result (the module's ``@register_*`` decorators run): every module inside a
registry's own package (:func:`import_submodules`, so a new file there needs no other edit),
modules named by a config's ``imports:`` key, and installed packages that declare an entry
point in the ``tcpnet.plugins`` group (:func:`load_entry_points`).
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from typing import Iterable, List, Set

logger = logging.getLogger(__name__)

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "import_submodules", "load_imports", "load_entry_points",
           "load_plugins"]

ENTRY_POINT_GROUP = "tcpnet.plugins"
_LOADED_ENTRY_POINTS: Set[str] = set()


class PluginError(ImportError):
    """A module named in ``imports:`` or by an entry point could not be imported."""


def import_submodules(package: str) -> List[str]:
    """Import every module under ``package`` (recursively); returns their names. Used by the
    registries so that a new module in their package registers itself without an edit elsewhere."""
    pkg = sys.modules.get(package) or importlib.import_module(package)
    names = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue  # private helpers and __main__ are not plugins
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def load_imports(modules: Iterable[str], source: str = "imports") -> List[str]:
    """Import each module of a config's ``imports:`` list (its registrations run); an unimportable
    one is a :class:`PluginError` naming it and ``source``."""
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise PluginError(f"{source}: cannot import {name!r} ({type(e).__name__}: {e}); the module "
                              "must be importable (on sys.path / PYTHONPATH, or installed)") from e
        done.append(name)
    return done


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> List[str]:
    """Load the installed packages' ``tcpnet.plugins`` entry points once per process."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        key = f"{ep.name}={ep.value}"
        if key in _LOADED_ENTRY_POINTS:
            continue
        try:
            ep.load()
        except Exception as e:
            raise PluginError(f"entry point {key} (group {group}): cannot load ({type(e).__name__}: {e})") from e
        _LOADED_ENTRY_POINTS.add(key)
        loaded.append(key)
        logger.debug("loaded plugin %s", key)
    return loaded


def load_plugins(imports: Iterable[str] = (), source: str = "imports") -> List[str]:
    """Installed entry points, then the config's ``imports:`` modules."""
    return load_entry_points() + load_imports(imports, source)
