"""Model registry: a dict of small factory functions (timm-style) and :func:`build_model`.

Every factory takes ``num_classes``, ``num_segments`` and keyword overrides of its defaults
(``build_model("tcp_tiny", dim=32)``). :func:`create_recognizer` routes each option by signature:
to the backbone factory, the head class or the Recognizer (``dropout``, ``partial_bn``),
whichever accepts it; an option none accepts is a ``TypeError`` naming it. TCP/GCP models use the
published zoo settings (last stage stride 1; the heads' own defaults dim 128, mid 256; dropout
0.5); the ResNet GAP baselines (tsn_r50, tsm_r50, tsn_r18) keep the standard stride-2 last stage
of the TSN/TSM papers; the tiny demo models all use stride 1.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from tcpnet.backbones import backbone_input_config, get_backbone
from tcpnet.heads import create_head, get_head
from tcpnet.input_config import InputConfig
from tcpnet.models.recognizer import Recognizer

__all__ = ["register_model", "build_model", "list_models", "create_recognizer", "compose_model",
           "check_model_name"]

_MODELS: Dict[str, Callable[..., Recognizer]] = {}
_RECOGNIZER_OPTIONS = frozenset({"dropout", "partial_bn"})


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


def check_model_name(name: str) -> None:
    """Raise ValueError (listing the choices) unless ``name`` is a registered model or a
    ``"<backbone>+<head>"`` of registered parts; builds nothing."""
    if "+" in name:
        backbone, _, head = name.partition("+")
        if not backbone or not head or "+" in head:
            raise ValueError(f"model {name!r}: expected '<backbone>+<head>'")
        get_backbone(backbone), get_head(head)
    elif name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {list_models()}, or "
                         "'<backbone>+<head>' (tcpnet.backbones.list_backbones() x tcpnet.heads.list_heads())")


def build_model(name: str, num_classes: int = 400, num_segments: Optional[int] = None,
                **overrides: Any) -> Recognizer:
    """Build the registered model ``name`` with fresh weights (``num_segments``: the factory's
    default T when None, 8 for the 2-D zoo). Weights are loaded afterwards, by the layer above
    (``load_pretrained(model, path)`` or ``load_checkpoint(model, path)`` of the checkpoints package)."""
    check_model_name(name)
    if "+" in name:
        model = compose_model(name, num_classes, num_segments, overrides)
    else:
        if num_segments is not None:
            overrides["num_segments"] = num_segments
        model = _MODELS[name](num_classes=num_classes, **overrides)
        overrides.pop("num_segments", None)
    model.model_name = name
    model.model_kwargs = dict(num_classes=num_classes, num_segments=model.num_segments, **overrides)
    return model


def compose_model(name: str, num_classes: int, num_segments: Optional[int],
                  options: Mapping[str, Any]) -> Recognizer:
    """``"<backbone>+<head>"``: any registered backbone with any registered head. T defaults to the
    one registered with the backbone's input config (8 for 2-D networks, 16 for R(2+1)D)."""
    check_model_name(name)
    backbone, _, head = name.partition("+")
    t = num_segments if num_segments is not None else backbone_input_config(backbone).num_segments
    return create_recognizer(backbone, head, num_classes, t, options)


def _keywords(fn: Callable[..., Any], skip: Tuple[str, ...] = ()) -> Tuple[Set[str], bool]:
    """Keyword parameters of ``fn`` (minus ``skip``) and whether it also takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - set(skip), any(p.kind is p.VAR_KEYWORD for p in params)


def create_recognizer(backbone: str, head: str, num_classes: int, num_segments: int,
                      options: Mapping[str, Any], input_config: Optional[InputConfig] = None) -> Recognizer:
    """Backbone ``backbone`` + head ``head`` + classifier, for clips of ``num_segments`` frames.

    Each entry of ``options`` goes to every part whose signature names it: the backbone factory,
    the head class (``in_channels`` and ``num_segments`` are set here) or the Recognizer
    (``dropout``, ``partial_bn``). A part taking ``**kwargs`` receives what no part names.
    ``input_config`` defaults to the one registered with the backbone.
    """
    factory, head_cls = get_backbone(backbone), get_head(head)
    bb_names, bb_any = _keywords(factory, skip=("num_segments",))
    head_names, head_any = _keywords(head_cls, skip=("self", "in_channels", "num_segments"))
    bb_kw = {k: v for k, v in options.items() if k in bb_names}
    head_kw = {k: v for k, v in options.items() if k in head_names}
    model_kw = {k: v for k, v in options.items() if k in _RECOGNIZER_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in bb_names | head_names | _RECOGNIZER_OPTIONS}
    if rest and bb_any:
        bb_kw.update(rest)
    elif rest and head_any:
        head_kw.update(rest)
    elif rest:
        accepted = sorted(bb_names | head_names | _RECOGNIZER_OPTIONS)
        raise TypeError(f"unexpected option(s) {sorted(rest)} for backbone {backbone!r} + head "
                        f"{head!r}; accepted: {accepted}")
    if "num_segments" in _keywords(factory)[0]:
        bb_kw["num_segments"] = num_segments
    bb = factory(**bb_kw)
    t_out = bb.output_segments(num_segments) if hasattr(bb, "output_segments") else num_segments
    h = create_head(head, bb.num_features, num_segments=t_out, **head_kw)
    return Recognizer(bb, h, num_classes, num_segments=num_segments,
                      input_config=input_config or backbone_input_config(backbone), **model_kw)


# ---------------------------------------------------------------------- published TCP zoo
@register_model
def tcp_tsn_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCPNet on TSN ResNet-50 (last stride 1), the K400 zoo model."""
    return create_recognizer("resnet50", "tcp", num_classes, num_segments, overrides)


