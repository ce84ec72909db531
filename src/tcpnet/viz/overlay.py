"""Heat maps on frames: resize a low-resolution map to the frame, colour it, blend it."""
from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image

__all__ = ["resize_map", "colorize", "overlay"]


def resize_map(heat: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w) map to ``size`` = (H, W), clipped to [0, 1] (float32).

    Pixel centres are aligned (Pillow's resampling), so a feature cell covers the block of
    frame pixels it was computed from, as with ``F.interpolate(align_corners=False)``."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if heat.ndim != 2:
        raise ValueError(f"resize_map: expected a (h, w) map, got shape {heat.shape}")
    h, w = int(size[0]), int(size[1])
    if heat.shape == (h, w):
        return np.clip(heat, 0.0, 1.0)
    out = np.asarray(Image.fromarray(heat, mode="F").resize((w, h), Image.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def colorize(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) values in [0, 1] -> uint8 RGB (H, W, 3) through a Matplotlib colour map."""
    from matplotlib import colormaps

    lut = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    idx = np.clip(np.rint(np.asarray(heat, dtype=np.float32) * 255.0), 0, 255).astype(np.intp)
    return lut[idx]


def overlay(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend the coloured heat map (any resolution, values in [0, 1]) over a uint8 RGB frame
    (H, W, 3): ``(1 - alpha) * frame + alpha * colour``."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"overlay: expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
    colour = colorize(resize_map(heat, frame.shape[:2]), cmap).astype(np.float32)
    out = (1.0 - alpha) * frame.astype(np.float32) + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
