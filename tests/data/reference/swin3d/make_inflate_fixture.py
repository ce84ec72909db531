"""Regenerate the 2-D -> 3-D Swin inflation fixtures of this folder by running the official code.

Usage (outside the repository's package; needs torch, einops and safetensors)::

    python make_inflate_fixture.py /path/to/mmaction2 /path/to/Swin-Transformer \
        [--original /path/to/Video-Swin-Transformer] [--out DIR]

``/path/to/Swin-Transformer`` is a checkout of microsoft/Swin-Transformer (``models/swin_transformer.py``,
the 2-D ImageNet model whose ``swin_*_patch4_window7_224.pth`` files the Video Swin recipes start
from); the others as for ``make_fixture.py`` (see README.md for the commits). The official files are
imported unmodified with ``make_fixture.py``'s stubs for mmcv, mmengine and timm (plus timm's
``to_2tuple``); mmengine's ``_load_checkpoint``, which ``inflate_weights`` reads the 2-D file with,
is ``torch.load`` on the CPU, as it is for a local path.

For each case of :data:`CASES` it builds the tiny 2-D ``SwinTransformer`` (the arch of ``tiny.json``,
10 classes), fills it deterministically (``make_fixture.fill``; the ``attn_mask`` buffers keep their
built values), saves it as the 2-D checkpoints are saved (``{'model': state_dict}``), and lets
mmaction2's ``SwinTransformer3D(pretrained=<that file>, pretrained2d=True).inflate_weights`` load it
into the tiny 3-D backbone (patch (2, 4, 4), window (2, 4, 4)). Writes, into ``--out``:

* ``swin2d_<case>.safetensors``: the 2-D state dict, official 2-D names (``head.*``, ``norm.*``,
  ``attn_mask`` and ``relative_position_index`` buffers included);
* ``swin2d_<case>_inflated.safetensors``: mmaction2's backbone state dict after ``inflate_weights``
  (no ``backbone.`` prefix), the tensors the inflation made or renamed: ``patch_embed.proj.weight``,
  every ``relative_position_bias_table``, ``norm3.*`` and the 3-D model's own
  ``relative_position_index`` buffers. Every other tensor of the official result equals the 2-D
  file's tensor of the same name (asserted here), so it is not stored twice; the metadata ``keys``
  lists the whole state dict's keys in order (JSON).

* ``swin2d_{tiny,small,base}_keys.json``: every key and shape of the full-size 2-D Swin-T/S/B
  (``swin_<size>_patch4_window7_224``: the arch of ``make_fixture.FULL``, window 7, 224 pixels, 1000
  classes), state-dict order: what the ImageNet files' ``model`` holds.

With ``--original`` the original Video-Swin-Transformer's ``inflate_weights`` runs on the same file
and must give the same tensors (its final norm is named ``norm``, mmaction2's ``norm3``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Dict

import torch
from safetensors.torch import save_file

from make_fixture import FULL, STUBS, TINY, fill, install_stubs, load_official

# 2-D window 4 at 128 pixels (stages of 32, 16, 8, 4 tokens: no stage shrinks its window): the
# tables fit the 3-D window's (2*4-1)^2 rows and are only repeated over 2*2-1 = 3 depth offsets.
# 2-D window 5 at 160 pixels: 9 x 9 tables, resized bicubically to 7 x 7, then repeated.
CASES = {"window4": dict(window_size=4, img_size=128), "window5": dict(window_size=5, img_size=160)}
NUM_CLASSES_2D = 10
STUBS["timm/models/layers.py"] += '''

def to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)
'''


def swin2d_state(ms: object, window_size: int, img_size: int) -> Dict[str, torch.Tensor]:
    """The filled state dict of the tiny 2-D ImageNet Swin (microsoft/Swin-Transformer)."""
    arch = TINY["arch"]
    model = ms.SwinTransformer(img_size=img_size, patch_size=4, in_chans=3, num_classes=NUM_CLASSES_2D,
                               embed_dim=arch["embed_dims"], depths=arch["depths"], num_heads=arch["num_heads"],
                               window_size=window_size, patch_norm=True)
    built = model.state_dict()
    state = fill(built, seed=2)
    for key in state:
        if key.endswith("attn_mask"):
            state[key] = built[key].clone()
    return state


def inflate(module: object, state2d: Dict[str, torch.Tensor], folder: Path, mmaction2: bool) -> Dict[str, torch.Tensor]:
    """The 3-D backbone's state dict after the official ``inflate_weights`` read ``state2d``."""
    path = folder / "swin2d.pth"
    torch.save({"model": {k: v.clone() for k, v in state2d.items()}}, path)
    torch.manual_seed(0)
    shape = dict(patch_size=tuple(TINY["patch_size"]), window_size=tuple(TINY["window_size"]), drop_path_rate=0.0,
                 patch_norm=True, pretrained=str(path), pretrained2d=True)
    arch = TINY["arch"]
    if mmaction2:
        module._load_checkpoint = lambda file, map_location=None: torch.load(file, map_location=map_location)
        backbone = module.SwinTransformer3D(arch=dict(arch), **shape)
    else:
        backbone = module.SwinTransformer3D(embed_dim=arch["embed_dims"], depths=arch["depths"],
                                            num_heads=arch["num_heads"], **shape)
    backbone.inflate_weights(logging.getLogger("inflate_weights"))
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def save_inflated(inflated: Dict[str, torch.Tensor], state2d: Dict[str, torch.Tensor], path: Path) -> None:
    """Write what the inflation made (see the module docstring); the rest must be the 2-D tensors."""
    made = {k: v for k, v in inflated.items() if k not in state2d or not torch.equal(v, state2d[k])}
    for key in made:
        assert key.startswith(("patch_embed.proj.weight", "norm3.")) or key.endswith("relative_position_index") \
            or key.endswith("relative_position_bias_table"), f"the inflation changed {key}"
    save_file({k: v.contiguous() for k, v in made.items()}, str(path), metadata={"keys": json.dumps(list(inflated))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mmaction2", type=Path, help="open-mmlab/mmaction2 checkout")
    parser.add_argument("swin2d", type=Path, help="microsoft/Swin-Transformer checkout")
    parser.add_argument("--original", type=Path, help="SwinTransformer/Video-Swin-Transformer checkout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as stub:
        install_stubs(Path(stub))
        sys.path.insert(0, stub)
        swin = load_official(args.mmaction2 / "mmaction" / "models" / "backbones" / "swin.py",
                             "mmaction.models.backbones.swin")
        ms = load_official(args.swin2d / "models" / "swin_transformer.py", "swin2d_swin_transformer")
        vst = None
        if args.original is not None:
            vst = load_official(args.original / "mmaction" / "models" / "backbones" / "swin_transformer.py",
                                "mmaction.models.backbones.swin_transformer")
        for case, options in CASES.items():
            state2d = swin2d_state(ms, **options)
            inflated = inflate(swin, state2d, Path(stub), mmaction2=True)
            if vst is not None:
                original = inflate(vst, state2d, Path(stub), mmaction2=False)
                renamed = {k.replace("norm.", "norm3.", 1) if k.startswith("norm.") else k: v
                           for k, v in original.items()}
                assert renamed.keys() == inflated.keys(), "original and mmaction2 inflation differ in keys"
                assert all(torch.equal(renamed[k], inflated[k]) for k in inflated), "original and mmaction2 differ"
            save_file({k: v.contiguous() for k, v in state2d.items()}, str(args.out / f"swin2d_{case}.safetensors"))
            save_inflated(inflated, state2d, args.out / f"swin2d_{case}_inflated.safetensors")
        for size, arch in FULL.items():
            full = ms.SwinTransformer(img_size=224, patch_size=4, num_classes=1000, embed_dim=arch["embed_dims"],
                                      depths=arch["depths"], num_heads=arch["num_heads"], window_size=7, patch_norm=True)
            doc = dict(source=f"microsoft/Swin-Transformer SwinTransformer({arch}, window_size=7, img_size=224, "
                              "num_classes=1000)", keys=[[k, list(v.shape)] for k, v in full.state_dict().items()])
            (args.out / f"swin2d_{size}_keys.json").write_text(json.dumps(doc) + "\n")
    print(f"wrote the Swin inflation fixtures to {args.out}")


if __name__ == "__main__":
    main()
