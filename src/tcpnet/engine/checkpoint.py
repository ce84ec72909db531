"""Training checkpoints: our model-file fields plus optimizer, scaler, epoch, best metric, RNG
states and config; written atomically (temp file + os.replace) so a crash never leaves a torn file.

A training checkpoint is also a valid model file (same "format"/"model_*" fields), so
``tcpnet.checkpoints.build_model_from_checkpoint("best.pt")`` works on it.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

__all__ = ["model_fields", "unwrap_model", "save_atomic", "load_training_checkpoint",
           "capture_rng_state", "restore_rng_state", "TRAINING_KEYS"]

TRAINING_KEYS = ("optimizer", "scaler", "schedule", "epoch", "best_metric", "rng", "config")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare Recognizer inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_fields(model: nn.Module, class_names: Optional[List[str]] = None) -> Dict[str, Any]:
    """Our model-file fields (CONTRACT: format tcpnet-model v1) for a Recognizer."""
    m = unwrap_model(model)
    ic = getattr(m, "input_config", None)
    return {
        "format": "tcpnet-model",
        "version": 1,
        "model_name": m.model_name,
        "model_kwargs": dict(m.model_kwargs),
        "num_classes": int(m.num_classes),
        "input_config": ic.to_dict() if ic is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "class_names": list(class_names) if class_names is not None else None,
    }


def save_atomic(obj: Any, path: Union[str, Path]) -> None:
    """torch.save to ``<path>.tmp`` in the same directory, fsync, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_training_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a training checkpoint on CPU (weights_only) and check it has the training fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("state_dict", "optimizer", "epoch") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a tcpnet training checkpoint (missing {missing}); "
                         "to start from a model file use model.pretrained instead of train.resume")
    return ckpt


def capture_rng_state() -> Dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as weights_only-loadable objects."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
