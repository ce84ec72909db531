"""X3D-S/M backbones: fidelity to pytorchvideo's ``create_x3d`` (fixtures made by the official code,
see tests/data/reference/x3d/README.md), the official key names at full size, the
``{'model_state': ...}`` wrapper, ``load_pretrained`` into TCP, TCP on the stage-5 maps, bf16.

Tolerances: 1e-5 absolute for float32 recomputations of the official forward (the same ops; Swish
as ``nn.SiLU``, the head's window as a global mean); bf16 autocast within 2e-2 of the float32
logits relative to their norm (8-bit mantissas, 2^-9 relative rounding per op, over ~20 layers).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
from safetensors.torch import load_file

from tcpnet.backbones import backbone_input_config
from tcpnet.backbones.x3d import X3D, round_width, stage_plan
from tcpnet.checkpoints import CheckpointError, convert_checkpoint, load_checkpoint, load_pretrained
from tcpnet.checkpoints.io import read_file
from tcpnet.heads import TCPHead
from tcpnet.heads.projected_pool import ProjectedPoolHead
from tcpnet.models import Recognizer, build_model

REF = Path(__file__).parent / "data" / "reference" / "x3d"
TINY = json.loads((REF / "tiny.json").read_text())["create_x3d"]
ATOL = 1e-5


def _tiny_backbone() -> X3D:
    return X3D(width_factor=TINY["width_factor"], depth_factor=TINY["depth_factor"],
               bottleneck_factor=TINY["bottleneck_factor"], stem_dim_in=TINY["stem_dim_in"])


def _tiny_model(num_classes: int = TINY["model_num_class"]) -> Recognizer:
    """Our GAP twin of the tiny official model (dropout as create_x3d's, inactive in eval)."""
    backbone = _tiny_backbone()
    head = ProjectedPoolHead(backbone.num_features, out_channels=TINY["head_dim_out"])
    return Recognizer(backbone, head, num_classes, dropout=0.5,
                      num_segments=TINY["input_clip_length"]).eval()


def _official() -> Dict[str, torch.Tensor]:
    return load_file(str(REF / "tiny.safetensors"))


def _io() -> Dict[str, torch.Tensor]:
    return load_file(str(REF / "tiny_io.safetensors"))


def _key_list(name: str) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(k, tuple(s)) for k, s in json.loads((REF / f"{name}_keys.json").read_text())["keys"]]


def _zeros(keys: List[Tuple[str, Tuple[int, ...]]]) -> Dict[str, torch.Tensor]:
    """A state dict with exactly these keys and shapes (BN step counters as int64, as saved)."""
    return {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in keys}


def _to_contract(maps: torch.Tensor) -> torch.Tensor:
    """pytorchvideo's (B, C, T, h, w) -> the backbone contract's (B*T, C, h, w)."""
    b, c, t, h, w = maps.shape
    return maps.transpose(1, 2).reshape(b * t, c, h, w)


# ------------------------------------------------------------------------- fidelity
def test_tiny_model_reproduces_the_official_stage5_features_and_logits():
    model = _tiny_model()
    report = load_checkpoint(model, REF / "tiny.safetensors")  # strict
    assert report.ok and not report.dropped and report.converted_from == "pytorchvideo x3d"
    assert len(report.loaded) == len(model.state_dict()) == len(_official())
    io = _io()
    with torch.no_grad():
        maps = model.backbone(io["input"])
        feats = model.forward_features(io["input"])
        logits = model.forward_head(feats)
        wide = model.backbone(io["input_wide"])
    errors = {name: (ours - ref).abs().max().item()
              for name, ours, ref in (("stage5", maps, _to_contract(io["stage5"])),
                                      ("stage5_wide", wide, _to_contract(io["stage5_wide"])),
                                      ("features", feats, io["features"]), ("logits", logits, io["logits"]))}
    print(f"x3d tiny: max abs error {errors}")
    assert all(e <= ATOL for e in errors.values()), errors
    torch.testing.assert_close(model(io["input"]), logits, rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["model_state", "module_prefix", "bare"])
