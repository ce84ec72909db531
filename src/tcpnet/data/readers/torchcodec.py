"""Optional torchcodec video reader behind `load_clip`'s reader seam (``reader="torchcodec"``,
config ``data.reader: torchcodec``); PyAV (`tcpnet.data.readers.pyav`) stays the default.

torchcodec decodes in its exact mode (``seek_mode="exact"``: it scans the file and numbers frames
by their pts) and returns the same uint8 (T, H, W, 3) RGB array as the PyAV reader. It is an
optional dependency (``pip install tcpnet[bench]`` or ``pip install torchcodec``) and needs a
system FFmpeg (its libavcodec/libavformat shared libraries, e.g. ``apt-get install ffmpeg``); the
wheel matching the installed torch must be used (torchcodec >= 0.12 for torch >= 2.11).

Frame i must be the i-th frame decode-all shows (the project's definition of an index). Each
frame torchcodec returns is checked against tcpnet's packet index of the file (one demux pass,
cached per process): its pts must be that of frame i. Where torchcodec numbers frames otherwise
(measured with torchcodec 0.13 and FFmpeg 5.1: MP4 edit lists, e.g. `-c copy` cuts and negative
start times, and MPEG-TS, whose frames come back several frames late), the file is logged, counted
in ``counters["torchcodec_fallbacks"]`` and read with PyAV from then on in this process, so the
result stays frame-exact. Unreadable files raise `DecodeError` naming the file, as with PyAV.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from tcpnet.data.readers import pyav as _pyav
from tcpnet.data.errors import Deadline, FrameIndexError, Timeout
from tcpnet.data.records import PathLike

log = logging.getLogger(__name__)

counters = _pyav.counters  # "torchcodec_reads", "torchcodec_fallbacks"
_pyav_files: set = set()  # (path, mtime_ns, size) of files torchcodec numbers differently


def unavailable_reason() -> Optional[str]:
    """None when torchcodec imports, else why not (missing package, FFmpeg libraries, ...)."""
    try:
        _decoder_class()
    except ImportError as err:
        return str(err)
    return None


def _decoder_class():
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as err:  # ImportError; RuntimeError/OSError when FFmpeg's libraries are missing
        raise ImportError(
            f"reader='torchcodec' needs the torchcodec package (matching the installed torch) and a "
            f"system FFmpeg (libavcodec etc.); importing it failed: {type(err).__name__}: {err}") from err
    return VideoDecoder


def read_video(path: PathLike, indices: np.ndarray, *, threads: Optional[int] = None,
               timeout: Timeout = None) -> np.ndarray:
    """Frames `indices` (0-based) of a video file as a (T, H, W, 3) uint8 array, decoded by torchcodec.
    `timeout` bounds the index pass and a PyAV fallback; torchcodec's own decoding is checked after."""
    VideoDecoder = _decoder_class()
    timeout = Deadline.of(timeout)
    path = os.path.abspath(os.fspath(path))
    key = _pyav._stat(path)  # DecodeError: missing or empty file
    index = _pyav.get_index(path, timeout)  # DecodeError: not a video, truncated, no video stream
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return _pyav.empty_clip(index)
    wanted, inverse = np.unique(indices, return_inverse=True)
    if wanted[0] < 0:
        raise FrameIndexError(path, int(wanted[0]), index.num_frames)
    if not index.reliable or key in _pyav_files:  # frames are counted, not indexed by pts
        return _pyav.read_video(path, indices, threads=threads, timeout=timeout)
    if wanted[-1] >= len(index.pts):
        raise FrameIndexError(path, int(wanted[-1]), len(index.pts))
    if threads is None:
        threads = _pyav._default_threads()
    counters["torchcodec_reads"] += 1
    try:
        decoder = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=threads,
                               device="cpu")
        batch = decoder.get_frames_at(wanted.tolist())
        frames = batch.data.numpy()
        got = batch.pts_seconds.numpy().astype(np.float64)
    except Exception as err:  # torchcodec raises RuntimeError/ValueError/IndexError
        return _fallback(path, key, indices, threads, timeout, f"torchcodec failed ({type(err).__name__}: {err})")
    tick = float(index.time_base)
    expected = index.pts[wanted].astype(np.float64) * tick
    bad = np.flatnonzero(np.abs(got - expected) > tick / 2)
    if bad.size:
        i = int(bad[0])
        return _fallback(path, key, indices, threads, timeout,
                         f"torchcodec gave the frame shown at {got[i]:.3f} s for frame {int(wanted[i])}, "
                         f"which is shown at {expected[i]:.3f} s")
    if len(wanted) == len(indices) and np.array_equal(wanted, indices):
        return frames
    return frames[inverse]


def _fallback(path: str, key: tuple, indices: np.ndarray, threads: Optional[int], timeout: Timeout,
              why: str) -> np.ndarray:
    log.warning("%s: %s; reading this file with PyAV from now on", path, why)
    counters["torchcodec_fallbacks"] += 1
    _pyav_files.add(key)
    return _pyav.read_video(path, indices, threads=threads, timeout=timeout)
