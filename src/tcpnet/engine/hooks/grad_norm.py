"""Gradient-norm logging (``train.log_grad_norm``): the mean global gradient norm before clipping,
over the optimizer steps of the epoch so far, in every log record, the epoch record and TensorBoard."""
from __future__ import annotations

from typing import Any, Dict, Optional

from tcpnet.engine.hooks.base import Hook, Step, register_hook


@register_hook("grad_norm")
class GradNormLog(Hook):
    stats = ("grad_norm_sum", "grad_norm_steps")
    order = 5  # before clipping changes the gradients (the norm itself is computed before either)

    @classmethod
    def from_run(cls, run: Any) -> Optional["GradNormLog"]:
        return cls() if run.cfg.train.log_grad_norm else None

    def after_backward(self, step: Step, stats: Any) -> None:
        if step.grad_norm is not None:
            stats.add("grad_norm_sum", step.grad_norm)
            stats.add("grad_norm_steps", 1.0)

    @staticmethod
    def _mean(values: Dict[str, float]) -> Optional[float]:
        return values["grad_norm_sum"] / values["grad_norm_steps"] if values["grad_norm_steps"] else None

    def on_read(self, values: Dict[str, float], record: Dict[str, Any]) -> None:
        record["grad_norm"] = self._mean(values)

    def on_epoch_end(self, totals: Dict[str, float], record: Dict[str, Any]) -> None:
        record["grad_norm"] = self._mean(totals)
