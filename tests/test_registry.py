"""Registries: every registered model, and every registered backbone with every registered head,
builds, runs ``forward``/``forward_features`` on a small clip and round-trips its own state dict;
heads and backbones are created by name, and a new head is one class with one registration line.
The tests iterate the registries: a newly registered item is tested without editing this file."""
from __future__ import annotations

import pytest
import torch

from tcpnet.backbones import backbone_input_config, get_backbone, list_backbones
from tcpnet.heads import GAPHead, Head, TCPHead, create_head, list_heads, register_head
from tcpnet.heads.base import check_frame_batch
from tcpnet.heads.registry import _HEADS
from tcpnet.input_config import InputConfig
from tcpnet.models import build_model, create_recognizer, list_models

# the published and documented names, which must keep working (the registry may hold more)
ZOO = ["tcp_tsn_r50", "tcp_tea_r50", "tcp_tsn_r152", "tsn_r50", "gcp_tsn_r50", "tsm_r50",
       "tcp_tsm_r50", "tcp_tsn_r18", "tsn_r18", "tcp_tiny", "tsn_tiny", "gcp_tiny",
       "tcp_r2plus1d_r18", "r2plus1d_r18"]
# (T, crop) per model: 32x32 crops (2x2 final maps with last stride 1) keep the big backbones at
# ~0.1-0.5 s per forward on 2 cores; the tiny demo models run at their native 112x112, T=8; the
# R(2+1)D models take T=4 (T'=1) at 32x32.
# Any other model: T=2 (T=4 for a 3-D backbone) at 32x32.
SMALL = dict(tcp_tsn_r50=(3, 32), tcp_tiny=(8, 112), tsn_tiny=(8, 112), gcp_tiny=(8, 112),
             tcp_r2plus1d_r18=(4, 32), r2plus1d_r18=(4, 32))


def _small_clip(name: str) -> tuple:
    if name in SMALL:
        return SMALL[name]
    backbone = name.partition("+")[0] if "+" in name else None
    layout = (getattr(get_backbone(backbone)(), "layout", "frames") if backbone
              else build_model(name, num_classes=2).layout)
    return (4, 32) if layout == "video" else (2, 32)


def test_the_zoo_names_are_registered():
    assert set(ZOO) <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_on_a_small_clip_and_round_trips_its_state_dict(name):
    _check_model_runs_and_round_trips(name)


@pytest.mark.parametrize("backbone", list_backbones())
@pytest.mark.parametrize("head", list_heads())
def test_every_backbone_with_every_head_from_a_config_name(backbone, head):
    """``model.backbone`` + ``model.head``: any registered pair builds as ``<backbone>+<head>``."""
    _check_model_runs_and_round_trips(f"{backbone}+{head}")


def _check_model_runs_and_round_trips(name: str) -> None:
    t_len, crop = _small_clip(name)
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

    torch.manual_seed(1)  # a twin with other initial weights, then the first one's state dict
    twin = build_model(name, **model.model_kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():  # published inits leave some tensors at 0/1: make all differ
            p.add_(0.01 * torch.randn_like(p))
        logits = model(x)
    assert not torch.equal(twin(x).detach(), logits)
    result = twin.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert torch.equal(twin(x), logits)


# ------------------------------------------------------------------------------- heads
def test_head_registry_builds_by_name_with_class_defaults():
    assert {"tcp", "gcp", "gap"} <= set(list_heads())
    tcp = create_head("tcp", 64, num_segments=4, dim=16, mid_channels=32)
    assert isinstance(tcp, TCPHead) and tcp.num_segments == 4 and tcp.out_dim == 16 * 17 // 2
    assert create_head("tcp", 64).num_segments == 8  # the class's default
    gap = create_head("gap", 64, num_segments=4)  # T is offered only to heads that take it
    assert isinstance(gap, GAPHead) and gap.out_dim == 64 and gap.fixed_num_segments is None
    assert create_head("gcp", 64).dim == 128
    with pytest.raises(ValueError, match="unknown head 'max'"):
        create_head("max", 64)
    with pytest.raises(TypeError, match="dim"):
        create_head("gap", 64, dim=3)


def test_a_new_head_is_one_class_and_one_registration():
    @register_head("test_max")
    class MaxHead(Head):
        """Max over T, H and W."""

        def __init__(self, in_channels: int, scale: float = 1.0) -> None:
            super().__init__()
            self.in_channels, self.out_dim, self.scale = in_channels, in_channels, scale

        def forward(self, x: torch.Tensor, num_segments: int) -> torch.Tensor:
            n = check_frame_batch(x, num_segments, self.in_channels, "MaxHead")
            return self.scale * x.reshape(n, num_segments, self.in_channels, -1).amax(dim=(1, 3))

    try:
        assert "test_max" in list_heads()
        model = create_recognizer("resnet_tiny", "test_max", num_classes=3, num_segments=2,
                                  options=dict(scale=2.0, dropout=0.0))
        assert isinstance(model.head, MaxHead) and model.head.scale == 2.0
        assert model.input_config == InputConfig(crop_size=112, scale_size=128, num_segments=2)
        x = torch.randn(2, 3, 2, 32, 32)
        with torch.no_grad():
            maps = model.eval().backbone(model.frames(x))
            assert torch.equal(model.forward_features(x), 2.0 * maps.view(2, 2, 128, -1).amax(dim=(1, 3)))
        with pytest.raises(TypeError, match="'scael'"):
            create_recognizer("resnet_tiny", "test_max", 3, 2, options=dict(scael=2.0))
        with pytest.raises(ValueError, match="already registered"):
            register_head("test_max")(MaxHead)
    finally:
        _HEADS.pop("test_max", None)


def test_backbone_registry_lists_the_3d_backbone():
    assert {"r2plus1d_18", "resnet50", "tea_r50", "preact_resnet152"} <= set(list_backbones())
    cfg = backbone_input_config("r2plus1d_18")
    assert (cfg.crop_size, cfg.scale_size) == (112, 128)
    assert cfg.mean == (0.43216, 0.394666, 0.37645) and cfg.std == (0.22803, 0.22145, 0.216989)
