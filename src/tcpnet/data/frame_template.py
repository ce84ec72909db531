"""The names of the images in a frame folder (``data.frame_template``), in one place.

A template is a Python format string with one positional field for the 1-based frame number and,
optionally, ``{id}`` for the video's id, the name of its frame folder:

    ``img_{:05d}.jpg``      TSN/TSM lists: ``<folder>/img_00001.jpg``
    ``{:05d}.jpg``          Something-Something V1: ``<id>/00001.jpg``
    ``{id}-{:06d}.jpg``     Charades: ``<id>/<id>-000001.jpg``

Each list format registers its default (:func:`tcpnet.data.formats.register_list_format`); a
``data.frame_template`` the user sets overrides it.
"""
from __future__ import annotations

import os
import string

from tcpnet.data.records import PathLike

__all__ = ["DEFAULT_FRAME_TEMPLATE", "check_frame_template", "bind_frame_template", "frame_file_name"]

DEFAULT_FRAME_TEMPLATE = "img_{:05d}.jpg"
_NUMBER_FIELDS = ("", "0")  # "{:05d}" or "{0:05d}"


def check_frame_template(template: str) -> str:
    """``template`` itself when it names frame files (one frame-number field, at most ``{id}``
    besides); else a ValueError naming ``data.frame_template`` and the syntax."""
    syntax = ("expected one '{}' field for the 1-based frame number (e.g. 'img_{:05d}.jpg') and, "
              "optionally, '{id}' for the video's folder name (e.g. '{id}-{:06d}.jpg')")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        if sum(f in _NUMBER_FIELDS for f in fields) != 1 or any(f not in (*_NUMBER_FIELDS, "id") for f in fields):
            raise ValueError(f"got the fields {fields}")
        template.format(1, id="v")
    except (ValueError, IndexError, KeyError, TypeError) as err:
        raise ValueError(f"data.frame_template={template!r}: {syntax}; {err}") from None
    return template


def _video_id(folder: PathLike) -> str:
    return os.path.basename(os.path.normpath(os.fspath(folder)))


def bind_frame_template(template: str, folder: PathLike) -> str:
    """``template`` with ``{id}`` filled in for ``folder``: a template of the frame number alone
    (``"{id}-{:06d}.jpg"`` for ``.../abc`` gives ``"abc-{:06d}.jpg"``)."""
    def escape(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    parts = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        parts.append(escape(literal))
        if field == "id":
            parts.append(escape(format(_video_id(folder), spec or "")))
        elif field is not None:
            parts.append("{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
    return "".join(parts)


def frame_file_name(template: str, number: int, folder: PathLike) -> str:
    """The file name of frame ``number`` (1-based) in the frame folder ``folder``."""
    return template.format(int(number), id=_video_id(folder))
