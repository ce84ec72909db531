"""Arranging frames: integer upscaling, horizontal strips, side-by-side panels, captions, label bars."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["upscale", "mosaic", "hstack", "caption", "even_size", "label_bar"]


def upscale(frames: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, 3) by the smallest integer factor that makes the
    shorter side at least ``min_side`` (small inputs stay crisp; large ones are returned as is)."""
    h, w = frames.shape[-3:-1]
    factor = max(1, -(-int(min_side) // max(1, min(h, w))))
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def mosaic(frames: np.ndarray, gap: int = 2, fill: int = 255) -> np.ndarray:
    """(T, H, W, 3) -> one (H, T*W + (T-1)*gap, 3) strip, frames left to right."""
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"mosaic: expected (T, H, W, 3), got shape {frames.shape}")
    t, h, w, c = frames.shape
    out = np.full((h, t * w + max(t - 1, 0) * gap, c), fill, dtype=frames.dtype)
    for i, f in enumerate(frames):
        out[:, i * (w + gap): i * (w + gap) + w] = f
    return out


def hstack(panels: Sequence[np.ndarray], gap: int = 4, fill: int = 0) -> np.ndarray:
    """Equal-height uint8 (H, W_i, 3) panels side by side with ``gap`` pixels between them."""
    if len({p.shape[0] for p in panels}) != 1:
        raise ValueError(f"hstack: panels differ in height: {[p.shape for p in panels]}")
    parts = []
    for i, p in enumerate(panels):
        parts.append(p)
        if i < len(panels) - 1 and gap:
            parts.append(np.full((p.shape[0], gap, p.shape[2]), fill, dtype=p.dtype))
    return np.concatenate(parts, axis=1)


def caption(image: np.ndarray, text: str, height: int = 18, fill: int = 0) -> np.ndarray:
    """Add a strip of ``height`` pixels with white ``text`` above a uint8 (H, W, 3) image."""
    strip = Image.new("RGB", (image.shape[1], height), (fill, fill, fill))
    draw = ImageDraw.Draw(strip)
    try:
        font = ImageFont.load_default(size=max(8, height - 6))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    draw.text((4, 2), text, fill=(255, 255, 255), font=font)
    return np.concatenate([np.asarray(strip, dtype=np.uint8), image], axis=0)


def even_size(image: np.ndarray, fill: int = 0) -> np.ndarray:
    """Pad (..., H, W, 3) by at most one row/column so that H and W are even (yuv420p video)."""
    h, w = image.shape[-3:-1]
    pad = [(0, 0)] * (image.ndim - 3) + [(0, h % 2), (0, w % 2), (0, 0)]
    return np.pad(image, pad, constant_values=fill) if (h % 2 or w % 2) else image


def label_bar(image: np.ndarray, text: str, fraction: float, height: int = 22) -> np.ndarray:
    """A copy of a uint8 (H, W, 3) image with a dark strip along its bottom edge: a bar
    ``fraction`` (0-1) of its width, e.g. a probability, and ``text`` over it in white."""
    out = np.array(image, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    height = min(height, h)
    strip = out[h - height:]
    strip[...] = (strip.astype(np.uint16) // 4).astype(np.uint8)  # darken what is under the text
    filled = int(round(w * min(max(float(fraction), 0.0), 1.0)))
    strip[-4:, :filled] = (40, 200, 80)
    img = Image.fromarray(strip)
    try:
        font = ImageFont.load_default(size=max(8, height - 10))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text((4, 1), text, fill=(255, 255, 255), font=font)
    out[h - height:] = np.asarray(img, dtype=np.uint8)
    return out
