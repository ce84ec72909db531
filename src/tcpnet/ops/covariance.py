"""Biased, centred covariance of feature maps, O(B·d²·M), without the published M×M centring matrix."""
from __future__ import annotations

import torch

from tcpnet.ops._precision import no_autocast, upcast


def _centred_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ, μ) of x (B, d, M): centre, then one batched matmul."""
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    return torch.bmm(xc, xc.transpose(1, 2)).div_(x.shape[-1]), mean


def _covariance_backward_tracked(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dX = (G + Gᵀ)/M · (X − μ1ᵀ) in out-of-place ops, μ recomputed from X.

    The μ saved by the forward was computed without grad tracking; its dependence on X matters
    for the second derivative (δ(dX) = S·δX·(I − 11ᵀ/M), S = (G + Gᵀ)/M), so it is recomputed here.
    """
    with no_autocast(x.device):
        mean = x.mean(dim=-1, keepdim=True)
        sym = (grad + grad.transpose(1, 2)) / x.shape[-1]
        return torch.baddbmm(torch.bmm(sym, mean).neg(), sym, x)


class _Covariance(torch.autograd.Function):
    """Σ = (X − μ)(X − μ)ᵀ / M; the backward needs X and μ only, not the centred copy.

    Saves only X (which the caller usually keeps anyway, e.g. as a ReLU output) and μ (B, d, 1),
    so no M-sized tensor is held between forward and backward beyond X itself.
    The backward is twice differentiable: under ``create_graph=True`` it is built from tracked ops.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # x: (B, d, M)
        with no_autocast(x.device):
            cov, mean = _centred_cov(x)
        ctx.save_for_backward(x, mean)
        return cov

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can differentiate
            return _covariance_backward_tracked(grad, x)
        with no_autocast(x.device):
            m = x.shape[-1]
            # dX = (G + Gᵀ)/M · (X − μ1ᵀ) (the mean's own derivative vanishes: the rows of X − μ1ᵀ
            # sum to zero), evaluated as S·X − (S·μ)1ᵀ in one baddbmm so that no centred copy of X
            # is allocated: the gradient is the only M-sized tensor this backward creates.
            sym = (grad + grad.transpose(1, 2)).div_(m)
            return torch.baddbmm(torch.bmm(sym, mean).neg_(), sym, x)


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Biased (1/M), centred covariance over all positions: (B, d, *positions) -> (B, d, d).

    Centres first, then computes XXᵀ/M: unlike XXᵀ/M − μμᵀ this cannot lose the covariance to
    cancellation when |μ| ≫ σ (post-ReLU features, near-constant channels) and its diagonal is a
    sum of squares, so the trace is never negative (the square root needs that).
    Computed in float32 (float64 if given float64), autocast disabled.
    """
    if x.dim() < 3:
        raise ValueError(f"covariance: expected x of shape (B, d, *positions), got {tuple(x.shape)}")
    x = upcast(x).flatten(2)
    if x.shape[-1] == 0:
        raise ValueError(f"covariance: need at least one position, got shape {tuple(x.shape)}")
    if torch.is_grad_enabled() and x.requires_grad:
        return _Covariance.apply(x)
    with no_autocast(x.device):  # inference: plain ops, nothing saved, easy to trace/export
        return _centred_cov(x)[0]
