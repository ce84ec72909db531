"""VideoMAE ViT backbones: fidelity to the official code (fixtures made by the official
``modeling_finetune.py``, see tests/data/reference/videomae/README.md), the official key names at
full size, the checkpoint wrappers and pre-training layout, TCP on the token maps, bf16, ONNX.

Tolerances: 1e-5 absolute for float32 recomputations of the official forward (the same ops,
partly in another order: fused attention, the token mean as a mean over (T', h, w)); bf16
autocast within 2e-2 of the float32 logits relative to their norm (8-bit mantissas, 2^-9
relative rounding per op, over a dozen layers); ONNX within the exporter's own bound.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tcpnet.apps.export import export_model
from tcpnet.backbones import create_backbone
from tcpnet.backbones.videomae import VideoMAEViT, sinusoid_table
from tcpnet.checkpoints import CheckpointError, load_checkpoint, load_pretrained
from tcpnet.heads.mean_norm import MeanNormHead
from tcpnet.input_config import IMAGENET_MEAN, IMAGENET_STD
from tcpnet.models import Recognizer, build_model

REF = Path(__file__).parent / "data" / "reference" / "videomae"
TINY = json.loads((REF / "tiny.json").read_text())
CASES = sorted(TINY["cases"])
ATOL = 1e-5


def _tiny_model(case: str) -> Recognizer:
    """Our GAP twin of the official tiny model of ``case``."""
    c = TINY["cases"][case]
    backbone = VideoMAEViT(embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
                           patch_size=c["patch_size"], tubelet_size=c["tubelet_size"],
                           init_values=c["init_values"])
    head = MeanNormHead(c["embed_dim"])
    return Recognizer(backbone, head, c["num_classes"], dropout=0.0, num_segments=c["all_frames"]).eval()


def _official(case: str) -> Dict[str, torch.Tensor]:
    return load_file(str(REF / f"tiny_{case}.safetensors"))


def _io(case: str) -> Dict[str, torch.Tensor]:
    return load_file(str(REF / f"tiny_{case}_io.safetensors"))


def _key_list(name: str) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(k, tuple(s)) for k, s in json.loads((REF / f"{name}_keys.json").read_text())["keys"]]


def _maps_from_tokens(tokens: torch.Tensor, t_out: int, grid: Tuple[int, int]) -> torch.Tensor:
    """Official (B, T'*h*w, C) tokens, (t, y, x) order -> the contract's (B*T', C, h, w)."""
    b, _, c = tokens.shape
    return tokens.reshape(b, t_out, *grid, c).permute(0, 1, 4, 2, 3).reshape(b * t_out, c, *grid)


# ------------------------------------------------------------------------- fidelity
def test_sinusoid_table_is_the_published_formula():
    n, d = 50, 48
    angle = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    angle[:, 0::2], angle[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
    ours = sinusoid_table(n, d)
    assert ours.shape == (1, n, d) and ours.dtype == torch.float32
    torch.testing.assert_close(ours[0], torch.tensor(angle, dtype=torch.float32), rtol=0, atol=1e-7)


@pytest.mark.parametrize("case", CASES)
def test_tiny_model_reproduces_the_official_tokens_features_and_logits(case):
    model = _tiny_model(case)
    report = load_checkpoint(model, REF / f"tiny_{case}.safetensors")  # strict
    assert report.ok and not report.dropped and report.converted_from == "videomae (fine-tuned)"
    assert len(report.loaded) == len(model.state_dict()) == len(_official(case))
    if TINY["cases"][case]["init_values"] > 0:
        assert "backbone.blocks.1.gamma_2" in report.loaded
    io = _io(case)
    c = TINY["cases"][case]
    grid = (c["img_size"][0] // c["patch_size"], c["img_size"][1] // c["patch_size"])
    with torch.no_grad():
        maps = model.backbone(io["input"])
        feats = model.forward_features(io["input"])
        logits = model.forward_head(feats)
    expected = _maps_from_tokens(io["tokens"], c["all_frames"] // c["tubelet_size"], grid)
    errors = {name: (ours - ref).abs().max().item()
              for name, ours, ref in (("tokens", maps, expected), ("features", feats, io["features"]),
                                      ("logits", logits, io["logits"]))}
    print(f"videomae {case}: max abs error {errors}")
    assert all(e <= ATOL for e in errors.values()), errors
    torch.testing.assert_close(model(io["input"]), logits, rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["module", "model", "module_prefix"])
def test_official_wrappers_load_strictly(wrap):
    sd = _official("plain")
    obj = {"module." + k: v for k, v in sd.items()} if wrap == "module_prefix" else {wrap: sd, "epoch": 3}
    model = _tiny_model("plain")
    assert load_checkpoint(model, obj).ok
    with torch.no_grad():
        torch.testing.assert_close(model(_io("plain")["input"]), _io("plain")["logits"], rtol=0, atol=ATOL)


def test_load_pretrained_takes_everything_but_the_classifier():
    model = _tiny_model("layerscale")
    fc_before = model.fc.weight.detach().clone()
    report = load_pretrained(model, REF / "tiny_layerscale.safetensors")
    assert sorted(report.missing) == ["fc.bias", "fc.weight"] and not report.unexpected
    assert sorted(k for k, _ in report.dropped) == ["head.bias", "head.weight"]
    assert torch.equal(model.fc.weight, fc_before)
    assert torch.equal(model.head.fc_norm.weight, _official("layerscale")["fc_norm.weight"])


def _pretraining_file(case: str) -> dict:
    """An official pre-training file of the tiny encoder: ``{'model': {encoder.*, decoder.*, ...}}``."""
    sd = {"encoder." + k: v for k, v in _official(case).items() if k.startswith(("patch_embed.", "blocks."))}
    c = TINY["cases"][case]["embed_dim"]
    sd.update({"encoder.norm.weight": torch.ones(c), "encoder.norm.bias": torch.zeros(c),
               "encoder_to_decoder.weight": torch.zeros(8, c), "mask_token": torch.zeros(1, 1, 8),
               "decoder.blocks.0.norm1.weight": torch.ones(8), "decoder.head.weight": torch.zeros(4, 8)})
    return {"model": sd}


def test_pretraining_file_loads_the_encoder_and_drops_the_decoder_by_name():
    model = _tiny_model("layerscale")
    report = load_pretrained(model, _pretraining_file("layerscale"))
    assert report.converted_from == "videomae (pre-training encoder)"
    assert sorted(report.missing) == ["fc.bias", "fc.weight", "head.fc_norm.bias", "head.fc_norm.weight"]
    assert not report.unexpected and not report.shape_mismatch
    reasons = dict(report.dropped)
    assert set(reasons) == {"encoder.norm.weight", "encoder.norm.bias", "encoder_to_decoder.weight",
                            "mask_token", "decoder.blocks.0.norm1.weight", "decoder.head.weight"}
    assert "final norm" in reasons["encoder.norm.weight"] and "decoder" in reasons["mask_token"]
    official = _official("layerscale")
    state = model.state_dict()
    assert all(torch.equal(state["backbone." + k], v) for k, v in official.items()
               if k.startswith(("patch_embed.", "blocks.")))
    with pytest.raises(CheckpointError, match="head.fc_norm.weight"):
        load_checkpoint(_tiny_model("layerscale"), _pretraining_file("layerscale"))


def test_mismatches_are_reported_by_name():
    with pytest.raises(CheckpointError, match=r"blocks\.0\.gamma_1"):  # file has layer scale, model not
        load_checkpoint(_tiny_model("plain"), REF / "tiny_layerscale.safetensors")
    with pytest.raises(CheckpointError, match=r"missing.*backbone\.blocks\.0\.gamma_1"):
        load_checkpoint(_tiny_model("layerscale"), REF / "tiny_plain.safetensors")
    c = TINY["cases"]["plain"]
    other = Recognizer(_tiny_model("plain").backbone, MeanNormHead(c["embed_dim"]), 7, num_segments=4)
    with pytest.raises(CheckpointError, match=r"fc\.weight file \(5, 48\) vs model \(7, 48\)"):
        load_checkpoint(other, REF / "tiny_plain.safetensors")
    sd = _official("plain")
    with pytest.raises(CheckpointError, match="'blocks.0.norm1.weight' and 'encoder.blocks.0.norm1.weight'"):
        load_checkpoint(_tiny_model("plain"), {**sd, "encoder.blocks.0.norm1.weight": sd["blocks.0.norm1.weight"]})


# ------------------------------------------------------------------------ full size
def _meta_state(keys: List[Tuple[str, Tuple[int, ...]]]) -> Dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in keys}


@pytest.mark.parametrize("size", ["small", "base"])
def test_official_full_size_keys_and_shapes_load_strictly(size):
    keys = _key_list(f"vit_{size}_finetune")
    with torch.device("meta"):
        model = build_model(f"videomae_vit_{size}", num_classes=400)
    report = load_checkpoint(model, _meta_state(keys))
    assert report.ok and not report.dropped and len(report.loaded) == len(keys) == len(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(math.prod(s) for _, s in keys)


@pytest.mark.filterwarnings("ignore:for .*num_batches_tracked")  # BN fills it in on the meta model
def test_official_pretraining_keys_fill_the_whole_backbone():
    keys = _key_list("vit_base_pretrain")
    with torch.device("meta"):
        model = build_model("tcp_videomae_vit_base", num_classes=400)
    report = load_pretrained(model, {"model": _meta_state(keys)})
    assert not report.unexpected and not report.shape_mismatch
    assert set(report.loaded) == {k for k in model.state_dict() if k.startswith("backbone.")}
    assert all(why.startswith("VideoMAE pre-training") for _, why in report.dropped)
    finetuned = load_pretrained(model, _meta_state(_key_list("vit_base_finetune")))
    assert {k for k, _ in finetuned.dropped} == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert not finetuned.unexpected and set(finetuned.loaded) == set(report.loaded)


@pytest.mark.parametrize("size, width", [("small", 384), ("base", 768)])
def test_full_size_contract_16_frames_at_224_give_8_by_14_by_14(size, width):
    with torch.device("meta"):
        tcp = build_model(f"tcp_videomae_vit_{size}")
        maps = tcp.backbone(torch.empty(1, 3, 16, 224, 224))
    assert tcp.num_segments == 16 and tcp.head_segments() == 8 and tcp.head.num_segments == 8
    assert maps.shape == (8, width, 14, 14)
    assert (tcp.head.layer_reduce1.in_channels, tcp.head.mid_channels, tcp.head.dim) == (width, 256, 128)
    cfg = tcp.input_config
    assert (cfg.mean, cfg.std, cfg.crop_size, cfg.value_scale) == (IMAGENET_MEAN, IMAGENET_STD, 224, 1 / 255)
    with torch.device("meta"):
        assert build_model(f"tcp_videomae_vit_{size}", mid_channels=64, dim=32).head.dim == 32


# ------------------------------------------------------------------------ TCP, bf16, options
def _tiny_tcp() -> Recognizer:
    torch.manual_seed(0)
    model = build_model("tcp_videomae_vit_small", num_classes=5, num_segments=4, mid_channels=32, dim=16).eval()
    torch.nn.init.normal_(model.fc.weight, std=model.fc.in_features ** -0.5)
    return model


def test_tcp_head_receives_the_token_maps():
    model = _tiny_tcp()
    seen = []
    model.head.register_forward_pre_hook(lambda m, args: seen.append((tuple(args[0].shape), args[1])))
    x = torch.randn(2, 3, 4, 32, 48)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    assert seen == [((2 * 2, 384, 2, 3), 2)]


def test_tcp_bf16_autocast_is_close_to_float32():
    model = _tiny_tcp()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    rel = ((low - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, rel


def test_drop_path_rate_is_a_backbone_option_with_the_linear_rule():
    vit = create_backbone("videomae_vit_small", drop_path_rate=0.2)
    rates = [b.drop_path.p for b in vit.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    model = build_model("videomae_vit_small", num_classes=3, num_segments=2, drop_path_rate=0.5)
    assert model.backbone.blocks[-1].drop_path.p == 0.5 and model.dropout.p == 0.0
    x = torch.randn(2, 3, 2, 32, 32)
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))  # stochastic depth in training only
        assert torch.equal(model.eval()(x), model(x))


def test_bad_clip_sizes_are_named():
    vit = create_backbone("videomae_vit_small")
    with pytest.raises(ValueError, match="num_segments=3 must be a positive multiple of the tubelet size 2"):
        vit.output_segments(3)
    with pytest.raises(ValueError, match=r"\(T, H, W\) = \(2, 40, 32\)"):
        vit.patch_embed(torch.randn(1, 3, 2, 40, 32))
    with pytest.raises(ValueError, match="num_segments=5"):
        build_model("videomae_vit_small", num_segments=5)


def test_mean_norm_head_is_fc_norm_of_the_token_mean():
    head = MeanNormHead(6)
    torch.nn.init.normal_(head.fc_norm.weight)
    x = torch.randn(2 * 3, 6, 2, 4)
    tokens = x.reshape(2, 3, 6, 8).permute(0, 1, 3, 2).reshape(2, 24, 6)
    torch.testing.assert_close(head(x, 3), head.fc_norm(tokens.mean(1)))


@pytest.mark.slow
def test_tcp_vit_onnx_export_runs_in_onnxruntime(tmp_path):
    model = _tiny_tcp()
    model.input_config = dataclasses.replace(model.input_config, crop_size=32)  # small export
    result = export_model(model, tmp_path / "tcp_vit.onnx", "onnx")  # checks it in onnxruntime
    assert result.ok and result.max_abs_diff <= result.tolerance
