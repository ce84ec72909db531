"""Recognizer: backbone (per-frame feature maps) + pooling head (clip vector) + dropout + linear
classifier, the TSN wrapper of SPEC §2.5 with a (B, 3, T, H, W) public input layout."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from tcpnet.input_config import InputConfig

logger = logging.getLogger(__name__)

__all__ = ["Recognizer"]


class Recognizer(nn.Module):
    """Video classifier ``fc(dropout(head(backbone(frames), T)))``.

    Sub-modules are exactly ``backbone``, ``head``, ``dropout`` and ``fc`` so the state-dict keys are
    ``backbone.*``, ``head.*`` and ``fc.*``. The classifier is initialised N(0, 0.001^2) with zero
    bias as in the published wrapper.

    ``partial_bn=True`` reproduces the published partial BN: whenever the model is put in train
    mode, every ``BatchNorm2d`` of backbone and head except the first stays in eval mode and its
    affine parameters are frozen. Independently, a backbone with a ``bn_data`` input BN (pre-act
    ResNet-152) gets ``bn_data.weight.requires_grad = False`` in train mode (SPEC §2.5).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        dropout: float = 0.5,
        partial_bn: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_segments: int = int(getattr(backbone, "num_segments", 1))
        head_t = getattr(head, "num_segments", None)
        if head_t is not None and head_t != self.num_segments:
            raise ValueError(
                f"head was built for num_segments={head_t} but the backbone for {self.num_segments}"
            )
        self.num_classes = num_classes
        self.backbone = backbone
        self.head = head
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(head.out_dim, num_classes)
        cfg: InputConfig = getattr(backbone, "input_config", InputConfig())
        self.input_config = dataclasses.replace(cfg, num_segments=self.num_segments)
        self.model_name: Optional[str] = None
        self.model_kwargs: Dict[str, Any] = {}
        self.partial_bn_enabled = partial_bn
        self.reset_parameters()
        self.train(self.training)

    def reset_parameters(self) -> None:
        """Classifier init of the published wrapper: weight N(0, 0.001^2), bias 0."""
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.001)
        nn.init.zeros_(self.fc.bias)

    # ----------------------------------------------------------------------------------- forward
    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """Check a (B, 3, T, H, W) clip batch and return the video-major frame batch (B*T, 3, H, W)."""
        t = self.num_segments
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] != t:
            raise ValueError(
                f"expected input (B, 3, T, H, W) with T={t} (num_segments), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a normalised floating-point clip batch, got dtype {x.dtype}")
        b, c, _, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip batch (B, 3, T, H, W) -> pooled clip representation (B, D)."""
        return self.head(self.backbone(self.frames(x)), self.num_segments)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) -> logits (B, K): dropout, then the linear classifier."""
        return self.fc(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------------------- partial BN
    def batchnorms(self) -> List[nn.BatchNorm2d]:
        """BatchNorm2d modules of backbone then head, in registration order (the published walk)."""
        return [m for part in (self.backbone, self.head) for m in part.modules() if isinstance(m, nn.BatchNorm2d)]

    def partial_bn(self, enabled: bool = True) -> "Recognizer":
        """Switch partial BN on or off. Switching it off makes every BN trainable again (except
        ``bn_data.weight``, which the published wrapper always freezes in train mode)."""
        self.partial_bn_enabled = enabled
        if not enabled:
            for bn in self.batchnorms():
                for p in (bn.weight, bn.bias):
                    if p is not None:
                        p.requires_grad_(True)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Recognizer":
        super().train(mode)
        if not mode:
            return self
        bn_data = getattr(self.backbone, "bn_data", None)
        if isinstance(bn_data, nn.BatchNorm2d) and bn_data.weight is not None:
            bn_data.weight.requires_grad_(False)
        if self.partial_bn_enabled:
            for bn in self.batchnorms()[1:]:
                bn.eval()
                for p in (bn.weight, bn.bias):
                    if p is not None:
                        p.requires_grad_(False)
        return self

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, num_segments={self.num_segments}, num_classes={self.num_classes}"
