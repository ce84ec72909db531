"""Label smoothing (``train.label_smoothing``): the cross-entropy of targets mixed with the
uniform distribution, ``(1 - eps) * y + eps / K`` (also over mixup's soft targets)."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from tcpnet.engine.hooks.base import Hook, register_hook


@register_hook("label_smoothing")
class LabelSmoothing(Hook):
    def __init__(self, eps: float) -> None:
        self.eps = float(eps)

    @classmethod
    def from_run(cls, run: Any) -> Optional["LabelSmoothing"]:
        eps = run.cfg.train.label_smoothing
        return cls(eps) if eps > 0 else None

    def on_fit_start(self, run: Any) -> None:
        if run.multi_label:
            raise ValueError("train.label_smoothing is for single-label data; data.multi_label is true")
        run.criterion = nn.CrossEntropyLoss(label_smoothing=self.eps)