def test_pytorchvideo_wrappers_load_strictly(wrap):
    sd = _official()
    obj = {"model_state": sd, "epoch": 196} if wrap == "model_state" else sd
    if wrap == "module_prefix":
        obj = {"module." + k: v for k, v in sd.items()}
    model = _tiny_model()
    assert load_checkpoint(model, obj).ok
    with torch.no_grad():
        torch.testing.assert_close(model(_io()["input"]), _io()["logits"], rtol=0, atol=ATOL)


def test_load_pretrained_takes_everything_but_the_classifier():
    model = _tiny_model(num_classes=9)
    fc_before = model.fc.weight.detach().clone()
    report = load_pretrained(model, {"model_state": _official()})
    assert sorted(report.missing) == ["fc.bias", "fc.weight"] and not report.unexpected
    assert sorted(k for k, _ in report.dropped) == ["blocks.5.proj.bias", "blocks.5.proj.weight"]
    assert torch.equal(model.fc.weight, fc_before)
    assert torch.equal(model.head.pre_conv.weight, _official()["blocks.5.pool.pre_conv.weight"])


def _tiny_tcp() -> Recognizer:
    """TCP (dim 16, mid 32) on the tiny X3D, with the fixture's backbone weights (seeded: the
    head's initialisation, and the caller's input drawn next, are the same in every run)."""
    torch.manual_seed(0)
    backbone = _tiny_backbone()
    head = TCPHead(backbone.num_features, dim=16, num_segments=4, mid_channels=32)
    model = Recognizer(backbone, head, 5, num_segments=4).eval()
    load_pretrained(model, REF / "tiny.safetensors")
    torch.nn.init.normal_(model.fc.weight, std=model.fc.in_features ** -0.5)
    return model


def test_load_pretrained_into_tcp_fills_the_backbone_and_drops_the_projected_pool_by_name():
    model = _tiny_tcp()
    report = load_pretrained(model, REF / "tiny.safetensors")
    assert set(report.loaded) == {k for k in model.state_dict() if k.startswith("backbone.")}
    assert not report.unexpected and not report.shape_mismatch
    reasons = dict(report.dropped)
    assert "projected-pool head" in reasons["blocks.5.pool.pre_conv.weight"]
    assert "classifier" in reasons["blocks.5.proj.weight"]
    with pytest.raises(CheckpointError, match=r"head\.layer_reduce1\.weight"):
        load_checkpoint(_tiny_tcp(), REF / "tiny.safetensors")


def test_mismatches_are_reported_by_name():
    sd = _official()
    with pytest.raises(CheckpointError, match=r"fc\.weight file \(5, 32\) vs model \(7, 32\)"):
        load_checkpoint(_tiny_model(num_classes=7), sd)
    missing = {k: v for k, v in sd.items() if k != "blocks.1.res_blocks.0.branch1_conv.weight"}
    with pytest.raises(CheckpointError, match=r"missing.*backbone\.blocks\.1\.res_blocks\.0\.branch1_conv\.weight"):
        load_checkpoint(_tiny_model(), missing)
    with pytest.raises(CheckpointError, match=r"unexpected.*blocks\.5\.pool\.post_norm\.weight"):
        load_checkpoint(_tiny_model(), {**sd, "blocks.5.pool.post_norm.weight": torch.ones(32)})
    with pytest.raises(CheckpointError, match="'blocks.0.norm.bias' and 'module.blocks.0.norm.bias'"):
        load_checkpoint(_tiny_model(), {**sd, "module.blocks.0.norm.bias": sd["blocks.0.norm.bias"]})


