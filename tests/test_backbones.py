"""Backbones: state-dict layouts against the published checkpoints, output shapes, and hand
checks of every temporal module (TSM shift, TEA motion excitation and shift convs, pre-act
ordering). Tolerances: float32 recomputations of the same ops in another order agree to ~1e-6
relative; we allow 1e-5 (atol 1e-5 on O(1) values)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tcpnet.backbones import (PreactBottleneck, PreactResNet, ShiftConv, TEABottleneck,
                              MotionExcitation, TemporalShift, backbone_input_config,
                              create_backbone, list_backbones, temporal_shift)
from tcpnet.heads import GAPHead
from tcpnet.input_config import IMAGENET_MEAN, IMAGENET_STD
from tcpnet.models import Recognizer

REF = Path(__file__).parent / "data" / "reference"
PREFIX = "module.base_model."
ATOL = 1e-5


def _reference_backbone_shapes(name: str) -> list:
    """(key, shape) of the backbone part of a published checkpoint, in checkpoint order."""
    shapes = json.loads((REF / f"{name}.json").read_text())["state_dict_shapes"]
    return [(k[len(PREFIX):], tuple(v)) for k, v in shapes.items()
            if k.startswith(PREFIX) and not k.startswith(PREFIX + "TCP.")]


def _shapes(module: nn.Module) -> list:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial affine parameters and running statistics (eval-mode checks)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 1 + 0.2 * torch.randn(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean = 0.1 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, eps: float) -> torch.Tensor:
    """Eval-mode BN written out, with an explicit eps."""
    s = lambda v: v.view(1, -1, 1, 1)  # noqa: E731
    return (x - s(bn.running_mean)) / torch.sqrt(s(bn.running_var) + eps) * s(bn.weight) + s(bn.bias)


BN5 = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn_keys(prefix: str, c: int) -> list:
    return [(f"{prefix}.{s}", () if s == "num_batches_tracked" else (c,)) for s in BN5]


# ---------------------------------------------------------------- registry and attributes

def test_registry_has_contract_names_and_rejects_unknown():
    names = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "preact_resnet152",
             "tea_r50", "resnet_tiny"}
    assert names <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'"):
        create_backbone("resnet51")


@pytest.mark.parametrize("name,features,crop,scale,raw", [
    ("resnet18", 512, 224, 256, False), ("resnet50", 2048, 224, 256, False),
    ("resnet_tiny", 128, 112, 128, False), ("tea_r50", 2048, 224, 256, False),
    ("preact_resnet152", 2048, 224, 256, True),
])
def test_num_features_and_input_config(name, features, crop, scale, raw):
    m = create_backbone(name, num_segments=5)
    cfg = backbone_input_config(name)  # registered with the factory; the model keeps the one copy
    assert m.num_features == features and m.num_segments == 5 and m.layout == "frames"
    assert (cfg.crop_size, cfg.scale_size) == (crop, scale)
    if raw:  # the MXNet R152 takes raw 0-255 pixels, bn_data normalises
        assert cfg.mean == (0.0, 0.0, 0.0) and cfg.std == (1.0, 1.0, 1.0) and cfg.value_scale == 1.0
    else:
        assert cfg.mean == IMAGENET_MEAN and cfg.std == IMAGENET_STD
        assert cfg.value_scale == pytest.approx(1 / 255)
    with pytest.raises(AttributeError, match="read-only.*set_num_segments"):
        m.num_segments = 3  # T belongs to the model: Recognizer.set_num_segments
    assert m.num_segments == 5 and not hasattr(m, "input_config")
    model = Recognizer(m, GAPHead(features), 2, input_config=cfg)
    assert model.num_segments == 5 and model.input_config == dataclasses.replace(cfg, num_segments=5)
    model.set_num_segments(3)
    assert m.num_segments == 3 and model.input_config.num_segments == 3


@pytest.mark.parametrize("name,last_stride,hw", [
    ("resnet50", 1, 14), ("resnet50", 2, 7), ("resnet18", 1, 14), ("resnet18", 2, 7),
    ("tea_r50", None, 14), ("preact_resnet152", 1, 14),
])
def test_output_shape_at_224(name, last_stride, hw):
    kw = {} if last_stride is None else dict(last_stride=last_stride)  # TEA's is always 1
    m = create_backbone(name, num_segments=1, **kw).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, m.num_features, hw, hw)


def test_tea_rejects_options_it_does_not_have():
    with pytest.raises(TypeError, match="last_stride"):
        create_backbone("tea_r50", last_stride=2)
    with pytest.raises(TypeError, match="temporal_shift"):
        create_backbone("tea_r50", temporal_shift="blockres")
    with pytest.raises(ValueError, match="temporal_shift must be None or one of"):
        create_backbone("resnet18", temporal_shift="left")


# ---------------------------------------------------------------- state-dict layouts

def test_resnet50_keys_and_shapes_equal_published_tsn_checkpoint():
    expected = _reference_backbone_shapes("tcp_tsn_r50_8f")
    assert len(expected) == 349 - 29 - 2  # 349 = backbone + 29 TCP + 2 new_fc
    for shift in (None, "blockres", "block"):  # TSM is parameter-free: same keys
        got = _shapes(create_backbone("resnet50", temporal_shift=shift))
        assert got == expected, shift
    assert _shapes(create_backbone("resnet50", last_stride=2)) == expected


def test_tea_keys_and_shapes_equal_published_tea_checkpoint():
    expected = _reference_backbone_shapes("tcp_tea_r50_8f")
    assert len(expected) == 813 - 29 - 2
    for t in (8, 3):  # weights do not depend on the clip length
        assert _shapes(create_backbone("tea_r50", num_segments=t)) == expected


def _preact152_expected() -> list:
    """The released R152 layout written out: bn_data, conv1, bn1, blocks (bn1 conv1 bn2 conv2 bn3
    conv3 [downsample.0]), bn2."""
    keys = _bn_keys("bn_data", 3) + [("conv1.weight", (64, 3, 7, 7))] + _bn_keys("bn1", 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 8, 36, 3)), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            keys += _bn_keys(f"{p}.bn1", inplanes) + [(f"{p}.conv1.weight", (planes, inplanes, 1, 1))]
            keys += _bn_keys(f"{p}.bn2", planes) + [(f"{p}.conv2.weight", (planes, planes, 3, 3))]
            keys += _bn_keys(f"{p}.bn3", planes) + [(f"{p}.conv3.weight", (4 * planes, planes, 1, 1))]
            if b == 0:
                keys.append((f"{p}.downsample.0.weight", (4 * planes, inplanes, 1, 1)))
            inplanes = 4 * planes
    return keys + _bn_keys("bn2", 2048)


def test_preact_r152_keys_and_shapes_follow_spec():
    expected = _preact152_expected()
    # full published model: 951 = backbone + 29 TCP entries + 2 new_fc entries
    assert len(expected) == 951 - 29 - 2 == 920
    m = create_backbone("preact_resnet152")
    assert _shapes(m) == expected
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert len(bns) == 3 + 50 * 3 and all(bn.eps == 2e-5 for bn in bns)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.layer1[0].downsample)


def test_resnet18_keys_are_torchvision_names():
    """torchvision's resnet18 state dict minus fc, written out by hand."""
    def conv(name, cout, cin, k):
        return [(f"{name}.weight", (cout, cin, k, k))]

    tv = conv("conv1", 64, 3, 7) + _bn_keys("bn1", 64)
    cin = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for b in (0, 1):
            p = f"layer{layer}.{b}"
            tv += conv(f"{p}.conv1", planes, cin, 3) + _bn_keys(f"{p}.bn1", planes)
            tv += conv(f"{p}.conv2", planes, planes, 3) + _bn_keys(f"{p}.bn2", planes)
            if b == 0 and layer > 1:
                tv += conv(f"{p}.downsample.0", planes, cin, 1) + _bn_keys(f"{p}.downsample.1", planes)
            cin = planes
    assert len(tv) == 122 - 2  # torchvision resnet18 has 122 entries incl. fc.weight/fc.bias
    assert _shapes(create_backbone("resnet18", last_stride=2)) == tv
    assert _shapes(create_backbone("resnet18", last_stride=1)) == tv


