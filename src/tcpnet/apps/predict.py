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

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from tcpnet.apps.collection import (
    Collection, Job, build_clip_dataset, file_sha256, open_append, read_lines, ranks, run_collection,
)
from tcpnet.engine.evaluate import autocast_context, check_fusion, fuse_views, nonfinite_message

logger = logging.getLogger(__name__)

__all__ = ["Prediction", "predict_videos", "read_labels", "build_predict_dataset", "Ranking", "ranking",
           "predict_views", "ListOptions", "ListResult", "PredictionLines", "predict_list",
           "predict_list_from_checkpoint"]


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

    how = ranking(model, topk=topk, class_names=class_names, fusion=fusion, device=device, amp=amp)
    model.eval()
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
        out.append(predict_views(model, str(video), clip, how))
    return out


@dataclass(frozen=True)
class Ranking:
    """How a video's logits become its top-k: resolved fusion, k, class names, device, autocast."""

    fusion: str
    k: int
    names: Optional[Sequence[str]]
    device: torch.device
    amp: Optional[str] = None


def ranking(model: nn.Module, *, topk: int = 5, class_names: Optional[Sequence[str]] = None, fusion: str = "auto",
            device: Optional[torch.device] = None, amp: Optional[str] = None) -> Ranking:
    """The :class:`Ranking` for ``model``: ``auto`` fusion resolved, k clipped to the classes, the
    class names given or the model's."""
    if check_fusion(fusion) == "auto":
        fusion = "max-sigmoid" if getattr(model, "multi_label", False) else "mean-prob"
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    return Ranking(fusion, min(int(topk), int(model.num_classes)), names,
                   device or next(model.parameters()).device, amp)


@torch.no_grad()
def predict_views(model: nn.Module, video: str, clip: torch.Tensor, how: Ranking) -> Prediction:
    """The top-k of one video from its (V, 3, T, H, W) views (or one (3, T, H, W) view)."""
    if clip.dim() == 4:
        clip = clip.unsqueeze(0)  # one view: (1, 3, T, H, W)
    with autocast_context(how.device, how.amp):
        logits = model(clip.to(how.device)).float().cpu()  # the one copy to the host per video
    if not bool(torch.isfinite(logits).all()):
        return Prediction(video=video, error=nonfinite_message([video], 1))
    values, indices = torch.sort(_probabilities(logits, how.fusion), descending=True, stable=True)
    names = how.names
    return Prediction(video=video, topk=[
        {"label": int(c), "name": names[int(c)] if names is not None else None, "prob": float(p)}
        for p, c in zip(values[:how.k], indices[:how.k])])


# --------------------------------------------------------------------------- predict --list


@dataclass
class ListOptions:
    """``predict --list``: views, the top-k and how it is made, decoding workers and timeout, a bar."""

    views: str = "1x1"
    topk: int = 5
    fusion: str = "auto"
    class_names: Optional[Sequence[str]] = None
    workers: int = 0
    decode_timeout: Optional[float] = 60.0
    progress: bool = False


class PredictionLines:
    """The :class:`~tcpnet.apps.collection.Sink` of ``predict --list``: one JSON line per video,
    flushed as it is made. Rank 0 appends to the output itself, rank r to ``<out>.rank<r>.part``;
    rank 0 moves the parts' lines (those not in the output yet) into the output at the end."""

    def __init__(self, model: nn.Module, coll: Collection, out_file: Path, how: Ranking) -> None:
        self.model, self.coll, self.out, self.how = model, coll, out_file, how
        self.file: Optional[Any] = None
        self.own = out_file

    def _parts(self) -> List[Path]:
        return sorted(self.out.parent.glob(self.out.name + ".rank*.part"))

    def repair(self, rank: int) -> None:
        self.own = self.out if rank == 0 else self.out.with_name(f"{self.out.name}.rank{rank}.part")
        self.file = open_append(self.own)

    def committed(self) -> set:
        return {line["video"] for path in [self.out, *self._parts()] for line in read_lines(path)}

    def is_complete(self) -> bool:
        return self.out.is_file() and not self._parts()

    def put(self, index: int, views: Optional[torch.Tensor], error: Optional[str]) -> None:
        video = self.coll.records[index].path
        pred = Prediction(video=video, error=error) if error else predict_views(self.model, video, views, self.how)
        if pred.error:
            logger.warning("%s", pred.error)
        line = pred.to_dict()
        if self.coll.has_labels:
            line["label"] = self.coll.label(index)
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()  # a kill loses at most the line being written (cut off by the rerun)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def merge(self) -> None:
        have = {line["video"] for line in read_lines(self.out)}
        with open_append(self.out) as f:
            for part in self._parts():
                for line in read_lines(part):
                    if line["video"] not in have:
                        have.add(line["video"])
                        f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
                part.unlink()


@dataclass
class ListResult:
    """The output file, the number of videos in it and how many are errors; what the run did."""

    out_file: Path
    num_videos: int
    num_errors: int
    stats: Any = None


def predict_list(model: nn.Module, coll: Collection, out_file: str, options: ListOptions,
                 checkpoint: Optional[str] = None) -> ListResult:
    """Top-k of every video of ``coll`` (a :class:`~tcpnet.apps.collection.Collection`) as JSON lines
    in ``out_file`` (``{"video", "topk", "error"}``, plus ``"label"`` when the list has labels),
    each video once, in the order they were done; a rerun after a kill appends the missing ones,
    a rerun with other settings is refused. Under torchrun, call once per rank."""
    out = Path(out_file)
    how = ranking(model, topk=options.topk, class_names=options.class_names, fusion=options.fusion)
    job = {"command": "predict", "model": getattr(model, "model_name", None), "checkpoint": checkpoint,
           "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None, "views": options.views,
           "topk": how.k, "fusion": how.fusion, "class_names": how.names, "list": coll.source,
           "list_sha256": coll.digest()}
    model.eval()
    dataset = build_clip_dataset(model, coll, options.views, options.decode_timeout)
    sink = PredictionLines(model, coll, out, how)
    job_file = out.with_name(out.name + ".job.json")
    compare = ("checkpoint_sha256", "views", "topk", "fusion", "class_names", "list_sha256")
    stats = run_collection(Job(job_file, job, compare, str(out)), coll, sink, dataset, options.workers,
                           options.progress)
    lines = read_lines(out)
    return ListResult(out, len(lines), sum(1 for line in lines if line.get("error")), stats)


def predict_list_from_checkpoint(checkpoint: str, coll: Collection, out_file: str, options: ListOptions,
                                 device: str = "auto") -> ListResult:
    """:func:`predict_list` with the model of ``checkpoint``, on this rank's device (torchrun-aware)."""
    from tcpnet.checkpoints import build_model_from_checkpoint

    with ranks(device) as info:
        model = build_model_from_checkpoint(checkpoint).to(info.device)
        return predict_list(model, coll, out_file, options, checkpoint=checkpoint)