def test_convert_infers_the_classes_from_the_pytorchvideo_classifier(tmp_path):
    src = tmp_path / "X3D_M.pyth"
    torch.save({"model_state": _zeros(_key_list("x3d_m")), "epoch": 1}, src)
    assert convert_checkpoint(src, tmp_path / "x3d_m.pt", "x3d_m").ok
    saved = read_file(tmp_path / "x3d_m.pt")
    assert (saved["model_name"], saved["num_classes"]) == ("x3d_m", 400)


# ------------------------------------------------------------------------ full size
def test_stage_plan_is_x3d_s_and_m():
    assert stage_plan(2.0, 2.2, 2.25) == [(3, 54, 24), (5, 108, 48), (11, 216, 96), (7, 432, 192)]
    assert round_width(12, 2.0) == 24 and round_width(54, 0.0625) == 8  # stem, squeeze-excitation


@pytest.mark.parametrize("name", ["x3d_s", "x3d_m"])
def test_official_full_size_keys_and_shapes_load_strictly(name):
    keys = _key_list(name)
    model = build_model(name, num_classes=400)
    report = load_checkpoint(model, {"model_state": _zeros(keys)})
    assert report.ok and not report.dropped and len(report.loaded) == len(keys) == len(model.state_dict())
    params = sum(math.prod(s) for k, s in keys if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert sum(p.numel() for p in model.parameters()) == params == 3_794_274


@pytest.mark.parametrize("name, t, crop, grid", [("x3d_s", 13, 160, 5), ("x3d_m", 16, 224, 7)])
def test_full_size_contract(name, t, crop, grid):
    with torch.device("meta"):
        tcp = build_model(f"tcp_{name}")
        maps = tcp.backbone(torch.empty(1, 3, t, crop, crop))
        gap = build_model(name)
    assert tcp.num_segments == t and tcp.head_segments() == t and tcp.head.num_segments == t
    assert maps.shape == (t, 192, grid, grid)
    assert (tcp.head.layer_reduce1.in_channels, tcp.head.mid_channels, tcp.head.dim) == (192, 256, 128)
    assert (gap.head.inner_channels, gap.head.out_dim, gap.dropout.p) == (432, 2048, 0.5)
    cfg = tcp.input_config
    assert cfg == backbone_input_config(name) and (cfg.crop_size, cfg.num_segments) == (crop, t)
    assert (cfg.mean, cfg.std, cfg.value_scale) == ((0.45,) * 3, (0.225,) * 3, 1 / 255)


# ------------------------------------------------------------------------ TCP, bf16, head
def test_tcp_head_receives_the_stage5_maps_with_every_frame():
    model = _tiny_tcp()
    seen = []
    model.head.register_forward_pre_hook(lambda m, args: seen.append((tuple(args[0].shape), args[1])))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 4, 64, 96)).shape == (2, 5)
    assert seen == [((2 * 4, 64, 2, 3), 4)]


def test_tcp_bf16_autocast_is_close_to_float32():
    model = _tiny_tcp()
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    rel = ((low - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, rel


def test_projected_pool_head_is_the_published_formula():
    head = ProjectedPoolHead(8, out_channels=6).eval()
    assert head.inner_channels == 18  # 2.25 x C, create_x3d's rule
    torch.nn.init.normal_(head.pre_norm.running_mean)
    x = torch.randn(2 * 3, 8, 2, 4)
    clips = x.reshape(2, 3, 8, 2, 4).transpose(1, 2)
    inner = torch.relu(head.pre_norm(head.pre_conv(clips))).mean(dim=(2, 3, 4), keepdim=True)
    torch.testing.assert_close(head(x, 3), torch.relu(head.post_conv(inner)).flatten(1))


def test_init_starts_every_block_as_its_shortcut():
    backbone = X3D()
    norm_c = [m.branch2.norm_c.weight for stage in backbone.blocks[1:] for m in stage.res_blocks]
    assert len(norm_c) == 26 and all(bool((w == 0).all()) for w in norm_c)
    assert bool((backbone.blocks[0].norm.weight == 1).all())
