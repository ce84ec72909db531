"""Evaluation loop: per-view logits -> fused video scores -> metrics, exact across DDP ranks.

Under DDP each rank evaluates its own shard (see ``distributed.shard_indices``); the per-video
results are gathered with their dataset indices and de-duplicated, so every video counts once.
Non-finite logits are an error naming the videos (a NaN ranks as a hit in every metric), raised
on every rank alike because the check runs on the gathered results.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tcpnet.config import FUSIONS, resolve_fusion
from tcpnet.engine.distributed import all_gather_objects, is_distributed, is_main_process
from tcpnet.engine.metrics import classification_metrics

logger = logging.getLogger(__name__)

__all__ = ["EvalResult", "FUSIONS", "NonFiniteLogitsError", "check_fusion", "fuse_views", "evaluate",
           "autocast_context", "nonfinite_message"]

_NAMES_SHOWN = 5  # videos named in a non-finite-logits error before "... (+N more)"


class NonFiniteLogitsError(FloatingPointError):
    """The model returned NaN or infinite logits for some videos (broken weights or BatchNorm
    statistics, or an overflow under reduced precision)."""


def check_fusion(fusion: str, key: str = "fusion") -> str:
    """Return ``fusion`` if it is one of :data:`FUSIONS`, else raise a ValueError naming ``key``:
    the one check of a view-fusion choice, for every command and the evaluation loop."""
    if fusion not in FUSIONS:
        raise ValueError(f"{key}: expected one of {', '.join(FUSIONS)}, got {fusion!r}")
    return fusion


def nonfinite_message(videos: Sequence[str], total: int) -> str:
    """The one wording of a non-finite-logits error: how many of ``total`` videos, which, and why."""
    shown = ", ".join(str(v) for v in videos[:_NAMES_SHOWN])
    more = f", ... (+{len(videos) - _NAMES_SHOWN} more)" if len(videos) > _NAMES_SHOWN else ""
    return (f"the model output NaN or infinite logits for {len(videos)} of {total} video(s): {shown}{more}; "
            "its weights or BatchNorm statistics are not finite, or the forward pass overflows "
            "(e.g. under fp16 autocast)")

@dataclass
class EvalResult:
    """Everything an evaluation produced, in dataset-index order."""

    scores: torch.Tensor          # (N, K) fused scores (probabilities, or logits for mean-logit)
    view_logits: torch.Tensor     # (N, V, K) raw logits per view
    targets: torch.Tensor         # (N,) int labels or (N, K) multi-hot
    indices: torch.Tensor         # (N,) dataset indices
    metrics: Dict[str, object] = field(default_factory=dict)


def fuse_views(view_logits: torch.Tensor, fusion: str = "max-prob", multi_label: bool = False) -> torch.Tensor:
    """(N, V, K) logits -> (N, K) scores. max-prob: softmax per view, class-wise max over views
    (the authors' test script); mean-prob: mean of softmaxes; mean-logit: mean of logits;
    max-sigmoid / mean-sigmoid: independent per-class sigmoids, max or mean over views (the
    multi-label protocol: classes are not exclusive, so they must not compete in a softmax);
    auto: max-sigmoid for multi-label data, else max-prob."""
    fusion = resolve_fusion(check_fusion(fusion), multi_label)
    x = view_logits.float()
    if fusion == "max-prob":
        return x.softmax(-1).amax(1)
    if fusion == "mean-prob":
        return x.softmax(-1).mean(1)
    if fusion == "max-sigmoid":
        return x.sigmoid().amax(1)
    if fusion == "mean-sigmoid":
        return x.sigmoid().mean(1)
    return x.mean(1)


def autocast_context(device: torch.device, amp: Optional[str]):
    """torch.autocast for amp in {'bf16', 'fp16'}; a null context for None/'none'."""
    if amp in (None, "none"):
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise ValueError(f"amp: expected none, bf16 or fp16, got {amp!r}")
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def _video_names(loader: Iterable, indices: Sequence[int]) -> List[str]:
    """The record paths of dataset ``indices`` when the loader's dataset (or the dataset a subset
    wraps) has ``records``; else ``video #i``."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None and not hasattr(dataset, "records") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    records = getattr(dataset, "records", None)
    if records is None:
        return [f"video #{i}" for i in indices]
    return [records[i].path if 0 <= i < len(records) else f"video #{i}" for i in indices]


