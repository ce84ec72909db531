"""Video Swin backbones: fidelity to the official code (a fixture made by mmaction2's ``swin.py``
and ``i3d_head.py``, cross-checked with the original repository's file, see
tests/data/reference/swin3d/README.md), the official key names at full size in both layouts,
the checkpoint wrappers, TCP on the Swin maps, bf16, ONNX.

Tolerances: 1e-5 absolute for float32 recomputations of the official forward (the same ops,
partly in another order: fused attention with the scale applied after q.k, pooling as a mean
over (T', h, w)); bf16 autocast within 2e-2 of the float32 maps relative to their norm (8-bit mantissas, 2^-9 relative
rounding per op, over a dozen blocks), and the TCP logits within twice that (the covariance is
quadratic in the maps); ONNX within the exporter's bound.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from safetensors.torch import load_file

from tcpnet.apps.export import export_model
from tcpnet.backbones import create_backbone
from tcpnet.backbones.swin3d import (SwinTransformer3D, fit_window, relative_position_index, shift_mask,
                                     window_merge, window_partition)
from tcpnet.checkpoints import CheckpointError, load_checkpoint, load_pretrained
from tcpnet.checkpoints.load import _infer_num_classes
from tcpnet.heads import GAPHead
from tcpnet.input_config import IMAGENET_MEAN, IMAGENET_STD
from tcpnet.models import Recognizer, build_model

REF = Path(__file__).parent / "data" / "reference" / "swin3d"
TINY = json.loads((REF / "tiny.json").read_text())
ATOL = 1e-5
WIDTH = {"tiny": 768, "small": 768, "base": 1024}


def _tiny_backbone(**kw) -> SwinTransformer3D:
    arch = TINY["arch"]
    options = dict(embed_dim=arch["embed_dims"], depths=arch["depths"], num_heads=arch["num_heads"],
                   patch_size=tuple(TINY["patch_size"]), window_size=tuple(TINY["window_size"]))
    return SwinTransformer3D(**{**options, **kw})


def _tiny_model(num_classes: int = TINY["num_classes"], **kw) -> Recognizer:
    """Our GAP twin of the official tiny recognizer (I3DHead: average pooling, dropout 0.5, fc)."""
    backbone = _tiny_backbone(**kw)
    return Recognizer(backbone, GAPHead(backbone.num_features), num_classes, dropout=0.5,
                      num_segments=TINY["input"][2]).eval()


def _official() -> Dict[str, torch.Tensor]:
    return load_file(str(REF / "tiny.safetensors"))


def _io() -> Dict[str, torch.Tensor]:
    return load_file(str(REF / "tiny_io.safetensors"))


def _original_layout(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The tiny file as the original Video-Swin-Transformer repository names it (final ``norm``)."""
    return {k.replace("backbone.norm3.", "backbone.norm."): v for k, v in sd.items()}


def _key_list(name: str) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(k, tuple(s)) for k, s in json.loads((REF / f"{name}_keys.json").read_text())["keys"]]


# ------------------------------------------------------------------------- fidelity
def test_tiny_model_reproduces_the_official_maps_features_and_logits():
    model = _tiny_model()
    report = load_checkpoint(model, REF / "tiny.safetensors")  # strict
    assert report.ok and not report.dropped and report.converted_from == "video swin (mmaction2)"
    assert len(report.loaded) == len(model.state_dict()) == len(_official())
    assert "backbone.layers.3.blocks.1.attn.relative_position_index" in report.loaded
    io = _io()
    with torch.no_grad():
        maps = model.backbone(io["input"])
        feats = model.forward_features(io["input"])
        logits = model.forward_head(feats)
        whole = model(io["input"])
    b, c, t, h, w = io["maps"].shape
    expected = io["maps"].permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    errors = {name: (ours - ref).abs().max().item()
              for name, ours, ref in (("maps", maps, expected), ("features", feats, io["pooled"]),
                                      ("logits", logits, io["logits"]))}
    print(f"swin3d tiny: max abs error {errors}")
    assert all(e <= ATOL for e in errors.values()), errors
    torch.testing.assert_close(whole, logits, rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module_prefix", "original", "original_model"])
def test_official_wrappers_and_the_original_layout_load_strictly(wrap):
    sd = _official()
    original = wrap.startswith("original")
    if original:
        sd = _original_layout(sd)
    obj = ({"module." + k: v for k, v in sd.items()} if wrap == "module_prefix"
           else {"model" if wrap.endswith("model") else "state_dict": sd, "meta": {}})
    model = _tiny_model()
    report = load_checkpoint(model, obj)
    assert report.ok and ("original" in report.converted_from) == original
    assert torch.equal(model.backbone.norm3.weight, _official()["backbone.norm3.weight"])
    with torch.no_grad():
        torch.testing.assert_close(model(_io()["input"]), _io()["logits"], rtol=0, atol=ATOL)


def test_load_pretrained_takes_everything_but_the_classifier():
    model = _tiny_model(num_classes=7)  # a new task: the file's 5-class fc does not fit anyway
    report = load_pretrained(model, REF / "tiny.safetensors")
    assert sorted(report.missing) == ["fc.bias", "fc.weight"] and not report.unexpected
    assert sorted(k for k, _ in report.dropped) == ["cls_head.fc_cls.bias", "cls_head.fc_cls.weight"]
    official = _official()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in official.items() if k.startswith("backbone."))
    backbone_only = {k[len("backbone."):]: v for k, v in official.items() if k.startswith("backbone.")}
    report = load_pretrained(_tiny_model(), backbone_only)  # a bare backbone file
    assert sorted(report.missing) == ["fc.bias", "fc.weight"] and not report.unexpected and not report.dropped


