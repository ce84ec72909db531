"""R(2+1)D-18: the 'video' backbone contract, torchvision's parameter names and shapes (so its
Kinetics-400 weights load; the state dict here is generated, nothing is downloaded), TCP pooling
over the backbone's T' frames, training steps, and an ONNX export checked in onnxruntime.

Tolerances: 1e-5 relative for float32 recomputations of the same ops in another order; the ONNX
check uses the exporter's own bound (1e-3 relative to the logit scale, see apps/export.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tcpnet.backbones import R2Plus1D, create_backbone
from tcpnet.checkpoints import load_checkpoint, load_pretrained
from tcpnet.apps.export import export_model
from tcpnet.models import build_model

Shape = Tuple[int, ...]
BN5 = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> List[Tuple[str, Shape]]:
    return [(f"{prefix}.{s}", () if s == "num_batches_tracked" else (c,)) for s in BN5]


def torchvision_r2plus1d_18_keys() -> List[Tuple[str, Shape]]:
    """torchvision.models.video.r2plus1d_18().state_dict() written out by hand, in order: the
    R(2+1)D stem; per block conv1 = (Conv2Plus1D(spatial, BN, ReLU, temporal), BN, ReLU), conv2 =
    (Conv2Plus1D, BN), both with the mid width of (inplanes, planes); downsample (1x1x1 conv, BN)."""
    keys = [("stem.0.weight", (45, 3, 1, 7, 7))] + _bn("stem.1", 45)
    keys += [("stem.3.weight", (64, 45, 3, 1, 1))] + _bn("stem.4", 64)
    inplanes = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{layer}.{b}"
            mid = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)
            for conv, cin in (("conv1", inplanes), ("conv2", planes)):
                keys += [(f"{p}.{conv}.0.0.weight", (mid, cin, 1, 3, 3))] + _bn(f"{p}.{conv}.0.1", mid)
                keys += [(f"{p}.{conv}.0.3.weight", (planes, mid, 3, 1, 1))] + _bn(f"{p}.{conv}.1", planes)
            if b == 0 and layer > 1:
                keys += [(f"{p}.downsample.0.weight", (planes, inplanes, 1, 1, 1))] + _bn(f"{p}.downsample.1", planes)
            inplanes = planes
    return keys + [("fc.weight", (400, 512)), ("fc.bias", (400,))]


def torchvision_state(seed: int = 0) -> dict:
    """A state dict with torchvision's r2plus1d_18 names and shapes and random values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in torchvision_r2plus1d_18_keys():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return sd


def test_keys_and_shapes_are_torchvisions():
    expected = torchvision_r2plus1d_18_keys()
    assert len(expected) == 224  # torchvision's r2plus1d_18 has 224 entries, fc included
    got = [(k, tuple(v.shape)) for k, v in create_backbone("r2plus1d_18").state_dict().items()]
    assert got == expected[:-2]
    shapes = dict(got)
    assert shapes["stem.0.weight"] == (45, 3, 1, 7, 7)
    assert shapes["layer1.0.conv1.0.0.weight"] == (144, 64, 1, 3, 3)
    assert shapes["layer2.0.conv2.0.0.weight"] == (230, 128, 1, 3, 3)  # mid width of (64, 128)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1, 1)
    assert shapes["layer4.1.conv2.0.3.weight"] == (512, 1152, 3, 1, 1)
    model = build_model("r2plus1d_r18", num_classes=400)
    assert [(k[len("backbone."):] if k.startswith("backbone.") else k, tuple(v.shape))
            for k, v in model.state_dict().items()] == expected


def test_strides_init_and_contract():
    m = create_backbone("r2plus1d_18")
    assert isinstance(m, R2Plus1D) and m.layout == "video" and m.num_features == 512
    assert not hasattr(m, "num_segments")  # a video backbone holds no T
    assert [m.output_segments(t) for t in (1, 2, 3, 4, 8, 9, 16, 32)] == [1, 1, 1, 1, 1, 2, 2, 4]
    blk = m.layer3[0]
    assert blk.conv1[0][0].stride == (1, 2, 2) and blk.conv1[0][3].stride == (2, 1, 1)
    assert blk.conv2[0][0].stride == (1, 1, 1) and blk.downsample[0].stride == (2, 2, 2)
    assert m.layer1[0].downsample is None
    torch.manual_seed(0)
    m = create_backbone("r2plus1d_18")
    w = m.layer4[0].conv1[0][0].weight  # Kaiming-normal(fan_out): 921*256*9 samples
    assert w.std().item() == pytest.approx(math.sqrt(2 / (921 * 9)), rel=0.02)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm3d)]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in bns)


