"""TCP's temporal attention (`TCP_att`): temporal spatial attention, temporal channel attention
and the circular temporal convolution, with the authors' sub-module names.

All modules take a video-major frame batch ``(N*T, d, H, W)`` (row ``n*T + t`` is frame ``t`` of
clip ``n``) plus ``T`` and return the same shape.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tcpnet.heads.pointwise import conv1x1, linear1x1

__all__ = ["TSA", "TCA", "TemporalAttention", "temporal_kernel_size", "temporal_padding"]


def _split_time(x: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(N*T, ...) -> (N, T, ...), with a clear error when the batch is not a multiple of T."""
    if num_segments < 1 or x.shape[0] % num_segments != 0:
        raise ValueError(
            f"expected a frame batch of N*T rows with T={num_segments}, got {x.shape[0]} rows"
        )
    return x.view(x.shape[0] // num_segments, num_segments, *x.shape[1:])


def _delay(x: torch.Tensor) -> torch.Tensor:
    """One-step delay with edge replication on axis 1: out[:, t] = x[:, max(t-1, 0)]."""
    return torch.cat([x[:, :1], x[:, :-1]], dim=1)


class TSA(nn.Module):
    """Temporal-based spatial attention: frame t's embedding is re-weighted by the
    softmax affinity between the embeddings of frames t-1 and t-2 (edge-replicated), then added
    back through a zero-initialised BN: ``TSA(x) = x + norm(O)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.conv_phi_1 = nn.Conv2d(dim, dim, kernel_size=1, bias=True)
        self.conv_phi_2 = nn.Conv2d(dim, dim, kernel_size=1, bias=True)
        self.conv_phi0 = nn.Conv2d(dim, dim, kernel_size=1, bias=True)
        self.norm = nn.BatchNorm2d(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Published init: convs Kaiming-normal(fan_out) with zero bias; ``norm`` weight and bias
        zero, so the module starts as the identity."""
        for conv in (self.conv_phi_1, self.conv_phi_2, self.conv_phi0):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.norm.reset_running_stats()
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def affinity(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        """The softmax affinity A (N*T, L, L), L = H*W, that :meth:`forward` applies to frame t:
        rows are positions of frame t-1, columns (softmax axis) positions of frame t-2. Public so
        that tools can read the attention from a forward hook's input without re-implementing it."""
        nt, d, h, w = x.shape
        x1 = _delay(_split_time(x, num_segments))  # frame max(t-1, 0)
        x2 = _delay(x1)                            # frame max(t-2, 0)
        p1 = conv1x1(self.conv_phi_1, x1.reshape(nt, d, h, w)).flatten(2)  # (NT, d, L)
        p2 = conv1x1(self.conv_phi_2, x2.reshape(nt, d, h, w)).flatten(2)
        # A[a, b] = sum_c P1[c, a] P2[c, b]; rows: t-1 positions, softmax over t-2 positions.
        affinity = torch.bmm(p1.transpose(1, 2), p2) * (self.dim ** -0.5)
        return affinity.softmax(dim=-1)

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        nt, d, h, w = x.shape
        affinity = self.affinity(x, num_segments)
        p0 = conv1x1(self.conv_phi0, x).flatten(2)
        out = torch.bmm(p0, affinity.transpose(1, 2)).view(nt, d, h, w)  # O[c,a]=sum_b A[a,b]P0[c,b]
        return x + self.norm(out)


class TCA(nn.Module):
    """Temporal-based channel attention: a shared MLP with sigmoid gates channels
    from the circular first and (halved) second temporal differences of the pooled input ``x``,
    and scales ``xa`` by the mean of the two gates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g1 = nn.Conv2d(dim, 4 * dim, kernel_size=1, bias=True)
        self.g2 = nn.Conv2d(4 * dim, dim, kernel_size=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Published init: both convs N(0, 0.01^2), bias 0 (so each gate starts near 0.5)."""
        for conv in (self.g1, self.g2):
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def gate(self, u: torch.Tensor) -> torch.Tensor:
        """sigmoid(g2(ReLU(g1(u)))) for vectors u (..., d): the 1x1 convs as matmuls."""
        return torch.sigmoid(linear1x1(self.g2, F.relu(linear1x1(self.g1, u))))

    def gates(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        """Sum of the two sigmoid gates (N*T, d, 1, 1) that :meth:`forward` scales ``xa`` by (halved):
        public so that tools can read the channel attention from a forward hook's input."""
        p = _split_time(x.mean(dim=(2, 3)), num_segments)                # (N, T, d)
        d1 = p - torch.roll(p, shifts=1, dims=1)                          # p[t] - p[(t-1) mod T]
        d2 = (p - torch.roll(p, shifts=2, dims=1)) * 0.5                  # (p[t] - p[(t-2) mod T]) / 2
        g = self.gate(torch.stack((d1, d2)))                              # one MLP pass for both
        return (g[0] + g[1]).flatten(0, 1)[:, :, None, None]

    def forward(self, x: torch.Tensor, xa: torch.Tensor, num_segments: int) -> torch.Tensor:
        return (xa * self.gates(x, num_segments)) * 0.5


def temporal_kernel_size(num_segments: int) -> int:
    """Kernel length of the temporal convolution, ``T // 2 + 1`` (the published rule)."""
    return num_segments // 2 + 1


def temporal_padding(kernel_size: int) -> Tuple[int, int]:
    """Circular (left, right) padding that keeps the length T: ``p = (k-1)//2`` on the left and
    ``k-1-p`` on the right. For odd k this is the published symmetric ±p padding; for even k
    (T = 2, 3, 6, 7, 10, 11, ..., where the published code crashes) the extra tap looks one frame
    further into the future."""
    left = (kernel_size - 1) // 2
    return left, kernel_size - 1 - left


class TemporalAttention(nn.Module):
    """``TCP_att``: ``xa = TCA(x, TSA(x))`` then ``ReLU(conv_1d(xa) + x)``; each part can be
    switched off (the paper's ablation table). Absent parts have no parameters or keys.

    The temporal convolution is a Conv3d d->d with kernel (k, 1, 1), ``k = T//2 + 1``, applied
    with circular padding :func:`temporal_padding`:
    ``out[t] = b + sum_j W[:, :, j] . xa[(t + j - p_left) mod T]``.
    """

    def __init__(
        self,
        dim: int,
        num_segments: int,
        spatial_attention: bool = True,
        channel_attention: bool = True,
        temporal_conv: bool = True,
    ) -> None:
        super().__init__()
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        self._num_segments = num_segments
        # Registration order as in the authors' module (TCA, conv_1d, TSA) so state_dict order matches.
        self.TCA = TCA(dim) if channel_attention else None
        if temporal_conv:
            k = temporal_kernel_size(num_segments)
            self.conv_1d = nn.Conv3d(dim, dim, kernel_size=(k, 1, 1), bias=True)
            self.padding = temporal_padding(k)
        else:
            self.conv_1d = None
            self.padding = (0, 0)
        self.TSA = TSA(dim) if spatial_attention else None
        self.reset_parameters()

    @property
    def num_segments(self) -> int:
        """The T the temporal convolution is built for (read-only: its kernel is ``T//2 + 1``)."""
        return self._num_segments

    def reset_parameters(self) -> None:
        """Published net init: TCA N(0, 0.01^2)/0, conv_1d all zero, TSA Kaiming/0 with zero BN —
        so ``TCP_att(x) == x`` exactly for non-negative x."""
        if self.TCA is not None:
            self.TCA.reset_parameters()
        if self.conv_1d is not None:
            nn.init.zeros_(self.conv_1d.weight)
            nn.init.zeros_(self.conv_1d.bias)
        if self.TSA is not None:
            self.TSA.reset_parameters()

    def temporal_conv(self, xa: torch.Tensor, num_segments: int) -> torch.Tensor:
        """Circular temporal convolution of a (N*T, d, H, W) frame batch."""
        assert self.conv_1d is not None
        nt, d, h, w = xa.shape
        v = _split_time(xa, num_segments).permute(0, 2, 1, 3, 4)  # (N, d, T, H, W)
        left, right = self.padding
        if left or right:
            v = F.pad(v, (0, 0, 0, 0, left, right), mode="circular")
        out = self.conv_1d(v)  # (N, d, T, H, W)
        return out.permute(0, 2, 1, 3, 4).reshape(nt, d, h, w)

    def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
        if self.conv_1d is not None and num_segments != self.num_segments:
            raise ValueError(
                f"TCP temporal convolution was built for T={self.num_segments} (kernel T//2+1 = "
                f"{self.conv_1d.kernel_size[0]}, so its weights fix T); got clips of T={num_segments} frames"
            )
        xa = self.TSA(x, num_segments) if self.TSA is not None else x
        if self.TCA is not None:
            xa = self.TCA(x, xa, num_segments)  # TCA pools x, not xa, as the published module does
        if self.conv_1d is None:
            return xa
        return F.relu(self.temporal_conv(xa, num_segments) + x)
