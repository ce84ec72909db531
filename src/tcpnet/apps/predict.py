"""Top-k predictions for individual video files (or frame folders) with a trained model.

Each video goes through the test pipeline of the model's input config (the same sampler and
crops as ``tcpnet test``, via :class:`tcpnet.data.VideoDataset` in test mode), the model, and a
softmax per view; several views are fused with the mean of the softmaxes by default, so the
probabilities of a video sum to 1 (the authors' max-prob fusion does not give probabilities).
A model trained on multi-label data scores each class with its own sigmoid (max over views):
its classes are not exclusive, so their probabilities do not sum to 1.
A file that cannot be decoded, or for which the model outputs NaN or infinite logits, gives a
:class:`Prediction` with ``error`` set; the others are still predicted.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from tcpnet.engine.evaluate import autocast_context, check_fusion, fuse_views, nonfinite_message

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "predict_videos", "read_labels", "build_predict_dataset"]


@dataclass
class Prediction:
    """Top-k classes of one video, best first; ``error`` instead when it could not be read."""

    video: str
    topk: List[Dict[str, Any]] = field(default_factory=list)  # {"label": int, "name": str|None, "prob": float}
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def read_labels(path: str, num_classes: Optional[int] = None) -> List[str]:
    """Class names, one per line (line i = class i); checked against the model's class count."""
    from tcpnet.data.list_parsers import read_class_names

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: labels file not found")
    names = read_class_names(path)
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names but the model has {num_classes} classes")
    return names


def build_predict_dataset(model: nn.Module, videos: Sequence[str], views: str = "1x1"):
    """A test-mode VideoDataset over ``videos`` (frame counts probed), errors raised per item."""
    from tcpnet.data.records import VideoRecord
    from tcpnet.data.dataset import VideoDataset

    records = [VideoRecord(str(v), None, 0) for v in videos]
    return VideoDataset.from_config(records, "", model.input_config, mode="test", views=views,
                                    on_error="raise", min_frames=0)


def _probabilities(logits: torch.Tensor, fusion: str) -> torch.Tensor:
    """(V, K) view logits -> (K,) class probabilities under ``fusion`` (resolved, not ``auto``)."""
    fused = fuse_views(logits.float().cpu().unsqueeze(0), fusion)[0]
    if fusion == "mean-logit":
        return fused.softmax(-1)
    if fusion == "max-prob":
        return fused / fused.sum()
    return fused


@torch.no_grad()
def predict_videos(model: nn.Module, videos: Sequence[str], *, views: str = "1x1", topk: int = 5,
                   class_names: Optional[Sequence[str]] = None, fusion: str = "auto",
                   device: Optional[torch.device] = None, amp: Optional[str] = None) -> List[Prediction]:
    """Predict each video in turn; returns one :class:`Prediction` per input, in order.

    ``fusion`` combines the views (``auto``: ``mean-prob``, or ``max-sigmoid`` for a model with
    ``multi_label`` set; ``max-prob``/``mean-logit`` are renormalised with a sum/softmax so that
    the reported values are probabilities).
    """
    from tcpnet.data.errors import DecodeError

    if check_fusion(fusion) == "auto":
        fusion = "max-sigmoid" if getattr(model, "multi_label", False) else "mean-prob"
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    device = device or next(model.parameters()).device
    model.eval()
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    k = min(int(topk), int(model.num_classes))
    dataset = build_predict_dataset(model, videos, views)
    out: List[Prediction] = []
    for i, video in enumerate(videos):
        try:
            clip = dataset.load(i, np.random.default_rng(0))  # test sampling/crops are deterministic
        except (DecodeError, OSError) as e:
            msg = str(e) if isinstance(e, DecodeError) else f"{video}: {e}"
            logger.debug("cannot read %s: %s", video, msg)
            out.append(Prediction(video=str(video), error=msg))
            continue
        if clip.dim() == 4:
            clip = clip.unsqueeze(0)  # one view: (1, 3, T, H, W)
        with autocast_context(device, amp):
            logits = model(clip.to(device)).float().cpu()  # the one copy to the host per video
        if not bool(torch.isfinite(logits).all()):
            out.append(Prediction(video=str(video), error=nonfinite_message([str(video)], 1)))
            continue
        values, indices = torch.sort(_probabilities(logits, fusion), descending=True, stable=True)
        out.append(Prediction(video=str(video), topk=[
            {"label": int(c), "name": names[int(c)] if names is not None else None, "prob": float(p)}
            for p, c in zip(values[:k], indices[:k])]))
    return out
