"""``tcpnet timeline``: label a long video window by window, in one pass over the file.

Windows of ``window`` seconds every ``stride`` seconds are laid on the shared grid of
:class:`~tcpnet.apps.windows.WindowGrid` (T segment centres per window, the test sampler's
frames for a clip of that length). The file is decoded once, in order, and only at the frames
some window needs (:func:`~tcpnet.data.readers.pyav.iter_frames`); the frames go into a
:class:`~tcpnet.apps.windows.FrameFeatureCache`, which runs a per-frame backbone once per
frame and other backbones once per window. Windows are scored in small batches as soon as
their last frame has been decoded, and frames no later window needs are dropped, so memory
stays bounded by a few windows whatever the length of the video.

Each window gets class probabilities (softmax; a sigmoid per class for a ``multi_label``
model), optionally smoothed over neighbouring windows (:func:`smooth_probabilities`), and runs
of windows with the same top class can be merged into segments (:func:`merge_segments`).
:func:`write_timeline` writes ``<stem>.csv``/``.json`` (and ``.segments.csv``/``.json``), the
picture ``<stem>.png`` and the self-contained page ``<stem>.html``.
"""
from __future__ import annotations

import bisect
import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch import nn

from tcpnet.apps.windows import FrameFeatureCache, Window, WindowGrid

logger = logging.getLogger(__name__)

__all__ = ["TimelineOptions", "Timeline", "Segment", "timeline_video", "timeline_videos", "score_windows",
           "window_probabilities", "smooth_probabilities", "merge_segments", "write_timeline", "output_stem",
           "json_lines", "plotted_classes", "timeline_page"]

THUMB_HEIGHT = 72  # pixels of a thumbnail in the picture and the page
PICTURE_COLORS = 256  # the PNG is stored as a palette image: a third of the size of full colour


