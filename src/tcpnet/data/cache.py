"""Decoded videos kept in memory across epochs (``data.cache_decoded_mb``).

A small dataset read again every epoch spends most of its data time opening and decoding the
same files. :func:`load_clip_cached` is :func:`~tcpnet.data.load_clip` with a per-process LRU
of whole decoded videos (uint8 ``(N, H, W, 3)`` arrays), bounded by bytes: the first request for
a video decodes all of its frames, later requests index that array. The sampler still picks the
frame indices of every item in every epoch; only the decoding is skipped, and the frames are
bit-identical to ``load_clip``'s (the readers are exact: frame i is the i-th frame in
presentation order, as if every frame had been decoded). A video larger than the bound is not
cached; a file that changed on disk (mtime or size) is decoded again.

The cache serves the main process only, so use it with ``data.num_workers=0``: then it serves
every epoch of a run and every later run in the same process (the demo trains two models and
tests both on the same videos). Inside a DataLoader worker :func:`load_clip_cached` reads
directly: the training loop starts new workers every epoch, so what a worker stored would be
lost with it, after costing the whole video's decoding and up to the bound in memory per worker.
"""
from __future__ import annotations

import collections
import os
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.utils.data

from tcpnet.data.clip import DEFAULT_FRAME_TEMPLATE, frame_indices, load_clip, probe
from tcpnet.data.errors import Deadline, Timeout
from tcpnet.data.records import PathLike

__all__ = ["DecodedVideoCache", "load_clip_cached", "shared_cache", "clear_shared_cache"]

Indices = Union[Sequence[int], np.ndarray, torch.Tensor]


class DecodedVideoCache:
    """LRU of whole decoded videos, at most ``max_bytes`` of frames in all.

    ``load(path, indices, ...)`` returns what ``load_clip(path, indices, ...)`` returns (a new
    uint8 tensor, never a view of the cache) and raises the same errors. ``stats()`` counts
    hits, misses (videos decoded and stored) and videos too large to store.
    """

    def __init__(self, max_bytes: int) -> None:
        if int(max_bytes) < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._videos: "collections.OrderedDict[tuple, np.ndarray]" = collections.OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.too_large = self.evicted = 0

    def __len__(self) -> int:
        return len(self._videos)

    def stats(self) -> Dict[str, int]:
        return dict(videos=len(self._videos), nbytes=self.nbytes, max_bytes=self.max_bytes, hits=self.hits,
                    misses=self.misses, too_large=self.too_large, evicted=self.evicted)

    def clear(self) -> None:
        self._videos.clear()
        self.nbytes = 0

    def load(self, path: PathLike, indices: Indices, *, frame_template: str = DEFAULT_FRAME_TEMPLATE,
             threads: Optional[int] = None, reader: str = "pyav",
             timeout: Timeout = None) -> torch.Tensor:
        """Frames ``indices`` of ``path`` as ``load_clip`` gives them, from the cache when held
        (``timeout`` bounds the probe and the decoding together)."""
        timeout = Deadline.of(timeout)

        def read(wanted: Indices) -> torch.Tensor:
            return load_clip(path, wanted, frame_template=frame_template, threads=threads, reader=reader,
                             timeout=timeout)

        key = _key(path, frame_template, reader)
        if key is None:  # cannot stat: the reader says why, in its own words
            return read(indices)
        frames = self._videos.get(key)
        if frames is not None:
            self._videos.move_to_end(key)
            self.hits += 1
        else:
            info = probe(path, frame_template=frame_template, timeout=timeout)
            if info.num_frames * (info.height or 0) * (info.width or 0) * 3 > self.max_bytes:
                self.too_large += 1
                return read(indices)
            frames = read(np.arange(info.num_frames)).numpy()
            frames.setflags(write=False)
            self.misses += 1
            if frames.nbytes > self.max_bytes:  # the probe's frame size was not the decoded one
                self.too_large += 1
            else:
                self._store(key, frames)
        return torch.from_numpy(frames[frame_indices(path, indices, len(frames))])

    def _store(self, key: tuple, frames: np.ndarray) -> None:
        while self._videos and self.nbytes + frames.nbytes > self.max_bytes:
            _, old = self._videos.popitem(last=False)
            self.nbytes -= old.nbytes
            self.evicted += 1
        self._videos[key] = frames
        self.nbytes += frames.nbytes


def _key(path: PathLike, frame_template: str, reader: str) -> Optional[tuple]:
    """(absolute path, mtime, size, how it is read); None when the path cannot be stat'ed."""
    full = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(full)
    except OSError:
        return None
    how = frame_template if os.path.isdir(full) else reader
    return (full, st.st_mtime_ns, st.st_size, how)


_shared: Optional[DecodedVideoCache] = None


def shared_cache(max_bytes: int) -> DecodedVideoCache:
    """This process's cache, created on first use; a larger ``max_bytes`` raises its bound
    (every dataset of the process shares it: the same file decodes to the same frames)."""
    global _shared
    if _shared is None:
        _shared = DecodedVideoCache(max_bytes)
    elif int(max_bytes) > _shared.max_bytes:
        _shared.max_bytes = int(max_bytes)
    return _shared


def clear_shared_cache() -> None:
    """Drop this process's cache (its memory and its counters)."""
    global _shared
    _shared = None


def load_clip_cached(path: PathLike, indices: Indices, *, max_bytes: int,
                     frame_template: str = DEFAULT_FRAME_TEMPLATE, threads: Optional[int] = None,
                     reader: str = "pyav", timeout: Timeout = None) -> torch.Tensor:
    """:func:`~tcpnet.data.load_clip` through this process's cache of at most ``max_bytes``
    (plain ``load_clip`` inside a DataLoader worker, see the module docstring)."""
    if torch.utils.data.get_worker_info() is not None:
        return load_clip(path, indices, frame_template=frame_template, threads=threads, reader=reader,
                         timeout=timeout)
    return shared_cache(max_bytes).load(path, indices, frame_template=frame_template, threads=threads,
                                        reader=reader, timeout=timeout)
