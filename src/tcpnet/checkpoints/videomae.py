"""VideoMAE's official checkpoint layout (MCG-NJU/VideoMAE ``modeling_finetune.py``) -> our names.

Official files come as ``{'module': state}`` (DeepSpeed), ``{'model': state}`` or a plain state
dict (the wrappers are unwrapped by :func:`~tcpnet.checkpoints.convert.extract_state_dict`).
A fine-tuned model's keys map one to one:

=====================================  =====================================
official                               tcpnet
=====================================  =====================================
``patch_embed.*``, ``blocks.<i>.*``    ``backbone.patch_embed.*``, ``backbone.blocks.<i>.*``
``fc_norm.*`` (mean-pooling norm)      ``head.fc_norm.*`` (the ``mean_norm`` head)
``head.*`` (classifier)                ``fc.*``
=====================================  =====================================

A pre-training file (``modeling_pretrain.py``) holds the encoder under ``encoder.`` (stripped)
beside the MAE decoder. The decoder (``decoder.*``, ``encoder_to_decoder.*``, ``mask_token``) and
the encoder's final ``norm`` are dropped, with that reason in the load report, as the official
fine-tuning leaves them out (its ``norm`` is an identity under mean pooling and ``fc_norm``
starts fresh). Any other key, e.g. ``norm.*`` of a model fine-tuned without mean pooling or a
``gamma_1`` the model was not built for (``init_values``), is reported as unexpected by name.
"""
from __future__ import annotations

from typing import Iterable, List, Mapping, Optional, Set, Tuple

import torch

from .convert import Conversion, strip_module

__all__ = ["is_videomae", "videomae_to_ours", "convert_videomae"]

_ENCODER = "encoder."
# Keys that identify the layout: the tubelet embedding and VideoMAE's split q/v attention bias.
_SIGNATURE = ("patch_embed.proj.weight", "blocks.0.attn.q_bias")
_RENAMES = (("patch_embed.", "backbone.patch_embed."), ("blocks.", "backbone.blocks."),
            ("fc_norm.", "head.fc_norm."), ("head.", "fc."))
_DECODER = ("decoder.", "encoder_to_decoder.", "mask_token")
_WHY_DECODER = "VideoMAE pre-training decoder; fine-tuning keeps the encoder only"
_WHY_ENCODER_NORM = ("VideoMAE pre-training encoder's final norm; under mean pooling the fine-tuned "
                     "model has none (its fc_norm starts fresh)")


def _official(key: str) -> Tuple[str, bool]:
    """The key without ``module.``/``encoder.``, and whether it was under ``encoder.``."""
    name = strip_module(key)
    if name.startswith(_ENCODER):
        return name[len(_ENCODER):], True
    return name, False


def is_videomae(keys: Iterable[str]) -> bool:
    """True when the keys are VideoMAE's official ones (fine-tuned, or a pre-training encoder)."""
    names = {_official(k)[0] for k in keys}
    return all(s in names for s in _SIGNATURE)


def videomae_to_ours(name: str) -> Optional[str]:
    """Our key for an official fine-tuned key (``module.``/``encoder.`` already stripped), or None."""
    for theirs, ours in _RENAMES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


def _drop_reason(key: str, name: str, under_encoder: bool, model_keys: Set[str]) -> Optional[str]:
    """Why a file key is left out by a layout rule, or None when it must be placed or reported."""
    if strip_module(key).startswith(_DECODER):
        return _WHY_DECODER
    if under_encoder and name.startswith("norm."):
        return _WHY_ENCODER_NORM
    ours = videomae_to_ours(name)
    if ours is not None and ours.startswith("head.fc_norm.") and ours not in model_keys:
        return "VideoMAE's mean-pooling norm; this model's head has no fc_norm"
    return None


def convert_videomae(sd: Mapping[str, torch.Tensor],
                     model_keys: Iterable[str]) -> Tuple[Conversion, List[Tuple[str, str]]]:
    """Rename an official VideoMAE state dict to our keys.

    Returns the conversion (unplaceable keys in ``unmapped``, reported as unexpected) and the
    ``(file key, why)`` pairs dropped by the pre-training and head rules of the module docstring.
    Two file keys that land on one model key (e.g. ``blocks.0.x`` and ``encoder.blocks.0.x``) are
    a :class:`CheckpointError` naming both.
    """
    keys = set(model_keys)
    pretraining = any(strip_module(k).startswith(_ENCODER) for k in sd)
    conv = Conversion({}, {}, converted_from="videomae (pre-training encoder)" if pretraining
                      else "videomae (fine-tuned)")
    dropped: List[Tuple[str, str]] = []
    for key, value in sd.items():
        name, under_encoder = _official(key)
        why = _drop_reason(key, name, under_encoder, keys)
        ours = videomae_to_ours(name)
        if why is not None:
            dropped.append((key, why))
        elif ours is None:
            conv.unmapped.append(key)
        else:
            conv.add(ours, key, value)
    return conv, dropped
