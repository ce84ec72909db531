"""Parameter and FLOP count of a model for one input, measured with PyTorch's FlopCounterMode."""
from __future__ import annotations

from typing import Dict, Sequence, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["complexity", "EXTRA_FLOP_FORMULAS"]


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU kernel of ``scaled_dot_product_attention``: Q K^T and (attention) V, as for the GPU kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Ops torch's FlopCounterMode does not count on every device: without these, attention's two
# matrix products count 0 on CPU (a ViT-B at 16x224^2 read 135 instead of 180 GMACs).
EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def complexity(model: nn.Module, input_shape: Sequence[int]) -> Dict[str, Union[int, float]]:
    """Run ``model`` once in eval mode on zeros of ``input_shape`` (B, 3, T, H, W) and count.

    Returns ``params`` (sum of ``numel`` of all parameters), ``flops`` (total for the input,
    2 per multiply-add, as counted by ``torch.utils.flop_counter`` for matmul/conv/bmm-type ops;
    element-wise ops are not counted), ``gflops`` (per clip, i.e. divided by B) and ``gmacs``
    (per clip, = gflops / 2, the unit most video papers call "GFLOPs").
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(f"input_shape must start with a batch size >= 1, got {shape}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
        with torch.no_grad(), counter:
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    flops = int(counter.get_total_flops())
    params = sum(p.numel() for p in model.parameters())
    return dict(params=params, flops=flops, gflops=flops / shape[0] / 1e9, gmacs=flops / shape[0] / 2e9)
