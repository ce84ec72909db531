"""R(2+1)D-18 (Tran et al., CVPR 2018), a ``"video"`` layout backbone with the parameter names of
torchvision's ``torchvision.models.video.r2plus1d_18``, so its Kinetics-400 weights load as they
are. Every 3x3x3 convolution is factorised into a (1,3,3) spatial and a (3,1,1) temporal one,
with the mid width chosen to keep the parameter count of the 3-D convolution."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from tcpnet.backbones.base import VideoBackbone, init_weights
from tcpnet.backbones.registry import register_backbone
from tcpnet.input_config import InputConfig

__all__ = ["KINETICS_VIDEO", "Conv2Plus1D", "R2Plus1dStem", "VideoBasicBlock", "R2Plus1D",
           "r2plus1d_18"]

# torchvision's Kinetics-400 video models: per-channel mean/std of 0-1 pixels, 112x112 crops
# taken from clips resized to 128 on the shorter side.
KINETICS_VIDEO = InputConfig(mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989),
                             crop_size=112, scale_size=128, num_segments=16)


def midplanes(inplanes: int, planes: int) -> int:
    """Width between the spatial and temporal convolution that matches the parameter count of a
    full 3x3x3 convolution ``inplanes -> planes``."""
    return (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)


class Conv2Plus1D(nn.Sequential):
    """(1,3,3) spatial conv -> BN -> ReLU -> (3,1,1) temporal conv; ``stride`` applies to T, H
    and W (spatially in the first conv, temporally in the second). Keys ``0``, ``1``, ``3``."""

    def __init__(self, inplanes: int, planes: int, mid: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(inplanes, mid, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                      padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1),
                      padding=(1, 0, 0), bias=False),
        )


class R2Plus1dStem(nn.Sequential):
    """(1,7,7) conv to 45 channels, stride (1,2,2) -> BN -> ReLU -> (3,1,1) conv to 64 -> BN -> ReLU."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv3d(3, 45, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(45),
            nn.ReLU(inplace=True),
            nn.Conv3d(45, 64, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
        )


class VideoBasicBlock(nn.Module):
    """Two (2+1)D convolutions with a residual connection; both use the mid width of the block's
    first one (torchvision's rule). ``conv1 = (Conv2Plus1D, BN, ReLU)``, ``conv2 = (Conv2Plus1D, BN)``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        mid = midplanes(inplanes, planes)
        self.conv1 = nn.Sequential(Conv2Plus1D(inplanes, planes, mid, stride), nn.BatchNorm3d(planes),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(self.conv2(self.conv1(x)) + identity)


class R2Plus1D(VideoBackbone):
    """R(2+1)D trunk without avgpool/fc: (B, 3, T, H, W) -> (B*T', 512, H/16, W/16), video-major.

    Stages of ``layers`` blocks with strides 1, 2, 2, 2 in T, H and W (downsample: 1x1x1 conv with
    that stride, then BN), so ``T' = output_segments(T)``: 16 -> 2, 8 -> 1.
    """

    layout = "video"
    STRIDES = (1, 2, 2, 2)

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"R2Plus1D: expected 4 stage block counts, got {list(layers)}")
        self.inplanes = 64
        self.stem = R2Plus1dStem()
        self.layer1 = self._make_layer(64, layers[0], self.STRIDES[0])
        self.layer2 = self._make_layer(128, layers[1], self.STRIDES[1])
        self.layer3 = self._make_layer(256, layers[2], self.STRIDES[2])
        self.layer4 = self._make_layer(512, layers[3], self.STRIDES[3])
        self.num_features = 512 * VideoBasicBlock.expansion
        init_weights(self)  # torchvision's: Conv3d Kaiming-normal(fan_out), BN 1/0

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes),
            )
        layers: List[nn.Module] = [VideoBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [VideoBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def output_segments(self, num_segments: int) -> int:
        """T' after the temporal strides (kernel 3, padding 1): each stride-2 stage maps T to ceil(T/2)."""
        t = int(num_segments)
        for s in self.STRIDES:
            t = (t - 1) // s + 1
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) clips -> (B*T', 512, h, w) feature maps, row ``b*T' + t``."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)  # (B, C, T', h, w)
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)


@register_backbone(input_config=KINETICS_VIDEO)
def r2plus1d_18() -> R2Plus1D:
    """R(2+1)D-18 (blocks [2,2,2,2], 512 features), torchvision's ``r2plus1d_18`` without its fc."""
    return R2Plus1D((2, 2, 2, 2))
