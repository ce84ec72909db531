"""tcpnet: video recognition with Temporal-attentive Covariance Pooling (TCPNet, NeurIPS 2021)."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Lazy top-level API so that `import tcpnet` stays cheap and sub-packages load on first use.
_LAZY = {
    "build_model": "tcpnet.models",
    "list_models": "tcpnet.models",
    "load_checkpoint": "tcpnet.checkpoints",
    "load_pretrained": "tcpnet.checkpoints",
    "InputConfig": "tcpnet.input_config",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcpnet' has no attribute {name!r}")
