"""PyAV video reader that decodes only what a clip needs, with results identical to decoding all.

One demux pass (no decoding) gives every packet's pts, keyframe flag and, for H.264, whether it
is a non-reference picture: sorting the pts gives presentation order, so frame i is the frame
whose pts has rank i. Files up to IN_MEMORY_MAX_BYTES are read once per clip: that pass keeps
the packets, and the decoder is fed from memory (one open, no demuxer seeks); larger files keep
only the index (cached per process, LRU keyed by path, mtime and size) and use demuxer seeks.
The wanted frames are grouped into runs, each restarting the decoder at a keyframe when that
decodes fewer frames than going on; while decoding forward, non-reference pictures that are not
wanted are skipped by the decoder (`skip_frame="NONREF"`), and a run ends by draining the
decoder rather than by decoding past its last wanted frame. One colour converter (swscale
context) serves the whole clip. Every frame the decoder outputs is checked against the index
(its pts must be the next expected one, given what was skipped); any disagreement (missing or
repeated pts, frames the decoder drops) switches the file to plain decode-from-start-and-count,
which is the definition.

A read can be given a wall-clock budget (`timeout`, `data.decode_timeout`): it is checked at every
packet and frame, and FFmpeg's own I/O is interrupted when it runs out, so a file that makes the
demuxer or decoder crawl ends in a DecodeTimeout naming it. Frames come out in display
orientation: a rotation in the file's display matrix (phones write -90) is applied in steps of
90 degrees, as players and the other decoders (torchcodec, decord) do.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import av
import av.video.reformatter
import numpy as np

from tcpnet.data.errors import Deadline, DecodeError, DecodeTimeout, FrameIndexError, Timeout, video_file_stat
from tcpnet.data.records import PathLike, VideoInfo

log = logging.getLogger(__name__)

# Restarting the decoder at a keyframe (flush; plus a demuxer seek for files not held in
# memory) costs about as much as decoding this many frames: the planner restarts only when
# more frames than this would be decoded by going on from where the decoder is. Calibrated on
# natural-content H.264 (176x144 and 340x256, keyframe every 16, TSN 8 and 16, CPU time): 0, 1
# and 2 gave the same speed within 2%; 4 was up to 11% slower and 8 up to 33%.
RESTART_COST_FRAMES = 1
INDEX_CACHE_SIZE = 256
# Files up to this size are read once into memory (one demux pass gives both the index and
# the packets to decode, so a clip costs one open and no demuxer seeks); larger files keep
# only their index and are decoded with demuxer seeks.
IN_MEMORY_MAX_BYTES = 64 * 2**20
STRATEGIES = ("auto", "seek", "forward", "sequential")
# Codecs whose non-reference pictures this module recognises in the packet data, so that it
# can let the decoder skip them (skip_frame="NONREF") while it decodes forward to a wanted
# frame and still know exactly which frames the decoder will output. H.264: nal_ref_idc == 0
# means no other picture is predicted from this one, so skipping it changes no other frame.
SKIP_CODECS = frozenset({"h264"})
_AV_ERRORS = (av.error.FFmpegError, OSError)
_NO_PTS = np.iinfo(np.int64).min  # a packet without pts, in VideoIndex.pts_at
# What the reader did in this process, for benchmarks and tests (the cost of a plan, free of
# timing noise): "opens" (files opened), "frames" (frames the decoder output, i.e. decoded),
# "packets" (packets sent to the decoder), "skipped" (of those, non-reference pictures the
# decoder was told to skip), "seeks" (starts of the decoder at a keyframe after the first packet),
# "reprobes" (files read again with FFmpeg's full stream probe, see _open), "fallbacks" (files
# switched to decode-from-the-start after a disagreement with the index).
counters: "collections.Counter[str]" = collections.Counter()


@dataclass
class VideoIndex:
    """Packet index of a file's first video stream (one demux pass, no decoding).

    Displayed frames are numbered in presentation order (sorted pts); packets in decode
    order, the never-displayed ("discard", e.g. before an edit list's start) ones included.
    """

    path: str
    pts: np.ndarray  # int64 pts of the displayed frames, sorted (= presentation order)
    key_index: np.ndarray  # presentation indices of the displayed keyframes, increasing
    key_pts: List[int]
    key_dts: List[Optional[int]]
    width: int
    height: int
    fps: Optional[float]
    duration: Optional[float]
    codec: str
    reliable: bool  # every displayed packet has a distinct pts, so pts -> frame index is usable
    counted: Optional[int] = None  # frame count found by decoding to the end (fallback mode)
    counted_keys: Optional[List[int]] = None  # keyframe indices found by that decode
    pts_to_index: Dict[int, int] = field(default_factory=dict, repr=False)
    num_packets: int = 0  # packets in decode order, discarded ones included
    decode_pos: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)  # of frame i
    key_pos: List[int] = field(default_factory=list, repr=False)  # decode position of each keyframe
    pts_at: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)  # per packet
    # per packet (decode order): a non-reference picture the decoder can skip; None when the
    # codec is not in SKIP_CODECS
    nonref: Optional[np.ndarray] = field(default=None, repr=False)
    time_base: Optional[Fraction] = None  # of the pts
    light_probe: bool = True  # opening with a light probe (see _open) works for this file
    rotation: Optional[int] = None  # quarter turns (counter-clockwise) to display; None: no frame decoded yet

    @property
    def num_frames(self) -> Optional[int]:
        if self.counted is not None:
            return self.counted
        return len(self.pts) if self.reliable else None


class _IndexMismatch(Exception):
    """The decoder's output disagrees with the packet index (internal; triggers the fallback)."""


class _Deadline:
    """The wall-clock budget of one read of `path` (see errors.Deadline), checked at every packet and frame."""

    __slots__ = ("path", "seconds", "end")

    def __init__(self, path: str, timeout: Timeout):
        budget = Deadline.of(timeout)
        self.path, self.seconds, self.end = path, budget.seconds, budget.end

    def check(self, where: str, n: Optional[int] = None) -> None:
        """DecodeTimeout past the deadline; `where` (and `n`) say where it stopped (no per-call formatting)."""
        if self.end is not None and time.monotonic() > self.end:
            raise DecodeTimeout(self.path, f"reading took longer than the {self.seconds:g} s deadline "
                                           f"(data.decode_timeout); stopped {where}{'' if n is None else f' {n}'}")

    def io_timeout(self) -> Optional[float]:
        """Seconds FFmpeg may wait in one I/O call (its interrupt callback; None: no limit)."""
        return None if self.end is None else max(0.001, self.end - time.monotonic())


_UNLIMITED = _Deadline("", None)


def empty_clip(index: VideoIndex) -> np.ndarray:
    """The (0, H, W, 3) answer to an empty request, in display orientation when it is known."""
    size = (index.width, index.height) if (index.rotation or 0) % 2 else (index.height, index.width)
    return np.empty((0, *size, 3), dtype=np.uint8)


def _quarter_turns(frame: av.VideoFrame, path: str) -> int:
    """Counter-clockwise quarter turns that bring a decoded frame to display orientation."""
    degrees = frame.rotation
    if not degrees:
        return 0
    turns = round(degrees / 90)
    if abs(degrees - 90 * turns) > 0.01:
        log.warning("%s: display rotation of %g degrees is not a multiple of 90; frames are returned "
                    "in coded orientation", path, degrees)
        return 0
    return turns % 4


# MP4/MOV headers give the frame size, yet FFmpeg's stream probe also decodes the first frame
# (about 0.7 ms at 340x256, 10 ms at 720p). `light` opens tell the probe's decoder to skip it;
# the reader's own decoder is unaffected. What the probe would have learnt by decoding (the
# H.264 reorder delay of a stream that does not state it) can then differ, and the decoder would
# output frames out of order: the planned reader's check catches that, and the file is read
# again, and from then on, with the full probe (counted in counters["reprobes"]).
_LIGHT_PROBE_SUFFIXES = (".mp4", ".m4v", ".mov")


def _light_applies(path: str) -> bool:
    return path.lower().endswith(_LIGHT_PROBE_SUFFIXES)


def _open(path: str, light: bool = False, deadline: _Deadline = _UNLIMITED) -> av.container.InputContainer:
    counters["opens"] += 1
    light = light and _light_applies(path)
    try:
        container = av.open(path, options={"skip_frame": "all"} if light else None, timeout=deadline.io_timeout(),
                            metadata_errors="replace")  # tags in a corrupt header need not be UTF-8
    except _AV_ERRORS as err:
        deadline.check("while opening the file")
        reason = getattr(err, "strerror", None) or err
        raise DecodeError(path, f"cannot open as a video: {reason} (not a video file, or truncated?)") from err
    if not container.streams.video:
        container.close()
        raise DecodeError(path, "no video stream")
    if container.streams.video[0].codec_context is None:
        container.close()
        raise DecodeError(path, "the video stream's codec is unknown to FFmpeg (corrupt header?)")
    if light:
        ctx = container.streams.video[0].codec_context
        if not (container.format.name.startswith("mov") and ctx.width and ctx.height):
            container.close()
            return _open(path, deadline=deadline)
    return container


# ------------------------------------------------------------------ non-reference pictures


def _h264_nonref_parser(extradata: Optional[bytes]):
    """A function packet -> True (non-reference picture), False (reference) or None (unknown),
    reading nal_ref_idc of the packet's first slice NAL unit (what FFmpeg's skip_frame tests)."""
    if extradata and len(extradata) >= 7 and extradata[0] == 1:  # avcC: length-prefixed NAL units
        size = (extradata[4] & 3) + 1

        def parse(packet) -> Optional[bool]:
            data = memoryview(packet)
            n = len(data)
            pos = 0
            while pos + size < n:
                length = int.from_bytes(data[pos:pos + size], "big")
                header = data[pos + size]
                if header & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
                    return header & 0x60 == 0
                pos += size + length
            return None

        return parse

    def parse_annexb(packet) -> Optional[bool]:  # start-code delimited (MPEG-TS, raw .h264)
        data = bytes(packet)
        pos = data.find(b"\x00\x00\x01")
        while 0 <= pos < len(data) - 3:
            header = data[pos + 3]
            if header & 0x1F in (1, 5):
                return header & 0x60 == 0
            pos = data.find(b"\x00\x00\x01", pos + 3)
        return None

    return parse_annexb


def _nonref_parser(codec: str, ctx):
    if codec not in SKIP_CODECS:
        return None
    extradata = ctx.extradata
    return _h264_nonref_parser(bytes(extradata) if extradata else None)


# ------------------------------------------------------------------ index


def _scan(container, path: str, keep_packets: bool,
          deadline: _Deadline = _UNLIMITED) -> Tuple[VideoIndex, Optional[List[av.Packet]]]:
    """Demux every packet of the first video stream (no decoding); the index, and the packets
    themselves (decode order) when `keep_packets`."""
    stream = container.streams.video[0]
    ctx = stream.codec_context
    codec = ctx.codec.canonical_name if ctx.codec else ctx.name
    parse = _nonref_parser(codec, ctx)
    pts_at: List[Optional[int]] = []
    dts_at: List[Optional[int]] = []
    key_at: List[bool] = []
    shown_pos: List[int] = []
    nonref: List[Optional[bool]] = []
    kept: Optional[List[av.Packet]] = [] if keep_packets else None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the end-of-stream flush packet
                continue
            deadline.check("indexing packet", len(pts_at))
            if packet.is_corrupt:
                raise DecodeError(path, f"truncated or corrupt data in video packet "
                                        f"{len(pts_at)} (byte offset {packet.pos})")
            if not packet.is_discard:  # discarded packets are decoded for reference only
                shown_pos.append(len(pts_at))
            pts_at.append(packet.pts)
            dts_at.append(packet.dts)
            key_at.append(packet.is_keyframe)
            if parse is not None:
                nonref.append(parse(packet))
            if kept is not None:
                kept.append(packet)
    except _AV_ERRORS as err:
        deadline.check("indexing packet", len(pts_at))
        raise DecodeError(path, f"demuxing failed after {len(pts_at)} packets ({err})") from err
    if not shown_pos:
        raise DecodeError(path, "the video stream has no frames")
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = len(shown_pos) / fps if fps else None
    if stream.frames and stream.frames != len(shown_pos):
        log.debug("%s: container says %d frames, the stream has %d packets; using the packets",
                  path, stream.frames, len(shown_pos))
    width, height = ctx.width, ctx.height

    shown_pts = [pts_at[j] for j in shown_pos]
    reliable = None not in shown_pts and len(set(shown_pts)) == len(shown_pts)
    if not reliable:
        log.debug("%s: packets lack distinct pts; frames will be counted by decoding", path)
        index = VideoIndex(path, np.empty(0, np.int64), np.empty(0, np.int64), [], [], width, height,
                           fps, duration, codec, reliable=False, num_packets=len(pts_at))
        return index, kept
    order = np.argsort(np.asarray(shown_pts, dtype=np.int64), kind="stable")
    decode_pos = np.asarray(shown_pos, dtype=np.int64)[order]
    key_index = np.flatnonzero(np.asarray(key_at, dtype=bool)[decode_pos])
    key_pos = decode_pos[key_index].tolist()
    index = VideoIndex(
        path, np.asarray(shown_pts, dtype=np.int64)[order], key_index.astype(np.int64),
        [pts_at[j] for j in key_pos], [dts_at[j] for j in key_pos],
        width, height, fps, duration, codec, reliable=True,
        num_packets=len(pts_at), decode_pos=decode_pos, key_pos=key_pos,
        pts_at=np.asarray([_NO_PTS if p is None else p for p in pts_at], dtype=np.int64),
        nonref=np.asarray([bool(x) for x in nonref], dtype=bool) if parse is not None else None)
    index.pts_to_index = {int(p): i for i, p in enumerate(index.pts)}
    index.time_base = stream.time_base
    return index, kept


# Per-process LRU of indices, keyed by (path, mtime_ns, size): a changed file gets a new one.
# It holds plain Python/numpy data only (no FFmpeg objects), so forked workers may inherit it.
_index_cache: "collections.OrderedDict[tuple, VideoIndex]" = collections.OrderedDict()


def clear_index_cache() -> None:
    _index_cache.clear()


def _stat(path: str) -> tuple:
    """The cache key (path, mtime, size) of a video file; DecodeError when it is not one."""
    st = video_file_stat(path)
    return (path, st.st_mtime_ns, st.st_size)


def _cache_get(key: tuple) -> Optional[VideoIndex]:
    index = _index_cache.get(key)
    if index is not None:
        _index_cache.move_to_end(key)
    return index


def _cache_put(key: tuple, index: VideoIndex) -> None:
    _index_cache[key] = index
    _index_cache.move_to_end(key)
    while len(_index_cache) > INDEX_CACHE_SIZE:
        _index_cache.popitem(last=False)


def get_index(path: PathLike, timeout: Timeout = None) -> VideoIndex:
    """The (cached) packet index of `path`; rebuilt when the file's mtime or size changes.
    `timeout`: seconds (or a running Deadline) the demux pass may take; past it, DecodeTimeout."""
    path = os.path.abspath(os.fspath(path))
    key = _stat(path)
    index = _cache_get(key)
    if index is None:
        deadline = _Deadline(path, timeout)
        with _open(path, light=True, deadline=deadline) as container:
            index, _ = _scan(container, path, keep_packets=False, deadline=deadline)
        _cache_put(key, index)
    return index


def _default_threads() -> int:
    # In DataLoader workers parallelism comes from the workers; FFmpeg threads would oversubscribe.
    import torch.utils.data

    return 1 if torch.utils.data.get_worker_info() is not None else 0


# ------------------------------------------------------------------ packet sources


class _MemorySource:
    """Packets held in memory (decode order): a restart is a decoder flush, no demuxer seek."""

    def __init__(self, index: VideoIndex, container, packets: List[av.Packet]):
        self.index = index
        self.container = container
        self.packets = packets
        self.ctx = container.streams.video[0].codec_context

    def start(self, key: int) -> Tuple[int, int, Iterator[av.Packet]]:
        """(decode position, lowest frame index kept, packets) to decode from keyframe `key`
        (-1: the first packet)."""
        idx = self.index
        pos, low = (idx.key_pos[key], int(idx.key_index[key])) if key >= 0 else (0, 0)
        return pos, low, itertools.islice(self.packets, pos, None)

    def close(self) -> None:
        pass  # the caller owns the container


class _SeekSource:
    """Packets demuxed from the file, with demuxer seeks to keyframes (files too large to hold)."""

    def __init__(self, index: VideoIndex, deadline: _Deadline = _UNLIMITED):
        self.index = index
        self.deadline = deadline
        self.container = None
        self.fresh = False
        self.ctx = None

    def _reopen(self) -> None:
        self.close()
        self.container = _open(self.index.path, light=self.index.light_probe, deadline=self.deadline)
        self.ctx = self.container.streams.video[0].codec_context
        self.fresh = True

    def _demux(self) -> Iterator[av.Packet]:
        self.fresh = False
        try:
            for packet in self.container.demux(self.container.streams.video[0]):
                if packet.size:
                    yield packet
        except _AV_ERRORS as err:
            self.deadline.check("while reading packets")
            raise DecodeError(self.index.path, f"reading packets failed ({err})") from err

    def start(self, key: int) -> Tuple[int, int, Iterator[av.Packet]]:
        idx = self.index
        if self.container is None:
            self._reopen()
        if key >= 0:
            stream = self.container.streams.video[0]
            target_index = int(idx.key_index[key])
            targets = [idx.key_pts[key]]
            if idx.key_dts[key] is not None and idx.key_dts[key] < idx.key_pts[key]:
                targets.append(idx.key_dts[key])  # demuxers that index by dts (mp4) need this one
            for target in targets:
                self.fresh = False
                try:
                    self.container.seek(int(target), stream=stream, backward=True, any_frame=False)
                    packets = self._demux()
                    first, landed = self._first_keyframe(packets, target_index)
                except _AV_ERRORS as err:
                    log.debug("%s: seek to pts %s failed (%s)", idx.path, target, err)
                    continue
                if first is not None:
                    return int(idx.decode_pos[landed]), landed, itertools.chain([first], packets)
                log.debug("%s: seek to pts %s found no keyframe <= frame %d", idx.path, target, target_index)
        if not self.fresh:
            self._reopen()  # decoding from the first packet is always exact
        return 0, 0, self._demux()

    def _first_keyframe(self, packets: Iterator[av.Packet], target_index: int) -> Tuple[Optional[av.Packet], int]:
        """Skip to the first keyframe packet after a seek (inexact demuxers such as MPEG-TS land
        anywhere); return it and its frame index if that is at or before `target_index`."""
        for packet in packets:
            landed = self.index.pts_to_index.get(packet.pts)
            if landed is None or landed > target_index:
                break
            if packet.is_keyframe:
                return packet, landed
        return None, -1

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


# ------------------------------------------------------------------ planned decoding


def _plan(index: VideoIndex, wanted: List[int], strategy: str, cost: np.ndarray) -> List[Tuple[int, List[int]]]:
    """Group the wanted frames (sorted) into runs [(keyframe number or -1, frames)]: each run
    restarts the decoder at its keyframe and decodes forward through its frames. `cost[j]`:
    frames decoded by sending packets 0..j-1 (prefix sums; skipped pictures cost nothing)."""
    runs: List[Tuple[int, List[int]]] = []
    fed = 0  # decode position the decoder would go on from
    for w in wanted:
        key = int(np.searchsorted(index.key_index, w, side="right")) - 1
        pos = int(index.decode_pos[w])
        if not runs:
            new = True
            if strategy == "forward":
                key = -1
        elif strategy == "seek":
            new = True
        elif strategy == "forward":
            new = False
        else:
            key_pos = index.key_pos[key] if key >= 0 else 0
            new = (key >= 0 and key != runs[-1][0] and key_pos >= fed
                   and cost[key_pos] - cost[fed] > RESTART_COST_FRAMES)
        if new:
            runs.append((key, [w]))
            fed = pos + 1
        else:
            runs[-1][1].append(w)
            fed = max(fed, pos + 1)
    return runs


class _Reader:
    """Decodes the wanted frames (sorted, distinct) of one file into one uint8 array."""

    def __init__(self, index: VideoIndex, wanted: List[int], threads: int, deadline: _Deadline = _UNLIMITED):
        self.index = index
        self.deadline = deadline
        self.turns: Optional[int] = None  # display rotation, read from the first frame
        self.path = index.path
        self.wanted = wanted
        self.row = {w: i for i, w in enumerate(wanted)}
        self.threads = threads
        self.out: Optional[np.ndarray] = None
        self.converter = av.video.reformatter.VideoReformatter()  # one swscale context, reused
        self.sws_threads = 1 if threads == 1 else 0

    def rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """The decoded frame as uint8 (H, W, 3) RGB in display orientation."""
        if self.turns is None:
            self.turns = self.index.rotation = _quarter_turns(frame, self.path)
        rgb = self.converter.reformat(frame, format="rgb24", threads=self.sws_threads).to_ndarray()
        return np.rot90(rgb, self.turns) if self.turns else rgb

    def store(self, i: int, frame: av.VideoFrame) -> None:
        rgb = self.rgb(frame)
        if self.out is None:
            self.out = np.empty((len(self.wanted),) + rgb.shape, dtype=np.uint8)
        elif rgb.shape != self.out.shape[1:]:
            raise DecodeError(self.path, f"frames change size mid-stream ({self.out.shape[1:]} then "
                                         f"{rgb.shape} at frame {i})")
        self.out[self.row[i]] = rgb

    def configure(self, ctx) -> None:
        ctx.thread_type = "AUTO"
        ctx.thread_count = self.threads

    def decode(self, ctx, packet: Optional[av.Packet]) -> list:
        try:
            return ctx.decode(packet)
        except _AV_ERRORS as err:
            self.deadline.check("while decoding")
            if packet is None:
                raise DecodeError(self.path, f"cannot drain the decoder ({err})") from err
            raise DecodeError(self.path, f"cannot decode the packet with pts {packet.pts} ({err})") from err

    # -- planned: restart at keyframes, skip what is not needed, check every output frame

    def read_planned(self, source, strategy: str, skip_nonref: bool) -> np.ndarray:
        index = self.index
        n = index.num_packets
        is_wanted = np.zeros(n, dtype=bool)
        is_wanted[index.decode_pos[self.wanted]] = True
        skipping = skip_nonref and index.nonref is not None
        skipped = index.nonref & ~is_wanted if skipping else np.zeros(n, dtype=bool)
        cost = np.concatenate([[0], np.cumsum(~skipped)])
        self.is_wanted = is_wanted.tolist()
        self.decode_pos = index.decode_pos.tolist()  # lists: fast to index one item at a time
        self.pts_at = index.pts_at.tolist()
        self.skipped = skipped.tolist()
        self.skipping = skipping
        runs = _plan(index, self.wanted, strategy, cost)
        ctx = None
        dirty = False  # the decoder holds state from an earlier run
        for k, (key, frames) in enumerate(runs):
            pos, low, packets = source.start(key)
            if source.ctx is not ctx:
                ctx = source.ctx
                self.configure(ctx)
                dirty = False
            if dirty:
                ctx.flush_buffers()
            if pos > 0:
                counters["seeks"] += 1
            self._run(ctx, pos, low, packets, frames)
            dirty = True
        return self.out

    def _run(self, ctx, start: int, low: int, packets: Iterator[av.Packet], frames: List[int]) -> None:
        index = self.index
        pts_to_index = index.pts_to_index
        decode_pos = self.decode_pos
        pts_at = self.pts_at
        is_wanted, skipped, skipping = self.is_wanted, self.skipped, self.skipping
        num_frames = len(index.pts)
        pending = set(frames)
        last = max(decode_pos[w] for w in frames)
        expect = low  # the next frame the decoder must output (presentation order)
        mode = None
        draining = False
        j = start
        sent = nskip = 0

        def accept(frame: av.VideoFrame) -> None:
            nonlocal expect
            i = pts_to_index.get(frame.pts)
            if i is None:
                raise _IndexMismatch(f"the decoder gave a frame with pts {frame.pts}, which no packet has")
            if i < low:
                return  # a leading (open-GOP) picture decoded after a restart: not ours to keep
            # frames the decoder skips, or that precede this run's first packet, never come out;
            # nor, once the decoder is drained, those whose packets were not sent
            while expect < num_frames and (skipped[decode_pos[expect]] or decode_pos[expect] < start
                                           or (draining and decode_pos[expect] > j)):
                expect += 1
            if i != expect:
                raise _IndexMismatch(f"expected frame {expect}, the decoder gave frame {i}")
            expect += 1
            if i in pending:
                self.store(i, frame)
                pending.discard(i)

        check = self.deadline.check
        try:
            for packet in packets:
                check("at packet", j)
                pts = packet.pts
                if pts_at[j] != (_NO_PTS if pts is None else pts):
                    raise _IndexMismatch(f"packet {j} has pts {packet.pts}, the index says {pts_at[j]}")
                if skipping and mode is not is_wanted[j]:
                    mode = is_wanted[j]
                    ctx.skip_frame = "DEFAULT" if mode else "NONREF"
                sent += 1
                nskip += skipped[j]
                decoded = self.decode(ctx, packet)
                counters["frames"] += len(decoded)
                for frame in decoded:
                    accept(frame)
                if not pending:
                    return
                if j >= last:
                    break
                j += 1
            draining = True
            decoded = self.decode(ctx, None)  # drain: the frames the decoder still holds
            counters["frames"] += len(decoded)
            for frame in decoded:
                accept(frame)
        finally:
            counters["packets"] += sent
            counters["skipped"] += nskip
            if skipping and mode is not True:
                ctx.skip_frame = "DEFAULT"
        if pending:
            raise _IndexMismatch(f"the decoder never gave frame {min(pending)}")

    # -- sequential: decode everything from the start and count (the definition)

    def read_sequential(self) -> np.ndarray:
        index = self.index
        need = set(self.wanted)
        last = self.wanted[-1] if self.wanted else None
        count = 0
        keys: List[int] = []
        with _open(self.path, deadline=self.deadline) as container:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            self.configure(ctx)

            def frames() -> Iterator[av.VideoFrame]:
                try:
                    for packet in container.demux(stream):
                        if packet.size:
                            yield from self.decode(ctx, packet)
                except _AV_ERRORS as err:  # demuxing errors
                    self.deadline.check("near frame", count)
                    raise DecodeError(self.path, f"reading packets failed near frame {count} ({err})") from err
                yield from self.decode(ctx, None)

            gen = frames()
            try:
                for frame in gen:
                    self.deadline.check("at frame", count)
                    counters["frames"] += 1
                    if frame.key_frame:
                        keys.append(count)
                    if count in need:
                        self.store(count, frame)
                    count += 1
                    if last is not None and count > last:
                        return self.out
            finally:
                gen.close()  # no paused generator (holding FFmpeg frames) outlives the container
        index.counted = count
        index.counted_keys = keys
        if index.reliable and index.counted != len(index.pts):
            index.reliable = False
        if last is not None:
            raise FrameIndexError(index.path, min(w for w in need if w >= count), count)
        return self.out


def read_video(path: PathLike, indices: np.ndarray, *, threads: Optional[int] = None,
               strategy: str = "auto", skip_nonref: bool = True, timeout: Timeout = None) -> np.ndarray:
    """Frames `indices` (0-based) of a video file as a (T, H, W, 3) uint8 array.

    `strategy`: "auto" (plan restarts at keyframes vs decoding forward), "seek" (restart before
    every wanted frame), "forward" (never restart), "sequential" (decode from the start
    counting frames); all exact. `skip_nonref`: let the decoder skip non-reference pictures
    that no wanted frame needs (H.264); the wanted frames are bit-identical either way.
    `timeout`: seconds the whole read may take, or a running Deadline (None: no limit); past it,
    DecodeTimeout.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    path = os.path.abspath(os.fspath(path))
    deadline = _Deadline(path, timeout)
    key = _stat(path)
    if threads is None:
        threads = _default_threads()
    indices = np.asarray(indices, dtype=np.int64)
    index = _cache_get(key)
    in_memory = key[2] <= IN_MEMORY_MAX_BYTES and strategy != "sequential"
    wanted = inverse = frames = None
    for attempt in range(2):  # a second attempt only after a mismatch with a light open
        light = index.light_probe if index is not None else True
        container = packets = None
        try:
            if index is None or (in_memory and index.reliable):
                container = _open(path, light=light, deadline=deadline)
                scanned, packets = _scan(container, path, keep_packets=in_memory, deadline=deadline)
                if index is None or scanned.num_packets != index.num_packets:
                    scanned.light_probe = light
                    index = scanned
                    _cache_put(key, index)
                if not in_memory:
                    container.close()
                    container = None
            if wanted is None:
                if indices.size == 0:
                    return empty_clip(index)
                wanted, inverse = np.unique(indices, return_inverse=True)
                if wanted[0] < 0:
                    raise FrameIndexError(index.path, int(wanted[0]), index.num_frames)
                num_frames = index.num_frames
                if num_frames is not None and wanted[-1] >= num_frames:
                    raise FrameIndexError(index.path, int(wanted[-1]), num_frames)
            if not index.reliable or strategy == "sequential":
                break
            source = (_MemorySource(index, container, packets) if container is not None
                      else _SeekSource(index, deadline))
            try:
                frames = _Reader(index, wanted.tolist(), threads, deadline).read_planned(source, strategy, skip_nonref)
                break
            except _IndexMismatch as err:
                if light and _light_applies(path):
                    log.info("%s: %s; trying again with FFmpeg's full stream probe", index.path, err)
                    counters["reprobes"] += 1
                    index.light_probe = False
                    continue
                log.warning("%s: %s; decoding this file from the start from now on", index.path, err)
                counters["fallbacks"] += 1
                index.reliable = False
                break
            finally:
                source.close()
        finally:
            if container is not None:
                container.close()
    if frames is None:
        frames = _Reader(index, wanted.tolist(), threads, deadline).read_sequential()
    if len(wanted) == len(indices) and np.array_equal(wanted, indices):
        return frames
    return frames[inverse]


def iter_frames(path: PathLike, wanted: Optional[Iterable[int]] = None, *, threads: Optional[int] = None,
                timeout: Timeout = None) -> Iterator[Tuple[int, np.ndarray]]:
    """Frames of a video file in presentation order, decoded once from the start (a long video
    in one pass, with only the current frame in memory): ``(index, uint8 (H, W, 3))``. With
    ``wanted`` (sorted indices), only those frames are converted to RGB and yielded, and decoding
    stops after the last. The frames equal :func:`read_video`'s: counting the decoder's output
    from the start is its definition. Raises DecodeError / DecodeTimeout naming the file."""
    path = os.path.abspath(os.fspath(path))
    budget = Deadline.of(timeout)
    deadline = _Deadline(path, budget)
    need = None if wanted is None else iter(wanted)
    target = -1 if need is None else next(need, None)
    if target is None:
        return
    index = get_index(path, budget)  # cached per process: the caller has usually probed the file
    reader = _Reader(index, [], _default_threads() if threads is None else threads, deadline)
    count = 0
    with _open(path, deadline=deadline) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        reader.configure(ctx)
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets, None)
            except _AV_ERRORS as err:
                deadline.check("near frame", count)
                raise DecodeError(path, f"reading packets failed near frame {count} ({err})") from err
            if packet is not None and not packet.size:
                continue
            for frame in reader.decode(ctx, packet):
                deadline.check("at frame", count)
                if target < 0 or count == target:
                    yield count, reader.rgb(frame)
                    if need is not None:
                        target = next(need, None)
                        if target is None:
                            return
                count += 1
            if packet is None:
                break
    if need is not None:
        raise FrameIndexError(path, target, count)


def probe_video(path: PathLike, timeout: Timeout = None) -> VideoInfo:
    """VideoInfo of a video file; the frame count comes from the packet index (or a full decode).
    `timeout`: seconds (or a running Deadline) the probe may take; past it, DecodeTimeout."""
    deadline = Deadline.of(timeout)
    index = get_index(path, deadline)
    if index.num_frames is None:
        _Reader(index, [], _default_threads(), _Deadline(index.path, deadline)).read_sequential()
    return VideoInfo(
        num_frames=int(index.num_frames),
        fps=index.fps,
        width=index.width,
        height=index.height,
        keyframes=tuple(int(k) for k in (index.key_index if index.reliable else index.counted_keys)),
        duration=index.duration,
        codec=index.codec,
    )
