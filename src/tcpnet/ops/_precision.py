"""Precision policy shared by the covariance-pooling ops: float32 (float64 kept), autocast off."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype (fp16, bf16, fp32, ints) is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` in its compute dtype (a no-op, no copy, when it already is)."""
    return t.to(compute_dtype(t))


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Disable autocast for ``device``'s type, so matmuls stay in the dtype of their inputs.

    Second-order statistics of post-ReLU features overflow/lose too many bits in fp16/bf16,
    and Newton-Schulz amplifies that, so these ops never run in reduced precision.
    """
    if not torch.is_autocast_enabled(device.type):  # nothing to undo (keeps traced graphs plain)
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield
