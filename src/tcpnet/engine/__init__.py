"""Training and evaluation engine: ``train(cfg)``, ``evaluate(model, loader)``, metrics,
distributed helpers and training checkpoints. The commands built on it (demo, test,
predict, explain, export, report) are in :mod:`tcpnet.apps`."""
from __future__ import annotations

import importlib
from typing import Any

# Lazy re-exports: name -> defining module (keeps `import tcpnet.engine` cheap).
_LAZY = {
    "train": "tcpnet.engine.train",
    "evaluate": "tcpnet.engine.evaluate",
    "EvalResult": "tcpnet.engine.evaluate",
    "fuse_views": "tcpnet.engine.evaluate",
    "build_optimizer": "tcpnet.engine.optim",
    "build_param_groups": "tcpnet.engine.optim",
    "base_lr_at": "tcpnet.engine.optim",
    "classification_metrics": "tcpnet.engine.metrics",
    "init_distributed": "tcpnet.engine.distributed",
    "load_training_checkpoint": "tcpnet.engine.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcpnet.engine' has no attribute {name!r}")
