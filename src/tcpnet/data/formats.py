"""The list-format registry: ``data.list_format`` names one registered reader.

A format is one function ``read(source: ListSource) -> RecordList`` registered with
:func:`register_list_format`; it takes from ``source.data`` (the :class:`~tcpnet.config.DataConfig`)
the keys it needs. Adding a format is one decorated function::

    @register_list_format("mylist")
    def read_mylist(source: ListSource) -> RecordList:
        return RecordList(VideoRecord(path, None, int(label)) for path, label in ...)

Built in: ``auto`` (detects tsn / video / charades), ``tsn``, ``video``, ``folders``,
``ssv1``, ``charades``, ``hmdb51``, ``ucf101``. Record paths are relative to ``data.root``.

A format may live in any module under ``tcpnet/data/`` (a new file, no other edit): before it says
a name is unknown, and before it lists the formats, the registry imports every module of the
package (:func:`import_data_modules`). Modules outside the package register by being imported.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tcpnet.config import ConfigError, DataConfig
from tcpnet.data import list_parsers as parsers
from tcpnet.data.frame_template import DEFAULT_FRAME_TEMPLATE, check_frame_template
from tcpnet.data.records import PathLike, RecordList, VideoRecord

__all__ = ["ListSource", "ListFormat", "register_list_format", "list_formats", "get_list_format",
           "import_data_modules", "frame_template_for"]


@dataclass(frozen=True)
class ListSource:
    """What a format reader is given: the ``path`` a config key names, which key it was
    (``subset``: train | val | test), the data config, and the classes known so far."""

    path: str
    subset: str
    data: DataConfig
    class_names: Optional[List[str]] = None  # from data.class_names, else from the train list
    num_classes: Optional[int] = None        # model.num_classes when set


@dataclass(frozen=True)
class ListFormat:
    """A registered format: its reader, how it reads the ``data.class_names`` file, the
    data-config keys that must be set for it, and how its frame folders name their images
    (``None``: the default ``img_{:05d}.jpg``)."""

    name: str
    read: Callable[[ListSource], RecordList]
    read_class_names: Callable[[PathLike], List[str]]
    requires: Tuple[str, ...]
    frame_template: Optional[str] = None


_FORMATS: Dict[str, ListFormat] = {}


def register_list_format(name: str, *, read_class_names: Callable[[PathLike], List[str]] = parsers.read_class_names,
                         requires: Sequence[str] = (), frame_template: Optional[str] = None) -> Callable:
    """Decorator: register ``read(source) -> RecordList`` as ``data.list_format=<name>``.

    ``read_class_names`` reads the file named by ``data.class_names`` for this format (default:
    one name per line); ``requires`` names ``data.*`` keys that must be set (checked before any
    work by :func:`tcpnet.data.build.check_data_config`); ``frame_template`` names the images of
    the format's frame folders (:mod:`tcpnet.data.frame_template`) unless ``data.frame_template``
    is set.
    """
    if frame_template is not None:
        check_frame_template(frame_template)

    def decorate(read: Callable[[ListSource], RecordList]) -> Callable[[ListSource], RecordList]:
        if name in _FORMATS:
            raise ValueError(f"list format {name!r} is already registered")
        _FORMATS[name] = ListFormat(name, read, read_class_names, tuple(requires), frame_template)
        return read
    return decorate


def import_data_modules() -> None:
    """Import every module of the ``tcpnet.data`` package, sub-packages included, so that a format
    registered in any of them is known. By name at run time: the registry has no static import of
    the modules that register into it (they import it), so the layering stays acyclic."""
    package = sys.modules[__package__]

    def fail(name: str) -> None:
        raise ImportError(f"{name}: could not be imported while looking for list formats")

    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.", onerror=fail):
        if info.name not in sys.modules:
            importlib.import_module(info.name)


def list_formats() -> List[str]:
    """Registered format names, in registration order (every module of ``tcpnet.data`` imported first)."""
    import_data_modules()
    return list(_FORMATS)


def get_list_format(name: str) -> ListFormat:
    """The registered format ``name``; a ConfigError naming ``data.list_format`` and the choices."""
    if name not in _FORMATS:
        import_data_modules()
    if name not in _FORMATS:
        raise ConfigError(f"data.list_format must be one of {list_formats()}, got {name!r}")
    return _FORMATS[name]


def frame_template_for(data: DataConfig, list_path: Optional[str] = None) -> str:
    """How the frame folders of a list name their images: ``data.frame_template`` when the user set
    it, else the list format's default (for ``auto``, that of the format it detects in
    ``list_path``), else ``img_{:05d}.jpg``."""
    if data.frame_template is not None:
        return check_frame_template(data.frame_template)
    name = data.list_format
    if name == "auto" and list_path and os.path.isfile(list_path):
        name = detect_list_format(list_path, data.format)
    return get_list_format(name).frame_template or DEFAULT_FRAME_TEMPLATE


# --------------------------------------------------------------------------- built-in formats


@register_list_format("auto")
def read_auto(source: ListSource) -> RecordList:
    """A ``.csv`` file is Charades; with ``data.format=frames`` or lines ``<path> <num_frames>
    <label>`` the TSN frame list; otherwise a ``<path> <label>`` video list."""
    return get_list_format(detect_list_format(source.path, source.data.format)).read(source)


def detect_list_format(path: str, data_format: Optional[str] = None) -> str:
    """The format ``auto`` reads ``path`` as (see :func:`read_auto`)."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder; set data.list_format to one of the folder formats "
                         f"(folders, hmdb51)")
    if str(path).endswith(".csv"):
        return "charades"
    if data_format == "frames":
        return "tsn"
    with parsers.open_list_file(path) as f:
        first = next((line.split() for line in f if line.strip()), [])
    tsn = len(first) >= 3 and first[-1].lstrip("-").isdigit() and first[-2].isdigit()
    return "tsn" if tsn else "video"


