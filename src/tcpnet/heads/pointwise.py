"""1x1 convolutions of the heads as plain matmuls where that is cheaper than a convolution call.

The heads keep ``nn.Conv2d`` modules (the authors' parameter names and shapes, so their weights
load), but a 1x1 convolution is a matmul over the channel axis: on a channels-last tensor the
(N, H, W, C) view is free and one ``F.linear`` runs forward+backward faster than the oneDNN
convolution on CPU (the 2048->256 reduction at 8x112^2, batch 4: 13.2 vs 15.0 ms in fp32, 3.1 vs
4.7 ms in bf16), and on (B, C, 1, 1) vectors the convolution call's fixed cost dominates.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv1x1", "linear1x1"]


def _check(conv: nn.Conv2d) -> None:
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1 or conv.padding not in ((0, 0), "valid"):
        raise ValueError(f"conv1x1: expected a plain 1x1 convolution, got {conv}")


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 ``conv``: as one matmul on the NHWC view when ``x`` is channels-last
    (the result is channels-last too), as the convolution itself otherwise (there a matmul would
    first copy ``x`` into NHWC order)."""
    _check(conv)
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return conv(x)
    return F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias).permute(0, 3, 1, 2)


def linear1x1(conv: nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``conv`` applied to vectors ``v`` (..., C_in) -> (..., C_out), as ``F.linear``."""
    _check(conv)
    return F.linear(v, conv.weight.flatten(1), conv.bias)
