"""Reach the model inside training wrappers, so saving and loading see the plain key names."""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["unwrap_model"]

_HOLDERS = (nn.parallel.DistributedDataParallel, nn.DataParallel, AveragedModel)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel / EMA ``AveragedModel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, in any nesting, and return the model they hold."""
    while True:
        if isinstance(model, _HOLDERS):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
