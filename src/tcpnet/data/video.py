"""PyAV video reader that decodes only what a clip needs, with results identical to decoding all.

One demux pass (no decoding) gives every packet's pts and keyframe flag: sorting the pts gives
presentation order, so frame i is the frame whose pts has rank i. The index is cached per
process (LRU keyed by path, mtime and size). For each wanted frame the planner either keeps
decoding forward or seeks to the keyframe at/before it, whichever decodes fewer frames
(a seek costs about SEEK_COST_FRAMES frames). Every decoded frame is checked against the index
(its pts must be the next expected one); any disagreement (missing or repeated pts, frames the
decoder drops) switches the file to plain decode-from-start-and-count, which is the definition.
"""
from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import av
import numpy as np

from tcpnet.data.clip import DecodeError, FrameIndexError, PathLike, VideoInfo

log = logging.getLogger(__name__)

# A seek (demuxer seek + decoder flush + restart) costs about as much as decoding this many
# frames. Calibrated on 340x256 H.264, keyframe every 16, TSN sampling, 1 decoder thread: any
# value in 0..8 gave the same speed within the (large, shared-CPU) noise; 4 splits the range.
SEEK_COST_FRAMES = 4
INDEX_CACHE_SIZE = 256
STRATEGIES = ("auto", "seek", "forward", "sequential")
_AV_ERRORS = (av.error.FFmpegError, OSError)
# Frames decoded, seeks done and restarts from the beginning in this process (for benchmarks
# and tests: they show what a plan costs independently of timing noise).
counters: "collections.Counter[str]" = collections.Counter()


@dataclass
class VideoIndex:
    """Presentation-order packet index of a file's first video stream (one demux pass)."""

    path: str
    pts: np.ndarray  # int64 pts of the displayed frames, sorted (= presentation order)
    key_index: np.ndarray  # presentation indices of the keyframes, increasing
    key_pts: List[int]
    key_dts: List[Optional[int]]
    width: int
    height: int
    fps: Optional[float]
    duration: Optional[float]
    codec: str
    reliable: bool  # every packet has a distinct pts, so pts -> frame index is usable
    counted: Optional[int] = None  # frame count found by decoding to the end (fallback mode)
    counted_keys: Optional[List[int]] = None  # keyframe indices found by that decode
    pts_to_index: Dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def num_frames(self) -> Optional[int]:
        if self.counted is not None:
            return self.counted
        return len(self.pts) if self.reliable else None


class _IndexMismatch(Exception):
    """The decoder's output disagrees with the packet index (internal; triggers the fallback)."""


def _open(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path)
    except _AV_ERRORS as err:
        reason = getattr(err, "strerror", None) or err
        raise DecodeError(path, f"cannot open as a video: {reason} (not a video file, or truncated?)") from err
    if not container.streams.video:
        container.close()
        raise DecodeError(path, "no video stream")
    return container


def _build_index(path: str) -> VideoIndex:
    packets: List[Tuple[Optional[int], Optional[int], bool]] = []  # (pts, dts, keyframe)
    with _open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the end-of-stream flush packet
                    continue
                if packet.is_corrupt:
                    raise DecodeError(path, f"truncated or corrupt data in video packet "
                                            f"{len(packets)} (byte offset {packet.pos})")
                if packet.is_discard:  # decoded for reference only, never displayed
                    continue
                packets.append((packet.pts, packet.dts, bool(packet.is_keyframe)))
        except _AV_ERRORS as err:
            raise DecodeError(path, f"demuxing failed after {len(packets)} packets ({err})") from err
        if not packets:
            raise DecodeError(path, "the video stream has no frames")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = len(packets) / fps if fps else None
        if stream.frames and stream.frames != len(packets):
            log.debug("%s: container says %d frames, the stream has %d packets; using the packets",
                      path, stream.frames, len(packets))
        codec = ctx.codec.canonical_name if ctx.codec else ctx.name
        width, height = ctx.width, ctx.height

    pts = [p[0] for p in packets]
    reliable = None not in pts and len(set(pts)) == len(pts)
    if not reliable:
        log.debug("%s: packets lack distinct pts; frames will be counted by decoding", path)
        return VideoIndex(path, np.empty(0, np.int64), np.empty(0, np.int64), [], [], width, height,
                          fps, duration, codec, reliable=False)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    keys = sorted((int(rank[i]), packets[i][0], packets[i][1]) for i in range(len(packets)) if packets[i][2])
    index = VideoIndex(
        path, np.asarray(pts, dtype=np.int64)[order],
        np.asarray([k[0] for k in keys], dtype=np.int64), [k[1] for k in keys], [k[2] for k in keys],
        width, height, fps, duration, codec, reliable=True)
    index.pts_to_index = {int(p): i for i, p in enumerate(index.pts)}
    return index


