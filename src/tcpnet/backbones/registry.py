"""Name -> factory table for backbones, so models can pick one by a string (timm-style)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List

from torch import nn

logger = logging.getLogger(__name__)

_BACKBONES: Dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory under its function name."""
    name = fn.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered (by {_BACKBONES[name].__module__})")
    _BACKBONES[name] = fn
    return fn


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name``; keyword arguments go to its factory."""
    try:
        factory = _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; expected one of {list_backbones()}") from None
    logger.debug("creating backbone %s with %s", name, kwargs)
    return factory(**kwargs)


def list_backbones() -> List[str]:
    """Sorted names accepted by :func:`create_backbone`."""
    return sorted(_BACKBONES)
