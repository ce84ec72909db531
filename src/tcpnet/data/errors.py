"""Errors of the video and frame-folder readers, in a module of their own so that every reader
(and the datasets and the CLI) can import them without importing each other."""
from __future__ import annotations

import os
from typing import Optional, Union

from tcpnet.data.records import PathLike

__all__ = ["DecodeError", "DecodeTimeout", "FrameIndexError"]


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


class DecodeTimeout(DecodeError):
    """Reading a file took longer than its deadline (``data.decode_timeout``): a file that makes the
    demuxer or decoder crawl is a bad video like a corrupt one, not a stalled job."""