@functools.lru_cache(maxsize=INDEX_CACHE_SIZE)
def _cached_index(path: str, mtime_ns: int, size: int) -> VideoIndex:
    return _build_index(path)


def get_index(path: PathLike) -> VideoIndex:
    """The (cached) packet index of `path`; rebuilt when the file's mtime or size changes."""
    path = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(path)
    except OSError as err:
        raise DecodeError(path, f"cannot stat ({err.strerror or err})") from err
    if st.st_size == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    return _cached_index(path, st.st_mtime_ns, st.st_size)


def _default_threads() -> int:
    # In DataLoader workers parallelism comes from the workers; FFmpeg threads would oversubscribe.
    import torch.utils.data

    return 1 if torch.utils.data.get_worker_info() is not None else 0


class _Decoder:
    """One open container positioned somewhere in the stream; yields (frame index, frame)."""

    def __init__(self, index: VideoIndex, threads: int, counting: bool):
        self.index = index
        self.threads = threads
        self.counting = counting  # number frames by counting (only valid without seeks)
        self.counted_keys: List[int] = []
        self.container = None
        self._frames: Optional[Iterator[Tuple[int, av.VideoFrame]]] = None
        self.restart()

    def restart(self) -> None:
        """(Re)open the file and decode from the very first packet."""
        counters["opens"] += 1
        self.close()
        self.container = _open(self.index.path)
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_type = "AUTO"
        self.stream.codec_context.thread_count = self.threads
        self._start(self.container.demux(self.stream), first_index=0)

    def _start(self, packets: Iterator[av.Packet], first_index: int) -> None:
        self.low = first_index  # frames before this one are leading pictures after a seek
        self.next_index = first_index
        self._close_frames()
        self._frames = self._decode(packets)

    def _close_frames(self) -> None:
        # A paused decode generator forms a reference cycle with this object and holds FFmpeg
        # frames/threads; if a forked DataLoader worker's GC freed it, the worker would wait on
        # threads that exist only in the parent (hang or crash). Close it deterministically.
        if self._frames is not None:
            self._frames.close()
            self._frames = None

    def close(self) -> None:
        self._close_frames()
        if self.container is not None:
            self.container.close()
            self.container = None

    def seek(self, key: int) -> None:
        """Continue from keyframe number `key` of the index (or earlier; never later)."""
        idx = self.index
        target_index = int(idx.key_index[key])
        targets = [idx.key_pts[key]]
        if idx.key_dts[key] is not None and idx.key_dts[key] < idx.key_pts[key]:
            targets.append(idx.key_dts[key])  # demuxers that index by dts (mp4) need this one
        for target in targets:
            try:
                self.container.seek(int(target), stream=self.stream, backward=True, any_frame=False)
                packets = self.container.demux(self.stream)
                first, landed = self._first_keyframe(packets, target_index)
            except _AV_ERRORS as err:
                log.debug("%s: seek to pts %s failed (%s)", idx.path, target, err)
                continue
            if first is not None:
                counters["seeks"] += 1
                self._start(itertools.chain([first], packets), first_index=landed)
                return
            log.debug("%s: seek to pts %s found no keyframe <= frame %d", idx.path, target, target_index)
        self.restart()  # decoding from the start is always exact

    def _first_keyframe(self, packets: Iterator[av.Packet], target_index: int) -> Tuple[Optional[av.Packet], int]:
        """Skip to the first keyframe packet after a seek (inexact demuxers such as MPEG-TS land
        anywhere); return it and its frame index if that is at or before `target_index`."""
        for packet in packets:
            if packet.size == 0:
                continue
            landed = self.index.pts_to_index.get(packet.pts)
            if landed is None or landed > target_index:
                break
            if packet.is_keyframe:
                return packet, landed
        return None, -1

    def next_frame(self) -> Optional[Tuple[int, av.VideoFrame]]:
        return next(self._frames, None)

    def _decode(self, packets: Iterator[av.Packet]) -> Iterator[Tuple[int, av.VideoFrame]]:
        ctx = self.stream.codec_context
        path = self.index.path
        try:
            for packet in packets:
                if packet.size == 0:
                    continue  # the flush packet; we drain explicitly below
                try:
                    frames = ctx.decode(packet)
                except _AV_ERRORS as err:
                    raise DecodeError(path, f"cannot decode the packet with pts {packet.pts} ({err})") from err
                for frame in frames:
                    yield from self._accept(frame)
            try:
                frames = ctx.decode(None)
            except _AV_ERRORS as err:
                raise DecodeError(path, f"cannot drain the decoder at the end ({err})") from err
        except _AV_ERRORS as err:  # demuxing errors
            raise DecodeError(path, f"reading packets failed near frame {self.next_index} ({err})") from err
        for frame in frames:
            yield from self._accept(frame)

    def _accept(self, frame: av.VideoFrame) -> Iterator[Tuple[int, av.VideoFrame]]:
        counters["frames"] += 1
        if self.counting:
            if frame.key_frame:
                self.counted_keys.append(self.next_index)
            self.next_index += 1
            yield self.next_index - 1, frame
            return
        idx = self.index.pts_to_index.get(frame.pts)
        if idx is None:
            raise _IndexMismatch(f"the decoder gave a frame with pts {frame.pts}, which no packet has")
        if idx < self.low:
            return  # a leading (open-GOP) picture decoded after a seek: not ours to keep
        if idx != self.next_index:
            raise _IndexMismatch(f"expected frame {self.next_index}, the decoder gave frame {idx}")
        self.next_index += 1
        yield idx, frame


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _should_seek(index: VideoIndex, key: int, next_index: int, wanted: int, strategy: str) -> bool:
    if key < 0:
        return False
    key_frame = int(index.key_index[key])
    if strategy == "seek":  # seek for every wanted frame (the textbook reader), for comparisons
        return True
    if strategy == "forward":
        return False
    # decode-forward costs (wanted - next_index) frames, seeking SEEK_COST + (wanted - key_frame)
    return key_frame - next_index > SEEK_COST_FRAMES