def test_torchvision_style_state_dict_loads_into_tcp_and_tsm_variants():
    src = create_backbone("resnet50", last_stride=2)
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    for shift in (None, "blockres"):
        dst = create_backbone("resnet50", last_stride=1, temporal_shift=shift)
        res = dst.load_state_dict(sd, strict=False)
        assert res.missing_keys == [] and sorted(res.unexpected_keys) == ["fc.bias", "fc.weight"]
        assert torch.equal(dst.layer3[5].conv2.weight, src.layer3[5].conv2.weight)


# ---------------------------------------------------------------- ResNet details

def test_resnet_v15_strides_and_last_stride():
    m = create_backbone("resnet50", last_stride=1)
    blk = m.layer2[0]
    assert blk.conv1.stride == (1, 1) and blk.conv2.stride == (2, 2)  # v1.5: stride on the 3x3
    assert blk.downsample[0].stride == (2, 2)
    assert m.layer4[0].conv2.stride == (1, 1) and m.layer4[0].downsample[0].stride == (1, 1)
    m2 = create_backbone("resnet50", last_stride=2)
    assert m2.layer4[0].conv2.stride == (2, 2)


def test_resnet_init_kaiming_fan_out_and_bn():
    torch.manual_seed(0)
    m = create_backbone("resnet50")
    w = m.layer3[0].conv2.weight  # 256*256*9 = 589824 samples: std estimate within ~0.1%
    assert w.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
    assert abs(w.mean().item()) < 1e-3
    assert torch.all(m.layer1[0].bn3.weight == 1) and torch.all(m.layer1[0].bn3.bias == 0)
    z = create_backbone("resnet50", zero_init_residual=True)
    assert torch.all(z.layer1[0].bn3.weight == 0) and torch.all(z.layer1[0].bn1.weight == 1)
    zt = create_backbone("resnet_tiny", zero_init_residual=True)
    assert torch.all(zt.layer2[0].bn2.weight == 0)


