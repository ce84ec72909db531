"""The list-file parsers: list files and folder trees -> :class:`RecordList` (paths relative to a
dataset root). The formats that ``data.list_format`` names, registered in :mod:`tcpnet.data.formats`,
call them.

Parsers for the TSN/TCPNet frame lists, ``path label`` video lists, class-per-folder trees
(Kinetics as distributed), Something-Something V1 csv files, Charades csv files (multi-label),
HMDB51 and UCF101 split files. Each returns a :class:`RecordList` (a plain ``list`` of records
with a ``class_names`` attribute when the format names its classes). Malformed lines raise
``ValueError("<file>:<line>: expected ..., got ...")``; records keep their line number. Text is
read with :func:`open_list_file` (UTF-8, a byte-order mark ignored). :func:`check_records` finds
every missing video up front, :func:`check_labels` every label outside the class count.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

import torch

from tcpnet.data.frame_template import frame_file_name
from tcpnet.data.records import PathLike, RecordList, VideoRecord

__all__ = [
    "read_frame_list",
    "read_video_list",
    "read_class_names",
    "read_class_folders",
    "read_something_v1_labels",
    "read_something_v1",
    "read_charades",
    "read_hmdb51_split",
    "read_ucf101_class_ind",
    "read_ucf101_split",
    "multi_hot",
    "open_list_file",
    "check_records",
    "check_labels",
    "VIDEO_EXTENSIONS",
]

logger = logging.getLogger(__name__)

# File name endings taken as videos, by the folder reader and by `tcpnet prepare` alike.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".m2ts", ".mts",
                    ".3gp", ".wmv", ".ogv")


def open_list_file(path: PathLike, newline: Optional[str] = None) -> TextIO:
    """Open a list, csv or class-name file for reading as UTF-8; a byte-order mark (as Windows
    editors save) is dropped rather than becoming part of the first path or name."""
    return open(path, "r", encoding="utf-8-sig", newline=newline)


def _lines(path: PathLike) -> Iterator[Tuple[int, str]]:
    """(1-based line number, stripped line) for every non-blank line of a text file."""
    with open_list_file(path) as f:
        for n, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                yield n, line


def _int_field(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where}: expected an integer {what}, got {value!r}") from None


def read_class_names(path: PathLike) -> List[str]:
    """A label file: one class name per line, class id = line order (blank lines skipped)."""
    names = [line for _, line in _lines(path)]
    if not names:
        raise ValueError(f"{path}: class name file is empty")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"{path}: duplicate class names {sorted(dup)}")
    return names


def _name_index(class_names: Sequence[str]) -> Dict[str, int]:
    return {n: i for i, n in enumerate(class_names)}


# --------------------------------------------------------------------------- TSM frame lists


def read_frame_list(path: PathLike, min_frames: int = 0) -> RecordList:
    """TSM/TCPNet list: ``<folder> <num_frames> <label>`` per line.

    Any whitespace separates fields, and the last two fields are taken as the integers, so
    folder names may contain spaces (the published reader splits on single spaces and supports
    neither). Lines with ``num_frames < min_frames`` are dropped (the published training and
    validation drop ``< 3``).
    """
    records = RecordList()
    for n, line in _lines(path):
        where = f"{path}:{n}"
        parts = line.rsplit(None, 2)
        if len(parts) != 3:
            raise ValueError(f"{where}: expected 'path num_frames label', got {len(parts)} field(s): {line!r}")
        folder, nf, lab = parts
        num_frames = _int_field(nf, where, "num_frames (2nd-last field)")
        label = _int_field(lab, where, "label (last field)")
        if num_frames < 0 or label < 0:
            raise ValueError(f"{where}: expected non-negative num_frames and label, got {nf} {lab}")
        if num_frames < min_frames:
            continue
        records.append(VideoRecord(folder, num_frames, label, line=n))
    return records


# --------------------------------------------------------------------------- video lists


def read_video_list(path: PathLike, class_names: Union[Sequence[str], PathLike, None] = None) -> RecordList:
    """``<video path> <label>`` per line; the label (last field) is a class index or a class name.

    ``class_names`` (a list or a label file) maps names to ids; without it, a list of integer
    labels is taken as is and a list of names gets ids from the sorted set of names found.
    """
    rows = []
    for n, line in _lines(path):
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'path label', got 1 field: {line!r}")
        rows.append((n, parts[0], parts[1]))
    if class_names is not None and not isinstance(class_names, (list, tuple)):
        class_names = read_class_names(class_names)
    names = list(class_names) if class_names is not None else None
    if names is None:
        if all(lab.lstrip("-").isdigit() for _, _, lab in rows):
            index = None
        else:
            names = sorted({lab for _, _, lab in rows})
            index = _name_index(names)
    else:
        index = _name_index(names)
    records = RecordList(class_names=names)
    for n, video, lab in rows:
        where = f"{path}:{n}"
        if index is not None and lab in index:
            label = index[lab]
        elif lab.lstrip("-").isdigit():
            label = int(lab)
            if label < 0 or (names is not None and label >= len(names)):
                raise ValueError(f"{where}: expected a class index in [0, {len(names) if names else 'K'}), got {lab}")
        else:
            raise ValueError(f"{where}: expected a class index or one of the {len(names or [])} "
                             f"class names, got {lab!r}")
        records.append(VideoRecord(video, None, label, line=n))
    return records


# --------------------------------------------------------------------------- folder trees


def read_class_folders(root: PathLike, class_names: Union[Sequence[str], PathLike, None] = None,
                       extensions: Sequence[str] = VIDEO_EXTENSIONS) -> RecordList:
    """A ``root/<class>/<video>`` tree (Kinetics as distributed): one record per video file
    with ``path = "<class>/<video>"``; class ids from ``class_names`` (a list or label file)
    or the sorted class folder names. Files are listed in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: expected a directory of class folders")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if class_names is not None and not isinstance(class_names, (list, tuple)):
        class_names = read_class_names(class_names)
    names = list(class_names) if class_names is not None else folders
    index = _name_index(names)
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise ValueError(f"{root}: class folders not in the class list: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''}")
    exts = tuple(e.lower() for e in extensions)
    records = RecordList(class_names=names)
    for folder in folders:
        for f in sorted((root / folder).iterdir()):
            if f.is_file() and f.suffix.lower() in exts:
                records.append(VideoRecord(f"{folder}/{f.name}", None, index[folder]))
    return records


