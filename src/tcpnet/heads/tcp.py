"""TCP head: channel reductions, temporal attention (TSA, TCA, circular temporal convolution)
and temporal covariance pooling with the Newton-Schulz matrix square root."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from tcpnet.heads.attention import TemporalAttention
from tcpnet.heads.base import ParamGroupSpec, check_frame_batch
from tcpnet.heads.gcp import GCPHead
from tcpnet.heads.registry import register_head
from tcpnet.ops import isqrt_cov

__all__ = ["TCPHead"]

LEVELS = ("video", "frame")


@register_head("tcp")
class TCPHead(GCPHead):
    """Temporal-attentive covariance pooling: (N*T, C, H, W) -> (N, dim(dim+1)/2).

    Sub-module names equal the authors' (``layer_reduce1``, ``layer_reduce_bn1``,
    ``layer_reduce2``, ``layer_reduce_bn2``, ``TCP_att.{TCA,conv_1d,TSA}``) so their weights load
    after stripping the ``TCP.`` prefix. With all three attention flags off ``TCP_att`` is an
    identity without keys and the head equals :class:`GCPHead` (plain iSQRT-COV over the clip).

    ``level="video"`` (published): one covariance over all T*H*W positions of a clip.
    ``level="frame"``: one covariance per frame over its H*W positions; the T vectors are averaged
    so the output stays (N, D). Because the classifier is linear, this gives the same logits as
    averaging per-frame logits (what the authors' frame-level mode intended).

    ``num_segments`` is the T the temporal convolution is built for (kernel ``T//2 + 1``): its
    weights fix T, so the head runs only at that T (``fixed_num_segments``); without the
    temporal convolution it pools clips of any length.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        dim: int = 128,
        num_segments: int = 8,
        mid_channels: int = 256,
        spatial_attention: bool = True,
        channel_attention: bool = True,
        temporal_conv: bool = True,
        iters: int = 3,
        level: str = "video",
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"TCPHead: level must be one of {LEVELS}, got {level!r}")
        if num_segments < 1:
            raise ValueError(f"TCPHead: num_segments must be >= 1, got {num_segments}")
        super().__init__(in_channels, dim=dim, mid_channels=mid_channels, iters=iters)
        self._num_segments = num_segments
        self.level = level
        if spatial_attention or channel_attention or temporal_conv:
            self.TCP_att: nn.Module = TemporalAttention(
                dim,
                num_segments,
                spatial_attention=spatial_attention,
                channel_attention=channel_attention,
                temporal_conv=temporal_conv,
            )
        else:
            self.TCP_att = nn.Identity()

    def param_groups(self, pretrained_dim: Optional[int] = None) -> List[ParamGroupSpec]:
        """The temporal attention trains at ``train.lr_x_factor`` (the published ``TCP_*`` groups),
        with the second reduction when it is new (see :meth:`GCPHead.param_groups`)."""
        moved = tuple(m for spec in super().param_groups(pretrained_dim) for m in spec.modules)
        return [ParamGroupSpec("TCP", ("TCP_att", *moved))]

    @property
    def num_segments(self) -> int:
        """The T this head was built for (read-only: the temporal convolution's shape depends on it)."""
        return self._num_segments

    @property
    def fixed_num_segments(self) -> Optional[int]:
        att = self.TCP_att
        return self._num_segments if isinstance(att, TemporalAttention) and att.conv_1d is not None else None

    def explain_modules(self) -> Dict[str, nn.Module]:
        """TSA (``"tsa"``) and TCA (``"tca"``) of ``TCP_att``, those that are switched on."""
        att = self.TCP_att
        if not isinstance(att, TemporalAttention):
            return {}
        return {key: module for key, module in (("tsa", att.TSA), ("tca", att.TCA)) if module is not None}

    def reset_parameters(self) -> None:
        """Published init: reductions Kaiming(fan_out) with BN 1/0, then the attention module's
        own init, so that ``TCP_att(x) == x`` at construction."""
        super().reset_parameters()
        att = getattr(self, "TCP_att", None)  # absent while GCPHead.__init__ runs
        if isinstance(att, TemporalAttention):
            att.reset_parameters()

    def attend(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        """Apply ``TCP_att`` to reduced features (N*T, dim, H, W)."""
        if isinstance(self.TCP_att, TemporalAttention):
            return self.TCP_att(x, num_segments)
        return x

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        n = check_frame_batch(x, num_segments, self.in_channels, "TCPHead")
        z = self.attend(self.reduce(x), num_segments)
        if self.level == "video":
            return self.pool(z, num_segments)
        frames = isqrt_cov(z.flatten(2), iters=self.iters)  # (N*T, D), covariance per frame
        return frames.view(n, num_segments, -1).mean(dim=1)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, num_segments={self.num_segments}, iters={self.iters}, level={self.level!r}"
