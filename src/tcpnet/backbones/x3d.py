"""X3D-S and X3D-M (Feichtenhofer, CVPR 2020) as ``"video"`` layout backbones with the parameter
names of pytorchvideo's ``create_x3d`` (hub ``x3d_s``, ``x3d_m``), so its Kinetics-400 files load
as they are (the key map is in :mod:`tcpnet.checkpoints.x3d`).

The network: a stem of a (1,3,3) spatial convolution, stride 2 in H and W, then a depthwise (5,1,1)
temporal one, BN and ReLU; four residual stages of bottleneck blocks (1x1x1 conv, BN, ReLU; a
depthwise 3x3x3 conv, spatial stride 2 in each stage's first block, BN, squeeze-excitation in
every other block, Swish; 1x1x1 conv, BN; sum with the shortcut, ReLU). Widths and depths come
from the X3D expansion factors with pytorchvideo's rounding. No layer strides in time, so the
backbone keeps every frame: ``T' = T`` on an ``H/32 x W/32`` grid (13 x 5 x 5 for X3D-S at 160,
16 x 7 x 7 for X3D-M at 224), 192 channels.

X3D-S and X3D-M are the same network (3.79M parameters with the head); they differ only in the
clip they are trained on (13 frames at 160 vs 16 at 224), so they differ here only in their
registered input config. X3D's own head (projected pooling to 2048 and the classifier) is the
``projected_pool`` head of :mod:`tcpnet.heads.projected_pool` and the Recognizer's ``fc``.

Two names are pytorchvideo's and read oddly: in the stem, ``conv.conv_t`` holds the *spatial*
(1,3,3) convolution and ``conv.conv_xy`` the *temporal* depthwise (5,1,1) one (``create_x3d_stem``
passes them to its ``Conv2plus1d`` crosswise; the forward runs ``conv_t`` first), and each block's
``norm_b`` is a sequence ``(BN, squeeze-excitation or identity)``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from tcpnet.backbones.base import VideoBackbone, init_weights
from tcpnet.backbones.registry import register_backbone
from tcpnet.input_config import InputConfig

__all__ = ["X3D_S_INPUT", "X3D_M_INPUT", "round_width", "round_repeats", "SqueezeExcitation",
           "X3DStem", "X3DBottleneck", "X3DResBlock", "X3DStage", "X3D", "stage_plan", "x3d_s", "x3d_m"]

# pytorchvideo's Kinetics pipeline for X3D: mean 0.45 / std 0.225 on 0-1 pixels. Clips: X3D-S 13
# frames at 160 (shorter side 182 at test time), X3D-M 16 frames at 224 (shorter side 256).
_X3D_NORM = dict(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
X3D_S_INPUT = InputConfig(crop_size=160, scale_size=182, num_segments=13, **_X3D_NORM)
X3D_M_INPUT = InputConfig(crop_size=224, scale_size=256, num_segments=16, **_X3D_NORM)

STAGE_DEPTHS = (1, 2, 5, 3)  # X3D's base depths, before the depth factor
STEM_KERNEL_T = 5
SE_RATIO = 0.0625


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """``width * multiplier`` rounded to the nearest multiple of ``divisor`` (at least
    ``min_width``, and one ``divisor`` more when rounding lost over 10%): X3D's channel rule."""
    scaled = width * multiplier
    out = max(min_width, int(scaled + divisor / 2) // divisor * divisor)
    return int(out + divisor) if out < 0.9 * scaled else int(out)


def round_repeats(repeats: int, multiplier: float) -> int:
    """X3D's block count: ``ceil(repeats * multiplier)``."""
    return int(math.ceil(multiplier * repeats))


class SqueezeExcitation(nn.Module):
    """Channel gating ``x * sigmoid(W2 relu(W1 mean_{T,H,W}(x)))`` with 1x1x1 convolutions that
    have biases; ``block`` = (conv, ReLU, conv, Sigmoid), as fvcore's 3-D ``SqueezeExcitation``."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv3d(channels, reduced, kernel_size=1), nn.ReLU(),
                                   nn.Conv3d(reduced, channels, kernel_size=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(x.mean(dim=(2, 3, 4), keepdim=True))


class _StemConv(nn.Module):
    """The stem's factorised convolution: ``conv_t`` (spatial (1,3,3), stride (1,2,2)) then
    ``conv_xy`` (temporal depthwise (5,1,1)); pytorchvideo's names, see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_t = nn.Conv3d(in_channels, out_channels, kernel_size=(1, 3, 3), stride=(1, 2, 2),
                                padding=(0, 1, 1), bias=False)
        self.conv_xy = nn.Conv3d(out_channels, out_channels, kernel_size=(STEM_KERNEL_T, 1, 1),
                                 padding=(STEM_KERNEL_T // 2, 0, 0), groups=out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_xy(self.conv_t(x))


class X3DStem(nn.Module):
    """``conv`` (spatial then temporal, see :class:`_StemConv`) -> ``norm`` (BN) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _StemConv(in_channels, out_channels)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


class X3DBottleneck(nn.Module):
    """1x1x1 ``conv_a`` -> ``norm_a`` -> ReLU -> depthwise 3x3x3 ``conv_b`` (stride (1,s,s)) ->
    ``norm_b`` = (BN, squeeze-excitation or identity) -> Swish -> 1x1x1 ``conv_c`` -> ``norm_c``.
    The SE width is ``round_width(inner, 1/16)`` (8 for every X3D-S/M block)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, use_se: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, kernel_size=1, bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, kernel_size=3, stride=(1, stride, stride),
                                padding=1, groups=dim_inner, bias=False)
        se = SqueezeExcitation(dim_inner, round_width(dim_inner, SE_RATIO)) if use_se else nn.Identity()
        self.norm_b = nn.Sequential(nn.BatchNorm3d(dim_inner), se)
        self.act_b = nn.SiLU()  # Swish, x * sigmoid(x)
        self.conv_c = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class X3DResBlock(nn.Module):
    """``relu(shortcut(x) + branch2(x))``. The shortcut is the identity, or a strided 1x1x1
    ``branch1_conv`` when the stride or the width changes, followed by ``branch1_norm`` only when
    the width changes (pytorchvideo's rule: a stage that keeps the stem's width, as X3D's first
    one does, has a projection without BN)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, stride: int, use_se: bool) -> None:
        super().__init__()
        self.branch1_conv: Optional[nn.Conv3d] = None
        self.branch1_norm: Optional[nn.BatchNorm3d] = None
        if dim_in != dim_out or stride > 1:
            self.branch1_conv = nn.Conv3d(dim_in, dim_out, kernel_size=1, stride=(1, stride, stride),
                                          bias=False)
        if dim_in != dim_out:
            self.branch1_norm = nn.BatchNorm3d(dim_out)
        self.branch2 = X3DBottleneck(dim_in, dim_inner, dim_out, stride, use_se)
        self.activation = nn.ReLU()

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The residual path: identity, projection, or projection and BN."""
        if self.branch1_conv is not None:
            x = self.branch1_conv(x)
        if self.branch1_norm is not None:
            x = self.branch1_norm(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.shortcut(x) + self.branch2(x))


class X3DStage(nn.Module):
    """``res_blocks``: ``depth`` residual blocks; the first one strides (and widens), and
    squeeze-excitation sits in blocks 0, 2, 4, ... of the stage."""

    def __init__(self, depth: int, dim_in: int, dim_inner: int, dim_out: int, stride: int = 2) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            X3DResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, stride if i == 0 else 1,
                        use_se=i % 2 == 0)
            for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


