"""The head contract: video-major frame features ``(N*T, C, H, W)`` plus ``T`` -> ``(N, out_dim)``.

T arrives with every call (the model owns it), so one head instance serves any clip length
unless its weights depend on T; such a head says so with ``fixed_num_segments``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["Head", "ParamGroupSpec", "check_frame_batch"]


@dataclass(frozen=True)
class ParamGroupSpec:
    """A family of optimizer groups that a head asks for: the parameters of its sub-modules
    ``modules`` (names relative to the head) go to ``<name>_weight``, ``<name>_bias`` (no weight
    decay) and ``<name>_bn scale/shift``, at ``lr_mult`` times the base learning rate
    (None: ``train.lr_x_factor``, the published TCP attention rate)."""

    name: str
    modules: Tuple[str, ...]
    lr_mult: Optional[float] = None


def check_frame_batch(x: torch.Tensor, num_segments: int, in_channels: int, head: str) -> int:
    """Validate a (N*T, C, H, W) frame batch and return N."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{head}: expected feature maps (N*T, {in_channels}, H, W), got {tuple(x.shape)}"
        )
    if num_segments < 1 or x.shape[0] % num_segments != 0:
        raise ValueError(
            f"{head}: batch of {x.shape[0]} frames is not a multiple of num_segments={num_segments}"
        )
    return x.shape[0] // num_segments


class Head(nn.Module):
    """Base of pooling heads: ``forward(x, num_segments) -> (N, out_dim)``."""

    in_channels: int
    out_dim: int

    @property
    def fixed_num_segments(self) -> Optional[int]:
        """The only T this head's weights allow (e.g. a temporal convolution whose kernel depends
        on T), or None when it pools clips of any length."""
        return None

    def param_groups(self, pretrained_dim: Optional[int] = None) -> List[ParamGroupSpec]:
        """The optimizer groups this head's own policy asks for (default: none; its parameters
        train like the backbone's). ``pretrained_dim``: the reduction width of the weights it
        starts from, when that differs from its own a head may retrain the layers that changed."""
        return []

    def explain_modules(self) -> Dict[str, nn.Module]:
        """The sub-modules whose attention ``tcpnet explain`` shows, by the map they feed (default:
        none), so that explain never names a head's attributes. Keys and the contract of each:

        * ``"tsa"``: spatial attention called as ``(x, num_segments)`` on (N*T, d, H, W) with a method
          ``affinity(x, num_segments)`` -> (N*T, L, L) softmax weights, L = H*W, rows summing to 1;
        * ``"tca"``: channel attention called as ``(x, xa, num_segments)`` with a method
          ``gates(x, num_segments)`` -> (N*T, d, 1, 1), twice the per-channel scale it applies.
        """
        return {}
