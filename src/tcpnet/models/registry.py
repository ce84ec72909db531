"""Model registry: a dict of small factory functions (timm-style) and :func:`build_model`.

Every factory takes ``num_classes``, ``num_segments`` and keyword overrides of its defaults
(``build_model("tcp_tiny", dim=32)``); an unknown override raises ``TypeError`` naming it.
TCP/GCP models default to the published zoo settings (last stage stride 1, dim 128, mid 256,
dropout 0.5); the ResNet GAP baselines (tsn_r50, tsm_r50, tsn_r18) keep the standard stride-2
last stage of the TSN/TSM papers; the tiny demo models all use stride 1.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

from tcpnet.backbones import create_backbone
from tcpnet.heads import GAPHead, GCPHead, TCPHead
from tcpnet.models.recognizer import Recognizer

logger = logging.getLogger(__name__)

__all__ = ["register_model", "build_model", "list_models"]

_MODELS: Dict[str, Callable[..., Recognizer]] = {}


def register_model(fn: Callable[..., Recognizer]) -> Callable[..., Recognizer]:
    """Decorator: register a factory ``fn(num_classes, num_segments, **overrides)`` under its name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered (by {_MODELS[name].__module__})")
    _MODELS[name] = fn
    return fn


def list_models() -> List[str]:
    """Sorted names accepted by :func:`build_model`."""
    return sorted(_MODELS)


def build_model(
    name: str,
    num_classes: int = 400,
    num_segments: int = 8,
    pretrained: Optional[str] = None,
    **overrides: Any,
) -> Recognizer:
    """Build the registered model ``name``; ``pretrained`` is a weights file loaded with
    :func:`tcpnet.checkpoints.load_pretrained` (authors' checkpoint, ImageNet GCP, ours)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {list_models()}")
    model = _MODELS[name](num_classes=num_classes, num_segments=num_segments, **overrides)
    model.model_name = name
    model.model_kwargs = dict(num_classes=num_classes, num_segments=num_segments, **overrides)
    if pretrained is not None:
        from tcpnet.checkpoints import load_pretrained  # lazy: checkpoints imports models

        report = load_pretrained(model, pretrained)
        logger.info("%s: loaded pretrained weights from %s: %s", name, pretrained, report)
    return model


# ---------------------------------------------------------------------------------- builders
_BACKBONE_OPTIONS = dict(last_stride=1, temporal_shift=None, shift_div=8)
_RECOGNIZER_OPTIONS = dict(dropout=0.5, partial_bn=False)
_COV_OPTIONS = dict(dim=128, mid_channels=256, iters=3)
_TCP_OPTIONS = dict(_COV_OPTIONS, spatial_attention=True, channel_attention=True, temporal_conv=True,
                    level="video")
_HEAD_OPTIONS = {"tcp": _TCP_OPTIONS, "gcp": _COV_OPTIONS, "gap": {}}


def _build(
    model: str,
    backbone: str,
    head: str,
    num_classes: int,
    num_segments: int,
    defaults: Dict[str, Any],
    overrides: Dict[str, Any],
) -> Recognizer:
    """Assemble backbone + head + classifier from defaults updated by overrides."""
    allowed = {**_BACKBONE_OPTIONS, **_RECOGNIZER_OPTIONS, **_HEAD_OPTIONS[head]}
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(
            f"build_model({model!r}): unexpected override(s) {unknown}; accepted: {sorted(allowed)}"
        )
    opts = {**allowed, **defaults, **overrides}
    bb_kwargs: Dict[str, Any] = dict(num_segments=num_segments, last_stride=opts["last_stride"])
    if opts["temporal_shift"] is not None:
        bb_kwargs.update(temporal_shift=opts["temporal_shift"], shift_div=opts["shift_div"])
    bb = create_backbone(backbone, **bb_kwargs)
    c = bb.num_features
    if head == "tcp":
        h: Any = TCPHead(
            c,
            dim=opts["dim"],
            num_segments=num_segments,
            mid_channels=opts["mid_channels"],
            spatial_attention=opts["spatial_attention"],
            channel_attention=opts["channel_attention"],
            temporal_conv=opts["temporal_conv"],
            iters=opts["iters"],
            level=opts["level"],
        )
    elif head == "gcp":
        h = GCPHead(c, dim=opts["dim"], mid_channels=opts["mid_channels"], iters=opts["iters"])
    else:
        h = GAPHead(c)
    return Recognizer(bb, h, num_classes, dropout=opts["dropout"], partial_bn=opts["partial_bn"])


# ---------------------------------------------------------------------- published TCP zoo
@register_model
def tcp_tsn_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCPNet on TSN ResNet-50 (last stride 1), the K400 zoo model."""
    return _build("tcp_tsn_r50", "resnet50", "tcp", num_classes, num_segments, {}, overrides)


