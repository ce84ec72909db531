"""The one definition of "the BatchNorm layers of a model", shared by partial BN and the optimizer."""
from __future__ import annotations

from typing import List

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batchnorms"]


def batchnorms(module: nn.Module) -> List[_BatchNorm]:
    """Every BatchNorm layer in ``module`` (1-D, 2-D, 3-D, SyncBatchNorm, the module itself
    included), in registration order, which is the order the published partial BN walks."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]
