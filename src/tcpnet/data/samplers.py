"""Temporal samplers: which 0-based frames of a video make up a clip.

A sampler is a small callable ``sampler(num_frames, rng=None) -> np.ndarray`` (int64, 0-based
frame indices, clip-major then segment order, length ``num_clips * num_segments``), in the
spirit of PyTorchVideo's clip samplers. Random samplers draw from the ``np.random.Generator``
passed in (no global random state); deterministic ones ignore it. The formulas, including their
published quirks, are those of the authors' ``ops/dataset.py`` with ``new_length = 1`` (RGB):

* :class:`TSNTrainSampler` -- one random frame per segment (training).
* :class:`TSNValSampler` -- segment centres (per-epoch validation).
* :class:`TSNTestSampler` -- ``num_clips`` shifted copies of the segment grid (the authors'
  ``--ten_clips_sample`` for 10 clips, segment centres for 1 clip, TSM's "twice sample" for 2).
* :class:`DenseSampler` -- I3D-style: ``T`` frames with stride ``64 // T`` in a 64-frame window.

:class:`IntervalSampler` is the dense clip of the VideoMAE, Video Swin and X3D recipes instead:
``T`` frames every ``frame_interval``-th from one start, the rule of mmaction2's ``SampleFrames``
(the loader of those recipes in mmaction2; ``data.sampler: dense`` in a config).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = [
    "FrameSampler",
    "TSNTrainSampler",
    "TSNValSampler",
    "TSNTestSampler",
    "DenseSampler",
    "IntervalSampler",
    "build_sampler",
]


def _check_num_frames(num_frames: int) -> int:
    n = int(num_frames)
    if n < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return n


def _rng_or_fresh(rng: Optional[np.random.Generator]) -> np.random.Generator:
    # A fresh OS-seeded generator, never NumPy's global state: pass rng for reproducibility.
    return rng if rng is not None else np.random.default_rng()


class FrameSampler:
    """Base class: ``num_segments`` frames per clip, ``num_clips`` clips per call."""

    random: bool = False

    def __init__(self, num_segments: int, num_clips: int = 1) -> None:
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        self.num_segments = int(num_segments)
        self.num_clips = int(num_clips)

    def __call__(self, num_frames: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_segments={self.num_segments}, num_clips={self.num_clips})"


class TSNTrainSampler(FrameSampler):
    """TSN training sampling: segment ``x`` of length ``avg = F // T`` gives frame
    ``x * avg + U{0, avg-1}``.

    Videos shorter than ``T`` (``avg == 0``) give ``[0] * T`` (frame 1 repeated), as published;
    the published "sorted random" branch for ``avg == 0 and F > T`` cannot be reached with
    ``new_length = 1`` and is omitted. ``F == T`` gives ``0..T-1``.
    """

    random = True

    def __init__(self, num_segments: int) -> None:
        super().__init__(num_segments, 1)

    def __call__(self, num_frames: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        F, T = _check_num_frames(num_frames), self.num_segments
        avg = F // T
        if avg > 0:
            return np.arange(T, dtype=np.int64) * avg + _rng_or_fresh(rng).integers(0, avg, size=T)
        return np.zeros(T, dtype=np.int64)

    def __repr__(self) -> str:
        return f"TSNTrainSampler(num_segments={self.num_segments})"


class TSNValSampler(FrameSampler):
    """Validation sampling: segment centres ``int(tick/2 + tick*x)``, ``tick = F / T``.

    Published guard: only ``F > T`` uses the formula, otherwise ``[0] * T`` -- so a video with
    exactly ``F == T`` frames gets frame 1 repeated (a published quirk). ``fix_equal=True``
    applies the formula for ``F == T`` too (giving ``0..T-1``); ``F < T`` stays ``[0] * T``.
    """

    def __init__(self, num_segments: int, fix_equal: bool = False) -> None:
        super().__init__(num_segments, 1)
        self.fix_equal = bool(fix_equal)

    def __call__(self, num_frames: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        F, T = _check_num_frames(num_frames), self.num_segments
        if F > T or (self.fix_equal and F == T):
            tick = F / float(T)
            return np.array([int(tick / 2.0 + tick * x) for x in range(T)], dtype=np.int64)
        return np.zeros(T, dtype=np.int64)

    def __repr__(self) -> str:
        return f"TSNValSampler(num_segments={self.num_segments}, fix_equal={self.fix_equal})"


class TSNTestSampler(FrameSampler):
    """Test sampling with ``num_clips`` clips, ``tick = F / T``, no short-video guard.

    * ``num_clips == 1``: segment centres ``int(tick/2 + tick*x)`` (the authors' default).
    * ``num_clips == N > 1``: clip ``k`` is ``int(tick/N * k + tick*x)``; clips are emitted in
      the order ``k = 1, 2, ..., N-1, 0``. For ``N = 10`` this is exactly the authors'
      ``--ten_clips_sample`` (F=300, T=8: first clip 3,41,78,...,266, last clip 0,37,75,...,262);
      for ``N = 2`` it is TSM's "twice sample" (centres, then segment starts). Other ``N`` are
      our generalisation of the same rule (offsets ``tick*k/N`` spread evenly inside a segment).

    Short videos (``F < T``, ``tick < 1``) repeat frames, as published (no short-video guard).
    """

    def __call__(self, num_frames: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        F, T, N = _check_num_frames(num_frames), self.num_segments, self.num_clips
        tick = F / float(T)
        if N == 1:
            out = [int(tick / 2.0 + tick * x) for x in range(T)]
        else:
            out = []
            for k in list(range(1, N)) + [0]:
                out.extend(int(tick / float(N) * k + tick * x) for x in range(T))
        return np.array(out, dtype=np.int64)


class DenseSampler(FrameSampler):
    """I3D-style dense sampling: ``T`` frames with stride ``window // T`` starting at ``start``,
    indices taken modulo ``F`` (so short videos wrap around), ``sample_pos = max(1, 1 + F - window)``.

    * ``train=True`` (the authors' train *and* val mode): one clip, ``start = 0`` if
      ``sample_pos == 1`` else ``U{0, sample_pos - 2}`` -- the published upper bound is
      exclusive of ``sample_pos - 1`` (a published quirk); ``exclusive_bound=False`` draws from
      ``U{0, sample_pos - 1}`` instead.
    * ``train=False`` (test): ``num_clips`` starts ``np.linspace(0, sample_pos - 1, num_clips)``
      truncated to int (10 in the published code).
    """

    def __init__(
        self,
        num_segments: int,
        train: bool = True,
        num_clips: int = 10,
        window: int = 64,
        exclusive_bound: bool = True,
    ) -> None:
        super().__init__(num_segments, 1 if train else num_clips)
        if window < num_segments:
            raise ValueError(f"window ({window}) must be >= num_segments ({num_segments})")
        self.train = bool(train)
        self.window = int(window)
        self.exclusive_bound = bool(exclusive_bound)
        self.random = self.train

    def __call__(self, num_frames: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        F, T = _check_num_frames(num_frames), self.num_segments
        sample_pos = max(1, 1 + F - self.window)
        t_stride = self.window // T
        if self.train:
            if sample_pos == 1:
                starts = np.zeros(1, dtype=np.int64)
            else:
                high = sample_pos - 1 if self.exclusive_bound else sample_pos
                starts = _rng_or_fresh(rng).integers(0, max(high, 1), size=1)
        else:
            starts = np.linspace(0, sample_pos - 1, num=self.num_clips).astype(np.int64)
        grid = np.arange(T, dtype=np.int64) * t_stride
        return ((grid[None, :] + starts[:, None]) % F).reshape(-1).astype(np.int64)

    def __repr__(self) -> str:
        return (f"DenseSampler(num_segments={self.num_segments}, train={self.train}, "
                f"num_clips={self.num_clips}, window={self.window}, "
                f"exclusive_bound={self.exclusive_bound})")


class IntervalSampler(FrameSampler):
    """Dense clips of ``T`` frames every ``I = frame_interval``-th frame, mmaction2's ``SampleFrames``
    (``mmaction/datasets/transforms/loading.py``, ``keep_tail_frames=False``, ``out_of_bound_opt='loop'``),
    the sampling of the VideoMAE (16x4), Video Swin (32x2) and X3D (13x6, 16x5) recipes.

    * ``mode="train"``: one clip from a random start ``U{0, F - T*I}`` (0 when ``F < T*I``).
    * ``mode="val"``, and ``"test"`` with one clip: the centre clip, start ``max(F - ((T-1)*I + 1), 0) // 2``.
    * ``mode="test"`` with ``N > 1`` clips: starts ``round(k * max_offset / (N-1))``, ``k = 0..N-1``,
      ``max_offset = max(F - ((T-1)*I + 1), 0)``: the first clip at the video's start, the last at its
      end, the others evenly between (NumPy's round half to even, as the official code).

    Indices past the last frame wrap around (modulo ``F``), so a short video repeats from its start.
    """

    MODES = ("train", "val", "test")

    def __init__(self, num_segments: int, frame_interval: int, mode: str = "train", num_clips: int = 1) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode: expected one of {self.MODES}, got {mode!r}")
        if int(frame_interval) < 1:
            raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
        super().__init__(num_segments, num_clips if mode == "test" else 1)
        self.frame_interval = int(frame_interval)
        self.mode = mode
        self.random = mode == "train"

    def starts(self, num_frames: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """The first frame of each clip (before wrapping), ``num_clips`` of them."""
        F, T, I, N = _check_num_frames(num_frames), self.num_segments, self.frame_interval, self.num_clips
        if self.mode == "train":
            room = F - T * I + 1  # number of possible starts
            return _rng_or_fresh(rng).integers(0, room, size=1) if room > 0 else np.zeros(1, dtype=np.int64)
        max_offset = max(F - ((T - 1) * I + 1), 0)
        if N == 1:
            return np.array([max_offset // 2], dtype=np.int64)
        return np.round(np.arange(N) * (max_offset / float(N - 1))).astype(np.int64)

    def __call__(self, num_frames: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        F = _check_num_frames(num_frames)
        grid = np.arange(self.num_segments, dtype=np.int64) * self.frame_interval
        return ((self.starts(F, rng)[:, None] + grid[None, :]) % F).reshape(-1).astype(np.int64)

    def __repr__(self) -> str:
        return (f"IntervalSampler(num_segments={self.num_segments}, frame_interval={self.frame_interval}, "
                f"mode={self.mode!r}, num_clips={self.num_clips})")


def build_sampler(mode: str, num_segments: int, num_clips: int = 1, dense: bool = False,
                  frame_interval: Optional[int] = None) -> FrameSampler:
    """The sampler for ``mode`` in {"train", "val", "test"} (``num_clips`` for test): TSN segments;
    with ``frame_interval``, dense clips of ``num_segments`` frames that far apart
    (:class:`IntervalSampler`, the ``data.sampler: dense`` of a config); with ``dense=True`` alone,
    the authors' I3D-style 64-frame window (:class:`DenseSampler`)."""
    if mode not in ("train", "val", "test"):
        raise ValueError(f"mode: expected 'train', 'val' or 'test', got {mode!r}")
    if frame_interval is not None:
        return IntervalSampler(num_segments, frame_interval, mode, num_clips)
    if dense:
        return DenseSampler(num_segments, train=(mode != "test"), num_clips=num_clips)
    if mode == "train":
        return TSNTrainSampler(num_segments)
    if mode == "val":
        return TSNValSampler(num_segments)
    return TSNTestSampler(num_segments, num_clips=num_clips)