@register_model
def tcp_tea_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCPNet on TEA ResNet-50 (Res2Net-50 26w4s with ME/MTA), the K400 zoo model."""
    return create_recognizer("tea_r50", "tcp", num_classes, num_segments, overrides)


@register_model
def tcp_tsn_r152(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCPNet on pre-activation ResNet-152 (raw 0-255 input), the K400 zoo model."""
    return create_recognizer("preact_resnet152", "tcp", num_classes, num_segments, overrides)


@register_model
def tcp_tsm_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCP on TSM ResNet-50 (residual temporal shift, last stride 1)."""
    return create_recognizer("resnet50", "tcp", num_classes, num_segments,
                             {"temporal_shift": "blockres", **overrides})


# ------------------------------------------------------------------------------- baselines
@register_model
def tsn_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TSN ResNet-50 with average pooling (standard stride-2 last stage)."""
    return create_recognizer("resnet50", "gap", num_classes, num_segments, {"last_stride": 2, **overrides})


@register_model
def tsm_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TSM ResNet-50: residual temporal shift, average pooling (standard stride-2 last stage)."""
    return create_recognizer("resnet50", "gap", num_classes, num_segments,
                             {"last_stride": 2, "temporal_shift": "blockres", **overrides})


@register_model
def gcp_tsn_r50(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """Orderless covariance pooling (iSQRT-COV over all T*H*W positions) on TSN ResNet-50."""
    return create_recognizer("resnet50", "gcp", num_classes, num_segments, overrides)


@register_model
def tcp_tsn_r18(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCP on TSN ResNet-18 (512 channels; same dim 128 / mid 256 as the zoo)."""
    return create_recognizer("resnet18", "tcp", num_classes, num_segments, overrides)


@register_model
def tsn_r18(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TSN ResNet-18 with average pooling (standard stride-2 last stage)."""
    return create_recognizer("resnet18", "gap", num_classes, num_segments, {"last_stride": 2, **overrides})


# ------------------------------------------------------------------------ 3-D backbone
@register_model
def tcp_r2plus1d_r18(num_classes: int = 400, num_segments: int = 16, **overrides: Any) -> Recognizer:
    """TCP on R(2+1)D-18 (torchvision's Kinetics-400 network): the head pools the backbone's
    T' = output_segments(T) frames (16 -> 2, 8 -> 1) with the zoo's dim 128 / mid 256."""
    return create_recognizer("r2plus1d_18", "tcp", num_classes, num_segments, overrides)


@register_model
def r2plus1d_r18(num_classes: int = 400, num_segments: int = 16, **overrides: Any) -> Recognizer:
    """R(2+1)D-18 with average pooling over T', H, W: torchvision's ``r2plus1d_18`` network."""
    return create_recognizer("r2plus1d_18", "gap", num_classes, num_segments, overrides)


# ---------------------------------------------------------------------- CPU demo models
_TINY_COV = dict(dim=32, mid_channels=64)


@register_model
def tcp_tiny(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """TCP (dim 32, mid 64) on the narrow ``resnet_tiny`` backbone, for CPU demos and tests."""
    return create_recognizer("resnet_tiny", "tcp", num_classes, num_segments, {**_TINY_COV, **overrides})


@register_model
def gcp_tiny(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """Orderless covariance pooling (dim 32, mid 64) on ``resnet_tiny``."""
    return create_recognizer("resnet_tiny", "gcp", num_classes, num_segments, {**_TINY_COV, **overrides})


@register_model
def tsn_tiny(num_classes: int = 400, num_segments: int = 8, **overrides: Any) -> Recognizer:
    """Average pooling on ``resnet_tiny`` (same last stride 1 as the demo TCP, for a like-for-like
    comparison of heads)."""
    return create_recognizer("resnet_tiny", "gap", num_classes, num_segments, overrides)
