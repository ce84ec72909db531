"""From a data config and a model's input config to datasets.

``check_data_config`` (before any work) -> ``read_lists`` (the format named by
``data.list_format``, every missing video and every label outside the class count reported up
front, numbering that would shift or add classes refused) -> ``build_datasets`` (train and val)
or ``build_test_dataset`` (views). The clip length T is the input config's ``num_segments`` (the
model's). The ``data.crop_size``/``data.scale_size`` override of the model's input config is
:func:`resolve_input_config`, applied once per path: by the trainer, which keeps the result as the
model's input config (``build_datasets`` checks it was), and by ``build_test_dataset`` to the
checkpoint's config.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from torch.utils.data import Dataset

from tcpnet.config import ConfigError, DataConfig
from tcpnet.data.dataset import DecodeSpec, VideoDataset
from tcpnet.data.feature_cache import CachedMapsDataset, FeatureStore, FixedViewDataset, FixedViews
from tcpnet.data.formats import ListSource, frame_template_for, get_list_format
from tcpnet.data.frame_template import check_frame_template
from tcpnet.data.list_parsers import check_labels, check_records
from tcpnet.data.records import RecordList, VideoRecord
from tcpnet.input_config import InputConfig

logger = logging.getLogger(__name__)

__all__ = ["check_data_config", "load_class_names", "read_list", "read_lists", "check_list_labels",
           "check_label_numbering", "infer_num_classes", "resolve_input_config", "build_datasets",
           "build_test_dataset", "IndexedSubset"]

SUBSETS = ("train", "val", "test")


def check_data_config(data_cfg: DataConfig) -> None:
    """Fail with a :class:`~tcpnet.config.ConfigError` naming the key when ``data.list_format``
    is not registered or the format's required keys are unset. Cheap: reads no file."""
    name = data_cfg.list_format
    for key in get_list_format(name).requires:
        if not getattr(data_cfg, key, None):
            raise ConfigError(f"data.list_format={name} needs data.{key}")
    if data_cfg.split < 1:
        raise ConfigError(f"data.split must be >= 1, got {data_cfg.split}")
    if data_cfg.frame_template is not None:
        try:
            check_frame_template(data_cfg.frame_template)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def load_class_names(data_cfg: DataConfig) -> Optional[List[str]]:
    """The classes in ``data.class_names``, read the way the list format reads them (a plain
    list, UCF101's ``classInd.txt``, the sorted Something-Something labels); None if unset."""
    if not data_cfg.class_names:
        return None
    return get_list_format(data_cfg.list_format).read_class_names(data_cfg.class_names)


def read_list(data_cfg: DataConfig, subset: str, *, path: Optional[str] = None,
              class_names: Optional[Sequence[str]] = None, num_classes: Optional[int] = None,
              classes_from: Optional[str] = None) -> RecordList:
    """Records of ``data.<subset>_list`` (or ``path``) in ``data.list_format``; with
    ``num_classes`` every label is checked against it (``classes_from`` says where the count came
    from, for the message); with ``data.check_files`` every missing video is listed in one error.
    Errors name the file and key; the records' ``source`` names them for later errors."""
    if subset not in SUBSETS:
        raise ValueError(f"subset: expected one of {SUBSETS}, got {subset!r}")
    key = f"data.{subset}_list"
    path = path or getattr(data_cfg, f"{subset}_list")
    if not path:
        raise ValueError(f"{key} is not set")
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} ({key}): not found")
    names = list(class_names) if class_names is not None else None
    source = ListSource(str(path), subset, data_cfg, names, num_classes)
    records = get_list_format(data_cfg.list_format).read(source)
    if records.class_names is None and names is not None:
        records.class_names = names
    if not records:
        raise ValueError(f"{path} ({key}): no videos")
    if not data_cfg.multi_label and any(isinstance(r.label, (list, tuple)) for r in records):
        raise ValueError(f"{path} ({key}): multi-label records; set data.multi_label=true")
    records.source = f"{path} ({key})"
    records.frame_template = frame_template_for(data_cfg, str(path))
    if num_classes is not None:
        check_labels(records, num_classes, path, key, classes_from or "")
    if data_cfg.check_files:
        template = records.frame_template if data_cfg.format != "video" else None
        try:
            check_records(records, data_cfg.root, frame_template=template)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{path} ({key}): {e}") from None
    return records


