"""Recognizer, registry and complexity: every registered model runs on a small clip, zoo models
have the authors' state-dict keys and shapes (tests/data/reference/*.json), partial BN freezes
the right BNs, and the TCP ResNet-50 reproduces the published logits and gradients (slow).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tcpnet.models import Recognizer, build_model, list_models
from tcpnet.utils import complexity

REF = Path(__file__).parent / "data" / "reference"
ZOO = ["tcp_tsn_r50", "tcp_tea_r50", "tcp_tsn_r152", "tsn_r50", "gcp_tsn_r50", "tsm_r50",
       "tcp_tsm_r50", "tcp_tsn_r18", "tsn_r18", "tcp_tiny", "tsn_tiny", "gcp_tiny"]
# (T, crop) per model: 32x32 crops (2x2 final maps with last stride 1) keep the big backbones at
# ~0.1-0.5 s per forward on 2 cores; the tiny demo models run at their native 112x112, T=8.
SMALL = {name: (2, 32) for name in ZOO}
SMALL.update(tcp_tsn_r50=(3, 32), tcp_tiny=(8, 112), tsn_tiny=(8, 112), gcp_tiny=(8, 112))


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


def test_registry_names():
    assert list_models() == sorted(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_every_model_runs_on_a_small_clip(name):
    t_len, crop = SMALL[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, num_segments=t_len).eval()
    x = torch.randn(2, 3, t_len, crop, crop)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (2, model.head.out_dim)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(feats), logits, rtol=0, atol=0)  # eval: no dropout
    assert model.num_segments == model.input_config.num_segments == t_len
    assert model.model_name == name
    assert model.model_kwargs == dict(num_classes=7, num_segments=t_len)
    assert [n for n, _ in model.named_children()] == ["backbone", "head", "dropout", "fc"]


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


def test_build_model_loads_pretrained_weights(tmp_path):
    src = build_model("tcp_tiny", num_classes=5, num_segments=4)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(123)
    model = build_model("tcp_tiny", num_classes=9, num_segments=4, pretrained=str(path))
    got = model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (9, model.head.out_dim)  # classifier is the new task's
    assert "pretrained" not in model.model_kwargs


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
