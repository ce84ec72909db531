"""`VideoDataset`: records -> (clip, target), reproducible per (seed, epoch, item), with a
bad-video policy whose count survives DataLoader worker processes.

Per item: the frame count (from the record, else probed once and cached per process), the
sampler's frame indices, :func:`~tcpnet.data.load_clip` (decoders are opened per item, so the
dataset pickles and works in any worker), the uint8 transform, the split into views and the
model's normalisation (:class:`~tcpnet.input_config.InputConfig`).

Reproducibility: with ``seed`` set, all random choices for item ``i`` in epoch ``e`` (temporal
offsets, crop, flip, replacement of a bad video) come from ``np.random.default_rng([seed, e, i])``,
so the same clips come out whatever the number of workers or the order of loading.

Bad videos (``on_error="replace"``, training): a video that fails to decode
(:class:`~tcpnet.data.DecodeError` or ``OSError``) is replaced by another item drawn from the
same generator; its path is logged once (warning) and recorded; after
``max_consecutive_failures`` failures in a row for one item a ``RuntimeError`` says so. The
record of failures lives in shared-memory tensors (``share_memory_()``), which DataLoader
workers inherit (fork) or receive by handle (spawn, through torch's multiprocessing pickler),
so what workers write the main process reads: :meth:`VideoDataset.bad_items` after an epoch.
The epoch number is shared the same way, so :meth:`set_epoch` reaches persistent workers too.
With ``on_error="raise"`` (testing) the error propagates, naming the path.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from tcpnet.config import READERS, SAMPLERS
from tcpnet.data.cache import load_clip_cached
from tcpnet.data.clip import load_clip, probe
from tcpnet.data.errors import Deadline, DecodeError, Timeout
from tcpnet.data.frame_template import DEFAULT_FRAME_TEMPLATE, check_frame_template
from tcpnet.data.list_parsers import multi_hot
from tcpnet.data.records import VideoRecord
from tcpnet.data.samplers import build_sampler
from tcpnet.data.transforms import ClipTransform, build_transform, parse_views, to_float, to_views
from tcpnet.input_config import InputConfig

__all__ = ["VideoDataset", "BadItem", "ClipSpec", "DecodeSpec"]

logger = logging.getLogger(__name__)

_LOAD_ERRORS = (DecodeError, OSError)


@dataclass(frozen=True)
class BadItem:
    """A record that failed to load: its full path, the last epoch it failed in, and how many
    times it failed in that epoch (it can be drawn again as a replacement)."""

    index: int
    path: str
    epoch: int
    failures: int


@dataclass(frozen=True)
class ClipSpec:
    """What an item's clip is: which frames (``sampler(num_frames, rng)`` -> indices), which pixels
    (``transform``, on uint8 frames) and how they become model input (``input_config``)."""

    sampler: Callable
    transform: Optional[Callable] = None
    input_config: InputConfig = field(default_factory=InputConfig)


@dataclass(frozen=True)
class DecodeSpec:
    """How a record's frames are read from disk.

    ``frame_template``: the image names of a frame folder (see :mod:`tcpnet.data.frame_template`).
    ``reader``: the video decoder, "pyav" or "torchcodec" (optional; exact mode). ``threads``:
    FFmpeg threads per video (``None``: 1 inside DataLoader workers, FFmpeg's choice in the main
    process). ``cache_bytes``: keep whole decoded videos in this process's memory, up to this many
    bytes (0: off; :mod:`tcpnet.data.cache`). ``timeout``: seconds one video may take, frame-count
    probe included (``None``: no limit); past it, :class:`~tcpnet.data.DecodeTimeout`.
    """

    frame_template: str = DEFAULT_FRAME_TEMPLATE
    reader: str = "pyav"
    threads: Optional[int] = None
    cache_bytes: int = 0
    timeout: Optional[float] = None

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {self.reader!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout (data.decode_timeout) must be > 0 seconds or None, got {self.timeout}")
        if int(self.cache_bytes) < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {self.cache_bytes}")
        check_frame_template(self.frame_template)


class VideoDataset(Dataset):
    """Map-style video dataset returning ``(clip, target)``.

    ``clip``: float32 ``(3, T, H, W)`` normalised with ``clip.input_config``, or ``(V, 3, T, H, W)``
    when the sampler gives several clips or the transform several crops (views ordered crop
    first, then clip, as the authors' loader); with ``return_uint8=True`` the same shapes in
    uint8, not normalised (normalise on the GPU with :func:`~tcpnet.data.transforms.normalize`).
    ``target``: the int label, or a float32 multi-hot vector of ``num_classes`` when
    ``multi_label`` (Charades).

    ``clip.transform`` maps a uint8 ``(T', H, W, 3)`` clip (``T' = num_clips * T``) to uint8
    ``(T', h, w, 3)`` or ``(C, T', h, w, 3)``; a transform that returns float is taken to have
    done the conversion itself and its output is returned as is. ``decode`` says how files are
    read (:class:`DecodeSpec`). :meth:`from_config` builds the published pipelines.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        root: Union[str, os.PathLike] = "",
        clip: Optional[ClipSpec] = None,
        *,
        decode: DecodeSpec = DecodeSpec(),
        num_classes: Optional[int] = None,
        multi_label: bool = False,
        seed: Optional[int] = None,
        on_error: str = "replace",
        max_consecutive_failures: int = 10,
        return_uint8: bool = False,
    ) -> None:
        if clip is None:
            raise TypeError("VideoDataset: a ClipSpec is required (e.g. ClipSpec(TSNTrainSampler(8)))")
        if on_error not in ("replace", "raise"):
            raise ValueError(f"on_error: expected 'replace' or 'raise', got {on_error!r}")
        if multi_label and not num_classes:
            raise ValueError("multi_label=True needs num_classes for the multi-hot targets")
        if max_consecutive_failures < 1:
            raise ValueError(f"max_consecutive_failures must be >= 1, got {max_consecutive_failures}")
        if seed is not None and int(seed) < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        if len(records) == 0:
            raise ValueError(f"{getattr(records, 'source', None) or 'VideoDataset'}: no records")
        if decode.reader == "torchcodec":  # fail here, not in every worker
            from tcpnet.data.readers.torchcodec import unavailable_reason

            why = unavailable_reason()
            if why is not None:
                raise ImportError(why)
        self.records = list(records)
        self.class_names: Optional[List[str]] = getattr(records, "class_names", None)
        self.root = os.fspath(root)
        self.clip, self.decode = clip, decode
        self.num_classes = num_classes
        self.multi_label = bool(multi_label)
        self.seed = None if seed is None else int(seed)
        self.on_error = on_error
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.return_uint8 = bool(return_uint8)
        self.num_clips = int(getattr(clip.sampler, "num_clips", 1))
        # Shared between the main process and DataLoader workers (see the module docstring).
        n = len(self.records)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._bad_epoch = torch.full((n,), -1, dtype=torch.int64).share_memory_()
        self._bad_failures = torch.zeros(n, dtype=torch.int64).share_memory_()
        self._warned_one_frame = torch.zeros(n, dtype=torch.bool).share_memory_()
        self._num_frames_cache: Dict[int, int] = {}

    @property
    def sampler(self) -> Callable:
        return self.clip.sampler

    @property
    def transform(self) -> Optional[Callable]:
        return self.clip.transform

    @property
    def input_config(self) -> InputConfig:
        return self.clip.input_config

    # ------------------------------------------------------------------ construction recipes

    @classmethod
    def from_config(
        cls,
        records: Sequence[VideoRecord],
        root: Union[str, os.PathLike] = "",
        input_config: Optional[InputConfig] = None,
        mode: str = "train",
        views: Union[str, Tuple[int, int]] = "1x1",
        *,
        flip: bool = True,
        dense: bool = False,
        full_res: Optional[bool] = None,
        min_frames: int = 3,
        **kwargs: Any,
    ) -> "VideoDataset":
        """The published pipeline for ``mode`` ("train" | "val" | "test") and a model's input config,
        whose ``num_segments`` is the clip's T.

        train: TSN random sampling, multi-scale crop, random flip (``flip=False`` for
        Something-Something); val: segment centres, resize + centre crop; test: ``views``
        "CROPSxCLIPS" (e.g. "3x10": full-resolution left/right/centre crops x 10 clips, the
        released 30-view protocol; "1x1": one centre crop of the centre clip). With the input
        config's ``sampler="dense"`` the clip is T frames ``frame_interval`` apart
        (:class:`~tcpnet.data.samplers.IntervalSampler`: train a random start, val the centre clip,
        test ``clips`` starts spread from the video's start to its end). ``dense=True`` uses the
        authors' I3D-style window instead (Python only). Records with a known ``num_frames < min_frames`` are dropped
        (the published reader drops ``< 3``). ``on_error`` defaults to "replace" for train/val and
        "raise" for test. Other keyword arguments go to :class:`VideoDataset`.
        """
        cfg = input_config if input_config is not None else InputConfig()
        crops, clips = parse_views(views)
        if mode in ("train", "val") and (crops, clips) != (1, 1):
            raise ValueError(f"views={views!r}: only test mode has several views, {mode!r} has '1x1'")
        interval = _frame_interval(cfg, dense)
        if dense and mode == "test" and clips == 1:
            clips = 10  # the authors' dense test always takes 10 starts
        spec = ClipSpec(build_sampler(mode, int(cfg.num_segments), num_clips=clips, dense=dense,
                                      frame_interval=interval),
                        build_transform(mode, cfg, num_crops=crops, flip=flip, full_res=full_res), cfg)
        kwargs.setdefault("on_error", "raise" if mode == "test" else "replace")
        return cls(_keep_long_enough(records, min_frames, mode), root, spec, **kwargs)

    # ------------------------------------------------------------------ epochs and bad items

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices ``__getitem__`` makes (shared with workers)."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def bad_items(self, epoch: Optional[int] = None) -> List[BadItem]:
        """Records that failed to load in ``epoch`` (``None``: in any epoch; each record is
        reported with the last epoch it failed in), gathered from all worker processes."""
        bad_epoch = self._bad_epoch
        mask = bad_epoch >= 0 if epoch is None else bad_epoch == int(epoch)
        return [BadItem(i, self._full_path(self.records[i]), int(bad_epoch[i]), int(self._bad_failures[i]))
                for i in torch.nonzero(mask).flatten().tolist()]

    def reset_bad_items(self) -> None:
        self._bad_epoch.fill_(-1)
        self._bad_failures.zero_()

    def _mark_bad(self, index: int, epoch: int, err: BaseException) -> None:
        path = self._full_path(self.records[index])
        first_time = int(self._bad_epoch[index]) < 0
        if int(self._bad_epoch[index]) != epoch:
            self._bad_epoch[index] = epoch
            self._bad_failures[index] = 0
        self._bad_failures[index] += 1
        if first_time:
            logger.warning("skipping unreadable video %s (replaced by another item): %s", path, err)

    # ------------------------------------------------------------------ items

    def __len__(self) -> int:
        return len(self.records)

    def _full_path(self, record: VideoRecord) -> str:
        return os.path.join(self.root, record.path) if self.root else record.path

    def item_rng(self, index: int, epoch: Optional[int] = None) -> np.random.Generator:
        """The generator behind item ``index``'s random choices in ``epoch`` (default: current)."""
        if self.seed is None:
            return np.random.default_rng()
        e = self.epoch if epoch is None else int(epoch)
        return np.random.default_rng([self.seed, e, int(index)])

    def num_frames(self, index: int, timeout: Timeout = None) -> int:
        """Frame count of record ``index``: from the record, else probed within ``timeout`` (seconds or
        a running Deadline) and cached per process. A 1-frame video is warned about once."""
        record = self.records[index]
        n = record.num_frames if record.num_frames is not None else self._num_frames_cache.get(index)
        if n is None:
            n = probe(self._full_path(record), frame_template=self.decode.frame_template, timeout=timeout).num_frames
            self._num_frames_cache[index] = n
        if n < 1:
            raise DecodeError(self._full_path(record), f"has {n} frames")
        if n == 1 and not self._warned_one_frame[index]:
            self._warned_one_frame[index] = True
            logger.warning("%s: has 1 frame (a still image?); its clip repeats that frame %d times, so the "
                           "prediction sees no motion", self._full_path(record), int(self.input_config.num_segments))
        return int(n)

    def target(self, index: int) -> Union[int, torch.Tensor]:
        label = self.records[index].label
        if self.multi_label:
            return multi_hot(label, int(self.num_classes))
        if not isinstance(label, (int, np.integer)):
            raise ValueError(f"{self.records[index].path}: label {label!r} is not a single class id; "
                             f"use multi_label=True with num_classes")
        return int(label)

    def load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """Sample, decode and transform record ``index``: the clip as ``__getitem__`` returns it.
        ``decode.timeout`` bounds the frame-count probe and the decoding together."""
        decode = self.decode
        deadline = Deadline(decode.timeout)
        indices = self.sampler(self.num_frames(index, deadline), rng)
        path = self._full_path(self.records[index])
        if decode.cache_bytes:
            clip = load_clip_cached(path, indices, max_bytes=decode.cache_bytes, frame_template=decode.frame_template,
                                    threads=decode.threads, reader=decode.reader, timeout=deadline)
        else:
            clip = load_clip(path, indices, frame_template=decode.frame_template, threads=decode.threads,
                             reader=decode.reader, timeout=deadline)
        if self.transform is not None:
            clip = self.transform(clip, rng) if isinstance(self.transform, ClipTransform) else self.transform(clip)
        if clip.dtype != torch.uint8:
            return clip
        clip = to_views(clip, self.num_clips)
        if self.return_uint8:
            return clip.movedim(-1, -4).contiguous()
        return to_float(clip, self.input_config)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Union[int, torch.Tensor]]:
        index = int(index)
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} records")
        epoch = self.epoch
        rng = self.item_rng(index, epoch)
        current = index
        for failures in range(1, self.max_consecutive_failures + 1):
            try:
                return self.load(current, rng), self.target(current)
            except _LOAD_ERRORS as err:
                path = self._full_path(self.records[current])
                if self.on_error == "raise":
                    if isinstance(err, DecodeError):
                        raise
                    raise DecodeError(path, err) from err
                self._mark_bad(current, epoch, err)
                if failures == self.max_consecutive_failures:
                    raise RuntimeError(
                        f"{failures} consecutive videos failed to load for item {index} "
                        f"(on_error='replace'); last: {path}: {err}") from err
                current = int(rng.integers(len(self.records)))
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        return (f"VideoDataset({len(self)} videos, root={self.root!r}, sampler={self.sampler!r}, "
                f"on_error={self.on_error!r}, seed={self.seed})")


