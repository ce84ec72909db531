"""Video Swin's official checkpoint layouts (mmaction2 ``swin.py``, and the original
SwinTransformer/Video-Swin-Transformer repository) -> our names.

Both release ``{'state_dict': {...}}`` files of an mmaction ``Recognizer3D`` (the wrapper is
unwrapped by :func:`~tcpnet.checkpoints.convert.extract_state_dict`; ``{'model': ...}`` and a
plain state dict work too). The keys map one to one:

================================================  ==========================================
official                                          tcpnet
================================================  ==========================================
``backbone.patch_embed.*``, ``backbone.layers.*``  the same
``backbone.norm3.*`` (mmaction2)                   ``backbone.norm3.*``
``backbone.norm.*`` (original repository)          ``backbone.norm3.*``
``cls_head.fc_cls.*`` (I3DHead's classifier)       ``fc.*``
================================================  ==========================================

A backbone-only state dict (the same keys without ``backbone.``) is placed in the backbone. The
``relative_position_index`` buffers are state-dict entries in both official modules and in ours,
so they are loaded like any tensor (their values are a fixed function of the window). Any other
key, e.g. a 2-D ImageNet Swin's ``head.*`` or ``attn_mask``, is reported as unexpected by name.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Optional, Tuple

import torch

from .convert import Conversion, strip_module
from .io import CheckpointError

__all__ = ["is_swin3d", "swin3d_to_ours", "convert_swin3d"]

# Keys that identify the layout: the patch embedding and the first block's relative position bias.
_SIGNATURE = ("patch_embed.proj.weight", "layers.0.blocks.0.attn.relative_position_bias_table")
_BACKBONE, _CLASSIFIER = "backbone.", "cls_head.fc_cls."
_BACKBONE_PARTS = ("patch_embed.", "layers.", "norm")
_ORIGINAL_NORM = "norm."  # the original repository's final norm (mmaction2: norm3)
_FINAL_NORM = re.compile(r"^backbone\.(norm\d+)\.weight$")
_DEFAULT_FINAL_NORM = "norm3"


def _backbone_name(key: str) -> str:
    """The key without ``module.`` and ``backbone.``."""
    name = strip_module(key)
    return name[len(_BACKBONE):] if name.startswith(_BACKBONE) else name


def is_swin3d(keys: Iterable[str]) -> bool:
    """True when the keys are Video Swin's official ones (mmaction2's or the original repository's,
    whole recognizer or backbone only); tcpnet's own files (``head.*``/``fc.*``) are not."""
    keys = list(keys)
    names = {_backbone_name(k) for k in keys}
    ours = any(strip_module(k).startswith(("head.", "fc.")) for k in keys) and any(
        strip_module(k).startswith(_BACKBONE) for k in keys)
    return not ours and all(s in names for s in _SIGNATURE)


def swin3d_to_ours(key: str, final_norm: str = _DEFAULT_FINAL_NORM) -> Optional[str]:
    """Our key for an official key, or None; ``final_norm`` is the model's last norm (``norm3``)."""
    name = strip_module(key)
    if name.startswith(_CLASSIFIER):
        return "fc." + name[len(_CLASSIFIER):]
    if name.startswith("cls_head."):
        return None
    rest = _backbone_name(name)
    if not rest.startswith(_BACKBONE_PARTS):
        return None
    if rest.startswith(_ORIGINAL_NORM):
        rest = final_norm + "." + rest[len(_ORIGINAL_NORM):]
    return _BACKBONE + rest


def _final_norm(model_keys: Iterable[str]) -> str:
    """The model's final norm (``norm<stages-1>``), ``norm3`` when it has none."""
    for key in model_keys:
        match = _FINAL_NORM.match(key)
        if match:
            return match.group(1)
    return _DEFAULT_FINAL_NORM


def convert_swin3d(sd: Mapping[str, torch.Tensor],
                   model_keys: Iterable[str]) -> Tuple[Conversion, List[Tuple[str, str]]]:
    """Rename an official Video Swin state dict to our keys.

    Returns the conversion (unplaceable keys in ``unmapped``, reported as unexpected) and the
    ``(file key, why)`` pairs dropped by a rule (none: every official key has a place). Two file
    keys that land on one model key (``backbone.norm.weight`` and ``backbone.norm3.weight``) are a
    :class:`CheckpointError` naming both.
    """
    final_norm = _final_norm(model_keys)
    original = any(_backbone_name(k).startswith(_ORIGINAL_NORM) for k in sd)
    conv = Conversion({}, {}, converted_from="video swin (original repository, final 'norm')" if original
                      else "video swin (mmaction2)")
    for key, value in sd.items():
        ours = swin3d_to_ours(key, final_norm)
        if ours is None:
            conv.unmapped.append(key)
        elif ours in conv.state:
            raise CheckpointError(f"file keys {conv.origin[ours]!r} and {key!r} both map to model key {ours!r}")
        else:
            conv.state[ours], conv.origin[ours] = value, key
    return conv, []
