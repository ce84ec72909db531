"""Backbones: networks that turn clips into feature maps for a pooling head.

``create_backbone(name, **kw)`` builds one by name (see ``list_backbones()``); each declares its
input ``layout`` (``"frames"``: per-frame 2-D network, ``"video"``: 3-D network over the clip),
``num_features`` and ``output_segments(T)``. The contract is written out in
:mod:`tcpnet.backbones.base`.
"""
from tcpnet.backbones.base import LAYOUTS, FrameBackbone, VideoBackbone, init_weights
from tcpnet.backbones.preact_resnet import PreactBottleneck, PreactResNet, preact_resnet, preact_resnet152
from tcpnet.backbones.r2plus1d import KINETICS_VIDEO, Conv2Plus1D, R2Plus1D, r2plus1d_18
from tcpnet.backbones.registry import (backbone_input_config, create_backbone, get_backbone,
                                       list_backbones, register_backbone)
from tcpnet.backbones.resnet import (BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50,
                                     resnet101, resnet152, resnet_tiny)
from tcpnet.backbones.tea import MotionExcitation, ShiftConv, TEABottleneck, TEAResNet, tea_r50
from tcpnet.backbones.temporal import TemporalModule, check_clips
from tcpnet.backbones.tsm import TemporalShift, temporal_shift
from tcpnet.utils.plugins import import_submodules

__all__ = [
    "create_backbone", "list_backbones", "register_backbone", "get_backbone",
    "backbone_input_config", "LAYOUTS", "VideoBackbone", "FrameBackbone", "init_weights",
    "TemporalModule", "check_clips",
    "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "resnet_tiny", "PreactResNet", "PreactBottleneck", "preact_resnet",
    "preact_resnet152", "TEAResNet", "TEABottleneck", "MotionExcitation", "ShiftConv", "tea_r50",
    "TemporalShift", "temporal_shift", "R2Plus1D", "Conv2Plus1D", "r2plus1d_18", "KINETICS_VIDEO",
]

# Every module of this package registers what it defines: a new backbone is one new file here.
import_submodules(__name__)
