"""Regenerate the Video Swin fixtures of this folder by running the official code.

Usage (outside the repository's package; needs torch, numpy, einops and safetensors, not
mmcv/mmengine/timm)::

    python make_fixture.py /path/to/mmaction2 [--original /path/to/Video-Swin-Transformer] [--out DIR]

``/path/to/mmaction2`` is a checkout of open-mmlab/mmaction2 (the folder holding
``mmaction/models/backbones/swin.py`` and ``mmaction/models/heads/i3d_head.py``);
``--original`` a checkout of SwinTransformer/Video-Swin-Transformer (``mmaction/models/backbones/
swin_transformer.py``); see README.md for the commits. The two files are loaded as they are; what
they import from mmcv, mmengine, timm and mmaction's registries is stubbed here with the
definitions those libraries use for it (``nn.LayerNorm`` for ``LN``, ``nn.Conv3d``, ``nn.GELU``,
timm's ``drop_path``), and registries, loggers and checkpoint loaders that a forward never calls
are empty. einops is the real package.

Writes, into ``--out`` (default: this script's folder):

* ``tiny.json``: the tiny model's constructor arguments and input size;
* ``tiny.safetensors``: the tiny mmaction2 ``Recognizer3D``'s state dict as its checkpoints hold
  it (``backbone.*``, ``cls_head.fc_cls.*``, the ``relative_position_index`` buffers included),
  with deterministic weights;
* ``tiny_io.safetensors``: ``input`` (B, 3, T, H, W), ``maps`` (the backbone's output,
  (B, C, T', h, w)), ``pooled`` (I3DHead's average pooling, (B, C)) and ``logits`` (I3DHead), float32,
  eval mode;
* ``swin3d_<size>_mmaction2_keys.json`` and, with ``--original``, ``swin3d_<size>_original_keys.json``:
  every key and shape of the full-size Swin-T/S/B K400 recognizers (400 classes), state-dict order.

With ``--original`` the original repository's backbone is also run on the tiny weights (its final
norm named ``norm`` instead of ``norm3``) and must give the same maps.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Dict, List

import torch
from safetensors.torch import save_file
from torch import nn

STUBS = {
    "mmcv/__init__.py": "",
    "mmcv/cnn/__init__.py": '''
import torch.nn as nn
from .bricks import DropPath


def build_activation_layer(cfg):
    assert cfg["type"] == "GELU", cfg
    return nn.GELU()


def build_conv_layer(cfg, *args, **kwargs):
    assert cfg["type"] == "Conv3d", cfg
    return nn.Conv3d(*args, **kwargs)


def build_norm_layer(cfg, num_features):
    assert cfg["type"] == "LN", cfg
    return "ln", nn.LayerNorm(num_features)
''',
    "mmcv/cnn/bricks.py": '''
import torch
import torch.nn as nn


def drop_path(x, drop_prob=0., training=False):
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()
    return x.div(keep_prob) * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob=0.1):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)
''',
    "mmcv/runner.py": "def load_checkpoint(*args, **kwargs):\n    raise NotImplementedError\n",
    "mmengine/__init__.py": "",
    "mmengine/logging.py": "class MMLogger:\n    pass\n",
    "mmengine/model/__init__.py": '''
import torch.nn as nn


class BaseModule(nn.Module):
    def __init__(self, init_cfg=None):
        super().__init__()
        self.init_cfg = init_cfg


class ModuleList(nn.ModuleList):
    def __init__(self, modules=None, init_cfg=None):
        super().__init__(modules)
''',
    "mmengine/model/weight_init.py": '''
import torch


def trunc_normal_(tensor, mean=0., std=1., a=-2., b=2.):
    return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def normal_init(module, mean=0., std=1., bias=0.):
    torch.nn.init.normal_(module.weight, mean, std)
    torch.nn.init.constant_(module.bias, bias)
''',
    "mmengine/runner/__init__.py": "",
    "mmengine/runner/checkpoint.py": "def _load_checkpoint(*args, **kwargs):\n    raise NotImplementedError\n",
    "timm/__init__.py": "",
    "timm/models/__init__.py": "",
    "timm/models/layers.py": "from mmcv.cnn.bricks import DropPath\nfrom mmengine.model.weight_init import trunc_normal_\n",
    "mmaction/__init__.py": "",
    "mmaction/registry.py": '''
class _Registry:
    def register_module(self, *args, **kwargs):
        return lambda cls: cls


MODELS = _Registry()
''',
    "mmaction/utils.py": "ConfigType = dict\n\n\ndef get_root_logger(*args, **kwargs):\n    return None\n",
    "mmaction/models/__init__.py": "",
    "mmaction/models/builder.py": "from mmaction.registry import MODELS as BACKBONES\n",
    "mmaction/models/backbones/__init__.py": "",
    "mmaction/models/heads/__init__.py": "",
    # I3DHead's base keeps num_classes / in_channels; its loss and accuracy are not in a forward.
    "mmaction/models/heads/base.py": '''
import torch.nn as nn


class BaseHead(nn.Module):
    def __init__(self, num_classes, in_channels, loss_cls=None, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
''',
}

# The tiny case: 4 stages (so the final norm is ``norm3``, as at full size), window (2, 4, 4).
# The clip (7, 26, 38) is padded by the patch embedding to (8, 28, 40) -> 4 x 7 x 10 tokens;
# stage 1 pads them to 4 x 8 x 12 and shifts by (1, 2, 2); merging pads odd sizes (7, then 5);
# stage 2 (4 x 4 x 5) clips the window's height to the map and drops that shift; stages 3
# (4 x 2 x 3) and 4 (4 x 1 x 2) clip height and width, where the official code indexes the bias
# table with the top-left corner of its full-window index.
TINY = dict(arch=dict(embed_dims=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]),
            patch_size=[2, 4, 4], window_size=[2, 4, 4], num_classes=5, input=[2, 3, 7, 26, 38])
FULL = {"tiny": dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
        "small": dict(embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
        "base": dict(embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32])}


def install_stubs(folder: Path) -> None:
    """Write the stub packages (mmcv, mmengine, timm, mmaction's registries) into ``folder``."""
    for name, text in STUBS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def load_official(path: Path, name: str) -> ModuleType:
    """Import the official file at ``path`` as module ``name`` (inside the stub ``mmaction``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fill(state: Dict[str, torch.Tensor], seed: int) -> Dict[str, torch.Tensor]:
    """Deterministic values for every float tensor (sorted keys, one torch generator): norm
    weights 1 + 0.1 n, other vectors 0.1 n, relative position bias tables n, matrices and
    kernels n / sqrt(fan_in). Integer buffers (``relative_position_index``) keep their values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        value = state[key]
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        n = torch.randn(value.shape, generator=g, dtype=torch.float64)
        if key.endswith("relative_position_bias_table"):
            v = n
        elif value.dim() == 1 and key.endswith("weight"):
            v = 1.0 + 0.1 * n
        elif value.dim() == 1:
            v = 0.1 * n
        else:
            v = n / math.sqrt(math.prod(value.shape[1:]))
        out[key] = v.float()
    return out


class Recognizer3D(nn.Module):
    """The two parts of mmaction2's ``Recognizer3D`` that hold weights, under its attribute names."""

    def __init__(self, backbone: nn.Module, cls_head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.cls_head = backbone, cls_head


def mmaction2_recognizer(swin: ModuleType, head: ModuleType, arch: dict, num_classes: int,
                         **kwargs) -> Recognizer3D:
    backbone = swin.SwinTransformer3D(arch=dict(arch), pretrained=None, pretrained2d=False,
                                      drop_path_rate=0.0, patch_norm=True, **kwargs)
    cls_head = head.I3DHead(num_classes=num_classes, in_channels=arch["embed_dims"] * 8,
                            spatial_type="avg", dropout_ratio=0.5)
    return Recognizer3D(backbone, cls_head)


def original_recognizer(vst: ModuleType, head: ModuleType, arch: dict, num_classes: int,
                        **kwargs) -> Recognizer3D:
    backbone = vst.SwinTransformer3D(embed_dim=arch["embed_dims"], depths=arch["depths"],
                                     num_heads=arch["num_heads"], drop_path_rate=0.0, patch_norm=True,
                                     **kwargs)
    cls_head = head.I3DHead(num_classes=num_classes, in_channels=arch["embed_dims"] * 8,
                            spatial_type="avg", dropout_ratio=0.5)
    return Recognizer3D(backbone, cls_head)


def tiny_case(swin: ModuleType, head: ModuleType, vst: ModuleType, out: Path) -> None:
    """Build the tiny official recognizer, fill it, run it, save weights and input/outputs."""
    torch.manual_seed(0)
    shape = dict(patch_size=tuple(TINY["patch_size"]), window_size=tuple(TINY["window_size"]))
    model = mmaction2_recognizer(swin, head, TINY["arch"], TINY["num_classes"], **shape).eval()
    state = fill(model.state_dict(), seed=0)
    model.load_state_dict(state, strict=True)
    x = torch.randn(*TINY["input"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = model.backbone(x)
        pooled = model.cls_head.avg_pool(maps).flatten(1)
        logits = model.cls_head(maps)
    if vst is not None:  # the original repository: same numbers, final norm named ``norm``
        original = original_recognizer(vst, head, TINY["arch"], TINY["num_classes"], **shape).eval()
        renamed = {k.replace("backbone.norm3.", "backbone.norm."): v for k, v in state.items()}
        original.load_state_dict(renamed, strict=True)
        with torch.no_grad():
            assert torch.equal(original.backbone(x), maps), "original and mmaction2 Swin differ"
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "tiny.safetensors"))
    io = {"input": x, "maps": maps, "pooled": pooled, "logits": logits}
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "tiny_io.safetensors"))


