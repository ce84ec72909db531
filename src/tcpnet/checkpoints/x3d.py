"""pytorchvideo's X3D checkpoint layout (``create_x3d``; hub ``x3d_s``, ``x3d_m``) -> our names.

Its files come as ``{'model_state': state, ...}`` (the hub's ``X3D_S.pyth``/``X3D_M.pyth``) or a
plain state dict (the wrapper is unwrapped by :func:`~tcpnet.checkpoints.convert.extract_state_dict`;
a ``module.`` prefix is stripped). The keys map one to one:

===============================  ===========================================
pytorchvideo                     tcpnet
===============================  ===========================================
``blocks.<0-4>.*`` (stem, stages) ``backbone.blocks.<0-4>.*``
``blocks.5.pool.*`` (projection)  ``head.*`` (the ``projected_pool`` head)
``blocks.5.proj.*`` (classifier)  ``fc.*``
===============================  ===========================================

Into a model whose head is not the projected pool (TCP on X3D), the ``blocks.5.pool.*`` keys are
dropped with that reason in the load report, so ``load_pretrained`` fills the whole backbone.
Any other key (a ``blocks.5.pool.post_norm`` of a model built with ``head_bn_lin5_on``, a sixth
stage) is reported as unexpected by name.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Optional, Tuple

import torch

from .convert import Conversion, strip_module

__all__ = ["is_x3d", "x3d_to_ours", "convert_x3d"]

# Keys that identify the layout: the stem's factorised convolution and the projected-pool head.
_SIGNATURE = ("blocks.0.conv.conv_t.weight", "blocks.5.pool.pre_conv.weight")
_BACKBONE = re.compile(r"^blocks\.[0-4]\.")
_HEAD_POOL, _HEAD_PROJ = "blocks.5.pool.", "blocks.5.proj."
_WHY_HEAD = "X3D's projected-pool head; this model's head has none"


def is_x3d(keys: Iterable[str]) -> bool:
    """True when the keys are pytorchvideo's X3D ones (``module.`` ignored)."""
    names = {strip_module(k) for k in keys}
    return all(s in names for s in _SIGNATURE)


def x3d_to_ours(name: str) -> Optional[str]:
    """Our key for a pytorchvideo X3D key (``module.`` already stripped), or None."""
    if _BACKBONE.match(name):
        return "backbone." + name
    if name.startswith(_HEAD_POOL):
        return "head." + name[len(_HEAD_POOL):]
    if name.startswith(_HEAD_PROJ):
        return "fc." + name[len(_HEAD_PROJ):]
    return None


def convert_x3d(sd: Mapping[str, torch.Tensor],
                model_keys: Iterable[str]) -> Tuple[Conversion, List[Tuple[str, str]]]:
    """Rename a pytorchvideo X3D state dict to our keys.

    Returns the conversion (unplaceable keys in ``unmapped``, reported as unexpected) and the
    ``(file key, why)`` pairs of the projected-pool head dropped for a model without it. Two file
    keys that land on one model key (``x`` and ``module.x``) are a :class:`CheckpointError`
    naming both.
    """
    keys = set(model_keys)
    has_pool_head = "head.pre_conv.weight" in keys
    conv = Conversion({}, {}, converted_from="pytorchvideo x3d")
    dropped: List[Tuple[str, str]] = []
    for key, value in sd.items():
        name = strip_module(key)
        ours = x3d_to_ours(name)
        if ours is None:
            conv.unmapped.append(key)
        elif name.startswith(_HEAD_POOL) and not has_pool_head:
            dropped.append((key, _WHY_HEAD))
        else:
            conv.add(ours, key, value)
    return conv, dropped
