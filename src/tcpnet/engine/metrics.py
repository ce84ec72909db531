"""Classification metrics on fused scores: top-k, confusion matrix, mean class accuracy, mAP.

Ties among classes are broken deterministically: classes are ranked by descending score and,
among equal scores, by ascending class index (a stable sort). So top-1 agrees with
``argmax`` (which returns the first maximum) and with the confusion matrix. Ties among videos
in average precision are one threshold, as in scikit-learn.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

__all__ = ["class_ranks", "topk_accuracy", "confusion_matrix", "per_class_accuracy",
           "mean_class_accuracy", "average_precision", "mean_average_precision",
           "classification_metrics"]


def class_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target class: #classes scoring higher + #equal ones with lower index."""
    scores = scores.float()
    t = scores.gather(1, targets.long().view(-1, 1))
    idx = torch.arange(scores.shape[1], device=scores.device).view(1, -1)
    higher = (scores > t).sum(1)
    tied_before = ((scores == t) & (idx < targets.view(-1, 1))).sum(1)
    return higher + tied_before


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
    """Percentage of rows whose target is among the k best classes (ties: lower index first)."""
    if scores.shape[0] == 0:
        return {k: float("nan") for k in ks}
    ranks = class_ranks(scores, targets)
    return {k: 100.0 * (ranks < k).float().mean().item() for k in ks}


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class (all K classes kept)."""
    t = targets.long().cpu().numpy()
    p = preds.long().cpu().numpy()
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per class (diag / row sum); NaN for classes with no samples."""
    rows = cm.sum(1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rows > 0, np.diag(cm) / np.maximum(rows, 1), np.nan)


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Mean of per-class accuracy (percent) over the classes that have samples.

    The authors' script averages over the sorted union of labels and predictions and so gets
    NaN for a class that is only predicted (the authors' per-class accuracy divides by zero there); we
    skip classes without samples.
    """
    acc = per_class_accuracy(cm)
    acc = acc[~np.isnan(acc)]
    return float(100.0 * acc.mean()) if acc.size else float("nan")


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """AP of one class, scikit-learn's ``average_precision_score``: ``sum_n (R_n - R_{n-1}) P_n``
    over the distinct scores as thresholds (NaN if no positive).

    Videos with tied scores pass a threshold together, so their order never matters (ranking them
    by index would reward a list that happens to put positives first)."""
    s = scores.double().cpu().reshape(-1)
    y = positives.bool().cpu().reshape(-1)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    s, order = torch.sort(s, descending=True, stable=True)
    tp = y[order].double().cumsum(0)
    last = torch.ones(len(s), dtype=torch.bool)  # last video of each group of equal scores
    last[:-1] = s[1:] != s[:-1]
    tp_at = tp[last]
    precision = tp_at / (torch.nonzero(last).flatten() + 1).double()
    recall_gain = torch.diff(tp_at, prepend=tp_at.new_zeros(1)) / n_pos
    return float((precision * recall_gain).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Charades-style mAP (percent): AP per class over all videos, averaged over the classes
    with at least one positive video. ``targets`` is multi-hot (N, K)."""
    aps = [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(100.0 * np.mean(aps)) if aps else float("nan")


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor, num_classes: int) -> Dict[str, object]:
    """All metrics for fused scores (N, K): single-label targets (N,) or multi-hot (N, K)."""
    if targets.dim() == 2:  # multi-label
        return {"mAP": mean_average_precision(scores, targets), "num_videos": int(scores.shape[0])}
    top = topk_accuracy(scores, targets, ks=(1, min(5, num_classes)))
    preds = scores.float().argmax(1)
    cm = confusion_matrix(targets, preds, num_classes)
    return {
        "top1": top[1],
        "top5": top[min(5, num_classes)],
        "mean_class_acc": mean_class_accuracy(cm),
        "confusion_matrix": cm,
        "num_videos": int(scores.shape[0]),
    }
