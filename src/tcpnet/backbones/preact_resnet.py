"""Pre-activation ResNet (port of the MXNet ImageNet-11K ResNet-152 used by TCPNet): raw 0-255
input normalised by a learned ``bn_data``, BN eps 2e-5, stride-1 last stage."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from tcpnet.backbones.base import FrameBackbone, init_weights
from tcpnet.backbones.registry import register_backbone
from tcpnet.backbones.temporal import check_num_segments
from tcpnet.backbones.tsm import TemporalShift, block_shift, check_shift_place, shift_round
from tcpnet.input_config import RAW_PIXELS, InputConfig

__all__ = ["PreactBottleneck", "PreactResNet", "preact_resnet", "preact_resnet152"]

BN_EPS = 2e-5  # MXNet's default, used by every BN of the ported network
PREACT_DEPTHS: Dict[int, Tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class PreactBottleneck(nn.Module):
    """BN-ReLU-conv bottleneck; the projection shortcut takes the pre-activated input,
    the identity shortcut the raw input; no ReLU after the addition."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, shift: Optional[TemporalShift] = None,
                 shift_place: Optional[str] = None) -> None:
        super().__init__()
        # registration order bn1, conv1, bn2, conv2, bn3, conv3, downsample: the MXNet file's
        self.bn1 = _bn(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.shift = shift
        self.shift_place = shift_place if shift is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift_place == "block":
            x = self.shift(x)
        a = torch.relu(self.bn1(x))  # not in place: the identity shortcut still needs x
        shortcut = self.downsample(a) if self.downsample is not None else x
        h = self.conv1(self.shift(a) if self.shift_place == "blockres" else a)
        h = self.conv2(self.relu(self.bn2(h)))
        h = self.conv3(self.relu(self.bn3(h)))
        return h + shortcut


class PreactResNet(FrameBackbone):
    """Pre-activation ResNet trunk: bn_data -> stem -> layer1..4 -> bn2 -> ReLU (no pool, no fc).

    Takes raw 0-255 RGB (registered input config: mean 0, std 1, value_scale 1.0). Keys are the
    authors' released R152 keys without the ``module.base_model.`` prefix. ``temporal_shift``
    works as on :class:`~tcpnet.backbones.resnet.ResNet`.
    """

    def __init__(self, layers: Sequence[int] = PREACT_DEPTHS[152], last_stride: int = 1,
                 num_segments: int = 8, temporal_shift: Optional[str] = None,
                 shift_div: int = 8) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"PreactResNet: expected 4 stage block counts, got {list(layers)}")
        if last_stride not in (1, 2):
            raise ValueError(f"PreactResNet: last_stride must be 1 or 2, got {last_stride}")
        self._num_segments = check_num_segments(num_segments)
        self.temporal_shift = check_shift_place(temporal_shift)
        self.shift_div = shift_div
        self.inplanes = 64
        self.bn_data = _bn(3)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        n_round = shift_round(layers[2])
        self.layer1 = self._make_layer(64, layers[0], 1, n_round)
        self.layer2 = self._make_layer(128, layers[1], 2, n_round)
        self.layer3 = self._make_layer(256, layers[2], 2, n_round)
        self.layer4 = self._make_layer(512, layers[3], last_stride, n_round)
        self.bn2 = _bn(512 * PreactBottleneck.expansion)
        self.num_features = 512 * PreactBottleneck.expansion
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, n_round: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * PreactBottleneck.expansion:
            # a single 1x1 conv, no BN: key ``downsample.0.weight``
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * PreactBottleneck.expansion,
                                                 kernel_size=1, stride=stride, bias=False))
        layers: List[nn.Module] = []
        for i in range(blocks):
            shift = block_shift(self.temporal_shift, i, n_round, self.num_segments, self.shift_div)
            layers.append(PreactBottleneck(self.inplanes, planes, stride if i == 0 else 1,
                                           downsample if i == 0 else None, shift, self.temporal_shift))
            self.inplanes = planes * PreactBottleneck.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N*T, 3, H, W) raw 0-255 frames -> (N*T, 2048, H/16, W/16) (last_stride 1)."""
        x = self.bn_data(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.relu(self.bn2(x))


def preact_resnet(depth: int = 152, num_segments: int = 8, last_stride: int = 1,
                  temporal_shift: Optional[str] = None, shift_div: int = 8) -> PreactResNet:
    """Pre-activation ResNet of a given depth (50, 101, 152, 200); only 152 has published weights."""
    try:
        layers = PREACT_DEPTHS[depth]
    except KeyError:
        raise ValueError(
            f"preact_resnet: depth must be one of {sorted(PREACT_DEPTHS)}, got {depth}") from None
    return PreactResNet(layers, last_stride=last_stride, num_segments=num_segments,
                        temporal_shift=temporal_shift, shift_div=shift_div)


@register_backbone(input_config=InputConfig(**RAW_PIXELS))
def preact_resnet152(num_segments: int = 8, last_stride: int = 1,
                     temporal_shift: Optional[str] = None, shift_div: int = 8) -> PreactResNet:
    """The TCP zoo's R152 backbone: blocks [3,8,36,3], raw-pixel input, crop 224."""
    return preact_resnet(152, num_segments=num_segments, last_stride=last_stride,
                         temporal_shift=temporal_shift, shift_div=shift_div)
