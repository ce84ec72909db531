"""2-D backbones with temporal modules: ``(N*T, 3, H, W) -> (N*T, C, h, w)`` frame feature maps.

``create_backbone(name, **kw)`` builds one by name (see ``list_backbones()``); every backbone
carries ``num_features``, ``input_config`` and ``num_segments``.
"""
from tcpnet.backbones.base import VideoBackbone, init_weights
from tcpnet.backbones.preact_resnet import PreactBottleneck, PreactResNet, preact_resnet, preact_resnet152
from tcpnet.backbones.registry import create_backbone, list_backbones, register_backbone
from tcpnet.backbones.resnet import (BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50,
                                     resnet101, resnet152, resnet_tiny)
from tcpnet.backbones.tea import MotionExcitation, ShiftConv, TEABottleneck, TEAResNet, tea_r50
from tcpnet.backbones.tsm import TemporalShift, temporal_shift

__all__ = [
    "create_backbone", "list_backbones", "register_backbone", "VideoBackbone", "init_weights",
    "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "resnet_tiny", "PreactResNet", "PreactBottleneck", "preact_resnet",
    "preact_resnet152", "TEAResNet", "TEABottleneck", "MotionExcitation", "ShiftConv", "tea_r50",
    "TemporalShift", "temporal_shift",
]
