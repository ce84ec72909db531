"""Recognizer, registry and complexity: zoo models have the authors' state-dict keys and shapes
(tests/data/reference/*.json), T has one owner (the Recognizer), partial BN freezes the right BNs
(any BatchNorm kind), and the TCP ResNet-50 reproduces the published logits and gradients (slow).
The registry-wide smoke test is in tests/test_registry.py.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tcpnet.backbones import MotionExcitation, ShiftConv, TemporalShift, create_backbone
from tcpnet.heads import GAPHead
from tcpnet.input_config import InputConfig
from tcpnet.models import Recognizer, batchnorms, build_model, unwrap_model
from tcpnet.utils import complexity

REF = Path(__file__).parent / "data" / "reference"


def authors_to_ours(key: str) -> str:
    """Authors' DataParallel key -> ours (contract): base_model.TCP.X -> head.X, base_model.X ->
    backbone.X, new_fc.* -> fc.*."""
    assert key.startswith("module."), key
    key = key[len("module."):]
    for old, new in (("base_model.TCP.", "head."), ("base_model.", "backbone."), ("new_fc.", "fc.")):
        if key.startswith(old):
            return new + key[len(old):]
    raise AssertionError(f"unexpected authors' key {key}")


def reference_shapes(name: str) -> dict:
    meta = json.loads((REF / f"{name}.json").read_text())
    return {authors_to_ours(k): tuple(v) for k, v in meta["state_dict_shapes"].items()}


@pytest.mark.parametrize("name,ref", [("tcp_tsn_r50", "tcp_tsn_r50_8f"), ("tcp_tea_r50", "tcp_tea_r50_8f")])
def test_zoo_state_dict_equals_authors_keys_and_shapes(name, ref):
    expected = reference_shapes(ref)
    ours = {k: tuple(v.shape) for k, v in build_model(name, num_classes=400, num_segments=8).state_dict().items()}
    assert len(ours) == {"tcp_tsn_r50": 349, "tcp_tea_r50": 813}[name]
    assert list(ours) == list(expected)  # same entries, same order
    assert ours == expected


def test_related_zoo_key_sets():
    tcp = build_model("tcp_tsn_r50").state_dict()
    r152 = build_model("tcp_tsn_r152").state_dict()
    assert len(r152) == 951
    assert r152["backbone.bn_data.weight"].shape == (3,) and r152["head.layer_reduce1.weight"].shape == (256, 2048, 1, 1)
    # TSM's shift has no parameters, so TCP-TSM has exactly TCP-TSN's keys
    assert {k: v.shape for k, v in build_model("tcp_tsm_r50").state_dict().items()} == {k: v.shape for k, v in tcp.items()}
    gcp = build_model("gcp_tsn_r50").state_dict()
    assert set(gcp) == {k for k in tcp if not k.startswith("head.TCP_att.")}
    tsn = build_model("tsn_r50").state_dict()
    assert set(tsn) == {k for k in tcp if k.startswith("backbone.")} | {"fc.weight", "fc.bias"}
    assert tsn["fc.weight"].shape == (400, 2048)
    assert build_model("tcp_tsn_r50", num_segments=16).state_dict()["head.TCP_att.conv_1d.weight"].shape[2] == 9


def test_input_configs():
    r152 = build_model("tcp_tsn_r152", num_segments=16)
    assert r152.input_config.value_scale == 1.0 and r152.input_config.num_segments == 16  # raw pixels
    r50 = build_model("tcp_tsn_r50")
    assert r50.input_config.value_scale == pytest.approx(1 / 255) and r50.input_config.crop_size == 224


def test_overrides_and_errors():
    m = build_model("tcp_tiny", num_classes=5, num_segments=4, dim=16, temporal_conv=False, dropout=0.2)
    assert m.head.out_dim == 16 * 17 // 2 and m.fc.in_features == 136 and m.dropout.p == 0.2
    assert not any("conv_1d" in k for k in m.state_dict())
    assert m.model_kwargs == dict(num_classes=5, num_segments=4, dim=16, temporal_conv=False, dropout=0.2)
    rebuilt = build_model(m.model_name, **m.model_kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    assert build_model("tsn_r50").backbone.layer4[0].conv2.stride == (2, 2)  # standard TSN baseline
    assert build_model("tcp_tsn_r50").backbone.layer4[0].conv2.stride == (1, 1)  # TCP zoo: last stride 1
    assert build_model("tsm_r50").backbone.temporal_shift == "blockres"
    assert build_model("tcp_tsm_r50").backbone.temporal_shift == "blockres"
    assert build_model("tsn_r50").backbone.temporal_shift is None
    with pytest.raises(ValueError, match="unknown model 'tcp_r50'.*tcp_tsn_r50"):
        build_model("tcp_r50")
    with pytest.raises(TypeError, match="'dimm'"):
        build_model("tcp_tiny", dimm=32)
    with pytest.raises(TypeError, match="'dim'"):
        build_model("tsn_tiny", dim=32)  # GAP has no dim
    with pytest.raises(TypeError, match="'last_stride'"):
        build_model("tcp_tea_r50", last_stride=2)  # TEA has no such option: no part accepts it
    with pytest.raises(TypeError, match="'temporal_shift'"):
        build_model("r2plus1d_r18", temporal_shift="blockres")
    # each option reaches the part whose signature names it
    m = build_model("tsn_tiny", num_classes=2, num_segments=2, widths=(8, 8, 16, 16), shift_div=4,
                    temporal_shift="block", partial_bn=True)
    assert m.backbone.num_features == 16 and m.backbone.layer1[0].shift.shift_div == 4 and m.partial_bn_enabled


def test_forward_validates_input():
    model = build_model("tsn_tiny", num_classes=3, num_segments=4).eval()
    with pytest.raises(ValueError, match=r"expected input \(B, 3, T, H, W\) with T=4"):
        model(torch.randn(2, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="T=4"):
        model(torch.randn(8, 3, 32, 32))
    with pytest.raises(ValueError, match="T=4"):
        model(torch.randn(2, 4, 4, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(2, 3, 4, 32, 32, dtype=torch.uint8))


def test_layout_is_video_major():
    """(B, 3, T, H, W) is permuted so that backbone row b*T + t is frame t of clip b."""
    model = build_model("tcp_tiny", num_classes=3, num_segments=3)
    x = torch.randn(2, 3, 3, 8, 8)
    f = model.frames(x)
    for b in range(2):
        for t in range(3):
            assert torch.equal(f[b * 3 + t], x[b, :, t])


def test_classifier_init():
    torch.manual_seed(0)
    fc = build_model("tcp_tsn_r18", num_classes=100).fc
    assert fc.weight.shape == (100, 8256)
    assert abs(fc.weight.std().item() / 0.001 - 1) < 0.02  # 825,600 samples: 2% is > 25 std errors
    assert torch.count_nonzero(fc.bias) == 0


def test_recognizer_rejects_mismatched_segments():
    from tcpnet.backbones import create_backbone
    from tcpnet.heads import TCPHead

    with pytest.raises(ValueError, match="num_segments=4 but the backbone for 8"):
        Recognizer(create_backbone("resnet_tiny", num_segments=8), TCPHead(128, dim=8, mid_channels=16, num_segments=4), 3)


# ------------------------------------------------------------------------ one owner for T
def test_t_cannot_be_changed_below_the_model():
    """On a TSM model, T set on the backbone or a shift module used to leave the model at T=8:
    8-frame clips were still accepted, the shift crossed clip boundaries, and the logits changed
    silently. Now only the Recognizer changes T, and an attempt below it raises."""
    torch.manual_seed(0)
    model = build_model("tsm_r50", num_classes=3, num_segments=8).eval()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        before = model(x)
    shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
    assert len(shifts) == 16
    with pytest.raises(AttributeError, match=r"set_num_segments"):
        model.backbone.num_segments = 4
    with pytest.raises(AttributeError, match=r"read-only"):
        shifts[3].num_segments = 4
    assert model.num_segments == model.backbone.num_segments == model.input_config.num_segments == 8
    assert all(s.num_segments == 8 for s in shifts)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    with pytest.raises(AttributeError):
        build_model("tcp_tiny", num_segments=8).head.num_segments = 4  # the TCP kernel fixes T
    with pytest.raises(AttributeError):
        build_model("tcp_tiny", num_segments=8).head.TCP_att.num_segments = 4


def test_set_num_segments_updates_every_temporal_module_and_the_head():
    torch.manual_seed(0)
    model = build_model("tsm_r50", num_classes=3, num_segments=8).eval()
    fresh = build_model("tsm_r50", num_classes=3, num_segments=4).eval()
    fresh.load_state_dict(model.state_dict())
    assert model.set_num_segments(4) is model
    assert all(s.num_segments == 4 for s in model.modules() if isinstance(s, TemporalShift))
    assert model.num_segments == model.backbone.num_segments == model.input_config.num_segments == 4
    assert model.model_kwargs == dict(num_classes=3, num_segments=4)  # rebuilds the model as it is now
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fresh(x), rtol=0, atol=0)  # same as built for T=4
    with pytest.raises(ValueError, match="T=4"):
        model(torch.randn(1, 3, 8, 32, 32))
    model.num_segments = 6  # the property setter is the same call
    assert model.backbone.layer1[0].shift.num_segments == 6 and model.input_config.num_segments == 6


def test_set_num_segments_reaches_every_tea_module():
    m = Recognizer(create_backbone("tea_r50", num_segments=8), GAPHead(2048), 3)
    m.set_num_segments(2)
    temporal = [s for s in m.modules() if isinstance(s, (ShiftConv, MotionExcitation))]
    assert len(temporal) == 16 * 5 and all(s.num_segments == 2 for s in temporal)
    with torch.no_grad():
        assert m.eval()(torch.randn(2, 3, 2, 32, 32)).shape == (2, 3)


def test_set_num_segments_refuses_when_the_head_fixes_t():
    model = build_model("tcp_tiny", num_classes=3, num_segments=8, temporal_shift="blockres")
    with pytest.raises(ValueError, match=r"head was built for num_segments=8 .*kernel T//2\+1"):
        model.set_num_segments(4)
    assert model.num_segments == model.backbone.num_segments == model.input_config.num_segments == 8
    assert all(s.num_segments == 8 for s in model.modules() if isinstance(s, TemporalShift))
    free = build_model("tcp_tiny", num_classes=3, num_segments=8, temporal_conv=False)
    free.set_num_segments(4)  # without the temporal convolution nothing in the head depends on T
    with torch.no_grad():
        assert free.eval()(torch.randn(2, 3, 4, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="integer >= 1"):
        free.set_num_segments(0)


def test_input_config_is_one_copy_owned_by_the_model():
    model = build_model("tsn_tiny", num_classes=3, num_segments=4)
    assert not hasattr(model.backbone, "input_config")
    model.input_config = dataclasses.replace(model.input_config, crop_size=96)
    assert model.input_config.crop_size == 96 and model.input_config.num_segments == 4
    model.set_num_segments(2)
    assert model.input_config == dataclasses.replace(InputConfig(crop_size=96, scale_size=128), num_segments=2)
    with pytest.raises(ValueError, match="set_num_segments"):
        model.input_config = dataclasses.replace(model.input_config, num_segments=8)
    with pytest.raises(TypeError):
        model.input_config = {"crop_size": 64}
    assert model.input_config.num_segments == model.num_segments == 2


def test_recognizer_needs_t_for_a_video_backbone():
    from tcpnet.backbones import r2plus1d_18

    with pytest.raises(ValueError, match="num_segments is required"):
        Recognizer(r2plus1d_18(), GAPHead(512), 3)
    m = Recognizer(r2plus1d_18(), GAPHead(512), 3, num_segments=8)
    assert m.layout == "video" and m.head_segments() == 1 and m.input_config.num_segments == 8


# ------------------------------------------------------------------------------- partial BN
def test_partial_bn_freezes_all_but_the_first_bn():
    model = build_model("tcp_tiny", num_classes=3, num_segments=4, partial_bn=True)
    assert model.train() is model
    bns = model.batchnorms()
    assert bns[0] is model.backbone.bn1
    assert bns[-3:] == [model.head.layer_reduce_bn1, model.head.layer_reduce_bn2, model.head.TCP_att.TSA.norm]
    assert bns[0].training and bns[0].weight.requires_grad
    for bn in bns[1:]:
        assert not bn.training and not bn.weight.requires_grad and not bn.bias.requires_grad
    frozen = {id(bn): bn.running_mean.clone() for bn in bns[1:]}
    first = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    assert not torch.equal(bns[0].running_mean, first)  # first BN keeps updating its statistics
    for bn in bns[1:]:
        assert torch.equal(bn.running_mean, frozen[id(bn)]) and bn.weight.grad is None
    assert model.eval() is model and not any(bn.training for bn in bns)
    model.partial_bn(False)
    model.train()
    assert all(bn.training and bn.weight.requires_grad for bn in bns)
    plain = build_model("tcp_tiny", num_classes=3, num_segments=4).train()
    assert all(bn.training and bn.weight.requires_grad for bn in plain.batchnorms())


def test_preact_r152_freezes_bn_data_weight_in_train_mode():
    model = build_model("tcp_tsn_r152", num_classes=3, num_segments=2)
    assert model.train() is model
    assert not model.backbone.bn_data.weight.requires_grad and model.backbone.bn_data.bias.requires_grad
    assert model.backbone.bn_data.training
    model.partial_bn(True)
    assert model.batchnorms()[0] is model.backbone.bn_data and model.backbone.bn_data.training
    assert not model.backbone.bn1.training and not model.head.layer_reduce_bn1.training


def test_partial_bn_covers_sync_batchnorm():
    """convert_sync_batchnorm turns every BN into SyncBatchNorm; partial BN used to look for
    BatchNorm2d only and left them all in train mode with frozen affine parameters."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build_model("tcp_tiny", num_classes=3, num_segments=4,
                                                                partial_bn=True))
    assert model.train() is model
    bns = model.batchnorms()
    assert len(bns) == 1 + 4 * 2 + 3 + 3 and all(isinstance(bn, nn.SyncBatchNorm) for bn in bns)
    assert bns[0] is model.backbone.bn1 and bns[0].training and bns[0].weight.requires_grad
    for bn in bns[1:]:
        assert not bn.training and not bn.weight.requires_grad and not bn.bias.requires_grad


