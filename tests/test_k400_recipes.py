"""The backbones' own Kinetics-400 recipes (configs/k400/ with ``train.bias_lr_mult: 1``: VideoMAE,
Video Swin, X3D, each with its own head and with TCP): every shipped one loads, builds, groups its
parameters as its official recipe does, starts from the official file it names, and one transformer
config trains a step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from tcpnet.checkpoints import load_pretrained
from tcpnet.config import find_config, list_configs, load_config
from tcpnet.engine.optim import POSITION_GROUP, build_optimizer
from tcpnet.models import build_model

REF = Path(__file__).parent / "data" / "reference"
RECIPES = [n for n in list_configs() if n.startswith("k400/") and load_config(find_config(n)).train.bias_lr_mult == 1]


def test_every_backbone_recipe_is_shipped_with_its_tcp_twin():
    assert RECIPES, "no k400 config with train.bias_lr_mult 1"
    names = {load_config(find_config(n)).model.name for n in RECIPES}
    assert {n for n in names if not n.startswith("tcp_")} == {n[len("tcp_"):] for n in names if n.startswith("tcp_")}


def _meta_model(name: str):
    cfg = load_config(find_config(name))
    with torch.device("meta"):
        model = build_model(cfg.model.name, num_classes=cfg.model.num_classes,
                            num_segments=cfg.model.num_segments, dropout=cfg.model.dropout, **cfg.model.kwargs)
    return cfg, model


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_and_groups_parameters_as_published(name):
    """Biases at their weights' rate, no weight decay on biases, norms and position tables (but
    TCP's attention norms, decayed as in the TCP head's published groups), the
    classifier at lr_x_factor x lr, backbone layer k of L at layer_decay^(L-k) where the recipe has it."""
    cfg, model = _meta_model(name)
    tc = cfg.train
    assert model.num_segments == cfg.model.num_segments
    if "drop_path_rate" in cfg.model.kwargs:  # stochastic depth reaches the rate at the last block
        rates = [m.p for m in model.modules() if type(m).__name__ == "DropPath"]
        assert max(rates) == pytest.approx(cfg.model.kwargs["drop_path_rate"]), rates
    opt = build_optimizer(model, lr=tc.lr, name=tc.optimizer, momentum=tc.momentum, weight_decay=tc.weight_decay,
                          betas=tc.betas, lr_x_factor=tc.lr_x_factor, layer_decay=tc.layer_decay,
                          bias_lr_mult=tc.bias_lr_mult)
    names = {id(p): n for n, p in model.named_parameters()}
    depth = 1 + max(model.backbone.layer_ids().values()) if tc.layer_decay else 0
    for g in opt.param_groups:
        family, _, layer = g["name"].partition("@layer")
        scale = tc.layer_decay ** (depth - int(layer)) if layer else 1.0
        base = tc.lr_x_factor if family in ("lr5_weight", "lr10_bias") or family.startswith("TCP") else 1.0
        assert g["lr"] == pytest.approx(tc.lr * base * scale), g["name"]
        for p in g["params"]:
            n = names[id(p)]
            # TCP's attention norms keep the TCP head's own (published) decay: "TCP_bn scale/shift"
            if (n.endswith(".bias") or p.dim() == 1 or family == POSITION_GROUP) and family != "TCP_bn scale/shift":
                assert g["weight_decay"] == 0, n
            if n.startswith("backbone.") and not (n.endswith(".bias") or p.dim() == 1 or family == POSITION_GROUP):
                assert g["weight_decay"] == pytest.approx(tc.weight_decay), n
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def _keys(stem: str) -> List[Tuple[str, Tuple[int, ...]]]:
    path = next(REF.glob(f"*/{stem}_keys.json"))
    return [(k, tuple(s)) for k, s in json.loads(path.read_text())["keys"]]


def _official_state(pretrained: str) -> Dict[str, torch.Tensor]:
    """The official file a config names, as a meta state dict of its recorded keys and shapes."""
    file = Path(pretrained)
    if file.parent.name.startswith("k400_videomae_pretrain_base"):
        keys = _keys("vit_base_pretrain")
    elif file.parent.name.startswith("k400_videomae_pretrain_small"):  # the encoder of ViT-S + a decoder
        keys = [("encoder." + k, s) for k, s in _keys("vit_small_finetune") if k.startswith(("patch_embed.", "blocks."))]
        keys += [(k, s) for k, s in _keys("vit_base_pretrain") if not k.startswith("encoder.")]
    elif file.name.startswith("swin_"):  # the 2-D ImageNet Swin, inflated on load
        keys = _keys(f"swin2d_{file.name.split('_')[1]}")
    else:
        pytest.fail(f"{pretrained}: no recorded key list for this official file")
    return {k: torch.empty(s, device="meta") for k, s in keys}


@pytest.mark.filterwarnings("ignore:for .*num_batches_tracked")  # BN fills it in on the meta model
@pytest.mark.parametrize("name", [n for n in RECIPES if load_config(find_config(n)).model.pretrained])
def test_recipe_starts_from_the_official_file_it_names(name):
    """load_pretrained fills the whole backbone from the named file (keys and shapes as recorded
    from the official code); only the pre-training task's parts are dropped."""
    cfg, model = _meta_model(name)
    report = load_pretrained(model, _official_state(cfg.model.pretrained))
    assert not report.unexpected and not report.shape_mismatch, report
    assert {k for k in model.state_dict() if k.startswith("backbone.")} <= set(report.loaded)


def test_videomae_recipe_trains_one_step(tmp_path):
    """tcp_videomae_vit_s_16f as shipped (AdamW, layer decay, mixup/cutmix, smoothing, bias_lr_mult 1)
    on 4-frame 32x32 synthetic clips: one step, finite loss, the groups as the recipe says."""
    from tcpnet.engine.train import train
    from tcpnet.tools.synthetic import make_synthetic_dataset
    data = tmp_path / "syn"
    make_synthetic_dataset(data, seed=0, num_classes=2, train_per_class=2, val_per_class=1,
                           num_frames=8, size=40, progress=False)
    out = tmp_path / "run"
    cfg = load_config(find_config("k400/tcp_videomae_vit_s_16f"), [
        "model.num_segments=4", "model.num_classes=null", "model.pretrained=null",
        "model.kwargs.dim=8", "model.kwargs.mid_channels=16", f"data.root={data}",
        f"data.train_list={data}/train.txt", f"data.val_list={data}/val.txt", "data.test_list=null",
        f"data.class_names={data}/classes.txt",
        "data.num_workers=0", "data.crop_size=32", "data.scale_size=32", "train.epochs=1", "train.batch_size=2",
        "train.max_iters_per_epoch=1", "train.amp=none", "train.log_every=1", "test.batch_size=2",
        f"output_dir={out}", "device=cpu"])
    result = train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r["event"] == "train"] and all(
        torch.isfinite(torch.tensor(r["train_loss"])) for r in records if r["event"] == "epoch")
    groups = {g["name"]: g for g in torch.load(out / "last.pt", map_location="cpu",
                                               weights_only=True)["optimizer"]["param_groups"]}
    assert groups["normal_bias@layer12"]["lr_mult"] == groups["normal_weight@layer12"]["lr_mult"] == pytest.approx(0.75)
    assert groups["lr10_bias"]["lr_mult"] == groups["lr5_weight"]["lr_mult"] == 1.0
    assert result["model"].backbone.blocks[-1].drop_path.p == pytest.approx(0.1)
