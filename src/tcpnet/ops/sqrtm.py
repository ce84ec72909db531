"""Matrix square roots of batched SPD matrices: the published Newton-Schulz iSQRT and an exact eigh one."""
from __future__ import annotations

import torch

from tcpnet.ops._precision import no_autocast, upcast

TRACE_EPS = 1e-5  # added to the trace in the pre-normalisation only, as published


def _eye3(b: int, d: int, like: torch.Tensor) -> torch.Tensor:
    return (3.0 * torch.eye(d, dtype=like.dtype, device=like.device)).expand(b, d, d)


def _ns_forward(a: torch.Tensor, iters: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Coupled Newton-Schulz on the pre-normalised A; returns R and the iterates Y_i, Z_i.

    Y_0 = A·Z_0, Z_0 = (3I − A)/2; T_i = (3I − Z_{i-1}Y_{i-1})/2, Y_i = Y_{i-1}T_i, Z_i = T_iZ_{i-1};
    R = Y_n(3I − Z_nY_n)/2 with n = iters − 2 (iters < 2: R = Y_0, as published).
    """
    b, d, _ = a.shape
    i3 = _eye3(b, d, a)
    z = (i3 - a).mul_(0.5)
    y = torch.bmm(a, z)
    ys, zs = [y], [z]
    if iters < 2:
        return y, ys, zs
    for _ in range(iters - 2):
        t = torch.baddbmm(i3, z, y, beta=0.5, alpha=-0.5)  # (3I − Z Y)/2
        y, z = torch.bmm(y, t), torch.bmm(t, z)
        ys.append(y)
        zs.append(z)
    w = torch.baddbmm(i3, z, y, alpha=-1.0)  # 3I − Z_n Y_n
    r = torch.bmm(y, w).mul_(0.5)
    return r, ys, zs


def _ns_backward(
    g: torch.Tensor, a: torch.Tensor, ys: list[torch.Tensor], zs: list[torch.Tensor], iters: int
) -> torch.Tensor:
    """Exact adjoint of `_ns_forward` w.r.t. A, valid for general (not only symmetric) A and G.

    Differentiable by autograd when given tracked inputs: it updates in place only fresh products
    that no recorded op saves (autograd's version check would raise otherwise, never miscompute).
    """
    b, d, _ = a.shape
    i3 = _eye3(b, d, a)
    tr = lambda m: m.transpose(1, 2)  # noqa: E731
    if iters < 2:
        dy, dz = g, None
    else:
        y, z = ys[-1], zs[-1]
        w = torch.baddbmm(i3, z, y, alpha=-1.0)  # R = Y W / 2,  W = 3I − Z Y
        ytg = torch.bmm(tr(y), g)
        dy = torch.bmm(g, tr(w)).sub_(torch.bmm(tr(z), ytg)).mul_(0.5)
        dz = torch.bmm(ytg, tr(y)).mul_(-0.5)
        for i in range(len(ys) - 1, 0, -1):  # Y_i = Y_{i-1} T,  Z_i = T Z_{i-1},  T = (3I − Z_{i-1}Y_{i-1})/2
            yp, zp = ys[i - 1], zs[i - 1]
            t = torch.baddbmm(i3, zp, yp, beta=0.5, alpha=-0.5)
            dt = torch.bmm(tr(yp), dy).add_(torch.bmm(dz, tr(zp)))
            dy, dz = (
                torch.bmm(dy, tr(t)).sub_(torch.bmm(tr(zp), dt), alpha=0.5),
                torch.bmm(tr(t), dz).sub_(torch.bmm(dt, tr(yp)), alpha=0.5),
            )
    # Y_0 = A Z_0,  Z_0 = (3I − A)/2
    da = torch.bmm(dy, tr(zs[0]))
    dz0 = torch.bmm(tr(a), dy)
    if dz is not None:
        dz0.add_(dz)
    return da.sub_(dz0, alpha=0.5)


def _ns_sqrtm(cov: torch.Tensor, iters: int):
    """Published iSQRT forward; returns (out, A, R, trace, Y_i list, Z_i list)."""
    trace = cov.diagonal(dim1=1, dim2=2).sum(-1)
    a = cov / (trace + TRACE_EPS)[:, None, None]
    r, ys, zs = _ns_forward(a, iters)
    out = r * trace.clamp_min(0).sqrt()[:, None, None]
    return out, a, r, trace, ys, zs


def _ns_backward_tracked(g: torch.Tensor, cov: torch.Tensor, iters: int) -> torch.Tensor:
    """The iSQRT gradient w.r.t. Σ in ops that autograd tracks (for ``create_graph=True``).

    The iterates saved by the forward carry no history, so they are recomputed from the saved
    (tracked) Σ; the formula is the one of the fast backward, written out of place. At tr Σ = 0 the
    derivative of sqrt(tr Σ) is replaced by its limit 0, as in the fast backward, and the guarded
    square root keeps higher derivatives finite there.
    """
    d = cov.shape[-1]
    with no_autocast(cov.device):
        trace = cov.diagonal(dim1=1, dim2=2).sum(-1)
        denom = trace + TRACE_EPS
        a = cov / denom[:, None, None]
        r, ys, zs = _ns_forward(a, iters)
        pos = trace > 0
        s = torch.where(pos, torch.where(pos, trace, 1.0).sqrt(), 0.0)  # sqrt(max(tr, 0)), finite slope
        half_inv_s = torch.where(pos, 0.5 / torch.where(pos, s, 1.0), 0.0)
        g_trace = (g * r).sum((1, 2)) * half_inv_s
        da = _ns_backward(g * s[:, None, None], a, ys, zs, iters)
        g_trace = g_trace - (da * cov).sum((1, 2)) / denom.square()
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        return da / denom[:, None, None] + g_trace[:, None, None] * eye


class _SqrtmNewtonSchulz(torch.autograd.Function):
    """Published iSQRT forward; backward = exact gradient of this forward (eps included).

    Saves only d×d tensors (Σ, A, R, the iterates), never anything M-sized. The backward is twice
    differentiable: under ``create_graph=True`` it is recomputed from Σ in tracked ops.
    """

    @staticmethod
    def forward(ctx, cov: torch.Tensor, iters: int) -> torch.Tensor:
        with no_autocast(cov.device):
            out, a, r, trace, ys, zs = _ns_sqrtm(cov, iters)
        ctx.iters = iters
        ctx.n_iterates = len(ys)
        ctx.save_for_backward(cov, a, r, trace, *ys, *zs)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        cov, a, r, trace, *its = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can differentiate
            return _ns_backward_tracked(g, cov, ctx.iters), None
        ys, zs = its[: ctx.n_iterates], its[ctx.n_iterates :]
        with no_autocast(cov.device):
            s = trace.clamp_min(0).sqrt()
            denom = trace + TRACE_EPS
            # d(sqrt(tr))/d tr = 1/(2 sqrt(tr)); at tr = 0 the output R·s is identically 0 with R = 0,
            # and R/s -> 0 as tr -> 0, so the limit of this term is 0: use 0 instead of 0/0.
            half_inv_s = torch.where(s > 0, 0.5 / s, torch.zeros_like(s))
            g_trace = (g * r).sum((1, 2)) * half_inv_s
            da = _ns_backward(g * s[:, None, None], a, ys, zs, ctx.iters)
            g_trace = g_trace - (da * cov).sum((1, 2)) / denom.square()
            dcov = da.div_(denom[:, None, None])
            dcov.diagonal(dim1=1, dim2=2).add_(g_trace[:, None])
        return dcov, None


def sqrtm_newton_schulz(cov: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Approximate square root of SPD ``cov`` (B, d, d) by the published iSQRT (Li et al., CVPR 2018).

    A = Σ/(tr Σ + 1e-5); ``iters`` coupled Newton-Schulz steps; result × sqrt(tr Σ). With few
    iterations this is the intended approximation, not the exact root. Batched, no Python loop
    over the batch. Zero covariance (tr = 0) gives an all-zero output and a finite (zero) gradient.
    Computed in float32 (float64 if given float64), autocast disabled.
    """
    if cov.dim() != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"sqrtm_newton_schulz: expected cov of shape (B, d, d), got {tuple(cov.shape)}")
    if iters < 1:
        raise ValueError(f"sqrtm_newton_schulz: iters must be >= 1, got {iters}")
    cov = upcast(cov)
    if torch.is_grad_enabled() and cov.requires_grad:
        return _SqrtmNewtonSchulz.apply(cov, int(iters))
    with no_autocast(cov.device):  # inference: plain ops, nothing saved, easy to trace/export
        return _ns_sqrtm(cov, int(iters))[0]


def _sylvester_eig(g: torch.Tensor, v: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """X with S X + X S = G for S = V diag(root) Vᵀ: V [(Vᵀ G V) / (root_i + root_j)] Vᵀ.

    Pairs with root_i + root_j = 0 (both eigenvalues zero) get 0: the minimum-norm solution.
    """
    vt = v.transpose(1, 2)
    inner = torch.bmm(torch.bmm(vt, g), v)
    den = root[:, :, None] + root[:, None, :]
    inner = torch.where(den > 0, inner / torch.where(den > 0, den, 1.0), 0.0)
    return torch.bmm(torch.bmm(v, inner), vt)


class _EighRootVjp(torch.autograd.Function):
    """Gradient of the eigh root as a function of (Σ, G): X = L⁻¹(sym G), L(X) = S X + X S, S = √Σ.

    ``cov`` only carries Σ's autograd history (V and root, its eigendecomposition, are given). With L
    self-adjoint, K = L⁻¹(sym H) is the gradient w.r.t. G and, as dS = L⁻¹(dΣ) and dL⁻¹ = −L⁻¹ dL L⁻¹,
    −L⁻¹(K X + X K) the one w.r.t. Σ (the symmetric gradient, as at first order). The backward
    applies this same function, so derivatives of any order are exact for positive definite Σ, and
    none has the 1/(λ_i − λ_j) of autograd through eigh.
    """

    @staticmethod
    def forward(ctx, cov: torch.Tensor, g: torch.Tensor, v: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
        with no_autocast(g.device):
            x = _sylvester_eig(0.5 * (g + g.transpose(1, 2)), v, root)
        ctx.save_for_backward(cov, x, v, root)
        return x

    @staticmethod
    def backward(ctx, h: torch.Tensor):
        cov, x, v, root = ctx.saved_tensors
        with no_autocast(h.device):
            k = _EighRootVjp.apply(cov, h, v, root)
            dcov = _EighRootVjp.apply(cov, torch.bmm(k, x) + torch.bmm(x, k), v, root).neg()
        return dcov, k, None, None


class _SqrtmEigh(torch.autograd.Function):
    """Exact principal square root V diag(sqrt λ) Vᵀ of a symmetric PSD matrix.

    Backward solves the Sylvester equation S X + X S = G in the eigenbasis:
    dΣ = V [(Vᵀ G V) / (sqrt λ_i + sqrt λ_j)] Vᵀ. Unlike autograd through eigh, this has no
    1/(λ_i − λ_j) and stays finite for repeated eigenvalues; pairs with sqrt λ_i + sqrt λ_j = 0
    (both eigenvalues zero, where the root is not differentiable) get gradient 0.
    The backward is twice differentiable: under ``create_graph=True`` it is `_EighRootVjp`, which
    is why Σ is saved too (one more d×d tensor; V and the roots alone carry no history).
    """

    @staticmethod
    def forward(ctx, cov: torch.Tensor) -> torch.Tensor:
        with no_autocast(cov.device):
            lam, v = torch.linalg.eigh(cov)
            root = lam.clamp_min(0).sqrt()
            out = torch.bmm(v * root[:, None, :], v.transpose(1, 2))
        ctx.save_for_backward(cov, v, root)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        cov, v, root = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can differentiate
            return _EighRootVjp.apply(cov, g, v, root)
        with no_autocast(v.device):
            vt = v.transpose(1, 2)
            gs = 0.5 * (g + g.transpose(1, 2))  # the input is symmetric: only sym(G) is meaningful
            inner = torch.bmm(torch.bmm(vt, gs), v)
            den = root[:, :, None] + root[:, None, :]
            inner = torch.where(den > 0, inner / den, torch.zeros_like(inner))
            return torch.bmm(torch.bmm(v, inner), vt)


def sqrtm_eigh(cov: torch.Tensor) -> torch.Tensor:
    """Exact square root of symmetric PSD ``cov`` (B, d, d) by eigendecomposition.

    Negative eigenvalues (round-off) are clamped to 0. Only the lower triangle is read (eigh);
    the gradient returned is the symmetric one. Reference/alternative to the Newton-Schulz root,
    slower and less parallel; computed in float32 (float64 if given float64), autocast disabled.
    """
    if cov.dim() != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"sqrtm_eigh: expected cov of shape (B, d, d), got {tuple(cov.shape)}")
    return _SqrtmEigh.apply(upcast(cov))
