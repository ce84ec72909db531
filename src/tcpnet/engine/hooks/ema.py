"""EMA of the weights, updated after every optimizer step (``train.ema_decay``)."""
from __future__ import annotations

from typing import Any, Optional

from tcpnet.engine.hooks.base import Hook, Step, register_hook


@register_hook("ema")
class EMAUpdate(Hook):
    """Updates ``run.state.ema`` (built by setup when ``train.ema_decay`` is set) after each step."""

    order = 50

    def __init__(self, ema: Any, model: Any) -> None:
        self.ema, self.model = ema, model

    @classmethod
    def from_run(cls, run: Any) -> Optional["EMAUpdate"]:
        return cls(run.state.ema, run.state.model) if run.state.ema is not None else None

    def after_step(self, step: Step, stats: Any) -> None:
        self.ema.update_parameters(self.model)