def test_resnet_tiny_configurable_and_any_t():
    m = create_backbone("resnet_tiny", widths=(8, 16, 32, 64), blocks=(1, 2, 1, 1),
                        num_segments=3, temporal_shift="blockres").eval()
    assert m.num_features == 64 and len(m.layer2) == 2
    model = Recognizer(m, GAPHead(64), 2)  # the owner of T
    for t in (1, 3, 4):
        model.set_num_segments(t)
        assert all(s.num_segments == t for s in m.modules() if isinstance(s, TemporalShift))
        with torch.no_grad():
            assert m(torch.randn(2 * t, 3, 48, 48)).shape == (2 * t, 64, 3, 3)
    with pytest.raises(ValueError, match="not a whole number of clips of num_segments=4"):
        m(torch.randn(6, 3, 48, 48))


def test_resnet_tiny_trains():
    """A few SGD steps on 4 fixed clips must fit them (real forward/backward through the shift)."""
    torch.manual_seed(0)
    m = create_backbone("resnet_tiny", num_segments=4, temporal_shift="blockres")
    fc = nn.Linear(m.num_features, 4)
    opt = torch.optim.SGD(list(m.parameters()) + list(fc.parameters()), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(4)
    losses = []
    for _ in range(8):
        logits = fc(m(x).mean((2, 3)).view(4, 4, -1).mean(1))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- TSM shift

def test_temporal_shift_exact_values_and_no_clip_mixing():
    n, t, c, div = 2, 3, 16, 8  # fold = 2
    x = torch.zeros(n * t, c, 1, 1)
    for i in range(n):
        for j in range(t):
            for k in range(c):
                x[i * t + j, k] = 1000 * (i + 1) + 100 * j + k  # value encodes (clip, frame, chan)
    out = temporal_shift(x, t, div)
    fold = c // div
    for i in range(n):
        for j in range(t):
            for k in range(c):
                got = out[i * t + j, k, 0, 0].item()
                if k < fold:  # takes frame t+1, zero at the last frame
                    want = x[i * t + j + 1, k, 0, 0].item() if j < t - 1 else 0.0
                elif k < 2 * fold:  # takes frame t-1, zero at the first frame
                    want = x[i * t + j - 1, k, 0, 0].item() if j > 0 else 0.0
                else:
                    want = x[i * t + j, k, 0, 0].item()
                assert got == want, (i, j, k)
                assert got == 0 or int(got) // 1000 == i + 1  # never from another clip
    with pytest.raises(ValueError, match="5 frames"):
        temporal_shift(torch.zeros(5, 16, 1, 1), 2)
    assert torch.equal(temporal_shift(x[:1], 1, div)[0, 2 * fold:], x[0, 2 * fold:])  # T = 1


def test_tsm_blockres_places_and_residual_only():
    r50 = create_backbone("resnet50", temporal_shift="blockres")
    assert all(b.shift is not None for layer in (r50.layer1, r50.layer2, r50.layer3, r50.layer4)
               for b in layer)
    r101 = create_backbone("resnet101", temporal_shift="blockres")  # layer3 has 23 >= 23 blocks
    assert [b.shift is not None for b in r101.layer2] == [True, False, True, False]

    torch.manual_seed(0)
    t = 4
    blk = create_backbone("resnet_tiny", num_segments=t, temporal_shift="blockres").layer1[0]
    _randomise_bn(blk)
    blk.eval()
    x = torch.randn(2 * t, 16, 8, 8)
    with torch.no_grad():
        h = F.relu(blk.bn1(blk.conv1(temporal_shift(x, t, 8))))
        want = F.relu(blk.bn2(blk.conv2(h)) + x)  # identity path sees the unshifted x
        assert torch.allclose(blk(x), want, atol=ATOL)

    blk_b = create_backbone("resnet_tiny", num_segments=t, temporal_shift="block").layer2[0]
    plain = create_backbone("resnet_tiny", num_segments=t).layer2[0]
    plain.load_state_dict(blk_b.state_dict())
    blk_b.eval(), plain.eval()
    x = torch.randn(2 * t, 16, 8, 8)
    with torch.no_grad():  # 'block': the whole block sees the shifted input
        assert torch.allclose(blk_b(x), plain(temporal_shift(x, t, 8)), atol=ATOL)


# ---------------------------------------------------------------- TEA

def test_tea_shift_conv_init_and_values():
    fixed, shift = ShiftConv(26, 3, "fixed"), ShiftConv(26, 3, "shift")
    assert torch.equal(fixed.conv.weight[:, 0], torch.tensor([0.0, 1, 0]).expand(26, 3))
    assert torch.equal(shift.conv.weight[:13, 0], torch.tensor([0.0, 0, 1]).expand(13, 3))
    assert torch.equal(shift.conv.weight[13:, 0], torch.tensor([1.0, 0, 0]).expand(13, 3))

    n, t, c = 2, 3, 26
    x = torch.randn(n * t, c, 2, 3)
    v, out = x.view(n, t, c, 2, 3), shift(x).view(n, t, c, 2, 3)
    assert torch.equal(out[:, :-1, :13], v[:, 1:, :13]) and torch.all(out[:, -1, :13] == 0)
    assert torch.equal(out[:, 1:, 13:], v[:, :-1, 13:]) and torch.all(out[:, 0, 13:] == 0)
    assert torch.equal(fixed(x), x)

    with torch.no_grad():  # learned weights: out[t] = w0 in[t-1] + w1 in[t] + w2 in[t+1], zero pad
        shift.conv.weight.copy_(torch.randn(c, 1, 3))
        w = shift.conv.weight[:, 0].view(1, c, 3, 1, 1)
        pad = F.pad(v, (0, 0, 0, 0, 0, 0, 1, 1))  # zero frames before and after, per clip
        want = w[:, :, 0] * pad[:, :-2] + w[:, :, 1] * pad[:, 1:-1] + w[:, :, 2] * pad[:, 2:]
        assert torch.allclose(shift(x), want.view(n * t, c, 2, 3), atol=ATOL)


def test_tea_motion_excitation_hand_check():
    torch.manual_seed(0)
    n, t, c = 2, 5, 64
    me = MotionExcitation(c, num_segments=t)
    assert me.conv2.groups == me.conv1.out_channels == 4  # depthwise, r = C // 16
    _randomise_bn(me)
    me.eval()
    x = torch.randn(n * t, c, 6, 6)
    with torch.no_grad():
        b = me.bn1(me.conv1(x))
        cb = me.conv2(b)
        d = torch.zeros_like(b)
        for i in range(n):
            for j in range(t - 1):  # D[t] = cb[t+1] - b[t]; D[T-1] stays 0
                d[i * t + j] = cb[i * t + j + 1] - b[i * t + j]
        y = torch.sigmoid(me.bn3(me.conv3(d.mean((2, 3), keepdim=True)))) - 0.5
        assert torch.allclose(me(x), x + x * y, atol=ATOL)

    fresh = MotionExcitation(c, num_segments=t).eval()  # at init: BN 1/0, running stats 0/1
    with torch.no_grad():
        out = fresh(x).view(n, t, c, 6, 6)
        # the zero difference frame is the LAST one: sigmoid(0) - 0.5 = 0 leaves it unchanged
        assert torch.equal(out[:, -1], x.view(n, t, c, 6, 6)[:, -1])
        assert not torch.allclose(out[:, 0], x.view(n, t, c, 6, 6)[:, 0])
        one = MotionExcitation(c, num_segments=1).eval()
        assert torch.equal(one(x), x)  # T = 1: no motion, identity at init


def _tea_block_by_hand(blk: TEABottleneck, x: torch.Tensor) -> torch.Tensor:
    o = blk.me(F.relu(blk.bn1(blk.conv1(x))))
    s = torch.split(o, blk.width, 1)
    ys = []
    for i in range(3):
        u = s[i] if (i == 0 or blk.stype == "stage") else ys[-1] + s[i]
        ys.append(F.relu(blk.bns[i](blk.convs[i](blk.shifts[i](u)))))
    last = blk.shifts[3](s[3])
    if blk.pool is not None:
        last = F.avg_pool2d(last, 3, blk.pool.stride, 1, count_include_pad=True)
    sc = blk.downsample(x) if blk.downsample is not None else x
    return F.relu(blk.bn3(blk.conv3(torch.cat(ys + [last], 1))) + sc)


def test_tea_blocks_hand_check_and_stage_pool_rule():
    m = create_backbone("tea_r50", num_segments=3)
    pools = [layer[0].pool for layer in (m.layer1, m.layer2, m.layer3, m.layer4)]
    assert [p.stride if p is not None else None for p in pools] == [1, 2, 2, None]  # no pool at w=208
    assert all(p.count_include_pad and p.kernel_size == 3 and p.padding == 1 for p in pools[:3])
    assert all(b.pool is None for layer in (m.layer1, m.layer2) for b in layer[1:])
    assert [layer[0].width for layer in (m.layer1, m.layer2, m.layer3, m.layer4)] == [26, 52, 104, 208]
    assert m.layer2[0].downsample[0].stride == (2, 2) and m.layer4[0].convs[0].stride == (1, 1)

    torch.manual_seed(0)
    for blk, cin, hw in ((m.layer1[1], 256, 8), (m.layer2[0], 256, 8), (m.layer4[0], 1024, 4)):
        _randomise_bn(blk)
        with torch.no_grad():
            for s in blk.shifts:  # random shift weights so the order of operations matters
                s.conv.weight.normal_()
        blk.eval()
        x = torch.randn(2 * 3, cin, hw, hw)
        with torch.no_grad():
            got, want = blk(x), _tea_block_by_hand(blk, x)
        assert torch.allclose(got, want, atol=ATOL, rtol=1e-5), blk.stype


@pytest.mark.parametrize("t", [3, 5, 8])
def test_tea_any_num_segments(t):
    m = create_backbone("tea_r50", num_segments=t).eval()
    with torch.no_grad():
        y = m(torch.randn(t, 3, 32, 32))
    assert y.shape == (t, 2048, 2, 2) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match=f"num_segments={t}"):
        m(torch.randn(t + 1, 3, 32, 32))