def _read_planned(index: VideoIndex, wanted: np.ndarray, threads: int, strategy: str) -> Dict[int, np.ndarray]:
    out: Dict[int, np.ndarray] = {}
    dec = _Decoder(index, threads, counting=False)
    try:
        for w in wanted.tolist():
            key = int(np.searchsorted(index.key_index, w, side="right")) - 1
            if _should_seek(index, key, dec.next_index, w, strategy):
                dec.seek(key)
            while True:
                item = dec.next_frame()
                if item is None:
                    raise _IndexMismatch(f"the stream ended at frame {dec.next_index}, "
                                         f"the index has {index.num_frames}")
                if item[0] == w:
                    out[w] = _to_rgb(item[1])
                    break
    finally:
        dec.close()
    return out


def _read_sequential(index: VideoIndex, wanted: np.ndarray, threads: int) -> Dict[int, np.ndarray]:
    """Decode from the start, number frames by counting; `wanted` empty: count them all."""
    out: Dict[int, np.ndarray] = {}
    need = set(wanted.tolist())
    last = int(wanted[-1]) if len(wanted) else None
    dec = _Decoder(index, threads, counting=True)
    try:
        while True:
            item = dec.next_frame()
            if item is None:
                break
            if item[0] in need:
                out[item[0]] = _to_rgb(item[1])
            if last is not None and item[0] >= last:
                return out
    finally:
        dec.close()
    index.counted = dec.next_index
    index.counted_keys = dec.counted_keys
    if index.reliable and index.counted != len(index.pts):
        index.reliable = False
    if last is not None:
        missing = min(need - out.keys())
        raise FrameIndexError(index.path, missing, index.counted)
    return out


def read_video(path: PathLike, indices: np.ndarray, *, threads: Optional[int] = None,
               strategy: str = "auto") -> np.ndarray:
    """Frames `indices` (0-based) of a video file as a (T, H, W, 3) uint8 array.

    `strategy`: "auto" (plan seeks vs decode-forward), "seek" (seek before every wanted frame),
    "forward" (never seek), "sequential" (decode from the start counting frames); all exact.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    index = get_index(path)
    if threads is None:
        threads = _default_threads()
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return np.empty((0, index.height, index.width, 3), dtype=np.uint8)
    wanted = np.unique(indices)
    if wanted[0] < 0:
        raise FrameIndexError(index.path, int(wanted[0]), index.num_frames)
    num_frames = index.num_frames
    if num_frames is not None and wanted[-1] >= num_frames:
        raise FrameIndexError(index.path, int(wanted[-1]), num_frames)
    if index.reliable and strategy != "sequential":
        try:
            frames = _read_planned(index, wanted, threads, strategy)
        except _IndexMismatch as err:
            log.warning("%s: %s; decoding this file from the start from now on", index.path, err)
            index.reliable = False
            frames = _read_sequential(index, wanted, threads)
    else:
        frames = _read_sequential(index, wanted, threads)
    try:
        return np.stack([frames[i] for i in indices.tolist()])
    except ValueError as err:  # frames of different sizes
        raise DecodeError(index.path, f"frames change size mid-stream ({err})") from err


def probe_video(path: PathLike) -> VideoInfo:
    """VideoInfo of a video file; the frame count comes from the packet index (or a full decode)."""
    index = get_index(path)
    if index.num_frames is None:
        _read_sequential(index, np.empty(0, np.int64), _default_threads())
    return VideoInfo(
        num_frames=int(index.num_frames),
        fps=index.fps,
        width=index.width,
        height=index.height,
        keyframes=tuple(int(k) for k in (index.key_index if index.reliable else index.counted_keys)),
        duration=index.duration,
        codec=index.codec,
    )
