"""tcpnet.ops: covariance, Newton-Schulz / eigh square roots, triu vectorisation, isqrt_cov."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tcpnet.ops import covariance, isqrt_cov, sqrtm_eigh, sqrtm_newton_schulz, triu_index, triu_vec

REF = Path(__file__).parent / "data" / "reference" / "isqrt.npz"
CASES = ["b4_d64_t8_h7", "b2_d128_t16_h7_iter5", "b3_d32_t4_h3_iter1"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def spd(b: int, d: int, lo: float, hi: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Random SPD matrices with eigenvalues uniform in [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(b, d, d, generator=g, dtype=dtype))
    lam = lo + (hi - lo) * torch.rand(b, d, generator=g, dtype=dtype)
    return (q * lam[:, None, :]) @ q.transpose(1, 2)


def features(shape, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g, dtype=dtype) + 0.3)


# ---------------------------------------------------------------- reference (published code) ---
@pytest.fixture(scope="module")
def ref():
    with np.load(REF) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case", CASES)
def test_matches_published_reference_float64(ref, case):
    # Tolerance 1e-6 relative (reference/README.md). Known residuals: the published centring
    # matrix is built in float32 by the published code -> ~5e-8 on cov/sqrtm/triu; our backward is the exact
    # gradient of the forward, the published one drops the 1e-5 trace eps -> up to ~7e-7 on
    # input_grad for the smallest trace (d=32, tr≈14: 1e-5/14 ≈ 7e-7).
    x = torch.tensor(ref[f"{case}/input"], requires_grad=True)
    iters = int(ref[f"{case}/iters"])
    cov = covariance(x)
    root = sqrtm_newton_schulz(cov, iters)
    vec = triu_vec(root)
    (vec * torch.tensor(ref[f"{case}/upstream_grad"])).sum().backward()
    for name, ours in [("cov", cov), ("sqrtm", root), ("triu", vec), ("input_grad", x.grad)]:
        assert ours.dtype == torch.float64
        assert rel(ours.detach(), torch.tensor(ref[f"{case}/{name}"])) < 1e-6, name
    # the composed op is the same computation
    x2 = x.detach().clone().requires_grad_(True)
    out = isqrt_cov(x2, iters=iters)
    (out * torch.tensor(ref[f"{case}/upstream_grad"])).sum().backward()
    assert torch.equal(out.detach(), vec.detach())
    assert torch.allclose(x2.grad, x.grad, rtol=0, atol=1e-15)


def test_published_symmetrised_triu_gradient_gives_same_input_grad(ref):
    # The published vectorisation backward symmetrises G. Square root and covariance
    # are transpose-equivariant, so feeding sym(G) instead of G changes nothing upstream.
    case = CASES[0]
    x = torch.tensor(ref[f"{case}/input"], requires_grad=True)
    root = sqrtm_newton_schulz(covariance(x), int(ref[f"{case}/iters"]))
    d = root.shape[1]
    g = torch.zeros(root.shape[0], d * d, dtype=root.dtype)
    g[:, triu_index(d)] = torch.tensor(ref[f"{case}/upstream_grad"])
    g = g.view_as(root)
    (plain,) = torch.autograd.grad(root, x, g, retain_graph=True)
    (symm,) = torch.autograd.grad(root, x, 0.5 * (g + g.transpose(1, 2)))
    assert rel(symm, plain) < 1e-12
    assert rel(plain, torch.tensor(ref[f"{case}/input_grad"])) < 1e-6


# ------------------------------------------------------------------------------ definitions ---
def test_covariance_equals_naive_definition():
    x = features((3, 5, 4, 6, 7), seed=1)  # (B, d, T, H, W): all positions are pooled together
    cov = covariance(x)
    for b in range(3):
        naive = np.cov(x[b].reshape(5, -1).numpy(), bias=True)
        np.testing.assert_allclose(cov[b].numpy(), naive, rtol=1e-12, atol=1e-14)


def test_covariance_float32_keeps_precision_with_large_mean():
    # Centring before XXᵀ keeps float32 accurate when |mean| >> std; E[xxᵀ] − μμᵀ would lose
    # ~log10(mean²/var) = 6 digits here (relative error ~1e-1 instead of ~1e-6).
    x64 = features((2, 8, 3136), seed=2) * 0.01 + 10.0
    exact = covariance(x64)
    got = covariance(x64.float())
    assert got.dtype == torch.float32
    assert rel(got.double(), exact) < 1e-5
    assert (torch.diagonal(covariance(x64.float()), dim1=1, dim2=2) >= 0).all()


def test_triu_layout_and_index_cache():
    d = 5
    m = torch.arange(2 * d * d, dtype=torch.float32).view(2, d, d)
    v = triu_vec(m)
    assert v.shape == (2, d * (d + 1) // 2)
    for i in range(d):
        for j in range(i, d):
            assert v[1, i * d - i * (i - 1) // 2 + (j - i)] == m[1, i, j]
    assert triu_index(d) is triu_index(d, torch.device("cpu"))


def test_newton_schulz_converges_to_eigh_root():
    cov = spd(3, 16, 0.5, 2.0, seed=3)  # well conditioned (κ = 4)
    exact = sqrtm_eigh(cov)
    assert rel(exact @ exact, cov) < 1e-12
    # Converged NS is sqrt(A)·sqrt(tr) with A = Σ/(tr + 1e-5), i.e. the exact root times
    # sqrt(tr/(tr + 1e-5)) (the published pre-normalisation eps).
    tr = cov.diagonal(dim1=1, dim2=2).sum(-1)
    shrink = (tr / (tr + 1e-5)).sqrt()[:, None, None]
    assert rel(sqrtm_newton_schulz(cov, iters=20), exact * shrink) < 1e-12
    # the error shrinks with every extra iteration; 3 iterations (published) is a coarse
    # approximation here (trace normalisation puts A's spectrum near 1/d, far from 1)
    errs = [rel(sqrtm_newton_schulz(cov, iters=k), exact * shrink) for k in (1, 2, 3, 5, 8, 12)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])), errs
    assert errs[2] > 1e-2


def test_isqrt_cov_methods_agree_when_converged():
    x = features((2, 6, 50), seed=4)
    a = isqrt_cov(x, iters=40, method="ns")
    tr = covariance(x).diagonal(dim1=1, dim2=2).sum(-1)
    b = isqrt_cov(x, method="eigh") * (tr / (tr + 1e-5)).sqrt()[:, None]  # eps: see above
    assert rel(a, b) < 1e-10


def test_batched_equals_per_sample():
    x = features((4, 12, 3, 5, 5), seed=5).requires_grad_(True)
    w = torch.randn(4, 78, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for method in ("ns", "eigh"):
        (g_all,) = torch.autograd.grad((isqrt_cov(x, method=method) * w).sum(), x)
        for b in range(4):
            xb = x[b : b + 1].detach().requires_grad_(True)
            out = isqrt_cov(xb, method=method)
            (gb,) = torch.autograd.grad((out * w[b]).sum(), xb)
            torch.testing.assert_close(out[0], isqrt_cov(x.detach(), method=method)[b], rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(gb[0], g_all[b], rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------- gradcheck ---
def test_gradcheck_covariance():
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(covariance, (x,))


@pytest.mark.parametrize("iters", [1, 2, 3, 5])
def test_gradcheck_newton_schulz(iters):
    # gradcheck perturbs entries independently (non-symmetric): the backward is exact for any A.
    cov = spd(2, 4, 0.2, 1.0, seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: sqrtm_newton_schulz(c, iters), (cov,))


def test_gradcheck_eigh_root():
    # eigh reads only one triangle: check the function of a symmetric argument.
    a = spd(2, 4, 0.2, 1.0, seed=7).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: sqrtm_eigh(0.5 * (m + m.transpose(1, 2))), (a,))


@pytest.mark.parametrize("method", ["ns", "eigh"])
def test_gradcheck_isqrt_cov(method):
    x = features((2, 4, 3, 3), seed=8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: isqrt_cov(t, iters=3, method=method), (x,))


def test_gradcheck_triu_vec():
    m = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(triu_vec, (m,))


# --------------------------------------------------------------------------------- degenerate ---
def _degenerate_inputs(dtype):
    zeros = torch.zeros(2, 6, 4, 5, dtype=dtype)
    const = torch.full((2, 6, 4, 5), 0.37, dtype=dtype)  # 0.37 not exact: mean has round-off
    one = const.clone()
    one[:, 2] = features((2, 4, 5), seed=9, dtype=dtype)  # a single non-constant channel
    return {"zeros": zeros, "constant": const, "one_channel": one}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["ns", "eigh"])
def test_degenerate_inputs_finite_forward_and_backward(dtype, method):
    for name, x in _degenerate_inputs(dtype).items():
        x = x.requires_grad_(True)
        out = isqrt_cov(x, method=method)
        out.backward(torch.ones_like(out))
        assert torch.isfinite(out).all(), (name, method)
        assert torch.isfinite(x.grad).all(), (name, method)
        if name in ("zeros", "constant"):
            # documented: zero covariance -> zero output (and zero gradient for "ns")
            assert out.abs().max() < 1e-6, (name, method)
            if method == "ns":
                assert x.grad.abs().max() < 1e-6, name
        else:
            # rank one: the root is sqrt(var) on that channel's diagonal, 0 elsewhere (eigh);
            # the 3-step NS of a rank-one A = e eᵀ (tr/(tr+eps) ≈ 1) is also ≈ sqrt(var) there.
            var = covariance(x.detach())[:, 2, 2]
            i, d = 2, 6
            k = i * d - i * (i - 1) // 2  # triu position of (2, 2)
            torch.testing.assert_close(out[:, k].detach(), var.sqrt(), rtol=1e-4, atol=1e-6)


def test_zero_covariance_sqrtm_gradient_is_zero():
    cov = torch.zeros(2, 5, 5, dtype=torch.float64, requires_grad=True)
    out = sqrtm_newton_schulz(cov)
    (g,) = torch.autograd.grad(out, cov, torch.randn_like(out))
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(g, torch.zeros_like(g))


def test_eigh_root_gradient_finite_for_repeated_eigenvalues():
    cov = torch.eye(6, dtype=torch.float64).repeat(2, 1, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(sqrtm_eigh(cov).sum(), cov)
    # d sqrt(Σ) at Σ = I is E -> E/2, so the gradient of the sum is 1/2 everywhere
    torch.testing.assert_close(g, torch.full_like(g, 0.5))


# ----------------------------------------------------------------------------------- precision ---
def test_autocast_bf16_gives_float32():
    x = features((2, 16, 8, 7, 7), seed=10, dtype=torch.float32)
    ref32 = isqrt_cov(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = isqrt_cov(x)  # fp32 input: autocast is disabled inside, so bit-identical
        xb = x.to(torch.bfloat16).requires_grad_(True)
        low = isqrt_cov(xb)
    assert same.dtype == low.dtype == torch.float32
    assert torch.equal(same, ref32)
    # bf16 input keeps 8 mantissa bits (relative rounding 2^-9 ≈ 2e-3); the pooled vector is then
    # computed in float32 from the rounded values: its error stays at that level (< 1e-2).
    assert rel(low, ref32) < 1e-2
    low.sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()


def test_autocast_after_bf16_conv():
    conv = torch.nn.Conv2d(8, 16, 1)
    x = torch.rand(4, 8, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.relu(conv(x))
        assert y.dtype == torch.bfloat16
        out = isqrt_cov(y.view(2, 2, 16, 7, 7).transpose(1, 2))
    assert out.dtype == torch.float32
    ref = isqrt_cov(y.float().view(2, 2, 16, 7, 7).transpose(1, 2))
    assert torch.equal(out, ref)


def test_float64_is_kept_and_errors_are_specific():
    assert isqrt_cov(features((1, 3, 4))).dtype == torch.float64
    with pytest.raises(ValueError, match=r"covariance: expected x of shape \(B, d, \*positions\)"):
        covariance(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="expected cov of shape"):
        sqrtm_newton_schulz(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="method must be one of"):
        isqrt_cov(features((1, 3, 4)), method="svd")


# ------------------------------------------------------------------------------------- memory ---
def test_backward_saves_nothing_m_sized_but_the_input():
    # The memory target: apart from x itself only d×d-sized tensors are kept for backward.
    b, d, m = 2, 16, 4096
    x = features((b, d, m), seed=11, dtype=torch.float32).requires_grad_(True)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = isqrt_cov(x)
    extra = sum(t.numel() for t in saved if t.data_ptr() != x.data_ptr())
    assert extra <= 32 * b * d * d, extra  # d×d-sized iterates only; x is b*d*m = 8x larger
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------- inference / export ---
def test_no_grad_path_equals_autograd_path():
    x = features((3, 10, 2, 4, 4), seed=12, dtype=torch.float32)
    with torch.no_grad():
        plain = isqrt_cov(x)
    tracked = isqrt_cov(x.clone().requires_grad_(True))
    assert torch.equal(plain, tracked.detach())


def test_onnx_export_matches_eager(tmp_path):
    # the no-grad path is plain tensor ops: exportable (default torch.export-based exporter)
    ort = pytest.importorskip("onnxruntime")

    class Pool(torch.nn.Module):
        def forward(self, x):
            return isqrt_cov(x)

    x = features((2, 16, 49), seed=13, dtype=torch.float32)
    path = tmp_path / "isqrt.onnx"
    torch.onnx.export(Pool().eval(), (x,), str(path))
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    # float32 kernels differ in accumulation order only: 1e-5 relative
    np.testing.assert_allclose(got, isqrt_cov(x).numpy(), rtol=1e-5, atol=1e-6)
    # exporting traced the triu index: the cached one must still be a plain tensor
    assert type(triu_index(16)) is torch.Tensor