@dataclass
class TimelineOptions:
    """How windows are laid out, scored and reported: ``window``/``stride`` in seconds, ``topk``
    classes per window, ``smooth`` (moving average over that many windows, centred; 1 = none),
    ``batch_windows`` scored together, ``frame_batch`` frames per backbone call (8: ResNet-50 at
    224 px runs 15% slower per frame in batches of 16 on a 2-core CPU), ``thumbnails`` frames
    kept for the picture, ``amp`` autocast dtype, ``progress`` bar on stderr."""

    window: float = 2.0
    stride: float = 0.5
    topk: int = 5
    smooth: int = 1
    batch_windows: int = 8
    frame_batch: int = 8
    thumbnails: int = 8
    amp: Optional[str] = None
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("topk", "smooth", "batch_windows", "frame_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        if self.thumbnails < 0:
            raise ValueError(f"thumbnails must be >= 0, got {self.thumbnails}")


@dataclass
class Segment:
    """Consecutive windows with the same top class: its ``label``/``name``, ``start``/``end`` in
    seconds, the mean probability of that class over them (``prob``) and their indices."""

    label: int
    name: str
    start: float
    end: float
    prob: float
    first_window: int
    last_window: int

    def to_dict(self) -> Dict[str, Any]:
        return {"label": self.label, "name": self.name, "start": round(self.start, 4), "end": round(self.end, 4),
                "prob": self.prob, "windows": [self.first_window, self.last_window]}


@dataclass
class Timeline:
    """The windows of one video and their logits (W, K); ``probs`` are the (smoothed)
    probabilities every output shows. ``error`` instead when the file could not be labelled."""

    video: str
    windows: List[Window] = field(default_factory=list)
    logits: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    class_names: List[str] = field(default_factory=list)
    multi_label: bool = False
    smooth: int = 1
    fps: float = 0.0
    num_frames: int = 0
    window: float = 0.0
    stride: float = 0.0
    num_segments: int = 0
    thumbnails: List[Tuple[float, np.ndarray]] = field(default_factory=list)
    backbone_frames: int = 0
    distinct_frames: int = 0
    seconds: float = 0.0
    model_name: str = ""
    how: str = ""
    error: Optional[str] = None

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0

    @property
    def probs(self) -> torch.Tensor:
        """(W, K) probabilities: softmax or sigmoid of the logits, smoothed over ``smooth`` windows."""
        return smooth_probabilities(window_probabilities(self.logits, self.multi_label), self.smooth)

    @property
    def passes_per_frame(self) -> float:
        """Backbone frames computed per distinct frame decoded (1.0 for a per-frame backbone)."""
        return self.backbone_frames / max(1, self.distinct_frames)

    def rows(self, topk: int) -> List[Dict[str, Any]]:
        """One dict per window: index, start, end, frames and the top-k classes (best first)."""
        k = min(int(topk), self.logits.shape[1])
        values, indices = torch.sort(self.probs, dim=1, descending=True, stable=True)
        return [{"index": w.index, "start": round(w.start, 4), "end": round(w.end, 4), "frames": list(w.frames),
                 "topk": [{"label": int(c), "name": self.class_names[int(c)], "prob": float(p)}
                          for p, c in zip(values[i, :k], indices[i, :k])]}
                for i, w in enumerate(self.windows)]

    def segments(self) -> List[Segment]:
        return merge_segments(self.windows, self.probs, self.class_names)

    def summary(self) -> Dict[str, Any]:
        """What the JSON file says about the run besides the windows."""
        return {"video": self.video, "model": self.model_name, "num_frames": self.num_frames, "fps": self.fps,
                "duration": round(self.duration, 4), "window": self.window, "stride": self.stride,
                "num_segments": self.num_segments, "activation": "sigmoid" if self.multi_label else "softmax",
                "smooth": self.smooth, "num_windows": len(self.windows), "computation": self.how,
                "backbone_passes_per_frame": round(self.passes_per_frame, 4), "seconds": round(self.seconds, 3)}


# ------------------------------------------------------------------------------ probabilities
def window_probabilities(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """(W, K) logits -> probabilities: a softmax per window, or a sigmoid per class (multi-label)."""
    logits = logits.float()
    return logits.sigmoid() if multi_label else logits.softmax(-1)


def smooth_probabilities(probs: torch.Tensor, n: int) -> torch.Tensor:
    """Centred moving average over ``n`` windows: window i averages windows
    ``i - (n-1)//2 .. i + n//2`` that exist (fewer at the ends, so no value is pulled towards 0)."""
    if n < 1:
        raise ValueError(f"smooth must be >= 1, got {n}")
    if n == 1 or probs.shape[0] < 2:
        return probs
    w = probs.shape[0]
    csum = torch.cat([probs.new_zeros(1, probs.shape[1]), probs.double().cumsum(0)])
    lo = (torch.arange(w) - (n - 1) // 2).clamp(min=0)
    hi = (torch.arange(w) + n // 2 + 1).clamp(max=w)
    return ((csum[hi] - csum[lo]) / (hi - lo).unsqueeze(1).double()).to(probs.dtype)


def merge_segments(windows: Sequence[Window], probs: torch.Tensor, class_names: Sequence[str]) -> List[Segment]:
    """Runs of consecutive windows with the same top class -> segments. Windows overlap, so each
    window stands for the time nearer its centre than its neighbours' centres: a segment starts
    half-way between the centres of its first window and the window before (the first starts at
    its window's start) and ends likewise (the last ends at its window's end). ``prob`` is the
    mean probability of the segment's class over its windows."""
    if not len(windows):
        return []
    top = probs.argmax(1).tolist()
    centres = [(w.start + w.end) / 2 for w in windows]
    out: List[Segment] = []
    first = 0
    for i in range(1, len(windows) + 1):
        if i < len(windows) and top[i] == top[first]:
            continue
        c = top[first]
        start = windows[0].start if first == 0 else (centres[first - 1] + centres[first]) / 2
        end = windows[-1].end if i == len(windows) else (centres[i - 1] + centres[i]) / 2
        out.append(Segment(c, class_names[c], start, end, float(probs[first:i, c].mean()), first, i - 1))
        first = i
    return out


# ------------------------------------------------------------------------------ decoding, scoring
class _Scorer:
    """Feeds decoded frames to the cache and scores windows once their last frame is in."""

    def __init__(self, cache: FrameFeatureCache, windows: Sequence[Window], batch_windows: int,
                 on_windows: Optional[Callable[[int], None]] = None) -> None:
        self.cache, self.windows, self.batch = cache, list(windows), int(batch_windows)
        self.last = [max(w.frames) for w in self.windows]
        if self.last != sorted(self.last):
            raise ValueError("windows must be in the order of their last frame")
        self.done = 0
        self.keys: List[int] = []
        self.frames: List[np.ndarray] = []
        self.logits: List[torch.Tensor] = []
        self.on_windows = on_windows

    def _flush(self) -> None:
        if self.keys:
            self.cache.add(self.keys, torch.from_numpy(np.stack(self.frames)))
            self.keys, self.frames = [], []

    def _score(self, upto: int) -> None:
        """Score windows ``done .. upto-1`` in batches, then drop the frames no later window needs."""
        self._flush()
        while self.done < upto:
            chunk = self.windows[self.done:min(upto, self.done + self.batch)]
            self.logits.append(self.cache.logits([w.frames for w in chunk]))
            self.done += len(chunk)
            if self.on_windows is not None:
                self.on_windows(len(chunk))
        if self.done < len(self.windows):
            self.cache.drop_before(min(self.windows[self.done].frames))

    def push(self, index: int, frame: np.ndarray) -> None:
        """One decoded frame; scores the windows it completes once a batch of them is ready."""
        self.keys.append(index)
        self.frames.append(frame)
        ready = bisect.bisect_right(self.last, index)
        if ready - self.done >= self.batch:
            self._score(ready - (ready - self.done) % self.batch)
        elif len(self.keys) >= self.cache.batch_size:
            self._flush()

    def finish(self) -> torch.Tensor:
        """Score what is left; the (W, K) logits of every window, in order."""
        self._score(len(self.windows))
        return torch.cat(self.logits) if self.logits else torch.empty(0, int(self.cache.model.num_classes))


def score_windows(cache: FrameFeatureCache, path: str, windows: Sequence[Window], *, batch_windows: int = 8,
                  on_frame: Optional[Callable[[int, np.ndarray], None]] = None,
                  on_windows: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Logits (W, K) of ``windows`` of the video at ``path``, decoding it once in order; each
    window is scored (``batch_windows`` at a time) as soon as its frames are in, and frames no
    later window needs are dropped. ``on_frame(index, frame)`` sees every decoded frame."""
    from tcpnet.data.readers.pyav import iter_frames

    wanted = sorted({k for w in windows for k in w.frames})
    scorer = _Scorer(cache, windows, batch_windows, on_windows)
    for index, frame in iter_frames(path, wanted):
        if on_frame is not None:
            on_frame(index, frame)
        scorer.push(index, frame)
    return scorer.finish()


# ------------------------------------------------------------------------------ one video, many
def _thumbnail_keys(windows: Sequence[Window], count: int) -> Set[int]:
    """``count`` of the decoded frames, at the centres of ``count`` equal parts of the video."""
    keys = sorted({k for w in windows for k in w.frames})
    n = min(max(0, count), len(keys))
    return {keys[int((i + 0.5) * len(keys) / n)] for i in range(n)}


def _small(frame: np.ndarray, height: int = THUMB_HEIGHT) -> np.ndarray:
    from PIL import Image

    h, w = frame.shape[:2]
    size = (max(1, round(w * height / h)), height)
    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


@dataclass
class _Run:
    """What every video of one run shares: the model, its grid and options, the class names."""

    model: nn.Module
    grid: WindowGrid
    options: TimelineOptions
    class_names: List[str]
    device: Optional[torch.device] = None


def _label_video(run: _Run, video: str) -> Timeline:
    """The timeline of one readable video (errors propagate)."""
    from tcpnet.data.clip import probe
    from tcpnet.engine.evaluate import nonfinite_message

    t0 = time.perf_counter()
    info = probe(video)
    if os.path.isdir(video) or not info.fps:
        raise ValueError(f"{video}: no frame rate (windows are in seconds: a video file is needed)")
    windows = run.grid.file_windows(int(info.num_frames), float(info.fps or 0.0))
    if not windows:
        raise ValueError(f"{video}: no frames to label")
    cache = FrameFeatureCache(run.model, batch_size=run.options.frame_batch, device=run.device, amp=run.options.amp)
    thumbs = _thumbnail_keys(windows, run.options.thumbnails)
    kept: List[Tuple[float, np.ndarray]] = []

    def keep(index: int, frame: np.ndarray) -> None:
        if index in thumbs:
            kept.append((index / float(info.fps), _small(frame)))

    from tqdm import tqdm

    with tqdm(total=len(windows), desc=Path(video).name, unit="win", disable=not run.options.progress,
              leave=False) as bar:
        logits = score_windows(cache, video, windows, batch_windows=run.options.batch_windows, on_frame=keep,
                               on_windows=bar.update)
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError(nonfinite_message([video], 1))
    return Timeline(video=video, windows=windows, logits=logits, class_names=run.class_names,
                    multi_label=bool(getattr(run.model, "multi_label", False)), smooth=run.options.smooth,
                    fps=float(info.fps), num_frames=int(info.num_frames), window=run.grid.window,
                    stride=run.grid.stride, num_segments=run.grid.num_segments, thumbnails=kept,
                    backbone_frames=cache.backbone_frames, distinct_frames=len({k for w in windows for k in w.frames}),
                    seconds=time.perf_counter() - t0, model_name=_model_name(run.model), how=cache.describe())


def _model_name(model: nn.Module) -> str:
    return getattr(model, "model_name", None) or type(model).__name__


def _class_names(model: nn.Module, class_names: Optional[Sequence[str]]) -> List[str]:
    k = int(model.num_classes)
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    if names is None:
        return [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a model with {k} classes")
    return [str(n) for n in names]


def timeline_videos(model: nn.Module, videos: Sequence[Union[str, os.PathLike]],
                    options: Optional[TimelineOptions] = None, *, class_names: Optional[Sequence[str]] = None,
                    device: Optional[torch.device] = None) -> Iterator[Timeline]:
    """One :class:`Timeline` per video, in order, as each is done (a generator: the caller writes
    a video's files before the next is decoded). A file that cannot be read or labelled gives a
    Timeline with ``error`` set (naming the file) and the others go on. How windows are computed
    and any rounding of the stride are logged once."""
    from tcpnet.data.errors import DecodeError

    options = options or TimelineOptions()
    grid = WindowGrid(options.window, options.stride, int(model.num_segments))
    if grid.stride_rounded:
        logger.info("stride %gs rounded to %gs: a whole number of %gs segments (window %gs / T=%d), so windows "
                    "share their frames", grid.requested_stride, grid.stride, grid.segment, grid.window,
                    grid.num_segments)
    model.eval()
    run = _Run(model, grid, options, _class_names(model, class_names), device)
    logger.info("%s", FrameFeatureCache(model, device=device).describe())
    for video in videos:
        video = os.fspath(video)
        try:
            yield _label_video(run, video)
        except (DecodeError, OSError, ValueError, FloatingPointError) as e:
            named = isinstance(e, DecodeError) or str(e).startswith(video)  # DecodeError names the file itself
            msg = str(e) if named else f"{video}: {e}"
            logger.debug("cannot label %s: %s", video, msg)
            yield Timeline(video=video, error=msg)


def timeline_video(model: nn.Module, video: Union[str, os.PathLike], options: Optional[TimelineOptions] = None,
                   *, class_names: Optional[Sequence[str]] = None, device: Optional[torch.device] = None) -> Timeline:
    """The :class:`Timeline` of one video (``error`` set when it cannot be labelled)."""
    return next(timeline_videos(model, [video], options, class_names=class_names, device=device))


# ------------------------------------------------------------------------------ files
def output_stem(video: str, taken: Set[str]) -> str:
    """The file stem for ``video``'s outputs: its own stem, with ``-2``, ``-3`` ... when another
    video of this run already has it (``a/clip.mp4`` and ``b/clip.mp4``)."""
    stem = Path(video).stem or "video"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _window_table(rows: Sequence[Dict[str, Any]], k: int) -> Tuple[List[str], List[List[Any]]]:
    header = ["window", "start", "end"] + [f"{what}_{r}" for r in range(1, k + 1) for what in ("label", "name", "prob")]
    body = [[r["index"], f"{r['start']:.3f}", f"{r['end']:.3f}"]
            + [v for t in r["topk"] for v in (t["label"], t["name"], f"{t['prob']:.6f}")] for r in rows]
    return header, body


def write_timeline(tl: Timeline, out_dir: Union[str, os.PathLike], *, stem: Optional[str] = None, topk: int = 5,
                   segments: bool = False, picture: bool = True) -> Dict[str, Path]:
    """Write ``<stem>.csv`` and ``<stem>.json`` (the windows, top-``topk`` each), with
    ``segments`` also ``<stem>.segments.csv``/``.json``, and with ``picture`` the PNG and the
    HTML page; returns the paths by kind."""
    if tl.error is not None:
        raise ValueError(f"write_timeline: {tl.error}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or Path(tl.video).stem
    rows = tl.rows(topk)
    k = min(int(topk), tl.logits.shape[1])
    files = {"csv": _write_csv(out / f"{stem}.csv", *_window_table(rows, k)), "json": out / f"{stem}.json"}
    doc = {**tl.summary(), "windows": rows}
    segs = tl.segments() if segments else None
    if segs is not None:
        doc["segments"] = [s.to_dict() for s in segs]
        files["segments_csv"] = _write_csv(out / f"{stem}.segments.csv", ["segment", "label", "name", "start", "end",
                                                                          "prob", "first_window", "last_window"],
                                           [[i, s.label, s.name, f"{s.start:.3f}", f"{s.end:.3f}", f"{s.prob:.6f}",
                                             s.first_window, s.last_window] for i, s in enumerate(segs)])
        files["segments_json"] = out / f"{stem}.segments.json"
        files["segments_json"].write_text(json.dumps({"video": tl.video, "segments": doc["segments"]}, indent=1))
    files["json"].write_text(json.dumps(doc, indent=1), encoding="utf-8")
    if picture:
        png = _picture(tl, segs)
        files["png"] = out / f"{stem}.png"
        files["png"].write_bytes(png)
        files["html"] = out / f"{stem}.html"
        files["html"].write_text(timeline_page(tl, png, segs, topk), encoding="utf-8")
    return files


def json_lines(tl: Timeline, topk: int = 5, segments: bool = False) -> Iterator[Dict[str, Any]]:
    """What ``--json`` prints, one object per line: every window (``"kind": "window"``), then with
    ``segments`` every segment (``"kind": "segment"``), each with the video's path."""
    for row in tl.rows(topk):
        yield {"kind": "window", "video": tl.video, **{k: v for k, v in row.items() if k != "frames"}}
    if segments:
        for s in tl.segments():
            yield {"kind": "segment", "video": tl.video, **s.to_dict()}


# ------------------------------------------------------------------------------ picture and page
def plotted_classes(probs: torch.Tensor, count: int = 5, most: int = 8) -> List[int]:
    """The classes the picture draws: every class that is the top class of some window (up to
    ``most``), then others up to ``count``; each group by highest probability over the video
    (ties: higher mean, then lower label)."""
    if probs.numel() == 0:
        return []
    peak, mean = probs.max(0).values.tolist(), probs.mean(0).tolist()
    order = sorted(range(probs.shape[1]), key=lambda c: (-peak[c], -mean[c], c))
    top1 = set(probs.argmax(1).tolist())
    first = [c for c in order if c in top1][:most]
    rest = [c for c in order if c not in first]
    return first + rest[:max(0, count - len(first))]


def _picture(tl: Timeline, segs: Optional[List[Segment]]) -> bytes:
    from tcpnet.viz import to_png
    from tcpnet.viz.timeline import render_timeline

    probs = tl.probs
    shown = plotted_classes(probs)
    centres = np.array([(w.start + w.end) / 2 for w in tl.windows])
    bands = None if segs is None else [(s.start, s.end, s.name) for s in segs]
    smooth = f", smoothed over {tl.smooth} windows" if tl.smooth > 1 else ""
    title = (f"{Path(tl.video).name}: {tl.model_name}, {tl.window:g} s windows every {tl.stride:g} s "
             f"(T={tl.num_segments}){smooth}")
    image = render_timeline(centres, probs[:, shown].numpy(), [tl.class_names[c] for c in shown],
                            duration=max(tl.duration, tl.windows[-1].end), thumbnails=tl.thumbnails,
                            segments=bands, title=title,
                            ylabel="probability (sigmoid)" if tl.multi_label else "probability")
    return to_png(image, colors=PICTURE_COLORS)


def _details(tl: Timeline) -> List[Tuple[str, str]]:
    realtime = tl.duration / tl.seconds if tl.seconds > 0 else float("nan")
    return [("video", tl.video), ("model", tl.model_name), ("length", f"{tl.duration:.2f} s, {tl.num_frames} frames "
                                                                      f"at {tl.fps:.3g} fps"),
            ("windows", f"{len(tl.windows)} of {tl.window:g} s every {tl.stride:g} s, T={tl.num_segments} frames each"),
            ("probabilities", ("sigmoid per class" if tl.multi_label else "softmax")
             + (f", moving average over {tl.smooth} windows" if tl.smooth > 1 else "")),
            ("computation", tl.how), ("backbone passes per frame", f"{tl.passes_per_frame:.2f}"),
            ("time", f"{tl.seconds:.2f} s ({realtime:.2f}x real time)")]


def timeline_page(tl: Timeline, png: bytes, segs: Optional[List[Segment]], topk: int = 5) -> str:
    """The self-contained HTML page: details, the picture, the segments, per-class summary and
    (folded) every window's top classes."""
    from tcpnet.viz.html import bar, escape, image, page, section, table

    probs = tl.probs
    top1 = probs.argmax(1).tolist()
    header = "".join(f"<dt>{escape(a)}</dt><dd>{escape(b)}</dd>" for a, b in _details(tl))
    body = [f"<h1>Timeline: {escape(Path(tl.video).name)}</h1>\n<dl class=\"kv\">{header}</dl>\n",
            section("Class probabilities over time", image(png, f"timeline of {tl.video}"),
                    "lines: every class that is the top class of some window, then the highest peaks, at each "
                    "window's centre; "
                    "thumbnails: frames along the video" + ("; band: segments" if segs is not None else ""))]
    if segs is not None:
        body.append(section("Segments", table(["class", "start (s)", "end (s)", "mean prob", "", "windows"], [
            (s.name, f"{s.start:.2f}", f"{s.end:.2f}", f"{s.prob:.3f}", bar(s.prob), str(s.last_window - s.first_window + 1))
            for s in segs], numeric=(1, 2, 3, 5), bars=(4,)), "consecutive windows with the same top class"))
    classes = plotted_classes(probs, max(5, topk), most=20)
    body.append(section("Top classes", table(["class", "max prob", "mean prob", "windows as top-1"], [
        (tl.class_names[c], f"{float(probs[:, c].max()):.3f}", f"{float(probs[:, c].mean()):.3f}",
         str(top1.count(c))) for c in classes], numeric=(1, 2, 3)), "by highest probability in any window"))
    rows = [(str(r["index"]), f"{r['start']:.2f}", f"{r['end']:.2f}", r["topk"][0]["name"],
             f"{r['topk'][0]['prob']:.3f}", bar(r["topk"][0]["prob"]),
             ", ".join(f"{t['name']} {t['prob']:.3f}" for t in r["topk"][1:])) for r in tl.rows(topk)]
    body.append(section("Windows", "<details><summary>every window's top classes</summary>"
                        + table(["window", "start (s)", "end (s)", "top class", "prob", "", "next"], rows,
                                numeric=(0, 1, 2, 4), bars=(5,)) + "</details>"))
    return page(f"Timeline: {Path(tl.video).name}", "\n".join(body))
