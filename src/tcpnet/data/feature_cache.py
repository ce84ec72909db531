"""Fixed views of the train videos and a disk cache of a frozen backbone's maps per (video, view).

Frozen-backbone probing (``train.freeze_backbone``) trains only the head and the classifier, so
the backbone's output for a clip never changes: ``data.cache_features: DIR`` computes it once
and every later epoch reads it instead of decoding and running the backbone.

Views (:class:`FixedViews`, ``data.cache_views: K``): view 0 of a video is its centre view (the
validation pipeline: segment centres, resize, centre crop); views 1..K-1 are train-augmented
views (random segments, multi-scale crop, flip) drawn with ``np.random.default_rng([seed, video,
view, _VIEW_STREAM])``, so the same K views come out on every run. In epoch ``e`` video ``i``
is seen as view :func:`pick_view` ``(seed, e, i, K)``, so a resumed run sees the same views.
:class:`FixedViewDataset` gives those clips decoded (training without a cache on exactly the
views a cache would hold); :class:`CachedMapsDataset` gives the stored maps. The val split is
cached the same way with K=1: its view 0 is exactly the clip validation feeds the model, so
validation runs the head and classifier on ``DIR/val.bin``.

Files (:class:`FeatureStore`, one per subset: ``train``, ``val``): ``DIR/<subset>.bin`` holds the
maps as one raw array ``(N, K, T', C, h, w)`` in ``data.cache_dtype``, read memory-mapped; ``DIR/<subset>.json`` is
its index: the shape, the dtype and the key of what it was made from (:func:`cache_key`). Both
are written to a temporary file and renamed into place, the index last, so a build killed at
any point leaves no index and the next run rebuilds; temporary files left by a kill are removed.
A cache whose key differs from the run's is refused with one line naming what differs
(``data.cache_rebuild=true`` rebuilds it). A video that cannot be read is an error here (no
replacement): a replaced clip would be stored as if it were the video's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tcpnet.data.dataset import VideoDataset
from tcpnet.data.records import VideoRecord
from tcpnet.input_config import InputConfig

__all__ = ["FixedViews", "FixedViewDataset", "CachedMapsDataset", "FeatureStore", "CacheMismatch",
           "ViewClips", "cache_key", "weights_hash", "pick_view", "view_rng"]

logger = logging.getLogger(__name__)

_VIEW_STREAM = 0x76696577  # "view": the stream of a train view's augmentation
_PICK_STREAM = 0x7069636B  # "pick": the stream of the per-epoch view choice
FORMAT = 1
DTYPES = {"float16": np.float16, "float32": np.float32}


def view_rng(seed: int, index: int, view: int) -> np.random.Generator:
    """The generator of train view ``view`` (>= 1) of video ``index``: the same on every run."""
    return np.random.default_rng([int(seed), int(index), int(view), _VIEW_STREAM])


def pick_view(seed: int, epoch: int, index: int, num_views: int) -> int:
    """The view of video ``index`` that epoch ``epoch`` trains on (a function of these alone)."""
    if num_views == 1:
        return 0
    return int(np.random.default_rng([int(seed), int(epoch), int(index), _PICK_STREAM]).integers(num_views))


class FixedViews:
    """The K fixed views of each train video: :meth:`clip` decodes one, :meth:`pick` says which one
    an epoch uses. ``train`` and ``centre`` are the train and validation pipelines over the same
    records (see :meth:`from_config`)."""

    def __init__(self, train: VideoDataset, centre: VideoDataset, num_views: int, seed: int) -> None:
        if [r.path for r in train.records] != [r.path for r in centre.records]:
            raise ValueError("FixedViews: the train and centre datasets must hold the same records")
        if num_views < 1:
            raise ValueError(f"num_views (data.cache_views) must be >= 1, got {num_views}")
        self.train, self.centre = train, centre
        self.num_views, self.seed = int(num_views), int(seed)

    @classmethod
    def from_config(cls, records: Sequence[VideoRecord], root: str, input_config: InputConfig, *,
                    num_views: int, seed: int, **kwargs: Any) -> "FixedViews":
        """Views of the published pipelines; ``kwargs`` (flip, decode, num_classes, multi_label) go
        to :meth:`VideoDataset.from_config`. A video that cannot be read raises."""
        train = VideoDataset.from_config(records, root, input_config, mode="train", on_error="raise", seed=seed,
                                         **kwargs)
        kwargs.pop("flip", None)
        centre = VideoDataset.from_config(records, root, input_config, mode="val", on_error="raise", **kwargs)
        return cls(train, centre, num_views, seed)

    @property
    def records(self) -> List[VideoRecord]:
        return self.train.records

    def __len__(self) -> int:
        return len(self.train)

    def clip(self, index: int, view: int) -> torch.Tensor:
        """The normalised clip (3, T, H, W) of view ``view`` of video ``index``."""
        if not 0 <= view < self.num_views:
            raise IndexError(f"view {view} out of range for {self.num_views} views (data.cache_views)")
        if view == 0:
            return self.centre.load(index, np.random.default_rng(0))  # deterministic: the rng is not used
        return self.train.load(index, view_rng(self.seed, index, view))

    def pick(self, epoch: int, index: int) -> int:
        return pick_view(self.seed, epoch, index, self.num_views)

    def target(self, index: int) -> Union[int, torch.Tensor]:
        return self.train.target(index)


class _ByEpoch(Dataset):
    """A dataset whose items depend on the epoch, shared with DataLoader workers (as VideoDataset)."""

    def __init__(self, views: FixedViews) -> None:
        self.views = views
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def records(self) -> List[VideoRecord]:
        return self.views.records

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return len(self.views)


class FixedViewDataset(_ByEpoch):
    """Training on the fixed views without a cache: item ``i`` of epoch ``e`` is the decoded clip of
    view ``pick(e, i)``, exactly what :class:`CachedMapsDataset` holds the backbone's maps of."""

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Union[int, torch.Tensor]]:
        index = int(index)
        return self.views.clip(index, self.views.pick(self.epoch, index)), self.views.target(index)


