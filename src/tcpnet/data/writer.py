"""Writing video: a byte-reproducible H.264 mp4 writer (PyAV), used by the synthetic data, the
preparation tools and the applications that render explanations. It lives beside the readers so
that every layer above ``data`` can write a video without importing the offline tools."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import av
import numpy as np

from tcpnet.data.records import PathLike

__all__ = ["H264Writer", "write_video", "rgb_to_yuv420p", "part_path"]


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 of a uint8 (H, W, 3) frame (H, W even), as PyAV's
    (H * 3 // 2, W) yuv420p array.  Done in NumPy so encoding is bit-reproducible."""
    h, w, _ = rgb.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even width and height, got {w}x{h}")
    x = rgb.astype(np.float32)
    y = 16.0 + 0.256788 * x[..., 0] + 0.504129 * x[..., 1] + 0.097906 * x[..., 2]
    sub = x.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    u = 128.0 - 0.148223 * sub[..., 0] - 0.290993 * sub[..., 1] + 0.439216 * sub[..., 2]
    v = 128.0 + 0.439216 * sub[..., 0] - 0.367788 * sub[..., 1] - 0.071427 * sub[..., 2]
    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8).ravel() for p in (y, u, v)]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


class H264Writer:
    """Write frames to an mp4 (libx264, yuv420p, fixed keyframe interval ``gop``, no scene-cut
    keyframes).  ``reproducible`` encodes single-threaded without x264's macroblock-tree rate
    control: with mbtree on, identical input gave different bytes from run to run (measured with
    x264 core 165, threads=1, in ~half of small clips after other allocations; asm=0 or
    no-mbtree removes it), so the synthetic data turns it off.  ``qp`` (instead of ``crf``) codes
    at a constant quantiser; with ``gop=1`` as well every frame is an intra frame coded from
    itself alone, so decoding is a per-frame function of the input (the synthetic data needs it)."""

    def __init__(self, path: PathLike, width: int, height: int, fps: Union[int, Fraction] = 25,
                 crf: int = 23, gop: int = 16, preset: str = "medium", reproducible: bool = True,
                 qp: Optional[int] = None):
        if width % 2 or height % 2:
            raise ValueError(f"{os.fspath(path)}: yuv420p H.264 needs even width and height, got {width}x{height}")
        if gop < 1:
            raise ValueError(f"gop must be >= 1, got {gop}")
        if qp is not None and not 0 <= qp <= 51:
            raise ValueError(f"{os.fspath(path)}: qp must be in [0, 51] (H.264 8-bit), got {qp}")
        self.path = os.fspath(path)
        self.width, self.height = width, height
        self.container = av.open(self.path, "w")
        x264_params = f"keyint={gop}:min-keyint={gop}:scenecut=0" + (":no-mbtree=1" if reproducible else "")
        options = {"preset": preset, "threads": "1" if reproducible else "0", "x264-params": x264_params}
        options.update({"crf": str(crf)} if qp is None else {"qp": str(qp)})
        self.stream = self.container.add_stream("libx264", rate=fps, options=options)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.time_base = 1 / Fraction(fps)
        self.num_frames = 0

    def write(self, frame: Union[np.ndarray, av.VideoFrame]) -> None:
        """Append one frame: a uint8 RGB (H, W, 3) array or an av.VideoFrame of the right size."""
        if isinstance(frame, np.ndarray):
            if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"{self.path}: expected uint8 frame of shape {(self.height, self.width, 3)}, "
                                 f"got {frame.dtype} {frame.shape}")
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
        # renumber: constant frame rate output, frame i at i / fps
        frame.pts = self.num_frames
        frame.time_base = self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.num_frames += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> "H264Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.container.close()


def part_path(path: Path) -> Path:
    """Temporary sibling name, same suffix (the muxer picks the format from it)."""
    return path.with_name(f"{path.stem}.part{path.suffix}")


def write_video(path: PathLike, frames: np.ndarray, fps: int = 25, crf: int = 20, gop: int = 8,
                preset: str = "medium", qp: Optional[int] = None) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) into an H.264 mp4 at ``path`` (written atomically,
    byte-reproducible: see H264Writer; ``qp`` replaces ``crf`` by a constant quantiser)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{os.fspath(path)}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    tmp = part_path(path)
    try:
        with H264Writer(tmp, frames.shape[2], frames.shape[1], fps=fps, crf=crf, gop=gop, preset=preset,
                        qp=qp) as w:
            for f in frames:
                w.write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
