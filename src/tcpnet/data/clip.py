"""Read the frames of a clip, from a video file or a frame folder, as a uint8 (T, H, W, 3) tensor.

`load_clip` is the one entry point the datasets use; it dispatches to the PyAV video reader
(`tcpnet.data.readers.pyav`, decodes only what is needed) or the frame-folder reader
(`tcpnet.data.readers.frames`). Frame i is the i-th frame in presentation order (0-based), exactly as
if every frame had been decoded in order.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from tcpnet.config import READERS  # video decoders behind load_clip (frame folders: PIL)
from tcpnet.data.errors import Deadline, DecodeError, DecodeTimeout, FrameIndexError, Timeout
from tcpnet.data.frame_template import DEFAULT_FRAME_TEMPLATE
from tcpnet.data.records import PathLike, VideoInfo

# The errors, VideoInfo and the default template are defined in their own modules and re-exported here.
__all__ = ["load_clip", "probe", "frame_indices", "DecodeError", "FrameIndexError", "VideoInfo", "DEFAULT_FRAME_TEMPLATE"]


def frame_indices(path: PathLike, indices: Union[Sequence[int], np.ndarray, torch.Tensor],
                  num_frames: Optional[int] = None) -> np.ndarray:
    """``indices`` as a 1-D int64 array, with the readers' errors for bad values (``num_frames``:
    also check the upper bound), so every way of reading a clip refuses the same requests."""
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    array = np.asarray(indices)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"{os.fspath(path)}: indices must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{os.fspath(path)}: indices must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        raise FrameIndexError(path, int(array.min()), None)
    if num_frames is not None and array.size and array.max() >= num_frames:
        raise FrameIndexError(path, int(array.max()), num_frames)
    return array


def load_clip(
    path: PathLike,
    indices: Union[Sequence[int], np.ndarray, torch.Tensor],
    *,
    frame_template: str = DEFAULT_FRAME_TEMPLATE,
    threads: Optional[int] = None,
    reader: str = "pyav",
    timeout: Timeout = None,
) -> torch.Tensor:
    """Frames `indices` (0-based, any order, repeats allowed) of a video file or frame folder.

    Returns a uint8 tensor (T, H, W, 3), RGB. A folder holds 1-based images named by
    `frame_template` (e.g. img_00001.jpg). `threads` is the FFmpeg decoder thread count
    (None: 1 inside a DataLoader worker, else FFmpeg's automatic choice). `reader` decodes video
    files: "pyav" (default) or "torchcodec" (optional package, needs a system FFmpeg; exact mode).
    `timeout`: seconds the read may take, or a running `Deadline` shared with an earlier step such
    as the frame-count probe (None: no limit). The PyAV reader checks it at every
    packet and frame and interrupts FFmpeg's I/O; torchcodec and frame folders are checked once
    they return. Raises DecodeError (unreadable input), DecodeTimeout (deadline passed) or
    FrameIndexError (index out of range).
    """
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    array = frame_indices(path, indices)
    deadline = Deadline.of(timeout)
    if os.path.isdir(path):
        from tcpnet.data.readers.frames import read_frame_folder

        clip = read_frame_folder(path, array, frame_template)
    elif reader == "torchcodec":
        from tcpnet.data.readers.torchcodec import read_video as read_with_torchcodec

        clip = read_with_torchcodec(path, array, threads=threads, timeout=deadline)
    else:
        from tcpnet.data.readers.pyav import read_video

        clip = read_video(path, array, threads=threads, timeout=deadline)
    _check_deadline(path, deadline)  # readers that cannot be interrupted
    return torch.from_numpy(clip)


def probe(path: PathLike, *, frame_template: str = DEFAULT_FRAME_TEMPLATE, timeout: Timeout = None) -> VideoInfo:
    """Frame count, rate, size, keyframes, duration and codec of a video file or frame folder.
    `timeout`: seconds (or a running `Deadline`) the probe may take; past it, DecodeTimeout."""
    deadline = Deadline.of(timeout)
    if os.path.isdir(path):
        from tcpnet.data.readers.frames import probe_frame_folder

        info = probe_frame_folder(path, frame_template)
    else:
        from tcpnet.data.readers.pyav import probe_video

        info = probe_video(path, deadline)
    _check_deadline(path, deadline)
    return info


def _check_deadline(path: PathLike, deadline: Deadline) -> None:
    """DecodeTimeout when a step that checks no deadline itself (frame folders, torchcodec) ended past it."""
    if deadline.passed():
        raise DecodeTimeout(path, f"reading took longer than the {deadline.seconds:g} s deadline "
                                  f"(data.decode_timeout)")
