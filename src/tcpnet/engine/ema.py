"""Exponential moving average of a model's weights and BatchNorm statistics."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tcpnet.models import unwrap_model

__all__ = ["EMA", "build_ema"]


class EMA(AveragedModel):
    """``AveragedModel`` with an EMA of the floating-point parameters and buffers; integer buffers
    (BatchNorm's ``num_batches_tracked``) are counters, so they are copied, not averaged."""

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        super().update_parameters(model)
        for mine, theirs in zip(self.module.buffers(), unwrap_model(model).buffers()):
            if not (mine.is_floating_point() or mine.is_complex()):
                mine.copy_(theirs)


def build_ema(model: nn.Module, decay: float) -> EMA:
    """EMA (``decay`` per optimizer step) of the weights and buffers of ``model``."""
    return EMA(unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
