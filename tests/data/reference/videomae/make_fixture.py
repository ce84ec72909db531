"""Regenerate the VideoMAE fixtures of this folder by running the official code.

Usage (outside the repository's package; needs torch, numpy and safetensors, not timm)::

    python make_fixture.py /path/to/VideoMAE [--out DIR]

``/path/to/VideoMAE`` is a checkout of MCG-NJU/VideoMAE (the folder holding
``modeling_finetune.py`` and ``modeling_pretrain.py``; see README.md for the commit). The few
timm helpers those files import (``drop_path``, ``to_2tuple``, ``trunc_normal_``,
``register_model``) are stubbed here with their timm definitions, so no timm install is needed.

Writes, into ``--out`` (default: this script's folder):

* ``tiny_<case>.safetensors``: the official model's state dict (official key names) with
  deterministic weights, for the tiny cases below;
* ``tiny_<case>_io.safetensors``: ``input`` (B, 3, T, H, W), ``tokens`` (the last block's output,
  (B, N, C), which the model's ``norm`` = Identity passes on), ``features`` (``forward_features``:
  ``fc_norm`` of the token mean) and ``logits``, all float32 from eval mode;
* ``tiny.json``: the tiny cases' constructor arguments;
* ``<model>_keys.json``: every key and shape of the official full-size models (400 classes).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import save_file
from torch import nn

TIMM_LAYERS = '''
import collections.abc
from itertools import repeat
import torch


def drop_path(x, drop_prob: float = 0., training: bool = False):
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()
    return x.div(keep_prob) * random_tensor


def to_2tuple(x):
    if isinstance(x, collections.abc.Iterable):
        return x
    return tuple(repeat(x, 2))


def trunc_normal_(tensor, mean=0., std=1., a=-2., b=2.):
    return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)
'''
TIMM_REGISTRY = "def register_model(fn):\n    return fn\n"

# The tiny cases: a 2x3 token grid (H != W, so a transposed reshape would show), T' = 2,
# with layer scale (gamma_1/gamma_2) and without it (init_values = 0, the published setting).
TINY = dict(img_size=[32, 48], patch_size=16, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4.0,
            qkv_bias=True, all_frames=4, tubelet_size=2, num_classes=5, use_mean_pooling=True)
CASES = {"layerscale": dict(TINY, init_values=0.1), "plain": dict(TINY, init_values=0.0)}
BATCH = 2
FULL = {"vit_small_finetune": ("modeling_finetune", "vit_small_patch16_224", dict(num_classes=400)),
        "vit_base_finetune": ("modeling_finetune", "vit_base_patch16_224", dict(num_classes=400)),
        "vit_base_pretrain": ("modeling_pretrain", "pretrain_videomae_base_patch16_224", {})}


def install_timm_stub(folder: Path) -> None:
    """Write a minimal ``timm`` package (the helpers the official files import) into ``folder``."""
    models = folder / "timm" / "models"
    models.mkdir(parents=True)
    (folder / "timm" / "__init__.py").write_text("")
    (models / "__init__.py").write_text("")
    (models / "layers.py").write_text(TIMM_LAYERS)
    (models / "registry.py").write_text(TIMM_REGISTRY)


def fill(state: Dict[str, torch.Tensor], seed: int) -> Dict[str, torch.Tensor]:
    """Deterministic values for every tensor (sorted keys, one torch generator): norm weights
    1 + 0.1 n, layer-scale gammas 0.5 + 0.1 n, other vectors 0.1 n, matrices and kernels n/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        shape = state[key].shape
        n = torch.randn(shape, generator=g, dtype=torch.float64)
        if key.endswith(("gamma_1", "gamma_2")):
            v = 0.5 + 0.1 * n
        elif len(shape) == 1 and key.endswith("weight"):
            v = 1.0 + 0.1 * n
        elif len(shape) == 1:
            v = 0.1 * n
        else:
            v = n / math.sqrt(math.prod(shape[1:]))
        out[key] = v.float()
    return out


def tiny_case(official, name: str, kwargs: dict, out: Path) -> None:
    """Build one tiny official model, fill it, run it and save weights and input/outputs."""
    torch.manual_seed(0)
    args = dict(kwargs, img_size=tuple(kwargs["img_size"]))
    model = official.VisionTransformer(norm_layer=partial(nn.LayerNorm, eps=1e-6), **args).eval()
    state = fill(model.state_dict(), seed=0)
    model.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, args["all_frames"], *args["img_size"], generator=g)
    seen: List[torch.Tensor] = []
    hook = model.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.head(model.fc_dropout(features))
        assert torch.equal(logits, model(x))
    hook.remove()
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"tiny_{name}.safetensors"))
    io = {"input": x, "tokens": seen[0], "features": features, "logits": logits}
    save_file({k: v.contiguous() for k, v in io.items()},
              str(out / f"tiny_{name}_io.safetensors"))


def key_list(module, factory: str, kwargs: dict) -> List[list]:
    """[[key, shape], ...] of an official full-size model, in state-dict order."""
    model = getattr(module, factory)(**kwargs)
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="VideoMAE checkout (or its modeling_finetune.py)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    source = args.source if args.source.is_dir() else args.source.parent
    if not (source / "modeling_finetune.py").is_file():
        sys.exit(f"{source}: no modeling_finetune.py (expected a MCG-NJU/VideoMAE checkout)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as stub:
        install_timm_stub(Path(stub))
        sys.path[:0] = [stub, str(source)]
        finetune = importlib.import_module("modeling_finetune")
        for name, kwargs in CASES.items():
            tiny_case(finetune, name, kwargs, args.out)
        (args.out / "tiny.json").write_text(json.dumps(dict(batch=BATCH, cases=CASES), indent=1) + "\n")
        for name, (module, factory, kwargs) in FULL.items():
            keys = key_list(importlib.import_module(module), factory, kwargs)
            doc = dict(source=f"{module}.{factory}({kwargs})", keys=keys)
            (args.out / f"{name}_keys.json").write_text(json.dumps(doc) + "\n")
    print(f"wrote the VideoMAE fixtures to {args.out}")


if __name__ == "__main__":
    main()
