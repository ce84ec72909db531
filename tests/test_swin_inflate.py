"""A 2-D ImageNet Swin file inflated to Video Swin on load, against the official inflation: fixtures
made by mmaction2's ``SwinTransformer3D.inflate_weights`` (cross-checked with the original
Video-Swin-Transformer's) on a tiny 2-D Swin built by microsoft/Swin-Transformer's own model, see
tests/data/reference/swin3d/README.md and make_inflate_fixture.py.

Tolerance: 1e-6 absolute. The inflation is the same float32 ops (repeat and divide; bicubic
interpolation with the same sizes and defaults), so the tensors agree to rounding or exactly.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tcpnet.backbones.swin3d import SwinTransformer3D
from tcpnet.checkpoints import load_checkpoint, load_pretrained
from tcpnet.checkpoints.swin3d import is_swin2d, is_swin3d
from tcpnet.heads import GAPHead
from tcpnet.models import Recognizer

REF = Path(__file__).parent / "data" / "reference" / "swin3d"
TINY = json.loads((REF / "tiny.json").read_text())
CASES = ("window4", "window5")  # 2-D window 4: tables repeated only; 5: resized 9x9 -> 7x7 first
ATOL = 1e-6


def _model(num_classes: int) -> Recognizer:
    """Our tiny Video Swin with average pooling, the 3-D model of the fixtures."""
    arch = TINY["arch"]
    backbone = SwinTransformer3D(embed_dim=arch["embed_dims"], depths=arch["depths"], num_heads=arch["num_heads"],
                                 patch_size=tuple(TINY["patch_size"]), window_size=tuple(TINY["window_size"]))
    return Recognizer(backbone, GAPHead(backbone.num_features), num_classes, num_segments=8).eval()


def _official(case: str) -> Dict[str, torch.Tensor]:
    """mmaction2's inflated backbone state dict: the tensors the inflation made, the rest as in the
    2-D file (the fixture stores each once; its metadata lists every key)."""
    two_d = load_file(str(REF / f"swin2d_{case}.safetensors"))
    made = load_file(str(REF / f"swin2d_{case}_inflated.safetensors"))
    with safe_open(str(REF / f"swin2d_{case}_inflated.safetensors"), "pt") as f:
        keys = json.loads(f.metadata()["keys"])
    return {k: made[k] if k in made else two_d[k] for k in keys}


@pytest.fixture(params=CASES)
def imagenet_file(request, tmp_path) -> tuple:
    """The 2-D file as the ImageNet Swin releases are saved: ``{'model': state_dict}``, a .pth."""
    path = tmp_path / f"swin_{request.param}.pth"
    torch.save({"model": load_file(str(REF / f"swin2d_{request.param}.safetensors"))}, path)
    return request.param, path


def test_inflated_tensors_equal_the_official_inflation_and_load_strictly(imagenet_file, caplog):
    case, path = imagenet_file
    model = _model(num_classes=10)  # the 2-D file's classifier has 10 classes: every key fits
    with caplog.at_level(logging.INFO, logger="tcpnet.checkpoints.swin3d"):
        report = load_checkpoint(model, path)  # strict by name
    assert report.ok and report.converted_from == "2-D swin (ImageNet), inflated to 3-D"
    assert sorted(report.loaded) == sorted(model.state_dict())
    assert [r.message for r in caplog.records if "inflated a 2-D Swin" in r.message] != []
    official = _official(case)
    ours = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    assert ours.keys() == official.keys()
    for key, expected in official.items():
        assert ours[key].shape == expected.shape, key
        assert (ours[key].double() - expected.double()).abs().max().item() <= ATOL, key
    head = load_file(str(REF / f"swin2d_{case}.safetensors"))
    assert torch.equal(model.fc.weight, head["head.weight"])  # the ImageNet classifier fits here
    dropped = {key for key, _ in report.dropped}
    assert {k for k in head if k.endswith(("attn_mask", "relative_position_index"))} == dropped


def test_pretrained_keeps_the_backbone_and_drops_the_imagenet_classifier(imagenet_file):
    case, path = imagenet_file
    model = _model(num_classes=5)
    report = load_pretrained(model, path)
    assert report.unexpected == [] and report.shape_mismatch == []
    assert sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert {"head.weight", "head.bias"} <= {key for key, _ in report.dropped}
    expected = _official(case)["patch_embed.proj.weight"]
    assert torch.allclose(model.backbone.patch_embed.proj.weight, expected, atol=ATOL, rtol=0)
    with torch.no_grad():  # the inflated model runs
        assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 5)


def test_detection_by_shapes():
    two_d = load_file(str(REF / "swin2d_window4.safetensors"))
    three_d = load_file(str(REF / "tiny.safetensors"))
    assert is_swin3d(two_d) and is_swin2d(two_d)
    assert is_swin3d(three_d) and not is_swin2d(three_d)
    report = load_checkpoint(_model(TINY["num_classes"]), REF / "tiny.safetensors")  # a 3-D file: renamed only
    assert report.converted_from == "video swin (mmaction2)" and not report.dropped


def test_a_table_that_is_not_square_is_refused_naming_the_key(tmp_path):
    sd = load_file(str(REF / "swin2d_window4.safetensors"))
    key = "layers.1.blocks.0.attn.relative_position_bias_table"
    sd[key] = torch.zeros(50, sd[key].shape[1])
    with pytest.raises(Exception, match=key):
        load_pretrained(_model(5), sd)


def test_the_full_size_imagenet_swin_t_layout_fills_swin3d_tiny():
    """Every key and shape of ``swin_tiny_patch4_window7_224.pth`` (the Swin-T recipe's
    ``model.pretrained``) inflates into ``swin3d_tiny`` (window (8, 7, 7)): nothing unexpected or
    mismatched, only the classifier left to train."""
    from tcpnet.models import build_model

    keys = json.loads((REF / "swin2d_tiny_keys.json").read_text())["keys"]
    sd = {k: torch.zeros(s, dtype=torch.int64 if k.endswith("relative_position_index") else torch.float32)
          for k, s in keys}
    model = build_model("swin3d_tiny", num_classes=400)
    report = load_pretrained(model, sd)
    assert report.unexpected == [] and report.shape_mismatch == []
    assert sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert report.converted_from == "2-D swin (ImageNet), inflated to 3-D"