def key_list(model: nn.Module) -> List[list]:
    """[[key, shape], ...] of a model's state dict, in order."""
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def write_key_lists(swin: ModuleType, head: ModuleType, vst: ModuleType, out: Path) -> None:
    """The full-size K400 recognizers' keys: mmaction2's and (if given) the original repository's."""
    builders = {"mmaction2": (swin, mmaction2_recognizer)}
    if vst is not None:
        builders["original"] = (vst, original_recognizer)
    for size, arch in FULL.items():
        for layout, (module, build) in builders.items():
            model = build(module, head, arch, 400, patch_size=(2, 4, 4), window_size=(8, 7, 7))
            doc = dict(source=f"{layout} SwinTransformer3D({arch}, patch (2, 4, 4), window (8, 7, 7), "
                              "patch_norm=True) + I3DHead(400)", keys=key_list(model))
            (out / f"swin3d_{size}_{layout}_keys.json").write_text(json.dumps(doc) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mmaction2", type=Path, help="open-mmlab/mmaction2 checkout")
    parser.add_argument("--original", type=Path, help="SwinTransformer/Video-Swin-Transformer checkout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    backbones = args.mmaction2 / "mmaction" / "models" / "backbones"
    if not (backbones / "swin.py").is_file():
        sys.exit(f"{args.mmaction2}: no mmaction/models/backbones/swin.py (expected an mmaction2 checkout)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as stub:
        install_stubs(Path(stub))
        sys.path.insert(0, stub)
        swin = load_official(backbones / "swin.py", "mmaction.models.backbones.swin")
        head = load_official(args.mmaction2 / "mmaction" / "models" / "heads" / "i3d_head.py",
                             "mmaction.models.heads.i3d_head")
        vst = None
        if args.original is not None:
            vst = load_official(args.original / "mmaction" / "models" / "backbones" / "swin_transformer.py",
                                "mmaction.models.backbones.swin_transformer")
        tiny_case(swin, head, vst, args.out)
        (args.out / "tiny.json").write_text(json.dumps(TINY, indent=1) + "\n")
        write_key_lists(swin, head, vst, args.out)
    print(f"wrote the Video Swin fixtures to {args.out}")


if __name__ == "__main__":
    main()