def stage_plan(width_factor: float, depth_factor: float, bottleneck_factor: float,
               stem_dim_in: int = 12) -> List[Tuple[int, int, int]]:
    """(depth, inner width, output width) of the four stages: base widths ``stem_dim_in`` doubled
    per stage (multiples of 8), times ``width_factor``; inner = ``bottleneck_factor`` x output."""
    base = [stem_dim_in]
    for _ in range(3):
        base.append(round_width(base[-1], 2.0))
    plan = []
    for depth, width in zip(STAGE_DEPTHS, base):
        dim_out = round_width(width, width_factor)
        plan.append((round_repeats(depth, depth_factor), int(bottleneck_factor * dim_out), dim_out))
    return plan


class X3D(VideoBackbone):
    """X3D's stem and four stages without its head: (B, 3, T, H, W) -> (B*T, C, H/32, W/32),
    video-major, ``C`` the last stage's width (192 for X3D-S/M).

    Keys as pytorchvideo's ``Net``: ``blocks.0.{conv.conv_t,conv.conv_xy,norm}``,
    ``blocks.<1-4>.res_blocks.<i>.{branch1_conv,branch1_norm,branch2.{conv_a,norm_a,conv_b,
    norm_b.0,norm_b.1.block.{0,2},conv_c,norm_c}}``. The defaults (width 2.0, depth 2.2,
    bottleneck 2.25, stem 12) are X3D-S/M's; ``stem_dim_in`` (the base width) makes small
    test networks.
    """

    layout = "video"

    def __init__(self, width_factor: float = 2.0, depth_factor: float = 2.2, bottleneck_factor: float = 2.25,
                 stem_dim_in: int = 12) -> None:
        super().__init__()
        stem_out = round_width(stem_dim_in, width_factor)
        blocks: List[nn.Module] = [X3DStem(3, stem_out)]
        dim_in = stem_out
        for depth, dim_inner, dim_out in stage_plan(width_factor, depth_factor, bottleneck_factor, stem_dim_in):
            blocks.append(X3DStage(depth, dim_in, dim_inner, dim_out))
            dim_in = dim_out
        self.blocks = nn.ModuleList(blocks)
        self.num_features = dim_in
        self.init_weights()

    def init_weights(self) -> None:
        """pytorchvideo's (and the X3D paper's code's) initialisation: every convolution
        Kaiming-normal(fan_out) with zero bias, BN weight 1 and bias 0, except the last BN of each
        bottleneck (``norm_c``), whose weight starts at 0 so that each block starts as its shortcut."""
        init_weights(self)
        for m in self.modules():
            if isinstance(m, X3DBottleneck):
                nn.init.zeros_(m.norm_c.weight)

    def output_segments(self, num_segments: int) -> int:
        """T' = T: no X3D layer strides in time."""
        return int(num_segments)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> the last stage's (B, C, T, h, w), pytorchvideo's layout."""
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) clips -> (B*T, C, h, w) feature maps, row ``b*T + t``."""
        maps = self.forward_maps(x)
        b, c, t, h, w = maps.shape
        return maps.transpose(1, 2).reshape(b * t, c, h, w)


@register_backbone(input_config=X3D_S_INPUT)
def x3d_s() -> X3D:
    """X3D-S: pytorchvideo's hub ``x3d_s`` without its head (13 frames at 160: 13 x 5 x 5 maps)."""
    return X3D()


@register_backbone(input_config=X3D_M_INPUT)
def x3d_m() -> X3D:
    """X3D-M: pytorchvideo's hub ``x3d_m`` without its head (16 frames at 224: 16 x 7 x 7 maps)."""
    return X3D()