def _check_finite(view_logits: torch.Tensor, indices: torch.Tensor, loader: Iterable) -> None:
    """Raise :class:`NonFiniteLogitsError` naming every video with a NaN or infinite logit. The
    logits are on the CPU already, so this adds no device synchronisation to the loop."""
    bad = ~torch.isfinite(view_logits).flatten(1).all(1)
    if bool(bad.any()):
        names = _video_names(loader, indices[bad].tolist())
        raise NonFiniteLogitsError(nonfinite_message(names, len(indices)))


def _batch_views(batch: Sequence[Any], seen: int) -> Tuple[torch.Tensor, Any, torch.Tensor]:
    """A loader batch -> clips (B, V, 3, T, H, W), targets, dataset indices (consecutive when absent)."""
    clips, targets = batch[0], batch[1]
    if len(batch) > 2:
        indices = torch.as_tensor(batch[2]).long()
    else:
        if is_distributed():
            raise ValueError("evaluate: under DDP the loader must yield (clips, targets, indices)")
        indices = torch.arange(seen, seen + clips.shape[0])
    if clips.dim() == 5:
        clips = clips.unsqueeze(1)
    if clips.dim() != 6:
        raise ValueError(f"evaluate: clips must be (B,3,T,H,W) or (B,V,3,T,H,W), got {tuple(clips.shape)}")
    return clips, targets, indices


def _gather(local: Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, view_logits, targets) of every rank, in dataset-index order, one copy per video."""
    parts = [p for p in all_gather_objects(local) if p[1] is not None]
    if not parts:
        raise ValueError("evaluate: the loader yielded no batches")
    indices = torch.cat([p[0] for p in parts])
    view_logits = torch.cat([p[1] for p in parts])
    targets = torch.cat([p[2] for p in parts])
    # sort by dataset index and keep one copy of each video (defends against padded samplers)
    order = torch.sort(indices, stable=True).indices
    indices, view_logits, targets = indices[order], view_logits[order], targets[order]
    keep = torch.ones(len(indices), dtype=torch.bool)
    keep[1:] = indices[1:] != indices[:-1]
    if not bool(keep.all()):
        logger.debug("evaluate: dropped %d duplicated videos", int((~keep).sum()))
        indices, view_logits, targets = indices[keep], view_logits[keep], targets[keep]
    return indices, view_logits, targets


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, fusion: str = "auto",
             amp: Optional[str] = None, num_classes: Optional[int] = None,
             progress: bool = False) -> EvalResult:
    """Run ``model`` over ``loader`` batches ``(clips, targets[, indices])`` with clips
    (B, 3, T, H, W) or (B, V, 3, T, H, W); return fused scores, per-view logits and metrics.

    Without indices, batches are numbered consecutively (single process only). Raises
    :class:`NonFiniteLogitsError` naming the videos whose logits are not finite.
    """
    check_fusion(fusion)
    was_training = model.training
    model.eval()
    all_logits, all_targets, all_indices = [], [], []
    seen = 0
    batches = loader
    if progress and is_main_process():
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for batch in batches:
        clips, targets, indices = _batch_views(batch, seen)
        seen += clips.shape[0]
        b, v = clips.shape[:2]
        x = clips.flatten(0, 1).to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(x)
        all_logits.append(logits.float().view(b, v, -1).cpu())
        all_targets.append(torch.as_tensor(targets).cpu())
        all_indices.append(indices.cpu())
    model.train(was_training)

    if all_logits:
        local = (torch.cat(all_indices), torch.cat(all_logits), torch.cat(all_targets))
    else:  # an empty shard (more ranks than videos)
        local = (torch.zeros(0, dtype=torch.long), None, None)
    indices, view_logits, targets = _gather(local)
    _check_finite(view_logits, indices, loader)
    return _result(view_logits, targets, indices, fusion, num_classes)


def _result(view_logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, fusion: str,
            num_classes: Optional[int]) -> EvalResult:
    """Fused scores, metrics and the mean-view loss of gathered (finite) logits."""
    if targets.dim() == 2 and resolve_fusion(fusion, True) in ("max-prob", "mean-prob"):
        logger.warning("fusion %s ranks multi-label classes with a softmax; max-sigmoid (the default "
                       "for multi-label data) scores each class on its own", fusion)
    scores = fuse_views(view_logits, fusion, multi_label=targets.dim() == 2)
    metrics = classification_metrics(scores, targets, num_classes or scores.shape[1])
    if targets.dim() == 2:
        metrics["loss"] = float(F.binary_cross_entropy_with_logits(view_logits.mean(1), targets.float()))
    else:
        metrics["loss"] = float(F.cross_entropy(view_logits.mean(1), targets.long()))
    return EvalResult(scores=scores, view_logits=view_logits, targets=targets, indices=indices, metrics=metrics)