def read_lists(data_cfg: DataConfig, *, num_classes: Optional[int] = None,
               class_names: Optional[Sequence[str]] = None) -> Dict[str, RecordList]:
    """Records of every list the config names (train, val, test). Class names: ``class_names``,
    else ``data.class_names`` (see :func:`load_class_names`), else those the train list names,
    so every subset numbers the classes the same way.

    Labels are checked as each list is read, against ``num_classes`` (``model.num_classes``) when
    given, else against the number of class names once known; without either the class count is
    inferred from the labels later (:func:`infer_num_classes`) and cannot be exceeded."""
    check_data_config(data_cfg)
    if class_names is not None:
        names: Optional[List[str]] = list(class_names)
        names_from = "from the class names given"
    else:
        names = load_class_names(data_cfg)
        names_from = f"from data.class_names = {data_cfg.class_names}"
    records: Dict[str, RecordList] = {}
    for subset in SUBSETS:
        path = getattr(data_cfg, f"{subset}_list")
        if not path:
            continue
        recs = read_list(data_cfg, subset, class_names=names, num_classes=num_classes,
                         classes_from="model.num_classes")
        if num_classes is None and names is not None:
            check_labels(recs, len(names), path, f"data.{subset}_list", names_from)
        if names is None and recs.class_names is not None:
            names = recs.class_names
            names_from = f"named by data.{subset}_list = {path}"
        records[subset] = recs
    check_label_numbering(data_cfg, records, inferred=num_classes is None and names is None)
    return records


def _labels(record: VideoRecord) -> List[int]:
    return [int(lab) for lab in (record.label if isinstance(record.label, (list, tuple)) else [record.label])]


def check_label_numbering(data_cfg: DataConfig, records: Dict[str, Sequence[VideoRecord]], *, inferred: bool) -> None:
    """Catch numberings that shift or add classes without a word: train labels 1..K with no 0 (a
    1-based list, as UCF101's ``trainlistNN.txt`` read as a plain video list) and val/test labels
    the train list does not have (a typo). While the class count is ``inferred`` from the labels,
    either is a ``ValueError`` naming the list, line and key; once model.num_classes or class names
    fix the count, a warning."""
    train = records.get("train")
    if not train:
        return
    seen = {lab for r in train for lab in _labels(r)}

    def complain(subset: str, record: VideoRecord, msg: str, fix: str) -> None:
        where = f"{getattr(data_cfg, f'{subset}_list')}:{record.line} (data.{subset}_list)"
        if inferred:
            raise ValueError(f"{where}: {msg}; {fix}")
        logger.warning("%s: %s", where, msg)

    if len(seen) > 1 and seen == set(range(1, max(seen) + 1)):
        last = next(r for r in train if max(seen) in _labels(r))
        complain("train", last, f"the labels run 1..{max(seen)} with no 0, as in a 1-based list; read as "
                 f"0-based they make {max(seen) + 1} classes, class 0 without a video and every label off by one",
                 "number the labels from 0, or for UCF101 use data.list_format=ucf101 with data.class_names=classInd.txt")
    for subset in ("val", "test"):
        new = [(r, lab) for r in records.get(subset, ()) for lab in _labels(r) if lab not in seen]
        if new:
            record, lab = new[0]
            others = sorted({lab for _, lab in new})
            complain(subset, record, f"label {lab} does not occur in the train list {data_cfg.train_list} "
                     f"({len(new)} label(s) of this list do not: {others[:10]}); it would add a class that no "
                     f"video trains", "fix the label, or set model.num_classes (or data.class_names) if the "
                     "train list lacks these classes on purpose")


def check_list_labels(records: Dict[str, Sequence], num_classes: int, data_cfg: DataConfig,
                      source: str = "") -> None:
    """Check every record of every list (``{"train": records, ...}`` as :func:`read_lists` returns)
    against the class count the model is built with, before any work: a ``ValueError`` names the
    list file, the line, the config key, the label and ``source`` (where ``num_classes`` came
    from, e.g. ``"model.num_classes"`` or ``"from the checkpoint run/best.pt"``)."""
    for subset, recs in records.items():
        path = getattr(data_cfg, f"{subset}_list", None) or subset
        check_labels(recs, num_classes, path, f"data.{subset}_list", source)


def infer_num_classes(records: Dict[str, Sequence]) -> int:
    """1 + the largest label in the lists (when neither model.num_classes nor class names are given)."""
    labels = [lab for recs in records.values() for r in recs
              for lab in (r.label if isinstance(r.label, (list, tuple)) else [r.label])]
    if not labels:
        raise ValueError("model.num_classes is not set and cannot be inferred (no labels in the lists)")
    return max(labels) + 1


def resolve_input_config(data_cfg: DataConfig, input_config: InputConfig) -> InputConfig:
    """The model's input config with ``data.crop_size`` / ``data.scale_size`` (train or test at
    another resolution than the model's default) and ``data.sampler`` / ``data.frame_interval``
    (how the clip's frames are picked) when set. A frame interval alone changes a dense model's
    interval; on a TSN model it is a ConfigError naming the key."""
    changes: Dict[str, object] = {k: getattr(data_cfg, k) for k in ("crop_size", "scale_size") if getattr(data_cfg, k)}
    if data_cfg.sampler is not None:
        changes.update(sampler=data_cfg.sampler, frame_interval=data_cfg.frame_interval)
    elif data_cfg.frame_interval is not None:
        if input_config.sampler != "dense":
            raise ConfigError(f"data.frame_interval={data_cfg.frame_interval} is for dense sampling, but the model's "
                              f"input config samples {input_config.sampler!r}; set data.sampler=dense as well")
        changes["frame_interval"] = data_cfg.frame_interval
    return dataclasses.replace(input_config, **changes) if changes else input_config