# ---------------------------------------------------------------- pre-activation ResNet

def test_preact_block_ordering_by_hand():
    torch.manual_seed(0)
    eps = 2e-5
    for blk, cin, hw in ((PreactBottleneck(64, 32, stride=2, downsample=nn.Sequential(
            nn.Conv2d(64, 128, 1, stride=2, bias=False))), 64, 8),
            (PreactBottleneck(128, 32), 128, 6)):
        _randomise_bn(blk)
        blk.eval()
        x = torch.randn(2, cin, hw, hw)
        with torch.no_grad():
            a = F.relu(_bn(x, blk.bn1, eps))
            sc = blk.downsample(a) if blk.downsample is not None else x  # projection takes a
            h = blk.conv1(a)
            h = blk.conv2(F.relu(_bn(h, blk.bn2, eps)))
            h = blk.conv3(F.relu(_bn(h, blk.bn3, eps)))
            assert torch.allclose(blk(x), h + sc, atol=ATOL)  # no ReLU after the addition
            assert (blk(x) < 0).any()


def test_preact_network_order_bn_data_first_bn2_relu_last():
    torch.manual_seed(0)
    m = PreactResNet(layers=(1, 1, 1, 1), num_segments=1)
    _randomise_bn(m)
    m.eval()
    x = torch.rand(2, 3, 64, 64) * 255  # raw pixels
    with torch.no_grad():
        h = F.max_pool2d(F.relu(_bn(m.conv1(_bn(x, m.bn_data, 2e-5)), m.bn1, 2e-5)), 3, 2, 1)
        h = m.layer4(m.layer3(m.layer2(m.layer1(h))))
        want = F.relu(_bn(h, m.bn2, 2e-5))
        got = m(x)
    assert got.shape == (2, 2048, 4, 4)
    assert torch.allclose(got, want, atol=ATOL * want.abs().max().item())
    assert list(dict(m.named_children()))[:3] == ["bn_data", "conv1", "bn1"]
