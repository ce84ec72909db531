"""Offline tools around the data: dataset preparation (`tcpnet prepare`) and the synthetic
order-dependent dataset (`tcpnet synth`, `tcpnet demo`). They use `tcpnet.data`; the runtime
data package never imports them."""
import importlib
from typing import Any

_LAZY = {
    "make_synthetic_dataset": "tcpnet.tools.synthetic",
    "SyntheticDataset": "tcpnet.tools.synthetic",
    "SyntheticSpec": "tcpnet.tools.synthetic",
    "extract_frames": "tcpnet.tools.prepare",
    "reencode_videos": "tcpnet.tools.prepare",
    "build_list": "tcpnet.tools.prepare",
    "make_mini_kinetics200": "tcpnet.tools.prepare",
    "scan_videos": "tcpnet.tools.prepare",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcpnet.tools' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
