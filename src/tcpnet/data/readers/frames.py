"""Frame-folder reader (TSN/TSM/TCPNet layout): frame i (1-based) of `<folder>` is the image named
by the template (`tcpnet.data.frame_template`: `img_{:05d}.jpg`, `{id}-{:06d}.jpg`, ...).

Images are decoded with Pillow and converted to RGB. Unlike the authors' loader, a missing or
unreadable frame is an error naming the file and the template; nothing is silently replaced by
frame 1.
"""
from __future__ import annotations

import os
import re
import string
from typing import Dict

import numpy as np
from PIL import Image, UnidentifiedImageError

from tcpnet.data.errors import DecodeError, FrameIndexError, MissingFrameError
from tcpnet.data.frame_template import bind_frame_template, check_frame_template
from tcpnet.data.records import PathLike, VideoInfo


def _bound(folder: str, template: str) -> str:
    """`template` checked, with the folder's id filled in: a template of the frame number alone."""
    return bind_frame_template(check_frame_template(template), folder)


def _not_found(folder: str, template: str, number: int) -> MissingFrameError:
    return MissingFrameError(os.path.join(folder, _bound(folder, template).format(number)), number, template)


def count_frames(folder: PathLike, template: str) -> int:
    """Number of consecutive frame files 1, 2, ... present in `folder`."""
    folder = os.fspath(folder)
    bound = _bound(folder, template)
    names = set(os.listdir(folder))
    count = 0
    while bound.format(count + 1) in names:
        count += 1
    return count


def _last_frame_number(folder: str, template: str) -> int:
    """Highest frame number among the files matching `template` (0 if none); error path only."""
    template = _bound(folder, template)
    parts = list(string.Formatter().parse(template))
    fields = [p for p in parts if p[1] is not None]
    if len(fields) != 1:
        return count_frames(folder, template)
    prefix = "".join(p[0] for p in parts[: parts.index(fields[0]) + 1])
    suffix = "".join(p[0] for p in parts[parts.index(fields[0]) + 1:])
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + r"\Z")
    numbers = [int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m]
    return max(numbers, default=0)


def _read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL raises SyntaxError on some bad files
        raise DecodeError(path, f"cannot read frame image ({err})") from err


def read_frame_folder(folder: PathLike, indices: np.ndarray, template: str) -> np.ndarray:
    """Frames `indices` (0-based) of a frame folder as a uint8 (T, H, W, 3) array."""
    folder = os.fspath(folder)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and indices.min() < 0:
        raise FrameIndexError(folder, int(indices.min()), None)
    bound = _bound(folder, template)
    frames: Dict[int, np.ndarray] = {}
    for i in np.unique(indices).tolist():
        path = os.path.join(folder, bound.format(i + 1))
        if not os.path.isfile(path):
            last = _last_frame_number(folder, template) if os.path.isdir(folder) else 0
            if i >= last > 0:  # past the last file: an index error, not a hole in the folder
                raise FrameIndexError(folder, i, last)
            raise _not_found(folder, template, i + 1)
        frames[i] = _read_image(path)
    if not frames:
        first = os.path.join(folder, bound.format(1))
        if not os.path.isfile(first):
            raise _not_found(folder, template, 1)
        height, width = _read_image(first).shape[:2]
        return np.empty((0, height, width, 3), dtype=np.uint8)
    try:
        return np.stack([frames[i] for i in indices.tolist()])
    except ValueError as err:
        raise DecodeError(folder, f"frame images have different sizes ({err})") from err


def probe_frame_folder(folder: PathLike, template: str) -> VideoInfo:
    """VideoInfo of a frame folder: frame count, image size and format (no fps or duration)."""
    folder = os.fspath(folder)
    num_frames = count_frames(folder, template)
    if num_frames == 0:
        raise _not_found(folder, template, 1)
    first = os.path.join(folder, _bound(folder, template).format(1))
    try:
        with Image.open(first) as image:
            width, height = image.size
            codec = (image.format or "image").lower()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DecodeError(first, f"cannot read frame image ({err})") from err
    return VideoInfo(num_frames=num_frames, fps=None, width=width, height=height,
                     keyframes=tuple(range(num_frames)), duration=None, codec=codec)
