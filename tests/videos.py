"""Helpers that write small real video files and frame folders for tests (PyAV encoders, PIL).

Importable from any test module (`from videos import write_video, make_frames`): pytest puts
tests/ on sys.path. Frames are content-distinct (moving pattern + frame number drawn as big
binary blocks) so a reader that returns the wrong frame is caught.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np

# libx264 ignores bframes under some presets; pin the GOP exactly (scenecut=0 so no extra
# keyframes appear) and keep the encoder fast.
_X264_PRESET = "veryfast"


def make_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Content-distinct uint8 frames (T, H, W, 3): a moving gradient + the frame number in 8 blocks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 64, size=3)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    bw = max(width // 8, 1)
    bh = max(height // 4, 1)
    for t in range(num_frames):
        frames[t, ..., 0] = (xx * 4 + t * 7 + base[0]) % 256
        frames[t, ..., 1] = (yy * 4 + t * 3 + base[1]) % 256
        frames[t, ..., 2] = ((xx + yy) * 2 + t * 11 + base[2]) % 256
        for bit in range(8):  # frame number as black/white blocks along the top row
            value = 255 if (t >> bit) & 1 else 0
            frames[t, :bh, bit * bw:(bit + 1) * bw, :] = value
    return frames


def write_video(
    path: str | Path,
    frames: np.ndarray,
    codec: str = "libx264",
    fps: int = 25,
    gop: int = 250,
    bframes: int = 2,
    pix_fmt: str = "yuv420p",
    options: Optional[dict] = None,
    container_options: Optional[dict] = None,
    start_pts: Optional[int] = None,
) -> Path:
    """Encode uint8 frames (T, H, W, 3) into `path` (container from the suffix) with PyAV.

    `gop` is the keyframe interval and `bframes` the max consecutive B-frames where the codec
    supports them. `start_pts` (in 1/fps units) stamps frame i with start_pts + i, e.g. negative
    to test videos whose first frames have negative timestamps (mp4 turns them into an edit
    list and FFmpeg then drops those frames). Odd sizes: libx264 refuses yuv420p with an odd
    width or height (avcodec_open2 fails); use pix_fmt="yuv444p" (High 4:4:4), or VP9, MPEG-4
    or AV1, which accept odd 4:2:0 sizes.
    """
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got shape {frames.shape}")
    _, height, width, _ = frames.shape
    opts = dict(options or {})
    if codec == "libx264":
        opts.setdefault("preset", _X264_PRESET)
        opts.setdefault("x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}")
    elif codec in ("libvpx-vp9", "libvpx"):
        opts.setdefault("deadline", "realtime")
        opts.setdefault("cpu-used", "8")
        opts.setdefault("lag-in-frames", "0")
    elif codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner on stderr otherwise
        opts.setdefault("preset", "12")
        opts.setdefault("svtav1-params", f"keyint={gop}")
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=opts)
        stream.width = width
        stream.height = height
        stream.pix_fmt = pix_fmt
        stream.codec_context.gop_size = gop
        if codec not in ("libx264",):
            stream.codec_context.max_b_frames = bframes
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if start_pts is not None:
                frame.pts = start_pts + i
                frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decode_all(path: str | Path) -> np.ndarray:
    """Reference reader: decode every frame in order with PyAV, (F, H, W, 3) uint8."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames)


def write_frame_folder(folder: str | Path, frames: np.ndarray, template: str = "img_{:05d}.jpg",
                       quality: int = 90, skip: Sequence[int] = ()) -> Path:
    """Write frames as 1-based image files `folder/template.format(i)` (JPEG via PIL).

    `skip` lists 1-based file numbers not to write (to test missing frames).
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(np.asarray(frames, dtype=np.uint8), start=1):
        if i in skip:
            continue
        Image.fromarray(array).save(folder / template.format(i), quality=quality)
    return folder


# ---------------------------------------------------------------- streams that trip frame-exact readers


def write_open_gop(path: str | Path, frames: np.ndarray, gop: int = 16, bframes: int = 3) -> Path:
    """H.264 with open GOPs (x264 open-gop, B-pyramid): keyframes after the first are non-IDR
    I-frames followed in decode order by "leading" B-frames shown before them, which reference
    the previous GOP (so they cannot be decoded after a seek to that keyframe)."""
    params = (f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:b-pyramid=normal:open-gop=1")
    return write_video(path, frames, gop=gop, bframes=bframes, options={"preset": _X264_PRESET, "x264-params": params})


def write_vfr(path: str | Path, frames: np.ndarray, seed: int = 0, gop: int = 16, bframes: int = 2) -> Path:
    """H.264 in MP4 with variable frame durations (20-100 ms, time base 1/1000, B-frames)."""
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    _, height, width, _ = frames.shape
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={
            "preset": _X264_PRESET, "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += int(rng.choice([20, 33, 40, 67, 100]))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_cut(src: str | Path, dst: str | Path, start: int) -> Path:
    """Remux `src` (an MP4) from its frame `start` on without re-encoding, as `ffmpeg -ss ... -c copy`
    does: the packets from the keyframe before `start` are copied with timestamps shifted so
    that frame `start` is at 0; the MP4 muxer turns the negative start into an edit list, and
    demuxers mark the packets before it "discard" (decoded for reference, never shown)."""
    dst = Path(dst)
    with av.open(str(src)) as source:
        stream = source.streams.video[0]
        packets = [p for p in source.demux(stream) if p.size]
        t0 = sorted(p.pts for p in packets)[start]
        first = max(j for j, p in enumerate(packets) if p.is_keyframe and p.pts <= t0)
        with av.open(str(dst), "w") as out:
            copy = out.add_stream_from_template(stream)
            for packet in packets[first:]:
                packet.pts -= t0
                packet.dts -= t0
                packet.stream = copy
                out.mux(packet)
    return dst


def mp4_edit_lists(path: str | Path) -> list:
    """The (segment_duration, media_time) entries of every `elst` box of an MP4 file."""
    data = Path(path).read_bytes()
    entries = []

    def walk(start: int, end: int) -> None:
        pos = start
        while pos + 8 <= end:
            size = int.from_bytes(data[pos:pos + 4], "big")
            kind = data[pos + 4:pos + 8]
            header = 8
            if size == 1:
                size, header = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
            elif size == 0:
                size = end - pos
            if size < header:
                return
            if kind in (b"moov", b"trak", b"edts"):
                walk(pos + header, pos + size)
            elif kind == b"elst":
                version = data[pos + header]
                count = int.from_bytes(data[pos + header + 4:pos + header + 8], "big")
                width = 8 if version == 1 else 4
                at = pos + header + 8
                for _ in range(count):
                    duration = int.from_bytes(data[at:at + width], "big")
                    media_time = int.from_bytes(data[at + width:at + 2 * width], "big", signed=True)
                    entries.append((duration, media_time))
                    at += 2 * width + 4
            pos += size

    walk(0, len(data))
    return entries
