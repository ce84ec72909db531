"""Record types shared by the readers, list formats and datasets.

They live apart from the modules that produce or consume them so that no data module has to
import another one just for a type (the readers, ``clip``, ``list_parsers`` and ``dataset`` all use them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Union

__all__ = ["PathLike", "VideoRecord", "RecordList", "VideoInfo"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class VideoRecord:
    """One video: ``path`` (a video file or a frame folder, relative to the dataset root),
    ``num_frames`` (``None``: probe the video when needed), ``label`` (an int, or a list of
    class ids for multi-label datasets). ``line``: the 1-based line of the list file it was read
    from, for error messages (not part of equality or repr)."""

    path: str
    num_frames: Optional[int]
    label: Union[int, List[int]]
    line: Optional[int] = field(default=None, compare=False, repr=False)


class RecordList(list):
    """A ``list[VideoRecord]`` that also carries ``class_names`` (index -> name) when known,
    ``source`` (the list file and config key it was read from, e.g. ``"val.txt (data.val_list)"``)
    so that later errors can name it, and ``frame_template`` (how its frame folders name their
    images, from the list format or ``data.frame_template``; ``None``: not known)."""

    def __init__(self, records: Iterable[VideoRecord] = (), class_names: Optional[Sequence[str]] = None,
                 source: Optional[str] = None):
        super().__init__(records)
        self.class_names: Optional[List[str]] = list(class_names) if class_names is not None else None
        self.source: Optional[str] = source
        self.frame_template: Optional[str] = None


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
