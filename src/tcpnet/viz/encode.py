"""Image bytes: PNG/JPEG encoding with Pillow, ``data:`` URIs for self-contained HTML, decoding."""
from __future__ import annotations

import base64
import io
from typing import Optional, Union

import numpy as np
from PIL import Image

__all__ = ["to_png", "to_jpeg", "data_uri", "decode_image"]


def _image(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"expected a uint8 (H, W, 3|4) image, got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def to_png(array: np.ndarray, colors: Optional[int] = None) -> bytes:
    """uint8 (H, W, 3|4) -> PNG bytes (optimised: these end up in reports and the README).

    ``colors``: quantise to a palette of that many colours first (median cut, no dithering):
    about a third of the size for figures with frames and heat maps, at the cost of slight banding."""
    img = _image(array)
    if colors is not None:
        img = img.convert("RGB").quantize(int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def to_jpeg(array: np.ndarray, quality: int = 85) -> bytes:
    """uint8 (H, W, 3) -> JPEG bytes (photographic thumbnails)."""
    buf = io.BytesIO()
    _image(array).convert("RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...``: an image embedded in the HTML page itself (no extra files)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def decode_image(data: Union[bytes, str]) -> Image.Image:
    """Decode image bytes or a ``data:`` URI with Pillow (fully loaded, so errors surface here)."""
    if isinstance(data, str):
        if not data.startswith("data:") or ";base64," not in data:
            raise ValueError(f"not a base64 data URI: {data[:40]!r}")
        data = base64.b64decode(data.split(";base64,", 1)[1], validate=True)
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
