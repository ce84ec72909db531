"""Pooling heads: TCP against hand-written formulas, its ablation table, init, any T;
GAP and GCP orderlessness. Small shapes (C=16, dim 8, 5x5 maps) keep every test well under 1 s.

Tolerances: float64 comparisons against loop formulas use 1e-10 (only summation order differs);
float32 invariance checks use rtol 1e-5 (summation order of a few hundred terms, well above
float32 epsilon 1.2e-7 times the term count, well below any real change).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from tcpnet.heads import GAPHead, GCPHead, TCPHead, TemporalAttention
from tcpnet.heads.attention import temporal_kernel_size, temporal_padding
from tcpnet.ops import isqrt_cov

C, DIM, MID, H, W = 16, 8, 12, 5, 5
FLAGS = list(itertools.product([True, False], repeat=3))  # (spatial, channel, temporal_conv)


def randomize(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Give every parameter and BN buffer non-trivial values (the published init makes the attention
    an identity, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return module


def frames(n: int, t: int, c: int = DIM, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n * t, c, H, W, generator=g, dtype=dtype).relu()


def conv1x1(conv: nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
    """1x1 conv of one frame v (d, L) written as a matrix product."""
    return conv.weight[:, :, 0, 0] @ v + conv.bias[:, None]


def bn_eval(bn: nn.BatchNorm2d, v: torch.Tensor) -> torch.Tensor:
    return (v - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps) * bn.weight[:, None] + bn.bias[:, None]


# ----------------------------------------------------------------------------- hand formulas
def tsa_reference(tsa, x: torch.Tensor, t_len: int) -> torch.Tensor:
    """TSA by loops: edge-replicated delays max(t-1,0), max(t-2,0)."""
    nt, d, h, w = x.shape
    out = torch.empty_like(x)
    for n in range(nt // t_len):
        for t in range(t_len):
            cur = x[n * t_len + t].reshape(d, -1)
            prev1 = x[n * t_len + max(t - 1, 0)].reshape(d, -1)
            prev2 = x[n * t_len + max(t - 2, 0)].reshape(d, -1)
            p1, p2, p0 = conv1x1(tsa.conv_phi_1, prev1), conv1x1(tsa.conv_phi_2, prev2), conv1x1(tsa.conv_phi0, cur)
            a = torch.softmax((p1.T @ p2) * d ** -0.5, dim=1)  # rows: t-1 positions
            o = p0 @ a.T
            out[n * t_len + t] = (cur + bn_eval(tsa.norm, o)).reshape(d, h, w)
    return out


def tca_reference(tca, x: torch.Tensor, xa: torch.Tensor, t_len: int) -> torch.Tensor:
    """TCA by loops: circular differences (t-1) mod T, (t-2) mod T, 1/2 before the MLP."""
    w1, b1 = tca.g1.weight[:, :, 0, 0], tca.g1.bias
    w2, b2 = tca.g2.weight[:, :, 0, 0], tca.g2.bias
    g = lambda u: torch.sigmoid(w2 @ torch.relu(w1 @ u + b1) + b2)  # noqa: E731
    p = x.mean(dim=(2, 3))
    out = torch.empty_like(xa)
    for n in range(x.shape[0] // t_len):
        for t in range(t_len):
            i = n * t_len + t
            d1 = p[i] - p[n * t_len + (t - 1) % t_len]
            d2 = (p[i] - p[n * t_len + (t - 2) % t_len]) * 0.5
            out[i] = xa[i] * ((g(d1) + g(d2)) * 0.5)[:, None, None]
    return out


def tconv_reference(conv: nn.Conv3d, xa: torch.Tensor, t_len: int) -> torch.Tensor:
    """out[t] = b + sum_j W_j . xa[(t + j - p) mod T], p = (k-1)//2."""
    k = conv.kernel_size[0]
    p = (k - 1) // 2
    out = torch.empty_like(xa)
    for n in range(xa.shape[0] // t_len):
        for t in range(t_len):
            acc = conv.bias[:, None, None].expand_as(xa[0]).clone()
            for j in range(k):
                src = xa[n * t_len + (t + j - p) % t_len]
                acc = acc + torch.einsum("oi,ihw->ohw", conv.weight[:, :, j, 0, 0], src)
            out[n * t_len + t] = acc
    return out


# -------------------------------------------------------------------------- TCP components
def test_tsa_matches_loop_formula():
    att = randomize(TemporalAttention(DIM, 5, channel_attention=False, temporal_conv=False)).double().eval()
    x = frames(2, 5)
    torch.testing.assert_close(att.TSA(x, 5), tsa_reference(att.TSA, x, 5), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(att(x, 5), att.TSA(x, 5), rtol=0, atol=0)  # sp only: TSA(x)


def test_tca_matches_loop_formula():
    att = randomize(TemporalAttention(DIM, 4, spatial_attention=False, temporal_conv=False), seed=3).double()
    x, xa = frames(2, 4, seed=1), frames(2, 4, seed=2)
    torch.testing.assert_close(att.TCA(x, xa, 4), tca_reference(att.TCA, x, xa, 4), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(att(x, 4), tca_reference(att.TCA, x, x, 4), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t_len", [1, 2, 3, 4, 5, 6, 7, 8, 10])
def test_temporal_conv_matches_circular_formula(t_len):
    att = randomize(TemporalAttention(DIM, t_len, spatial_attention=False, channel_attention=False), seed=t_len).double()
    k = temporal_kernel_size(t_len)
    assert att.conv_1d.weight.shape == (DIM, DIM, k, 1, 1)
    assert sum(temporal_padding(k)) == k - 1
    xa = frames(2, t_len)
    torch.testing.assert_close(att.temporal_conv(xa, t_len), tconv_reference(att.conv_1d, xa, t_len), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t_len", [4, 5, 8, 9])
def test_temporal_conv_equals_published_symmetric_padding_for_odd_kernel(t_len):
    """For odd k the padding is the published Conv3d(padding=((k-1)//2, 0, 0), padding_mode='circular')."""
    att = randomize(TemporalAttention(DIM, t_len, spatial_attention=False, channel_attention=False)).double()
    k = temporal_kernel_size(t_len)
    assert k % 2 == 1
    published = nn.Conv3d(DIM, DIM, (k, 1, 1), padding=((k - 1) // 2, 0, 0), padding_mode="circular").double()
    published.load_state_dict(att.conv_1d.state_dict())
    xa = frames(2, t_len)
    v = xa.view(2, t_len, DIM, H, W).permute(0, 2, 1, 3, 4)
    expected = published(v).permute(0, 2, 1, 3, 4).reshape_as(xa)
    torch.testing.assert_close(att.temporal_conv(xa, t_len), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "sp%d-ch%d-1d%d" % f)
def test_ablation_table(flags):
    """The paper's ablation table: which parts exist, their keys, and the composed formula of each row."""
    sp, ch, t1d = flags
    head = TCPHead(C, dim=DIM, num_segments=4, mid_channels=MID, spatial_attention=sp,
                   channel_attention=ch, temporal_conv=t1d)
    att_keys = {k.split(".")[1] for k in head.state_dict() if k.startswith("TCP_att.")}
    expected = {name for name, on in (("TSA", sp), ("TCA", ch), ("conv_1d", t1d)) if on}
    assert att_keys == expected
    reduction_keys = 2 + 2 * 5  # two conv weights + two BNs of five entries each
    n_keys = reduction_keys + (4 if ch else 0) + (2 if t1d else 0) + (6 + 5 if sp else 0)
    assert len(head.state_dict()) == n_keys
    if not expected:
        assert isinstance(head.TCP_att, nn.Identity)
        return
    att = randomize(head.TCP_att, seed=7).double().eval()
    x = frames(2, 4)
    xa = att.TSA(x, 4) if sp else x
    if ch:
        xa = att.TCA(x, xa, 4)
    z = torch.relu(att.temporal_conv(xa, 4) + x) if t1d else xa
    torch.testing.assert_close(att(x, 4), z, rtol=0, atol=0)


def test_full_tcp_head_has_the_29_published_keys():
    head = TCPHead()  # published defaults: 2048 -> 256 -> 128, T=8
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert len(shapes) == 29
    assert shapes["layer_reduce1.weight"] == (256, 2048, 1, 1)
    assert shapes["TCP_att.TCA.g1.weight"] == (512, 128, 1, 1)
    assert shapes["TCP_att.conv_1d.weight"] == (128, 128, 5, 1, 1)
    assert shapes["TCP_att.TSA.norm.running_var"] == (128,)
    assert head.out_dim == 8256
    assert TCPHead(num_segments=16).TCP_att.conv_1d.weight.shape[2] == 9


# -------------------------------------------------------------------------------- init
@pytest.mark.parametrize("flags", [f for f in FLAGS if f[2] or f == (True, False, False)])
def test_attention_is_exact_identity_at_init(flags):
    """Published init: zero conv_1d and zero-gamma TSA.norm make TCP_att(x) == x bit for bit (x >= 0),
    in train and eval mode."""
    sp, ch, t1d = flags
    att = TemporalAttention(DIM, 4, spatial_attention=sp, channel_attention=ch, temporal_conv=t1d)
    x = frames(3, 4, dtype=torch.float32)
    assert torch.equal(att(x, 4), x)
    assert torch.equal(att.eval()(x, 4), x)


def test_published_initialisation():
    torch.manual_seed(0)
    head = TCPHead(in_channels=64)
    att = head.TCP_att
    # Kaiming-normal(fan_out): std sqrt(2/fan_out); >= 16k samples -> 5% is > 9 standard errors.
    for conv, std in ((head.layer_reduce1, math.sqrt(2 / 256)), (head.layer_reduce2, math.sqrt(2 / 128)),
                      (att.TSA.conv_phi_1, 0.125), (att.TSA.conv_phi_2, 0.125), (att.TSA.conv_phi0, 0.125),
                      (att.TCA.g1, 0.01), (att.TCA.g2, 0.01)):
        assert abs(conv.weight.std().item() / std - 1) < 0.05
        assert abs(conv.weight.mean().item()) < 0.05 * std
    for conv in (att.TSA.conv_phi_1, att.TSA.conv_phi_2, att.TSA.conv_phi0, att.TCA.g1, att.TCA.g2, att.conv_1d):
        assert torch.count_nonzero(conv.bias) == 0
    assert torch.count_nonzero(att.conv_1d.weight) == 0
    assert torch.count_nonzero(att.TSA.norm.weight) == 0 and torch.count_nonzero(att.TSA.norm.bias) == 0
    for bn in (head.layer_reduce_bn1, head.layer_reduce_bn2):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    head.reset_parameters()  # re-running the init keeps the identity property
    x = frames(2, 8, c=128, dtype=torch.float32)
    assert torch.equal(att(x, 8), x)


# --------------------------------------------------------------------------- full head
@pytest.mark.parametrize("t_len", [1, 2, 3, 6, 8, 10, 16])
def test_tcp_head_any_num_segments_forward_backward(t_len):
    """The published code crashes for T = 6, 10 (even temporal kernel); ours keeps length T."""
    head = randomize(TCPHead(C, dim=DIM, num_segments=t_len, mid_channels=MID), scale=0.3)
    x = torch.randn(2 * t_len, C, H, W, requires_grad=True)
    out = head(x, t_len)  # train mode: BN batch statistics
    assert out.shape == (2, DIM * (DIM + 1) // 2) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_video_level_pooling_is_isqrt_of_regrouped_columns():
    """Video-level pooling: column m = (t*H + h)*W + w of clip n holds z[n*T + t, :, h, w]."""
    t_len = 3
    head = randomize(TCPHead(C, dim=DIM, num_segments=t_len, mid_channels=MID)).double().eval()
    z = frames(2, t_len)
    cols = torch.empty(2, DIM, t_len * H * W, dtype=z.dtype)
    for n in range(2):
        for t in range(t_len):
            for h in range(H):
                for w in range(W):
                    cols[n, :, (t * H + h) * W + w] = z[n * t_len + t, :, h, w]
    torch.testing.assert_close(head.pool(z, t_len), isqrt_cov(cols, iters=3), rtol=1e-12, atol=1e-12)
    x = torch.randn(2 * t_len, C, H, W, dtype=torch.float64)
    expected = isqrt_cov(head.attend(head.reduce(x), t_len).reshape(2, t_len, DIM, -1).transpose(1, 2).reshape(2, DIM, -1))
    torch.testing.assert_close(head(x, t_len), expected, rtol=1e-12, atol=1e-12)


def test_frame_level_averages_per_frame_covariances():
    t_len = 4
    head = randomize(TCPHead(C, dim=DIM, num_segments=t_len, mid_channels=MID, level="frame")).double().eval()
    x = torch.randn(2 * t_len, C, H, W, dtype=torch.float64)
    z = head.attend(head.reduce(x), t_len)
    per_frame = torch.stack([isqrt_cov(z[i:i + 1]) for i in range(2 * t_len)]).view(2, t_len, -1)
    torch.testing.assert_close(head(x, t_len), per_frame.mean(1), rtol=1e-12, atol=1e-12)
    # ... which, through a linear classifier, equals averaging per-frame logits.
    fc = nn.Linear(head.out_dim, 5).double()
    torch.testing.assert_close(fc(head(x, t_len)), fc(per_frame).mean(1), rtol=1e-10, atol=1e-12)


def test_tcp_without_attention_equals_gcp():
    tcp = TCPHead(C, dim=DIM, num_segments=4, mid_channels=MID, spatial_attention=False,
                  channel_attention=False, temporal_conv=False)
    gcp = GCPHead(C, dim=DIM, mid_channels=MID)
    assert list(tcp.state_dict()) == list(gcp.state_dict())  # same reduction keys
    gcp.load_state_dict(randomize(tcp).state_dict())
    x = torch.randn(8, C, H, W)
    assert torch.equal(tcp(x, 4), gcp(x, 4))
    assert gcp.out_dim == tcp.out_dim == DIM * (DIM + 1) // 2


def _permute_frames(x: torch.Tensor, t_len: int, order) -> torch.Tensor:
    return x.view(-1, t_len, *x.shape[1:])[:, order].reshape_as(x)


def test_frame_order_matters_for_tcp_only():
    t_len = 8
    x = torch.randn(2 * t_len, C, H, W)
    rev = _permute_frames(x, t_len, list(range(t_len))[::-1])
    shuffled = _permute_frames(x, t_len, torch.randperm(t_len, generator=torch.Generator().manual_seed(0)))
    tcp = randomize(TCPHead(C, dim=DIM, num_segments=t_len, mid_channels=MID), scale=0.3).eval()
    a, b = tcp(x, t_len), tcp(rev, t_len)
    assert ((a - b).norm() / a.norm()).item() > 1e-3  # attention is temporal: order changes the output
    gcp = randomize(GCPHead(C, dim=DIM, mid_channels=MID)).eval()
    gap = GAPHead(C)
    for head in (gcp, gap):
        ref = head(x, t_len)
        for y in (rev, shuffled):
            torch.testing.assert_close(head(y, t_len), ref, rtol=1e-5, atol=1e-6)
    gcp.train()  # BN batch statistics are orderless too
    torch.testing.assert_close(gcp(rev, t_len), gcp(x, t_len), rtol=1e-5, atol=1e-6)


def test_gap_is_mean_over_time_and_space_and_matches_tsn_logit_averaging():
    t_len = 3
    gap = GAPHead(C)
    x = torch.randn(2 * t_len, C, H, W, dtype=torch.float64)
    out = gap(x, t_len)
    assert out.shape == (2, C) and gap.out_dim == C
    torch.testing.assert_close(out, x.mean(dim=(2, 3)).view(2, t_len, C).mean(1), rtol=1e-12, atol=1e-12)
    fc = nn.Linear(C, 7).double()
    tsn = fc(x.mean(dim=(2, 3))).view(2, t_len, 7).mean(1)  # TSN: per-frame logits, then average
    torch.testing.assert_close(fc(out), tsn, rtol=1e-10, atol=1e-12)


def test_heads_reject_bad_input():
    tcp = TCPHead(C, dim=DIM, num_segments=4, mid_channels=MID)
    with pytest.raises(ValueError, match="not a multiple of num_segments=4"):
        tcp(torch.randn(6, C, H, W), 4)
    with pytest.raises(ValueError, match=r"expected feature maps \(N\*T, 16, H, W\)"):
        tcp(torch.randn(8, C + 1, H, W), 4)
    with pytest.raises(ValueError, match="built for T=4"):
        tcp(torch.randn(8, C, H, W), 8)
    with pytest.raises(ValueError, match="level"):
        TCPHead(C, level="clip")
    with pytest.raises(ValueError, match="not a multiple"):
        GAPHead(C)(torch.randn(5, C, H, W), 2)
    # without the temporal conv nothing ties the head to one T
    free = TCPHead(C, dim=DIM, num_segments=4, mid_channels=MID, temporal_conv=False)
    assert free(torch.randn(12, C, H, W), 6).shape == (2, DIM * (DIM + 1) // 2)
    assert tcp.fixed_num_segments == 4 and free.fixed_num_segments is None
    assert GCPHead(C).fixed_num_segments is None and GAPHead(C).fixed_num_segments is None
    with pytest.raises(AttributeError):
        tcp.num_segments = 8  # the kernel size T//2+1 is built in: T is read-only


def test_tcp_head_float64_and_autocast():
    head = randomize(TCPHead(C, dim=DIM, num_segments=4, mid_channels=MID)).eval()
    x = torch.randn(8, C, H, W)
    assert head.double()(x.double(), 4).dtype == torch.float64
    head.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x, 4)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()  # pooling runs in fp32


def test_conv1x1_matmul_path_equals_the_convolution():
    """On channels-last input the 1x1 convs run as one matmul on the NHWC view: same values and
    gradients as the convolution (float64), channels-last output; NCHW input keeps the convolution."""
    from tcpnet.heads.pointwise import conv1x1, linear1x1
    torch.manual_seed(0)
    for bias in (False, True):
        conv = nn.Conv2d(12, 5, kernel_size=1, bias=bias).double()
        x = torch.randn(6, 12, 3, 4, dtype=torch.float64)
        xc = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        xn = x.clone().requires_grad_(True)
        y, ref = conv1x1(conv, xc), conv(xn)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
        gw = torch.autograd.grad((y * ref.detach()).sum(), (xc, conv.weight))
        rw = torch.autograd.grad((ref * ref.detach()).sum(), (xn, conv.weight))
        for a, b in zip(gw, rw):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert conv1x1(conv, xn).is_contiguous()  # NCHW: the convolution itself
        v = torch.randn(7, 12, dtype=torch.float64)
        torch.testing.assert_close(linear1x1(conv, v), conv(v[:, :, None, None])[:, :, 0, 0], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="1x1"):
        conv1x1(nn.Conv2d(4, 4, kernel_size=3), torch.randn(1, 4, 5, 5))


def test_tcp_head_channels_last_equals_nchw():
    """The whole TCP head gives the same output and input gradient for both layouts."""
    torch.manual_seed(0)
    head = TCPHead(64, dim=16, num_segments=4, mid_channels=32).double()
    for m in head.modules():  # non-trivial attention (the published init makes it the identity)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
        if isinstance(m, nn.Conv3d):
            nn.init.normal_(m.weight, std=0.05)
    x = torch.relu(torch.randn(8, 64, 5, 5, dtype=torch.float64))
    xn = x.clone().requires_grad_(True)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    yn, yc = head(xn, 4), head(xc, 4)
    torch.testing.assert_close(yc, yn, rtol=1e-10, atol=1e-12)
    gn, = torch.autograd.grad(yn.square().sum(), xn)
    gc, = torch.autograd.grad(yc.square().sum(), xc)
    torch.testing.assert_close(gc, gn, rtol=1e-10, atol=1e-12)
