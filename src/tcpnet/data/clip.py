"""Read the frames of a clip, from a video file or a frame folder, as a uint8 (T, H, W, 3) tensor.

`load_clip` is the one entry point the datasets use; it dispatches to the PyAV video reader
(`tcpnet.data.video`, decodes only what is needed) or the frame-folder reader
(`tcpnet.data.frames`). Frame i is the i-th frame in presentation order (0-based), exactly as
if every frame had been decoded in order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_FRAME_TEMPLATE = "img_{:05d}.jpg"


class DecodeError(RuntimeError):
    """A video file or frame folder could not be read; `.path` names it, the message says why.

    `cause` may be omitted so that torch's DataLoader, which re-raises worker errors as
    `type(err)(message)`, keeps the type.
    """

    def __init__(self, path: PathLike, cause: Union[str, BaseException, None] = None):
        self.path = os.fspath(path)
        self.cause = cause
        super().__init__(self.path if cause is None else f"{self.path}: {cause}")

    def __reduce__(self):  # keep pickling (DataLoader workers send exceptions back) working
        return (type(self), (self.path, self.cause))


class FrameIndexError(DecodeError, IndexError):
    """A requested frame index is negative or not below the clip's frame count."""

    def __init__(self, path: PathLike, index: int, num_frames: Optional[int]):
        self.index = int(index)
        self.num_frames = num_frames
        if self.index < 0:
            cause = f"frame index {self.index} is negative (indices are 0-based)"
        else:
            cause = f"frame index {self.index} is out of range for a clip of {num_frames} frames"
        super().__init__(path, cause)

    def __reduce__(self):
        return (type(self), (self.path, self.index, self.num_frames))


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a clip. `num_frames` is exact (counted, never header metadata)."""

    num_frames: int
    fps: Optional[float]
    width: int
    height: int
    keyframes: tuple  # 0-based presentation indices of the keyframes (all frames for folders)
    duration: Optional[float]  # seconds; None when unknown (frame folders)
    codec: str


def _as_indices(path: PathLike, indices: Union[Sequence[int], np.ndarray, torch.Tensor]) -> np.ndarray:
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
    return array


def load_clip(
    path: PathLike,
    indices: Union[Sequence[int], np.ndarray, torch.Tensor],
    *,
    frame_template: str = DEFAULT_FRAME_TEMPLATE,
    threads: Optional[int] = None,
) -> torch.Tensor:
    """Frames `indices` (0-based, any order, repeats allowed) of a video file or frame folder.

    Returns a uint8 tensor (T, H, W, 3), RGB. A folder holds 1-based images named by
    `frame_template` (e.g. img_00001.jpg). `threads` is the FFmpeg decoder thread count
    (None: 1 inside a DataLoader worker, else FFmpeg's automatic choice).
    Raises DecodeError (unreadable input) or FrameIndexError (index out of range).
    """
    array = _as_indices(path, indices)
    if os.path.isdir(path):
        from tcpnet.data.frames import read_frame_folder

        clip = read_frame_folder(path, array, frame_template)
    else:
        from tcpnet.data.video import read_video

        clip = read_video(path, array, threads=threads)
    return torch.from_numpy(clip)


def probe(path: PathLike, *, frame_template: str = DEFAULT_FRAME_TEMPLATE) -> VideoInfo:
    """Frame count, rate, size, keyframes, duration and codec of a video file or frame folder."""
    if os.path.isdir(path):
        from tcpnet.data.frames import probe_frame_folder

        return probe_frame_folder(path, frame_template)
    from tcpnet.data.video import probe_video

    return probe_video(path)
