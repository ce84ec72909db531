"""Video Swin-T/S/B models: TCP on the backbone's 16 x 7 x 7 maps (32 frames at 224), and the
like-for-like baselines with Swin's published head (mmaction2's ``I3DHead``: average pooling over
T', h, w, dropout 0.5, a linear ``fc_cls``), whose keys map one to one onto mmaction2's files."""
from __future__ import annotations

from typing import Any

from tcpnet.models.recognizer import Recognizer
from tcpnet.models.registry import create_recognizer, register_model

__all__ = ["tcp_swin3d_tiny", "tcp_swin3d_small", "tcp_swin3d_base", "swin3d_tiny", "swin3d_small",
           "swin3d_base"]

# I3DHead(dropout_ratio=0.5) of every mmaction2 Swin config: the Recognizer's own default dropout.
_I3D_HEAD = {"dropout": 0.5}


@register_model
def tcp_swin3d_tiny(num_classes: int = 400, num_segments: int = 32, **overrides: Any) -> Recognizer:
    """TCP on Video Swin-T: reductions 768 -> 256 -> 128 (the zoo's mid 256 / dim 128,
    overridable), T' = T/2 frames of 7x7 maps at 224."""
    return create_recognizer("swin3d_tiny", "tcp", num_classes, num_segments, overrides)


@register_model
def tcp_swin3d_small(num_classes: int = 400, num_segments: int = 32, **overrides: Any) -> Recognizer:
    """TCP on Video Swin-S: reductions 768 -> 256 -> 128 (overridable), T' = T/2 on 7x7."""
    return create_recognizer("swin3d_small", "tcp", num_classes, num_segments, overrides)


@register_model
def tcp_swin3d_base(num_classes: int = 400, num_segments: int = 32, **overrides: Any) -> Recognizer:
    """TCP on Video Swin-B: reductions 1024 -> 256 -> 128 (overridable), T' = T/2 on 7x7."""
    return create_recognizer("swin3d_base", "tcp", num_classes, num_segments, overrides)


@register_model
def swin3d_tiny(num_classes: int = 400, num_segments: int = 32, **overrides: Any) -> Recognizer:
    """Video Swin-T as published: average pooling over T', h, w, dropout 0.5, linear classifier."""
    return create_recognizer("swin3d_tiny", "gap", num_classes, num_segments, {**_I3D_HEAD, **overrides})


@register_model
def swin3d_small(num_classes: int = 400, num_segments: int = 32, **overrides: Any) -> Recognizer:
    """Video Swin-S as published: average pooling over T', h, w, dropout 0.5, linear classifier."""
    return create_recognizer("swin3d_small", "gap", num_classes, num_segments, {**_I3D_HEAD, **overrides})


@register_model
def swin3d_base(num_classes: int = 400, num_segments: int = 32, **overrides: Any) -> Recognizer:
    """Video Swin-B as published: average pooling over T', h, w, dropout 0.5, linear classifier."""
    return create_recognizer("swin3d_base", "gap", num_classes, num_segments, {**_I3D_HEAD, **overrides})
