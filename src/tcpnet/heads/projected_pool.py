"""Projected-pool head: X3D's own head (pytorchvideo's ``ProjectedPool``), a 1x1x1 expansion with
BN and ReLU before the average pooling and a second 1x1x1 expansion with ReLU after it."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tcpnet.heads.base import Head, check_frame_batch
from tcpnet.heads.registry import register_head

__all__ = ["ProjectedPoolHead"]

# create_x3d's head: the pre-pooling width is its last stage's bottleneck width, 2.25 x C.
BOTTLENECK_FACTOR = 2.25


@register_head("projected_pool")
class ProjectedPoolHead(Head):
    """``post_act(post_conv(mean_{T,H,W}(pre_act(pre_norm(pre_conv(x))))))``: (N*T, C, H, W) -> (N, D).

    Parameter names as pytorchvideo's ``blocks.5.pool.*`` of ``create_x3d`` (``pre_conv``,
    ``pre_norm``, ``post_conv``; its classifier ``blocks.5.proj`` is the Recognizer's ``fc`` and its
    dropout the Recognizer's). ``inner_channels`` defaults to ``int(2.25 * C)`` (432 for X3D-S/M's
    192), ``out_channels`` to 2048 (``head_dim_out``); ReLU activations, no BN after pooling
    (``head_bn_lin5_on=False``), as every published X3D.

    Pooling: the mean over all T*H*W positions. pytorchvideo pools with a fixed window of the
    size its model was built for (T, ceil(crop/32), ceil(crop/32)) and averages the logits of the
    windows, which is the same at that input size (13 x 5 x 5 at 160 for X3D-S, 16 x 7 x 7 at 224
    for X3D-M); at other sizes this head pools globally, where the window would slide.
    """

    def __init__(self, in_channels: int, inner_channels: Optional[int] = None, out_channels: int = 2048) -> None:
        super().__init__()
        inner = int(BOTTLENECK_FACTOR * in_channels) if inner_channels is None else int(inner_channels)
        self.in_channels, self.inner_channels, self.out_dim = in_channels, inner, out_channels
        self.pre_conv = nn.Conv3d(in_channels, inner, kernel_size=1, bias=False)
        self.pre_norm = nn.BatchNorm3d(inner)
        self.pre_act = nn.ReLU()
        self.post_conv = nn.Conv3d(inner, out_channels, kernel_size=1, bias=False)
        self.post_act = nn.ReLU()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """pytorchvideo's initialisation: convolutions Kaiming-normal(fan_out), BN weight 1, bias 0."""
        for conv in (self.pre_conv, self.post_conv):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.pre_norm.weight)
        nn.init.zeros_(self.pre_norm.bias)

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        n = check_frame_batch(x, num_segments, self.in_channels, "ProjectedPoolHead")
        clips = x.unflatten(0, (n, num_segments)).transpose(1, 2)  # (N, C, T, H, W), a view
        pooled = self.pre_act(self.pre_norm(self.pre_conv(clips))).mean(dim=(2, 3, 4), keepdim=True)
        return self.post_act(self.post_conv(pooled)).flatten(1)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, inner_channels={self.inner_channels}, out_dim={self.out_dim}"
