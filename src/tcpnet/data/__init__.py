"""Video data: readers, sampling, transforms, list formats, datasets, synthetic data, tools."""
from __future__ import annotations

import importlib
from typing import Any

# Lazy re-exports: name -> defining module (keeps `import tcpnet.data` cheap and lets the
# sub-modules load independently).
_LAZY = {
    "load_clip": "tcpnet.data.clip",
    "probe": "tcpnet.data.clip",
    "VideoInfo": "tcpnet.data.clip",
    "DecodeError": "tcpnet.data.clip",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcpnet.data' has no attribute {name!r}")
