"""Live recognition on a stream (``tcpnet stream``): a camera, a network URL, a pipe or a file.

Two threads. The *decoder* thread reads the source with PyAV and never waits for the model: it
keys frames by segment of one :class:`~tcpnet.apps.windows.WindowGrid` (the frame of segment
``j`` is the first frame whose stream time is at or after ``segment_time(j)``, the segment's
centre; a frame that passes several centres at once, after a gap, serves each of them) and hands
those frames, as uint8 RGB, to a bounded :class:`FrameQueue` of one window's worth (T frames).
When the queue is full the oldest frame is dropped: the newest frames win.

The *model* thread (the caller's) takes whatever has arrived, and scores only the newest window
whose T frames are all there. Older complete windows are stale (a newer one is ready, so they are
more than a stride behind) and are skipped; their frames that no emitted window uses are dropped.
So when the model is slower than the stride the output skips windows instead of drifting, and the
latency (wall time from the arrival of a window's last frame to its result) stays about one
model step plus one stride. Every frame dropped is counted: ``sampled == processed + dropped +
unused`` (``unused``: frames still waiting for a window when the stream ended).

A file is played at its own pace (``realtime``, frames released at their timestamps); with
``realtime=False`` it is read as fast as possible and, as nothing is live, nothing is dropped:
the decoder waits for the model and every window is scored.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import av
import numpy as np
import torch
from torch import nn

from tcpnet.apps.windows import FrameFeatureCache, WindowGrid
from tcpnet.data.readers.pyav import _quarter_turns

logger = logging.getLogger(__name__)

__all__ = ["StreamError", "StreamOptions", "Source", "parse_source", "FrameQueue", "WindowResult",
           "StreamStats", "run_stream", "format_result"]

# ``FORMAT:TARGET`` sources read through an FFmpeg input device (camera or screen)
DEVICE_FORMATS = ("v4l2", "avfoundation", "dshow", "vfwcap", "x11grab", "gdigrab", "kmsgrab", "android_camera")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_AV_ERRORS = (av.error.FFmpegError, OSError)


class StreamError(OSError):
    """A source that cannot be read: the message names it and says why (one line)."""


@dataclass
class StreamOptions:
    """What ``tcpnet stream`` is asked: windows, output, pacing and patience.

    ``realtime`` (files only; None = True) releases a file's frames at their timestamps;
    ``timeout`` is how long to wait for the first frame (and, once frames came, for the next one
    before the stream counts as ended); ``out`` writes the stream with the current label drawn on
    it; ``queue_size`` defaults to T (one window's frames)."""

    window: float = 2.0
    stride: float = 0.5
    topk: int = 5
    timeout: float = 10.0
    realtime: Optional[bool] = None
    out: Optional[str] = None
    queue_size: Optional[int] = None
    amp: Optional[str] = None


@dataclass(frozen=True)
class Source:
    """A parsed SOURCE: what to hand ``av.open`` and how to treat it."""

    name: str  # as the user wrote it, for messages
    url: str
    format: Optional[str] = None
    kind: str = "file"  # file | url | device | pipe


def parse_source(source: str) -> Source:
    """``-`` (stdin), ``/dev/videoN`` (v4l2), ``FORMAT:TARGET`` for an FFmpeg input device
    (``avfoundation:0``, ``dshow:video=Integrated Camera``, ``x11grab::0.0``), a URL FFmpeg reads
    (``rtsp://``, ``udp://``, ``tcp://``, ``http://`` ...), else a file, which must exist."""
    if source == "-":
        return Source(source, "pipe:0", kind="pipe")
    if source.startswith("/dev/video"):
        return Source(source, source, "v4l2", kind="device")
    fmt, sep, target = source.partition(":")
    if sep and fmt in DEVICE_FORMATS and not _URL.match(source):
        return Source(source, target, fmt, kind="device")
    if _URL.match(source):
        return Source(source, source, kind="url")
    if not os.path.isfile(source):
        raise StreamError(f"{source}: no such file (a stream is '-', /dev/videoN, FORMAT:DEVICE or a URL)")
    return Source(source, source, kind="file")


@dataclass
class Sample:
    """One segment's frame on its way to the model."""

    segment: int
    rgb: np.ndarray
    time: float  # stream time (s)
    arrival: float  # wall clock (time.monotonic) when the decoder had it


class FrameQueue:
    """Bounded hand-over from the decoder to the model. ``put`` never blocks: when full, the
    oldest item is dropped and counted (``evicted``), unless ``lossless`` (then it waits)."""

    def __init__(self, maxsize: int, lossless: bool = False) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize, self.lossless = int(maxsize), lossless
        self.evicted = 0
        self.closed = False
        self.error: Optional[BaseException] = None
        self._items: Deque[Any] = collections.deque()
        self._cond = threading.Condition()

    def put(self, item: Any) -> None:
        with self._cond:
            while self.lossless and len(self._items) >= self.maxsize and not self.closed:
                self._cond.wait(0.1)
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.evicted += 1
            self._items.append(item)
            self._cond.notify_all()

    def take(self, timeout: float) -> List[Any]:
        """Everything queued (oldest first), waiting up to ``timeout`` s for at least one item."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def empty(self) -> bool:
        """Nothing is waiting to be taken (a snapshot: the decoder may put an item right after)."""
        with self._cond:
            return not self._items

    def close(self, error: Optional[BaseException] = None) -> None:
        """No more items (``error``: why the decoder stopped, if it failed)."""
        with self._cond:
            self.closed, self.error = True, error
            self._cond.notify_all()


# ------------------------------------------------------------------------------- decoder
def no_frame_error(name: str, timeout: float, why: str) -> StreamError:
    """The one error of a source that never delivered a frame."""
    return StreamError(f"{name}: no frame within {timeout:g} s ({why})")


def _open(source: Source, options: StreamOptions, stop: threading.Event) -> av.container.InputContainer:
    """Open the source; a URL that refuses (not up yet) is retried until ``options.timeout``.

    No PyAV ``timeout``: its interrupt callback takes the GIL from inside FFmpeg, which crashes
    the interpreter at exit while this (daemon) thread waits on a silent source. The model
    thread keeps the time instead, and a thread blocked in FFmpeg ends with the process."""
    deadline = time.monotonic() + options.timeout
    while True:
        try:
            container = av.open(source.url, format=source.format, metadata_errors="replace")
        except _AV_ERRORS as err:
            reason = getattr(err, "strerror", None) or str(err)
            if source.kind == "url" and time.monotonic() >= deadline:
                raise no_frame_error(source.name, options.timeout, f"last error: {reason}") from err
            if source.kind != "url" or stop.is_set():
                raise StreamError(f"{source.name}: cannot open ({reason})") from err
            logger.debug("%s: %s; retrying", source.name, reason)
            time.sleep(0.25)
            continue
        if not container.streams.video:
            container.close()
            raise StreamError(f"{source.name}: no video stream")
        return container


def _decoded(container: av.container.InputContainer, name: str) -> Iterator[av.VideoFrame]:
    """The video frames of the first video stream; a packet that does not decode is skipped
    (live streams start mid-GOP and lose packets) and logged."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    bad = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError as err:
            bad += 1
            logger.debug("%s: skipped a packet that does not decode (%s)", name, err)
            continue
        yield from frames
    if bad:
        logger.info("%s: %d packet(s) did not decode and were skipped", name, bad)


class Decoder(threading.Thread):
    """Reads the source, keys frames by segment and puts them in the queue (never waiting for
    the model, unless the queue is lossless); every frame also goes to ``sink`` (``--out``)."""

    def __init__(self, source: Source, grid: WindowGrid, queue: FrameQueue, options: StreamOptions,
                 sink: Optional[Callable[[np.ndarray], None]] = None) -> None:
        super().__init__(name="tcpnet-stream-decoder", daemon=True)
        self.source, self.grid, self.queue, self.options, self.sink = source, grid, queue, options, sink
        self.realtime = source.kind == "file" and options.realtime is not False
        self.stop = threading.Event()
        self.received = 0  # frames decoded
        self.sampled = 0  # frames put in the queue (one per segment)
        self.fps: Optional[float] = None
        self.last_arrival: Optional[float] = None
        self.stream_time = 0.0

    def run(self) -> None:
        error: Optional[BaseException] = None
        logger.info("%s: opening (up to %g s for the first frame)", self.source.name, self.options.timeout)
        try:
            container = _open(self.source, self.options, self.stop)
            try:
                rate = container.streams.video[0].average_rate
                self.fps = float(rate) if rate else None
                self._read(container)
            finally:
                container.close()
        except BaseException as err:  # noqa: BLE001 - handed to the model thread, which reports it
            error = err
        self.queue.close(error)

    def _read(self, container: av.container.InputContainer) -> None:
        t0: Optional[float] = None
        wall0 = 0.0
        turns: Optional[int] = None
        segment = 0
        for n, frame in enumerate(_decoded(container, self.source.name)):
            if self.stop.is_set():
                return
            t = frame.time if frame.time is not None else n / (self.fps or 25.0)
            if t0 is None:
                t0, wall0 = t, time.monotonic()
                turns = _quarter_turns(frame, self.source.name)
            if t - t0 < self.stream_time - 1.0:  # the clock jumped back (restarted encoder, wrapped pts)
                t0 = t - self.stream_time - 1.0 / (self.fps or 25.0)
                logger.info("%s: timestamps jumped back; stream time continues from %.2f s", self.source.name,
                            self.stream_time)
            t -= t0
            if self.realtime:
                delay = wall0 + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            now = time.monotonic()
            self.received, self.last_arrival, self.stream_time = self.received + 1, now, t
            rgb = None
            # after a gap longer than a window, only the last window's segments can still be used
            segment = max(segment, int(t / self.grid.segment + 0.5 + 1e-6) - self.grid.num_segments)
            while self.grid.segment_time(segment) <= t + 1e-6:
                rgb = _rgb(frame, turns) if rgb is None else rgb
                self.queue.put(Sample(segment, rgb, t, now))
                self.sampled += 1
                segment += 1
            if self.sink is not None:
                self.sink(_rgb(frame, turns) if rgb is None else rgb)


def _rgb(frame: av.VideoFrame, turns: Optional[int]) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


# ------------------------------------------------------------------------------- model side
@dataclass
class WindowResult:
    """One emitted window: its number, span (stream seconds), top-k and latency."""

    window: int
    start: float
    end: float
    topk: List[Dict[str, Any]]
    latency_ms: float
    dropped_so_far: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class StreamStats:
    """Counters of one run, reported at the end (and ``dropped`` with every window)."""

    received: int = 0
    sampled: int = 0
    processed: int = 0
    dropped: int = 0
    unused: int = 0
    windows: int = 0
    windows_skipped: int = 0
    stream_seconds: float = 0.0
    latencies_ms: List[float] = field(default_factory=list)
    out_frames: int = 0
    out_dropped: int = 0

    def summary(self) -> Dict[str, Any]:
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        pct = (lambda q: round(float(np.percentile(lat, q)), 1) if lat.size else None)  # noqa: E731
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(latency_p50_ms=pct(50), latency_p95_ms=pct(95), latency_max_ms=pct(100))
        return out

    def line(self) -> str:
        s = self.summary()
        ms = (lambda v: "-" if v is None else f"{v:.0f}")  # noqa: E731
        return (f"{s['windows']} windows ({s['windows_skipped']} skipped), latency p50 {ms(s['latency_p50_ms'])} ms "
                f"p95 {ms(s['latency_p95_ms'])} ms; frames: {s['received']} received, {s['sampled']} sampled, "
                f"{s['processed']} processed, {s['dropped']} dropped; {s['stream_seconds']:.1f} s of stream")


class Scheduler:
    """Which window to score next, from the frames that arrived: the newest complete one
    (every complete one when ``lossless``); frames and windows left behind are counted."""

    def __init__(self, grid: WindowGrid, cache: FrameFeatureCache, stats: StreamStats, lossless: bool) -> None:
        self.grid, self.cache, self.stats, self.lossless = grid, cache, stats, lossless
        self.next_window = 0
        self.newest = -1
        self.pending: Dict[int, Sample] = {}
        self.arrival: Dict[int, float] = {}
        self.used: Set[int] = set()

    def add(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            self.pending[s.segment] = s
            self.newest = max(self.newest, s.segment)

    def due(self) -> List[int]:
        """The windows to score now (their frames added to the cache), oldest first."""
        t, step = self.grid.num_segments, self.grid.step
        last = (self.newest - t + 1) // step if self.newest >= t - 1 else -1
        if last < self.next_window:
            return []
        first = last if not self.lossless else self.next_window
        self.stats.windows_skipped += first - self.next_window
        self._forget_before(first * step)
        wanted = [j for j in sorted(self.pending) if j >= first * step]
        self.stats.dropped += len(self.pending) - len(wanted)
        if wanted:
            self.cache.add(wanted, torch.from_numpy(np.stack([self.pending[j].rgb for j in wanted])))
            self.arrival.update((j, self.pending[j].arrival) for j in wanted)
        self.pending.clear()
        windows = []
        for k in range(first, last + 1):
            if all(j in self.cache for j in self.grid.window_segments(k)):
                windows.append(k)
            else:  # a frame of it was dropped from the full queue
                self.stats.windows_skipped += 1
        self.next_window = last + 1
        return windows

    def prefetch(self) -> int:
        """While no window is due: run a per-frame backbone on the arrived frames of the window that
        completes next (segments from its start on), so that window then waits only for its last
        frame. Frames of windows that are already complete are left to :meth:`due`. Returns the
        number of frames computed."""
        if not self.cache.shared or not self.pending:
            return 0
        t, step = self.grid.num_segments, self.grid.step
        upcoming = max(self.next_window, (self.newest - t + 1) // step + 1)  # the next window to complete
        keys = [j for j in sorted(self.pending) if j >= upcoming * step and j not in self.cache]
        if keys:
            self.cache.add(keys, torch.from_numpy(np.stack([self.pending[j].rgb for j in keys])))
            before = self.cache.backbone_frames
            self.cache.compute(keys)
            return self.cache.backbone_frames - before
        return 0

    def mark_used(self, k: int) -> float:
        """Window ``k`` was scored: count its new frames as processed; return its last frame's arrival."""
        segments = self.grid.window_segments(k)
        new = [j for j in segments if j not in self.used]
        self.used.update(new)
        self.stats.processed += len(new)
        return self.arrival[segments[-1]]

    def _forget_before(self, segment: int) -> None:
        old = [j for j in self.arrival if j < segment]
        self.stats.dropped += sum(1 for j in old if j not in self.used)
        for j in old:
            del self.arrival[j]
        self.used = {j for j in self.used if j >= segment}
        self.cache.drop_before(segment)

    def finish(self) -> None:
        """End of stream: frames that no window used are ``unused``."""
        self.stats.unused += len(self.pending) + sum(1 for j in self.arrival if j not in self.used)
        self.pending.clear()


def _topk(logits: torch.Tensor, k: int, names: Optional[Sequence[str]], multi_label: bool) -> List[Dict[str, Any]]:
    probs = logits.sigmoid() if multi_label else logits.softmax(-1)
    values, indices = torch.sort(probs, descending=True, stable=True)
    return [{"label": int(c), "name": names[int(c)] if names is not None else None, "prob": round(float(p), 6)}
            for p, c in zip(values[:k], indices[:k])]


def format_result(r: WindowResult, as_json: bool = False) -> str:
    """A window as one line: JSON (``--json``) or text."""
    if as_json:
        return json.dumps(r.to_dict())
    labels = ", ".join(f"{t['name'] if t['name'] is not None else 'class ' + str(t['label'])} {t['prob']:.2f}"
                       for t in r.topk)
    return (f"[{r.start:8.2f} - {r.end:8.2f} s] window {r.window}: {labels}  "
            f"(latency {r.latency_ms:.0f} ms, dropped {r.dropped_so_far})")


# ------------------------------------------------------------------------------- the loop
class _Run:
    """The state of one ``run_stream``: model side, decoder, optional writer."""

    def __init__(self, source: Source, model: nn.Module, options: StreamOptions,
                 class_names: Optional[Sequence[str]]) -> None:
        self.source, self.options = source, options
        self.grid = WindowGrid(options.window, options.stride, int(model.num_segments))
        if self.grid.stride_rounded:
            logger.info("stride rounded to %g s (a whole number of %g s segments)", self.grid.stride,
                        self.grid.segment)
        self.cache = FrameFeatureCache(model, amp=options.amp)
        logger.info("%s", self.cache.describe())
        warm_up(self.cache)
        lossless = source.kind == "file" and options.realtime is False
        self.queue = FrameQueue(options.queue_size or self.grid.num_segments, lossless=lossless)
        self.stats = StreamStats()
        self.scheduler = Scheduler(self.grid, self.cache, self.stats, lossless)
        self.names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
        self.multi_label = bool(getattr(model, "multi_label", False))
        self.decoder = Decoder(source, self.grid, self.queue, options)
        self.writer = None
        if options.out:
            from tcpnet.apps.stream_out import OverlayWriter

            self.writer = OverlayWriter(options.out, fps=lambda: self.decoder.fps)
            self.decoder.sink = self.writer.put

    def wait(self) -> Tuple[List[Sample], bool]:
        """Arrived samples and whether the stream has ended; raises when it never started."""
        samples = self.queue.take(timeout=0.05)
        now, d = time.monotonic(), self.decoder
        if self.queue.closed and not samples:
            if self.queue.error is not None and d.received == 0:
                raise _one_line(self.queue.error, self.source.name)
            if self.queue.error is not None:
                logger.warning("%s: the stream stopped: %s", self.source.name, self.queue.error)
            return samples, True
        if d.received == 0 and now - self.started > self.options.timeout:
            raise no_frame_error(self.source.name, self.options.timeout, "never connected, or sent nothing")
        if d.last_arrival is not None and not samples and now - d.last_arrival > self.options.timeout:
            logger.warning("%s: no frame for %g s; ending", self.source.name, self.options.timeout)
            return samples, True
        return samples, False

    def score(self, emit: Callable[[WindowResult], None]) -> None:
        tic = time.monotonic()
        for k in self.scheduler.due():
            segments = list(self.grid.window_segments(k))
            logits = self.cache.logits([segments])[0]
            logger.debug("window %d: %.0f ms in the model thread", k, (time.monotonic() - tic) * 1000)
            arrival = self.scheduler.mark_used(k)
            topk = _topk(logits, self.options.topk, self.names, self.multi_label)
            latency = (time.monotonic() - arrival) * 1000.0
            self.stats.windows += 1
            self.stats.latencies_ms.append(latency)
            dropped = self.stats.dropped + self.queue.evicted
            result = WindowResult(k, *self.grid.window_span(k), topk, round(latency, 1), dropped)
            if self.writer is not None:
                self.writer.label = topk[0]
            emit(result)
            tic = time.monotonic()

    def loop(self, emit: Callable[[WindowResult], None]) -> None:
        self.started = time.monotonic()
        self.decoder.start()
        if self.writer is not None:
            self.writer.start()
        ended = False
        while not ended:
            samples, ended = self.wait()
            self.scheduler.add(samples)
            self.score(emit)
            if not ended and self.queue.empty():
                self.scheduler.prefetch()  # idle: the next window's frames through the backbone now

    def close(self) -> StreamStats:
        self.decoder.stop.set()
        self.queue.close()
        self.scheduler.finish()
        s, d = self.stats, self.decoder
        s.received, s.sampled, s.stream_seconds = d.received, d.sampled, d.stream_time
        s.dropped += self.queue.evicted
        s.unused += len(self.queue.take(0))
        if self.writer is not None:
            s.out_frames, s.out_dropped = self.writer.finish()
        return s


@torch.no_grad()
def warm_up(cache: FrameFeatureCache) -> None:
    """One window of blank frames through ``cache`` (keys below 0, forgotten after) before the
    stream opens: the first call of a model pays for allocations and kernel set-up (over half a
    second for ``tcp_tiny`` on CPU), which would otherwise land on the first window's latency."""
    t, size = cache.num_segments, int(cache.model.input_config.crop_size)
    keys = list(range(-t, 0))
    cache.add(keys, torch.zeros(t, size, size, 3, dtype=torch.uint8))
    cache.logits([keys])
    cache.drop_before(0)
    cache.backbone_frames = cache.windows = 0


def _one_line(err: BaseException, name: str) -> BaseException:
    if isinstance(err, (StreamError, KeyboardInterrupt)):
        return err
    text = str(err) or type(err).__name__
    return StreamError(text if text.startswith(name) else f"{name}: {text}")


def run_stream(source: str, model: nn.Module, options: Optional[StreamOptions] = None,
               emit: Optional[Callable[[WindowResult], None]] = None,
               class_names: Optional[Sequence[str]] = None) -> StreamStats:
    """Label ``source`` window by window until it ends or Ctrl-C; ``emit`` gets each
    :class:`WindowResult` as it is ready. Returns the run's :class:`StreamStats`; raises
    :class:`StreamError` (naming the source) when no frame arrives within ``options.timeout``."""
    options = options or StreamOptions()
    if options.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {options.topk}")
    if not options.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {options.timeout}")
    run = _Run(parse_source(source), model, options, class_names)
    try:
        run.loop(emit or (lambda r: None))
    except KeyboardInterrupt:
        logger.info("interrupted")
    finally:
        stats = run.close()
    return stats