def _frame_interval(cfg: InputConfig, authors_dense: bool) -> Optional[int]:
    """The dense clip's frame interval the input config asks for, None for TSN segments; an
    unknown sampler or a dense one without its interval is a ValueError naming the field."""
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"input_config.sampler: expected one of {SAMPLERS}, got {cfg.sampler!r}")
    if cfg.sampler == "tsn":
        return None
    if cfg.frame_interval is None or int(cfg.frame_interval) < 1:
        raise ValueError(f"input_config.sampler='dense' needs input_config.frame_interval >= 1, got {cfg.frame_interval!r}")
    if authors_dense:
        raise ValueError("dense=True (the authors' I3D window) and input_config.sampler='dense' both pick the "
                         "clip's frames; use one")
    return int(cfg.frame_interval)


def _keep_long_enough(records: Sequence[VideoRecord], min_frames: int, mode: str) -> Sequence[VideoRecord]:
    """The records without those whose known frame count is below ``min_frames`` (the published
    reader drops videos of fewer than 3 frames); class names and source kept; none left is an error."""
    kept = [r for r in records if r.num_frames is None or r.num_frames >= min_frames]
    if len(kept) < len(records):
        logger.info("dropped %d of %d records with fewer than %d frames",
                    len(records) - len(kept), len(records), min_frames)
    source = getattr(records, "source", None)
    if records and not kept:
        raise ValueError(f"{source or 'VideoDataset'}: all {len(records)} videos have fewer than "
                         f"{min_frames} frames; none left to {mode}")
    if hasattr(records, "class_names"):
        kept = type(records)(kept, class_names=records.class_names, source=source)
        kept.frame_template = getattr(records, "frame_template", None)
    return kept
