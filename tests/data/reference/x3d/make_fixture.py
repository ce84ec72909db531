"""Regenerate the X3D fixtures of this folder by running pytorchvideo's official ``create_x3d``.

Usage (outside the repository's package; needs torch, numpy and safetensors)::

    python make_fixture.py /path/to/pytorchvideo /path/to/fvcore [--out DIR]

``/path/to/pytorchvideo`` is a checkout of facebookresearch/pytorchvideo (the folder holding the
``pytorchvideo`` package) and ``/path/to/fvcore`` one of facebookresearch/fvcore; see README.md
for the commits. pytorchvideo's model modules import three things this script provides in a
temporary folder instead of installing them:

* ``fvcore.nn.squeeze_excitation`` and ``fvcore.nn.weight_init``: the two fvcore files, copied
  unmodified from the fvcore checkout into a ``fvcore`` package whose ``__init__`` files are empty
  (fvcore's own ``fvcore/nn/__init__.py`` imports its flop counters, which need iopath);
* ``torchvision.ops.RoIAlign``: imported by ``pytorchvideo/models/head.py`` for the detection
  heads; X3D never builds one, so an empty class stands in (torchvision does not run with the
  torch used here).

Writes, into ``--out`` (default: this script's folder):

* ``tiny.safetensors``: the tiny official model's state dict (official key names) with
  deterministic weights and BN running statistics;
* ``tiny_io.safetensors``: ``input`` (B, 3, T, S, S); ``stage5`` (``blocks[4]``'s output,
  (B, C, T, h, w)); ``features`` (the head's projected pooling ``blocks[5].pool``, (B, D));
  ``logits`` (the whole model); ``input_wide`` (1, 3, T, S, 1.5 S) and ``stage5_wide`` (its
  ``blocks[4]`` output, which shows any mix-up of H and W); all float32 from eval mode;
* ``tiny.json``: the tiny model's ``create_x3d`` arguments;
* ``x3d_s_keys.json``, ``x3d_m_keys.json``: every key and shape of the hub models (400 classes).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import save_file

# The tiny case: base width 8 at width factor 1 (stage widths 8, 16, 32, 64, so stage 1 keeps the
# stem's width and has a projection shortcut without BN), depth factor 0.5 (1, 1, 3, 2 blocks:
# squeeze-excitation on and off), a 32-wide head, 4 frames at 64 (2x2 final maps).
TINY = dict(input_clip_length=4, input_crop_size=64, model_num_class=5, width_factor=1.0,
            depth_factor=0.5, stem_dim_in=8, bottleneck_factor=2.25, head_dim_out=32)
BATCH = 2
WIDE = 96  # the width of the non-square input
FULL = ("x3d_s", "x3d_m")
TORCHVISION_OPS = "class RoIAlign:  # stand-in: only pytorchvideo's detection heads use it\n    pass\n"


def install_stubs(folder: Path, fvcore_checkout: Path) -> None:
    """Write the ``fvcore`` (two unmodified files) and ``torchvision`` stand-ins into ``folder``."""
    nn_dir = folder / "fvcore" / "nn"
    nn_dir.mkdir(parents=True)
    (folder / "fvcore" / "__init__.py").write_text("")
    (nn_dir / "__init__.py").write_text("")
    for name in ("squeeze_excitation.py", "weight_init.py"):
        shutil.copy(fvcore_checkout / "fvcore" / "nn" / name, nn_dir / name)
    ops = folder / "torchvision" / "ops"
    ops.mkdir(parents=True)
    (folder / "torchvision" / "__init__.py").write_text("")
    (ops / "__init__.py").write_text(TORCHVISION_OPS)


def fill(state: Dict[str, torch.Tensor], seed: int) -> Dict[str, torch.Tensor]:
    """Deterministic values for every float tensor (sorted keys, one torch generator): BN weights
    1 + 0.1 n, running means 0.1 n, running variances exp(0.3 n), other vectors (BN and SE biases)
    0.1 n, kernels and matrices n / sqrt(fan_in); BN step counters stay as built."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        value = state[key]
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        n = torch.randn(value.shape, generator=g, dtype=torch.float64)
        if key.endswith("running_var"):
            v = torch.exp(0.3 * n)
        elif key.endswith("running_mean") or (value.dim() == 1 and key.endswith("bias")):
            v = 0.1 * n
        elif value.dim() == 1:
            v = 1.0 + 0.1 * n
        else:
            v = n / math.sqrt(math.prod(value.shape[1:]))
        out[key] = v.float()
    return out


def tiny_case(x3d, out: Path) -> None:
    """Build the tiny official model, fill it, run it and save weights and inputs/outputs."""
    torch.manual_seed(0)
    model = x3d.create_x3d(**TINY).eval()
    state = fill(model.state_dict(), seed=0)
    model.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(1)
    t, s = TINY["input_clip_length"], TINY["input_crop_size"]
    x = torch.randn(BATCH, 3, t, s, s, generator=g)
    wide = torch.randn(1, 3, t, s, WIDE, generator=g)
    trunk = torch.nn.Sequential(*model.blocks[:5])
    with torch.no_grad():
        stage5 = trunk(x)
        features = model.blocks[5].pool(stage5).flatten(1)
        logits = model(x)
        assert torch.allclose(logits, model.blocks[5].proj(features), rtol=0, atol=1e-6)
        stage5_wide = trunk(wide)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "tiny.safetensors"))
    io = {"input": x, "stage5": stage5, "features": features, "logits": logits,
          "input_wide": wide, "stage5_wide": stage5_wide}
    save_file({k: v.contiguous() for k, v in io.items()}, str(out / "tiny_io.safetensors"))


def key_list(hub, factory: str) -> List[list]:
    """[[key, shape], ...] of a hub model (400 classes), in state-dict order."""
    model = getattr(hub, factory)(pretrained=False)
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pytorchvideo", type=Path, help="facebookresearch/pytorchvideo checkout")
    parser.add_argument("fvcore", type=Path, help="facebookresearch/fvcore checkout")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    if not (args.pytorchvideo / "pytorchvideo" / "models" / "x3d.py").is_file():
        sys.exit(f"{args.pytorchvideo}: no pytorchvideo/models/x3d.py (expected a pytorchvideo checkout)")
    if not (args.fvcore / "fvcore" / "nn" / "squeeze_excitation.py").is_file():
        sys.exit(f"{args.fvcore}: no fvcore/nn/squeeze_excitation.py (expected an fvcore checkout)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as stub:
        install_stubs(Path(stub), args.fvcore)
        sys.path[:0] = [stub, str(args.pytorchvideo)]
        tiny_case(importlib.import_module("pytorchvideo.models.x3d"), args.out)
        (args.out / "tiny.json").write_text(json.dumps(dict(batch=BATCH, wide=WIDE, create_x3d=TINY), indent=1) + "\n")
        hub = importlib.import_module("pytorchvideo.models.hub.x3d")
        for name in FULL:
            doc = dict(source=f"pytorchvideo.models.hub.x3d.{name}(pretrained=False)", keys=key_list(hub, name))
            (args.out / f"{name}_keys.json").write_text(json.dumps(doc) + "\n")
    print(f"wrote the X3D fixtures to {args.out}")


if __name__ == "__main__":
    main()
