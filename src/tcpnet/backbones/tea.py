"""TEA ResNet-50: Res2Net-50 26w x 4s bottlenecks with Motion Excitation and learnable temporal
shift convolutions, stride-1 last stage. Works for any clip length T (the published code
hard-codes 8 or 16)."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tcpnet.backbones.base import FrameBackbone, init_weights
from tcpnet.backbones.registry import register_backbone
from tcpnet.backbones.temporal import TemporalModule, check_clips, check_num_segments

__all__ = ["MotionExcitation", "ShiftConv", "TEABottleneck", "TEAResNet", "tea_r50"]

NO_STAGE_POOL_WIDTH = 208  # the published code skips the stage pool for this split width (layer4)


class MotionExcitation(TemporalModule):
    """Motion excitation: channel gates from the feature difference of consecutive frames.

    ``D[t] = conv2(b)[t+1] - b[t]`` for t < T-1 and ``D[T-1] = 0`` with ``b = bn1(conv1(x))``;
    ``y = sigmoid(bn3(conv3(mean_hw D))) - 0.5``; output ``x + x*y``.
    """

    def __init__(self, channels: int, reduction: int = 16, num_segments: int = 8) -> None:
        super().__init__()
        r = channels // reduction
        self._num_segments = check_num_segments(num_segments)
        self.conv1 = nn.Conv2d(channels, r, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(r)
        self.conv2 = nn.Conv2d(r, r, kernel_size=3, padding=1, groups=r, bias=False)
        self.conv3 = nn.Conv2d(r, channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clips(x, self.num_segments, "MotionExcitation")
        t = self.num_segments
        b = self.bn1(self.conv1(x))
        cb = self.conv2(b)
        b5 = b.view((-1, t) + b.shape[1:])
        cb5 = cb.view((-1, t) + cb.shape[1:])
        diff = cb5[:, 1:] - b5[:, :-1]  # (N, T-1, r, h, w)
        diff = F.pad(diff, (0, 0, 0, 0, 0, 0, 0, 1))  # zero frame appended at the end of time
        y = diff.mean(dim=(3, 4), keepdim=True).flatten(0, 1)  # (N*T, r, 1, 1)
        y = torch.sigmoid(self.bn3(self.conv3(y))) - 0.5
        return x + x * y

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}"


class ShiftConv(TemporalModule):
    """Learnable temporal shift: depthwise Conv1d over time, kernel 3, zero
    padding, per channel and spatial position. ``mode='fixed'`` starts as identity; ``'shift'``
    starts as channels [0, c/2) <- frame t+1 and [c/2, c) <- frame t-1 (zeros at the ends)."""

    def __init__(self, channels: int, num_segments: int = 8, mode: str = "fixed") -> None:
        super().__init__()
        if mode not in ("fixed", "shift"):
            raise ValueError(f"ShiftConv: mode must be 'fixed' or 'shift', got {mode!r}")
        self._num_segments = check_num_segments(num_segments)
        self.mode = mode
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        w = self.conv.weight  # (c, 1, 3): out[t] = w0*in[t-1] + w1*in[t] + w2*in[t+1]
        w.zero_()
        if self.mode == "fixed":
            w[:, 0, 1] = 1.0
        else:
            fold = w.shape[0] // 2
            w[:fold, 0, 2] = 1.0  # take the next frame
            w[fold:2 * fold, 0, 0] = 1.0  # take the previous frame
            w[2 * fold:, 0, 1] = 1.0  # odd channel count only: the last channel stays

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clips(x, self.num_segments, "ShiftConv")
        nt, c, h, w = x.shape
        t = self.num_segments
        y = x.view(-1, t, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, t)  # (N*h*w, c, T)
        y = self.conv(y)
        return y.view(-1, h, w, c, t).permute(0, 4, 3, 1, 2).reshape(nt, c, h, w)

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, mode={self.mode!r}"


class TEABottleneck(nn.Module):
    """Res2Net bottleneck (scale 4) with ME after conv1 and a shift conv before each 3x3 conv.

    ``stype='stage'`` (first block of a layer): the splits are not chained and the last split
    is average-pooled (3x3, stride ``stride``, pad 1, zeros counted) unless ``stage_pool`` is
    False; ``'normal'``: branch i takes the previous branch's output plus split i.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, base_width: int = 26, scale: int = 4,
                 stype: str = "normal", stage_pool: bool = True, num_segments: int = 8) -> None:
        super().__init__()
        if stype not in ("normal", "stage"):
            raise ValueError(f"TEABottleneck: stype must be 'normal' or 'stage', got {stype!r}")
        if scale < 2:
            raise ValueError(f"TEABottleneck: scale must be >= 2, got {scale}")
        width = int(math.floor(planes * (base_width / 64.0)))
        self.width, self.scale, self.stype = width, scale, stype
        self.nums = scale - 1
        # registration order: me, conv1, bn1, [pool], convs, bns, shifts, conv3, bn3, relu, downsample
        self.me = MotionExcitation(width * scale, reduction=16, num_segments=num_segments)
        self.conv1 = nn.Conv2d(inplanes, width * scale, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.pool = (nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
                     if stype == "stage" and stage_pool else None)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
            for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(self.nums))
        self.shifts = nn.ModuleList(
            [ShiftConv(width, num_segments, "fixed") for _ in range(self.nums)]
            + [ShiftConv(width, num_segments, "shift")])
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        if stype == "stage" and not stage_pool and stride != 1:
            raise ValueError("TEABottleneck: a stage block without pooling needs stride 1 "
                             "(the last split would not be down-sampled)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.me(self.relu(self.bn1(self.conv1(x))))
        splits = torch.split(out, self.width, dim=1)
        outs: List[torch.Tensor] = []
        sp = splits[0]
        for i in range(self.nums):
            if i > 0:
                sp = splits[i] if self.stype == "stage" else sp + splits[i]  # previous OUTPUT + split
            sp = self.shifts[i](sp)
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            outs.append(sp)
        last = self.shifts[self.nums](splits[self.nums])
        if self.pool is not None:
            last = self.pool(last)
        out = self.bn3(self.conv3(torch.cat(outs + [last], dim=1)))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class TEAResNet(FrameBackbone):
    """TEA Res2Net trunk (plain 7x7 stem; layers [3,4,6,3] with strides 1,2,2,1), no pool / fc.

    Keys equal the authors' released TEA keys without the ``module.base_model.`` prefix. The
    frame batch must hold whole clips of ``num_segments`` frames in video-major order;
    otherwise ValueError.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), base_width: int = 26, scale: int = 4,
                 num_segments: int = 8) -> None:
        super().__init__()
        self._num_segments = check_num_segments(num_segments)
        self.base_width, self.scale = base_width, scale
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 1)
        self.num_features = 512 * TEABottleneck.expansion
        init_weights(self)  # Conv2d + BN only; the shift Conv1d keep their fixed/shift init

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_ch = planes * TEABottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        width = int(math.floor(planes * (self.base_width / 64.0)))
        layers: List[nn.Module] = [TEABottleneck(
            self.inplanes, planes, stride, downsample, self.base_width, self.scale, "stage",
            stage_pool=width != NO_STAGE_POOL_WIDTH, num_segments=self.num_segments)]
        self.inplanes = out_ch
        for _ in range(1, blocks):
            layers.append(TEABottleneck(self.inplanes, planes, 1, None, self.base_width, self.scale,
                                        "normal", num_segments=self.num_segments))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N*T, 3, H, W) video-major frames -> (N*T, 2048, H/16, W/16)."""
        check_clips(x, self.num_segments, "TEAResNet")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


@register_backbone
def tea_r50(num_segments: int = 8) -> TEAResNet:
    """TEA-R50 (Res2Net-50 26w x 4s + ME + shift convs, stride-1 last stage), 2048 features.
    It has its own learnable shift, so there is no ``temporal_shift`` or ``last_stride`` option."""
    return TEAResNet(num_segments=num_segments)
