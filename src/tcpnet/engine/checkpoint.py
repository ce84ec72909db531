"""Training checkpoints: the model-file fields plus optimizer, scaler, epoch, best metric, RNG
states and config. They are written and read by the same code as model files
(``tcpnet.checkpoints.io``): atomic writes, ``weights_only`` reads, one ``CheckpointError``.

A training checkpoint is also a valid model file, so
``tcpnet.checkpoints.build_model_from_checkpoint("best.pt")`` works on it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from tcpnet.checkpoints.io import CheckpointError, atomic_torch_save, read_file

__all__ = ["save_training_checkpoint", "load_training_checkpoint", "capture_rng_state",
           "restore_rng_state"]

_REQUIRED = ("state_dict", "optimizer", "epoch")


def save_training_checkpoint(ckpt: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Write ``ckpt`` atomically (temp file, fsync, rename) to ``path``."""
    return atomic_torch_save(ckpt, path)


def load_training_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a training checkpoint on CPU without running code; any unreadable, truncated,
    malicious or non-training file is one ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training checkpoint not found")
    ckpt = read_file(path)
    missing = [k for k in _REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a tcpnet training checkpoint (missing {missing}); to "
                              "start from a model file use model.pretrained instead of train.resume")
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