def test_forward_is_video_major_over_output_frames():
    torch.manual_seed(0)
    m = create_backbone("r2plus1d_18").eval()
    x = torch.randn(2, 3, 16, 32, 32)
    with torch.no_grad():
        y = m(x)
        v = m.layer4(m.layer3(m.layer2(m.layer1(m.stem(x)))))  # (B, C, T', h, w)
    assert v.shape == (2, 512, 2, 2, 2) and y.shape == (4, 512, 2, 2)
    for b in range(2):
        for t in range(2):
            assert torch.equal(y[b * 2 + t], v[b, :, t])


def test_gap_twin_is_torchvisions_network_and_loads_its_weights(tmp_path):
    sd = torchvision_state()
    torch.save(sd, tmp_path / "r2plus1d_18.pth")
    model = build_model("r2plus1d_r18", num_classes=400, num_segments=16)
    report = load_checkpoint(model, tmp_path / "r2plus1d_18.pth")  # strict
    assert report.ok and report.converted_from == "torchvision-video" and len(report.loaded) == 224
    got = model.state_dict()
    assert all(torch.equal(got[k if k.startswith("fc.") else "backbone." + k], v) for k, v in sd.items())
    model.eval()
    x = torch.randn(2, 3, 16, 24, 24)
    bb = model.backbone
    with torch.no_grad():  # torchvision's forward: layers, AdaptiveAvgPool3d(1), flatten, fc
        v = bb.layer4(bb.layer3(bb.layer2(bb.layer1(bb.stem(x)))))
        expected = F.linear(v.mean(dim=(2, 3, 4)), sd["fc.weight"], sd["fc.bias"])
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_tcp_model_starts_from_torchvision_weights(tmp_path):
    sd = torchvision_state()
    model = build_model("tcp_r2plus1d_r18", num_classes=51, num_segments=16)
    report = load_pretrained(model, sd)
    assert report.converted_from == "torchvision-video" and not report.unexpected
    assert sorted(k for k, _ in report.dropped) == ["fc.bias", "fc.weight"]
    assert all(k.startswith(("head.", "fc.")) for k in report.missing)
    assert torch.equal(model.backbone.layer3[1].conv2[0][3].weight, sd["layer3.1.conv2.0.3.weight"])


@pytest.mark.parametrize("t_len,t_out", [(16, 2), (8, 1), (24, 3)])
def test_tcp_head_pools_the_backbones_output_frames(t_len, t_out):
    torch.manual_seed(0)
    model = build_model("tcp_r2plus1d_r18", num_classes=5, num_segments=t_len, dim=16, mid_channels=32)
    assert model.head_segments() == t_out and model.head.num_segments == t_out
    assert model.head.TCP_att.conv_1d.kernel_size[0] == t_out // 2 + 1
    x = torch.randn(2, 3, t_len, 16, 16)
    logits = model(x)  # train mode
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(ValueError, match=f"T={t_len}"):
        model(torch.randn(1, 3, t_len + 1, 16, 16))


def test_changing_t_checks_the_heads_t_prime():
    tcp = build_model("tcp_r2plus1d_r18", num_classes=5, num_segments=16, dim=16, mid_channels=32)
    with pytest.raises(ValueError, match=r"T'=1 output frames for clips of T=8.*built for num_segments=2"):
        tcp.set_num_segments(8)
    tcp.set_num_segments(12)  # T' is still 2: the temporal convolution fits
    assert tcp.num_segments == tcp.input_config.num_segments == 12 and tcp.head_segments() == 2
    with torch.no_grad():
        assert tcp.eval()(torch.randn(1, 3, 12, 16, 16)).shape == (1, 5)
    gap = build_model("r2plus1d_r18", num_classes=5, num_segments=16)
    gap.set_num_segments(8)
    assert gap.head_segments() == 1
    with pytest.raises(ValueError, match="head was built for num_segments=2 but the backbone for 1"):
        from tcpnet.models import Recognizer

        Recognizer(create_backbone("r2plus1d_18"), tcp.head, 5, num_segments=8)


def test_training_steps_fit_a_fixed_batch():
    """Real SGD steps through the whole model (3-D convs, BN3d, TCP over T'=2) fit 4 clips."""
    torch.manual_seed(0)
    model = build_model("tcp_r2plus1d_r18", num_classes=4, num_segments=16, dim=16, mid_channels=32,
                        dropout=0.0).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)  # fc starts at std 0.001
    x, y = torch.randn(4, 3, 16, 24, 24), torch.arange(4)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = build_model("tcp_r2plus1d_r18", num_classes=6, num_segments=16, dim=16, mid_channels=32).eval()
    nn.init.normal_(model.fc.weight, std=0.3)  # logits of order 1
    model.input_config = dataclasses.replace(model.input_config, crop_size=32)  # small export
    result = export_model(model, tmp_path / "r2plus1d.onnx", "onnx")  # checks it in onnxruntime
    assert result.ok and result.max_abs_diff <= result.tolerance
