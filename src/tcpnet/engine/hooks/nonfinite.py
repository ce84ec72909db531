"""The non-finite guard (``train.nonfinite``): a NaN/Inf loss or gradient norm.

``stop`` flags it on the device (no per-step sync) and raises :class:`NonFiniteError` at the next
read of the statistics, naming the iteration and the batch's videos; no checkpoint of the touched
weights is written. ``skip`` syncs once per step and skips the optimizer step; the BatchNorm
statistics that the skipped forward pass changed are restored too, so no NaN reaches a buffer.
An epoch whose every step was skipped is an error, not an epoch with loss 0.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

import torch

from tcpnet.engine.hooks.base import Hook, Step, register_hook

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteError", "NonFiniteGuard"]


class NonFiniteError(FloatingPointError):
    """The loss, the gradient norm, the weights or the BatchNorm statistics became NaN/Inf."""


@register_hook("nonfinite")
class NonFiniteGuard(Hook):
    stats = ("nonfinite_steps",)
    order = 20  # after the gradient norm is known; before the optimizer step

    def __init__(self, mode: str, model: torch.nn.Module,
                 describe: Optional[Callable[[torch.Tensor], List[str]]] = None) -> None:
        self.skip_mode = mode == "skip"
        self.model, self.describe = model, describe
        self.first_bad: Optional[torch.Tensor] = None  # 1-based iteration of the first bad step
        self.recent: Dict[int, torch.Tensor] = {}      # iteration -> batch indices since the last read
        self.epoch = 0
        self._buffers: List[torch.Tensor] = []

    @classmethod
    def from_run(cls, run: Any) -> "NonFiniteGuard":
        return cls(run.cfg.train.nonfinite, run.state.model, getattr(run, "describe", None))

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch, self.first_bad = epoch, None
        self.recent.clear()

    def before_forward(self, step: Step) -> None:
        if step.indices is not None:
            self.recent[step.iteration + 1] = step.indices
        if self.skip_mode:  # the forward pass updates BN statistics even if the step is skipped
            self._buffers = [b.detach().clone() for b in self.model.buffers()]

    def after_backward(self, step: Step, stats: Any) -> None:
        if step.grad_norm is not None:
            step.finite = step.finite & torch.isfinite(step.grad_norm)
        if self.skip_mode:
            if not bool(step.finite):  # the one sync per step of skip mode
                step.skip = True
                stats.add("nonfinite_steps", 1.0)
                with torch.no_grad():
                    for b, saved in zip(self.model.buffers(), self._buffers):
                        b.copy_(saved)
                logger.warning("epoch %d iteration %d: non-finite loss or gradient norm; step skipped",
                               step.epoch + 1, step.iteration + 1)
            return
        bad = ~step.finite
        stats.add("nonfinite_steps", bad)
        it = torch.full((), step.iteration + 1, dtype=torch.int64, device=bad.device)
        first = torch.zeros_like(it) if self.first_bad is None else self.first_bad
        self.first_bad = torch.where((first == 0) & bad, it, first)

    def on_read(self, values: Dict[str, float], record: Dict[str, Any]) -> None:
        if values["nonfinite_steps"] and not self.skip_mode:
            it_bad = int(self.first_bad.item()) if self.first_bad is not None else 0
            videos = (self.describe(self.recent[it_bad])
                      if self.describe is not None and it_bad in self.recent else [])
            raise NonFiniteError(
                f"epoch {self.epoch + 1} iteration {it_bad}: the loss or gradient norm is not finite"
                + (f" (batch: {', '.join(videos)})" if videos else "")
                + "; stopped without writing a checkpoint (train.nonfinite=skip skips such steps)")
        self.recent.clear()

    def on_epoch_end(self, totals: Dict[str, float], record: Dict[str, Any]) -> None:
        skipped = int(totals["nonfinite_steps"])
        record["skipped_steps"] = skipped if self.skip_mode else 0
        if self.skip_mode and skipped and totals["clips"] == 0:
            raise NonFiniteError(f"epoch {self.epoch + 1}: every one of its {skipped} steps had a non-finite "
                                 "loss or gradient norm and was skipped (train.nonfinite=skip); nothing was "
                                 "trained. Lower train.lr, check the data, or resume from an earlier checkpoint")
