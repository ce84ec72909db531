"""ResNet-18/34/50/101/152 (v1.5: stride on the 3x3 conv) with torchvision's state-dict keys,
an optional stride-1 last stage (the TCP zoo's, for larger final maps) and an optional TSM
temporal shift."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Type, Union

import torch
from torch import nn

from tcpnet.backbones.base import FrameBackbone, init_weights
from tcpnet.backbones.registry import register_backbone
from tcpnet.backbones.temporal import check_num_segments
from tcpnet.backbones.tsm import TemporalShift, block_shift, check_shift_place, shift_round
from tcpnet.input_config import InputConfig

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50",
           "resnet101", "resnet152", "resnet_tiny"]


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first); ``shift`` optionally shifts the block input in time
    ('block': both paths see it; 'blockres': only the residual branch, i.e. conv1's input)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, shift: Optional[TemporalShift] = None,
                 shift_place: Optional[str] = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.shift = shift
        self.shift_place = shift_place if shift is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift_place == "block":
            x = self.shift(x)
        identity = x
        out = self.shift(x) if self.shift_place == "blockres" else x
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here: ResNet v1.5, as torchvision) -> 1x1, expansion 4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, shift: Optional[TemporalShift] = None,
                 shift_place: Optional[str] = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.shift = shift
        self.shift_place = shift_place if shift is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift_place == "block":
            x = self.shift(x)
        identity = x
        out = self.shift(x) if self.shift_place == "blockres" else x
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(FrameBackbone):
    """torchvision-layout ResNet trunk without avgpool/fc: returns the layer4 feature maps.

    ``last_stride=1`` (the TCP zoo) keeps layer4 at stride 16 overall (14x14 at 224);
    ``last_stride=2`` is torchvision's network (7x7). ``temporal_shift`` adds TSM's parameter-free
    shift ('blockres': on conv1's input of every ``n_round``-th block; 'block': on whole blocks);
    the state-dict keys are torchvision's either way (the authors' would-be ``conv1.net.weight``
    wrapping is not used), so ImageNet weights load with and without TSM.
    """

    def __init__(self, block: Block, layers: Sequence[int],
                 widths: Sequence[int] = (64, 128, 256, 512), stem_width: Optional[int] = None,
                 last_stride: int = 1, num_segments: int = 8,
                 temporal_shift: Optional[str] = None, shift_div: int = 8,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"ResNet: expected 4 stages, got layers={list(layers)}, widths={list(widths)}")
        if last_stride not in (1, 2):
            raise ValueError(f"ResNet: last_stride must be 1 or 2, got {last_stride}")
        self._num_segments = check_num_segments(num_segments)
        self.temporal_shift = check_shift_place(temporal_shift)
        self.shift_div = shift_div
        stem_width = widths[0] if stem_width is None else stem_width
        self.inplanes = stem_width
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        n_round = shift_round(layers[2])
        strides = (1, 2, 2, last_stride)
        self.layer1 = self._make_layer(block, widths[0], layers[0], strides[0], n_round)
        self.layer2 = self._make_layer(block, widths[1], layers[1], strides[1], n_round)
        self.layer3 = self._make_layer(block, widths[2], layers[2], strides[2], n_round)
        self.layer4 = self._make_layer(block, widths[3], layers[3], strides[3], n_round)
        self.num_features = widths[3] * block.expansion
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int,
                    n_round: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: List[nn.Module] = []
        for i in range(blocks):
            shift = block_shift(self.temporal_shift, i, n_round, self.num_segments, self.shift_div)
            layers.append(block(self.inplanes, planes, stride if i == 0 else 1,
                                downsample if i == 0 else None, shift, self.temporal_shift))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def layer_ids(self) -> Dict[str, int]:
        """The stem is layer 0 and stage ``layerK`` is layer K (for layer-wise lr decay)."""
        return {name: int(name[5]) if name.startswith("layer") else 0 for name, _ in self.named_parameters()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N*T, 3, H, W) video-major frames -> (N*T, num_features, H/16, W/16) (last_stride 1)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


@register_backbone
def resnet18(num_segments: int = 8, last_stride: int = 1, temporal_shift: Optional[str] = None,
             shift_div: int = 8, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 (BasicBlock [2,2,2,2], 512 features). ``last_stride=2`` = torchvision's."""
    return ResNet(BasicBlock, (2, 2, 2, 2), last_stride=last_stride, num_segments=num_segments,
                  temporal_shift=temporal_shift, shift_div=shift_div,
                  zero_init_residual=zero_init_residual)


@register_backbone
def resnet34(num_segments: int = 8, last_stride: int = 1, temporal_shift: Optional[str] = None,
             shift_div: int = 8, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 (BasicBlock [3,4,6,3], 512 features)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), last_stride=last_stride, num_segments=num_segments,
                  temporal_shift=temporal_shift, shift_div=shift_div,
                  zero_init_residual=zero_init_residual)


@register_backbone
def resnet50(num_segments: int = 8, last_stride: int = 1, temporal_shift: Optional[str] = None,
             shift_div: int = 8, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 v1.5 (Bottleneck [3,4,6,3], 2048 features), the TSN/TCP backbone."""
    return ResNet(Bottleneck, (3, 4, 6, 3), last_stride=last_stride, num_segments=num_segments,
                  temporal_shift=temporal_shift, shift_div=shift_div,
                  zero_init_residual=zero_init_residual)


@register_backbone
def resnet101(num_segments: int = 8, last_stride: int = 1, temporal_shift: Optional[str] = None,
              shift_div: int = 8, zero_init_residual: bool = False) -> ResNet:
    """ResNet-101 v1.5 (Bottleneck [3,4,23,3]); TSM 'blockres' shifts every other block."""
    return ResNet(Bottleneck, (3, 4, 23, 3), last_stride=last_stride, num_segments=num_segments,
                  temporal_shift=temporal_shift, shift_div=shift_div,
                  zero_init_residual=zero_init_residual)


@register_backbone
def resnet152(num_segments: int = 8, last_stride: int = 1, temporal_shift: Optional[str] = None,
              shift_div: int = 8, zero_init_residual: bool = False) -> ResNet:
    """ResNet-152 v1.5 (Bottleneck [3,8,36,3]); the post-activation torchvision network, not the
    pre-activation one of the TCP zoo (that is ``preact_resnet152``)."""
    return ResNet(Bottleneck, (3, 8, 36, 3), last_stride=last_stride, num_segments=num_segments,
                  temporal_shift=temporal_shift, shift_div=shift_div,
                  zero_init_residual=zero_init_residual)


@register_backbone(input_config=InputConfig(crop_size=112, scale_size=128))
def resnet_tiny(num_segments: int = 8, last_stride: int = 1,
                widths: Sequence[int] = (16, 32, 64, 128), blocks: Sequence[int] = (1, 1, 1, 1),
                temporal_shift: Optional[str] = None, shift_div: int = 8,
                zero_init_residual: bool = False) -> ResNet:
    """A narrow BasicBlock ResNet for CPU demos (128 features by default).

    Input: ImageNet mean/std, /255, crop 112, scale 128 (a 112x112 frame gives 7x7 maps with
    last_stride 1). Trained from scratch, so no pretrained weights exist for it.
    """
    return ResNet(BasicBlock, tuple(blocks), widths=tuple(widths), last_stride=last_stride,
                  num_segments=num_segments, temporal_shift=temporal_shift, shift_div=shift_div,
                  zero_init_residual=zero_init_residual)