def _decode_spec(data_cfg: DataConfig, records: Sequence[VideoRecord]) -> DecodeSpec:
    """How the records' files are read: ``data.reader``, ``data.cache_decoded_mb`` and
    ``data.decode_timeout``, and the frame template their list format names (see :func:`read_list`)."""
    template = getattr(records, "frame_template", None) or frame_template_for(data_cfg)
    return DecodeSpec(frame_template=template, reader=data_cfg.reader, cache_bytes=data_cfg.cache_decoded_mb * 2**20,
                      timeout=data_cfg.decode_timeout)


def build_datasets(data_cfg: DataConfig, records: Dict[str, Sequence], input_config: InputConfig, *,
                   num_classes: Optional[int], seed: int, max_consecutive_failures: int = 10) -> Dict[str, Dataset]:
    """A VideoDataset per subset: train = random segments (or a random dense clip), multi-scale crop
    and flip; val (and test) = segment centres (or the centre clip), resize and centre crop; T =
    ``input_config.num_segments``, the sampling ``input_config.sampler``. Videos with
    fewer than 3 frames are dropped. ``input_config`` is the model's, with :func:`resolve_input_config`
    already applied (the trainer keeps it on the model); an unresolved one is a ValueError. With
    ``data.cache_views`` or ``data.cache_features`` the train set is K fixed views per video, and
    with ``data.cache_features`` the val set is the cached maps of its centre views
    (:mod:`tcpnet.data.feature_cache`)."""
    for key in ("crop_size", "scale_size", "sampler", "frame_interval"):
        wanted = getattr(data_cfg, key)
        if wanted and getattr(input_config, key) != wanted:
            raise ValueError(f"input_config.{key}={getattr(input_config, key)} but data.{key}={wanted}: pass "
                             f"resolve_input_config(data_cfg, input_config), the model's input config with the data overrides")
    if data_cfg.cache_decoded_mb and data_cfg.num_workers:
        logger.warning("data.cache_decoded_mb=%d is not used with data.num_workers=%d: the decoded-video cache "
                       "serves the main process only (tcpnet.data.cache); set data.num_workers=0",
                       data_cfg.cache_decoded_mb, data_cfg.num_workers)
    datasets = {subset: VideoDataset.from_config(
                    recs, data_cfg.root, input_config, mode="train" if subset == "train" else "val",
                    flip=data_cfg.flip, num_classes=num_classes, multi_label=data_cfg.multi_label, seed=seed,
                    max_consecutive_failures=max_consecutive_failures, decode=_decode_spec(data_cfg, recs))
                for subset, recs in records.items() if subset not in _fixed_view_subsets(data_cfg)}
    for subset in _fixed_view_subsets(data_cfg) & set(records):
        datasets[subset] = _fixed_view_set(data_cfg, subset, records[subset], input_config,
                                           num_classes=num_classes, seed=seed)
    return datasets


def _fixed_view_subsets(data_cfg: DataConfig) -> set:
    """The subsets read as fixed views: train with ``data.cache_views`` or ``data.cache_features``,
    and val (its centre view, the one clip validation feeds the model) with ``data.cache_features``."""
    if data_cfg.cache_features:
        return {"train", "val"}
    return {"train"} if data_cfg.cache_views is not None else set()


def _fixed_view_set(data_cfg: DataConfig, subset: str, records: Sequence, input_config: InputConfig, *,
                    num_classes: Optional[int], seed: int) -> Dataset:
    """The ``data.cache_views`` fixed views of the train videos (1 for val: the centre view): the
    backbone's cached maps in ``<data.cache_features>/<subset>.bin`` with a feature cache (built by
    the trainer before they are read), else the decoded clips."""
    views = FixedViews.from_config(records, data_cfg.root, input_config,
                                   num_views=(data_cfg.cache_views or 1) if subset == "train" else 1,
                                   seed=seed, flip=data_cfg.flip, num_classes=num_classes,
                                   multi_label=data_cfg.multi_label, decode=_decode_spec(data_cfg, records))
    if data_cfg.cache_features:
        return CachedMapsDataset(views, FeatureStore(data_cfg.cache_features, subset))
    return FixedViewDataset(views)


def build_test_dataset(data_cfg: DataConfig, records: Sequence, input_config: InputConfig, *,
                       views: Union[str, Tuple[int, int]], num_classes: Optional[int]) -> VideoDataset:
    """The test dataset: ``views`` (crops x clips) of every video, none dropped; a video that
    cannot be read is an error, not replaced. ``input_config`` is a trained model's (T =
    ``num_segments``); ``data.crop_size``/``data.scale_size`` override it here."""
    return VideoDataset.from_config(
        records, data_cfg.root, resolve_input_config(data_cfg, input_config), mode="test", views=views,
        num_classes=num_classes, multi_label=data_cfg.multi_label, min_frames=0, decode=_decode_spec(data_cfg, records))


class IndexedSubset(Dataset):
    """``dataset[indices[i]]`` plus its dataset index, so evaluation can gather and de-duplicate."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        clip, target = self.dataset[self.indices[i]][:2]
        return clip, target, self.indices[i]
