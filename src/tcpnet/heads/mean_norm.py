"""Mean-norm head: VideoMAE's own pooling, the mean over every token followed by a LayerNorm."""
from __future__ import annotations

import torch
from torch import nn

from tcpnet.heads.base import Head, check_frame_batch
from tcpnet.heads.registry import register_head

__all__ = ["MeanNormHead"]


@register_head("mean_norm")
class MeanNormHead(Head):
    """Mean over T, H and W, then ``fc_norm`` (LayerNorm): (N*T, C, H, W) -> (N, C).

    On a token backbone's maps the mean over T'*h*w positions is the mean over its tokens, so
    this is the official VideoMAE ``fc_norm(x.mean(1))`` (mean pooling), with its parameter name.
    ``eps`` 1e-6 as VideoMAE's LayerNorms.
    """

    def __init__(self, in_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_dim = in_channels
        self.fc_norm = nn.LayerNorm(in_channels, eps=eps)

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        n = check_frame_batch(x, num_segments, self.in_channels, "MeanNormHead")
        return self.fc_norm(x.unflatten(0, (n, num_segments)).mean(dim=(1, 3, 4)))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"