@register_list_format("tsn", frame_template="img_{:05d}.jpg")
def read_tsn(source: ListSource) -> RecordList:
    """``<folder> <num_frames> <label>`` per line (TSN/TSM/TCPNet lists)."""
    return parsers.read_frame_list(source.path)


@register_list_format("video")
def read_video(source: ListSource) -> RecordList:
    """``<video> <label>`` per line; labels are ids or class names."""
    return parsers.read_video_list(source.path, class_names=source.class_names)


@register_list_format("folders")
def read_folders(source: ListSource) -> RecordList:
    """The path is a ``<class>/<video>`` tree (Kinetics as distributed); one tree per subset."""
    found = parsers.read_class_folders(source.path, class_names=source.class_names)
    prefix = _relative_to_root(source.path, source.data.root)
    return RecordList((VideoRecord(f"{prefix}/{r.path}", r.num_frames, r.label) for r in found),
                      class_names=found.class_names)


def _relative_to_root(folder: str, root: str) -> str:
    """``folder`` as a path that ``os.path.join(root, ...)`` resolves (absolute when outside root)."""
    if not root:
        return folder.rstrip("/")
    folder_abs, root_abs = Path(folder).resolve(), Path(root).resolve()
    try:
        return folder_abs.relative_to(root_abs).as_posix()
    except ValueError:
        return folder_abs.as_posix()


@register_list_format("ssv1", read_class_names=parsers.read_something_v1_labels, requires=("class_names",),
                      frame_template="{:05d}.jpg")
def read_ssv1(source: ListSource) -> RecordList:
    """Something-Something V1 ``<id>;<Label name>`` csv; ``data.class_names`` is the labels csv
    (sorted, as TSM numbers them); records are the frame folders ``<id>``."""
    return parsers.read_something_v1(source.path, source.class_names)


@register_list_format("charades", frame_template="{id}-{:06d}.jpg")
def read_charades(source: ListSource) -> RecordList:
    """Charades csv (multi-label; ``data.multi_label=true``); frame folders with ``data.format=frames``."""
    return parsers.read_charades(source.path, num_classes=source.num_classes or 157,
                               video_ext="" if source.data.format == "frames" else ".mp4")


@register_list_format("hmdb51")
def read_hmdb51(source: ListSource) -> RecordList:
    """The path is the folder of ``<class>_test_split<k>.txt`` files, ``k = data.split``; the
    train list takes the training videos of the split, val/test lists its test videos."""
    return parsers.read_hmdb51_split(source.path, split=source.data.split,
                                   subset="train" if source.subset == "train" else "test",
                                   class_names=source.class_names)


@register_list_format("ucf101", read_class_names=parsers.read_ucf101_class_ind, requires=("class_names",))
def read_ucf101(source: ListSource) -> RecordList:
    """``trainlistNN.txt`` / ``testlistNN.txt``; ``data.class_names`` is ``classInd.txt``."""
    return parsers.read_ucf101_split(source.path, source.class_names)
