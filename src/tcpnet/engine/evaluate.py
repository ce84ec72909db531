"""Evaluation loop: per-view logits -> fused video scores -> metrics, exact across DDP ranks.

Under DDP each rank evaluates its own shard (see ``distributed.shard_indices``); the per-video
results are gathered with their dataset indices and de-duplicated, so every video counts once.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tcpnet.config import FUSIONS, resolve_fusion
from tcpnet.engine.distributed import all_gather_objects, is_distributed, is_main_process
from tcpnet.engine.metrics import classification_metrics

logger = logging.getLogger(__name__)

__all__ = ["EvalResult", "FUSIONS", "fuse_views", "evaluate", "autocast_context"]



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
    if fusion not in FUSIONS:
        raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
    fusion = resolve_fusion(fusion, multi_label)
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


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, fusion: str = "auto",
             amp: Optional[str] = None, num_classes: Optional[int] = None,
             progress: bool = False) -> EvalResult:
    """Run ``model`` over ``loader`` batches ``(clips, targets[, indices])`` with clips
    (B, 3, T, H, W) or (B, V, 3, T, H, W); return fused scores, per-view logits and metrics.

    Without indices, batches are numbered consecutively (single process only).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
    was_training = model.training
    model.eval()
    all_logits, all_targets, all_indices = [], [], []
    seen = 0
    batches = loader
    if progress and is_main_process():
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for batch in batches:
        clips, targets = batch[0], batch[1]
        if len(batch) > 2:
            indices = torch.as_tensor(batch[2]).long()
        else:
            if is_distributed():
                raise ValueError("evaluate: under DDP the loader must yield (clips, targets, indices)")
            indices = torch.arange(seen, seen + clips.shape[0])
        seen += clips.shape[0]
        if clips.dim() == 5:
            clips = clips.unsqueeze(1)
        if clips.dim() != 6:
            raise ValueError(f"evaluate: clips must be (B,3,T,H,W) or (B,V,3,T,H,W), got {tuple(clips.shape)}")
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

    if targets.dim() == 2 and resolve_fusion(fusion, True) in ("max-prob", "mean-prob"):
        logger.warning("fusion %s ranks multi-label classes with a softmax; max-sigmoid (the default "
                       "for multi-label data) scores each class on its own", fusion)
    scores = fuse_views(view_logits, fusion, multi_label=targets.dim() == 2)
    k = num_classes or scores.shape[1]
    metrics = classification_metrics(scores, targets, k)
    if targets.dim() == 2:
        metrics["loss"] = float(F.binary_cross_entropy_with_logits(view_logits.mean(1), targets.float()))
    else:
        metrics["loss"] = float(F.cross_entropy(view_logits.mean(1), targets.long()))
    return EvalResult(scores=scores, view_logits=view_logits, targets=targets, indices=indices, metrics=metrics)
