"""Second derivatives of the custom autograd ops in tcpnet.ops (covariance, Newton-Schulz, eigh root).

Every op has a custom first-order backward; these tests check that differentiating that backward
again (``create_graph=True``: gradient penalties, meta-learning, Hessian-vector products) gives the
true second derivative, and that the fast first-order path is untouched by it.

Tolerances: gradcheck/gradgradcheck use their float64 defaults (finite differences, eps 1e-6,
atol 1e-5, rtol 1e-3). Hessian-vector products are compared with the same math written in plain
torch ops (autograd all the way): both are float64 evaluations of one formula in different orders,
so they agree to ~1e-12; rtol 1e-7 leaves margin, while a dropped term is an O(1) error.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from tcpnet.ops import covariance, isqrt_cov, sqrtm_eigh, sqrtm_newton_schulz, triu_vec
from tcpnet.ops.sqrtm import TRACE_EPS

HVP_RTOL = 1e-7


def spd(b: int, d: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    """Random float64 SPD matrices with eigenvalues uniform in [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(b, d, d, generator=g, dtype=torch.float64))
    lam = lo + (hi - lo) * torch.rand(b, d, generator=g, dtype=torch.float64)
    return (q * lam[:, None, :]) @ q.transpose(1, 2)


def features(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Post-ReLU-like float64 features (non-negative, non-zero mean)."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g, dtype=torch.float64) + 0.3)


def sym(m: torch.Tensor) -> torch.Tensor:
    """eigh reads one triangle: check functions of a symmetric argument."""
    return 0.5 * (m + m.transpose(1, 2))


# ------------------------------------------------------------- reference math in plain torch ops ---
def ref_covariance(x: torch.Tensor) -> torch.Tensor:
    xc = x.flatten(2) - x.flatten(2).mean(-1, keepdim=True)
    return xc @ xc.transpose(1, 2) / xc.shape[-1]


def ref_newton_schulz(cov: torch.Tensor, iters: int) -> torch.Tensor:
    """The published iSQRT, uncoupled from any custom backward."""
    d = cov.shape[-1]
    i3 = 3.0 * torch.eye(d, dtype=cov.dtype)
    trace = cov.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
    a = cov / (trace + TRACE_EPS)
    z = 0.5 * (i3 - a)
    y = a @ z
    if iters >= 2:
        for _ in range(iters - 2):
            t = 0.5 * (i3 - z @ y)
            y, z = y @ t, t @ z
        y = 0.5 * y @ (i3 - z @ y)
    return y * trace.sqrt()


def ref_eigh_root(cov: torch.Tensor) -> torch.Tensor:
    """Autograd through eigh: exact derivatives of any order for distinct eigenvalues."""
    lam, v = torch.linalg.eigh(cov)
    return (v * lam.sqrt()[:, None, :]) @ v.transpose(1, 2)


def hvp(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """∂/∂x ⟨∇ₓ⟨w, f(x)⟩, v⟩: the Hessian of ⟨w, f⟩ applied to v, by double backward."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad((f(x) * w).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((g * v).sum(), x)
    return h


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


# (name, custom op, plain-torch reference, input maker); inputs of the roots are SPD with
# well-separated eigenvalues so that the eigh reference is itself twice differentiable.
CASES = {
    "covariance": (covariance, ref_covariance, lambda: features((2, 4, 3, 5), seed=1)),
    "newton_schulz_1": (
        lambda c: sqrtm_newton_schulz(c, 1), lambda c: ref_newton_schulz(c, 1), lambda: spd(2, 5, 0.2, 1.0, seed=2)
    ),
    "newton_schulz_3": (
        lambda c: sqrtm_newton_schulz(c, 3), lambda c: ref_newton_schulz(c, 3), lambda: spd(2, 5, 0.2, 1.0, seed=3)
    ),
    "newton_schulz_5": (
        lambda c: sqrtm_newton_schulz(c, 5), lambda c: ref_newton_schulz(c, 5), lambda: spd(2, 5, 0.2, 1.0, seed=4)
    ),
    "eigh": (lambda c: sqrtm_eigh(sym(c)), lambda c: ref_eigh_root(sym(c)), lambda: spd(2, 5, 0.2, 1.0, seed=5)),
    "isqrt_cov_ns": (
        lambda x: isqrt_cov(x, iters=3, method="ns"),
        lambda x: triu_vec(ref_newton_schulz(ref_covariance(x), 3)),
        lambda: features((2, 4, 3, 5), seed=6),
    ),
    "isqrt_cov_eigh": (
        lambda x: isqrt_cov(x, method="eigh"),
        lambda x: triu_vec(ref_eigh_root(ref_covariance(x))),
        lambda: features((2, 4, 3, 5), seed=7),
    ),
}


# ------------------------------------------------------------------------ gradcheck / gradgradcheck ---
@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_and_gradgradcheck(name: str) -> None:
    op, _, make = CASES[name]
    x = make().requires_grad_(True)
    assert gradcheck(op, (x,))
    assert gradgradcheck(op, (x,))


def test_gradgradcheck_eigh_root_repeated_eigenvalues() -> None:
    # Autograd through eigh has 1/(λ_i − λ_j) and fails here; the Sylvester form stays exact.
    cov = torch.diag_embed(torch.tensor([[1.0, 1.0, 2.0, 2.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64))
    assert gradgradcheck(lambda c: sqrtm_eigh(sym(c)), (cov.requires_grad_(True),))


def test_third_order_eigh_root() -> None:
    # the eigh root's backward is built from itself: every order is available
    cov = spd(1, 3, 0.5, 1.5, seed=8).requires_grad_(True)
    op = lambda c: sqrtm_eigh(sym(c))
    g = torch.randn(1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def grad_fn(c: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad((op(c) * g).sum(), c, create_graph=True)[0]

    assert gradgradcheck(grad_fn, (cov,))


# ----------------------------------------------- the custom ops against plain-torch math, by HVP ---
@pytest.mark.parametrize("name", list(CASES))
def test_hessian_vector_product_matches_plain_torch(name: str) -> None:
    op, ref, make = CASES[name]
    x = make()
    gen = torch.Generator().manual_seed(10)
    w = torch.randn(ref(x).shape, generator=gen, dtype=torch.float64)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    want = hvp(ref, x, w, v)
    got = hvp(op, x, w, v)
    assert rel(got, want) < HVP_RTOL, rel(got, want)


def test_gradient_penalty_matches_plain_torch() -> None:
    # the typical consumer: d/dθ ‖∇ₓ L‖² through the whole pooling, θ scaling the features
    x = features((2, 6, 4, 4), seed=11)
    w = torch.randn(2, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(12))

    def penalty_grad(pool: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        theta = torch.linspace(0.5, 1.5, 6, dtype=torch.float64).requires_grad_(True)
        xx = x.detach().requires_grad_(True)
        (gx,) = torch.autograd.grad((pool(xx * theta[None, :, None, None]) * w).sum(), xx, create_graph=True)
        (gt,) = torch.autograd.grad(gx.square().sum(), theta)
        return gt

    refs = {
        "ns": lambda t: triu_vec(ref_newton_schulz(ref_covariance(t), 3)),
        "eigh": lambda t: triu_vec(ref_eigh_root(ref_covariance(t))),
    }
    for method, ref in refs.items():
        got = penalty_grad(functools.partial(isqrt_cov, method=method))
        assert rel(got, penalty_grad(ref)) < HVP_RTOL, method


# ------------------------------------------------------------------ first order and degenerate ---
@pytest.mark.parametrize("method", ["ns", "eigh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_order_gradient_same_with_and_without_create_graph(method: str, dtype: torch.dtype) -> None:
    # the fast backward (no graph) and the tracked one (create_graph) are separate code: same result
    x = features((3, 8, 5, 5), seed=13).to(dtype)
    w = torch.randn(3, 36, dtype=dtype, generator=torch.Generator().manual_seed(14))
    grads = []
    for create_graph in (False, True):
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((isqrt_cov(xx, method=method) * w).sum(), xx, create_graph=create_graph)
        grads.append(g.detach())
    # float32: the two are evaluated in a different order at most (1e-5 relative)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-7)


@pytest.mark.parametrize("method", ["ns", "eigh"])
def test_double_backward_finite_on_zero_covariance(method: str) -> None:
    x = torch.zeros(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    out = isqrt_cov(x, method=method)
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum() + g.sum(), x)
    assert torch.isfinite(g).all() and torch.isfinite(h).all()
    if method == "ns":  # documented: zero covariance -> zero gradient with "ns", in both backward paths
        assert torch.equal(g, torch.zeros_like(g))


def _keep(store: list[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    store.append(t)
    return t


def test_first_order_backward_saves_only_d_by_d_tensors() -> None:
    # the eigh root keeps its input (one d×d) to make the second derivative possible; still nothing M-sized
    b, d, m = 2, 16, 4096
    x = features((b, d, m), seed=15).float().requires_grad_(True)
    for method, limit in (("ns", 32 * b * d * d), ("eigh", 3 * b * d * d)):
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(functools.partial(_keep, saved), lambda t: t):
            isqrt_cov(x, method=method)
        extra = sum(t.numel() for t in saved if t.data_ptr() != x.data_ptr())
        assert extra <= limit, (method, extra)


@pytest.mark.parametrize("method", ["ns", "eigh"])
def test_double_backward_under_autocast_stays_float32(method: str) -> None:
    # AMP's gradient-penalty pattern (torch docs): forward and create_graph grad under autocast, the
    # final backward outside. The ops disable autocast inside, so every number equals the fp32 run.
    x0 = features((2, 8, 5, 6), seed=16).float()
    results = []
    for enabled in (False, True):
        x = x0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = isqrt_cov(x, method=method)
            (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        (h,) = torch.autograd.grad(g.square().sum(), x)
        results.append((out, g, h))
    for a, b in zip(*results):
        assert a.dtype == torch.float32 and torch.equal(a, b)
