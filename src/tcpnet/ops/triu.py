"""Row-major upper-triangle vectorisation of (B, d, d) matrices, the published pooled vector layout."""
from __future__ import annotations

import numpy as np
import torch

_INDEX_CACHE: dict[tuple[int, torch.device], torch.Tensor] = {}


def triu_index(d: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat indices i*d + j of the entries with i <= j, row by row (cached per (d, device))."""
    device = torch.device(device)
    key = (d, device)
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        # from numpy: a constant for tracers/exporters (ONNX has no triu_indices)
        rows, cols = np.triu_indices(d)
        idx = torch.from_numpy(rows * d + cols).to(device)
        if not torch.compiler.is_compiling():  # never cache a tensor that belongs to a trace
            _INDEX_CACHE[key] = idx
    return idx


def triu_vec(mat: torch.Tensor) -> torch.Tensor:
    """(B, d, d) -> (B, d(d+1)/2): entry (i, j), i <= j, at position i*d - i(i-1)/2 + (j - i).

    The gradient is the exact one of this selection (upstream scattered to the upper triangle,
    zeros below). The published code additionally symmetrises it; through the (transpose-
    equivariant) square root and covariance that gives the same input gradient, so it is not copied.
    """
    if mat.dim() != 3 or mat.shape[1] != mat.shape[2]:
        raise ValueError(f"triu_vec: expected (B, d, d), got {tuple(mat.shape)}")
    d = mat.shape[1]
    return mat.reshape(mat.shape[0], d * d).index_select(1, triu_index(int(d), mat.device))
