"""X3D-S and X3D-M models: TCP on the last stage's 192-channel maps (T' = T: 13 x 5 x 5 for X3D-S
at 160, 16 x 7 x 7 for X3D-M at 224), and the like-for-like baselines with X3D's own projected-pool
head (192 -> 432, BN, ReLU, average pooling, -> 2048, ReLU, dropout 0.5, fc), whose keys map one
to one onto pytorchvideo's hub files."""
from __future__ import annotations

from typing import Any

from tcpnet.models.recognizer import Recognizer
from tcpnet.models.registry import create_recognizer, register_model

__all__ = ["tcp_x3d_s", "tcp_x3d_m", "x3d_s", "x3d_m"]

# create_x3d's dropout_rate before its classifier (also the Recognizer's default, stated here).
_X3D_HEAD = {"dropout": 0.5}


@register_model
def tcp_x3d_s(num_classes: int = 400, num_segments: int = 13, **overrides: Any) -> Recognizer:
    """TCP on X3D-S: reductions 192 -> 256 -> 128 (the zoo's mid 256 / dim 128, overridable) on
    T' = T frames of 5x5 maps at 160."""
    return create_recognizer("x3d_s", "tcp", num_classes, num_segments, overrides)


@register_model
def tcp_x3d_m(num_classes: int = 400, num_segments: int = 16, **overrides: Any) -> Recognizer:
    """TCP on X3D-M: reductions 192 -> 256 -> 128 (overridable) on T' = T frames of 7x7 at 224."""
    return create_recognizer("x3d_m", "tcp", num_classes, num_segments, overrides)


@register_model
def x3d_s(num_classes: int = 400, num_segments: int = 13, **overrides: Any) -> Recognizer:
    """X3D-S as published (pytorchvideo hub ``x3d_s``): projected pooling to 2048, dropout 0.5, fc."""
    return create_recognizer("x3d_s", "projected_pool", num_classes, num_segments, {**_X3D_HEAD, **overrides})


@register_model
def x3d_m(num_classes: int = 400, num_segments: int = 16, **overrides: Any) -> Recognizer:
    """X3D-M as published (pytorchvideo hub ``x3d_m``): projected pooling to 2048, dropout 0.5, fc."""
    return create_recognizer("x3d_m", "projected_pool", num_classes, num_segments, {**_X3D_HEAD, **overrides})