@register_model
def tcp_tea_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCPNet on TEA ResNet-50 (Res2Net-50 26w4s with ME/MTA), the K400 zoo model."""
    return _build("tcp_tea_r50", "tea_r50", "tcp", num_classes, num_segments, {}, overrides)


@register_model
def tcp_tsn_r152(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCPNet on pre-activation ResNet-152 (raw 0-255 input), the K400 zoo model."""
    return _build("tcp_tsn_r152", "preact_resnet152", "tcp", num_classes, num_segments, {}, overrides)


@register_model
def tcp_tsm_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCP on TSM ResNet-50 (residual temporal shift, last stride 1)."""
    return _build("tcp_tsm_r50", "resnet50", "tcp", num_classes, num_segments,
                  dict(temporal_shift="blockres"), overrides)


# ------------------------------------------------------------------------------- baselines
@register_model
def tsn_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TSN ResNet-50 with average pooling (standard stride-2 last stage)."""
    return _build("tsn_r50", "resnet50", "gap", num_classes, num_segments, dict(last_stride=2), overrides)


@register_model
def tsm_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TSM ResNet-50: residual temporal shift, average pooling (standard stride-2 last stage)."""
    return _build("tsm_r50", "resnet50", "gap", num_classes, num_segments,
                  dict(last_stride=2, temporal_shift="blockres"), overrides)


@register_model
def gcp_tsn_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """Orderless covariance pooling (iSQRT-COV over all T*H*W positions) on TSN ResNet-50."""
    return _build("gcp_tsn_r50", "resnet50", "gcp", num_classes, num_segments, {}, overrides)


@register_model
def tcp_tsn_r18(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCP on TSN ResNet-18 (512 channels; same dim 128 / mid 256 as the zoo)."""
    return _build("tcp_tsn_r18", "resnet18", "tcp", num_classes, num_segments, {}, overrides)


@register_model
def tsn_r18(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TSN ResNet-18 with average pooling (standard stride-2 last stage)."""
    return _build("tsn_r18", "resnet18", "gap", num_classes, num_segments, dict(last_stride=2), overrides)


# ---------------------------------------------------------------------- CPU demo models
_TINY_COV = dict(dim=32, mid_channels=64)


@register_model
def tcp_tiny(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCP (dim 32, mid 64) on the narrow ``resnet_tiny`` backbone, for CPU demos and tests."""
    return _build("tcp_tiny", "resnet_tiny", "tcp", num_classes, num_segments, _TINY_COV, overrides)


@register_model
def gcp_tiny(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """Orderless covariance pooling (dim 32, mid 64) on ``resnet_tiny``."""
    return _build("gcp_tiny", "resnet_tiny", "gcp", num_classes, num_segments, _TINY_COV, overrides)


@register_model
def tsn_tiny(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """Average pooling on ``resnet_tiny`` (same last stride 1 as the demo TCP, for a like-for-like
    comparison of heads)."""
    return _build("tsn_tiny", "resnet_tiny", "gap", num_classes, num_segments, {}, overrides)
