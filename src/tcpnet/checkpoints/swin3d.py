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
key is reported as unexpected by name.

The 2-D ImageNet Swin (microsoft/Swin-Transformer's ``swin_*_patch4_window7_224.pth``, keys under
``model``), which the published Video Swin recipes start from, is recognised by its 2-D patch
embedding (a 4-D conv kernel) and 2-D bias tables ((2*Wh-1)*(2*Ww-1) rows), and inflated to the
model's 3-D shapes as mmaction2's ``SwinTransformer3D.inflate_weights`` does:

* ``patch_embed.proj.weight`` (C, 3, h, w) -> repeated over the model's temporal patch size ``pt``
  and divided by it (a clip of identical frames gives the 2-D embedding);
* each ``relative_position_bias_table``: resized bicubically to the model's window (2*Wh-1, 2*Ww-1)
  when it differs, then repeated for the 2*Wd-1 temporal offsets;
* ``relative_position_index`` (2-D) and ``attn_mask`` buffers are dropped: the model's own index
  (a function of its 3-D window) is kept and masks are built per input;
* the final ``norm`` becomes ``norm3`` (as for the original Video Swin files) and the ImageNet
  classifier ``head.*`` is the pretraining classifier ``fc.*`` (dropped unless it fits the model's fc).
"""
from __future__ import annotations

import logging
import math
import re
from typing import Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from tcpnet.backbones.swin3d import relative_position_index

from .convert import Conversion, strip_module
from .io import CheckpointError

__all__ = ["is_swin3d", "is_swin2d", "swin3d_to_ours", "convert_swin3d", "inflate_swin2d"]

log = logging.getLogger(__name__)

# Keys that identify the layout: the patch embedding and the first block's relative position bias.
_SIGNATURE = ("patch_embed.proj.weight", "layers.0.blocks.0.attn.relative_position_bias_table")
_BACKBONE, _CLASSIFIER = "backbone.", "cls_head.fc_cls."
_BACKBONE_PARTS = ("patch_embed.", "layers.", "norm")
_ORIGINAL_NORM = "norm."  # the original repository's final norm (mmaction2: norm3)
_FINAL_NORM = re.compile(r"^backbone\.(norm\d+)\.weight$")
_DEFAULT_FINAL_NORM = "norm3"
_PATCH, _TABLE, _INDEX, _MASK = "patch_embed.proj.weight", "relative_position_bias_table", "relative_position_index", "attn_mask"
_CLASSIFIER_2D = "head."  # the 2-D ImageNet model's classifier


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


def is_swin2d(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for a 2-D Swin (ImageNet) state dict: a 4-D patch-embedding kernel and the first
    block's bias table with a square number of rows, (2*W-1)^2 (call after :func:`is_swin3d`)."""
    names = {_backbone_name(k): v for k, v in sd.items()}
    patch, table = names.get(_PATCH), names.get(f"layers.0.blocks.0.attn.{_TABLE}")
    if patch is None or table is None or patch.dim() != 4 or table.dim() != 2:
        return False
    side = math.isqrt(int(table.shape[0]))
    return side * side == int(table.shape[0]) and side % 2 == 1


def _window_of(index: torch.Tensor, rows: int, key: str) -> Tuple[int, int, int]:
    """The 3-D window (Wd, Wh, Ww) of a block: the one whose relative position index is the model's
    buffer ``index`` and whose bias table has ``rows`` rows. A model on the meta device has no index
    values: the first window its shapes allow is as good as any there (only shapes are computed)."""
    n = int(index.shape[0])
    for wd in (d for d in range(1, n + 1) if n % d == 0):
        for wh in (h for h in range(1, n // wd + 1) if (n // wd) % h == 0):
            window = (wd, wh, n // wd // wh)
            if math.prod(2 * w - 1 for w in window) != rows:
                continue
            if index.is_meta or torch.equal(relative_position_index(window), index.cpu()):
                return window
    raise CheckpointError(f"model key {key}: not the relative position index of a 3-D window with a {rows}-row bias table")


def _inflate_table(table: torch.Tensor, window: Tuple[int, int, int], key: str) -> torch.Tensor:
    """A 2-D bias table ((2Wh'-1)(2Ww'-1), nH) on the 3-D window: resized bicubically to the
    window's (2Wh-1, 2Ww-1) when it differs, then repeated for the 2Wd-1 temporal offsets."""
    wd, wh, ww = window
    rows, heads = int(table.shape[0]), int(table.shape[1])
    size = (2 * wh - 1, 2 * ww - 1)
    if rows != size[0] * size[1]:
        side = math.isqrt(rows)
        if side * side != rows:
            raise CheckpointError(f"file key {key}: {rows} rows is not a square 2-D bias table, cannot resize it to {size}")
        grid = table.t().reshape(1, heads, side, side)
        table = F.interpolate(grid, size=size, mode="bicubic").reshape(heads, -1).t()
    return table.repeat(2 * wd - 1, 1)


def inflate_swin2d(conv: Conversion, model_state: Mapping[str, torch.Tensor]) -> List[Tuple[str, str]]:
    """Inflate a converted 2-D Swin in place to the model's 3-D shapes (see the module docstring);
    returns the ``(file key, why)`` pairs dropped. Entries the model lacks, or whose head count or
    channels differ, are left as they are (the load reports them)."""
    dropped: List[Tuple[str, str]] = []
    patch = _BACKBONE + _PATCH
    if patch in conv.state and patch in model_state and model_state[patch].dim() == 5:
        pt = int(model_state[patch].shape[2])
        conv.state[patch] = conv.state[patch].unsqueeze(2).repeat(1, 1, pt, 1, 1) / pt
    tables, resized = 0, 0
    for key in [k for k in conv.state if k.endswith(_TABLE)]:
        index_key = key[:-len(_TABLE)] + _INDEX
        if key in model_state and index_key in model_state and conv.state[key].shape[1] == model_state[key].shape[1]:
            window = _window_of(model_state[index_key], int(model_state[key].shape[0]), index_key)
            rows = int(conv.state[key].shape[0])
            conv.state[key] = _inflate_table(conv.state[key], window, conv.origin[key])
            tables, resized = tables + 1, resized + (rows * (2 * window[0] - 1) != conv.state[key].shape[0])
    for key in [k for k in conv.state if k.endswith((_INDEX, _MASK))]:
        if key.endswith(_MASK):
            dropped.append((conv.origin.pop(key), "2-D shifted-window mask; the 3-D model builds its own"))
            del conv.state[key]
        elif key in model_state:
            dropped.append((conv.origin[key], "2-D relative position index; the 3-D window's own is kept"))
            conv.state[key] = model_state[key].clone()
    log.info("inflated a 2-D Swin to 3-D (as mmaction2's inflate_weights): patch embedding repeated over %s "
             "frames, %d relative position bias tables repeated over the window's temporal offsets (%d of them "
             "resized bicubically to the window first)", tuple(model_state[patch].shape)[2] if patch in model_state
             else "?", tables, resized)
    return dropped


def _swin2d_to_ours(key: str, final_norm: str) -> Optional[str]:
    """Our key for a 2-D ImageNet Swin key: the backbone's as for Video Swin, ``head.*`` -> ``fc.*``."""
    name = strip_module(key)
    if name.startswith(_CLASSIFIER_2D):
        return "fc." + name[len(_CLASSIFIER_2D):]
    return swin3d_to_ours(key, final_norm)


def convert_swin3d(sd: Mapping[str, torch.Tensor],
                   model_state: Mapping[str, torch.Tensor]) -> Tuple[Conversion, List[Tuple[str, str]]]:
    """Rename an official Video Swin state dict to our keys; a 2-D ImageNet Swin is also inflated
    to the shapes of ``model_state`` (the model's state dict, :func:`inflate_swin2d`).

    Returns the conversion (unplaceable keys in ``unmapped``, reported as unexpected) and the
    ``(file key, why)`` pairs dropped by a rule (none for a 3-D file: every official key has a
    place). Two file keys that land on one model key (``backbone.norm.weight`` and
    ``backbone.norm3.weight``) are a :class:`CheckpointError` naming both.
    """
    final_norm = _final_norm(model_state)
    two_d = is_swin2d(sd)
    original = any(_backbone_name(k).startswith(_ORIGINAL_NORM) for k in sd)
    conv = Conversion({}, {}, converted_from="2-D swin (ImageNet), inflated to 3-D" if two_d else
                      "video swin (original repository, final 'norm')" if original else "video swin (mmaction2)",
                      pretraining_classifier=two_d)
    rename = _swin2d_to_ours if two_d else swin3d_to_ours
    for key, value in sd.items():
        ours = rename(key, final_norm)
        if ours is None:
            conv.unmapped.append(key)
        else:
            conv.add(ours, key, value)
    return conv, inflate_swin2d(conv, model_state) if two_d else []