def test_partial_bn_covers_batchnorm3d():
    model = build_model("r2plus1d_r18", num_classes=3, num_segments=4, partial_bn=True).train()
    bns = model.batchnorms()
    assert len(bns) == 2 + 8 * 4 + 3 and all(isinstance(bn, nn.BatchNorm3d) for bn in bns)
    assert bns[0] is model.backbone.stem[1] and bns[0].training and bns[0].weight.requires_grad
    assert all(not bn.training and not bn.weight.requires_grad for bn in bns[1:])
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(model).train()
    assert [type(bn) for bn in sync.batchnorms()] == [nn.SyncBatchNorm] * len(bns)
    assert all(not bn.training and not bn.weight.requires_grad for bn in sync.batchnorms()[1:])


def test_batchnorms_finds_every_kind_in_registration_order():
    net = nn.Sequential(nn.BatchNorm1d(2), nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)),
                        nn.BatchNorm3d(2), nn.SyncBatchNorm(2), nn.LayerNorm(2), nn.GroupNorm(1, 2))
    assert batchnorms(net) == [net[0], net[1][1], net[2], net[3]]
    assert batchnorms(net[3]) == [net[3]]  # the module itself counts


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile imports torch.jit
def test_unwrap_model_strips_every_wrapper():
    model = build_model("tsn_tiny", num_classes=3, num_segments=2)
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(model)) is model
    compiled = torch.compile(model)
    assert unwrap_model(compiled) is model
    assert unwrap_model(nn.DataParallel(compiled)) is model
    ema = torch.optim.swa_utils.AveragedModel(model)  # EMA holds a copy: unwrap reaches the copy
    assert unwrap_model(ema) is ema.module and isinstance(ema.module, Recognizer)


