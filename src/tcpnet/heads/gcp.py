"""GCP head: the orderless global covariance pooling of image recognition (iSQRT-COV), applied to
all T*H*W positions of a clip. It is the base of the TCP head (same channel reductions and key
names, so ImageNet GCP weights load into both)."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from tcpnet.heads.base import Head, ParamGroupSpec, check_frame_batch
from tcpnet.heads.pointwise import conv1x1
from tcpnet.heads.registry import register_head
from tcpnet.ops import isqrt_cov

__all__ = ["GCPHead", "check_frame_batch"]


@register_head("gcp")
class GCPHead(Head):
    """Reductions C -> mid -> dim (1x1 conv without bias, BN, ReLU), then the covariance of the
    ``dim``-channel features over every position of the clip, its Newton-Schulz square root and
    the upper triangle: (N*T, C, H, W) -> (N, dim(dim+1)/2).

    Orderless by construction: the covariance of a set of vectors ignores their order, so
    permuting the frames of a clip leaves the output unchanged (up to float rounding).
    """

    def __init__(self, in_channels: int, dim: int = 128, mid_channels: int = 256, iters: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.dim = dim
        self.mid_channels = mid_channels
        self.iters = iters
        self.out_dim = dim * (dim + 1) // 2
        self.layer_reduce1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.layer_reduce_bn1 = nn.BatchNorm2d(mid_channels)
        self.layer_reduce2 = nn.Conv2d(mid_channels, dim, kernel_size=1, bias=False)
        self.layer_reduce_bn2 = nn.BatchNorm2d(dim)
        self.relu = nn.ReLU(inplace=True)
        self.reset_parameters()

    def param_groups(self, pretrained_dim: Optional[int] = None) -> List[ParamGroupSpec]:
        """Started from weights of another reduction width (``pretrained_dim`` != ``dim``), the
        second reduction is new and trains at the fast rate (the published ``TCP_*`` groups)."""
        if pretrained_dim is None or pretrained_dim == self.dim:
            return []
        return [ParamGroupSpec("TCP", ("layer_reduce2", "layer_reduce_bn2"))]

    def reset_parameters(self) -> None:
        """Published init: reduction convs Kaiming-normal(fan_out), BNs 1/0."""
        for conv in (self.layer_reduce1, self.layer_reduce2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        for bn in (self.layer_reduce_bn1, self.layer_reduce_bn2):
            bn.reset_running_stats()
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """(N*T, C, H, W) -> (N*T, dim, H, W), non-negative."""
        x = self.relu(self.layer_reduce_bn1(conv1x1(self.layer_reduce1, x)))
        return self.relu(self.layer_reduce_bn2(conv1x1(self.layer_reduce2, x)))

    def pool(self, z: torch.Tensor, num_segments: int) -> torch.Tensor:
        """Video-level covariance pooling: (N*T, d, H, W) -> (N, d, T*H*W) with column index
        m = (t*H + h)*W + w -> iSQRT -> (N, d(d+1)/2)."""
        nt, d = z.shape[:2]
        n = nt // num_segments
        cols = z.reshape(n, num_segments, d, -1).permute(0, 2, 1, 3).reshape(n, d, -1)
        return isqrt_cov(cols, iters=self.iters)

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        check_frame_batch(x, num_segments, self.in_channels, type(self).__name__)
        return self.pool(self.reduce(x), num_segments)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, iters={self.iters}"
