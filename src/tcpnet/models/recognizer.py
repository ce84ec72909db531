"""Recognizer: backbone (feature maps) + pooling head (clip vector) + dropout + linear classifier,
the TSN wrapper with a (B, 3, T, H, W) public input layout. It is the one owner of the clip
length T and of the input config."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tcpnet.backbones.base import LAYOUTS
from tcpnet.backbones.temporal import assign_num_segments, check_num_segments
from tcpnet.input_config import InputConfig
from tcpnet.models.batchnorm import batchnorms
from tcpnet.ops import no_autocast

__all__ = ["Recognizer", "HeadClassifier"]


class Recognizer(nn.Module):
    """Video classifier ``fc(dropout(head(backbone(clips), T')))``.

    Sub-modules are exactly ``backbone``, ``head``, ``dropout`` and ``fc`` so the state-dict keys are
    ``backbone.*``, ``head.*`` and ``fc.*``. The classifier is initialised N(0, 0.001^2) with zero
    bias as in the published wrapper.

    T (``num_segments``) is stored once, in ``input_config``; :meth:`set_num_segments` is the one
    way to change it (it updates the backbone's temporal modules, or raises when the head's
    weights fix T). The backbone's ``layout`` decides how clips reach it (see
    :mod:`tcpnet.backbones.base`); the head receives the T' the backbone produces.

    ``num_segments`` defaults to the T a frames backbone was built with (a video backbone holds
    none, so it is required there); ``input_config`` defaults to ImageNet input at crop 224
    (:func:`~tcpnet.models.build_model` passes the one registered with the backbone).

    ``partial_bn=True`` reproduces the published partial BN: whenever the model is put in train
    mode, every BatchNorm layer (any ``_BatchNorm``: 2-D, 3-D, SyncBatchNorm) of backbone and head
    except the first stays in eval mode and its affine parameters are frozen. Independently, a
    backbone with a ``bn_data`` input BN (pre-act ResNet-152) gets ``bn_data.weight`` frozen in
    train mode, as the published wrapper does.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        dropout: float = 0.5,
        partial_bn: bool = False,
        *,
        num_segments: Optional[int] = None,
        input_config: Optional[InputConfig] = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        layout = getattr(backbone, "layout", "frames")
        if layout not in LAYOUTS:
            raise ValueError(f"backbone layout must be one of {LAYOUTS}, got {layout!r}")
        if num_segments is None:
            num_segments = getattr(backbone, "num_segments", None)
            if num_segments is None:
                raise ValueError(f"Recognizer: num_segments is required for a {layout!r} backbone "
                                 "that does not hold one")
        t = check_num_segments(num_segments)
        self.num_classes = num_classes
        self.backbone = backbone
        self.head = head
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(head.out_dim, num_classes)
        fixed = self._fixed_head_segments(t)
        if fixed is not None:
            raise ValueError(f"head was built for num_segments={fixed} but the backbone for "
                             f"{self.head_segments(t)}{self._describe_t(t)}")
        self._t_owner = object()  # the token that lets this model, and no one else, set the backbone's T
        if layout == "frames":
            assign_num_segments(backbone, t)  # a fresh backbone: not owned yet
            backbone._t_owner = self._t_owner
        self._input_config = dataclasses.replace(input_config or InputConfig(), num_segments=t)
        self.model_name: Optional[str] = None
        self._model_kwargs: Dict[str, Any] = {}
        self.partial_bn_enabled = partial_bn
        self.backbone_frozen = False
        self.reset_parameters()
        self.train(self.training)

    def reset_parameters(self) -> None:
        """Classifier init of the published wrapper: weight N(0, 0.001^2), bias 0."""
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.001)
        nn.init.zeros_(self.fc.bias)

    # ------------------------------------------------------------------------- T and input
    @property
    def layout(self) -> str:
        """How the backbone takes clips: ``"frames"`` (B*T, 3, H, W) or ``"video"`` (B, 3, T, H, W)."""
        return getattr(self.backbone, "layout", "frames")

    @property
    def num_segments(self) -> int:
        """Frames per input clip (T)."""
        return self._input_config.num_segments

    @num_segments.setter
    def num_segments(self, value: int) -> None:
        self.set_num_segments(value)

    def head_segments(self, num_segments: Optional[int] = None) -> int:
        """Frames per clip the head receives (T' = the backbone's ``output_segments(T)``)."""
        t = self.num_segments if num_segments is None else num_segments
        out = getattr(self.backbone, "output_segments", None)
        return int(out(t)) if out is not None else t

    def _fixed_head_segments(self, t: int) -> Optional[int]:
        """The head's fixed T when it differs from what the backbone gives for ``t``, else None."""
        fixed = getattr(self.head, "fixed_num_segments", None)
        return fixed if fixed is not None and fixed != self.head_segments(t) else None

    def _describe_t(self, t: int) -> str:
        return f" (T'={self.head_segments(t)} output frames for clips of T={t})" if self.layout == "video" else ""

    def set_num_segments(self, num_segments: int) -> "Recognizer":
        """Run the model on clips of ``num_segments`` frames from now on: updates the input config,
        every temporal module of the backbone and the T the head is called with. Raises
        ValueError, changing nothing, when the head's weights fix another T."""
        t = check_num_segments(num_segments)
        fixed = self._fixed_head_segments(t)
        if fixed is not None:
            raise ValueError(
                f"cannot set num_segments={t}{self._describe_t(t)}: the head was built for "
                f"num_segments={fixed} and its weights fix T (TCP's temporal convolution has kernel "
                f"T//2+1); build a new model with num_segments={t}, or one with temporal_conv=False")
        if self.layout == "frames":
            assign_num_segments(self.backbone, t, owner=self._t_owner)
        self._input_config = dataclasses.replace(self._input_config, num_segments=t)
        return self

    @property
    def input_config(self) -> InputConfig:
        """What the model expects of its input clips (the data pipeline reads it from here)."""
        return self._input_config

    @input_config.setter
    def input_config(self, cfg: InputConfig) -> None:
        if not isinstance(cfg, InputConfig):
            raise TypeError(f"input_config must be an InputConfig, got {type(cfg).__name__}")
        if cfg.num_segments != self.num_segments:
            raise ValueError(
                f"input_config.num_segments={cfg.num_segments} differs from the model's "
                f"num_segments={self.num_segments}; change T with model.set_num_segments(T)")
        self._input_config = cfg

    @property
    def model_kwargs(self) -> Dict[str, Any]:
        """The ``build_model`` arguments that rebuild this model (``num_segments`` is the current T)."""
        kwargs = dict(self._model_kwargs)
        if "num_segments" in kwargs:
            kwargs["num_segments"] = self.num_segments
        return kwargs

    @model_kwargs.setter
    def model_kwargs(self, kwargs: Dict[str, Any]) -> None:
        self._model_kwargs = dict(kwargs)

    # ----------------------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is a floating-point (B, 3, T, H, W) batch with this T."""
        t = self.num_segments
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] != t:
            raise ValueError(
                f"expected input (B, 3, T, H, W) with T={t} (num_segments), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a normalised floating-point clip batch, got dtype {x.dtype}")

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """Check a (B, 3, T, H, W) clip batch and return the video-major frame batch (B*T, 3, H, W)."""
        self.check_input(x)
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)

    def backbone_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Clip batch (B, 3, T, H, W) -> the backbone's maps (B*T', C, h, w), video-major: what the
        head pools (and what a feature cache stores)."""
        if self.layout == "frames":
            return self.backbone(self.frames(x))
        self.check_input(x)
        t_out = self.head_segments()
        maps = self.backbone(x)
        if maps.dim() != 4 or maps.shape[0] != x.shape[0] * t_out:
            raise ValueError(
                f"{type(self.backbone).__name__}: a 'video' backbone must return (B*T', C, h, w) with "
                f"T'={t_out} (its output_segments({self.num_segments})), got {tuple(maps.shape)} "
                f"for B={x.shape[0]}")
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip batch (B, 3, T, H, W) -> pooled clip representation (B, D)."""
        return self.head(self.backbone_maps(x), self.head_segments())

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) -> logits (B, K): dropout, then the linear classifier, in the
        classifier's own dtype even under autocast. Its input is one vector per clip, so in bf16
        casting the (K, D) weight and its gradient every step (400 x 8256 for TCP) costs more than
        the matmul: float32 here is the faster and the more precise choice."""
        with no_autocast(feats.device):
            return self.fc(self.dropout(feats.to(self.fc.weight.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def head_classifier(self) -> "HeadClassifier":
        """The model without its backbone, as a module of its own: backbone maps in, logits out,
        sharing this model's head and classifier parameters (training on cached maps)."""
        return HeadClassifier(self)

    # -------------------------------------------------------------------------- partial BN
    def batchnorms(self) -> List[_BatchNorm]:
        """BatchNorm layers of backbone then head, in registration order (the published walk)."""
        return batchnorms(self)

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

    def freeze_backbone(self) -> "Recognizer":
        """Probing a frozen backbone (``train.freeze_backbone``): its parameters get no gradient
        and it stays in eval mode (BatchNorm statistics and dropout fixed) whatever ``train()``
        is called with, so only the head and the classifier learn."""
        self.backbone_frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Recognizer":
        super().train(mode)
        if not mode:
            return self
        if self.backbone_frozen:
            self.backbone.eval()
        bn_data = getattr(self.backbone, "bn_data", None)
        if isinstance(bn_data, _BatchNorm) and bn_data.weight is not None:
            bn_data.weight.requires_grad_(False)
        if self.partial_bn_enabled:
            for bn in self.batchnorms()[1:]:
                bn.eval()
                for p in (bn.weight, bn.bias):
                    if p is not None:
                        p.requires_grad_(False)
        return self

    def extra_repr(self) -> str:
        return (f"model_name={self.model_name!r}, layout={self.layout!r}, "
                f"num_segments={self.num_segments}, num_classes={self.num_classes}")


class HeadClassifier(nn.Module):
    """``head`` + ``dropout`` + ``fc`` of a :class:`Recognizer`, taking the backbone's maps
    ``(B, T', C, h, w)`` (one clip's maps together, as a feature cache stores them) and
    returning the logits ``(B, K)``. Its parameters are the Recognizer's own, so training it
    trains the Recognizer (and DDP can wrap it without the frozen backbone); ``train()`` applies
    the Recognizer's rules (partial BN, frozen backbone)."""

    def __init__(self, model: Recognizer) -> None:
        super().__init__()
        self.head, self.dropout, self.fc = model.head, model.dropout, model.fc
        self._owner = [model]  # a plain list: the Recognizer is not a sub-module (no backbone parameters here)
        self.num_segments = model.head_segments()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.dim() != 5 or maps.shape[1] != self.num_segments:
            raise ValueError(f"expected backbone maps (B, T', C, h, w) with T'={self.num_segments}, "
                             f"got {tuple(maps.shape)}")
        b, t = maps.shape[:2]
        return self._owner[0].forward_head(self.head(maps.reshape(b * t, *maps.shape[2:]), t))

    def train(self, mode: bool = True) -> "HeadClassifier":
        super().train(mode)
        self._owner[0].train(mode)
        return self
