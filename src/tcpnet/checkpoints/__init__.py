"""Saving, loading and converting weights: the authors' releases, ImageNet GCP files, torchvision, ours.

Every file is read with ``torch.load(map_location="cpu", weights_only=True)`` (or safetensors):
a checkpoint that needs arbitrary unpickling is refused instead of executed.
"""
from __future__ import annotations

from .convert import convert_state_dict, map_old_keys, old_key_candidates
from .io import CheckpointError, check_not_same_file, export_safetensors, read_file, save_model
from .load import (
    LoadReport,
    build_model_from_checkpoint,
    convert_checkpoint,
    load_checkpoint,
    load_pretrained,
)

__all__ = [
    "CheckpointError",
    "check_not_same_file",
    "LoadReport",
    "build_model_from_checkpoint",
    "convert_checkpoint",
    "convert_state_dict",
    "export_safetensors",
    "load_checkpoint",
    "load_pretrained",
    "map_old_keys",
    "old_key_candidates",
    "read_file",
    "save_model",
]
