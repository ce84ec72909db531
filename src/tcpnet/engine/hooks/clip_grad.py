"""Gradient clipping by the global norm over every parameter with a gradient (the published
``--gd``, ``train.clip_grad_norm``); counts the steps it clipped."""
from __future__ import annotations

from typing import Any, Optional

from torch.nn.utils import clip_grads_with_norm_

from tcpnet.engine.hooks.base import Hook, Step, register_hook


@register_hook("clip_grad")
class ClipGradNorm(Hook):
    stats = ("clipped_steps",)
    order = 10

    def __init__(self, max_norm: float) -> None:
        self.max_norm = float(max_norm)

    @classmethod
    def from_run(cls, run: Any) -> Optional["ClipGradNorm"]:
        max_norm = run.cfg.train.clip_grad_norm
        return cls(max_norm) if max_norm else None

    def after_backward(self, step: Step, stats: Any) -> None:
        if step.grad_norm is None or not step.params:
            return
        clip_grads_with_norm_(step.params, self.max_norm, step.grad_norm)
        stats.add("clipped_steps", step.grad_norm > self.max_norm)

    def on_epoch_end(self, totals: dict, record: dict) -> None:
        record["grad_clipped"] = int(totals["clipped_steps"])
