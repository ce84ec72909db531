"""VideoMAE ViT-S/16 and ViT-B/16 models: TCP on the backbone's 8 x 14 x 14 token maps (16
frames at 224), and the like-for-like baselines with VideoMAE's own head (token mean,
``fc_norm``, fc), whose keys map one to one onto the official fine-tuned files."""
from __future__ import annotations

from typing import Any

from tcpnet.models.recognizer import Recognizer
from tcpnet.models.registry import create_recognizer, register_model

__all__ = ["tcp_videomae_vit_small", "tcp_videomae_vit_base", "videomae_vit_small", "videomae_vit_base"]

# The official fine-tuning has no dropout before its classifier (fc_drop_rate 0).
_VIDEOMAE_HEAD = {"dropout": 0.0}


@register_model
def tcp_videomae_vit_small(num_classes: int = 400, num_segments: int = 16, **overrides: Any) -> Recognizer:
    """TCP on VideoMAE ViT-S/16: reductions 384 -> 256 -> 128 (the zoo's mid 256 / dim 128,
    overridable), T' = T/2 frames of 14x14 tokens at 224."""
    return create_recognizer("videomae_vit_small", "tcp", num_classes, num_segments, overrides)


@register_model
def tcp_videomae_vit_base(num_classes: int = 400, num_segments: int = 16, **overrides: Any) -> Recognizer:
    """TCP on VideoMAE ViT-B/16: reductions 768 -> 256 -> 128 (overridable), T' = T/2 on 14x14."""
    return create_recognizer("videomae_vit_base", "tcp", num_classes, num_segments, overrides)


@register_model
def videomae_vit_small(num_classes: int = 400, num_segments: int = 16, **overrides: Any) -> Recognizer:
    """VideoMAE ViT-S/16 as published: token mean, ``fc_norm``, linear classifier (no dropout)."""
    return create_recognizer("videomae_vit_small", "mean_norm", num_classes, num_segments,
                             {**_VIDEOMAE_HEAD, **overrides})


@register_model
def videomae_vit_base(num_classes: int = 400, num_segments: int = 16, **overrides: Any) -> Recognizer:
    """VideoMAE ViT-B/16 as published: token mean, ``fc_norm``, linear classifier (no dropout)."""
    return create_recognizer("videomae_vit_base", "mean_norm", num_classes, num_segments,
                             {**_VIDEOMAE_HEAD, **overrides})
