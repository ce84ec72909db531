"""Errors of the video and frame-folder readers, in a module of their own so that every reader
(and the datasets and the CLI) can import them without importing each other."""
from __future__ import annotations

import errno
import os
import stat
import time
from typing import Optional, Union

from tcpnet.data.records import PathLike

__all__ = ["DecodeError", "DecodeTimeout", "FrameIndexError", "MissingFrameError", "Deadline", "Timeout",
           "video_file_stat"]


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


class MissingFrameError(DecodeError):
    """A frame folder lacks the image of frame ``number`` (1-based): ``path`` is the file that
    ``template`` (``data.frame_template``) names; the message says so, path first."""

    def __init__(self, path: PathLike, number: Optional[int] = None, template: Optional[str] = None):
        self.number, self.template = number, template
        if number is None:  # DataLoader's re-raise: type(err)(message)
            super().__init__(path)
            return
        super().__init__(path, f"frame {number} not found (data.frame_template={template!r})")
        self.args = (f"frame {number} not found: {self.path} (data.frame_template={template!r})",)

    def __reduce__(self):
        return (type(self), (self.path, self.number, self.template))


class DecodeTimeout(DecodeError):
    """Reading a file took longer than its deadline (``data.decode_timeout``): a file that makes the
    demuxer or decoder crawl is a bad video like a corrupt one, not a stalled job."""


class Deadline:
    """A wall-clock budget of ``seconds`` from its creation (``None``: unlimited) that the steps of
    one read share (the frame-count probe, then the frames), so ``data.decode_timeout`` bounds them
    together rather than each."""

    __slots__ = ("seconds", "end")

    def __init__(self, seconds: Optional[float]) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    @classmethod
    def of(cls, timeout: "Timeout") -> "Deadline":
        """``timeout`` itself when it is a Deadline (a budget already running), else a new one."""
        return timeout if isinstance(timeout, Deadline) else cls(timeout)

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


Timeout = Union[float, Deadline, None]  # what the readers' `timeout` takes: seconds, or a running budget


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe); reading it would block"),
                (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def video_file_stat(path: PathLike) -> os.stat_result:
    """``os.stat(path)`` of a video file, or a DecodeError that says what ``path`` is instead: missing,
    a dangling symbolic link or a link loop, a directory, a FIFO, a socket, a device, or empty."""
    try:
        st = os.stat(path)
    except OSError as err:
        if os.path.islink(path):
            what = ("a symbolic link loop" if err.errno == errno.ELOOP
                    else f"a dangling symbolic link (to {os.readlink(path)})")
            raise DecodeError(path, f"cannot stat: {what}") from err
        raise DecodeError(path, f"cannot stat ({err.strerror or err})") from err
    for test, what in _NOT_REGULAR:
        if test(st.st_mode):
            raise DecodeError(path, f"not a regular file: {what}")
    if st.st_size == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    return st
