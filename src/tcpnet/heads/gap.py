"""GAP head: TSN's average pooling over space and time."""
from __future__ import annotations

import torch

from tcpnet.heads.base import Head, check_frame_batch
from tcpnet.heads.registry import register_head

__all__ = ["GAPHead"]


@register_head("gap")
class GAPHead(Head):
    """Mean over T, H and W: (N*T, C, H, W) -> (N, C).

    TSN pools each frame, applies dropout and the classifier per frame and averages the T logits.
    The classifier is linear, so averaging the features first gives the same logits in eval mode
    (up to float rounding); in training, dropout draws one mask per clip here instead of one per
    frame.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_dim = in_channels

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        n = check_frame_batch(x, num_segments, self.in_channels, "GAPHead")
        return x.reshape(n, num_segments, self.in_channels, -1).mean(dim=(1, 3))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"