def test_mismatches_are_reported_by_name():
    sd = _official()
    with pytest.raises(CheckpointError, match="'backbone.norm3.weight' and 'backbone.norm.weight'"):
        load_checkpoint(_tiny_model(), {**sd, "backbone.norm.weight": sd["backbone.norm3.weight"]})
    with pytest.raises(CheckpointError, match=r"fc\.weight file \(5, 64\) vs model \(7, 64\)"):
        load_checkpoint(_tiny_model(num_classes=7), REF / "tiny.safetensors")
    with pytest.raises(CheckpointError, match=r"layers\.0\.blocks\.0\.attn\.relative_position_bias_table file "
                                              r"\(147, 1\) vs model \(507, 1\)"):
        load_checkpoint(_tiny_model(window_size=(2, 7, 7)), REF / "tiny.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected.*cls_head\.fc_other\.weight"):
        load_checkpoint(_tiny_model(), {**sd, "cls_head.fc_other.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"missing.*backbone\.norm3\.bias"):
        load_checkpoint(_tiny_model(), {k: v for k, v in sd.items() if k != "backbone.norm3.bias"})


def test_ours_are_not_taken_for_official_files_and_convert_reads_the_classes():
    model = _tiny_model()
    load_checkpoint(model, REF / "tiny.safetensors")
    twin = _tiny_model()
    assert load_checkpoint(twin, model.state_dict()).converted_from == "tcpnet"
    assert torch.equal(twin.fc.weight, model.fc.weight)
    assert _infer_num_classes(_official(), "tiny.safetensors") == 5


# ------------------------------------------------------------------------ full size
def _meta_state(keys: List[Tuple[str, Tuple[int, ...]]]) -> Dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta", dtype=torch.long if k.endswith("_index") else torch.float32)
            for k, s in keys}


@pytest.mark.filterwarnings("ignore:for .*num_batches_tracked")  # BN fills it in on the meta model
@pytest.mark.parametrize("size, layout", itertools.product(["tiny", "small", "base"], ["mmaction2", "original"]))
def test_official_full_size_keys_and_shapes_load_strictly(size, layout):
    keys = _key_list(f"swin3d_{size}_{layout}")
    with torch.device("meta"):
        model = build_model(f"swin3d_{size}", num_classes=400)
    report = load_checkpoint(model, {"state_dict": _meta_state(keys)})
    assert report.ok and not report.dropped and len(report.loaded) == len(keys) == len(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(
        math.prod(s) for k, s in keys if not k.endswith("relative_position_index"))
    with torch.device("meta"):
        tcp = build_model(f"tcp_swin3d_{size}", num_classes=400)
    pretrained = load_pretrained(tcp, {"state_dict": _meta_state(keys)})
    assert set(pretrained.loaded) == {k for k in tcp.state_dict() if k.startswith("backbone.")}
    assert not pretrained.unexpected and not pretrained.shape_mismatch


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_full_size_contract_32_frames_at_224_give_16_by_7_by_7(size):
    with torch.device("meta"):
        tcp = build_model(f"tcp_swin3d_{size}")
        maps = tcp.backbone(torch.empty(1, 3, 32, 224, 224))
    width = WIDTH[size]
    assert tcp.num_segments == 32 and tcp.head_segments() == 16 and tcp.head.num_segments == 16
    assert maps.shape == (16, width, 7, 7)
    assert (tcp.head.layer_reduce1.in_channels, tcp.head.mid_channels, tcp.head.dim) == (width, 256, 128)
    cfg = tcp.input_config
    assert (cfg.mean, cfg.std, cfg.value_scale, cfg.crop_size, cfg.scale_size) == (
        IMAGENET_MEAN, IMAGENET_STD, 1 / 255, 224, 256)
    # mmaction2's data_preprocessor on 0-255 pixels is the same normalisation
    assert [round(255 * m, 3) for m in cfg.mean] == [123.675, 116.28, 103.53]
    assert [round(255 * s, 3) for s in cfg.std] == [58.395, 57.12, 57.375]


# ------------------------------------------------------------------------ building blocks
def test_relative_position_index_is_the_published_formula():
    window = (2, 3, 4)
    coords = list(itertools.product(*(range(n) for n in window)))
    expected = torch.tensor([[(a[0] - b[0] + 1) * 5 * 7 + (a[1] - b[1] + 2) * 7 + (a[2] - b[2] + 3)
                              for b in coords] for a in coords])
    assert torch.equal(relative_position_index(window), expected)


def test_windows_round_trip_and_the_shift_mask_separates_rolled_regions():
    x = torch.randn(2, 4, 6, 8, 3)
    windows = window_partition(x, (2, 3, 4))
    assert windows.shape == (2, 2 * 2 * 2, 24, 3)
    assert torch.equal(windows[0, 1], x[0, 0:2, 0:3, 4:8].reshape(24, 3))
    assert torch.equal(window_merge(windows, (2, 3, 4), (4, 6, 8)), x)
    mask = shift_mask((4, 6, 8), (2, 3, 4), (1, 1, 2))
    assert mask.shape == (8, 24, 24) and set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all()  # the first window holds no seam
    assert (mask[-1] != 0).any() and torch.equal(mask, mask.transpose(1, 2))
    assert fit_window((4, 7, 3), (8, 7, 7), (4, 3, 3)) == ((4, 7, 3), (0, 0, 0))


# ------------------------------------------------------------------------ TCP, bf16, options
def _tiny_tcp() -> Recognizer:
    torch.manual_seed(0)
    model = build_model("tcp_swin3d_tiny", num_classes=5, num_segments=4, mid_channels=32, dim=16).eval()
    torch.nn.init.normal_(model.fc.weight, std=model.fc.in_features ** -0.5)
    return model


def test_tcp_head_receives_the_swin_maps():
    model = _tiny_tcp()
    seen = []
    model.head.register_forward_pre_hook(lambda m, args: seen.append((tuple(args[0].shape), args[1])))
    x = torch.randn(2, 3, 4, 64, 96)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    assert seen == [((2 * 2, 768, 2, 3), 2)]


def test_tcp_bf16_autocast_is_close_to_float32():
    """The backbone's maps within 2e-2 (measured 1.1%: at initialisation the residual branches are
    small and the error is that of the three bf16 patch mergings, which start each stage's stream);
    the TCP logits within 4e-2 (measured 1.0-2.4% over inputs): the covariance is quadratic in the
    maps and centred, so it about doubles their relative error."""
    model = _tiny_tcp()
    x = torch.randn(4, 3, 4, 64, 64)
    with torch.no_grad():
        ref_maps, ref = model.backbone(x), model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps, low = model.backbone(x), model(x)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    rel_maps = ((maps.float() - ref_maps).norm() / ref_maps.norm()).item()
    rel = ((low - ref).norm() / ref.norm()).item()
    print(f"swin3d bf16: relative error maps {rel_maps:.4f}, logits {rel:.4f}")
    assert rel_maps < 2e-2 and rel < 4e-2, (rel_maps, rel)


def test_drop_path_rate_is_a_backbone_option_with_the_linear_rule():
    swin = create_backbone("swin3d_tiny", drop_path_rate=0.2)
    rates = [b.drop_path.p for layer in swin.layers for b in layer.blocks]
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    model = _tiny_model(drop_path_rate=0.5)
    model.dropout.p = 0.0
    x = _io()["input"]
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))  # stochastic depth in training only
        assert torch.equal(model.eval()(x), model(x))


def test_odd_clip_lengths_are_padded_as_the_official_code():
    swin = create_backbone("swin3d_tiny")
    assert [swin.output_segments(t) for t in (1, 2, 7, 32)] == [1, 1, 4, 16]
    with pytest.raises(ValueError, match="num_segments must be >= 1"):
        swin.output_segments(0)


@pytest.mark.slow
def test_tcp_swin_onnx_export_runs_in_onnxruntime(tmp_path):
    model = _tiny_tcp()
    model.input_config = dataclasses.replace(model.input_config, crop_size=64)  # small export
    result = export_model(model, tmp_path / "tcp_swin.onnx", "onnx")  # checks it in onnxruntime
    assert result.ok and result.max_abs_diff <= result.tolerance