# --------------------------------------------------------------------------- Something-Something


def read_something_v1_labels(path: PathLike, sort: bool = True) -> List[str]:
    """``something-something-v1-labels.csv``: one category per line. ``sort=True`` orders them
    alphabetically, as TSM's ``gen_label_sthv1.py`` does before numbering them."""
    names = read_class_names(path)
    return sorted(names) if sort else names


def read_something_v1(csv_path: PathLike, class_names: Union[Sequence[str], PathLike],
                      frame_root: Optional[PathLike] = None) -> RecordList:
    """Something-Something V1 ``train``/``validation`` csv: ``<id>;<Label name>`` per line.

    ``class_names``: the list from :func:`read_something_v1_labels` (or that file's path).
    The record path is the frame folder ``<id>`` (frames ``{:05d}.jpg``); with ``frame_root``
    the frames in each folder are counted to fill ``num_frames``.
    """
    if not isinstance(class_names, (list, tuple)):
        class_names = read_something_v1_labels(class_names)
    index = _name_index(class_names)
    records = RecordList(class_names=class_names)
    for n, line in _lines(csv_path):
        parts = line.split(";", 1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"{csv_path}:{n}: expected '<id>;<Label name>', got {line!r}")
        vid, name = parts[0].strip(), parts[1].strip()
        if name not in index:
            raise ValueError(f"{csv_path}:{n}: label {name!r} is not one of the {len(index)} categories")
        num_frames = None
        if frame_root is not None:
            folder = Path(frame_root) / vid
            if not folder.is_dir():
                raise FileNotFoundError(f"{csv_path}:{n}: frame folder {folder} does not exist")
            num_frames = sum(1 for f in folder.iterdir() if f.suffix.lower() == ".jpg")
        records.append(VideoRecord(vid, num_frames, index[name], line=n))
    return records


# --------------------------------------------------------------------------- Charades


