"""The backbone contract, and the published initialisation shared by the ResNet family.

A backbone turns a batch of clips into feature maps for a pooling head. It declares how it
wants its input with the class attribute ``layout``:

``"frames"``
    A 2-D network applied per frame. Input ``(B*T, 3, H, W)``, video-major (row ``b*T + t`` is
    frame ``t`` of clip ``b``); output ``(B*T, C, h, w)``. Temporal modules inside it (TSM
    shift, TEA motion excitation) hold T read-only (:class:`~tcpnet.backbones.temporal.
    TemporalModule`), and so does the backbone (``num_segments``); the owning Recognizer sets it.
``"video"``
    A network over whole clips (3-D convolutions). Input ``(B, 3, T, H, W)``; output
    ``(B*T', C, h, w)``, video-major over its ``T'`` output frames. It holds no T:
    ``output_segments(T)`` says what ``T'`` a clip of T frames gives (R(2+1)D-18: 16 -> 2).

Either way ``num_features`` is ``C``, and :meth:`VideoBackbone.output_segments` is the number of
frames per clip the head receives. What a backbone expects of its pixels (mean, std, value
scale, crop) is registered with its factory (``register_backbone(input_config=...)``) and kept,
once, by the Recognizer.
"""
from __future__ import annotations

from typing import ClassVar, Dict, Optional, Tuple

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tcpnet.backbones.temporal import TemporalModule

__all__ = ["LAYOUTS", "VideoBackbone", "FrameBackbone", "init_weights", "init_transformer_weights"]

LAYOUTS: Tuple[str, ...] = ("frames", "video")


class VideoBackbone(nn.Module):
    """Base of every backbone: ``layout`` (``"frames"`` or ``"video"``), ``num_features`` and
    ``output_segments``; see the module docstring for the input/output contract."""

    layout: ClassVar[str] = "frames"
    num_features: int

    def output_segments(self, num_segments: int) -> int:
        """Frames per clip in the output feature maps for clips of ``num_segments`` frames."""
        return num_segments

    def layer_ids(self) -> Optional[Dict[str, int]]:
        """For layer-wise learning-rate decay (``train.layer_decay``): each parameter name (relative
        to the backbone) -> its depth, 0 at the input; None when the backbone declares no layers."""
        return None


class FrameBackbone(VideoBackbone, TemporalModule):
    """A ``"frames"`` backbone: per-frame 2-D network whose temporal modules hold T (read-only
    ``num_segments``; set at construction and then only by the owning Recognizer)."""

    layout: ClassVar[str] = "frames"


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal(fan_out) on every Conv2d/Conv3d (std sqrt(2/fan_out), groups ignored as in
    PyTorch and torchvision), weight 1 / bias 0 on every BatchNorm. Conv1d (TEA shifts) is
    left alone: those keep their identity/shift initialisation."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_transformer_weights(module: nn.Module) -> None:
    """The ViT/Swin initialisation from scratch: every Linear normal(std 0.02) with zero bias,
    LayerNorms 1/0 (the official truncated normal cuts at +-2, i.e. 100 std, so it never
    truncates: the same distribution as ``normal_``, at half the cost)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
