"""The composed covariance pooling used by the heads: covariance -> matrix square root -> triu vector."""
from __future__ import annotations

import torch

from tcpnet.ops._precision import no_autocast, upcast
from tcpnet.ops.covariance import covariance
from tcpnet.ops.sqrtm import sqrtm_eigh, sqrtm_newton_schulz
from tcpnet.ops.triu import triu_vec

METHODS = ("ns", "eigh")


def isqrt_cov(x: torch.Tensor, iters: int = 3, method: str = "ns") -> torch.Tensor:
    """Matrix-normalised covariance pooling: (B, d, *positions) -> (B, d(d+1)/2).

    ``method="ns"``: the published iSQRT (``iters`` Newton-Schulz steps); ``"eigh"``: exact root.
    Always float32 (float64 for float64 input), even under autocast. Each step has a lean
    custom backward, so nothing M-sized is kept for backward except ``x`` itself.
    Degenerate input (constant or zero feature maps, zero covariance) gives a zero vector and a
    zero gradient with "ns"; with "eigh", the output is 0 and the gradient finite.
    """
    if method not in METHODS:
        raise ValueError(f"isqrt_cov: method must be one of {METHODS}, got {method!r}")
    x = upcast(x)
    with no_autocast(x.device):
        cov = covariance(x)
        root = sqrtm_newton_schulz(cov, iters) if method == "ns" else sqrtm_eigh(cov)
        return triu_vec(root)