class CachedMapsDataset(_ByEpoch):
    """Training on cached maps: item ``i`` of epoch ``e`` is the float32 maps (T', C, h, w) of view
    ``pick(e, i)`` of video ``i``, read from ``store`` (opened on first use in each process)."""

    def __init__(self, views: FixedViews, store: "FeatureStore") -> None:
        super().__init__(views)
        self.store = store
        self._array: Optional[np.memmap] = None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # each worker maps the file itself
        return state

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Union[int, torch.Tensor]]:
        if self._array is None:
            self._array = self.store.open()
        index = int(index)
        maps = np.array(self._array[index, self.views.pick(self.epoch, index)], dtype=np.float32)
        return torch.from_numpy(maps), self.views.target(index)


# ------------------------------------------------------------------------------ the key
def weights_hash(module: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a module's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def cache_key(views: FixedViews, *, model: str, backbone: nn.Module, dtype: str, flip: bool) -> Dict[str, Any]:
    """What a cache's maps depend on: the model and backbone, T, the input config, the backbone's
    weights, the views (K, seed, flip), the dtype and the list of (video path, label)."""
    listing = json.dumps([[r.path, r.label] for r in views.records]).encode()
    inp = views.train.input_config
    return {"model": model, "backbone": type(backbone).__name__, "num_segments": inp.num_segments,
            "input": {k: v for k, v in inp.to_dict().items() if k != "num_segments"},
            "weights": weights_hash(backbone), "views": views.num_views, "seed": views.seed, "flip": flip,
            "dtype": dtype, "videos": f"{len(views)} videos, list sha256 {hashlib.sha256(listing).hexdigest()[:16]}"}


class CacheMismatch(ValueError):
    """A cache directory holds maps made for another backbone, T, input, weights or list."""


def _differences(saved: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    return [f"{k} (cache {json.loads(json.dumps(saved.get(k)))!r}, run {json.loads(json.dumps(v))!r})"
            for k, v in now.items() if json.loads(json.dumps(saved.get(k))) != json.loads(json.dumps(v))]


# ------------------------------------------------------------------------------ files
class FeatureStore:
    """One subset's cached maps in ``directory``: ``<name>.bin`` (raw array) and ``<name>.json``
    (index). :meth:`check` compares a key, :meth:`write` builds atomically, :meth:`open` maps it."""

    def __init__(self, directory: Union[str, os.PathLike], name: str = "train") -> None:
        self.directory, self.name = Path(directory), name
        self.data_path = self.directory / f"{name}.bin"
        self.index_path = self.directory / f"{name}.json"

    def index(self) -> Optional[Dict[str, Any]]:
        """The index of a complete cache, or None (no index, or data of another size)."""
        if not self.index_path.is_file() or not self.data_path.is_file():
            return None
        index = json.loads(self.index_path.read_text())
        size = int(np.prod(index["shape"])) * np.dtype(DTYPES[index["key"]["dtype"]]).itemsize
        return index if index.get("format") == FORMAT and self.data_path.stat().st_size == size else None

    def check(self, key: Dict[str, Any], rebuild: bool = False) -> bool:
        """True when a complete cache for ``key`` is here. A cache for another key raises
        :class:`CacheMismatch` (one line naming what differs) unless ``rebuild``."""
        index = self.index()
        if index is None:
            return False
        diffs = _differences(index["key"], key)
        if not diffs:
            return True
        if rebuild:
            logger.info("%s: rebuilding (data.cache_rebuild), it was made for another %s", self.index_path,
                        ", ".join(d.split(" (")[0] for d in diffs))
            return False
        raise CacheMismatch(f"data.cache_features={self.directory}: {self.index_path.name} was made for another "
                            f"{'; '.join(diffs)}: set data.cache_rebuild=true to rebuild it, or choose another "
                            "data.cache_features directory")

    def remove_stale(self) -> None:
        """Remove the temporary files a killed build left behind."""
        for stale in self.directory.glob(f".{self.name}.*.tmp"):
            logger.info("removing %s, left by an interrupted feature-cache build", stale)
            stale.unlink(missing_ok=True)

    def write(self, key: Dict[str, Any], shape: Sequence[int],
              fill: Callable[[np.memmap], None]) -> None:
        """Create the array ``shape`` in a temporary file, let ``fill`` write it, then rename it and
        its index into place (data first, index last: only a finished build has an index)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.remove_stale()
        self.index_path.unlink(missing_ok=True)
        tmp = self.directory / f".{self.name}.bin.{os.getpid()}.tmp"
        try:
            mm = np.memmap(tmp, dtype=DTYPES[key["dtype"]], mode="w+", shape=tuple(int(s) for s in shape))
            fill(mm)
            mm.flush()
            del mm
            _fsync(tmp)
            os.replace(tmp, self.data_path)
        finally:
            tmp.unlink(missing_ok=True)
        index = {"format": FORMAT, "shape": [int(s) for s in shape], "key": key}
        tmp_index = self.directory / f".{self.name}.json.{os.getpid()}.tmp"
        tmp_index.write_text(json.dumps(index, indent=1) + "\n")
        _fsync(tmp_index)
        os.replace(tmp_index, self.index_path)

    def open(self) -> np.memmap:
        """The cached array, memory-mapped read-only."""
        index = self.index()
        if index is None:
            raise FileNotFoundError(f"{self.index_path}: no complete feature cache here (data.cache_features)")
        return np.memmap(self.data_path, dtype=DTYPES[index["key"]["dtype"]], mode="r", shape=tuple(index["shape"]))


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class ViewClips(Dataset):
    """Every (video, view) clip, video-major, as ``(clip, item)`` with ``item = video * K + view``:
    what a cache build runs the backbone on."""

    def __init__(self, views: FixedViews) -> None:
        self.views = views

    def __len__(self) -> int:
        return len(self.views) * self.views.num_views

    def __getitem__(self, item: int) -> Tuple[torch.Tensor, int]:
        index, view = divmod(int(item), self.views.num_views)
        return self.views.clip(index, view), int(item)
