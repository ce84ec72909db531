"""Name -> head class table, mirroring the model and backbone registries: a new head is one file
with ``@register_head("name")`` on its class, imported by ``tcpnet.heads``."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Type, TypeVar

from torch import nn

__all__ = ["register_head", "create_head", "get_head", "list_heads"]

HeadType = TypeVar("HeadType", bound=Type[nn.Module])

_HEADS: Dict[str, Type[nn.Module]] = {}


def register_head(name: str) -> Callable[[HeadType], HeadType]:
    """Class decorator: register a head under ``name``. Its ``__init__`` takes ``in_channels``
    first, ``num_segments`` if its weights depend on T, and owns every other option's default."""

    def register(cls: HeadType) -> HeadType:
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered (by {_HEADS[name].__module__})")
        _HEADS[name] = cls
        return cls

    return register


def get_head(name: str) -> Type[nn.Module]:
    """The head class registered as ``name``."""
    try:
        return _HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; expected one of {list_heads()}") from None


def create_head(name: str, in_channels: int, num_segments: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """Build head ``name`` for ``in_channels`` feature maps. ``num_segments`` is passed only to a
    head that takes it (one whose weights depend on T); other keywords go to the class as they are."""
    cls = get_head(name)
    if num_segments is not None and "num_segments" in inspect.signature(cls).parameters:
        kwargs["num_segments"] = num_segments
    return cls(in_channels, **kwargs)


def list_heads() -> List[str]:
    """Sorted names accepted by :func:`create_head`."""
    return sorted(_HEADS)
