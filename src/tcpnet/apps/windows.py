"""Windows over a frame sequence, each frame through the backbone once (timeline, stream).

A long video or a live stream is labelled window by window: a window of ``window`` seconds
every ``stride`` seconds, each seen by the model as a clip of its T frames. The frames of a
window are the centres of its T segments (what the test sampler, ``TSNTestSampler``, picks in
a clip of that length), placed on one grid of segments shared by every window: the stride is
a whole number of segments (``window / T`` seconds each; :class:`WindowGrid` rounds it and
says so), so a frame used by one window is the same frame in every other window that holds it.

A 2-D backbone without temporal modules (TSN ResNets; not TSM/TEA, not 3-D or token
backbones) maps each frame on its own. :class:`FrameFeatureCache` then runs each frame through
the backbone once and keeps its feature maps; a window costs only the pooling head and the
classifier on the cached maps of its T frames, and gives the logits ``model(clip)`` gives on the
same frames. Any other model falls back to one full forward per window (correct, T backbone
frames per window), which the cache reports once.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from tcpnet.backbones.temporal import TemporalModule
from tcpnet.data.transforms import build_transform, to_float
from tcpnet.engine.evaluate import autocast_context

logger = logging.getLogger(__name__)

__all__ = ["Window", "WindowGrid", "FrameFeatureCache", "shares_frames", "preprocess_frames", "dense_note"]


@dataclass(frozen=True)
class Window:
    """One window: its number, its span in seconds and the keys (frame indices) of its T frames."""

    index: int
    start: float
    end: float
    frames: Tuple[int, ...]


class WindowGrid:
    """Windows of ``window`` seconds every ``stride`` seconds, T frames each, on a shared grid.

    Segment ``j`` spans ``[j, j+1) * window / T`` seconds and is represented by the frame at its
    centre; window ``k`` holds segments ``k*s .. k*s+T-1`` with ``s = stride / (window / T)``
    rounded to a whole number (at least 1). ``stride`` is the stride actually used.
    """

    def __init__(self, window: float, stride: float, num_segments: int) -> None:
        for name, value in (("window", window), ("stride", stride)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be a positive number of seconds, got {value!r}")
        if int(num_segments) < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        self.window = float(window)
        self.num_segments = int(num_segments)
        self.segment = self.window / self.num_segments
        self.step = max(1, round(float(stride) / self.segment))  # segments between window starts
        self.stride = self.step * self.segment
        self.requested_stride = float(stride)

    def __repr__(self) -> str:
        return f"WindowGrid(window={self.window:g}s, stride={self.stride:g}s, T={self.num_segments})"

    @property
    def stride_rounded(self) -> bool:
        """True when the requested stride was not a whole number of segments."""
        return abs(self.stride - self.requested_stride) > 1e-9 * max(1.0, self.requested_stride)

    def segment_time(self, j: int) -> float:
        """Time (seconds) of segment ``j``'s centre, where its frame is taken."""
        return (j + 0.5) * self.segment

    def window_segments(self, k: int) -> range:
        """The segment numbers of window ``k``."""
        return range(k * self.step, k * self.step + self.num_segments)

    def window_span(self, k: int) -> Tuple[float, float]:
        """Start and end (seconds) of window ``k``."""
        start = k * self.step * self.segment
        return start, start + self.window

    def num_windows(self, duration: float) -> int:
        """Whole windows that fit in ``duration`` seconds (the tail after the last, shorter than a
        stride, is in none)."""
        if duration + 1e-9 < self.window:
            return 0
        return int((duration - self.window + 1e-9) // self.stride) + 1

    def frame_of_segment(self, j: int, fps: float) -> int:
        """Index of the frame at segment ``j``'s centre in a video of ``fps`` frames per second
        (``int(tick * (j + 0.5))`` with ``tick = fps * window / T`` frames, as the test sampler)."""
        return int(fps * self.segment * (j + 0.5))

    def file_windows(self, num_frames: int, fps: float) -> List[Window]:
        """Every window of a video file of ``num_frames`` frames at ``fps``. A video shorter than
        one window gives one window over all of it (the test sampler's T frames)."""
        if num_frames < 1:
            return []
        if not (fps and math.isfinite(fps) and fps > 0):
            raise ValueError(f"frame rate must be a positive number, got {fps!r}")
        tick_frames = fps * self.segment
        count = self.num_windows(num_frames / fps)
        if count == 0 or (self.num_segments * tick_frames > num_frames):
            tick = num_frames / self.num_segments
            frames = tuple(int(tick / 2.0 + tick * x) for x in range(self.num_segments))
            return [Window(0, 0.0, num_frames / fps, frames)]
        out = []
        for k in range(count):
            frames = tuple(min(self.frame_of_segment(j, fps), num_frames - 1) for j in self.window_segments(k))
            out.append(Window(k, *self.window_span(k), frames))
        return out


def shares_frames(model: nn.Module) -> bool:
    """True when the model's backbone maps each frame on its own: a ``"frames"`` backbone with
    no temporal module inside (TSM's shift or TEA's motion modules mix the frames of a clip),
    so one frame's maps serve every window that holds it (in eval mode)."""
    backbone = model.backbone
    if getattr(backbone, "layout", "frames") != "frames":
        return False
    return not any(isinstance(m, TemporalModule) for m in backbone.modules() if m is not backbone)


def preprocess_frames(frames: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> the model's normalised centre view (N, 3, h, w): resize the
    shorter side to ``scale_size``, centre crop ``crop_size``, as ``tcpnet test``/``predict`` with
    one view. Per frame, so a frame preprocessed alone equals the same frame in a clip."""
    config = model.input_config
    return to_float(build_transform("test", config, num_crops=1)(frames), config).transpose(0, 1)


class FrameFeatureCache:
    """Frames keyed by an id (a frame index), turned into window logits.

    ``add(keys, frames)`` takes uint8 frames (N, H, W, 3) and stores their preprocessed views;
    ``logits(windows)`` returns ``(len(windows), K)`` logits, each window a sequence of T keys.
    With a backbone that :func:`shares_frames`, each key goes through the backbone once (in
    batches of ``batch_size``) and its maps are kept until :meth:`drop_before`; otherwise each
    window is one ``model(clip)``. ``backbone_frames`` counts frames the backbone has processed
    and ``windows`` the windows scored, so ``backbone_frames / distinct frames`` is the number
    of backbone passes per frame.
    """

    def __init__(self, model: nn.Module, *, batch_size: int = 16, device: Optional[torch.device] = None,
                 amp: Optional[str] = None, share: Optional[bool] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.device = device or next(model.parameters()).device
        # frames go in as the model's floating dtype (float64 or half models work too; autocast still applies)
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.amp = amp
        self.batch_size = int(batch_size)
        can_share = shares_frames(model)
        if share and not can_share:
            raise ValueError(f"{getattr(model, 'model_name', None) or type(model.backbone).__name__}: its backbone "
                             "does not map frames independently; windows need one forward each")
        self.shared = can_share if share is None else bool(share)
        self.num_segments = int(model.num_segments)
        self._frames: Dict[Hashable, torch.Tensor] = {}  # preprocessed frames (3, h, w) still needed
        self._maps: Dict[Hashable, torch.Tensor] = {}  # backbone maps (C, h', w') per frame
        self.backbone_frames = 0
        self.windows = 0

    def __len__(self) -> int:
        return len(self._frames) + len(self._maps)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._maps or key in self._frames

    def add(self, keys: Sequence[Hashable], frames: torch.Tensor) -> None:
        """Store uint8 frames (N, H, W, 3) under ``keys`` (one per frame); a key already held is
        kept as it is."""
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] != len(keys):
            raise ValueError(f"add: expected {len(keys)} frames (N, H, W, 3), got {tuple(frames.shape)}")
        new = [i for i, k in enumerate(keys) if k not in self]
        if not new:
            return
        views = preprocess_frames(frames[new], self.model)
        for i, view in zip(new, views):
            self._frames[keys[i]] = view

    def drop_before(self, key: int) -> None:
        """Forget every frame whose key is below ``key`` (no later window will use it)."""
        for store in (self._frames, self._maps):
            for k in [k for k in store if k < key]:
                del store[k]

    def _missing(self, keys: Sequence[Hashable]) -> None:
        absent = [k for k in dict.fromkeys(keys) if k not in self]
        if absent:
            raise KeyError(f"frames {absent[:5]} were never added (or were dropped)")

    def compute(self, keys: Sequence[Hashable]) -> None:
        """Run the backbone now on the added frames ``keys`` whose maps are not held yet (a
        per-frame backbone only; a no-op otherwise): a live stream does this while it waits, so a
        window then waits only for its last frame."""
        if self.shared:
            self._missing(keys)
            self._compute_maps(keys)

    @torch.no_grad()
    def _compute_maps(self, keys: Sequence[Hashable]) -> None:
        todo = [k for k in dict.fromkeys(keys) if k not in self._maps]
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            batch = torch.stack([self._frames[k] for k in chunk]).to(self.device, self.dtype)
            with autocast_context(self.device, self.amp):
                maps = self.model.backbone(batch)
            self.backbone_frames += len(chunk)
            for k, m in zip(chunk, maps):
                self._maps[k] = m
                del self._frames[k]

    @torch.no_grad()
    def logits(self, windows: Sequence[Sequence[Hashable]]) -> torch.Tensor:
        """Logits (W, K) of windows given as T keys each (float32, on the host)."""
        t = self.num_segments
        for w in windows:
            if len(w) != t:
                raise ValueError(f"a window needs T={t} frames, got {len(w)}")
            self._missing(w)
        if not windows:
            return torch.empty(0, int(self.model.num_classes))
        model = self.model
        with autocast_context(self.device, self.amp):
            if self.shared:
                self._compute_maps([k for w in windows for k in w])
                maps = torch.stack([self._maps[k] for w in windows for k in w])
                out = model.forward_head(model.head(maps, t))
            else:
                clips = torch.stack([torch.stack([self._frames[k] for k in w], dim=1) for w in windows])
                out = model(clips.to(self.device, self.dtype))
                self.backbone_frames += t * len(windows)
        self.windows += len(windows)
        return out.float().cpu()

    def describe(self) -> str:
        """One line on how windows are computed (said once by the commands)."""
        name = getattr(self.model, "model_name", None) or type(self.model).__name__
        if self.shared:
            how = f"{name}: per-frame backbone, each frame's features computed once and shared by the windows"
        else:
            how = (f"{name}: its backbone mixes frames (temporal modules, 3-D or token backbone), so every window "
                   f"runs the whole model ({self.num_segments} backbone frames per window)")
        return how + dense_note(self.model)


def dense_note(model: nn.Module) -> str:
    """For a model trained on dense clips (``sampler: dense``), what window matches its training:
    a window spreads its T frames over ``--window`` seconds, the model saw T frames
    ``frame_interval`` apart (empty for TSN-sampled models, which saw whole videos)."""
    config = model.input_config
    if getattr(config, "sampler", "tsn") != "dense" or not config.frame_interval:
        return ""
    span = config.num_segments * config.frame_interval
    return (f"; it was trained on dense clips of {config.num_segments} frames {config.frame_interval} apart "
            f"({span} frames, {span / 30:.2f} s at 30 fps, {span / 25:.2f} s at 25 fps): a --window of that "
            "length shows it frames spaced as in training")