# ------------------------------------------------------------------------------- complexity
def test_complexity_counts_params_and_flops():
    lin = nn.Linear(10, 5)
    c = complexity(lin, (4, 10))
    assert c["params"] == 55 and c["flops"] == 2 * 4 * 10 * 5
    model = build_model("tcp_tiny", num_classes=5, num_segments=4)
    c = complexity(model, (1, 3, 4, 112, 112))
    assert c["params"] == sum(p.numel() for p in model.parameters()) and c["flops"] > 0
    assert c["gmacs"] == pytest.approx(c["gflops"] / 2)
    assert model.training  # mode restored


def test_gap_flops_scale_linearly_with_segments():
    f = [complexity(build_model("tsn_tiny", num_classes=5, num_segments=t), (1, 3, t, 64, 64))["flops"] for t in (2, 4, 8)]
    # everything but the (tiny, per-clip) classifier is per frame, so FLOPs double with T
    assert f[1] / f[0] == pytest.approx(2.0, rel=1e-3) and f[2] / f[1] == pytest.approx(2.0, rel=1e-3)


# ---------------------------------------------------------------------- published numbers
@pytest.mark.slow
def test_tcp_tsn_r50_reproduces_published_logits_and_gradients():
    """Deterministic weights/input of tests/data/reference (README there): 2 clips x 8 frames at
    224x224. Tolerances from that README: logits and TCP vector 1e-4, gradients 1e-3 relative."""
    sys.path.insert(0, str(REF))
    try:
        import detfill
    finally:
        sys.path.remove(str(REF))
    meta = json.loads((REF / "tcp_tsn_r50_8f.json").read_text())
    state = {authors_to_ours(k): torch.from_numpy(np.asarray(v))
             for k, v in detfill.fill_state(meta["state_dict_shapes"], seed=0).items()}
    model = build_model("tcp_tsn_r50", num_classes=400, num_segments=8).eval()
    model.load_state_dict(state, strict=True)
    x = torch.from_numpy(detfill.unit_tensor((16, 3, 224, 224), seed=1)).view(2, 8, 3, 224, 224).permute(0, 2, 1, 3, 4)
    feats = model.forward_features(x)
    logits = model.forward_head(feats)
    ref = np.load(REF / "tcp_tsn_r50_8f.npz")

    def rel(a: torch.Tensor, b: np.ndarray) -> float:
        return float(np.linalg.norm(a.detach().double().numpy() - b) / np.linalg.norm(b))

    assert rel(logits, ref["logits"]) < 1e-4
    assert rel(feats, ref["tcp_repr"]) < 1e-4
    (logits * torch.from_numpy(detfill.unit_tensor((2, 400), seed=2))).sum().backward()
    params = dict(model.named_parameters())
    checked = 0
    for key in ref.files:
        if not key.startswith("grad/"):
            continue
        ours = authors_to_ours("module." + key[len("grad/"):])
        if ours == "head.TCP_att.TSA.conv_phi_2.bias":
            # A bias on the t-2 embedding adds a per-row constant to the affinity, which the
            # softmax over that axis removes: the exact gradient is 0 and both codes give
            # rounding noise (reference norm ~5e-9), so compare absolutely.
            assert params[ours].grad.norm() < 1e-6 and np.linalg.norm(ref[key]) < 1e-6
        else:
            assert rel(params[ours].grad, ref[key]) < 1e-3, ours
        checked += 1
    assert checked == 21


def test_classifier_runs_in_its_own_dtype_under_autocast():
    """Under bf16 autocast the classifier still runs in float32 (no per-step cast of its (K, D)
    weight): logits are float32 and equal the float32 classifier on the same pooled features."""
    torch.manual_seed(0)
    model = build_model("tcp_tiny", num_classes=5, num_segments=4, dim=8, mid_channels=8).eval()
    feats = torch.randn(3, model.fc.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.forward_head(feats)
        from_bf16 = model.forward_head(feats.bfloat16())
    assert logits.dtype == torch.float32 and from_bf16.dtype == torch.float32
    torch.testing.assert_close(logits, model.fc(feats), rtol=0, atol=0)
    torch.testing.assert_close(from_bf16, model.fc(feats.bfloat16().float()), rtol=0, atol=0)
    double = build_model("tcp_tiny", num_classes=5, num_segments=4, dim=8, mid_channels=8).double().eval()
    assert double.forward_head(feats.double()).dtype == torch.float64
