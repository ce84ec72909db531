"""Name -> factory table for backbones (timm-style), with the input each one expects.

A factory owns its keyword arguments: ``create_backbone(name, **kw)`` passes them on unchanged,
so an option the backbone does not have is a ``TypeError`` naming it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, TypeVar

from torch import nn

from tcpnet.input_config import InputConfig

__all__ = ["register_backbone", "create_backbone", "list_backbones", "get_backbone",
           "backbone_input_config"]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_BACKBONES: Dict[str, Callable[..., nn.Module]] = {}
_INPUT_CONFIGS: Dict[str, InputConfig] = {}


def register_backbone(fn: Optional[Factory] = None, *, input_config: Optional[InputConfig] = None) -> Any:
    """Decorator: register a factory under its function name, with the input its weights expect
    (default: ImageNet mean/std on 0-1 pixels, crop 224). ``@register_backbone`` or
    ``@register_backbone(input_config=...)``."""

    def register(factory: Factory) -> Factory:
        name = factory.__name__
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered (by {_BACKBONES[name].__module__})")
        _BACKBONES[name] = factory
        _INPUT_CONFIGS[name] = input_config if input_config is not None else InputConfig()
        return factory

    return register(fn) if fn is not None else register


def get_backbone(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name`` (its signature lists the options it accepts)."""
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; expected one of {list_backbones()}") from None


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name``; keyword arguments go to its factory."""
    return get_backbone(name)(**kwargs)


def backbone_input_config(name: str) -> InputConfig:
    """What the backbone ``name`` expects of its input pixels (mean, std, value scale, crop)."""
    get_backbone(name)
    return _INPUT_CONFIGS[name]


def list_backbones() -> List[str]:
    """Sorted names accepted by :func:`create_backbone`."""
    return sorted(_BACKBONES)