def read_charades(csv_path: PathLike, num_classes: int = 157, video_ext: str = ".mp4") -> RecordList:
    """Charades ``Charades_v1_{train,test}.csv`` (multi-label).

    Columns ``id, ..., actions``; ``actions`` is ``c092 11.90 21.20;c147 0.00 12.60`` (class,
    start s, end s). The label is the sorted list of distinct class ids (may be empty); the
    path is ``<id><video_ext>`` (``video_ext=""`` for frame folders). See :func:`multi_hot`.
    """
    records = RecordList(class_names=None)
    with open_list_file(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        for col in ("id", "actions"):
            if reader.fieldnames is None or col not in reader.fieldnames:
                raise ValueError(f"{csv_path}:1: expected a header with columns 'id' and 'actions', "
                                 f"got {reader.fieldnames}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            vid = (row["id"] or "").strip()
            if not vid:
                raise ValueError(f"{where}: expected a video id, got an empty 'id' field")
            labels = set()
            actions = (row["actions"] or "").strip()
            for act in filter(None, (a.strip() for a in actions.split(";"))):
                fields = act.split()
                if len(fields) != 3 or not fields[0].startswith("c") or not fields[0][1:].isdigit():
                    raise ValueError(f"{where}: expected actions 'cNNN start end;...', got {act!r}")
                try:
                    float(fields[1]), float(fields[2])
                except ValueError:
                    raise ValueError(f"{where}: expected numeric start/end times in {act!r}") from None
                cls = int(fields[0][1:])
                if cls >= num_classes:
                    raise ValueError(f"{where}: class {fields[0]} out of range for {num_classes} classes")
                labels.add(cls)
            records.append(VideoRecord(f"{vid}{video_ext}", None, sorted(labels), line=reader.line_num))
    return records


def multi_hot(labels: Union[int, Sequence[int]], num_classes: int) -> torch.Tensor:
    """Float32 multi-hot target of length ``num_classes`` from a label or list of labels."""
    if isinstance(labels, int):
        labels = [labels]
    t = torch.zeros(num_classes, dtype=torch.float32)
    for lab in labels:
        if not 0 <= lab < num_classes:
            raise ValueError(f"multi_hot: label {lab} out of range for {num_classes} classes")
        t[lab] = 1.0
    return t


# --------------------------------------------------------------------------- HMDB51 / UCF101


def read_hmdb51_split(split_dir: PathLike, split: int = 1, subset: str = "train",
                      class_names: Optional[Sequence[str]] = None) -> RecordList:
    """HMDB51 split files ``<class>_test_split<k>.txt`` with lines ``<video>.avi <0|1|2>``
    (1 = train, 2 = test, 0 = unused). Records ``<class>/<video>.avi``; class ids from the
    sorted class names found (or ``class_names``)."""
    if subset not in ("train", "test"):
        raise ValueError(f"subset: expected 'train' or 'test', got {subset!r}")
    want = "1" if subset == "train" else "2"
    suffix = f"_test_split{split}.txt"
    files = sorted(p for p in Path(split_dir).iterdir() if p.name.endswith(suffix))
    if not files:
        raise FileNotFoundError(f"{split_dir}: no '*{suffix}' split files")
    found = [p.name[: -len(suffix)] for p in files]
    names = list(class_names) if class_names is not None else found
    index = _name_index(names)
    records = RecordList(class_names=names)
    for cls, p in zip(found, files):
        if cls not in index:
            raise ValueError(f"{p}: class {cls!r} not in the class list")
        for n, line in _lines(p):
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{p}:{n}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == want:
                records.append(VideoRecord(f"{cls}/{parts[0]}", None, index[cls]))
    return records


def read_ucf101_class_ind(path: PathLike) -> List[str]:
    """``classInd.txt``: lines ``<1-based id> <ClassName>`` -> names ordered by id."""
    entries = {}
    for n, line in _lines(path):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected '<id> <ClassName>', got {line!r}")
        i = _int_field(parts[0], f"{path}:{n}", "class id")
        entries[i] = parts[1].strip()
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise ValueError(f"{path}: expected class ids 1..{len(entries)}, got {sorted(entries)[:5]}...")
    return [entries[i] for i in range(1, len(entries) + 1)]


def read_ucf101_split(path: PathLike, class_names: Union[Sequence[str], PathLike]) -> RecordList:
    """UCF101 ``trainlistXX.txt`` (``Class/v_x.avi <1-based label>``) or ``testlistXX.txt``
    (``Class/v_x.avi``, label from the folder). ``class_names``: from :func:`read_ucf101_class_ind`
    (or that file's path). A train label that disagrees with its folder is an error."""
    if not isinstance(class_names, (list, tuple)):
        class_names = read_ucf101_class_ind(class_names)
    index = _name_index(class_names)
    records = RecordList(class_names=class_names)
    for n, line in _lines(path):
        where = f"{path}:{n}"
        parts = line.split()
        video = parts[0]
        folder = video.split("/", 1)[0] if "/" in video else None
        if len(parts) > 2 or folder is None:
            raise ValueError(f"{where}: expected '<Class>/<video>.avi [label]', got {line!r}")
        if folder not in index:
            raise ValueError(f"{where}: class folder {folder!r} not in classInd")
        label = index[folder]
        if len(parts) == 2:
            given = _int_field(parts[1], where, "1-based label") - 1
            if given != label:
                raise ValueError(f"{where}: label {parts[1]} (1-based) disagrees with folder {folder!r} "
                                 f"(class {label + 1} in classInd)")
        records.append(VideoRecord(video, None, label, line=n))
    return records


# --------------------------------------------------------------------------- checks


def check_records(records: Sequence[VideoRecord], root: PathLike = "",
                  frame_template: Optional[str] = None, raise_error: bool = True) -> List[str]:
    """Find every record whose video (or frame folder) is missing under ``root``.

    With ``frame_template`` (e.g. ``"img_{:05d}.jpg"``, see :mod:`tcpnet.data.frame_template`) a
    frame folder must also hold frame 1. Returns the unusable paths; with ``raise_error`` raises one
    ``FileNotFoundError`` that lists the missing ones (the first 20) and, apart, the folders without
    frame 1, naming the file the template gives and what the first such folder holds instead.
    """
    gone, no_first = [], []  # paths; (folder, expected first frame file)
    for r in records:
        p = Path(root) / r.path
        if not p.exists():
            gone.append(str(p))
        elif p.is_dir() and frame_template is not None:
            first = p / frame_file_name(frame_template, 1, p)
            if not first.is_file():
                no_first.append((str(p), str(first)))
    if not (gone or no_first):
        return []
    n = len(records)
    parts = []
    if gone:
        more = f" ... and {len(gone) - 20} more" if len(gone) > 20 else ""
        parts.append(f"{len(gone)} of {n} videos missing: {', '.join(gone[:20])}{more}")
    if no_first:
        folder, first = no_first[0]
        held = sorted(os.listdir(folder))
        holds = f"{folder} holds {', '.join(held[:3])}{' ...' if len(held) > 3 else ''}" if held else f"{folder} is empty"
        parts.append(f"{len(no_first)} of {n} frame folders without frame 1: frame 1 not found: {first} "
                     f"(data.frame_template={frame_template!r}); {holds}")
    logger.warning("under %s: %s", root, "; ".join(parts))
    if raise_error:
        raise FileNotFoundError("; ".join(parts))
    return gone + [folder for folder, _ in no_first]


def check_labels(records: Sequence[VideoRecord], num_classes: int, list_path: PathLike, key: str = "",
                 source: str = "") -> None:
    """Fail before any work when a record's label (every label of a multi-label record) is not
    in ``[0, num_classes)``, instead of mid-step in the loss or after an epoch in validation.

    One ``ValueError`` names the first bad record as ``<list_path>:<line>`` (with ``key``, the
    config key that named the file), its label, the class count and ``source`` (where the count
    came from, e.g. ``"model.num_classes"``), and how many records are out of range with the
    largest label.
    """
    num_classes = int(num_classes)
    bad = []  # (record, offending label)
    for r in records:
        labels = r.label if isinstance(r.label, (list, tuple)) else [r.label]
        wrong = [int(lab) for lab in labels if not 0 <= int(lab) < num_classes]
        if wrong:
            bad.append((r, max(wrong, key=lambda lab: (lab >= 0, abs(lab)))))
    if not bad:
        return

    def where(r: VideoRecord) -> str:
        return f"{list_path}:{r.line}" if r.line is not None else f"{list_path} ({r.path})"

    first, lab = bad[0]
    named = f" ({key})" if key else ""
    origin = f" ({source})" if source else ""
    msg = (f"{where(first)}{named}: label {lab} is out of range for {num_classes} classes{origin}; "
           f"labels must be in [0, {num_classes})")
    top, top_lab = max(bad, key=lambda b: b[1])
    if len(bad) > 1 or top is not first:
        msg += f"; {len(bad)} records are out of range, the largest label is {top_lab} ({where(top)})"
    raise ValueError(msg)
